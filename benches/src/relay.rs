//! The relay's figures: drain rate against the raw producer rate (same
//! messages, same broker, same producer settings), and commit-to-Kafka
//! latency of registrations.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use rdkafka::Message as _;
use rdkafka::consumer::StreamConsumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::FutureRecord;
use realchat_relay::RelayConfig;
use realchat_testkit::broker::relay_config_on;
use realchat_testkit::process::{Process, free_port, relay_command};
use sqlx::PgPool;
use tokio::process::Command;
use tokio::time::Instant;

use crate::stats::Latencies;

/// Starts `realchat-relay` from `bin_dir` on `database_url`, publishing
/// user events to `<topic_prefix>user`, its log lines (warnings and errors)
/// echoed to stderr. Does not wait for readiness: the drain measurement
/// counts the relay's start-up.
pub fn start_relay(
    bin_dir: &Path,
    database_url: &str,
    kafka: &str,
    topic_prefix: &str,
) -> anyhow::Result<Process> {
    let http_addr = free_port()?;
    // The caller's environment is inherited (e.g. RELAY_KAFKA_* for a
    // broker that needs TLS or SASL).
    let mut command = relay_command(
        Command::new(bin_dir.join("realchat-relay")),
        database_url,
        kafka,
        topic_prefix,
    );
    command
        .env("RELAY_METRICS_ADDR", http_addr.to_string())
        .env("RUST_LOG", "warn");
    Ok(Process::start("realchat-relay", command, true)
        .context("build it first: see scripts/bench.sh")?
        .with_http_addr(http_addr))
}

/// One outbox row as the relay sends it.
#[derive(sqlx::FromRow)]
struct Row {
    id: uuid::Uuid,
    aggregateid: String,
    payload: String,
    created_at: DateTime<Utc>,
}

/// Drain rate and the raw producer's rate for the same messages.
pub struct Drain {
    /// Events per second: `rows` over the time from the relay's start to the
    /// last row marked published.
    pub relay_rate: f64,
    /// Events per second of the relay's producer settings sending the same
    /// rows straight to the broker, from creating the producer to the last
    /// acknowledgement.
    pub raw_rate: f64,
    /// The relay's peak RSS, bytes.
    pub relay_peak_rss: Option<u64>,
}

/// Fills the outbox with `rows` unpublished `UserRegistered` rows shaped like
/// the server's (same fields, same sizes), in one transaction.
pub async fn prefill(pool: &PgPool, rows: i64, tag: &str) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload, created_at)
         SELECT e, 'user', u::text, 'UserRegistered',
                jsonb_build_object('event_id', e, 'user_id', u,
                                   'email', $2 || '-' || i || '@bench.example',
                                   'registered_at', to_char(now() AT TIME ZONE 'UTC',
                                                            'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')),
                now()
         FROM (SELECT gen_random_uuid() AS e, gen_random_uuid() AS u, i
               FROM generate_series(1, $1) AS i) AS fresh",
    )
    .bind(rows)
    .bind(tag)
    .execute(pool)
    .await?;
    Ok(())
}

