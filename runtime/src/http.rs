//! The operator port every binary serves: `/healthz`, `/readyz` and
//! Prometheus `/metrics`; a binary adds its own routes (the server's JWKS)
//! to the [`router`] it gets here.
//!
//! - `GET /healthz`: 200 `ok` while the process runs.
//! - `GET /readyz`: 200 when [`Probe::ready`] says ready, else 503; the body
//!   is the probe's one line saying why.
//! - `GET /metrics`: the process's metrics in Prometheus text format.

use std::future::Future;
use std::sync::OnceLock;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

/// Histogram buckets of one metric (or of every metric whose name matches).
pub type Buckets = (Matcher, &'static [f64]);

/// The process-wide Prometheus recorder, installed by the first call with
/// that call's `buckets`; later calls get the same handle. `None` when
/// another recorder was installed first (or `buckets` are empty bounds).
pub fn prometheus(buckets: &[Buckets]) -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let mut builder = PrometheusBuilder::new();
            for (matcher, bounds) in buckets {
                builder = builder
                    .set_buckets_for_metric(matcher.clone(), bounds)
                    .ok()?;
            }
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            Some(handle)
        })
        .clone()
}

/// What a binary tells its operator port.
pub trait Probe: Clone + Send + Sync + 'static {
    /// For `/readyz`: whether the process can do its work now, and one line
    /// saying what was checked (`database=true broker=false`).
    fn ready(&self) -> impl Future<Output = (bool, String)> + Send;

    /// Called before `/metrics` renders, to set gauges that are read rather
    /// than counted (pool sizes). Does nothing by default.
    fn refresh_gauges(&self) {}
}

/// The `/healthz`, `/readyz` and `/metrics` routes over `probe`, rendering
/// the metrics of `metrics` (empty when `None`).
pub fn router<P: Probe>(probe: P, metrics: Option<PrometheusHandle>) -> Router {
    let ready_probe = probe.clone();
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let probe = ready_probe.clone();
                async move {
                    let (ready, body) = probe.ready().await;
                    let status = if ready {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    (status, format!("{body}\n"))
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let probe = probe.clone();
                let metrics = metrics.clone();
                async move {
                    let Some(handle) = metrics else {
                        return String::new();
                    };
                    probe.refresh_gauges();
                    handle.run_upkeep();
                    handle.render()
                }
            }),
        )
}

/// Serves `router` on `listener` until the task is dropped, after logging
/// `"{what} listening"` with the bound address (`addr=…`; port 0 picks a
/// free one, so tests and operators read it there). A serving failure is
/// logged, not returned: the operator port must not take the process down.
pub async fn serve(listener: TcpListener, router: Router, what: &str) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "{what} listening");
    }
    if let Err(e) = axum::serve(listener, router).await {
        tracing::error!(error = %e, "{what} server failed");
    }
}
