//! The server's HTTP port (`AUTH_HTTP_ADDR`): `/healthz`, `/readyz` and
//! Prometheus `/metrics`.
//!
//! - `GET /.well-known/jwks.json`: the public keys that verify tokens, as a
//!   JWK Set (RFC 7517), with `Cache-Control: public, max-age=…`, so
//!   gateways and services verify access tokens themselves.
//! - `GET /healthz`: 200 while the process runs.
//! - `GET /readyz`: 200 when PostgreSQL answers and every migration of this
//!   build is applied; 503 otherwise (the body says which).
//! - `GET /metrics`, names as exported:
//!   - `auth_requests_total{method,code}` (counter): RPCs by gRPC code,
//!     counted by [`crate::grpc::Counted`].
//!   - `auth_request_duration_seconds{method}` (histogram).
//!   - `auth_bcrypt_queue_depth` (gauge): bcrypt jobs running or waiting.
//!   - `auth_bcrypt_wait_seconds` (histogram): submit to start of a job.
//!   - `auth_db_pool_connections{state="idle"|"in_use"}` (gauge).
//!   - `auth_db_pool_max_connections` (gauge).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sqlx::PgPool;
use tokio::net::TcpListener;

use crate::store::MIGRATOR;

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
}

/// The process-wide Prometheus recorder, installed on first use; `None` if
/// another recorder was installed first.
fn prometheus() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let seconds = [
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ];
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &seconds)
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            Some(handle)
        })
        .clone()
}

/// The JWKS document and how long it may be cached.
#[derive(Debug, Clone)]
pub struct Jwks {
    /// The JWK Set, serialised.
    pub document: String,
    /// `Cache-Control: max-age`, seconds.
    pub max_age_secs: u32,
}

#[derive(Clone)]
struct AppState {
    pool: PgPool,
    metrics: Option<PrometheusHandle>,
    jwks: Arc<Jwks>,
}

/// Binds `addr` for the HTTP endpoints; serve with [`serve`].
///
/// # Errors
/// When the address cannot be bound.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    // Installing the recorder here makes metrics recorded before the first
    // scrape count.
    let _ = prometheus();
    TcpListener::bind(addr).await
}

/// Serves the endpoints on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, pool: PgPool, jwks: Jwks) {
    let state = AppState {
        pool,
        metrics: prometheus(),
        jwks: Arc::new(jwks),
    };
    let app = Router::new()
        .route("/.well-known/jwks.json", get(jwks_document))
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(state);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "HTTP listening");
    }
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "HTTP server failed");
    }
}

async fn jwks_document(State(state): State<AppState>) -> impl axum::response::IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "application/jwk-set+json".to_owned()),
            (
                header::CACHE_CONTROL,
                format!("public, max-age={}", state.jwks.max_age_secs),
            ),
        ],
        state.jwks.document.clone(),
    )
}

async fn render_metrics(State(state): State<AppState>) -> String {
    let Some(handle) = &state.metrics else {
        return String::new();
    };
    let size = state.pool.size();
    let idle = u32::try_from(state.pool.num_idle()).unwrap_or(u32::MAX);
    metrics::gauge!(names::DB_POOL, "state" => "idle").set(f64::from(idle));
    metrics::gauge!(names::DB_POOL, "state" => "in_use").set(f64::from(size.saturating_sub(idle)));
    metrics::gauge!(names::DB_POOL_MAX).set(f64::from(state.pool.options().get_max_connections()));
    handle.run_upkeep();
    handle.render()
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

async fn ready(State(state): State<AppState>) -> (StatusCode, String) {
    let (database, migrations) = readiness(&state.pool, Duration::from_secs(2)).await;
    let status = if database && migrations {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        format!("database={database} migrations={migrations}\n"),
    )
}

/// Versions of the migrations applied successfully (none before the first).
async fn applied_migrations(pool: &PgPool) -> Result<HashSet<i64>, sqlx::Error> {
    let table: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await?;
    if !table {
        return Ok(HashSet::new());
    }
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(pool)
            .await?;
    Ok(versions.into_iter().collect())
}
