//! The relay's loop: start-up (pool, operator port, the outbox table), then
//! alternately standing by for the advisory lock and publishing while it is
//! held. Each stage returns an outcome (`Stopped`, `Step`) that says
//! what comes next, so the waits, the backoff and the hand-over are decided
//! in one place each.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::FutureExt as _;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::time::{Instant, sleep, sleep_until};

use crate::config::{RelayConfig, RetentionConfig};
use crate::observe::{self, Health, RelayProbe, Role};
use crate::pipeline::{BatchError, Pipeline};
use crate::publisher::Publisher;
use crate::store::{self, Lock};

/// Runs the relay until `shutdown` completes. The batch in flight when it
/// does is finished (produced, acknowledged, marked) before returning, so a
/// SIGTERM never strands an acknowledged event unmarked.
///
/// While another relay holds the advisory lock this one stands by, trying
/// the lock every poll interval; if its own lock connection dies it stops
/// publishing and stands by again.
///
/// # Errors
/// Only start-up failures that retrying cannot fix (bad settings, a producer
/// that librdkafka refuses to create). Database and broker outages are
/// waited out with backoff.
pub async fn run(config: RelayConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    tokio::pin!(shutdown);
    let publisher = Publisher::new(&config.kafka).context("creating the Kafka producer")?;
    let poll = config.publish.poll_interval;
    let pool = tokio::select! {
        pool = connect_with_retry(&config.database_url, poll) => pool,
        () = &mut shutdown => return Ok(()),
    };
    let health = Arc::new(Health::default());
    if let Some(addr) = config.metrics_addr {
        let broker = config
            .kafka
            .client_config()
            .create()
            .context("creating the broker probe")?;
        let probe = RelayProbe::new(Arc::clone(&health), pool.clone(), broker);
        observe::serve(addr, probe)
            .await
            .with_context(|| format!("binding RELAY_METRICS_ADDR {addr}"))?;
    }
    tokio::select! {
        () = wait_for_outbox(&pool, poll) => {}
        () = &mut shutdown => return Ok(()),
    }

    let mut worker = Worker {
        config,
        pool,
        publisher,
        health,
    };
    while let Some(lock) = worker.stand_by(&mut shutdown).await {
        match worker.publish(lock, &mut shutdown).await? {
            Stopped::Shutdown => break,
            Stopped::LockLost => {}
        }
    }
    worker.health.set_role(Role::Starting);
    tracing::info!("relay stopping");
    worker.publisher.flush();
    worker.pool.close().await;
    Ok(())
}

/// Why [`Worker::publish`] returned.
enum Stopped {
    /// The shutdown signal came.
    Shutdown,
    /// The lock's connection died: another relay may take over.
    LockLost,
}

/// What one publishing step found, which decides the wait before the next.
enum Step {
    /// A full batch was claimed: more may be waiting, so claim again at once.
    Full,
    /// The outbox is drained: wait for a NOTIFY or the poll interval.
    Drained,
    /// The batch failed: wait out the backoff.
    Failed(BatchError),
}

/// The wait after a failed batch: from the poll interval, doubling up to the
/// maximum, back to the poll interval after a good batch.
struct Backoff {
    poll: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(poll: Duration, max: Duration) -> Self {
        Self {
            poll,
            max,
            next: poll,
        }
    }

    fn reset(&mut self) {
        self.next = self.poll;
    }

    /// The wait after this failure; doubles the next one.
    fn fail(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        wait
    }
}

/// What the relay holds once started.
struct Worker {
    config: RelayConfig,
    pool: PgPool,
    publisher: Publisher,
    health: Arc<Health>,
}

impl Worker {
    /// Waits for the advisory lock as a standby; `None` when `shutdown` came
    /// first.
    async fn stand_by<S: Future<Output = ()>>(&self, shutdown: &mut Pin<&mut S>) -> Option<Lock> {
        self.health.set_role(Role::Standby);
        tokio::select! {
            lock = acquire_lock(&self.config.database_url, self.config.publish.poll_interval) => Some(lock),
            () = &mut *shutdown => None,
        }
    }

