//! The service layer's one error type.

use crate::domain::{EmailError, FieldViolation, PasswordError};
use crate::password::HashError;
use crate::store::StoreError;
use crate::token::TokenError;

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
    /// UNAUTHENTICATED: an AccountApi call's credentials are missing,
    /// malformed or refused (the token by the verifier's rules, or its
    /// session not live). One answer for all; the detail is for logs only.
    #[error("invalid access token: {0}")]
    InvalidAccessToken(String),
    /// NOT_FOUND: the named thing (`session`) is not there for this caller,
    /// whether it never existed or is someone else's.
    #[error("{0} not found")]
    NotFound(&'static str),
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

/// The violation of `field` by a refused value, described by its error.
pub(super) fn violation(field: &'static str, error: impl std::fmt::Display) -> FieldViolation {
    FieldViolation {
        field,
        description: error.to_string(),
    }
}

/// The field violation of a refused email.
pub(super) fn email_violation(error: EmailError) -> FieldViolation {
    FieldViolation {
        field: "email",
        description: error.to_string(),
    }
}

/// The field violation of a refused password.
pub(super) fn password_violation(error: PasswordError) -> FieldViolation {
    FieldViolation {
        field: "password",
        description: error.to_string(),
    }
}

/// A timestamp (seconds since the epoch) as a time.
pub(super) fn from_secs(secs: i64) -> Result<chrono::DateTime<chrono::Utc>, ServiceError> {
    chrono::DateTime::from_timestamp(secs, 0)
        .ok_or_else(|| ServiceError::Internal(format!("timestamp {secs} out of range")))
}
