//! The one password check: Login, ChangePassword and DeleteAccount all ask
//! "is this the password of this account?" here, so all three share one
//! bcrypt path (an unknown account costs what a wrong password costs) and
//! one throttle (a wrong password counts as a failed login wherever it is
//! tried, so an access token cannot buy extra guesses).

use super::{AuthService, ServiceError};
use crate::domain::{PasswordAttempt, UserId};
use crate::store;

impl AuthService {
    /// Checks `password` against the account of `account` (a normalised
    /// email; `None` for an address that cannot exist, which is checked
    /// against the dummy hash like an unknown one) under the login throttle,
    /// per account and per `client` address ([`super::throttle`]). Returns
    /// the account's user id and its password hash as it is after the check
    /// (what [`store::users::password_still`] and a password change compare
    /// against, so nothing the checked password allows can commit once the
    /// password has changed).
    ///
    /// A wrong password stays counted; a right one forgets the account's
    /// failures, and its hash is upgraded when the bcrypt cost was raised
    /// since it was made. A check the bcrypt pool refused is taken back.
    ///
    /// # Errors
    /// `InvalidCredentials` (unknown account or wrong password, one answer),
    /// `Throttled`, `Busy`, `Unavailable`, `Internal`.
    pub(super) async fn check_password(
        &self,
        account: Option<&str>,
        password: PasswordAttempt,
        client: Option<&str>,
    ) -> Result<Checked, ServiceError> {
        let (credentials, attempt) = {
            let mut conn = self.pool.acquire().await?;
            let attempt = self.throttle.begin(&mut conn, account, client).await?;
            let credentials = match account {
                Some(email) => store::users::find_credentials(&mut conn, email).await?,
                None => None,
            };
            (credentials, attempt)
        };
        let (user_id, stored) = match credentials {
            Some(c) => (Some(c.id), Some(c.password_hash)),
            None => (None, None),
        };
        // No connection is held while bcrypt runs.
        let verified = match self.hasher.verify(password, stored.clone()).await {
            Ok(verified) => verified,
            Err(e) => {
                // Refused before the password was checked (pool full): not a
                // failure, so a busy server never locks anyone out.
                attempt.take_back().await?;
                return Err(e.into());
            }
        };
        let (user_id, stored) = match (verified.matched, user_id, stored) {
            (true, Some(user_id), Some(stored)) => (user_id, stored),
            _ => {
                attempt.failed();
                return Err(ServiceError::InvalidCredentials);
            }
        };
        let mut conn = self.pool.acquire().await?;
        attempt.succeeded(&mut conn).await?;
        let mut hash = stored;
        if let Some(new_hash) = verified.upgraded_hash {
            // The cost was raised since this hash was made: store the
            // stronger one, unless the password changed meanwhile. A failure
            // here must not fail the check.
            match store::users::set_password_hash(&mut conn, user_id, &hash, &new_hash).await {
                Ok(true) => hash = new_hash,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(%user_id, error = %e, "could not store the rehashed password");
                }
            }
        }
        Ok(Checked { user_id, hash })
    }
}

/// A password that was right: whose account, and its hash then.
pub(super) struct Checked {
    /// The account's user id.
    pub user_id: UserId,
    /// The account's password hash after the check.
    pub hash: String,
}
