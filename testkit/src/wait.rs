//! Waiting for a condition, never for a fixed time.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

/// Calls `check` every `every` until it gives `Ok(Some(value))` (then
/// `Ok(Some(value))`) or an error (then that error), or until `within`
/// has passed (then `Ok(None)`): the one polling loop of the kit.
///
/// # Errors
/// The first error `check` gives.
pub async fn poll<T, E>(
    within: Duration,
    every: Duration,
    mut check: impl AsyncFnMut() -> Result<Option<T>, E>,
) -> Result<Option<T>, E> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = check().await? {
            return Ok(Some(value));
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(every).await;
    }
}

/// Polls `check` every 25 ms until it returns `Some`, or panics after
/// `within`: a wait for a condition, never a fixed sleep.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let found = poll(within, Duration::from_millis(25), async || {
        Ok::<_, Infallible>(check().await)
    })
    .await;
    match found {
        Ok(Some(value)) => value,
        Ok(None) => panic!("timed out after {within:?} waiting for {what}"),
        Err(never) => match never {},
    }
}
