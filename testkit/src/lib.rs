//! The test kit of RealChat Auth, shared by the black-box tests
//! (`tests/api`) and the benchmark (`benches/`): databases, the server
//! in-process, our binaries as child processes, a broker of a test's own,
//! Kafka consumers, HTTP probes and JWT pieces, each in one place.
//!
//! Test code may panic: a set-up that fails is a failed test, so most
//! helpers unwrap; the few the benchmark calls on its measured path return
//! errors instead, so it can still drop its database.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod app;
pub mod broker;
pub mod db;
pub mod http;
pub mod jwt;
pub mod keys;
pub mod outbox;
pub mod process;
pub mod wait;
