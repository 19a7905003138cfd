//! The four use-cases — register, login, refresh, logout — and their rules.
//! One transaction per use-case; no tonic types in here: errors are
//! [`ServiceError`], which `grpc.rs` maps to `tonic::Status` in one place.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::{
    Email, EmailError, FieldViolation, NewPassword, PasswordAttempt, PasswordError, UserRegistered,
};
use crate::password::{HashError, PasswordHasher};
use crate::store::sessions::RevokeReason;
use crate::store::throttle;
use crate::store::{self, StoreError};
use crate::token::{TokenError, TokenKind, TokenService};

/// Why a use-case failed. Each variant maps to one gRPC status in
/// `grpc::to_status`.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// INVALID_ARGUMENT with a `google.rpc.BadRequest` of these violations.
    #[error("invalid argument")]
    InvalidArgument(Vec<FieldViolation>),
    /// ALREADY_EXISTS: the normalised email is registered.
    #[error("email already registered")]
    AlreadyExists,
    /// UNAUTHENTICATED: unknown email or wrong password (one message for both).
    #[error("invalid credentials")]
    InvalidCredentials,
    /// UNAUTHENTICATED: the refresh token is invalid, expired, retired or its
    /// session revoked. The detail is for logs only.
    #[error("invalid refresh token: {0}")]
    InvalidToken(String),
    /// RESOURCE_EXHAUSTED with `google.rpc.RetryInfo`: too many failed
    /// logins for the account or the client within the window.
    #[error("too many failed logins")]
    Throttled {
        /// When the block ends.
        retry_after: std::time::Duration,
    },
    /// RESOURCE_EXHAUSTED: the bcrypt queue is full.
    #[error("password hashing queue is full")]
    Busy,
    /// UNAVAILABLE: the database cannot be reached.
    #[error(transparent)]
    Unavailable(StoreError),
    /// INTERNAL: a bug. Logged; never shown to clients.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for ServiceError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unavailable(_) => Self::Unavailable(error),
            StoreError::Other(e) => Self::Internal(e.to_string()),
        }
    }
}

impl From<sqlx::Error> for ServiceError {
    fn from(error: sqlx::Error) -> Self {
        StoreError::from(error).into()
    }
}

