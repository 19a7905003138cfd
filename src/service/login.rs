//! Login: check the credentials under the throttle, start a session and
//! write its `SessionStarted`, in one transaction.

use chrono::Utc;

use super::error::{email_violation, from_secs, password_violation, violation};
use super::{AuthService, ClientInfo, ServiceError};
use crate::domain::{
    DeviceName, Email, EmailError, PasswordAttempt, SessionId, SessionStarted, TokenId,
};
use crate::store;
use crate::token::{TokenKind, TokenPair};

impl AuthService {
    /// Verifies the credentials and starts a session, recording
    /// `device_name` (optional, see [`DeviceName`]) and the `client`'s
    /// user agent and address on it, and writes `SessionStarted` in the
    /// same transaction. An unknown email, an email that cannot be valid
    /// and a wrong password all do one bcrypt verification and give the
    /// same `InvalidCredentials` (`check_password` in service/credentials.rs, under
    /// the throttle per account and per client address).
    ///
    /// # Errors
    /// `InvalidArgument` (control characters in `email` or `password`; a
    /// bad `device_name`), `InvalidCredentials` (also when the account was
    /// deleted while this login ran), `Throttled`, `Busy`, `Unavailable`,
    /// `Internal`.
    #[tracing::instrument(skip_all)]
    pub async fn login(
        &self,
        email: &str,
        password: &str,
        device_name: &str,
        client: &ClientInfo,
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
        // Before the throttle: a bad name is the client's bug, not a guess.
        let device_name = DeviceName::parse(device_name)
            .map_err(|e| ServiceError::InvalidArgument(vec![violation("device_name", e)]))?;
        let checked = self
            .check_password(
                email.as_ref().map(Email::as_str),
                password,
                client.address.as_deref(),
            )
            .await?;
        let user_id = checked.user_id;

        let session_id = SessionId::new_v7();
        let now = Utc::now();
        let refresh = self.tokens.claims(
            TokenKind::Refresh,
            user_id,
            session_id,
            TokenId::new_random(),
            now.timestamp(),
        );
        let pair = self.tokens.pair(&refresh, now.timestamp())?;
        let started_at = from_secs(refresh.iat)?;
        let mut tx = self.pool.begin().await?;
        // The password checked must still be the account's, held so until
        // the session commits: a ChangePassword that committed meanwhile
        // would otherwise leave a session started with the old password
        // live, and one that comes after revokes this session with the
        // others.
        if !store::users::password_still(&mut tx, user_id, &checked.hash).await? {
            tracing::info!(%user_id, "password changed or account deleted during login");
            return Err(ServiceError::InvalidCredentials);
        }
        let inserted = store::sessions::insert(
            &mut tx,
            &store::sessions::NewSession {
                id: session_id,
                user_id,
                jti: refresh.jti,
                issued_at: started_at,
                expires_at: from_secs(refresh.exp)?,
                device_name: device_name.as_ref().map(DeviceName::as_str),
                user_agent: client.user_agent.as_ref().map(|a| a.as_str()),
                ip_address: client.address.as_deref(),
            },
        )
        .await?;
        if !inserted {
            // DeleteAccount won the race: the account is gone.
            tracing::info!(%user_id, "account deleted during login");
            return Err(ServiceError::InvalidCredentials);
        }
        let event = SessionStarted::new(
            user_id,
            session_id,
            device_name.as_ref().map(DeviceName::as_str),
            started_at,
        );
        super::record(&mut tx, &event, started_at).await?;
        tx.commit().await?;
        tracing::info!(%user_id, %session_id, "session started");
        Ok(pair)
    }
}
