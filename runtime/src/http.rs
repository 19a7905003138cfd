//! The operator port every binary serves: `/healthz`, `/readyz` and
//! Prometheus `/metrics`; a binary adds its own routes (the server's JWKS)
//! to the [`router`] it gets here.
//!
//! - `GET /healthz`: 200 `ok` while the process runs.
//! - `GET /readyz`: 200 when [`Probe::ready`] says ready, else 503; the body
//!   is the probe's one line saying why.
//! - `GET /metrics`: the process's metrics in Prometheus text format.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

use crate::accept::{Acceptor, Pressure};

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
/// arrive in time or is too large. When a new connection waits for a place,
/// connections that have not sent a whole request head for a second are
/// closed, so a flood cannot keep probes out.
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
        let accepted = acceptor.accept().await;
        let started = Arc::new(AtomicBool::new(false));
        let service = Started {
            router: router.clone(),
            started: Arc::clone(&started),
        };
        let connection = http.serve_connection(TokioIo::new(accepted.stream), service);
        tokio::spawn(connection_task(
            connection,
            accepted.peer,
            accepted.permit,
            started,
            acceptor.pressure(),
            what,
        ));
    }
}

/// Serves one connection until it ends, its [`CONNECTION_DEADLINE`]
/// passes, or — when a new connection waits for a place — it has had
/// [`EVICTABLE_AFTER`] without sending a whole request head: a probe sends
/// its head at once, so a connection that has not is a flood's.
async fn connection_task(
    connection: impl Future<Output = hyper::Result<()>>,
    peer: std::net::SocketAddr,
    permit: tokio::sync::OwnedSemaphorePermit,
    started: Arc<AtomicBool>,
    mut pressure: Pressure,
    what: &'static str,
) {
    let opened = tokio::time::Instant::now();
    let deadline = tokio::time::sleep(CONNECTION_DEADLINE);
    tokio::pin!(connection, deadline);
    loop {
        tokio::select! {
            result = &mut connection => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "{what} connection failed");
                }
                break;
            }
            () = &mut deadline => {
                tracing::debug!(%peer, "{what} connection outlived its deadline");
                break;
            }
            () = pressure.changed() => {
                if !started.load(Ordering::Acquire) && opened.elapsed() >= EVICTABLE_AFTER {
                    tracing::debug!(%peer, "{what} connection closed to make room");
                    break;
                }
            }
        }
    }
    drop(permit);
}

/// The router, noting when the connection's request head is complete
/// (hyper calls the service only then).
#[derive(Clone)]
struct Started {
    router: Router,
    started: Arc<AtomicBool>,
}

impl hyper::service::Service<axum::http::Request<hyper::body::Incoming>> for Started {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = axum::routing::future::RouteFuture<std::convert::Infallible>;

    fn call(&self, request: axum::http::Request<hyper::body::Incoming>) -> Self::Future {
        self.started.store(true, Ordering::Release);
        // axum's router is always ready, so `call` needs no `poll_ready`.
        tower_service::Service::call(&mut self.router.clone(), request)
    }
}

/// Least time a connection must have gone without a whole request head
/// before the limit closes it.
const EVICTABLE_AFTER: Duration = Duration::from_secs(1);

/// hyper's smallest read buffer (it refuses a smaller one).
const MIN_HEADER_BYTES: usize = 8192;
