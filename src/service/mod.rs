//! The use-cases and their rules, one file per group: `register.rs`,
//! `login.rs`, `sessions.rs` (Refresh and Logout), `account.rs` (the
//! AccountApi calls), each an `impl AuthService` block; the rules they
//! share: `credentials.rs` (the one password check, under the throttle),
//! `access.rs` (who an AccountApi call acts for: [`Caller`]), [`throttle`]
//! (login throttling) and [`rotation`] (refresh-token rotation and reuse
//! detection, a pure function). One transaction per use-case, with the
//! events of its change; no tonic types in here: errors are
//! [`ServiceError`], which `grpc` maps to `tonic::Status` in one place. A
//! new use-case is a new file here, an `impl AuthService` block of its own.

mod access;
mod account;
mod credentials;
mod error;
mod login;
mod register;
pub mod rotation;
mod sessions;
pub mod throttle;

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

pub use access::Caller;
pub use account::SessionPage;
pub use error::ServiceError;
pub use sessions::LogoutScope;

use crate::domain::{USER_AGGREGATE, UserAgent, UserEvent};
use crate::password::PasswordHasher;
use crate::store;
use crate::token::TokenService;

/// What every use-case works with: the database pool, the password hasher,
/// the token service and the rules' settings.
pub struct AuthService {
    pool: PgPool,
    hasher: PasswordHasher,
    tokens: TokenService,
    /// How long a just-retired refresh token still yields the session's
    /// current token instead of revoking the session.
    reuse_grace: chrono::Duration,
    throttle: throttle::Throttle,
}

impl AuthService {
    /// Builds the service; `reuse_grace` is the refresh-token reuse grace
    /// window (whole seconds), `limits` the login throttle's.
    pub fn new(
        pool: PgPool,
        hasher: PasswordHasher,
        tokens: TokenService,
        reuse_grace: Duration,
        limits: throttle::Limits,
    ) -> Self {
        Self {
            throttle: throttle::Throttle::new(pool.clone(), limits),
            pool,
            hasher,
            tokens,
            reuse_grace: chrono::Duration::from_std(reuse_grace).unwrap_or(chrono::Duration::MAX),
        }
    }
}

/// What the transport knows of the client making a call: its address for
/// throttling, and what a session it starts or refreshes records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientInfo {
    /// The client address as login throttling keys it (the TCP peer, or the
    /// trusted proxy's entry of the forwarding header), canonical text;
    /// `None` when unknown.
    pub address: Option<String>,
    /// The cleaned `user-agent` metadata; `None` when none was sent.
    pub user_agent: Option<UserAgent>,
}

/// Writes `event`, which happened at `at`, to the outbox on `conn`: call it
/// inside the transaction of the change the event records, so both commit
/// or neither does.
///
/// # Errors
/// `Unavailable` or `Internal` from the store; `Internal` if the event does
/// not serialise (it always does: plain fields).
async fn record<E: UserEvent>(
    conn: &mut PgConnection,
    event: &E,
    at: DateTime<Utc>,
) -> Result<(), ServiceError> {
    let payload = serde_json::to_value(event)
        .map_err(|e| ServiceError::Internal(format!("{} payload: {e}", E::EVENT_TYPE)))?;
    store::outbox::insert(
        conn,
        store::outbox::NewEvent {
            id: event.event_id(),
            aggregatetype: USER_AGGREGATE,
            aggregateid: event.user_id().to_string(),
            event_type: E::EVENT_TYPE,
            payload,
            occurred_at: at,
        },
    )
    .await?;
    Ok(())
}
