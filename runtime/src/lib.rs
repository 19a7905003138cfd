//! What every RealChat Auth binary does around its own work — the server
//! (`realchat-auth`), the relay (`realchat-relay`) and the example Profile
//! consumer — written once (as kanidm's `sketching` crate does for its
//! binaries):
//!
//! - [`telemetry`]: tracing set-up, `RUST_LOG` default, [`telemetry::LogFormat`];
//! - [`settings`]: settings from flags and environment, each value named by
//!   its environment variable, and durations parsed once;
//! - [`shutdown`]: the SIGINT/SIGTERM future;
//! - [`accept`]: accepting connections under a limit, with back-off when
//!   `accept` fails;
//! - [`http`]: the operator port (`/healthz`, `/readyz`, `/metrics`) and its
//!   connection limits;
//! - [`housekeeping`]: deleting what has expired in short batches;
//! - [`outbox`]: the contract the server and the relay share besides the
//!   table (the NOTIFY channel).

pub mod accept;
pub mod housekeeping;
pub mod http;
pub mod outbox;
pub mod settings;
pub mod shutdown;
pub mod telemetry;
