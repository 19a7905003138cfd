//! Relay settings, read from flags and environment (clap), in groups that
//! build what their part of the relay needs: [`KafkaConfig`] the librdkafka
//! settings and topic names, [`PublishConfig`] the loop's pace,
//! [`RetentionConfig`] the clean-up. `realchat-relay --help` lists every
//! setting with its default.

use std::net::SocketAddr;
use std::time::Duration;

use rdkafka::ClientConfig;
use realchat_runtime::settings::{millis, seconds};
use realchat_runtime::telemetry::LogFormat;

/// Settings of the `realchat-relay` process. Not `Debug`: `DATABASE_URL`
/// and the Kafka settings may carry passwords.
#[derive(Clone, clap::Parser)]
#[command(
    name = "realchat-relay",
    version,
    about = "RealChat Auth outbox relay to Kafka"
)]
pub struct RelayConfig {
    /// PostgreSQL connection URL (the auth server's database).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/realchat_auth"
    )]
    pub database_url: String,

    /// The broker, the topics and the events' source.
    #[command(flatten)]
    pub kafka: KafkaConfig,

    /// Batch size and the loop's waits.
    #[command(flatten)]
    pub publish: PublishConfig,

    /// How long published rows are kept.
    #[command(flatten)]
    pub retention: RetentionConfig,

    /// Address of the HTTP server with `/metrics` (Prometheus), `/healthz`
    /// and `/readyz`; port 0 picks a free port (logged at start). Each relay
    /// on one host needs its own.
    #[arg(long, env = "RELAY_METRICS_ADDR", default_value = "127.0.0.1:9465")]
    pub metrics_addr: Option<SocketAddr>,

    /// Log format: `text` (human-readable) or `json` (one object per line,
    /// for log shippers). The level comes from `RUST_LOG` (default
    /// `info,sqlx::postgres::notice=warn`).
    #[arg(long, env = "RELAY_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// The Kafka side: where the broker is, how the relay's clients talk to it,
/// which topic each aggregate type goes to and how topics are created.
#[derive(Clone, clap::Args)]
pub struct KafkaConfig {
    /// Kafka bootstrap servers, comma-separated host:port.
    #[arg(
        long,
        env = "KAFKA_BOOTSTRAP_SERVERS",
        default_value = "127.0.0.1:9092"
    )]
    pub kafka_bootstrap_servers: String,

    /// Topic name prefix; each aggregate type goes to `<prefix><aggregatetype>`
    /// (so user events go to `realchat.auth.user`).
    #[arg(long, env = "RELAY_TOPIC_PREFIX", default_value = "realchat.auth.")]
    pub topic_prefix: String,

    /// Topic of an aggregate type, overriding the prefix rule: AGGREGATE=TOPIC,
    /// comma-separated or repeated (e.g. `user=users.v1`).
    #[arg(long = "topic", env = "RELAY_TOPICS", value_name = "AGGREGATE=TOPIC",
          value_delimiter = ',', value_parser = parse_setting)]
    pub topics: Vec<(String, String)>,

    /// Aggregate types whose topics are created at start when absent; other
    /// aggregate types get their topic when their first row is claimed.
    #[arg(
        long,
        env = "RELAY_AGGREGATE_TYPES",
        default_value = "user",
        value_delimiter = ','
    )]
    pub aggregate_types: Vec<String>,

    /// Partitions of a topic the relay creates (1..=10000).
    #[arg(long, env = "RELAY_TOPIC_PARTITIONS", default_value_t = 3,
          value_parser = clap::value_parser!(i32).range(1..=10_000))]
    pub topic_partitions: i32,

    /// Replication factor of a topic the relay creates (1..=100).
    #[arg(long, env = "RELAY_TOPIC_REPLICATION", default_value_t = 1,
          value_parser = clap::value_parser!(i32).range(1..=100))]
    pub topic_replication: i32,

    /// librdkafka `message.timeout.ms`: how long a message may wait for the
    /// broker's acknowledgement before its delivery fails and the row is
    /// retried, in ms.
    #[arg(long = "delivery-timeout-ms", env = "RELAY_DELIVERY_TIMEOUT_MS", default_value = "30000",
          value_parser = millis(1..=900_000))]
    pub delivery_timeout: Duration,

    /// Extra librdkafka setting as KEY=VALUE (repeatable), e.g.
    /// `security.protocol=sasl_ssl`. Environment variables `RELAY_KAFKA_*`
    /// add more (`RELAY_KAFKA_SASL_USERNAME` is `sasl.username`).
    /// `enable.idempotence` and `acks` cannot be overridden.
    #[arg(long = "kafka-config", value_name = "KEY=VALUE", value_parser = parse_setting)]
    pub kafka_config: Vec<(String, String)>,

    /// CloudEvents `ce_source` header value.
    #[arg(long, env = "RELAY_CE_SOURCE", default_value = "/realchat/auth")]
    pub ce_source: String,
}

