//! The gRPC port's connections: how they are accepted, bounded, kept alive
//! and closed. Requests then enter through [`crate::grpc`].
//!
//! A connection costs a file descriptor and buffers whether or not it does
//! anything, and a request costs memory from its first byte to its answer,
//! so every way of holding either without using it is bounded
//! ([`ConnectionLimits`] has the numbers):
//!
//! - **Count:** at most `max_connections` open at once (the rest wait in
//!   the kernel's backlog; see [`realchat_runtime::accept`], which also
//!   backs off when `accept` fails). When a new connection waits for a
//!   place, connections that have not finished their handshake a second
//!   after they opened are dropped, and one connection that has had no
//!   request in flight for a second gets a GOAWAY (another one every
//!   250 ms while the new one still waits): a flood of idle connections
//!   cannot keep a new client out, and idle clients are not all dropped at
//!   once.
//! - **Handshake:** a connection that has not sent the HTTP/2 client
//!   preface and its whole first frame within `handshake_timeout` is
//!   closed.
//! - **Idle:** a connection with no request in flight for `idle_timeout`
//!   gets a GOAWAY (gRPC's `MAX_CONNECTION_IDLE`); clients reconnect on
//!   their next call. A request is in flight from its headers until its
//!   response headers: a long-lived response stream (health `Watch`) does
//!   not keep a connection busy.
//! - **Requests:** each must be answered (its body read, its handler run)
//!   within `request_timeout`, else UNAVAILABLE, so a body that never ends
//!   holds nothing longer; at most `max_requests_in_flight` across all
//!   connections, past it RESOURCE_EXHAUSTED with `google.rpc.RetryInfo`
//!   (with 64 KiB messages that bounds request memory).
//! - **Dead peers:** an HTTP/2 PING every `keepalive_interval`; no answer
//!   within `keepalive_timeout` closes the connection.
//! - **Streams and headers:** at most `max_concurrent_streams` requests at
//!   once per connection (`SETTINGS_MAX_CONCURRENT_STREAMS`, RFC 9113
//!   §6.5.2), and a header list of at most `max_header_bytes`
//!   (`SETTINGS_MAX_HEADER_LIST_SIZE`; hyper answers a larger one with
//!   HTTP 431, which gRPC clients report as UNKNOWN or INTERNAL).
//! - A connection asked to close (idle, limit, shutdown) gets a GOAWAY;
//!   one that has not closed 2 s later is dropped if it has no request in
//!   flight, and otherwise gets `request_timeout` for its requests. One that
//!   has not finished its handshake is dropped at once.
//!
//! Every answer passes [`crate::grpc::refuse_malformed_framing`], so broken
//! gRPC framing is INVALID_ARGUMENT on every service (health and reflection
//! too), never INTERNAL.
//!
//! Shutdown: [`serve`] stops accepting (the listening socket closes), sends
//! every connection a GOAWAY and returns once all have closed.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use realchat_runtime::accept::{Accepted, Acceptor, Pressure};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tonic::codegen::{Service as _, http};
use tonic::service::Routes;
use tonic::transport::server::TcpConnectInfo;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

use crate::grpc::refuse_malformed_framing;
use crate::observe::names;

/// Bounds on the gRPC port's connections and requests (see the module
/// docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections open at once.
    pub max_connections: usize,
    /// Time from accept to the end of the client preface and first frame.
    pub handshake_timeout: Duration,
    /// Time a connection may stay open with no request in flight.
    pub idle_timeout: Duration,
    /// Time between HTTP/2 PINGs to the client.
    pub keepalive_interval: Duration,
    /// Time a PING may go unanswered before the connection is closed.
    pub keepalive_timeout: Duration,
    /// Requests in flight at once on one connection.
    pub max_concurrent_streams: u32,
    /// Largest header list of a request, bytes (names + values + 32 per
    /// field, as RFC 9113 §6.5.2 counts it).
    pub max_header_bytes: u32,
    /// Requests in flight at once across all connections.
    pub max_requests_in_flight: usize,
    /// Time a request may take from its headers to its answer's headers
    /// (body read and handler); also what a closing connection gives the
    /// requests it has in flight.
    pub request_timeout: Duration,
}

