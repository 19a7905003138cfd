//! Deleting what has expired (old sessions, published outbox rows) in short
//! statements: each deletes a bounded batch in its own transaction, so no
//! long lock is held and the hot paths keep their connections.

use std::fmt::Display;
use std::future::Future;

/// Runs `delete` — one statement deleting at most `batch` rows, returning
/// how many it deleted — until a statement deletes fewer than `batch` (all
/// done) or `max_batches` have run (the rest waits for the next run, so a
/// huge backlog never holds the caller for long). A failure stops the run
/// and is logged as `failed` (warn): housekeeping is retried by the next
/// run, never fatal. Returns the rows deleted.
pub async fn delete_in_batches<E, F, Fut>(
    batch: u64,
    max_batches: usize,
    failed: &str,
    mut delete: F,
) -> u64
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<u64, E>>,
{
    let mut deleted = 0;
    for _ in 0..max_batches {
        match delete().await {
            Ok(done) => {
                deleted += done;
                if done < batch {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "{failed}");
                break;
            }
        }
    }
    deleted
}

#[cfg(test)]
mod tests {
    use super::delete_in_batches;

    #[tokio::test]
    async fn stops_at_a_short_batch_at_the_cap_or_at_a_failure() {
        let mut left = 25_u64;
        let all = delete_in_batches(10, usize::MAX, "failed", || {
            let done = left.min(10);
            left -= done;
            async move { Ok::<_, String>(done) }
        })
        .await;
        assert_eq!((all, left), (25, 0));

        let mut calls = 0;
        let capped = delete_in_batches(10, 3, "failed", || {
            calls += 1;
            async { Ok::<_, String>(10) }
        })
        .await;
        assert_eq!((capped, calls), (30, 3));

        let mut results = vec![Err("down".to_owned()), Ok(10)];
        let failed = delete_in_batches(10, usize::MAX, "failed", || {
            let next = results.pop().unwrap_or(Ok(0));
            async move { next }
        })
        .await;
        assert_eq!(failed, 10);
    }
}
