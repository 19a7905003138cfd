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

/// One key's count after an attempt was added to it (or, from [`peek`],
/// would be).
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
    Ok(to_counts(counted, account_key.as_deref()))
}

/// The counts [`count_attempt`] would return for one more attempt against
/// `account` and `client`, without writing: a key's failures plus one in a
/// live window, 1 (and a whole `window` left) for a key whose window
/// ended or that has no row. Locks nothing, so a check made on it can be
/// overtaken by concurrent attempts; it keeps refused attempts from
/// creating rows, and [`count_attempt`] stays the check that holds.
///
/// # Errors
/// [`StoreError`].
pub async fn peek(
    conn: &mut PgConnection,
    account: Option<&str>,
    client: Option<&str>,
    window: Duration,
) -> Result<Counts, StoreError> {
    let (account_key, client_key) = keys(account, client);
    let would: Vec<(String, i32, f64)> = sqlx::query_as(
        "SELECT k.key,
                CASE WHEN t.window_start > now() - make_interval(secs => $3)
                     THEN t.failures + 1 ELSE 1 END,
                CASE WHEN t.window_start > now() - make_interval(secs => $3)
                     THEN EXTRACT(EPOCH FROM t.window_start + make_interval(secs => $3) - now())::float8
                     ELSE $3 END
         FROM unnest(ARRAY[$1, $2]::text[]) AS k(key)
         LEFT JOIN login_throttle t ON t.key = k.key
         WHERE k.key IS NOT NULL",
    )
    .bind(&account_key)
    .bind(&client_key)
    .bind(window.as_secs_f64())
    .fetch_all(conn)
    .await?;
    Ok(to_counts(would, account_key.as_deref()))
}

/// Rows of (key, attempts, seconds left) as the account's and the client's
/// counts; a key that is not `account_key` is the client's.
fn to_counts(rows: Vec<(String, i32, f64)>, account_key: Option<&str>) -> Counts {
    let mut counts = Counts::default();
    for (key, attempts, window_left_secs) in rows {
        let count = Some(Count {
            attempts,
            window_left_secs,
        });
        if Some(key.as_str()) == account_key {
            counts.account = count;
        } else {
            counts.client = count;
        }
    }
    counts
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
/// zero), and deletes a row left at zero: a count of nothing is no state to
/// keep, and a client refused over and over must not leave a row per
/// address it tried. The decrement comes first and the delete re-checks
/// the count, so an attempt counted in between (the row is back above
/// zero) is never lost. One row per statement: a statement that locked
/// both rows, in an order of its own, could deadlock with
/// [`count_attempt`].
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
        .bind(&key)
        .execute(&mut *conn)
        .await?;
        sqlx::query("DELETE FROM login_throttle WHERE key = $1 AND failures <= 0")
            .bind(&key)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}
