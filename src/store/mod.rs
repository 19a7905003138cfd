//! PostgreSQL access with sqlx: one function per query, each next to its SQL.
//! Functions take a connection (`&mut PgConnection`) so the service decides
//! which of them share a transaction.

pub mod outbox;
pub mod sessions;
pub mod throttle;
pub mod users;

use std::collections::HashSet;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

/// The embedded migrations of `migrations/`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A failed database operation, classified for the caller.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or is shutting down: maps to
    /// UNAVAILABLE, and the request may be retried.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// Any other failure: a bug or a broken schema; maps to INTERNAL.
    #[error("database error: {0}")]
    Other(#[source] sqlx::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        if is_unavailable(&error) {
            Self::Unavailable(error)
        } else {
            Self::Other(error)
        }
    }
}

/// True for errors that say "the database is not there right now": I/O,
/// TLS, pool timeout or closed pool, and the SQLSTATEs of class 08
/// (connection exception), 57P01..57P03 (shutdown, cannot connect now) and
/// 53300 (too many connections).
fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08") || matches!(code.as_ref(), "57P01" | "57P02" | "57P03" | "53300")
        }),
        _ => false,
    }
}

/// Opens a pool of at most `max_connections`; acquiring a connection waits at
/// most `acquire_timeout` so a database outage surfaces as UNAVAILABLE
/// quickly instead of hanging requests.
///
/// # Errors
/// [`StoreError`] when the first connection cannot be made.
pub async fn connect(
    url: &str,
    max_connections: u32,
    acquire_timeout: Duration,
) -> Result<PgPool, StoreError> {
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(acquire_timeout)
        .connect(url)
        .await?)
}

/// Versions of the migrations applied successfully (none before the first),
/// for readiness.
///
/// # Errors
/// The database's.
pub async fn applied_migrations(pool: &PgPool) -> Result<HashSet<i64>, sqlx::Error> {
    let table: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await?;
    if !table {
        return Ok(HashSet::new());
    }
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(pool)
            .await?;
    Ok(versions.into_iter().collect())
}
