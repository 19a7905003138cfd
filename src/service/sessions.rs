//! Refresh (rotation with reuse detection) and Logout of one session, all
//! sessions or the others.

use chrono::Utc;

use super::error::from_secs;
use super::rotation::{self, Decision};
use super::{AuthService, ClientInfo, ServiceError};
use crate::domain::{FieldViolation, RevokeReason, SessionRevoked, TokenId};
use crate::store;
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
    /// session are serialised: a new pair, the session now recording this
    /// `client`'s user agent and address and the refresh time; the
    /// session's current refresh token again (re-minted, identical) with a
    /// new access token; or, on reuse, the session revoked with its
    /// `SessionRevoked` (`reuse_detected`) in the same transaction, and the
    /// token refused.
    ///
    /// # Errors
    /// `InvalidArgument` (empty token), `InvalidToken`, `Unavailable`,
    /// `Internal`.
    #[tracing::instrument(skip_all)]
    pub async fn refresh(
        &self,
        refresh_token: &str,
        client: &ClientInfo,
    ) -> Result<TokenPair, ServiceError> {
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
                    &store::sessions::Rotation {
                        id: session.id,
                        new_jti: refresh.jti,
                        rotated_at: now,
                        issued_at: from_secs(refresh.iat)?,
                        expires_at: from_secs(refresh.exp)?,
                        user_agent: client.user_agent.as_ref().map(|a| a.as_str()),
                        ip_address: client.address.as_deref(),
                    },
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
                let reason = RevokeReason::ReuseDetected;
                // The row is locked and live (decide saw it), so this ends it.
                if store::sessions::revoke(&mut tx, session.id, session.user_id, reason, now)
                    .await?
                {
                    let event = SessionRevoked::new(session.user_id, session.id, reason, now);
                    super::record(&mut tx, &event, now).await?;
                }
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

    /// Ends sessions of the refresh token's user, with one `SessionRevoked`
    /// per session this call actually ended (reason `logout`, `logout_all`
    /// or `logout_others`), in the same transaction; none for a session
    /// that was already revoked. With [`LogoutScope::Session`] any
    /// authentic token of the session works, retired ones included, and a
    /// session already revoked is fine (idempotent). [`LogoutScope::All`]
    /// and [`LogoutScope::Others`] reach beyond the token's session, so
    /// they need that session to be live.
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
        let mut tx = self.pool.begin().await?;
        let (ended, reason) = match scope {
            LogoutScope::Session => {
                let reason = RevokeReason::Logout;
                let ended =
                    store::sessions::revoke(&mut tx, claims.sid, claims.sub, reason, now).await?;
                (if ended { vec![claims.sid] } else { Vec::new() }, reason)
            }
            LogoutScope::All | LogoutScope::Others => {
                // The user's sessions locked: two "others" calls from two
                // sessions cannot each end the other's.
                if !store::sessions::lock_user_sessions(&mut tx, claims.sid, claims.sub).await? {
                    return Err(ServiceError::InvalidToken("session revoked".into()));
                }
                let (keep, reason) = match scope {
                    LogoutScope::Others => (Some(claims.sid), RevokeReason::LogoutOthers),
                    _ => (None, RevokeReason::LogoutAll),
                };
                let ended =
                    store::sessions::revoke_all(&mut tx, claims.sub, keep, reason, now).await?;
                (ended, reason)
            }
        };
        for &session_id in &ended {
            let event = SessionRevoked::new(claims.sub, session_id, reason, now);
            super::record(&mut tx, &event, now).await?;
        }
        tx.commit().await?;
        tracing::info!(session_id = %claims.sid, revoked = ended.len(), "logout");
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
