//! Claim, produce, mark: the outbox's batches, two at a time (one in
//! flight while the next is claimed). Records the batch metrics.

use sqlx::PgPool;
use uuid::Uuid;

use crate::observe::names;
use crate::publisher::Publisher;
use crate::store;

/// Why a batch did not fully publish.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// The claim or the mark failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// A topic could not be created.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The broker did not acknowledge some events (failed or timed out).
    #[error("{failed} of {claimed} events not acknowledged; first error: {first}")]
    Undelivered {
        /// Rows of the batch left unmarked.
        failed: usize,
        /// Rows in the batch.
        claimed: usize,
        /// The first delivery error.
        first: String,
    },
}

/// A claimed batch whose messages are with the producer.
struct InFlight {
    /// Ids and `seq` of the claimed rows, in `seq` order.
    rows: Vec<(Uuid, i64)>,
    /// Delivery reports of the first `deliveries.len()` rows (the producer's
    /// queue may have refused the rest; they stay unpublished).
    deliveries: Vec<rdkafka::producer::DeliveryFuture>,
    started: std::time::Instant,
}

impl InFlight {
    /// The `seq` range of the batch: rows inside it that are not in it (late
    /// commits) wait until the batch is done.
    fn range(&self) -> Option<(i64, i64)> {
        Some((self.rows.first()?.1, self.rows.last()?.1))
    }
}

/// The relay's two-stage pipeline: while one batch waits for the broker's
/// acknowledgements, the next one is claimed and produced, so database and
/// broker work overlap. Batches complete (are marked) in claim order.
#[derive(Default)]
pub struct Pipeline {
    in_flight: Option<InFlight>,
}

impl Pipeline {
    /// One step: claims up to `batch_size` unpublished rows in `seq` order
    /// (skipping the batch in flight) and produces them, while it completes
    /// the batch that was in flight before (see `complete`). When fewer rows
    /// than a full batch were claimed, or the producer's queue refused some,
    /// the new batch is completed too, so a quiet outbox leaves nothing in
    /// flight. Returns the number of rows handed to the producer.
    ///
    /// # Errors
    /// [`BatchError`]. After an error nothing is in flight, and no row after
    /// the failure is marked, so a retry resends them in order.
    pub async fn step(
        &mut self,
        pool: &PgPool,
        publisher: &mut Publisher,
        batch_size: i64,
    ) -> Result<usize, BatchError> {
        let skip = self.in_flight.as_ref().and_then(InFlight::range);
        // The next batch is claimed and produced while the one before is
        // awaited and marked: two database connections, so PostgreSQL's
        // work on the two batches overlaps with the relay's.
        let (claimed, completed) = tokio::join!(
            claim_and_produce(pool, publisher, batch_size, skip),
            self.finish(pool)
        );
        let claimed = match (claimed, completed) {
            (Ok(claimed), Ok(())) => claimed,
            (Err(e), Ok(())) => return Err(e),
            // Both failed: the batch before's error is the one returned, as
            // an `Undelivered` makes the caller replace the producer.
            (Err(claim), Err(e)) => {
                tracing::warn!(error = %claim, "claiming the next batch failed too");
                return Err(e);
            }
            (Ok(claimed), Err(e)) => {
                // The newer batch was produced after the failed row: leave
                // it unmarked (its reports are awaited so none is left
                // behind).
                if let Some(batch) = claimed {
                    futures::future::join_all(batch.deliveries).await;
                }
                return Err(e);
            }
        };
        let Some(batch) = claimed else {
            return Ok(0);
        };
        // Only a full batch that the producer took whole stays in flight
        // beside the next one: after a short batch the outbox is drained,
        // and after a refused message the next batch must wait for it.
        let full = batch.rows.len() >= usize::try_from(batch_size).unwrap_or(usize::MAX);
        let enqueued = batch.deliveries.len();
        if full && enqueued == batch.rows.len() {
            self.in_flight = Some(batch);
            Ok(enqueued)
        } else {
            complete(pool, batch).await?;
            Ok(enqueued)
        }
    }

    /// Completes the batch in flight, if any: in each step, and before
    /// stopping or standing by, so everything acknowledged is marked.
    ///
    /// # Errors
    /// [`BatchError`].
    pub async fn finish(&mut self, pool: &PgPool) -> Result<(), BatchError> {
        match self.in_flight.take() {
            Some(batch) => complete(pool, batch).await.map(drop),
            None => Ok(()),
        }
    }
}

/// Claims up to `batch_size` unpublished rows in `seq` order, skipping the
/// `seq` range `skip` (that of the batch in flight), and hands them to the
/// producer in that order. `None` when there is nothing to claim.
async fn claim_and_produce(
    pool: &PgPool,
    publisher: &mut Publisher,
    batch_size: i64,
    skip: Option<(i64, i64)>,
) -> Result<Option<InFlight>, BatchError> {
    let started = std::time::Instant::now();
    // Claiming is by the flag, never by a cursor: the range only keeps the
    // batch in flight from being claimed twice, and a late commit inside it
    // is claimed once that batch is done.
    let rows = store::claim(pool, batch_size, skip).await?;
    if rows.is_empty() {
        return Ok(None);
    }
    let deliveries = publisher.produce(&rows).await?;
    Ok(Some(InFlight {
        rows: rows.iter().map(|r| (r.id, r.seq)).collect(),
        deliveries,
        started,
    }))
}

/// Waits for every delivery report of `batch` and marks published the rows
/// up to the first failure. Rows after a failure stay unpublished even when
/// acknowledged, so a retry resends them after the failed one and per-key
/// order holds (their duplicates carry the same `ce_id`). Returns the number
/// of rows marked.
///
/// # Errors
/// [`BatchError`]; rows not marked are claimed again by a later batch.
async fn complete(pool: &PgPool, batch: InFlight) -> Result<usize, BatchError> {
    let enqueued = batch.deliveries.len();
    let claimed = batch.rows.len();
    let reports = futures::future::join_all(batch.deliveries).await;

    let mut acked = Vec::with_capacity(enqueued);
    let mut first_error = None;
    // Events the broker did not acknowledge (failed or timed out); rows left
    // unmarked for other reasons (after a failure, or never queued) are not.
    let mut failed = 0u64;
    for ((id, _), report) in batch.rows.iter().zip(reports) {
        match report {
            Ok(Ok(_)) if first_error.is_none() => acked.push(*id),
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => {
                failed += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
            Err(_) => {
                failed += 1;
                first_error.get_or_insert_with(|| "delivery report dropped".to_owned());
            }
        }
    }
    if !acked.is_empty() {
        store::mark_published(pool, &acked).await?;
    }
    tracing::debug!(claimed, published = acked.len(), "batch done");
    metrics::counter!(names::PUBLISHED).increment(acked.len() as u64);
    metrics::counter!(names::FAILURES).increment(failed);
    metrics::histogram!(names::BATCH_SIZE).record(claimed as f64);
    metrics::histogram!(names::BATCH_DURATION).record(batch.started.elapsed().as_secs_f64());
    match first_error {
        Some(first) => Err(BatchError::Undelivered {
            failed: claimed - acked.len(),
            claimed,
            first,
        }),
        None => Ok(acked.len()),
    }
}
