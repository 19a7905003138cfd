//! What operators see: Prometheus metrics and health on `RELAY_METRICS_ADDR`,
//! served by [`realchat_runtime::http`] over the relay's [`RelayProbe`].
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
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use metrics_exporter_prometheus::Matcher;
use rdkafka::producer::{BaseProducer, Producer as _};
use realchat_runtime::http::{self, Buckets, Probe};
use sqlx::PgPool;

use crate::store;

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

/// The histogram buckets of the relay's metrics.
pub fn buckets() -> [Buckets; 2] {
    [
        (
            Matcher::Full(names::BATCH_SIZE.into()),
            &[1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0],
        ),
        (
            Matcher::Full(names::BATCH_DURATION.into()),
            &[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0],
        ),
    ]
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

/// What `/readyz` checks: the relay's role, its pool, and (while active)
/// the broker, through a client of its own.
#[derive(Clone)]
pub struct RelayProbe {
    health: Arc<Health>,
    pool: PgPool,
    broker: Arc<BaseProducer>,
}

impl RelayProbe {
    /// A probe over the relay's `health` and `pool`, asking the broker
    /// through `broker`.
    pub fn new(health: Arc<Health>, pool: PgPool, broker: BaseProducer) -> Self {
        Self {
            health,
            pool,
            broker: Arc::new(broker),
        }
    }
}

impl Probe for RelayProbe {
    /// Ready when not starting, PostgreSQL answers within 2 s and, while
    /// active, the broker's metadata arrives within 2 s. The body reads
    /// `role=Active database=true broker=true`.
    async fn ready(&self) -> (bool, String) {
        let role = self.health.role();
        let database = tokio::time::timeout(Duration::from_secs(2), store::ping(&self.pool))
            .await
            .is_ok_and(|r| r.is_ok());
        let broker = if role == Role::Active {
            let broker = Arc::clone(&self.broker);
            tokio::task::spawn_blocking(move || {
                broker
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
        (
            ok,
            format!("role={role:?} database={database} broker={broker}"),
        )
    }
}

/// Binds `addr` and serves the operator port over `probe` in the background;
/// logs the bound address (`metrics listening addr=…`).
///
/// # Errors
/// When the address cannot be bound.
pub async fn serve(addr: SocketAddr, probe: RelayProbe) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let router = http::router(probe, http::prometheus(&buckets()));
    tokio::spawn(http::serve(
        listener,
        router,
        http::HttpLimits::default(),
        "metrics",
    ));
    Ok(())
}

/// Refreshes the unpublished-row gauges; a failure is only logged (debug).
pub async fn update_backlog(pool: &PgPool) {
    match store::backlog(pool).await {
        Ok((rows, age)) => {
            metrics::gauge!(names::UNPUBLISHED).set(rows as f64);
            metrics::gauge!(names::OLDEST_AGE).set(age.max(0.0));
        }
        Err(e) => tracing::debug!(error = %e, "cannot read the outbox backlog"),
    }
}