impl KafkaConfig {
    /// The topic of an aggregate type: its entry in `RELAY_TOPICS`, else
    /// `<topic_prefix><aggregatetype>`.
    pub fn topic_for(&self, aggregatetype: &str) -> String {
        self.topics
            .iter()
            .find(|(aggregate, _)| aggregate == aggregatetype)
            .map_or_else(
                || format!("{}{aggregatetype}", self.topic_prefix),
                |(_, t)| t.clone(),
            )
    }

    /// The librdkafka settings every client of the relay shares: the extra
    /// settings (`RELAY_KAFKA_*`, `--kafka-config`, e.g. SASL and TLS) first,
    /// then the bootstrap servers.
    pub fn client_config(&self) -> ClientConfig {
        let mut client = ClientConfig::new();
        for (key, value) in &self.kafka_config {
            client.set(key, value);
        }
        client.set("bootstrap.servers", &self.kafka_bootstrap_servers);
        client
    }

    /// Whether an extra setting names `key`.
    pub fn sets(&self, key: &str) -> bool {
        self.kafka_config.iter().any(|(k, _)| k == key)
    }
}

/// The publishing loop's pace: how much it claims at once and how long it
/// waits when there is nothing to do or a batch failed.
#[derive(Clone, clap::Args)]
pub struct PublishConfig {
    /// Most outbox rows claimed and produced per batch (1..=100000).
    #[arg(long, env = "RELAY_BATCH_SIZE", default_value_t = 500,
          value_parser = clap::value_parser!(i64).range(1..=100_000))]
    pub batch_size: i64,

    /// Poll interval in ms: the fallback when no NOTIFY arrives (1..=3600000).
    #[arg(long = "poll-interval-ms", env = "RELAY_POLL_INTERVAL_MS", default_value = "1000",
          value_parser = millis(1..=3_600_000))]
    pub poll_interval: Duration,

    /// Most wait between retries after a failed batch, in ms (the backoff
    /// doubles from the poll interval up to this).
    #[arg(long = "max-backoff-ms", env = "RELAY_MAX_BACKOFF_MS", default_value = "30000",
          value_parser = millis(1..=3_600_000))]
    pub max_backoff: Duration,
}

/// Retention: how long published rows are kept and how they are deleted.
#[derive(Clone, clap::Args)]
pub struct RetentionConfig {
    /// Published rows older than this many seconds are deleted.
    #[arg(long = "retention-secs", env = "RELAY_RETENTION_SECS", default_value = "604800",
          value_parser = seconds(1..))]
    pub retention: Duration,

    /// Seconds between retention clean-ups.
    #[arg(long = "cleanup-interval-secs", env = "RELAY_CLEANUP_INTERVAL_SECS", default_value = "60",
          value_parser = seconds(1..=86_400))]
    pub cleanup_interval: Duration,

    /// Rows deleted per clean-up statement, each its own short transaction
    /// (1..=100000).
    #[arg(long, env = "RELAY_CLEANUP_BATCH", default_value_t = 1000,
          value_parser = clap::value_parser!(i64).range(1..=100_000))]
    pub cleanup_batch: i64,
}

fn parse_setting(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser as _;

    use super::RelayConfig;

    #[test]
    fn defaults_match_the_contract() {
        let config = RelayConfig::try_parse_from(["realchat-relay"]).unwrap();
        assert_eq!(config.kafka.topic_for("user"), "realchat.auth.user");
        assert_eq!(config.kafka.kafka_bootstrap_servers, "127.0.0.1:9092");
        assert_eq!(config.kafka.topic_partitions, 3);
        assert_eq!(
            config.retention.retention,
            Duration::from_secs(7 * 24 * 3600)
        );
        let mapped =
            RelayConfig::try_parse_from(["realchat-relay", "--topic", "user=users.v1,order=o"])
                .unwrap();
        assert_eq!(mapped.kafka.topic_for("user"), "users.v1");
        assert_eq!(mapped.kafka.topic_for("order"), "o");
        assert_eq!(mapped.kafka.topic_for("other"), "realchat.auth.other");
    }

    #[test]
    fn kafka_settings_parse_and_bad_values_name_their_setting() {
        let config = RelayConfig::try_parse_from([
            "realchat-relay",
            "--kafka-config",
            "security.protocol=sasl_ssl",
            "--kafka-config",
            "sasl.password=a=b",
        ])
        .unwrap();
        assert_eq!(
            config.kafka.kafka_config,
            [
                ("security.protocol".to_owned(), "sasl_ssl".to_owned()),
                ("sasl.password".to_owned(), "a=b".to_owned()),
            ]
        );
        for (flag, value) in [
            ("--kafka-config", "no-equals-sign"),
            ("--batch-size", "0"),
            ("--topic-partitions", "0"),
            ("--poll-interval-ms", "0"),
        ] {
            let error = RelayConfig::try_parse_from(["realchat-relay", flag, value])
                .err()
                .unwrap_or_else(|| panic!("{flag} {value} was accepted"));
            assert!(error.to_string().contains(flag), "{error}");
        }
    }
}