    /// Publishes while `lock` holds: makes sure of the configured topics,
    /// then steps, waking on `NOTIFY` or the poll interval when drained and
    /// after the backoff when a batch failed, cleaning up every cleanup
    /// interval and refreshing the backlog gauges once a second. The batch
    /// in flight is finished before returning for a lost lock or a shutdown.
    ///
    /// # Errors
    /// When a new producer cannot be created after an undelivered batch.
    async fn publish<S: Future<Output = ()>>(
        &mut self,
        mut lock: Lock,
        shutdown: &mut Pin<&mut S>,
    ) -> anyhow::Result<Stopped> {
        self.health.set_role(Role::Active);
        tracing::info!("holding the relay lock; publishing");
        self.publisher.ensure_topics().await;

        let poll = self.config.publish.poll_interval;
        let mut listener = listen(&self.pool).await;
        let mut pipeline = Pipeline::default();
        let mut backoff = Backoff::new(poll, self.config.publish.max_backoff);
        let mut next_cleanup = Instant::now();
        let mut next_backlog = Instant::now();
        loop {
            if shutdown.as_mut().now_or_never().is_some() {
                finish(&mut pipeline, &self.pool).await;
                return Ok(Stopped::Shutdown);
            }
            if let Err(e) = lock.check().await {
                tracing::warn!(error = %e, "lost the relay lock connection; standing by");
                finish(&mut pipeline, &self.pool).await;
                return Ok(Stopped::LockLost);
            }
            if Instant::now() >= next_cleanup {
                delete_expired(&self.pool, &self.config.retention).await;
                next_cleanup = Instant::now() + self.config.retention.cleanup_interval;
            }
            let step = self.step(&mut pipeline).await;
            if Instant::now() >= next_backlog {
                observe::update_backlog(&self.pool).await;
                next_backlog = Instant::now() + Duration::from_secs(1);
            }
            let wait = match step {
                Step::Full => {
                    backoff.reset();
                    continue;
                }
                Step::Drained => {
                    backoff.reset();
                    poll
                }
                Step::Failed(e) => {
                    let wait = backoff.fail();
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "batch failed");
                    if let Some(fatal) = self.publisher.fatal_error() {
                        tracing::error!(error = %fatal, "producer in a fatal state");
                    }
                    // Every delivery of the batch has reported, so nothing is
                    // in flight: a new producer (new producer id, fresh
                    // sequence numbers) costs a reconnect and clears any state
                    // the old one or a restarted broker got stuck in (a fatal
                    // idempotence error, an unknown producer id).
                    if matches!(e, BatchError::Undelivered { .. }) {
                        self.publisher
                            .replace_producer()
                            .context("re-creating the Kafka producer")?;
                    }
                    wait
                }
            };
            let deadline = Instant::now() + wait;
            tokio::select! {
                () = &mut *shutdown => return Ok(Stopped::Shutdown),
                () = wake(&mut listener, deadline) => {}
            }
        }
    }

    /// One pipeline step, judged: a full batch, a drained outbox, or a
    /// failure.
    async fn step(&mut self, pipeline: &mut Pipeline) -> Step {
        let batch_size = self.config.publish.batch_size;
        match pipeline
            .step(&self.pool, &mut self.publisher, batch_size)
            .await
        {
            Ok(claimed) if claimed as i64 >= batch_size => Step::Full,
            Ok(_) => Step::Drained,
            Err(e) => Step::Failed(e),
        }
    }
}

/// Completes the batch in flight; a failure leaves its rows unmarked, to be
/// sent again (at-least-once), and is only logged.
async fn finish(pipeline: &mut Pipeline, pool: &PgPool) {
    if let Err(e) = pipeline.finish(pool).await {
        tracing::warn!(error = %e, "the last batch did not fully publish");
    }
}

