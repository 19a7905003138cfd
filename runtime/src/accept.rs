//! Accepting TCP connections under a limit: what every listening port of a
//! binary shares, so that no flood of connections can take the process's
//! file descriptors or spin its accept loop.
//!
//! - At most `max_connections` accepted connections are open at once; each
//!   holds a [`Accepted::permit`] until it is dropped. At the limit the
//!   acceptor stops accepting (new clients wait in the kernel's backlog)
//!   and signals [`Acceptor::pressure`] while it waits, so a server can
//!   close its idle connections to make room; it logs that the limit was
//!   reached at most once per 10 s.
//! - When `accept` itself fails (EMFILE or ENFILE: out of file
//!   descriptors; ENOBUFS; a connection aborted before it was accepted),
//!   the acceptor waits before the next try, 5 ms doubling to 1 s, and
//!   logs once per run of failures instead of once per try — without the
//!   wait a process out of descriptors retries at 100 % of a core and
//!   serves no one (Go's `net/http` waits the same way).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

/// First wait after a failed `accept`.
const FIRST_BACKOFF: Duration = Duration::from_millis(5);
/// Longest wait after a failed `accept`.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How often the acceptor signals pressure while it waits for a place.
pub const PRESSURE_INTERVAL: Duration = Duration::from_millis(250);
/// Least time between two "limit reached" warnings of one port.
const FULL_WARNING_INTERVAL_SECS: u64 = 10;

/// A listening socket that hands out connections under a limit.
pub struct Acceptor {
    listener: TcpListener,
    permits: Arc<Semaphore>,
    max_connections: usize,
    pressure: watch::Sender<()>,
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
            what,
            created: Instant::now(),
            last_full_warning: AtomicU64::new(u64::MAX),
        }
    }

    /// Changes each time the acceptor finds every place taken and waits:
    /// a server closes the connections it can spare (idle ones) when it
    /// does.
    pub fn pressure(&self) -> watch::Receiver<()> {
        self.pressure.subscribe()
    }

    /// Connections open now (accepted and not yet dropped).
    pub fn open_connections(&self) -> usize {
        self.max_connections - self.permits.available_permits()
    }

    /// Waits for a place, signalling [`Acceptor::pressure`] now and every
    /// [`PRESSURE_INTERVAL`] while it waits, so connections that become
    /// idle long enough to be closed meanwhile are closed too.
    async fn wait_for_a_place(&self) -> OwnedSemaphorePermit {
        let now = self.created.elapsed().as_secs();
        let last = self.last_full_warning.swap(now, Ordering::Relaxed);
        if last == u64::MAX || now.saturating_sub(last) >= FULL_WARNING_INTERVAL_SECS {
            tracing::warn!(
                port = self.what,
                max_connections = self.max_connections,
                "connection limit reached; new connections wait until one closes"
            );
        } else {
            self.last_full_warning.store(last, Ordering::Relaxed);
        }
        loop {
            self.pressure.send_replace(());
            let permits = Arc::clone(&self.permits);
            match tokio::time::timeout(PRESSURE_INTERVAL, permits.acquire_owned()).await {
                Ok(Ok(permit)) => return permit,
                // The semaphore is never closed; should it be, there is
                // nothing left to accept for.
                Ok(Err(_)) => return std::future::pending().await,
                Err(_) => {}
            }
        }
    }

    /// The next connection, once one of the `max_connections` places is
    /// free. Never fails: a failed `accept` is retried after a back-off.
    pub async fn accept(&self) -> Accepted {
        let permit = match Arc::clone(&self.permits).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => self.wait_for_a_place().await,
        };
        let mut backoff = FIRST_BACKOFF;
        let mut failures = 0_u32;
        loop {
            match self.listener.accept().await {
                Ok((stream, peer)) => {
                    if failures > 0 {
                        tracing::info!(port = self.what, failures, "accepting again");
                    }
                    return Accepted {
                        stream,
                        peer,
                        permit,
                    };
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
    async fn at_the_limit_the_next_accept_waits_for_a_closed_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = Acceptor::new(listener, 1, "test");
        let mut pressure = acceptor.pressure();
        let _first_client = TcpStream::connect(addr).await.unwrap();
        let _second_client = TcpStream::connect(addr).await.unwrap();
        let first = acceptor.accept().await;
        assert_eq!(acceptor.open_connections(), 1);
        let second = acceptor.accept();
        tokio::pin!(second);
        // The second waits (and says so) while the first is open ...
        tokio::select! {
            _ = &mut second => panic!("accepted over the limit"),
            changed = pressure.changed() => changed.unwrap(),
        }
        // ... and is accepted once the first closes.
        drop(first);
        let second = second.await;
        assert_eq!(acceptor.open_connections(), 1);
        drop(second);
        assert_eq!(acceptor.open_connections(), 0);
    }
}
