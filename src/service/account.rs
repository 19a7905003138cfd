//! The AccountApi use-cases, each for an authenticated [`Caller`]: the
//! account, its live sessions (list, revoke one), a password change and
//! the deletion of the account. Every change writes its events in its own
//! transaction.
//!
//! Lock order, shared with Logout and Refresh so that no two of them can
//! deadlock: the user's row first (ChangePassword's update, DeleteAccount's
//! lock), then the user's sessions in id order. An event is written after
//! the locks that order it, so a user's events are numbered (`outbox.seq`)
//! in the order their changes commit; in particular `UserDeleted` is the
//! user's last.

use chrono::Utc;

use super::access::Caller;
use super::error::violation;
use super::{AuthService, ClientInfo, ServiceError};
use crate::domain::{
    NewPassword, PageError, PasswordAttempt, PasswordChanged, RevokeReason, SessionCursor,
    SessionId, SessionRevoked, USER_AGGREGATE, UserDeleted, page_size,
};
use crate::store;
use crate::store::sessions::LiveSession;
use crate::store::users::Account;

/// One page of ListSessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionPage {
    /// The sessions, newest first, each with whether it is the caller's.
    pub sessions: Vec<(LiveSession, bool)>,
    /// The token of the next page; `None` on the last one.
    pub next_page_token: Option<String>,
}

impl AuthService {
    /// The caller's account.
    ///
    /// # Errors
    /// `InvalidAccessToken` (the account was deleted since the call was
    /// authenticated), `Unavailable`, `Internal`.
    #[tracing::instrument(skip_all, fields(user_id = %caller.user_id()))]
    pub async fn get_account(&self, caller: &Caller) -> Result<Account, ServiceError> {
        let mut conn = self.pool.acquire().await?;
        store::users::find_account(&mut conn, caller.user_id())
            .await?
            .ok_or_else(|| ServiceError::InvalidAccessToken("account deleted".into()))
    }

    /// A page of the caller's live sessions (not revoked, not expired),
    /// newest first, AIP-158: `page_size` 0 is 50, above 100 is 100;
    /// `page_token` is empty or a previous page's `next_page_token`.
    ///
    /// # Errors
    /// `InvalidArgument` on `page_size` (negative) and `page_token` (not
    /// one we issued), `Unavailable`, `Internal`.
    #[tracing::instrument(skip_all, fields(user_id = %caller.user_id()))]
    pub async fn list_sessions(
        &self,
        caller: &Caller,
        page_size_requested: i32,
        page_token: &str,
    ) -> Result<SessionPage, ServiceError> {
        let size = page_size(page_size_requested);
        let after = SessionCursor::parse(page_token);
        let (size, after) = match (size, after) {
            (Ok(size), Ok(after)) => (size, after),
            (size, after) => {
                let violations = [
                    size.err().map(|e| violation("page_size", e)),
                    after.err().map(|e: PageError| violation("page_token", e)),
                ];
                return Err(ServiceError::InvalidArgument(
                    violations.into_iter().flatten().collect(),
                ));
            }
        };
        let mut conn = self.pool.acquire().await?;
        // One more than the page: whether it exists says if a next page does.
        let limit = i64::try_from(size).unwrap_or(i64::MAX).saturating_add(1);
        let mut sessions =
            store::sessions::list_live(&mut conn, caller.user_id(), Utc::now(), after, limit)
                .await?;
        let next_page_token = if sessions.len() > size {
            sessions.truncate(size);
            sessions.last().map(|last| {
                SessionCursor {
                    created_at: last.created_at,
                    id: last.id,
                }
                .encode()
            })
        } else {
            None
        };
        let sessions = sessions
            .into_iter()
            .map(|s| {
                let current = s.id == caller.session_id();
                (s, current)
            })
            .collect();
        Ok(SessionPage {
            sessions,
            next_page_token,
        })
    }

