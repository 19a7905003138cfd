//! The `sessions` table: one row per refresh-token family. Revocations
//! store [`RevokeReason::as_str`] in `revoke_reason`.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use std::time::Duration;

use super::StoreError;
use crate::domain::{RevokeReason, SessionCursor, SessionId, TokenId, UserId};

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

/// A session to insert: its first refresh token and what it records about
/// its client.
#[derive(Debug)]
pub struct NewSession<'a> {
    /// The session id (the `sid` claim).
    pub id: SessionId,
    /// Its user.
    pub user_id: UserId,
    /// jti of its first refresh token.
    pub jti: TokenId,
    /// iat of that token (whole seconds); also the session's `created_at`.
    pub issued_at: DateTime<Utc>,
    /// exp of that token.
    pub expires_at: DateTime<Utc>,
    /// The LoginRequest's device name.
    pub device_name: Option<&'a str>,
    /// The cleaned `user-agent` metadata.
    pub user_agent: Option<&'a str>,
    /// The client address, as login throttling sees it.
    pub ip_address: Option<&'a str>,
}

/// Inserts a new session. Returns false, inserting nothing, when its user
/// no longer exists: an account deleted after the login checked its
/// password fails the foreign key, and that is a lost race for the caller
/// (bad credentials), not a bug. The failed statement aborts the
/// surrounding transaction, which the caller then drops.
///
/// # Errors
/// [`StoreError`].
pub async fn insert(conn: &mut PgConnection, session: &NewSession<'_>) -> Result<bool, StoreError> {
    let inserted = sqlx::query(
        "INSERT INTO sessions (id, user_id, current_jti, current_issued_at, expires_at, created_at,
                               device_name, user_agent, ip_address)
         VALUES ($1, $2, $3, $4, $5, $4, $6, $7, $8)",
    )
    .bind(session.id)
    .bind(session.user_id)
    .bind(session.jti)
    .bind(session.issued_at)
    .bind(session.expires_at)
    .bind(session.device_name)
    .bind(session.user_agent)
    .bind(session.ip_address)
    .execute(conn)
    .await;
    match inserted {
        Ok(_) => Ok(true),
        Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => Ok(false),
        Err(e) => Err(e.into()),
    }
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

/// One rotation of a session's refresh token.
#[derive(Debug)]
pub struct Rotation<'a> {
    /// The session.
    pub id: SessionId,
    /// jti of the new current refresh token.
    pub new_jti: TokenId,
    /// When the rotation happened; the session's `last_refreshed_at`.
    pub rotated_at: DateTime<Utc>,
    /// iat of the new token (whole seconds).
    pub issued_at: DateTime<Utc>,
    /// exp of the new token.
    pub expires_at: DateTime<Utc>,
    /// The refreshing client's cleaned `user-agent` (NULL if it sent none).
    pub user_agent: Option<&'a str>,
    /// The refreshing client's address.
    pub ip_address: Option<&'a str>,
}

/// Rotates the session: the current jti becomes the previous one, retired at
/// `rotated_at`, and `new_jti` becomes current; the client seen is the
/// refreshing one.
///
/// # Errors
/// [`StoreError`].
pub async fn rotate(conn: &mut PgConnection, rotation: &Rotation<'_>) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE sessions
         SET previous_jti = current_jti, rotated_at = $3, current_jti = $2,
             current_issued_at = $4, expires_at = $5, last_refreshed_at = $3,
             user_agent = $6, ip_address = $7
         WHERE id = $1",
    )
    .bind(rotation.id)
    .bind(rotation.new_jti)
    .bind(rotation.rotated_at)
    .bind(rotation.issued_at)
    .bind(rotation.expires_at)
    .bind(rotation.user_agent)
    .bind(rotation.ip_address)
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

