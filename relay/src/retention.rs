//! Retention: published rows older than the retention period are deleted in
//! small batches, each its own short statement, so no long lock is held and
//! unpublished rows are never touched.

use sqlx::PgPool;

use crate::RelayConfig;

/// At most this many batches per clean-up run, so a huge backlog of old rows
/// never delays publishing for long; the next run goes on.
const MAX_BATCHES_PER_RUN: usize = 100;

/// Deletes published rows older than `retention_secs`; returns how many.
/// Failures are logged and retried at the next run.
pub async fn delete_expired(pool: &PgPool, config: &RelayConfig) -> u64 {
    let mut deleted = 0;
    for _ in 0..MAX_BATCHES_PER_RUN {
        let batch = sqlx::query(
            "DELETE FROM outbox WHERE id IN (
                 SELECT id FROM outbox
                 WHERE published_at IS NOT NULL
                   AND published_at < now() - make_interval(secs => $1)
                 ORDER BY published_at
                 LIMIT $2)",
        )
        .bind(config.retention_secs as f64)
        .bind(config.cleanup_batch)
        .execute(pool)
        .await;
        match batch {
            Ok(done) => {
                deleted += done.rows_affected();
                if done.rows_affected() < config.cleanup_batch as u64 {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "retention clean-up failed; retrying later");
                break;
            }
        }
    }
    if deleted > 0 {
        tracing::info!(deleted, "deleted published outbox rows past retention");
    }
    deleted
}