/// Least time a connection must have gone without a request in flight (or
/// without finishing its handshake) before the limit closes it: a new
/// client sends its first request within milliseconds of connecting, so it
/// is never closed before it could.
const EVICTABLE_AFTER: Duration = Duration::from_secs(1);

/// Time a connection asked to close gets to answer the GOAWAY's PING (h2
/// sends GOAWAY, waits for the PING's answer so no request is in the air,
/// then closes); past it, a connection with nothing in flight is dropped,
/// and one with requests in flight gets `request_timeout` for them.
const GOAWAY_GRACE: Duration = Duration::from_secs(2);

/// The client preface (RFC 9113 §3.4) and the header of the first frame.
const PREFACE_AND_FRAME_HEADER: usize = 24 + 9;

/// How long a client refused for load should wait before it retries.
const BUSY_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Serves `routes` on `listener` under `limits` until `shutdown`
/// completes; then stops accepting, sends every connection a GOAWAY and
/// returns when they have all closed (each at most `request_timeout`
/// after its grace).
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = Acceptor::new(listener, limits.max_connections, "gRPC");
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.keepalive_interval)
        .keep_alive_timeout(limits.keepalive_timeout)
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(limits.max_header_bytes);
    let requests = Arc::new(Semaphore::new(limits.max_requests_in_flight.max(1)));
    let (stop, stopped) = watch::channel(());
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = acceptor.accept() => {
                let connection = Connection {
                    http2: http2.clone(),
                    routes: routes.clone(),
                    requests: Arc::clone(&requests),
                    limits,
                    stop: stopped.clone(),
                    pressure: acceptor.pressure(),
                };
                tokio::spawn(connection.serve(accepted));
            }
        }
    }
    // The listening socket closes here, so new clients are refused at once
    // rather than left in a backlog no one reads.
    drop(acceptor);
    drop(stopped);
    stop.send_replace(());
    // Every connection holds a receiver until it has closed.
    stop.closed().await;
}

/// Why a connection was closed by the server, for the metric's label.
#[derive(Debug, Clone, Copy)]
enum Closed {
    Handshake,
    Idle,
    Limit,
    Shutdown,
}

impl Closed {
    fn label(self) -> &'static str {
        match self {
            Self::Handshake => "handshake_timeout",
            Self::Idle => "idle",
            Self::Limit => "connection_limit",
            Self::Shutdown => "shutdown",
        }
    }
}

/// What one connection's task needs.
struct Connection {
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
    routes: Routes,
    requests: Arc<Semaphore>,
    limits: ConnectionLimits,
    stop: watch::Receiver<()>,
    pressure: Pressure,
}

impl Connection {
    async fn serve(mut self, accepted: Accepted) {
        let Accepted {
            stream,
            peer,
            permit,
        } = accepted;
        // Without it a small response waits for the peer's delayed ACK
        // (about 40 ms on Linux) before it is sent.
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::default());
        let service = Tracked {
            routes: self.routes.clone(),
            activity: Arc::clone(&activity),
            requests: Arc::clone(&self.requests),
            request_timeout: self.limits.request_timeout,
            info: TcpConnectInfo {
                local_addr: stream.local_addr().ok(),
                remote_addr: Some(peer),
            },
        };
        let io = TokioIo::new(CountingIo {
            stream,
            head: [0; PREFACE_AND_FRAME_HEADER],
            head_len: 0,
            activity: Arc::clone(&activity),
        });
        let connection = self.http2.serve_connection(io, service);
        tokio::pin!(connection);
        metrics::gauge!(names::GRPC_CONNECTIONS).increment(1.0);

        let handshake = tokio::time::sleep(self.limits.handshake_timeout);
        tokio::pin!(handshake);
        let mut handshake_checked = false;
        let idle = tokio::time::sleep(self.limits.idle_timeout);
        tokio::pin!(idle);
        // Set once the connection was asked to close.
        let mut closing: Option<Closed> = None;
        let grace = tokio::time::sleep(Duration::MAX);
        tokio::pin!(grace);
        let mut grace_extended = false;

