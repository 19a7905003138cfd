//! Register: a new account and its `UserRegistered` event, in one
//! transaction.

use chrono::Utc;

use super::error::{email_violation, password_violation};
use super::{AuthService, ServiceError};
use crate::domain::{Email, NewPassword, UserId, UserRegistered};
use crate::store;

impl AuthService {
    /// Registers a user and writes its `UserRegistered` outbox row (and the
    /// outbox `NOTIFY`) in the same transaction. The password is hashed
    /// before the transaction opens, so no row lock waits on bcrypt.
    /// Returns the new user id.
    ///
    /// # Errors
    /// `InvalidArgument` (every bad field at once), `AlreadyExists`, `Busy`,
    /// `Unavailable`, `Internal`.
    #[tracing::instrument(skip_all)]
    pub async fn register(&self, email: &str, password: &str) -> Result<UserId, ServiceError> {
        let email = Email::parse(email);
        let password = NewPassword::parse(password);
        let password = match (&email, password) {
            (Ok(email), Ok(password)) => password
                .check_not_guessable(email.as_str())
                .map(|()| password),
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

        let user_id = UserId::new_v7();
        let now = Utc::now();
        let event = UserRegistered::new(user_id, &email, now);

        let mut tx = self.pool.begin().await?;
        if !store::users::insert(&mut tx, user_id, &email, &password_hash, now).await? {
            return Err(ServiceError::AlreadyExists);
        }
        super::record(&mut tx, &event, now).await?;
        tx.commit().await?;
        tracing::info!(%user_id, event_id = %event.event_id, "user registered");
        Ok(user_id)
    }
}