/// Starts a relay on an outbox holding `rows` unpublished rows (see
/// [`prefill`]) and times it until every row is marked; then sends the same
/// rows with the relay's producer to a topic of their own and times that.
pub async fn drain(
    pool: &PgPool,
    bin_dir: &Path,
    database_url: &str,
    kafka: &str,
    topic_prefix: &str,
    rows: i64,
) -> anyhow::Result<Drain> {
    let started: DateTime<Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(pool)
        .await?;
    let relay = start_relay(bin_dir, database_url, kafka, topic_prefix)?;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        // Whether any row is left, not how many: counting them every 50 ms
        // took a sixth of the drain's database time away from the relay.
        let done: bool = sqlx::query_scalar(
            "SELECT NOT EXISTS (SELECT 1 FROM outbox WHERE published_at IS NULL)",
        )
        .fetch_one(pool)
        .await?;
        if done {
            break;
        }
        if Instant::now() > deadline {
            bail!("the relay left rows unpublished after 10 minutes");
        }
        // Polling a condition (all rows marked); the time comes from the rows.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let relay_peak_rss = relay.stop().await?;
    let finished: DateTime<Utc> = sqlx::query_scalar("SELECT max(published_at) FROM outbox")
        .fetch_one(pool)
        .await?;
    let relay_secs = seconds_between(started, finished);

    let sent: Vec<Row> = sqlx::query_as(
        "SELECT id, aggregateid, payload::text AS payload, created_at FROM outbox
         WHERE published_at >= $1 ORDER BY seq",
    )
    .bind(started)
    .fetch_all(pool)
    .await?;
    if sent.len() as i64 != rows {
        bail!("expected {rows} drained rows, found {}", sent.len());
    }
    // The relay's producer settings (the poll interval plays no part here).
    let config = relay_config_on(
        kafka,
        database_url,
        &format!("{topic_prefix}raw."),
        Duration::from_secs(1),
    );
    let topic = config.kafka.topic_for("user");
    realchat_relay::publisher::ensure_topic(&config.kafka, &topic).await?;
    let raw_secs = produce_raw(&config, &topic, &sent).await?;
    Ok(Drain {
        relay_rate: rows as f64 / relay_secs,
        raw_rate: rows as f64 / raw_secs,
        relay_peak_rss,
    })
}

/// Sends `rows` as the relay would (key, payload, CloudEvents headers) with
/// the relay's producer, as fast as the producer takes them; returns the
/// seconds from creating the producer to the last acknowledgement.
async fn produce_raw(config: &RelayConfig, topic: &str, rows: &[Row]) -> anyhow::Result<f64> {
    let started = Instant::now();
    let producer = realchat_relay::publisher::producer(&config.kafka)?;
    let mut pending = FuturesUnordered::new();
    for row in rows {
        let headers = realchat_relay::publisher::cloudevents_headers(
            &row.id,
            "UserRegistered",
            &config.kafka.ce_source,
            &row.created_at,
        );
        let mut record = FutureRecord::to(topic)
            .key(&row.aggregateid)
            .payload(&row.payload)
            .headers(headers);
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    pending.push(delivery);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    // The queue is full: wait for one acknowledgement.
                    if let Some(report) = pending.next().await {
                        check(report)?;
                    }
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
    }
    while let Some(report) = pending.next().await {
        check(report)?;
    }
    Ok(started.elapsed().as_secs_f64())
}

fn check(
    report: Result<
        rdkafka::producer::future_producer::OwnedDeliveryResult,
        futures::channel::oneshot::Canceled,
    >,
) -> anyhow::Result<()> {
    match report {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err(e).context("raw producer delivery"),
        Err(_) => bail!("raw producer dropped a delivery report"),
    }
}

fn seconds_between(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6
}

/// Reads `consumer` until `expected` `UserRegistered` events whose email
/// starts with `email_prefix` arrived (others, and other event types, are
/// skipped), or `timeout`; records for
/// each the time from its `registered_at` (set just before the Register
/// transaction begins, so the figure includes the transaction and is an
/// upper bound of commit-to-consumer) to its arrival.
pub async fn commit_to_consumer(
    consumer: &StreamConsumer,
    email_prefix: &str,
    expected: usize,
    timeout: Duration,
) -> anyhow::Result<Latencies> {
    #[derive(serde::Deserialize)]
    struct Event {
        email: String,
        registered_at: DateTime<Utc>,
    }
    let mut latencies = Latencies::new()?;
    let mut seen = std::collections::HashSet::new();
    let deadline = Instant::now() + timeout;
    while seen.len() < expected {
        let message = match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(message) => message?,
            Err(_) => bail!(
                "{} of {expected} events arrived within {timeout:?}",
                seen.len()
            ),
        };
        let arrived = Utc::now();
        let Some(payload) = message.payload() else {
            continue;
        };
        // The topic also carries the user's other events (SessionStarted
        // of the login load, …): only registrations have these fields.
        let Ok(event) = serde_json::from_slice::<Event>(payload) else {
            continue;
        };
        if event.email.starts_with(email_prefix) && seen.insert(event.email) {
            latencies.record((arrived - event.registered_at).to_std().unwrap_or_default());
        }
    }
    Ok(latencies)
}
