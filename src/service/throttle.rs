//! Login throttling, the whole rule: the limits, the comparison, and the
//! life of one counted attempt. `store::throttle` only counts.
//!
//! An attempt is counted before its password is checked, in one atomic
//! statement, so parallel guesses cannot all pass a check made before any
//! of them was counted. Only a checked wrong password stays counted: a
//! success takes its attempt back (and forgets the account's failures), and
//! so does an attempt that was refused (throttled, or a full bcrypt pool)
//! or left unanswered (timed out, cancelled, a database error) — the last
//! by the [`PendingAttempt`] guard when it is dropped undecided. So the
//! counts are of wrong passwords and attempts in flight, and a slow or busy
//! server never locks a user out.
//!
//! An attempt that is already over a limit is refused before anything is
//! written (a read of the counts it would make), so a blocked client that
//! tries address after address leaves no row behind; the count-then-check
//! still decides the race between concurrent attempts, and a count taken
//! back to zero is deleted.

use std::time::Duration;

use sqlx::{PgConnection, PgPool};

use super::ServiceError;
use crate::store::StoreError;
use crate::store::throttle::{self as counts, Count, Counts};

/// Limits and window of the throttle.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Failures of one account within a window after which it is blocked.
    pub per_account: i32,
    /// Failures from one client within a window after which it is blocked.
    pub per_client: i32,
    /// Window length (whole seconds).
    pub window: Duration,
}

impl Limits {
    /// How long the attempt that produced `counts` must wait: until the
    /// later window of a side over its limit ends, rounded up to whole
    /// seconds; `None` when neither side is over its limit (or the window
    /// just ended).
    pub fn blocked(&self, counts: &Counts) -> Option<Duration> {
        let over = |count: Option<Count>, limit: i32| {
            count
                .filter(|c| c.attempts > limit)
                .map(|c| c.window_left_secs)
        };
        let longest = [
            over(counts.account, self.per_account),
            over(counts.client, self.per_client),
        ]
        .into_iter()
        .flatten()
        .fold(None, |longest: Option<f64>, left| {
            Some(longest.map_or(left, |l| l.max(left)))
        })?;
        (longest > 0.0).then(|| Duration::from_secs_f64(longest.ceil()))
    }
}

/// The throttle over its table.
pub struct Throttle {
    pool: PgPool,
    limits: Limits,
}

impl Throttle {
    /// A throttle with `limits`, whose guards take attempts back on `pool`.
    pub fn new(pool: PgPool, limits: Limits) -> Self {
        Self { pool, limits }
    }

    /// Counts an attempt against `account` and `client` and returns its
    /// guard; unknown accounts are counted alike, so throttling reveals
    /// nothing.
    ///
    /// # Errors
    /// `Throttled`, with nothing written: an attempt the current counts
    /// already block is refused on a read, and one that only a concurrent
    /// attempt pushed over the limit is taken back at once (a refusal is
    /// not a failure, else a burst of correct logins would block its own
    /// client; and a blocked guesser costs a query, never a bcrypt run).
    /// Or the database's error.
    pub async fn begin(
        &self,
        conn: &mut PgConnection,
        account: Option<&str>,
        client: Option<&str>,
    ) -> Result<PendingAttempt, ServiceError> {
        // Refused on a read, a blocked client's attempts at new addresses
        // create no rows (they would be taken back to empty rows otherwise).
        let would = counts::peek(&mut *conn, account, client, self.limits.window).await?;
        if let Some(retry_after) = self.limits.blocked(&would) {
            return Err(ServiceError::Throttled { retry_after });
        }
        // The read locks nothing: concurrent attempts may all have passed
        // it, so the atomic count decides.
        let counted = counts::count_attempt(conn, account, client, self.limits.window).await?;
        if let Some(retry_after) = self.limits.blocked(&counted) {
            counts::uncount(conn, account, client).await?;
            return Err(ServiceError::Throttled { retry_after });
        }
        Ok(PendingAttempt {
            pool: self.pool.clone(),
            account: account.map(str::to_owned),
            client: client.map(str::to_owned),
            decided: false,
        })
    }
}

/// A counted login attempt whose password check has not ended. Dropped
/// undecided (the request timed out or was cancelled, or the database
/// failed), it is taken back in the background.
#[must_use = "an attempt must be decided, or it is taken back when dropped"]
pub struct PendingAttempt {
    pool: PgPool,
    account: Option<String>,
    client: Option<String>,
    decided: bool,
}

impl PendingAttempt {
    /// The password was wrong: the attempt stays counted.
    pub fn failed(mut self) {
        self.decided = true;
    }

    /// The password was right: the account's failures are forgotten and the
    /// attempt is uncounted from the client.
    ///
    /// # Errors
    /// [`StoreError`].
    pub async fn succeeded(mut self, conn: &mut PgConnection) -> Result<(), StoreError> {
        if let Some(account) = &self.account {
            counts::reset_account(&mut *conn, account).await?;
        }
        counts::uncount(conn, None, self.client.as_deref()).await?;
        self.decided = true;
        Ok(())
    }

    /// The password was never checked (the bcrypt pool was full): the
    /// attempt is taken back now, leaving both counts as they were.
    ///
    /// # Errors
    /// [`StoreError`].
    pub async fn take_back(mut self) -> Result<(), StoreError> {
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
    counts::uncount(&mut conn, account, client).await
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

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        per_account: 5,
        per_client: 50,
        window: Duration::from_secs(900),
    };

    fn count(attempts: i32, window_left_secs: f64) -> Option<Count> {
        Some(Count {
            attempts,
            window_left_secs,
        })
    }

    #[test]
    fn at_the_limit_passes_and_over_it_waits_for_the_window() {
        let at_limit = Counts {
            account: count(5, 300.0),
            client: count(50, 300.0),
        };
        assert_eq!(LIMITS.blocked(&at_limit), None);
        let account_over = Counts {
            account: count(6, 299.2),
            client: count(1, 800.0),
        };
        // Rounded up: a client told 299 s would come back too early.
        assert_eq!(
            LIMITS.blocked(&account_over),
            Some(Duration::from_secs(300))
        );
    }

    #[test]
    fn both_over_waits_for_the_later_window_and_a_side_may_be_absent() {
        let both = Counts {
            account: count(6, 10.0),
            client: count(51, 700.5),
        };
        assert_eq!(LIMITS.blocked(&both), Some(Duration::from_secs(701)));
        let client_only = Counts {
            account: None,
            client: count(51, 42.0),
        };
        assert_eq!(LIMITS.blocked(&client_only), Some(Duration::from_secs(42)));
        assert_eq!(LIMITS.blocked(&Counts::default()), None);
    }

    #[test]
    fn a_window_that_just_ended_does_not_block() {
        let ended = Counts {
            account: count(9, 0.0),
            client: None,
        };
        assert_eq!(LIMITS.blocked(&ended), None);
    }
}