        loop {
            let mut close = None;
            tokio::select! {
                result = &mut connection => {
                    if let Err(e) = result {
                        tracing::debug!(%peer, error = %e, "gRPC connection ended with an error");
                    }
                    break;
                }
                () = &mut handshake, if !handshake_checked => {
                    handshake_checked = true;
                    if !activity.handshaken() {
                        tracing::debug!(%peer, "closing a connection that did not start HTTP/2 in time");
                        closed(Closed::Handshake);
                        break;
                    }
                }
                () = &mut idle, if closing.is_none() => {
                    match activity.idle_deadline(self.limits.idle_timeout) {
                        Some(deadline) if deadline <= Instant::now() => close = Some(Closed::Idle),
                        Some(deadline) => idle.as_mut().reset(deadline),
                        // Busy: look again one idle period from now.
                        None => idle.as_mut().reset(Instant::now() + self.limits.idle_timeout),
                    }
                }
                () = self.pressure.changed(), if closing.is_none() => {
                    // A connection that has not even finished its
                    // handshake goes without asking; an idle client's
                    // connection only when it wins the one eviction.
                    let unstarted = !activity.handshaken()
                        && activity.opened.elapsed() >= EVICTABLE_AFTER;
                    let idle_enough = activity.idle_for() >= Some(EVICTABLE_AFTER);
                    if unstarted || (idle_enough && self.pressure.claim_eviction()) {
                        close = Some(Closed::Limit);
                    }
                }
                Ok(()) = self.stop.changed(), if !matches!(closing, Some(Closed::Shutdown)) => {
                    close = Some(Closed::Shutdown);
                }
                () = &mut grace, if closing.is_some() => {
                    // Requests still in flight get the full grace once.
                    if activity.in_flight() > 0 && !grace_extended {
                        grace_extended = true;
                        grace.as_mut().reset(Instant::now() + self.limits.request_timeout);
                        continue;
                    }
                    tracing::debug!(%peer, "dropping a connection that did not close in its grace period");
                    break;
                }
            }
            let Some(reason) = close else { continue };
            if closing.is_none() {
                closed(reason);
            }
            // Before the handshake there is nothing to say goodbye to (and
            // hyper would wait for the handshake to send its GOAWAY).
            if !activity.handshaken() {
                break;
            }
            if closing.is_none() {
                grace.as_mut().reset(Instant::now() + GOAWAY_GRACE);
            }
            closing = Some(reason);
            connection.as_mut().graceful_shutdown();
        }
        metrics::gauge!(names::GRPC_CONNECTIONS).decrement(1.0);
        drop(permit);
    }
}

/// Counts a connection the server closed, by reason.
fn closed(reason: Closed) {
    metrics::counter!(names::GRPC_CONNECTIONS_CLOSED, "reason" => reason.label()).increment(1);
}

/// What a connection's task reads about its connection: bytes received,
/// requests in flight, and since when none has been.
struct Activity {
    opened: Instant,
    bytes_read: AtomicU64,
    /// Bytes the handshake takes: the preface and the whole first frame;
    /// `u64::MAX` until the first frame's header has arrived.
    handshake_bytes: AtomicU64,
    in_flight: AtomicUsize,
    /// Milliseconds from `opened` to when the last request in flight ended.
    idle_since_ms: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            opened: Instant::now(),
            bytes_read: AtomicU64::new(0),
            handshake_bytes: AtomicU64::new(u64::MAX),
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
        }
    }
}

impl Activity {
    /// Whether the client has sent the preface and its whole first frame.
    fn handshaken(&self) -> bool {
        self.bytes_read.load(Ordering::Acquire) >= self.handshake_bytes.load(Ordering::Acquire)
    }

    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// When the connection has no request in flight: since when (its
    /// opening, or the end of its last request). `None` while one is.
    fn idle_since(&self) -> Option<Instant> {
        if self.in_flight() > 0 {
            return None;
        }
        let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
        Some(self.opened + since)
    }

