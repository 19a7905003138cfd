//! The outbox relay: tails the `outbox` table and publishes each row to Kafka
//! with at-least-once delivery.
//!
//! Loop: wait for the outbox table; hold the relay's advisory lock (one
//! publisher at a time); then repeatedly claim unpublished rows by the
//! `published_at IS NULL` flag in `seq` order, produce them with the
//! idempotent producer (`acks=all`, key = aggregate id, CloudEvents headers),
//! await every delivery report, and mark published only the acknowledged
//! prefix of the batch. Wakes on `LISTEN outbox`, polls as a fallback.
//!
//! Where each part lives:
//! - [`worker`]: the loop ([`run`]): start-up, standing by for the lock,
//!   publishing, backoff, retention and shutdown;
//! - [`pipeline`]: one batch's claim → produce → mark, two batches
//!   overlapping;
//! - [`store`]: every SQL statement (claim, mark, lock, retention, backlog,
//!   `LISTEN`);
//! - [`publisher`]: the Kafka producer, topics and CloudEvents headers;
//! - [`observe`]: metrics, `/readyz` and the operator port;
//! - [`config`]: the settings, grouped by the part that uses them.

pub mod config;
pub mod observe;
pub mod pipeline;
pub mod publisher;
pub mod store;
pub mod worker;

pub use config::RelayConfig;
pub use publisher::settings_from_env as kafka_settings_from_env;
pub use store::{ADVISORY_LOCK_KEY, CLAIM, connect};
pub use worker::run;
