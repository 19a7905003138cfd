//! The `outbox` table (Debezium Outbox Event Router column names).

use sqlx::PgConnection;
use uuid::Uuid;

use super::StoreError;

/// One outbox row to write.
#[derive(Debug)]
pub struct NewEvent<'a> {
    /// The event id (`ce_id` on the wire).
    pub id: Uuid,
    /// Aggregate type (`user`); the relay picks the topic by it.
    pub aggregatetype: &'a str,
    /// Aggregate id (the user id); the Kafka key.
    pub aggregateid: String,
    /// Event type (`UserRegistered`), stored in the `type` column.
    pub event_type: &'a str,
    /// The event as JSON.
    pub payload: serde_json::Value,
    /// When the event happened; becomes `created_at` and the `ce_time` header.
    pub occurred_at: chrono::DateTime<chrono::Utc>,
}

/// Inserts the event and queues a `NOTIFY` on the outbox channel
/// ([`realchat_runtime::outbox::NOTIFY_CHANNEL`]), which PostgreSQL delivers
/// when (and only if) the surrounding transaction commits.
///
/// The insert first takes a transaction-scoped advisory lock on the
/// aggregate, held until commit, so two transactions writing events of one
/// aggregate take their `seq` in the order they commit: without it a
/// transaction that got the lower `seq` could commit second, and the relay
/// (which publishes what has committed, in `seq` order) would put the
/// aggregate's events on the topic out of `seq` order. Call it after the
/// transaction's row locks on users and sessions (the use-cases write their
/// events last): a transaction holding this lock may still take rows no one
/// holds while waiting for it (DeleteAccount's throttle and published
/// outbox rows), but never a row another writer of the aggregate may hold,
/// so it cannot deadlock.
///
/// # Errors
/// [`StoreError`].
pub async fn insert(conn: &mut PgConnection, event: NewEvent<'_>) -> Result<(), StoreError> {
    sqlx::query(
        "WITH ordered AS (
           SELECT pg_advisory_xact_lock(hashtextextended($2 || '/' || $3, 0))
         )
         INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload, created_at)
         SELECT $1, $2, $3, $4, $5, $6 FROM ordered",
    )
    .bind(event.id)
    .bind(event.aggregatetype)
    .bind(event.aggregateid)
    .bind(event.event_type)
    .bind(event.payload)
    .bind(event.occurred_at)
    .execute(&mut *conn)
    .await?;
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(realchat_runtime::outbox::NOTIFY_CHANNEL)
        .execute(conn)
        .await?;
    Ok(())
}

/// Deletes the published rows of one aggregate (`aggregatetype`,
/// `aggregateid`); returns how many. Rows still waiting for the relay stay,
/// so they are still delivered, in order.
///
/// # Errors
/// [`StoreError`].
pub async fn delete_published(
    conn: &mut PgConnection,
    aggregatetype: &str,
    aggregateid: &str,
) -> Result<u64, StoreError> {
    let done = sqlx::query(
        "DELETE FROM outbox
         WHERE aggregatetype = $1 AND aggregateid = $2 AND published_at IS NOT NULL",
    )
    .bind(aggregatetype)
    .bind(aggregateid)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}
