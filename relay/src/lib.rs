//! The outbox relay: tails the `outbox` table and publishes each row to Kafka
//! with at-least-once delivery.
//!
//! Loop: wait for the outbox table; hold the relay's advisory lock (one
//! publisher at a time); then repeatedly claim unpublished rows by the
//! `published_at IS NULL` flag in `seq` order, produce them with the
//! idempotent producer (`acks=all`, key = aggregate id, CloudEvents headers),
//! await every delivery report, and mark published only the acknowledged
//! prefix of the batch. Wakes on `LISTEN outbox`, polls as a fallback.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![warn(missing_docs)]

pub mod config;
pub mod kafka;
pub mod observe;
mod outbox;
mod retention;

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::FutureExt as _;
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::{Connection as _, PgConnection, PgPool};
use tokio::time::{Instant, sleep, sleep_until};

pub use config::RelayConfig;
pub use outbox::CLAIM;

/// Key of the PostgreSQL advisory lock that the active relay holds.
pub const ADVISORY_LOCK_KEY: i64 = 0x5245_4c41_5931; // "RELAY1"

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
    let mut producer = kafka::producer(&config).context("creating the Kafka producer")?;
    let poll = Duration::from_millis(config.poll_interval_ms);
    let pool = tokio::select! {
        pool = connect_with_retry(&config.database_url, poll) => pool,
        () = &mut shutdown => return Ok(()),
    };
    let health = Arc::new(observe::Health::default());
    if let Some(addr) = config.metrics_addr {
        let probe = kafka::client_config(&config)
            .create()
            .context("creating the broker probe")?;
        observe::serve(addr, Arc::clone(&health), pool.clone(), probe)
            .await
            .with_context(|| format!("binding RELAY_METRICS_ADDR {addr}"))?;
    }
    tokio::select! {
        () = wait_for_outbox(&pool, poll) => {}
        () = &mut shutdown => return Ok(()),
    }

    let mut topics = HashSet::new();
    'standby: loop {
        health.set_role(observe::Role::Standby);
        let mut lock = tokio::select! {
            lock = acquire_lock(&config.database_url, poll) => lock,
            () = &mut shutdown => break 'standby,
        };
        health.set_role(observe::Role::Active);
        tracing::info!("holding the relay lock; publishing");
        for aggregate in &config.aggregate_types {
            let topic = config.topic_for(aggregate);
            match kafka::ensure_topic(&config, &topic).await {
                Ok(()) => {
                    topics.insert(topic);
                }
                Err(e) => tracing::warn!(%topic, error = %e, "cannot create topic yet; will retry"),
            }
        }

        let mut listener = listen(&pool).await;
        let mut pipeline = outbox::Pipeline::default();
        let mut backoff = poll;
        let mut next_cleanup = Instant::now();
        let mut next_backlog = Instant::now();
        loop {
            if shutdown.as_mut().now_or_never().is_some() {
                finish(&mut pipeline, &pool).await;
                break 'standby;
            }
            if let Err(e) = sqlx::query("SELECT 1").execute(&mut lock).await {
                tracing::warn!(error = %e, "lost the relay lock connection; standing by");
                finish(&mut pipeline, &pool).await;
                continue 'standby;
            }
            if Instant::now() >= next_cleanup {
                retention::delete_expired(&pool, &config).await;
                next_cleanup = Instant::now() + Duration::from_secs(config.cleanup_interval_secs);
            }
            let outcome = pipeline.step(&pool, &producer, &config, &mut topics).await;
            if Instant::now() >= next_backlog {
                observe::update_backlog(&pool).await;
                next_backlog = Instant::now() + Duration::from_secs(1);
            }
            let wait = match outcome {
                Ok(claimed) if claimed as i64 >= config.batch_size => {
                    backoff = poll;
                    continue;
                }
                Ok(_) => {
                    backoff = poll;
                    poll
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "batch failed");
                    if let Some(fatal) = kafka::fatal_error(&producer) {
                        tracing::error!(error = %fatal, "producer in a fatal state");
                    }
                    // Every delivery of the batch has reported, so nothing is
                    // in flight: a new producer (new producer id, fresh
                    // sequence numbers) costs a reconnect and clears any state
                    // the old one or a restarted broker got stuck in (a fatal
                    // idempotence error, an unknown producer id).
                    if matches!(e, outbox::BatchError::Undelivered { .. }) {
                        producer =
                            kafka::producer(&config).context("re-creating the Kafka producer")?;
                    }
                    let wait = backoff;
                    backoff = (backoff * 2).min(Duration::from_millis(config.max_backoff_ms));
                    wait
                }
            };
            let deadline = Instant::now() + wait;
            tokio::select! {
                () = &mut shutdown => break 'standby,
                () = wake(&mut listener, deadline) => {}
            }
        }
    }
    health.set_role(observe::Role::Starting);
    tracing::info!("relay stopping");
    kafka::flush(&producer);
    pool.close().await;
    Ok(())
}