/// Completes at the next `NOTIFY outbox` or at `deadline`, whichever is first.
async fn wake(listener: &mut Option<PgListener>, deadline: Instant) {
    match listener {
        Some(l) => {
            tokio::select! {
                received = l.recv() => {
                    if let Err(e) = received {
                        tracing::warn!(error = %e, "LISTEN connection lost; polling until it returns");
                        sleep_until(deadline).await;
                    }
                }
                () = sleep_until(deadline) => {}
            }
        }
        None => sleep_until(deadline).await,
    }
}

/// The `LISTEN` connection, or `None` (polling only) when it cannot be had.
async fn listen(pool: &PgPool) -> Option<PgListener> {
    match store::listen(pool).await {
        Ok(listener) => Some(listener),
        Err(e) => {
            tracing::warn!(error = %e, "cannot LISTEN; polling only");
            None
        }
    }
}

async fn connect_with_retry(url: &str, poll: Duration) -> PgPool {
    retry(
        poll,
        "",
        "cannot connect to DATABASE_URL; retrying",
        || async { store::connect(url).await.map(Some) },
    )
    .await
}

/// Waits until the auth server's migrations created the outbox table.
async fn wait_for_outbox(pool: &PgPool, poll: Duration) {
    retry(
        poll,
        "waiting for the outbox table (the auth server creates it)",
        "cannot look for the outbox table; retrying",
        || async { Ok(store::outbox_exists(pool).await?.then_some(())) },
    )
    .await
}

/// Takes the relay's advisory lock, waiting while another relay holds it.
async fn acquire_lock(url: &str, poll: Duration) -> Lock {
    retry(
        poll,
        "another relay holds the lock; standing by",
        "cannot take the relay lock; retrying",
        || Lock::try_acquire(url),
    )
    .await
}

/// Calls `attempt` every `poll` until it gives a value. The first time it
/// gives `None` (not yet) logs `waiting` (info), once; each error is logged
/// as `failed` (warn), since a database that comes back ends the wait.
async fn retry<T, F, Fut>(poll: Duration, waiting: &str, failed: &str, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>, sqlx::Error>>,
{
    let mut logged = false;
    loop {
        match attempt().await {
            Ok(Some(value)) => return value,
            Ok(None) if !logged => {
                tracing::info!("{waiting}");
                logged = true;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "{failed}"),
        }
        sleep(poll).await;
    }
}

/// At most this many batches per clean-up run, so a huge backlog of old rows
/// never delays publishing for long; the next run goes on.
const MAX_BATCHES_PER_RUN: usize = 100;

/// Retention: deletes published rows older than the retention period in
/// batches of `cleanup_batch`, at most [`MAX_BATCHES_PER_RUN`] per run;
/// returns how many. Failures are logged and retried at the next run.
async fn delete_expired(pool: &PgPool, config: &RetentionConfig) -> u64 {
    let batch = u64::try_from(config.cleanup_batch).unwrap_or(u64::MAX);
    let deleted = realchat_runtime::housekeeping::delete_in_batches(
        batch,
        MAX_BATCHES_PER_RUN,
        "retention clean-up failed; retrying later",
        || store::delete_published(pool, config.retention, config.cleanup_batch),
    )
    .await;
    if deleted > 0 {
        tracing::info!(deleted, "deleted published outbox rows past retention");
    }
    deleted
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Backoff;

    #[test]
    fn backoff_doubles_to_the_max_and_resets() {
        let ms = Duration::from_millis;
        let mut backoff = Backoff::new(ms(100), ms(350));
        assert_eq!(
            [
                backoff.fail(),
                backoff.fail(),
                backoff.fail(),
                backoff.fail()
            ],
            [ms(100), ms(200), ms(350), ms(350)]
        );
        backoff.reset();
        assert_eq!(backoff.fail(), ms(100));
    }
}
