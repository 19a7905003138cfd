//! The `login_throttle` table: counts of login attempts per key within a
//! window. The rule that reads them (limits, what is a failure, when an
//! attempt is taken back) is `service::throttle`'s; this module only counts.
//!
//! Keys are `account:<normalised email>` and `client:<canonical address>`.
//! Statements lock rows in key order (the upsert), one row at a time, or
//! skip locked rows (the purge), so concurrent logins of one account or
//! client cannot deadlock.

use std::time::Duration;

use sqlx::PgConnection;

use super::StoreError;

/// One key's count after an attempt was added to it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Count {
    /// Attempts counted in the key's current window, this one included.
    pub attempts: i32,
    /// Seconds until the key's window ends.
    pub window_left_secs: f64,
}

/// The counts of the account and the client an attempt was counted against
/// (`None` for a side the attempt did not name).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counts {
    /// The account's count.
    pub account: Option<Count>,
    /// The client's count.
    pub client: Option<Count>,
}

fn keys(account: Option<&str>, client: Option<&str>) -> (Option<String>, Option<String>) {
    (
        account.map(|a| format!("account:{a}")),
        client.map(|c| format!("client:{c}")),
    )
}

/// Adds one attempt to `account` and `client`, in one atomic upsert, and
/// returns their counts. A window older than `window` starts over.
///
/// # Errors
/// [`StoreError`].
pub async fn count_attempt(
    conn: &mut PgConnection,
    account: Option<&str>,
    client: Option<&str>,
    window: Duration,
) -> Result<Counts, StoreError> {
    let (account_key, client_key) = keys(account, client);
    let counted: Vec<(String, i32, f64)> = sqlx::query_as(
        "INSERT INTO login_throttle (key, failures, window_start)
         SELECT key, 1, now() FROM unnest(ARRAY[$1, $2]::text[]) AS key WHERE key IS NOT NULL
         ORDER BY key
         ON CONFLICT (key) DO UPDATE SET
           failures = CASE WHEN login_throttle.window_start <= now() - make_interval(secs => $3)
                           THEN 1 ELSE login_throttle.failures + 1 END,
           window_start = CASE WHEN login_throttle.window_start <= now() - make_interval(secs => $3)
                               THEN now() ELSE login_throttle.window_start END
         RETURNING key, failures,
                   EXTRACT(EPOCH FROM window_start + make_interval(secs => $3) - now())::float8",
    )
    .bind(&account_key)
    .bind(&client_key)
    .bind(window.as_secs_f64())
    .fetch_all(conn)
    .await?;
    let mut counts = Counts::default();
    for (key, attempts, window_left_secs) in counted {
        let count = Some(Count {
            attempts,
            window_left_secs,
        });
        if Some(&key) == account_key.as_ref() {
            counts.account = count;
        } else {
            counts.client = count;
        }
    }
    Ok(counts)
}

/// Deletes up to `batch` rows whose window ended; returns how many.
///
/// # Errors
/// [`StoreError`].
pub async fn purge(
    conn: &mut PgConnection,
    window: Duration,
    batch: i64,
) -> Result<u64, StoreError> {
    let done = sqlx::query(
        "DELETE FROM login_throttle WHERE key IN (
             SELECT key FROM login_throttle
             WHERE window_start <= now() - make_interval(secs => $1)
             LIMIT $2 FOR UPDATE SKIP LOCKED)",
    )
    .bind(window.as_secs_f64())
    .bind(batch)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// Forgets every attempt of `account`.
///
/// # Errors
/// [`StoreError`].
pub async fn reset_account(conn: &mut PgConnection, account: &str) -> Result<(), StoreError> {
    let (key, _) = keys(Some(account), None);
    sqlx::query("DELETE FROM login_throttle WHERE key = $1")
        .bind(key)
        .execute(conn)
        .await?;
    Ok(())
}

/// Takes one attempt back from `account` and from `client` (never below
/// zero). One row per statement: a statement that locked both rows, in an
/// order of its own, could deadlock with [`count_attempt`].
///
/// # Errors
/// [`StoreError`].
pub async fn uncount(
    conn: &mut PgConnection,
    account: Option<&str>,
    client: Option<&str>,
) -> Result<(), StoreError> {
    let (account_key, client_key) = keys(account, client);
    for key in [account_key, client_key].into_iter().flatten() {
        sqlx::query(
            "UPDATE login_throttle SET failures = failures - 1 WHERE key = $1 AND failures > 0",
        )
        .bind(key)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}
