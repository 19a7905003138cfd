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
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

use crate::accept::{Accepted, Acceptor};

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

/// Bounds on the operator port's connections. The port speaks HTTP/1.1
/// only, answers one request per connection (`Connection: close`: probes
/// and scrapers lose one handshake, and no idle keep-alive connection can
/// be held open), and gives up on a connection whose request head does not
/// arrive in time or is too large.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Connections open at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Time for a connection to send its whole request head; past it the
    /// connection is closed (a client that never finishes its headers
    /// holds nothing longer).
    pub header_timeout: Duration,
    /// Largest request head, bytes (at least 8,192, hyper's floor); a
    /// larger one is answered 431 and the connection closed.
    pub max_header_bytes: usize,
}

impl Default for HttpLimits {
    /// 256 connections, 10 s for the request head, 16 KiB of head.
    fn default() -> Self {
        Self {
            max_connections: 256,
            header_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
        }
    }
}

/// Longest a connection of the operator port lives, whatever it does: its
/// one request is a probe or a scrape that takes milliseconds, so this only
/// ends clients that stop reading their answer.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(60);

/// Serves `router` on `listener` under `limits` until the task is dropped,
/// after logging `"{what} listening"` with the bound address (`addr=…`;
/// port 0 picks a free one, so tests and operators read it there). Serving
/// failures are logged, not returned: the operator port must not take the
/// process down.
pub async fn serve(listener: TcpListener, router: Router, limits: HttpLimits, what: &'static str) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "{what} listening");
    }
    let acceptor = Acceptor::new(listener, limits.max_connections, what);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes.max(MIN_HEADER_BYTES))
        .keep_alive(false);
    loop {
        let Accepted {
            stream,
            peer,
            permit,
        } = acceptor.accept().await;
        let service = TowerToHyperService::new(router.clone());
        let connection = http.serve_connection(TokioIo::new(stream), service);
        tokio::spawn(async move {
            match tokio::time::timeout(CONNECTION_DEADLINE, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "{what} connection failed"),
                Err(_) => tracing::debug!(%peer, "{what} connection outlived its deadline"),
            }
            drop(permit);
        });
    }
}

/// hyper's smallest read buffer (it refuses a smaller one).
const MIN_HEADER_BYTES: usize = 8192;
