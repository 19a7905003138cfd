//! What operators see: Prometheus metrics and health on `RELAY_METRICS_ADDR`.
//!
//! - `GET /metrics`: Prometheus text format.
//! - `GET /healthz`: 200 while the process runs.
//! - `GET /readyz`: 200 when the relay holds the lock and reaches PostgreSQL
//!   and the broker, or is a standby that reaches PostgreSQL; 503 otherwise.
//!
//! Metrics (names as exported):
//! - `relay_outbox_unpublished_rows` (gauge): rows with `published_at IS NULL`.
//! - `relay_outbox_oldest_unpublished_age_seconds` (gauge): age of the oldest
//!   of them, 0 when there is none.
//! - `relay_published_total` (counter): events acknowledged and marked.
//! - `relay_publish_failures_total` (counter): events not acknowledged.
//! - `relay_batch_size` (histogram): rows claimed per non-empty batch.
//! - `relay_batch_duration_seconds` (histogram): claim to mark, per batch.
//! - `relay_active` (gauge): 1 while this process holds the lock.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use rdkafka::producer::{BaseProducer, Producer as _};
use sqlx::PgPool;

/// Metric names, shared by the recorder set-up and the call sites.
pub mod names {
    /// Gauge: unpublished outbox rows.
    pub const UNPUBLISHED: &str = "relay_outbox_unpublished_rows";
    /// Gauge: age of the oldest unpublished row, seconds.
    pub const OLDEST_AGE: &str = "relay_outbox_oldest_unpublished_age_seconds";
    /// Counter: events acknowledged and marked.
    pub const PUBLISHED: &str = "relay_published_total";
    /// Counter: events not acknowledged.
    pub const FAILURES: &str = "relay_publish_failures_total";
    /// Histogram: rows per batch.
    pub const BATCH_SIZE: &str = "relay_batch_size";
    /// Histogram: seconds per batch.
    pub const BATCH_DURATION: &str = "relay_batch_duration_seconds";
    /// Gauge: 1 while holding the lock.
    pub const ACTIVE: &str = "relay_active";
}

/// The relay's role, for readiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Role {
    /// Connecting, or waiting for the outbox table.
    Starting = 0,
    /// Waiting for the lock another relay holds.
    Standby = 1,
    /// Holding the lock and publishing.
    Active = 2,
}

/// Shared state behind `/readyz`.
#[derive(Default)]
pub struct Health {
    role: AtomicU8,
}

impl Health {
    /// Records the relay's current role.
    pub fn set_role(&self, role: Role) {
        self.role.store(role as u8, Ordering::Relaxed);
        metrics::gauge!(names::ACTIVE).set(if role == Role::Active { 1.0 } else { 0.0 });
    }

    fn role(&self) -> Role {
        match self.role.load(Ordering::Relaxed) {
            1 => Role::Standby,
            2 => Role::Active,
            _ => Role::Starting,
        }
    }
}

/// The process-wide Prometheus recorder, installed on first use. `None` if
/// another recorder was installed first (then metrics go there).
fn prometheus() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(names::BATCH_SIZE.into()),
                    &[1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0],
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(names::BATCH_DURATION.into()),
                        &[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0],
                    )
                })
                .ok()?;
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            Some(handle)
        })
        .clone()
}

#[derive(Clone)]
struct AppState {
    health: Arc<Health>,
    pool: PgPool,
    probe: Arc<BaseProducer>,
    metrics: Option<PrometheusHandle>,
}

/// Binds `addr` and serves the endpoints in the background; logs the bound
/// address (`metrics listening addr=…`).
///
/// # Errors
/// When the address cannot be bound.
pub async fn serve(
    addr: SocketAddr,
    health: Arc<Health>,
    pool: PgPool,
    probe: BaseProducer,
) -> std::io::Result<()> {
    let state = AppState {
        health,
        pool,
        probe: Arc::new(probe),
        metrics: prometheus(),
    };
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "metrics listening");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics server failed");
        }
    });
    Ok(())
}

async fn render_metrics(State(state): State<AppState>) -> String {
    match &state.metrics {
        Some(handle) => {
            handle.run_upkeep();
            handle.render()
        }
        None => String::new(),
    }
}

async fn ready(State(state): State<AppState>) -> (StatusCode, String) {
    let role = state.health.role();
    let database = tokio::time::timeout(
        Duration::from_secs(2),
        sqlx::query("SELECT 1").execute(&state.pool),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    let broker = if role == Role::Active {
        let probe = Arc::clone(&state.probe);
        tokio::task::spawn_blocking(move || {
            probe
                .client()
                .fetch_metadata(None, Duration::from_secs(2))
                .is_ok()
        })
        .await
        .unwrap_or(false)
    } else {
        true
    };
    let ok = database && broker && role != Role::Starting;
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        format!("role={role:?} database={database} broker={broker}\n"),
    )
}

/// Refreshes the unpublished-row gauges.
pub async fn update_backlog(pool: &PgPool) {
    let backlog: Result<(i64, f64), _> = sqlx::query_as(
        "SELECT count(*),
                COALESCE(EXTRACT(EPOCH FROM now() - min(created_at))::float8, 0)
         FROM outbox WHERE published_at IS NULL",
    )
    .fetch_one(pool)
    .await;
    match backlog {
        Ok((rows, age)) => {
            metrics::gauge!(names::UNPUBLISHED).set(rows as f64);
            metrics::gauge!(names::OLDEST_AGE).set(age.max(0.0));
        }
        Err(e) => tracing::debug!(error = %e, "cannot read the outbox backlog"),
    }
}