    /// How long the connection has had no request in flight.
    fn idle_for(&self) -> Option<Duration> {
        self.idle_since().map(|since| since.elapsed())
    }

    /// When the connection becomes idle for `timeout`; `None` while a
    /// request is in flight.
    fn idle_deadline(&self, timeout: Duration) -> Option<Instant> {
        self.idle_since().map(|since| since + timeout)
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(Arc::clone(self))
    }
}

/// One request in flight, from its headers until its answer's headers.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.0;
        // Stored before the count drops, so a reader that sees zero in
        // flight sees this request's end too.
        let elapsed = u64::try_from(activity.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        activity.idle_since_ms.fetch_max(elapsed, Ordering::AcqRel);
        activity.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The routes of the gRPC port, with each request counted in flight,
/// bounded in time and in number, given the connection's addresses (what
/// `Request::remote_addr` reads), and its answer passed through
/// [`refuse_malformed_framing`].
#[derive(Clone)]
struct Tracked {
    routes: Routes,
    activity: Arc<Activity>,
    requests: Arc<Semaphore>,
    request_timeout: Duration,
    info: TcpConnectInfo,
}

type HttpResponse = http::Response<tonic::body::Body>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl hyper::service::Service<http::Request<Incoming>> for Tracked {
    type Response = HttpResponse;
    type Error = Infallible;
    type Future = BoxFuture<Result<HttpResponse, Infallible>>;

    fn call(&self, mut request: http::Request<Incoming>) -> Self::Future {
        let in_flight = self.activity.begin();
        let Ok(admitted) = Arc::clone(&self.requests).try_acquire_owned() else {
            drop(in_flight);
            let busy = Status::with_error_details(
                Code::ResourceExhausted,
                "server busy, retry later",
                ErrorDetails::with_retry_info(Some(BUSY_RETRY_AFTER)),
            );
            return Box::pin(std::future::ready(Ok(busy.into_http())));
        };
        request.extensions_mut().insert(self.info.clone());
        let mut routes = self.routes.clone();
        let timeout = self.request_timeout;
        Box::pin(async move {
            let answer = async {
                let request = request.map(tonic::body::Body::new);
                std::future::poll_fn(|cx| {
                    tonic::codegen::Service::<http::Request<tonic::body::Body>>::poll_ready(
                        &mut routes,
                        cx,
                    )
                })
                .await?;
                routes.call(request).await
            };
            let response = match tokio::time::timeout(timeout, answer).await {
                Ok(response) => refuse_malformed_framing(response?),
                Err(_) => {
                    tracing::info!("request not answered in time (its body did not arrive?)");
                    Status::unavailable("request timed out, retry later").into_http()
                }
            };
            drop((admitted, in_flight));
            Ok(response)
        })
    }
}

/// The TCP stream, counting the bytes it reads and reading the first
/// frame's length (for the handshake check).
struct CountingIo {
    stream: TcpStream,
    /// The first bytes read: the preface and the first frame's header.
    head: [u8; PREFACE_AND_FRAME_HEADER],
    head_len: usize,
    activity: Arc<Activity>,
}

impl AsyncRead for CountingIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        let new = &buf.filled()[before..];
        if this.head_len < PREFACE_AND_FRAME_HEADER {
            let take = new.len().min(PREFACE_AND_FRAME_HEADER - this.head_len);
            this.head[this.head_len..this.head_len + take].copy_from_slice(&new[..take]);
            this.head_len += take;
            if this.head_len == PREFACE_AND_FRAME_HEADER {
                // The frame header starts with the payload length, 24 bits
                // (RFC 9113 §4.1).
                let [a, b, c] = [this.head[24], this.head[25], this.head[26]];
                let length = u64::from(u32::from_be_bytes([0, a, b, c]));
                let needed = PREFACE_AND_FRAME_HEADER as u64 + length;
                this.activity
                    .handshake_bytes
                    .store(needed, Ordering::Release);
            }
        }
        this.activity
            .bytes_read
            .fetch_add(new.len() as u64, Ordering::AcqRel);
        polled
    }
}

impl AsyncWrite for CountingIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