/// Revokes every live session of `user_id` except `keep`; returns the ids
/// of the sessions it ended (one event each), none that were already
/// revoked.
///
/// # Errors
/// [`StoreError`].
pub async fn revoke_all(
    conn: &mut PgConnection,
    user_id: UserId,
    keep: Option<SessionId>,
    reason: RevokeReason,
    at: DateTime<Utc>,
) -> Result<Vec<SessionId>, StoreError> {
    Ok(sqlx::query_scalar(
        "UPDATE sessions SET revoked_at = $3, revoke_reason = $4
         WHERE user_id = $1 AND revoked_at IS NULL AND id IS DISTINCT FROM $2
         RETURNING id",
    )
    .bind(user_id)
    .bind(keep)
    .bind(at)
    .bind(reason.as_str())
    .fetch_all(conn)
    .await?)
}

/// Revokes the session of `user_id` with id `id`, keeping the first
/// revocation's time and reason. Returns whether this call ended it: false
/// when no such live session exists (already revoked, never existed, or
/// another user's), which callers treat as done and record nothing for.
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
    let ended: Option<SessionId> = sqlx::query_scalar(
        "UPDATE sessions SET revoked_at = $3, revoke_reason = $4
         WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL
         RETURNING id",
    )
    .bind(id)
    .bind(user_id)
    .bind(at)
    .bind(reason.as_str())
    .fetch_optional(conn)
    .await?;
    Ok(ended.is_some())
}

/// Whether session `id` exists and belongs to `user_id`, revoked or not.
///
/// # Errors
/// [`StoreError`].
pub async fn exists(
    conn: &mut PgConnection,
    id: SessionId,
    user_id: UserId,
) -> Result<bool, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM sessions WHERE id = $1 AND user_id = $2)")
            .bind(id)
            .bind(user_id)
            .fetch_one(conn)
            .await?,
    )
}

/// Whether session `id` of `user_id` is live at `now`: not revoked and not
/// expired. Its user exists too: `sessions.user_id` is a foreign key with
/// `ON DELETE CASCADE`, so a deleted user's sessions are gone in the same
/// snapshot.
///
/// # Errors
/// [`StoreError`].
pub async fn is_live(
    conn: &mut PgConnection,
    id: SessionId,
    user_id: UserId,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM sessions
                        WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL
                          AND expires_at > $3)",
    )
    .bind(id)
    .bind(user_id)
    .bind(now)
    .fetch_one(conn)
    .await?)
}

/// A live session as ListSessions shows it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct LiveSession {
    /// The session id.
    pub id: SessionId,
    /// When it started.
    pub created_at: DateTime<Utc>,
    /// When it was last refreshed; `None` if never.
    pub last_refreshed_at: Option<DateTime<Utc>>,
    /// When it ends unless refreshed.
    pub expires_at: DateTime<Utc>,
    /// The LoginRequest's device name.
    pub device_name: Option<String>,
    /// The `user-agent` of its last Login or Refresh.
    pub user_agent: Option<String>,
    /// The client address of its last Login or Refresh.
    pub ip_address: Option<String>,
}

/// Up to `limit` live sessions of `user_id` at `now`, newest first (by
/// `created_at`, then id), starting after `after` (keyset paging on the
/// index `sessions_user_created_idx`).
///
/// # Errors
/// [`StoreError`].
pub async fn list_live(
    conn: &mut PgConnection,
    user_id: UserId,
    now: DateTime<Utc>,
    after: Option<SessionCursor>,
    limit: i64,
) -> Result<Vec<LiveSession>, StoreError> {
    // The first page starts after ('infinity', max UUID), before every
    // session: one statement for every page, whose row comparison is always
    // an index bound (an `IS NULL OR …` would not be, in a generic plan).
    Ok(sqlx::query_as(
        "SELECT id, created_at, last_refreshed_at, expires_at, device_name, user_agent, ip_address
         FROM sessions
         WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > $2
           AND (created_at, id) < (COALESCE($3, 'infinity'::timestamptz), $4)
         ORDER BY created_at DESC, id DESC
         LIMIT $5",
    )
    .bind(user_id)
    .bind(now)
    .bind(after.map(|c| c.created_at))
    .bind(after.map_or(uuid::Uuid::max(), |c| c.id.as_uuid()))
    .bind(limit)
    .fetch_all(conn)
    .await?)
}
