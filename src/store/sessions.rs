//! The `sessions` table: one row per refresh-token family.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use std::time::Duration;

use super::StoreError;
use crate::domain::{SessionId, TokenId, UserId};

/// Why a session was revoked, stored in `revoke_reason`.
#[derive(Debug, Clone, Copy)]
pub enum RevokeReason {
    /// The user logged out.
    Logout,
    /// A retired refresh token was presented after the grace window
    /// (RFC 9700 §4.14.2 reuse detection).
    RefreshTokenReuse,
}

impl RevokeReason {
    fn as_str(self) -> &'static str {
        match self {
            Self::Logout => "logout",
            Self::RefreshTokenReuse => "refresh_token_reuse",
        }
    }
}

/// A session row as the refresh logic needs it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Session {
    /// Session id (the `sid` claim).
    pub id: SessionId,
    /// Owner (the `sub` claim).
    pub user_id: UserId,
    /// jti of the one refresh token that may be rotated now.
    pub current_jti: TokenId,
    /// iat of that token (whole seconds).
    pub current_issued_at: DateTime<Utc>,
    /// jti retired by the latest rotation.
    pub previous_jti: Option<TokenId>,
    /// When the latest rotation happened.
    pub rotated_at: Option<DateTime<Utc>>,
    /// exp of the current refresh token.
    pub expires_at: DateTime<Utc>,
    /// Set once the session is revoked (logout or reuse).
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Inserts a new session whose current refresh token is `jti`, issued at
/// `issued_at` and expiring at `expires_at`.
///
/// # Errors
/// [`StoreError`].
pub async fn insert(
    conn: &mut PgConnection,
    id: SessionId,
    user_id: UserId,
    jti: TokenId,
    issued_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO sessions (id, user_id, current_jti, current_issued_at, expires_at, created_at)
         VALUES ($1, $2, $3, $4, $5, $4)",
    )
    .bind(id)
    .bind(user_id)
    .bind(jti)
    .bind(issued_at)
    .bind(expires_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Reads the session and locks its row until the transaction ends, so that
/// concurrent refreshes of one family are serialised.
///
/// # Errors
/// [`StoreError`].
pub async fn lock(conn: &mut PgConnection, id: SessionId) -> Result<Option<Session>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT id, user_id, current_jti, current_issued_at, previous_jti, rotated_at,
                expires_at, revoked_at
         FROM sessions WHERE id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(conn)
    .await?)
}

/// Rotates the session: the current jti becomes the previous one, retired at
/// `rotated_at`, and `new_jti`, issued at `issued_at` (whole seconds, the
/// token's iat), becomes current.
///
/// # Errors
/// [`StoreError`].
pub async fn rotate(
    conn: &mut PgConnection,
    id: SessionId,
    new_jti: TokenId,
    rotated_at: DateTime<Utc>,
    issued_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE sessions
         SET previous_jti = current_jti, rotated_at = $3, current_jti = $2,
             current_issued_at = $4, expires_at = $5, last_refreshed_at = $3
         WHERE id = $1",
    )
    .bind(id)
    .bind(new_jti)
    .bind(rotated_at)
    .bind(issued_at)
    .bind(expires_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Deletes up to `batch` sessions that expired or were revoked more than
/// `retention` ago; returns how many.
///
/// # Errors
/// [`StoreError`].
pub async fn purge(
    conn: &mut PgConnection,
    retention: Duration,
    batch: i64,
) -> Result<u64, StoreError> {
    let done = sqlx::query(
        "DELETE FROM sessions WHERE id IN (
             SELECT id FROM sessions
             WHERE LEAST(expires_at, COALESCE(revoked_at, 'infinity'))
                   < now() - make_interval(secs => $1)
             LIMIT $2)",
    )
    .bind(retention.as_secs_f64())
    .bind(batch)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// Locks every session of `user_id`, in id order (so concurrent callers
/// cannot deadlock), until the transaction ends; returns whether session
/// `id` is among them and not revoked.
///
/// # Errors
/// [`StoreError`].
pub async fn lock_user_sessions(
    conn: &mut PgConnection,
    id: SessionId,
    user_id: UserId,
) -> Result<bool, StoreError> {
    let rows: Vec<(SessionId, bool)> = sqlx::query_as(
        "SELECT id, revoked_at IS NULL FROM sessions
         WHERE user_id = $1 ORDER BY id FOR UPDATE",
    )
    .bind(user_id)
    .fetch_all(conn)
    .await?;
    Ok(rows.iter().any(|(sid, live)| *sid == id && *live))
}

/// Revokes every live session of `user_id` except `keep`; returns how many.
///
/// # Errors
/// [`StoreError`].
pub async fn revoke_all(
    conn: &mut PgConnection,
    user_id: UserId,
    keep: Option<SessionId>,
    reason: RevokeReason,
    at: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let done = sqlx::query(
        "UPDATE sessions SET revoked_at = $3, revoke_reason = $4
         WHERE user_id = $1 AND revoked_at IS NULL AND id IS DISTINCT FROM $2",
    )
    .bind(user_id)
    .bind(keep)
    .bind(at)
    .bind(reason.as_str())
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// Revokes the session of `user_id` with id `id`, keeping the first
/// revocation's time and reason. Returns false when no such live session
/// exists (already revoked or never existed), which callers treat as done.
///
/// # Errors
/// [`StoreError`].
pub async fn revoke(
    conn: &mut PgConnection,
    id: SessionId,
    user_id: UserId,
    reason: RevokeReason,
    at: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE sessions SET revoked_at = $3, revoke_reason = $4
         WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL",
    )
    .bind(id)
    .bind(user_id)
    .bind(at)
    .bind(reason.as_str())
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}
