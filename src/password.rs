//! bcrypt on a bounded CPU pool.
//!
//! Hashing and verification run on a dedicated rayon pool with one thread per
//! core, never on the async worker threads, so a burst of logins cannot starve
//! token refreshes or the database pool. The queue in front of the pool is
//! bounded: past it, callers get [`HashError::Busy`] (RESOURCE_EXHAUSTED) at
//! once instead of waiting without bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use tokio::sync::{Semaphore, oneshot};
use tracing::Span;

use crate::domain::{NewPassword, PasswordAttempt};
use crate::observe::names;

/// Why hashing or verification did not produce an answer.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// The pool's queue is full; the caller should retry later.
    #[error("password hashing queue is full")]
    Busy,
    /// bcrypt refused its input (e.g. a malformed stored hash). The message
    /// leaves out bcrypt's own text, which may quote the stored hash.
    #[error("bcrypt refused its input (a malformed stored hash?)")]
    Bcrypt(#[from] bcrypt::BcryptError),
    /// The pool dropped the job (it was shut down).
    #[error("password hashing pool is gone")]
    PoolGone,
}

/// What [`PasswordHasher::verify`] found.
#[derive(Debug)]
pub struct Verified {
    /// The password matches the user's stored hash.
    pub matched: bool,
    /// A new hash at the configured cost, when the stored one had a lower
    /// cost and the password matched (rehash on login).
    pub upgraded_hash: Option<String>,
}

/// Settings of a [`PasswordHasher`].
#[derive(Debug, Clone, Copy)]
pub struct HasherSettings {
    /// bcrypt cost (log2 of the rounds), 4..=31.
    pub cost: u32,
    /// Worker threads; 0 means one per available core.
    pub threads: usize,
    /// Jobs that may wait for a worker beyond the ones running.
    pub queue: usize,
    /// Run the workers under SCHED_IDLE (Linux), so the async runtime and
    /// everything else comes first when both want a core.
    pub idle_priority: bool,
}

/// A bcrypt hasher with its own bounded thread pool. Cheap to clone.
#[derive(Clone)]
pub struct PasswordHasher {
    inner: Arc<Inner>,
}

struct Inner {
    pool: rayon::ThreadPool,
    /// One permit per running or queued job.
    permits: Arc<Semaphore>,
    cost: u32,
    /// A hash of a random password at the same cost, verified when the user is
    /// unknown so that path costs what a wrong password costs.
    dummy_hash: String,
    /// Jobs running or waiting, for the queue-depth gauge.
    depth: AtomicUsize,
}

impl PasswordHasher {
    /// Starts the pool and computes the dummy hash (one bcrypt run at `cost`).
    ///
    /// # Errors
    /// When the pool cannot start or `cost` is out of bcrypt's range.
    pub fn new(settings: HasherSettings) -> anyhow::Result<Self> {
        let threads = if settings.threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            settings.threads
        };
        let idle_priority = settings.idle_priority;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("bcrypt-{i}"))
            .start_handler(move |_| {
                if idle_priority {
                    schedule_as_idle();
                }
            })
            .build()?;
        let dummy_hash = bcrypt::hash(uuid::Uuid::new_v4().to_string(), settings.cost)?;
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                permits: Arc::new(Semaphore::new(threads + settings.queue)),
                cost: settings.cost,
                dummy_hash,
                depth: AtomicUsize::new(0),
            }),
        })
    }

    /// Hashes a new password at the configured cost; returns the modular
    /// crypt string (`$2b$<cost>$…`).
    ///
    /// # Errors
    /// [`HashError::Busy`] when the queue is full.
    pub async fn hash(&self, password: NewPassword) -> Result<String, HashError> {
        let cost = self.inner.cost;
        self.run(move || Ok(bcrypt::hash(password.expose(), cost)?))
            .await
    }

    /// Verifies `password` against `stored`, or against the dummy hash when
    /// `stored` is `None` (unknown user), doing the same work either way.
    /// `matched` is true only for a real hash that matches; then, if that
    /// hash's cost is below the configured one, `upgraded_hash` holds a new
    /// hash at the configured cost (made in the same pool job) to store.
    ///
    /// # Errors
    /// [`HashError::Busy`] when the queue is full; [`HashError::Bcrypt`] for a
    /// malformed stored hash.
    pub async fn verify(
        &self,
        password: PasswordAttempt,
        stored: Option<String>,
    ) -> Result<Verified, HashError> {
        let inner = Arc::clone(&self.inner);
        self.run(move || {
            let (hash, real) = match &stored {
                Some(hash) => (hash.as_str(), true),
                None => (inner.dummy_hash.as_str(), false),
            };
            // bcrypt reads at most 72 bytes; a longer attempt cannot match a
            // hash we made, but it still pays for one verification.
            let candidate = password.expose();
            let matched = if candidate.len() > crate::domain::MAX_PASSWORD_BYTES {
                bcrypt::verify(&candidate[..0], hash).map(|_| false)?
            } else {
                bcrypt::verify(candidate, hash)?
            };
            let matched = matched && real;
            let stored_cost = hash.parse::<bcrypt::HashParts>()?.get_cost();
            // A hash below the configured cost is quicker to check than the
            // dummy one: hash at the configured cost whether or not it
            // matched, so a wrong password for an old account costs no less
            // than an unknown account (and a match gets its upgrade).
            let upgraded_hash = if stored_cost < inner.cost {
                let bounded = if candidate.len() > crate::domain::MAX_PASSWORD_BYTES {
                    &candidate[..0]
                } else {
                    candidate
                };
                let upgraded = bcrypt::hash(bounded, inner.cost)?;
                matched.then_some(upgraded)
            } else {
                None
            };
            Ok(Verified {
                matched,
                upgraded_hash,
            })
        })
        .await
    }

    async fn run<T, F>(&self, job: F) -> Result<T, HashError>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T, HashError> + Send + 'static,
    {
        let permit = Arc::clone(&self.inner.permits)
            .try_acquire_owned()
            .map_err(|_| HashError::Busy)?;
        let depth = &self.inner.depth;
        metrics::gauge!(names::BCRYPT_QUEUE_DEPTH)
            .set(depth.fetch_add(1, Ordering::Relaxed) as f64 + 1.0);
        let inner = Arc::clone(&self.inner);
        let (tx, rx) = oneshot::channel();
        let span = Span::current();
        let submitted = Instant::now();
        self.inner.pool.spawn(move || {
            metrics::histogram!(names::BCRYPT_WAIT).record(submitted.elapsed().as_secs_f64());
            let result = span.in_scope(job);
            let left = inner.depth.fetch_sub(1, Ordering::Relaxed) - 1;
            metrics::gauge!(names::BCRYPT_QUEUE_DEPTH).set(left as f64);
            drop(permit);
            // The receiver is gone only if the request was cancelled.
            let _ = tx.send(result);
        });
        rx.await.map_err(|_| HashError::PoolGone)?
    }
}

