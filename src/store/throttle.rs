//! The `login_throttle` table: login attempts per account and per client
//! within a window.
//!
//! An attempt is counted before its password is checked, in one atomic
//! upsert, so parallel guesses cannot all pass a check made before any of
//! them was counted. A success then takes its own attempt back: it resets
//! the account and uncounts itself from the client. So does an attempt that
//! was refused (by the throttle or a full bcrypt pool) or left unanswered
//! (timed out, cancelled): the counts are of wrong passwords and attempts in
//! flight. Statements lock rows in key order (the upsert), one row at a
//! time, or skip locked rows (the purge), so concurrent logins of one
//! account or client cannot deadlock.

use sqlx::PgConnection;

use super::StoreError;

/// Limits and window of the throttle.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Failures of one account within a window after which it is blocked.
    pub per_account: i32,
    /// Failures from one client within a window after which it is blocked.
    pub per_client: i32,
    /// Window length, seconds.
    pub window_secs: u64,
}

fn keys(account: Option<&str>, client: Option<&str>) -> (Option<String>, Option<String>) {
    (
        account.map(|a| format!("account:{a}")),
        client.map(|c| format!("client:{c}")),
    )
}

/// Counts one login attempt against `account` and `client`; returns the
/// seconds until the later block ends when either is now over its limit
/// (the caller refuses the attempt without checking the password), else
/// `None`. A window older than `window_secs` starts over.
///
/// # Errors
/// [`StoreError`].
pub async fn begin_attempt(
    conn: &mut PgConnection,
    account: Option<&str>,
    client: Option<&str>,
    limits: Limits,
) -> Result<Option<f64>, StoreError> {
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
    .bind(limits.window_secs as f64)
    .fetch_all(conn)
    .await?;
    let blocked = counted
        .into_iter()
        .filter(|(key, failures, _)| {
            let limit = if Some(key) == account_key.as_ref() {
                limits.per_account
            } else {
                limits.per_client
            };
            *failures > limit
        })
        .map(|(_, _, remaining)| remaining)
        .fold(None, |longest: Option<f64>, r| {
            Some(longest.map_or(r, |l| l.max(r)))
        });
    Ok(blocked.filter(|secs| *secs > 0.0))
}

/// Deletes up to `batch` rows whose window ended; returns how many.
///
/// # Errors
/// [`StoreError`].
pub async fn purge(
    conn: &mut PgConnection,
    window_secs: u64,
    batch: i64,
) -> Result<u64, StoreError> {
    let done = sqlx::query(
        "DELETE FROM login_throttle WHERE key IN (
             SELECT key FROM login_throttle
             WHERE window_start <= now() - make_interval(secs => $1)
             LIMIT $2 FOR UPDATE SKIP LOCKED)",
    )
    .bind(window_secs as f64)
    .bind(batch)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// Takes back a successful attempt: forgets the account's failures and
/// uncounts the attempt from the client.
///
/// # Errors
/// [`StoreError`].
pub async fn succeeded(
    conn: &mut PgConnection,
    account: Option<&str>,
    client: Option<&str>,
) -> Result<(), StoreError> {
    let (account_key, client_key) = keys(account, client);
    // One row per statement: a statement that locked both rows, in an order
    // of its own, could deadlock with `begin_attempt`.
    if let Some(key) = account_key {
        sqlx::query("DELETE FROM login_throttle WHERE key = $1")
            .bind(key)
            .execute(&mut *conn)
            .await?;
    }
    uncount(conn, client_key).await
}

/// Takes back an attempt whose password was never checked (the bcrypt pool
/// was full): it is not a failure, so it leaves both counts as they were.
///
/// # Errors
/// [`StoreError`].
pub async fn abandoned(
    conn: &mut PgConnection,
    account: Option<&str>,
    client: Option<&str>,
) -> Result<(), StoreError> {
    let (account_key, client_key) = keys(account, client);
    uncount(&mut *conn, account_key).await?;
    uncount(conn, client_key).await
}

/// Takes one attempt back from `key`'s count.
async fn uncount(conn: &mut PgConnection, key: Option<String>) -> Result<(), StoreError> {
    if let Some(key) = key {
        sqlx::query(
            "UPDATE login_throttle SET failures = failures - 1 WHERE key = $1 AND failures > 0",
        )
        .bind(key)
        .execute(conn)
        .await?;
    }
    Ok(())
}
