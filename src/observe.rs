//! The server's HTTP port (`AUTH_HTTP_ADDR`): the operator routes every
//! binary serves (`realchat_runtime::http`: `/healthz`, `/readyz`,
//! `/metrics`) and the JWKS.
//!
//! - `GET /.well-known/jwks.json`: the public keys that verify tokens, as a
//!   JWK Set (RFC 7517), with `Cache-Control: public, max-age=…`, so
//!   gateways and services verify access tokens themselves.
//! - `GET /healthz`: 200 while the process runs.
//! - `GET /readyz`: 200 when PostgreSQL answers and every migration of this
//!   build is applied; 503 otherwise (the body says which).
//! - `GET /metrics`, names as exported:
//!   - `auth_requests_total{method,code}` (counter): RPCs by gRPC code,
//!     counted by [`crate::grpc::Counted`]; `method` is `unknown` for a
//!     method the contract does not declare.
//!   - `auth_request_duration_seconds{method}` (histogram).
//!   - `auth_bcrypt_queue_depth` (gauge): bcrypt jobs running or waiting.
//!   - `auth_bcrypt_wait_seconds` (histogram): submit to start of a job.
//!   - `auth_db_pool_connections{state="idle"|"in_use"}` (gauge).
//!   - `auth_db_pool_max_connections` (gauge).
//!   - `auth_grpc_connections` (gauge): connections open on the gRPC port.
//!   - `auth_grpc_connections_closed_total{reason}` (counter): connections
//!     the server closed, `reason` one of `handshake_timeout`, `idle`,
//!     `connection_limit`, `shutdown` (see [`crate::transport`]).

use std::time::Duration;

use axum::Router;
use axum::http::header;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusHandle};
use realchat_runtime::http::Probe;
use sqlx::PgPool;

use crate::store::{MIGRATOR, applied_migrations};

/// Metric names, shared by the recorder set-up and the call sites.
pub mod names {
    /// Counter: RPCs by method and gRPC code.
    pub const REQUESTS: &str = "auth_requests_total";
    /// Histogram: RPC duration, seconds, by method.
    pub const REQUEST_DURATION: &str = "auth_request_duration_seconds";
    /// Gauge: bcrypt jobs running or waiting.
    pub const BCRYPT_QUEUE_DEPTH: &str = "auth_bcrypt_queue_depth";
    /// Histogram: seconds from submitting a bcrypt job to its start.
    pub const BCRYPT_WAIT: &str = "auth_bcrypt_wait_seconds";
    /// Gauge: pooled database connections by state.
    pub const DB_POOL: &str = "auth_db_pool_connections";
    /// Gauge: the pool's maximum size.
    pub const DB_POOL_MAX: &str = "auth_db_pool_max_connections";
    /// Gauge: connections open on the gRPC port.
    pub const GRPC_CONNECTIONS: &str = "auth_grpc_connections";
    /// Counter: gRPC connections the server closed, by reason.
    pub const GRPC_CONNECTIONS_CLOSED: &str = "auth_grpc_connections_closed_total";
}

/// The process-wide Prometheus recorder with the server's buckets: every
/// `*_seconds` histogram from 1 ms to 10 s. Installed by the first call, so
/// call it before anything records (start-up does).
pub fn prometheus() -> Option<PrometheusHandle> {
    const SECONDS: &[f64] = &[
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];
    realchat_runtime::http::prometheus(&[(Matcher::Suffix("_seconds".into()), SECONDS)])
}

/// The JWKS document and how long it may be cached.
#[derive(Debug, Clone)]
pub struct Jwks {
    /// The JWK Set, serialised.
    pub document: String,
    /// `Cache-Control: max-age` (whole seconds).
    pub max_age: Duration,
}

/// Readiness and pool gauges over the server's database.
#[derive(Clone)]
struct Database(PgPool);

impl Probe for Database {
    async fn ready(&self) -> (bool, String) {
        let (database, migrations) = readiness(&self.0, Duration::from_secs(2)).await;
        (
            database && migrations,
            format!("database={database} migrations={migrations}"),
        )
    }

    fn refresh_gauges(&self) {
        let pool = &self.0;
        let size = pool.size();
        let idle = u32::try_from(pool.num_idle()).unwrap_or(u32::MAX);
        metrics::gauge!(names::DB_POOL, "state" => "idle").set(f64::from(idle));
        metrics::gauge!(names::DB_POOL, "state" => "in_use")
            .set(f64::from(size.saturating_sub(idle)));
        metrics::gauge!(names::DB_POOL_MAX).set(f64::from(pool.options().get_max_connections()));
    }
}

/// The HTTP port's routes: the operator routes over `pool`, and the JWKS.
pub fn router(pool: PgPool, jwks: Jwks) -> Router {
    let cache = format!("public, max-age={}", jwks.max_age.as_secs());
    realchat_runtime::http::router(Database(pool), prometheus()).route(
        "/.well-known/jwks.json",
        get(move || async move {
            (
                [
                    (header::CONTENT_TYPE, "application/jwk-set+json".to_owned()),
                    (header::CACHE_CONTROL, cache),
                ],
                jwks.document,
            )
        }),
    )
}

/// Whether PostgreSQL answers within `timeout` and every migration of this
/// build is applied: (database, migrations).
pub(crate) async fn readiness(pool: &PgPool, timeout: Duration) -> (bool, bool) {
    let checked = tokio::time::timeout(timeout, applied_migrations(pool))
        .await
        .unwrap_or(Err(sqlx::Error::PoolTimedOut));
    match checked {
        Ok(applied) => (true, MIGRATOR.iter().all(|m| applied.contains(&m.version))),
        Err(_) => (false, false),
    }
}
