//! Kafka for tests: the broker address, a tansu broker of a test's own that
//! it can stop and start again, consumers reading a topic from its
//! beginning, the consumed events, and the settings of an in-process relay.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::Headers as _;
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
use realchat_relay::RelayConfig;
use tokio::process::{Child, Command};
use uuid::Uuid;

use crate::process::free_port;
use crate::wait::eventually;

/// The broker tests publish to (`KAFKA_BOOTSTRAP_SERVERS`, default loopback).
pub fn bootstrap_servers() -> String {
    std::env::var("KAFKA_BOOTSTRAP_SERVERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

/// Poll interval of an in-process test relay: short, so a missed NOTIFY
/// costs little.
pub const TEST_POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Settings of an in-process relay on `database_url`, publishing to the
/// default broker under `topic_prefix`, polling every
/// [`TEST_POLL_INTERVAL`].
pub fn relay_config(database_url: &str, topic_prefix: &str) -> RelayConfig {
    relay_config_on(
        &bootstrap_servers(),
        database_url,
        topic_prefix,
        TEST_POLL_INTERVAL,
    )
}

/// The relay running in this process, on its own task, until stopped (as a
/// deployment stops it) or killed (as a crash would end it).
pub struct InProcessRelay {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl InProcessRelay {
    /// Starts the relay on `database_url`, publishing under `topic_prefix`
    /// ([`relay_config`]).
    pub fn start(database_url: &str, topic_prefix: &str) -> Self {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(realchat_relay::run(
            relay_config(database_url, topic_prefix),
            async {
                let _ = stopped.await;
            },
        ));
        Self { stop, task }
    }

    /// Drops the relay wherever it is, as a crash would (its connections
    /// close, so its advisory lock is released).
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }

    /// Asks the relay to stop and waits for it, at most 30 s.
    ///
    /// # Errors
    /// When it does not stop in time, panicked, or ended with an error.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        match tokio::time::timeout(Duration::from_secs(30), self.task).await {
            Ok(ended) => ended?,
            Err(_) => anyhow::bail!("the relay did not stop within 30 s"),
        }
    }
}

/// The relay's defaults with this broker, database, topic prefix and poll
/// interval, and no metrics server (in-process relays share the process).
/// The one place the tests and the benchmark set `RelayConfig` fields.
pub fn relay_config_on(
    bootstrap: &str,
    database_url: &str,
    topic_prefix: &str,
    poll_interval: Duration,
) -> RelayConfig {
    let mut config = <RelayConfig as clap::Parser>::parse_from(["realchat-relay"]);
    config.database_url = database_url.to_owned();
    config.kafka.kafka_bootstrap_servers = bootstrap.to_owned();
    config.kafka.topic_prefix = topic_prefix.to_owned();
    config.publish.poll_interval = poll_interval;
    config.metrics_addr = None;
    config
}

/// A consumer of the broker at `bootstrap` in a group of its own, committing
/// nothing. `low_latency` hands over a record as soon as the broker has it
/// (`fetch.wait.max.ms=5`: a broker that does not wake long polls on new
/// data adds at most that), for latency measurements.
///
/// # Errors
/// When librdkafka refuses the settings.
pub fn new_consumer(bootstrap: &str, low_latency: bool) -> KafkaResult<StreamConsumer> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("realchat-test-{}", Uuid::new_v4()))
        .set("enable.auto.commit", "false");
    if low_latency {
        config.set("fetch.wait.max.ms", "5");
    }
    config.create()
}

/// Partitions of `topic` from the broker's metadata; `None` while the topic
/// does not exist (or has none).
pub fn partitions(consumer: &impl Consumer, topic: &str) -> Option<i32> {
    consumer
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .ok()?
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .and_then(|t| i32::try_from(t.partitions().len()).ok())
        .filter(|n| *n > 0)
}

/// Assigns `consumer` every one of `topic`'s `partitions`, from the beginning.
///
/// # Errors
/// When librdkafka refuses the assignment.
pub fn read_from_beginning(
    consumer: &StreamConsumer,
    topic: &str,
    partitions: i32,
) -> KafkaResult<()> {
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)
}

/// A consumer reading every partition of `topic` from the beginning, once the
/// relay has created it.
pub async fn consumer(topic: &str) -> StreamConsumer {
    consumer_on(&bootstrap_servers(), topic).await
}

/// [`consumer`] on the broker at `bootstrap`.
pub async fn consumer_on(bootstrap: &str, topic: &str) -> StreamConsumer {
    let consumer = new_consumer(bootstrap, false).unwrap();
    let partitions = eventually(
        Duration::from_secs(30),
        "the relay to create the topic",
        || {
            let found = partitions(&consumer, topic);
            async move { found }
        },
    )
    .await;
    assert_eq!(partitions, 3, "relay creates its topics with 3 partitions");
    read_from_beginning(&consumer, topic, partitions).unwrap();
    consumer
}

/// One consumed event: its key, `ce_id` header and JSON payload.
#[derive(Debug, Clone)]
pub struct Event {
    /// The message key (the aggregate id).
    pub key: String,
    /// The `ce_id` header (the outbox row's id).
    pub ce_id: Uuid,
    /// The JSON payload.
    pub payload: serde_json::Value,
}

/// Consumes until `done` holds for what was received, or panics after
/// `within` (a deadline for the condition, not a sleep).
pub async fn collect(
    consumer: &StreamConsumer,
    within: Duration,
    done: impl Fn(&[Event]) -> bool,
) -> Vec<Event> {
    let deadline = tokio::time::Instant::now() + within;
    let mut events = Vec::new();
    while !done(&events) {
        let message = tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out after {within:?} with {} events", events.len()))
            .expect("a message");
        let ce_id = message
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == "ce_id").and_then(|h| h.value))
            .map(|v| std::str::from_utf8(v).unwrap().parse().unwrap())
            .expect("ce_id header");
        events.push(Event {
            key: String::from_utf8(message.key().unwrap().to_vec()).unwrap(),
            ce_id,
            payload: serde_json::from_slice(message.payload().unwrap()).unwrap(),
        });
    }
    events
}

/// A tansu broker of the test's own on a free port, storing in SQLite so
/// that topics and messages survive a restart.
pub struct Broker {
    /// The loopback port it listens on.
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Broker {
    /// Starts a broker on a free port and fresh storage, and waits until it
    /// listens.
    pub async fn start() -> Self {
        let port = free_port().unwrap().port();
        let dir = std::env::temp_dir().join(format!("rc-test-broker-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut broker = Self {
            port,
            dir,
            child: None,
        };
        broker.resume().await;
        broker
    }

    /// Its bootstrap address.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stops the broker (SIGKILL) and waits until its port is closed.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
        }
        self.wait_listening(false, Duration::from_secs(10)).await;
    }

    /// Starts the broker (again) on the same port and storage.
    pub async fn resume(&mut self) {
        let bin = std::env::var_os("TANSU_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let home = std::env::var_os("CARGO_HOME")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| {
                        PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cargo")
                    });
                home.join("bin/tansu")
            });
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new(bin)
            .current_dir(&self.dir)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start tansu (TANSU_BIN or $CARGO_HOME/bin/tansu)");
        self.child = Some(child);
        self.wait_listening(true, Duration::from_secs(20)).await;
    }

    /// Waits until the port accepts connections (`open`) or refuses them.
    async fn wait_listening(&self, open: bool, within: Duration) {
        let port = self.port;
        let what = if open {
            "the broker to listen"
        } else {
            "the broker port to close"
        };
        eventually(within, what, || async move {
            let accepted = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok();
            (accepted == open).then_some(())
        })
        .await;
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