/// Moves the calling thread to SCHED_IDLE: any other runnable thread of
/// the machine preempts it at once. Failing is logged, not fatal: bcrypt
/// then runs at the normal priority.
fn schedule_as_idle() {
    #[cfg(target_os = "linux")]
    {
        use thread_priority::unix::{
            NormalThreadSchedulePolicy, ThreadSchedulePolicy, set_thread_priority_and_policy,
            thread_native_id,
        };
        let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
        if let Err(e) = set_thread_priority_and_policy(
            thread_native_id(),
            thread_priority::ThreadPriority::Min,
            idle,
        ) {
            tracing::warn!(error = ?e, "cannot move the bcrypt threads to SCHED_IDLE");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hasher(cost: u32, threads: usize, queue: usize) -> PasswordHasher {
        PasswordHasher::new(HasherSettings {
            cost,
            threads,
            queue,
            idle_priority: false,
        })
        .unwrap()
    }

    #[tokio::test]
    async fn hash_verifies_and_unknown_users_never_match() {
        let h = hasher(4, 1, 1);
        let hash = h
            .hash(NewPassword::parse("a good password").unwrap())
            .await
            .unwrap();
        assert!(hash.starts_with("$2b$04$"));
        assert!(
            h.inner.dummy_hash.starts_with("$2b$04$"),
            "dummy hash at the same cost"
        );
        let attempt = |p: &str| PasswordAttempt::parse(p).unwrap();
        let matched = |p: &str, stored: Option<String>| {
            let verify = h.verify(attempt(p), stored);
            async move { verify.await.unwrap().matched }
        };
        assert!(matched("a good password", Some(hash.clone())).await);
        assert!(!matched("a bad password", Some(hash.clone())).await);
        assert!(!matched("a good password", None).await);
        // At the configured cost already: nothing to upgrade.
        let same = h
            .verify(attempt("a good password"), Some(hash.clone()))
            .await;
        assert!(same.unwrap().upgraded_hash.is_none());
        // A stronger hasher upgrades a matching hash, and only a matching one.
        let stronger = hasher(5, 1, 1);
        let upgraded = stronger
            .verify(attempt("a good password"), Some(hash.clone()))
            .await;
        let new_hash = upgraded.unwrap().upgraded_hash.unwrap();
        assert!(new_hash.starts_with("$2b$05$"));
        assert!(bcrypt::verify("a good password", &new_hash).unwrap());
        let wrong = stronger.verify(attempt("a bad password"), Some(hash)).await;
        assert!(wrong.unwrap().upgraded_hash.is_none());
    }

    #[tokio::test]
    async fn jobs_run_on_the_bcrypt_pool_not_the_async_workers() {
        let h = hasher(4, 1, 1);
        let thread = h
            .run(|| Ok(std::thread::current().name().map(str::to_owned)))
            .await
            .unwrap();
        assert_eq!(thread.as_deref(), Some("bcrypt-0"));
    }

    #[tokio::test]
    async fn a_full_queue_is_busy_at_once() {
        // One worker, no queue: while one hash runs (cost 14 takes about a
        // second), the next job is refused instead of waiting.
        let h = hasher(14, 1, 0);
        let (first, second) = tokio::join!(
            h.hash(NewPassword::parse("first password").unwrap()),
            h.hash(NewPassword::parse("second password").unwrap()),
        );
        assert!(first.is_ok());
        assert!(matches!(second, Err(HashError::Busy)));
    }
}