impl From<HashError> for ServiceError {
    fn from(error: HashError) -> Self {
        match error {
            HashError::Busy => Self::Busy,
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<TokenError> for ServiceError {
    fn from(error: TokenError) -> Self {
        match error {
            TokenError::Invalid(why) => Self::InvalidToken(why),
            TokenError::Sign(e) => Self::Internal(e.to_string()),
        }
    }
}

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

/// A freshly issued access token and refresh token.
#[derive(Debug, Clone)]
pub struct TokenPair {
    /// The access token (JWT, `typ: at+jwt`).
    pub access_token: String,
    /// The refresh token (JWT, `typ: rt+jwt`).
    pub refresh_token: String,
    /// Seconds until the access token expires.
    pub access_expires_in: i64,
    /// Seconds until the refresh token expires.
    pub refresh_expires_in: i64,
}

/// The auth use-cases over a database pool, a password hasher and a token
/// service.
pub struct AuthService {
    pool: PgPool,
    hasher: PasswordHasher,
    tokens: TokenService,
    /// How long a just-retired refresh token still yields the session's
    /// current token instead of revoking the session.
    reuse_grace: chrono::Duration,
    /// Login throttling limits.
    throttle: throttle::Limits,
}

impl AuthService {
    /// Builds the service; `reuse_grace_secs` is the refresh-token reuse
    /// grace window in seconds.
    pub fn new(
        pool: PgPool,
        hasher: PasswordHasher,
        tokens: TokenService,
        reuse_grace_secs: i64,
        throttle: throttle::Limits,
    ) -> Self {
        Self {
            pool,
            hasher,
            tokens,
            reuse_grace: chrono::Duration::seconds(reuse_grace_secs),
            throttle,
        }
    }

    /// Registers a user and writes its `UserRegistered` outbox row (and
    /// `NOTIFY outbox`) in the same transaction. The password is hashed
    /// before the transaction opens, so no row lock waits on bcrypt.
    /// Returns the new user id.
    ///
    /// # Errors
    /// `InvalidArgument` (every bad field at once), `AlreadyExists`, `Busy`,
    /// `Unavailable`, `Internal`.
    #[tracing::instrument(skip_all)]
    pub async fn register(&self, email: &str, password: &str) -> Result<Uuid, ServiceError> {
        let email = Email::parse(email);
        let password = NewPassword::parse(password);
        let password = match (&email, password) {
            (Ok(email), Ok(password)) => password.check_not_guessable(email).map(|()| password),
            (_, password) => password,
        };
        let (email, password) = match (email, password) {
            (Ok(email), Ok(password)) => (email, password),
            (email, password) => {
                let mut violations = Vec::new();
                if let Err(e) = email {
                    violations.push(email_violation(e));
                }
                if let Err(e) = password {
                    violations.push(password_violation(e));
                }
                return Err(ServiceError::InvalidArgument(violations));
            }
        };
        let password_hash = self.hasher.hash(password).await?;

        let user_id = Uuid::now_v7();
        let now = Utc::now();
        let event = UserRegistered::new(user_id, &email, now);
        let payload = serde_json::to_value(&event)
            .map_err(|e| ServiceError::Internal(format!("event payload: {e}")))?;

        let mut tx = self.pool.begin().await?;
        if !store::users::insert(&mut tx, user_id, &email, &password_hash, now).await? {
            return Err(ServiceError::AlreadyExists);
        }
        store::outbox::insert(
            &mut tx,
            store::outbox::NewEvent {
                id: event.event_id,
                aggregatetype: UserRegistered::AGGREGATE_TYPE,
                aggregateid: user_id.to_string(),
                event_type: UserRegistered::EVENT_TYPE,
                payload,
                occurred_at: now,
            },
        )
        .await?;
        tx.commit().await?;
        tracing::info!(%user_id, event_id = %event.event_id, "user registered");
        Ok(user_id)
    }

    /// Verifies the credentials and starts a session. An unknown email, an
    /// email that cannot be valid and a wrong password all do one bcrypt
    /// verification and give the same `InvalidCredentials`.
    ///
    /// # Errors
    /// `InvalidArgument` (NUL or control characters), `InvalidCredentials`,
    /// `Busy`, `Unavailable`, `Internal`.
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
        // Count the attempt before bcrypt, atomically, so parallel guesses
        // cannot all slip under the limit. Unknown accounts are counted
        // too, so throttling reveals nothing.
        let account = email.as_ref().map(Email::as_str);
        let (credentials, mut attempt) = {
            let mut conn = self.pool.acquire().await?;
            if let Some(secs) =
                store::throttle::begin_attempt(&mut conn, account, client, self.throttle).await?
            {
                // Refused before bcrypt: a blocked guesser costs a query,
                // and a refusal is not a failure, so it is taken back (else
                // a burst of correct logins would block its own client).
                store::throttle::abandoned(&mut conn, account, client).await?;
                return Err(ServiceError::Throttled {
                    retry_after: std::time::Duration::from_secs_f64(secs.ceil()),
                });
            }
            // From here, an attempt that ends without its password checked
            // (timeout, cancellation, database error) is taken back too.
            let attempt = PendingAttempt::new(self.pool.clone(), account, client);
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
            // The attempt was counted before bcrypt: a failure stays counted.
            _ => {
                attempt.decided();
                return Err(ServiceError::InvalidCredentials);
            }
        };
        // One connection for the rest; none was held during bcrypt.
        let mut conn = self.pool.acquire().await?;
        store::throttle::succeeded(&mut conn, account, client).await?;
        attempt.decided();
        if let Some(new_hash) = verified.upgraded_hash {
            // The cost was raised since this hash was made: store the
            // stronger one. A failure here must not fail the login.
            if let Err(e) = store::users::set_password_hash(&mut conn, user_id, &new_hash).await {
                tracing::warn!(%user_id, error = %e, "could not store the rehashed password");
            }
        }

        let session_id = Uuid::now_v7();
        let jti = Uuid::new_v4();
        let iat = Utc::now().timestamp();
        let refresh = self
            .tokens
            .claims(TokenKind::Refresh, user_id, session_id, jti, iat);
        let pair = self.pair(&refresh, iat)?;
        store::sessions::insert(
            &mut conn,
            session_id,
            user_id,
            jti,
            from_secs(refresh.iat)?,
            from_secs(refresh.exp)?,
        )
        .await?;
        tracing::info!(%user_id, %session_id, "session started");
        Ok(pair)
    }

    /// Rotates a refresh token (RFC 9700 §4.14.2):
    /// - the session's current token: a new refresh token replaces it;
    /// - the token retired by the latest rotation, within the grace window:
    ///   the session's current refresh token again (re-minted, identical) and
    ///   a new access token, so concurrent refreshes never fork a session;
    /// - any other token of the session (retired earlier, or the previous one
    ///   after the grace window): reuse — the whole session is revoked.
    ///
    /// # Errors
    /// `InvalidArgument` (empty token), `InvalidToken`, `Unavailable`,
    /// `Internal`.
    #[tracing::instrument(skip_all)]
    pub async fn refresh(&self, refresh_token: &str) -> Result<TokenPair, ServiceError> {
        let claims = self.verify_refresh(refresh_token)?;
        let mut tx = self.pool.begin().await?;
        let session = store::sessions::lock(&mut tx, claims.sid)
            .await?
            .filter(|s| s.user_id == claims.sub)
            .ok_or_else(|| ServiceError::InvalidToken("no such session".into()))?;
        if session.revoked_at.is_some() {
            return Err(ServiceError::InvalidToken("session revoked".into()));
        }
        let now = Utc::now();
        if claims.jti == session.current_jti {
            let refresh = self.tokens.claims(
                TokenKind::Refresh,
                session.user_id,
                session.id,
                Uuid::new_v4(),
                now.timestamp(),
            );
            let pair = self.pair(&refresh, now.timestamp())?;
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
            return Ok(pair);
        }
        let within_grace = session.previous_jti == Some(claims.jti)
            && session
                .rotated_at
                .is_some_and(|at| now - at <= self.reuse_grace);
        if within_grace {
            tx.commit().await?;
            let current = crate::token::Claims {
                jti: session.current_jti,
                iat: session.current_issued_at.timestamp(),
                exp: session.expires_at.timestamp(),
                ..claims
            };
            return self.pair(&current, now.timestamp());
        }
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

    fn verify_refresh(&self, token: &str) -> Result<crate::token::Claims, ServiceError> {
        if token.is_empty() {
            return Err(ServiceError::InvalidArgument(vec![FieldViolation {
                field: "refresh_token",
                description: "refresh_token must not be empty".into(),
            }]));
        }
        Ok(self.tokens.verify(TokenKind::Refresh, token)?)
    }

    /// Mints `refresh` and a new access token of the same session, issued at
    /// `now` (seconds): one clock reading for the pair, so `expires_in` is
    /// exactly the configured lifetime.
    fn pair(&self, refresh: &crate::token::Claims, now: i64) -> Result<TokenPair, ServiceError> {
        let access = self.tokens.claims(
            TokenKind::Access,
            refresh.sub,
            refresh.sid,
            Uuid::new_v4(),
            now,
        );
        Ok(TokenPair {
            access_token: self.tokens.mint(TokenKind::Access, &access)?,
            refresh_token: self.tokens.mint(TokenKind::Refresh, refresh)?,
            access_expires_in: access.exp - now,
            refresh_expires_in: (refresh.exp - now).max(0),
        })
    }
}

fn from_secs(secs: i64) -> Result<DateTime<Utc>, ServiceError> {
    DateTime::from_timestamp(secs, 0)
        .ok_or_else(|| ServiceError::Internal(format!("timestamp {secs} out of range")))
}

fn email_violation(error: EmailError) -> FieldViolation {
    FieldViolation {
        field: "email",
        description: error.to_string(),
    }
}

/// A login attempt counted by `throttle::begin_attempt` whose password
/// check has not ended. Dropped undecided (the request timed out or was
/// cancelled, or the database failed), it is taken back in the background:
/// only a checked wrong password may stay counted, so a slow or overloaded
/// server never locks a user out.
struct PendingAttempt {
    pool: PgPool,
    account: Option<String>,
    client: Option<String>,
    decided: bool,
}

impl PendingAttempt {
    fn new(pool: PgPool, account: Option<&str>, client: Option<&str>) -> Self {
        Self {
            pool,
            account: account.map(str::to_owned),
            client: client.map(str::to_owned),
            decided: false,
        }
    }

    /// The attempt's outcome is settled (a failure stays counted, a success
    /// took its attempt back): nothing to do on drop.
    fn decided(&mut self) {
        self.decided = true;
    }

    /// Takes the attempt back now, rather than in the background on drop.
    async fn take_back(mut self) -> Result<(), StoreError> {
        self.decided = true;
        take_back(&self.pool, self.account.as_deref(), self.client.as_deref()).await
    }
}

/// Uncounts one attempt from `account` and `client`.
async fn take_back(
    pool: &PgPool,
    account: Option<&str>,
    client: Option<&str>,
) -> Result<(), StoreError> {
    let mut conn = pool.acquire().await?;
    throttle::abandoned(&mut conn, account, client).await
}

impl Drop for PendingAttempt {
    fn drop(&mut self) {
        if self.decided {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (pool, account, client) = (self.pool.clone(), self.account.take(), self.client.take());
        runtime.spawn(async move {
            if let Err(e) = take_back(&pool, account.as_deref(), client.as_deref()).await {
                tracing::warn!(error = %e, "could not take back an unfinished login attempt");
            }
        });
    }
}

fn password_violation(error: PasswordError) -> FieldViolation {
    FieldViolation {
        field: "password",
        description: error.to_string(),
    }
}
