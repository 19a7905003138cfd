//! Refresh (rotation with reuse detection) and Logout of one session, all
//! sessions or the others.

use chrono::Utc;

use super::error::from_secs;
use super::rotation::{self, Decision};
use super::{AuthService, ServiceError};
use crate::domain::{FieldViolation, TokenId};
use crate::store::{self, sessions::RevokeReason};
use crate::token::{Claims, TokenKind, TokenPair};

/// Which sessions Logout ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogoutScope {
    /// The session of the refresh token.
    Session,
    /// Every session of the user.
    All,
    /// Every session of the user but the token's own.
    Others,
}

impl AuthService {
    /// Rotates a refresh token (RFC 9700 §4.14.2) as [`rotation::decide`]
    /// says, with the session row locked so concurrent refreshes of one
    /// session are serialised: a new pair; the session's current refresh
    /// token again (re-minted, identical) with a new access token; or, on
    /// reuse, the session revoked and the token refused.
    ///
    /// # Errors
    /// `InvalidArgument` (empty token), `InvalidToken`, `Unavailable`,
    /// `Internal`.
    #[tracing::instrument(skip_all)]
    pub async fn refresh(&self, refresh_token: &str) -> Result<TokenPair, ServiceError> {
        let claims = self.verify_refresh(refresh_token)?;
        let mut tx = self.pool.begin().await?;
        let session = store::sessions::lock(&mut tx, claims.sid).await?;
        let now = Utc::now();
        match rotation::decide(session, &claims, now, self.reuse_grace) {
            Decision::Rotate(session) => {
                let refresh = self.tokens.claims(
                    TokenKind::Refresh,
                    session.user_id,
                    session.id,
                    TokenId::new_random(),
                    now.timestamp(),
                );
                let pair = self.tokens.pair(&refresh, now.timestamp())?;
                store::sessions::rotate(
                    &mut tx,
                    session.id,
                    refresh.jti,
                    now,
                    from_secs(refresh.iat)?,
                    from_secs(refresh.exp)?,
                )
                .await?;
                tx.commit().await?;
                Ok(pair)
            }
            Decision::ReturnCurrent(session) => {
                tx.commit().await?;
                let current = Claims {
                    jti: session.current_jti,
                    iat: session.current_issued_at.timestamp(),
                    exp: session.expires_at.timestamp(),
                    ..claims
                };
                Ok(self.tokens.pair(&current, now.timestamp())?)
            }
            Decision::Reuse(session) => {
                store::sessions::revoke(
                    &mut tx,
                    session.id,
                    session.user_id,
                    RevokeReason::RefreshTokenReuse,
                    now,
                )
                .await?;
                tx.commit().await?;
                tracing::warn!(session_id = %session.id, user_id = %session.user_id,
                    "retired refresh token reused; session revoked");
                Err(ServiceError::InvalidToken(
                    "retired refresh token reused".into(),
                ))
            }
            Decision::Refuse(why) => Err(ServiceError::InvalidToken(why.into())),
        }
    }

    /// Ends sessions of the refresh token's user. With
    /// [`LogoutScope::Session`] any authentic token of the session works,
    /// retired ones included, and a session already revoked is fine
    /// (idempotent). [`LogoutScope::All`] and [`LogoutScope::Others`] reach
    /// beyond the token's session, so they need that session to be live.
    ///
    /// # Errors
    /// `InvalidArgument` (empty token), `InvalidToken` (forged, expired or
    /// malformed token; or, for All/Others, a revoked session),
    /// `Unavailable`, `Internal`.
    #[tracing::instrument(skip_all, fields(?scope))]
    pub async fn logout(
        &self,
        refresh_token: &str,
        scope: LogoutScope,
    ) -> Result<(), ServiceError> {
        let claims = self.verify_refresh(refresh_token)?;
        let now = Utc::now();
        let revoked = match scope {
            LogoutScope::Session => u64::from(
                store::sessions::revoke(
                    &mut *self.pool.acquire().await?,
                    claims.sid,
                    claims.sub,
                    RevokeReason::Logout,
                    now,
                )
                .await?,
            ),
            LogoutScope::All | LogoutScope::Others => {
                // One transaction, the user's sessions locked: two "others"
                // calls from two sessions cannot each end the other's.
                let mut tx = self.pool.begin().await?;
                if !store::sessions::lock_user_sessions(&mut tx, claims.sid, claims.sub).await? {
                    return Err(ServiceError::InvalidToken("session revoked".into()));
                }
                let keep = (scope == LogoutScope::Others).then_some(claims.sid);
                let revoked = store::sessions::revoke_all(
                    &mut tx,
                    claims.sub,
                    keep,
                    RevokeReason::Logout,
                    now,
                )
                .await?;
                tx.commit().await?;
                revoked
            }
        };
        tracing::info!(session_id = %claims.sid, revoked, "logout");
        Ok(())
    }

    fn verify_refresh(&self, token: &str) -> Result<Claims, ServiceError> {
        if token.is_empty() {
            return Err(ServiceError::InvalidArgument(vec![FieldViolation {
                field: "refresh_token",
                description: "refresh_token must not be empty".into(),
            }]));
        }
        Ok(self.tokens.verify(TokenKind::Refresh, token)?)
    }
}
