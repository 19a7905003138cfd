//! Every query the relay runs, one function each with its SQL beside it:
//! the pool, the claim and the mark, the advisory lock, the outbox-table
//! check, retention, the backlog, the `LISTEN` and the readiness check.
//! Callers decide what a failure means (retry, log, stand by); nothing here
//! records metrics.

use std::time::Duration;

use chrono::{DateTime, Utc};
use realchat_runtime::outbox::NOTIFY_CHANNEL;
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::{Connection as _, PgConnection, PgPool};
use uuid::Uuid;

/// Key of the PostgreSQL advisory lock that the active relay holds.
pub const ADVISORY_LOCK_KEY: i64 = 0x5245_4c41_5931; // "RELAY1"

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

/// Whether the auth server's migrations created the outbox table yet.
///
/// # Errors
/// `sqlx::Error` when the database cannot be asked.
pub async fn outbox_exists(pool: &PgPool) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT to_regclass('outbox') IS NOT NULL")
        .fetch_one(pool)
        .await
}

/// The relay's session-level advisory lock, held as long as this value (its
/// own connection) lives.
pub struct Lock(PgConnection);

impl Lock {
    /// Takes the lock on a new connection to `url`; `None` while another
    /// relay holds it.
    ///
    /// # Errors
    /// `sqlx::Error` when the connection or the query fails.
    pub async fn try_acquire(url: &str) -> Result<Option<Self>, sqlx::Error> {
        let mut conn = PgConnection::connect(url).await?;
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(ADVISORY_LOCK_KEY)
            .fetch_one(&mut conn)
            .await?;
        Ok(got.then_some(Self(conn)))
    }

    /// Checks that the lock's connection is alive, so the lock still held.
    ///
    /// # Errors
    /// `sqlx::Error` when the connection is gone (and with it the lock).
    pub async fn check(&mut self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1").execute(&mut self.0).await.map(drop)
    }
}

/// A `LISTEN` on [`NOTIFY_CHANNEL`], on its own connection from `pool`'s
/// settings.
///
/// # Errors
/// `sqlx::Error` when the connection or the `LISTEN` fails.
pub async fn listen(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(NOTIFY_CHANNEL).await?;
    Ok(listener)
}

/// The claim statement: up to `$1` unpublished rows in `seq` order whose
/// `seq` is below `$2` or above `$3` (the range of the batch in flight;
/// `$2 = 0, $3 = -1` skips nothing). Columns: `id`, `seq`, `aggregatetype`,
/// `aggregateid`, `type`, `payload` (as text), `created_at`.
///
/// It is two ordered scans of the unpublished-rows index, below and above
/// the range, merged, so each stops after `$1` rows and a claim costs the
/// same whatever the backlog. (`seq < $2 OR seq > $3` made PostgreSQL read
/// every unpublished row and sort them; see [`connect`] for the rest.)
pub const CLAIM: &str = "\
    SELECT id, seq, aggregatetype, aggregateid, type, payload::text AS payload, created_at
    FROM ((SELECT * FROM outbox WHERE published_at IS NULL AND seq < $2 ORDER BY seq LIMIT $1)
          UNION ALL
          (SELECT * FROM outbox WHERE published_at IS NULL AND seq > $3 ORDER BY seq LIMIT $1))
         AS unpublished
    ORDER BY seq LIMIT $1";

/// One unpublished outbox row, as [`CLAIM`] reads it.
#[derive(Debug, sqlx::FromRow)]
pub struct Row {
    /// The event id (`ce_id`).
    pub id: Uuid,
    /// Claim order.
    pub seq: i64,
    /// Picks the topic.
    pub aggregatetype: String,
    /// The message key.
    pub aggregateid: String,
    /// The event type (`ce_type`).
    #[sqlx(rename = "type")]
    pub event_type: String,
    /// The JSON payload, as text.
    pub payload: String,
    /// When the event happened (`ce_time`).
    pub created_at: DateTime<Utc>,
}

/// Up to `limit` unpublished rows in `seq` order, skipping the `seq` range
/// `skip` (inclusive; see [`CLAIM`]).
///
/// # Errors
/// `sqlx::Error`.
pub async fn claim(
    pool: &PgPool,
    limit: i64,
    skip: Option<(i64, i64)>,
) -> Result<Vec<Row>, sqlx::Error> {
    let (lo, hi) = skip.unwrap_or((0, -1));
    sqlx::query_as(CLAIM)
        .bind(limit)
        .bind(lo)
        .bind(hi)
        .fetch_all(pool)
        .await
}

/// Marks the rows `ids` published (now).
///
/// # Errors
/// `sqlx::Error`; the rows then stay unpublished.
pub async fn mark_published(pool: &PgPool, ids: &[Uuid]) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE outbox SET published_at = now() WHERE id = ANY($1)")
        .bind(ids)
        .execute(pool)
        .await
        .map(drop)
}

/// Deletes up to `limit` published rows published more than `retention`
/// ago, oldest first, in one short statement; returns how many. Never
/// touches unpublished rows.
///
/// # Errors
/// `sqlx::Error`.
pub async fn delete_published(
    pool: &PgPool,
    retention: Duration,
    limit: i64,
) -> Result<u64, sqlx::Error> {
    sqlx::query(
        "DELETE FROM outbox WHERE id IN (
             SELECT id FROM outbox
             WHERE published_at IS NOT NULL
               AND published_at < now() - make_interval(secs => $1)
             ORDER BY published_at
             LIMIT $2)",
    )
    .bind(retention.as_secs_f64())
    .bind(limit)
    .execute(pool)
    .await
    .map(|done| done.rows_affected())
}

/// The backlog: how many rows are unpublished, and the age in seconds of
/// the oldest of them (0 when there is none).
///
/// # Errors
/// `sqlx::Error`.
pub async fn backlog(pool: &PgPool) -> Result<(i64, f64), sqlx::Error> {
    sqlx::query_as(
        "SELECT count(*),
                COALESCE(EXTRACT(EPOCH FROM now() - min(created_at))::float8, 0)
         FROM outbox WHERE published_at IS NULL",
    )
    .fetch_one(pool)
    .await
}

/// Readiness: whether `pool` reaches PostgreSQL.
///
/// # Errors
/// `sqlx::Error` when it does not.
pub async fn ping(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(pool).await.map(drop)
}
