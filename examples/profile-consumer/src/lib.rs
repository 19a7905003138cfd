//! An example downstream consumer of RealChat Auth events: the Profile
//! service creates one profile row per `UserRegistered` event and deletes it
//! on the user's `UserDeleted`, because a deleted account's personal data
//! must not outlive it downstream. Every other event type is skipped.
//!
//! Delivery is at-least-once, so the consumer is idempotent with an inbox:
//! the event id (`ce_id`) is stored in the same transaction as the profile
//! change, and an event whose id is already in the inbox changes nothing, so
//! a `UserRegistered` redelivered after its `UserDeleted` does not bring the
//! profile back. Offsets are committed only after the database transaction
//! committed, so a crash in between means redelivery, never loss. See
//! docs/events.md for the event contract.

use std::future::Future;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers as _};
use rdkafka::{ClientConfig, Message as _};
use serde::Deserialize;
use sqlx::PgPool;
use uuid::Uuid;

/// The consumer's migrations (`examples/profile-consumer/migrations`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Settings of the Profile consumer.
#[derive(Clone, clap::Parser)]
#[command(name = "realchat-profile-consumer", about = "Example Profile consumer")]
pub struct ProfileConfig {
    /// The Profile service's PostgreSQL database.
    #[arg(
        long,
        env = "PROFILE_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/realchat_profile"
    )]
    pub database_url: String,
    /// Kafka bootstrap servers.
    #[arg(
        long,
        env = "KAFKA_BOOTSTRAP_SERVERS",
        default_value = "127.0.0.1:9092"
    )]
    pub kafka_bootstrap_servers: String,
    /// The user topic.
    #[arg(long, env = "PROFILE_TOPIC", default_value = "realchat.auth.user")]
    pub topic: String,
    /// Kafka consumer group.
    #[arg(long, env = "PROFILE_GROUP_ID", default_value = "realchat-profile")]
    pub group_id: String,
}

/// The `UserRegistered` payload fields this consumer reads (others, added
/// later, are ignored).
#[derive(Debug, Deserialize)]
struct UserRegistered {
    event_id: Uuid,
    user_id: Uuid,
    email: String,
    registered_at: DateTime<Utc>,
}

/// The `UserDeleted` payload fields this consumer reads.
#[derive(Debug, Deserialize)]
struct UserDeleted {
    event_id: Uuid,
    user_id: Uuid,
}

/// The events this consumer acts on.
#[derive(Debug)]
enum Event {
    Registered(UserRegistered),
    Deleted(UserDeleted),
}

impl Event {
    /// The event of type `ce_type` in `payload`; `None` for a type this
    /// consumer does not act on.
    fn parse(ce_type: &str, payload: &[u8]) -> Option<serde_json::Result<Self>> {
        Some(match ce_type {
            "UserRegistered" => serde_json::from_slice(payload).map(Self::Registered),
            "UserDeleted" => serde_json::from_slice(payload).map(Self::Deleted),
            _ => return None,
        })
    }

    fn event_id(&self) -> Uuid {
        match self {
            Self::Registered(event) => event.event_id,
            Self::Deleted(event) => event.event_id,
        }
    }

    /// The `ce_type`, as the inbox records it.
    fn event_type(&self) -> &'static str {
        match self {
            Self::Registered(_) => "UserRegistered",
            Self::Deleted(_) => "UserDeleted",
        }
    }
}

/// What became of one message.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A new `UserRegistered`: the profile was created.
    Created,
    /// A new `UserDeleted`: the profile, if there was one, was deleted.
    Deleted,
    /// An event already in the inbox: nothing changed.
    Duplicate,
    /// An event type this consumer does not act on, or unreadable: skipped
    /// (logged).
    Skipped,
}

/// Applies the migrations, then consumes until `shutdown` completes.
///
/// # Errors
/// Start-up failures (database, consumer creation, subscription). A message
/// whose transaction fails is not committed: the consumer stops with the
/// error so that it is redelivered after a restart.
pub async fn run(config: ProfileConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let pool = PgPool::connect(&config.database_url)
        .await
        .context("connecting to PROFILE_DATABASE_URL")?;
    MIGRATOR.run(&pool).await.context("applying migrations")?;
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &config.kafka_bootstrap_servers)
        .set("group.id", &config.group_id)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("topic.metadata.refresh.interval.ms", "1000")
        .create()
        .context("creating the Kafka consumer")?;
    consumer
        .subscribe(&[&config.topic])
        .context("subscribing to the topic")?;
    tracing::info!(topic = %config.topic, group = %config.group_id, "consuming");
    tokio::pin!(shutdown);
    loop {
        let message = tokio::select! {
            () = &mut shutdown => break,
            message = consumer.recv() => message,
        };
        let message = match message {
            Ok(message) => message,
            Err(e) => {
                tracing::warn!(error = %e, "consumer error; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let outcome = handle(&pool, &message).await?;
        tracing::info!(
            ?outcome,
            partition = message.partition(),
            offset = message.offset(),
            "event handled"
        );
        // After the database commit: a crash before this line redelivers
        // the event, and the inbox makes that harmless.
        consumer
            .commit_message(&message, CommitMode::Sync)
            .context("committing the offset")?;
    }
    pool.close().await;
    Ok(())
}

/// Handles one message in one transaction: inbox row, then the profile
/// change.
async fn handle(pool: &PgPool, message: &BorrowedMessage<'_>) -> anyhow::Result<Outcome> {
    let ce_type = message.headers().and_then(|headers| {
        headers
            .iter()
            .find(|h| h.key == "ce_type")
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    });
    let parsed = ce_type
        .as_deref()
        .and_then(|ce_type| Event::parse(ce_type, message.payload().unwrap_or_default()));
    let event = match parsed {
        Some(Ok(event)) => event,
        Some(Err(error)) => {
            tracing::warn!(?ce_type, %error, "unreadable payload; skipped");
            return Ok(Outcome::Skipped);
        }
        None => {
            tracing::debug!(?ce_type, "an event this consumer does not act on; skipped");
            return Ok(Outcome::Skipped);
        }
    };
    let mut tx = pool.begin().await?;
    let first: bool = sqlx::query_scalar(
        "INSERT INTO inbox (event_id, event_type) VALUES ($1, $2)
         ON CONFLICT (event_id) DO UPDATE SET deliveries = inbox.deliveries + 1
         RETURNING deliveries = 1",
    )
    .bind(event.event_id())
    .bind(event.event_type())
    .fetch_one(&mut *tx)
    .await?;
    let outcome = match (&event, first) {
        (_, false) => Outcome::Duplicate,
        (Event::Registered(event), true) => {
            sqlx::query(
                "INSERT INTO profiles (user_id, email, created_at) VALUES ($1, $2, $3)
                 ON CONFLICT (user_id) DO NOTHING",
            )
            .bind(event.user_id)
            .bind(&event.email)
            .bind(event.registered_at)
            .execute(&mut *tx)
            .await?;
            Outcome::Created
        }
        (Event::Deleted(event), true) => {
            // No profile (its UserRegistered aged out of the topic before
            // this consumer started) is fine: there is nothing to erase.
            sqlx::query("DELETE FROM profiles WHERE user_id = $1")
                .bind(event.user_id)
                .execute(&mut *tx)
                .await?;
            Outcome::Deleted
        }
    };
    tx.commit().await?;
    Ok(outcome)
}
