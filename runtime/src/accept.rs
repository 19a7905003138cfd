//! Accepting TCP connections under a limit: what every listening port of a
//! binary shares, so that no flood of connections can take the process's
//! file descriptors or spin its accept loop.
//!
//! - At most `max_connections` accepted connections are open at once, plus
//!   the one just accepted while it waits for a place; each holds an
//!   [`Accepted::permit`] until it is dropped. Past the limit new clients
//!   wait in the kernel's backlog.
//! - While an accepted connection waits for a place, the acceptor signals
//!   [`Pressure`] (now and every [`PRESSURE_INTERVAL`]) and asks for one
//!   connection to be closed: a server closes a connection that never
//!   started (any number of them) or claims the one eviction of an idle
//!   connection ([`Pressure::claim_eviction`]), so a flood of idle
//!   connections cannot keep a new client out, while idle clients are not
//!   all dropped at once.
//! - When `accept` itself fails (EMFILE or ENFILE: out of file
//!   descriptors; ENOBUFS; a connection aborted before it was accepted),
//!   the acceptor waits before the next try, 5 ms doubling to 1 s, and
//!   logs once per run of failures instead of once per try — without the
//!   wait a process out of descriptors retries at 100 % of a core and
//!   serves no one (Go's `net/http` waits the same way).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

/// First wait after a failed `accept`.
const FIRST_BACKOFF: Duration = Duration::from_millis(5);
/// Longest wait after a failed `accept`.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How often the acceptor signals pressure while a connection waits.
pub const PRESSURE_INTERVAL: Duration = Duration::from_millis(250);
/// Least time between two "limit reached" warnings of one port.
const FULL_WARNING_INTERVAL_SECS: u64 = 10;

/// A listening socket that hands out connections under a limit.
pub struct Acceptor {
    listener: TcpListener,
    permits: Arc<Semaphore>,
    max_connections: usize,
    pressure: watch::Sender<()>,
    eviction_wanted: Arc<AtomicBool>,
    what: &'static str,
    created: Instant,
    /// Seconds from `created` to the last "limit reached" warning
    /// (`u64::MAX`: none yet), so a flood logs once per interval.
    last_full_warning: AtomicU64,
}

/// One accepted connection and its place under the limit.
pub struct Accepted {
    /// The connection.
    pub stream: TcpStream,
    /// The peer's address.
    pub peer: SocketAddr,
    /// The connection's place under the limit: freed when dropped, so the
    /// connection's task keeps it for as long as the connection is open.
    pub permit: OwnedSemaphorePermit,
}

/// What a connection's task watches to learn that a new connection is
/// waiting for a place.
#[derive(Clone)]
pub struct Pressure {
    changed: watch::Receiver<()>,
    eviction_wanted: Arc<AtomicBool>,
}

impl Pressure {
    /// Completes each time a new connection is waiting for a place (again
    /// every [`PRESSURE_INTERVAL`] while it waits). Pending forever once the
    /// acceptor is gone.
    pub async fn changed(&mut self) {
        if self.changed.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Takes the one eviction the waiting connection asked for: true for
    /// one caller per signal, which then closes its connection.
    pub fn claim_eviction(&self) -> bool {
        self.eviction_wanted.swap(false, Ordering::AcqRel)
    }
}

impl Acceptor {
    /// Accepts from `listener` at most `max_connections` (at least 1) open
    /// connections at once; `what` names the port in logs (`gRPC`, `HTTP`).
    pub fn new(listener: TcpListener, max_connections: usize, what: &'static str) -> Self {
        let max_connections = max_connections.max(1);
        Self {
            listener,
            permits: Arc::new(Semaphore::new(max_connections)),
            max_connections,
            pressure: watch::Sender::new(()),
            eviction_wanted: Arc::new(AtomicBool::new(false)),
            what,
            created: Instant::now(),
            last_full_warning: AtomicU64::new(u64::MAX),
        }
    }

    /// The signal a connection's task watches (see [`Pressure`]).
    pub fn pressure(&self) -> Pressure {
        Pressure {
            changed: self.pressure.subscribe(),
            eviction_wanted: Arc::clone(&self.eviction_wanted),
        }
    }

