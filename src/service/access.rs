//! Who an AccountApi call acts for: the bearer access token (RFC 6750),
//! verified by the verifier crate's rules, whose session must also be live
//! in the database, so a revoked session's access token stops working here
//! at once rather than at its `exp`.

use chrono::Utc;

use super::{AuthService, ServiceError};
use crate::domain::{BearerToken, SessionId, UserId};
use crate::store;
use crate::token::TokenKind;

/// The signed-in user an AccountApi call acts for, and the session its
/// access token belongs to. Only [`AuthService::authenticate`] makes one,
/// so a use-case that takes a `Caller` cannot run unauthenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    user_id: UserId,
    session_id: SessionId,
}

impl Caller {
    /// The user (the token's `sub`).
    pub fn user_id(&self) -> UserId {
        self.user_id
    }

    /// The caller's own session (the token's `sid`).
    pub fn session_id(&self) -> SessionId {
        self.session_id
    }
}

impl AuthService {
    /// Authenticates an AccountApi call from the values of its
    /// `authorization` metadata: exactly one `Bearer <access token>`
    /// (RFC 6750 §2.1), a token the verifier accepts as an access token
    /// (`typ: at+jwt`, our key and its algorithm, `iss`, `aud`, `exp`, …; a
    /// refresh token is refused), and its session live: not revoked, not
    /// expired, its user not deleted.
    ///
    /// # Errors
    /// `InvalidAccessToken` for every refusal (one answer to the client; the
    /// reason is logged, never the token), `Unavailable`, `Internal`.
    pub async fn authenticate(&self, authorization: &[&[u8]]) -> Result<Caller, ServiceError> {
        let token = BearerToken::parse(authorization)
            .map_err(|e| ServiceError::InvalidAccessToken(e.to_string()))?;
        let claims = self
            .tokens
            .verify(TokenKind::Access, token.expose())
            .map_err(|e| ServiceError::InvalidAccessToken(e.to_string()))?;
        let mut conn = self.pool.acquire().await?;
        if !store::sessions::is_live(&mut conn, claims.sid, claims.sub, Utc::now()).await? {
            return Err(ServiceError::InvalidAccessToken(format!(
                "session {} is revoked, expired or unknown",
                claims.sid
            )));
        }
        Ok(Caller {
            user_id: claims.sub,
            session_id: claims.sid,
        })
    }
}
