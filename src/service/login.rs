//! Login: check the credentials under the throttle, start a session.

use chrono::Utc;

use super::error::{email_violation, from_secs, password_violation};
use super::{AuthService, ServiceError};
use crate::domain::{Email, EmailError, PasswordAttempt, SessionId, TokenId};
use crate::store;
use crate::token::{TokenKind, TokenPair};

impl AuthService {
    /// Verifies the credentials and starts a session. An unknown email, an
    /// email that cannot be valid and a wrong password all do one bcrypt
    /// verification and give the same `InvalidCredentials`. The attempt is
    /// throttled per account and per `client` address (see
    /// [`super::throttle`]).
    ///
    /// # Errors
    /// `InvalidArgument` (NUL or control characters), `InvalidCredentials`,
    /// `Throttled`, `Busy`, `Unavailable`, `Internal`.
    #[tracing::instrument(skip_all)]
    pub async fn login(
        &self,
        email: &str,
        password: &str,
        client: Option<&str>,
    ) -> Result<TokenPair, ServiceError> {
        let password = PasswordAttempt::parse(password)
            .map_err(|e| ServiceError::InvalidArgument(vec![password_violation(e)]))?;
        let email = match Email::parse(email) {
            Ok(email) => Some(email),
            Err(EmailError::ControlCharacter) => {
                return Err(ServiceError::InvalidArgument(vec![email_violation(
                    EmailError::ControlCharacter,
                )]));
            }
            // Not a registrable address, so not a registered one: same path
            // as an unknown user.
            Err(_) => None,
        };
        let account = email.as_ref().map(Email::as_str);
        let (credentials, attempt) = {
            let mut conn = self.pool.acquire().await?;
            let attempt = self.throttle.begin(&mut conn, account, client).await?;
            let credentials = match &email {
                Some(email) => store::users::find_credentials(&mut conn, email).await?,
                None => None,
            };
            (credentials, attempt)
        };
        let (user_id, stored) = match credentials {
            Some(c) => (Some(c.id), Some(c.password_hash)),
            None => (None, None),
        };
        let verified = match self.hasher.verify(password, stored).await {
            Ok(verified) => verified,
            Err(e) => {
                // Refused before the password was checked (pool full): not a
                // failure, so a busy server never locks anyone out.
                attempt.take_back().await?;
                return Err(e.into());
            }
        };
        let user_id = match (verified.matched, user_id) {
            (true, Some(user_id)) => user_id,
            _ => {
                attempt.failed();
                return Err(ServiceError::InvalidCredentials);
            }
        };
        // One connection for the rest; none was held during bcrypt.
        let mut conn = self.pool.acquire().await?;
        attempt.succeeded(&mut conn).await?;
        if let Some(new_hash) = verified.upgraded_hash {
            // The cost was raised since this hash was made: store the
            // stronger one. A failure here must not fail the login.
            if let Err(e) = store::users::set_password_hash(&mut conn, user_id, &new_hash).await {
                tracing::warn!(%user_id, error = %e, "could not store the rehashed password");
            }
        }

        let session_id = SessionId::new_v7();
        let iat = Utc::now().timestamp();
        let refresh = self.tokens.claims(
            TokenKind::Refresh,
            user_id,
            session_id,
            TokenId::new_random(),
            iat,
        );
        let pair = self.tokens.pair(&refresh, iat)?;
        store::sessions::insert(
            &mut conn,
            session_id,
            user_id,
            refresh.jti,
            from_secs(refresh.iat)?,
            from_secs(refresh.exp)?,
        )
        .await?;
        tracing::info!(%user_id, %session_id, "session started");
        Ok(pair)
    }
}
