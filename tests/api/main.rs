//! Black-box tests over gRPC and Kafka against the real PostgreSQL and the
//! real broker. Each test has its own database (and topic prefix), so they
//! run in parallel. One test binary keeps link time down.
//!
//! Test code may panic: a failed step is a failed test (the workspace lints
//! deny these outside tests, the test kit and the benchmark).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod account;
mod availability;
mod bad_input;
mod connections;
mod jwks;
mod login;
mod profile;
mod register;
mod relay;
mod relay_faults;
mod replay;
mod server_process;
mod throttle;
mod tokens;
mod wire;

use tonic::{Code, Status};
use tonic_types::StatusExt;

/// The fields named in the status's `google.rpc.BadRequest`, in order.
pub fn violated_fields(status: &Status) -> Vec<String> {
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

/// Asserts `result` failed with `code` and returns the status.
#[track_caller]
pub fn expect_code<T: std::fmt::Debug>(result: Result<T, Status>, code: Code) -> Status {
    match result {
        Ok(v) => panic!("expected {code:?}, got Ok({v:?})"),
        Err(status) => {
            assert_eq!(status.code(), code, "unexpected status: {status:?}");
            status
        }
    }
}
