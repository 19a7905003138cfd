//! The `users` table.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::StoreError;
use crate::domain::{Email, UserId};

/// Inserts a user unless the normalised email, or its look-alike key
/// ([`Email::lookalike_key`]), is taken. Returns false when one is: `ON
/// CONFLICT DO NOTHING` without a target arbitrates on every unique index
/// (`users.email` and `users.email_key`; the primary key too, but v7 ids do
/// not collide), waits for a racing insert of the same address or a
/// look-alike to commit and then yields no row, so a race is never a
/// unique-violation error.
///
/// # Errors
/// [`StoreError`].
pub async fn insert(
    conn: &mut PgConnection,
    id: UserId,
    email: &Email,
    password_hash: &str,
    created_at: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let inserted = sqlx::query(
        "INSERT INTO users (id, email, email_key, password_hash, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $5)
         ON CONFLICT DO NOTHING",
    )
    .bind(id)
    .bind(email.as_str())
    .bind(email.lookalike_key())
    .bind(password_hash)
    .bind(created_at)
    .execute(conn)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

/// Replaces the password hash of user `id` (rehash on login at a higher
/// cost, ChangePassword) if it is still `current`, the one the caller
/// checked. Returns false when the user no longer exists or its password
/// changed meanwhile, so a check of an old password never overwrites a new
/// one.
///
/// # Errors
/// [`StoreError`].
pub async fn set_password_hash(
    conn: &mut PgConnection,
    id: UserId,
    current: &str,
    password_hash: &str,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE users SET password_hash = $3, updated_at = now()
         WHERE id = $1 AND password_hash = $2",
    )
    .bind(id)
    .bind(current)
    .bind(password_hash)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Whether user `id` exists and its password hash is still `hash`, holding
/// its row (`FOR SHARE`) until the transaction ends, so the password cannot
/// change before the caller commits what that password allowed (a session).
///
/// # Errors
/// [`StoreError`].
pub async fn password_still(
    conn: &mut PgConnection,
    id: UserId,
    hash: &str,
) -> Result<bool, StoreError> {
    let found: Option<UserId> =
        sqlx::query_scalar("SELECT id FROM users WHERE id = $1 AND password_hash = $2 FOR SHARE")
            .bind(id)
            .bind(hash)
            .fetch_optional(conn)
            .await?;
    Ok(found.is_some())
}

/// A user's id and password hash, for login. `Debug` leaves the hash out.
#[derive(sqlx::FromRow)]
pub struct Credentials {
    /// The user id.
    pub id: UserId,
    /// The bcrypt hash (modular crypt format).
    pub password_hash: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("id", &self.id)
            .field("password_hash", &"<redacted>")
            .finish()
    }
}

/// Finds the user with this normalised email (an [`Email`]'s
/// [`Email::as_str`], or an address as stored).
///
/// # Errors
/// [`StoreError`].
pub async fn find_credentials(
    conn: &mut PgConnection,
    email: &str,
) -> Result<Option<Credentials>, StoreError> {
    Ok(
        sqlx::query_as("SELECT id, password_hash FROM users WHERE email = $1")
            .bind(email)
            .fetch_optional(conn)
            .await?,
    )
}

/// A user's account as GetAccount shows it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Account {
    /// The user id.
    pub id: UserId,
    /// The normalised email, as stored.
    pub email: String,
    /// When the account was created.
    pub created_at: DateTime<Utc>,
}

/// The account of user `id`, if it exists.
///
/// # Errors
/// [`StoreError`].
pub async fn find_account(
    conn: &mut PgConnection,
    id: UserId,
) -> Result<Option<Account>, StoreError> {
    Ok(
        sqlx::query_as("SELECT id, email, created_at FROM users WHERE id = $1")
            .bind(id)
            .fetch_optional(conn)
            .await?,
    )
}

/// Locks user `id`'s row until the transaction ends; returns whether it
/// exists. DeleteAccount takes it first, as ChangePassword's update does,
/// so the two take their locks in one order (user, then sessions) and a
/// Login's new session waits for the deletion and then fails its foreign
/// key.
///
/// # Errors
/// [`StoreError`].
pub async fn lock(conn: &mut PgConnection, id: UserId) -> Result<bool, StoreError> {
    let found: Option<UserId> = sqlx::query_scalar("SELECT id FROM users WHERE id = $1 FOR UPDATE")
        .bind(id)
        .fetch_optional(conn)
        .await?;
    Ok(found.is_some())
}

/// Deletes user `id`; its sessions go with it (`ON DELETE CASCADE`).
/// Returns false when there was no such user.
///
/// # Errors
/// [`StoreError`].
pub async fn delete(conn: &mut PgConnection, id: UserId) -> Result<bool, StoreError> {
    let done = sqlx::query("DELETE FROM users WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}