    /// Connections open now (accepted and not yet dropped).
    pub fn open_connections(&self) -> usize {
        self.max_connections - self.permits.available_permits()
    }

    /// The next connection, with its place under the limit. Never fails: a
    /// failed `accept` is retried after a back-off.
    pub async fn accept(&self) -> Accepted {
        let (stream, peer) = self.accept_with_backoff().await;
        let permit = match Arc::clone(&self.permits).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => self.wait_for_a_place().await,
        };
        Accepted {
            stream,
            peer,
            permit,
        }
    }

    /// Waits for a place for a connection already accepted, signalling
    /// [`Pressure`] now and every [`PRESSURE_INTERVAL`] while it waits.
    async fn wait_for_a_place(&self) -> OwnedSemaphorePermit {
        let now = self.created.elapsed().as_secs();
        let last = self.last_full_warning.swap(now, Ordering::Relaxed);
        if last == u64::MAX || now.saturating_sub(last) >= FULL_WARNING_INTERVAL_SECS {
            tracing::warn!(
                port = self.what,
                max_connections = self.max_connections,
                "connection limit reached; closing idle connections to make room"
            );
        } else {
            self.last_full_warning.store(last, Ordering::Relaxed);
        }
        loop {
            self.eviction_wanted.store(true, Ordering::Release);
            self.pressure.send_replace(());
            let permits = Arc::clone(&self.permits);
            match tokio::time::timeout(PRESSURE_INTERVAL, permits.acquire_owned()).await {
                Ok(Ok(permit)) => {
                    self.eviction_wanted.store(false, Ordering::Release);
                    return permit;
                }
                // The semaphore is never closed; should it be, there is
                // nothing left to accept for.
                Ok(Err(_)) => return std::future::pending().await,
                Err(_) => {}
            }
        }
    }

    async fn accept_with_backoff(&self) -> (TcpStream, SocketAddr) {
        let mut backoff = FIRST_BACKOFF;
        let mut failures = 0_u32;
        loop {
            match self.listener.accept().await {
                Ok(accepted) => {
                    if failures > 0 {
                        tracing::info!(port = self.what, failures, "accepting again");
                    }
                    return accepted;
                }
                Err(e) => {
                    if failures == 0 {
                        tracing::warn!(
                            port = self.what,
                            error = %e,
                            open_connections = self.open_connections(),
                            "accept failed; backing off until it succeeds"
                        );
                    }
                    failures = failures.saturating_add(1);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

/// Raises this process's soft limit on open files (RLIMIT_NOFILE) to its
/// hard limit, as Go and the JVM do at start, so the connection limits, not
/// a default of 1,024 descriptors, bound what a port accepts. Returns the
/// soft limit in force afterwards (`None` where it cannot be read).
pub fn raise_open_file_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => Some(limit),
        Err(e) => {
            tracing::warn!(error = %e, "could not raise the open-file limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE)
                .ok()
                .map(|(soft, _)| soft)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn at_the_limit_a_waiting_connection_asks_for_one_eviction() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = Acceptor::new(listener, 1, "test");
        let mut pressure = acceptor.pressure();
        let _first_client = TcpStream::connect(addr).await.unwrap();
        let first = acceptor.accept().await;
        assert_eq!(acceptor.open_connections(), 1);
        // At the limit with nobody waiting: no signal, nothing to evict.
        assert!(!pressure.claim_eviction());
        let _second_client = TcpStream::connect(addr).await.unwrap();
        let second = acceptor.accept();
        tokio::pin!(second);
        // The second is accepted and waits (and says so) while the first
        // is open; one caller, not two, gets the eviction.
        tokio::select! {
            _ = &mut second => panic!("accepted over the limit"),
            () = pressure.changed() => {}
        }
        assert!(pressure.claim_eviction());
        assert!(!pressure.claim_eviction());
        // It gets its place once the first closes.
        drop(first);
        let second = second.await;
        assert_eq!(acceptor.open_connections(), 1);
        drop(second);
        assert_eq!(acceptor.open_connections(), 0);
    }
}