/// Completes the batch in flight; a failure leaves its rows unmarked, to be
/// sent again (at-least-once), and is only logged.
async fn finish(pipeline: &mut outbox::Pipeline, pool: &PgPool) {
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

async fn listen(pool: &PgPool) -> Option<PgListener> {
    let mut listener = match PgListener::connect_with(pool).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "cannot LISTEN; polling only");
            return None;
        }
    };
    match listener.listen("outbox").await {
        Ok(()) => Some(listener),
        Err(e) => {
            tracing::warn!(error = %e, "cannot LISTEN; polling only");
            None
        }
    }
}

/// Connects the relay's pool to `url`: at most 4 connections, each of
/// which runs `SET enable_bitmapscan = off` when it opens.
///
/// Every query of the relay reads a few rows in index order
/// (`ORDER BY … LIMIT`) or looks rows up by key. Where the planner has no
/// statistics for the outbox yet (a new deployment, or a backlog built up
/// before autovacuum analyzed the table) it guesses a handful of
/// unpublished rows where there are thousands, and then reads every one of
/// them with a bitmap scan and sorts them, per batch: 40 ms instead of
/// under 1 ms for a 500-row claim from 50,000 unpublished rows, so draining
/// a backlog took time quadratic in its size.
/// A `SET` rather than a startup option, so that a connection pooler in
/// session mode (PgBouncer) passes it on.
///
/// # Errors
/// `sqlx::Error` when `url` does not parse or the first connection fails.
pub async fn connect(url: &str) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(5))
        .after_connect(|conn, _| {
            Box::pin(async move {
                sqlx::query("SET enable_bitmapscan = off")
                    .execute(conn)
                    .await
                    .map(drop)
            })
        })
        .connect(url)
        .await
}

async fn connect_with_retry(url: &str, poll: Duration) -> PgPool {
    loop {
        match connect(url).await {
            Ok(pool) => return pool,
            Err(e) => {
                tracing::warn!(error = %e, "cannot connect to DATABASE_URL; retrying");
                sleep(poll).await;
            }
        }
    }
}

/// Waits until the auth server's migrations created the outbox table.
async fn wait_for_outbox(pool: &PgPool, poll: Duration) {
    let mut logged = false;
    loop {
        let found: Result<bool, _> = sqlx::query_scalar("SELECT to_regclass('outbox') IS NOT NULL")
            .fetch_one(pool)
            .await;
        match found {
            Ok(true) => return,
            Ok(false) if !logged => {
                tracing::info!("waiting for the outbox table (the auth server creates it)");
                logged = true;
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "cannot look for the outbox table; retrying"),
        }
        sleep(poll).await;
    }
}

/// Takes the relay's session-level advisory lock on a dedicated connection,
/// waiting while another relay holds it. The lock lives as long as the
/// returned connection.
async fn acquire_lock(url: &str, poll: Duration) -> PgConnection {
    let mut logged = false;
    loop {
        let attempt = async {
            let mut conn = PgConnection::connect(url).await?;
            let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(ADVISORY_LOCK_KEY)
                .fetch_one(&mut conn)
                .await?;
            Ok::<_, sqlx::Error>(got.then_some(conn))
        };
        match attempt.await {
            Ok(Some(conn)) => return conn,
            Ok(None) if !logged => {
                tracing::info!("another relay holds the lock; standing by");
                logged = true;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot take the relay lock; retrying"),
        }
        sleep(poll).await;
    }
}

pub use kafka::settings_from_env as kafka_settings_from_env;