    /// Revokes one of the caller's sessions (another device's, or the
    /// caller's own, whose access token then stops working here) and writes
    /// its `SessionRevoked` (`revoked_by_user`) in the same transaction. A
    /// session already revoked is fine, and writes nothing.
    ///
    /// # Errors
    /// `InvalidArgument` on `session_id` (not a UUID), `NotFound` (no such
    /// session, or another user's: one answer, so ids of other users'
    /// sessions cannot be probed), `Unavailable`, `Internal`.
    #[tracing::instrument(skip_all, fields(user_id = %caller.user_id()))]
    pub async fn revoke_session(
        &self,
        caller: &Caller,
        session_id: &str,
    ) -> Result<(), ServiceError> {
        let session_id: SessionId = session_id.parse().map_err(|_| {
            ServiceError::InvalidArgument(vec![violation(
                "session_id",
                "session_id must be a UUID",
            )])
        })?;
        let user_id = caller.user_id();
        let reason = RevokeReason::RevokedByUser;
        let now = Utc::now();
        let mut tx = self.pool.begin().await?;
        if store::sessions::revoke(&mut tx, session_id, user_id, reason, now).await? {
            let event = SessionRevoked::new(user_id, session_id, reason, now);
            super::record(&mut tx, &event, now).await?;
            tx.commit().await?;
            tracing::info!(%session_id, "session revoked by its user");
            return Ok(());
        }
        // Nothing ended: already revoked (done), or not this user's.
        if store::sessions::exists(&mut tx, session_id, user_id).await? {
            Ok(())
        } else {
            Err(ServiceError::NotFound("session"))
        }
    }

    /// Changes the caller's password. `current_password` is checked as
    /// Login checks a password (`check_password` in service/credentials.rs: same
    /// bcrypt path, same throttle); `new_password` must pass the Register
    /// policy and differ from the current one. Then, in one transaction:
    /// the new hash, every other session of the user revoked (a
    /// `SessionRevoked`, `password_changed`, each), and `PasswordChanged`.
    /// The caller's session stays.
    ///
    /// # Errors
    /// `InvalidArgument` on `current_password` (control characters) and
    /// `new_password` (the policy, or equal to the current one),
    /// `InvalidCredentials` (wrong current password), `Throttled`, `Busy`,
    /// `InvalidAccessToken` (the account was deleted, or the caller's
    /// session revoked, meanwhile), `Unavailable`, `Internal`.
    #[tracing::instrument(skip_all, fields(user_id = %caller.user_id()))]
    pub async fn change_password(
        &self,
        caller: &Caller,
        current_password: &str,
        new_password: &str,
        client: &ClientInfo,
    ) -> Result<(), ServiceError> {
        let account = self.get_account(caller).await?;
        let current = PasswordAttempt::parse(current_password);
        let new = NewPassword::parse(new_password)
            .and_then(|new| new.check_not_guessable(&account.email).map(|()| new));
        // Every bad field at once, before anything is counted or hashed.
        let (current, new) = match (current, new) {
            (Ok(current), Ok(new)) if new.expose() == current.expose() => {
                return Err(ServiceError::InvalidArgument(vec![violation(
                    "new_password",
                    "new_password must differ from the current password",
                )]));
            }
            (Ok(current), Ok(new)) => (current, new),
            (current, new) => {
                let violations = [
                    current.err().map(|e| violation("current_password", e)),
                    new.err().map(|e| violation("new_password", e)),
                ];
                return Err(ServiceError::InvalidArgument(
                    violations.into_iter().flatten().collect(),
                ));
            }
        };
        let checked = self
            .check_password(Some(&account.email), current, client.address.as_deref())
            .await?;
        if checked.user_id != caller.user_id() {
            // The email now names another account (this one deleted and the
            // address registered again since the call was authenticated).
            return Err(ServiceError::InvalidAccessToken("account deleted".into()));
        }
        let hash = self.hasher.hash(new).await?;

        let (user_id, keep) = (caller.user_id(), caller.session_id());
        let now = Utc::now();
        let mut tx = self.pool.begin().await?;
        // Only over the hash that was checked: a concurrent change that
        // committed first made `current_password` stale.
        if !store::users::set_password_hash(&mut tx, user_id, &checked.hash, &hash).await? {
            if !store::users::lock(&mut tx, user_id).await? {
                return Err(ServiceError::InvalidAccessToken("account deleted".into()));
            }
            tracing::info!("password changed during ChangePassword");
            return Err(ServiceError::InvalidCredentials);
        }
        if !store::sessions::lock_user_sessions(&mut tx, keep, user_id).await? {
            // Revoked while the password was checked: the change is dropped
            // with the transaction, as it would have been refused a moment
            // later.
            return Err(ServiceError::InvalidAccessToken("session revoked".into()));
        }
        let reason = RevokeReason::PasswordChanged;
        let ended = store::sessions::revoke_all(&mut tx, user_id, Some(keep), reason, now).await?;
        for &session_id in &ended {
            super::record(
                &mut tx,
                &SessionRevoked::new(user_id, session_id, reason, now),
                now,
            )
            .await?;
        }
        let event = PasswordChanged::new(user_id, now);
        super::record(&mut tx, &event, now).await?;
        tx.commit().await?;
        tracing::info!(revoked = ended.len(), "password changed");
        Ok(())
    }

