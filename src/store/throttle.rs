//! The `login_throttle` table: failed logins per account and per client
//! within a sliding-start window.

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

/// Seconds until the longest block among `account` and `client` ends, or
/// `None` when neither is blocked.
///
/// # Errors
/// [`StoreError`].
pub async fn blocked_for(
    conn: &mut PgConnection,
    account: Option<&str>,
    client: Option<&str>,
    limits: Limits,
) -> Result<Option<f64>, StoreError> {
    let remaining: Option<f64> = sqlx::query_scalar(
        "SELECT max(EXTRACT(EPOCH FROM window_start + make_interval(secs => $5) - now()))::float8
         FROM login_throttle
         WHERE window_start > now() - make_interval(secs => $5)
           AND ((key = $1 AND failures >= $3) OR (key = $2 AND failures >= $4))",
    )
    .bind(account.map(|a| format!("account:{a}")))
    .bind(client.map(|c| format!("client:{c}")))
    .bind(limits.per_account)
    .bind(limits.per_client)
    .bind(limits.window_secs as f64)
    .fetch_one(conn)
    .await?;
    Ok(remaining.filter(|secs| *secs > 0.0))
}

/// Counts one failed login against `account` and `client`.
///
/// # Errors
/// [`StoreError`].
pub async fn record_failure(
    conn: &mut PgConnection,
    account: Option<&str>,
    client: Option<&str>,
    limits: Limits,
) -> Result<(), StoreError> {
    let keys: Vec<String> = account
        .map(|a| format!("account:{a}"))
        .into_iter()
        .chain(client.map(|c| format!("client:{c}")))
        .collect();
    sqlx::query(
        "INSERT INTO login_throttle (key, failures, window_start)
         SELECT key, 1, now() FROM unnest($1::text[]) AS key
         ON CONFLICT (key) DO UPDATE SET
           failures = CASE WHEN login_throttle.window_start <= now() - make_interval(secs => $2)
                           THEN 1 ELSE login_throttle.failures + 1 END,
           window_start = CASE WHEN login_throttle.window_start <= now() - make_interval(secs => $2)
                               THEN now() ELSE login_throttle.window_start END",
    )
    .bind(keys)
    .bind(limits.window_secs as f64)
    .execute(conn)
    .await?;
    Ok(())
}

/// Forgets the failures of `account` (after a successful login).
///
/// # Errors
/// [`StoreError`].
pub async fn reset_account(conn: &mut PgConnection, account: &str) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM login_throttle WHERE key = $1")
        .bind(format!("account:{account}"))
        .execute(conn)
        .await?;
    Ok(())
}