    /// Deletes the caller's account after checking `password` as Login
    /// does (`check_password` in service/credentials.rs). In one transaction: the
    /// user's row, and with it (`ON DELETE CASCADE`) every session; its
    /// `UserDeleted` (which ends the sessions for consumers: no
    /// `SessionRevoked` is written); the account's throttle row; and the
    /// user's published outbox rows. Afterwards the email is nowhere in the
    /// database but in this user's outbox rows still waiting for the relay,
    /// which are still delivered, in order, before `UserDeleted`. The email
    /// may register again, as a new user id.
    ///
    /// # Errors
    /// `InvalidArgument` on `password` (control characters),
    /// `InvalidCredentials`, `Throttled`, `Busy`, `InvalidAccessToken` (the
    /// account was deleted, or the caller's session revoked, meanwhile),
    /// `Unavailable`, `Internal`.
    #[tracing::instrument(skip_all, fields(user_id = %caller.user_id()))]
    pub async fn delete_account(
        &self,
        caller: &Caller,
        password: &str,
        client: &ClientInfo,
    ) -> Result<(), ServiceError> {
        let password = PasswordAttempt::parse(password)
            .map_err(|e| ServiceError::InvalidArgument(vec![violation("password", e)]))?;
        let account = self.get_account(caller).await?;
        let checked = self
            .check_password(Some(&account.email), password, client.address.as_deref())
            .await?;
        let user_id = caller.user_id();
        if checked.user_id != user_id {
            return Err(ServiceError::InvalidAccessToken("account deleted".into()));
        }

        let now = Utc::now();
        let mut tx = self.pool.begin().await?;
        if !store::users::lock(&mut tx, user_id).await? {
            return Err(ServiceError::InvalidAccessToken("account deleted".into()));
        }
        if !store::users::password_still(&mut tx, user_id, &checked.hash).await? {
            tracing::info!("password changed during DeleteAccount");
            return Err(ServiceError::InvalidCredentials);
        }
        if !store::sessions::lock_user_sessions(&mut tx, caller.session_id(), user_id).await? {
            return Err(ServiceError::InvalidAccessToken("session revoked".into()));
        }
        store::users::delete(&mut tx, user_id).await?;
        // After the delete, which waited for every transaction holding the
        // user's or a session's row: their events are numbered before this.
        let event = UserDeleted::new(user_id, now);
        super::record(&mut tx, &event, now).await?;
        store::throttle::reset_account(&mut tx, &account.email).await?;
        let erased =
            store::outbox::delete_published(&mut tx, USER_AGGREGATE, &user_id.to_string()).await?;
        tx.commit().await?;
        tracing::info!(erased_events = erased, "account deleted");
        Ok(())
    }
}
