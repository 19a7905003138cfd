//! Prints the events on a topic from the beginning: key, headers and value.
//!
//! ```text
//! cargo run --example events -- --topic realchat.auth.user
//! ```
//! Exits after `--idle-secs` (default 5) without a new message.
//! A stand-in for `kcat -C`: Debian's kcat (librdkafka 2.0) cannot talk to
//! the tansu broker the scripts run, while this crate's librdkafka can.

use std::time::Duration;

use clap::Parser;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::message::Headers as _;
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};

#[derive(Parser)]
#[command(about = "Print the events of a topic")]
struct Cli {
    #[arg(
        long,
        env = "KAFKA_BOOTSTRAP_SERVERS",
        default_value = "127.0.0.1:9092"
    )]
    bootstrap_servers: String,
    #[arg(long, default_value = "realchat.auth.user")]
    topic: String,
    /// Seconds without a message after which to exit.
    #[arg(long, default_value_t = 5)]
    idle_secs: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &cli.bootstrap_servers)
        .set("group.id", "realchat-events-example")
        .set("enable.auto.commit", "false")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(&cli.topic), Duration::from_secs(10))?;
    let mut assignment = TopicPartitionList::new();
    for topic in metadata.topics().iter().filter(|t| t.name() == cli.topic) {
        for p in topic.partitions() {
            assignment.add_partition_offset(&cli.topic, p.id(), Offset::Beginning)?;
        }
    }
    anyhow::ensure!(assignment.count() > 0, "topic {} not found", cli.topic);
    consumer.assign(&assignment)?;
    let idle = Duration::from_secs(cli.idle_secs);
    while let Ok(message) = tokio::time::timeout(idle, consumer.recv()).await {
        let message = message?;
        println!(
            "partition={} offset={} key={}",
            message.partition(),
            message.offset(),
            String::from_utf8_lossy(message.key().unwrap_or_default())
        );
        if let Some(headers) = message.headers() {
            for h in headers.iter() {
                let value = h.value.map(String::from_utf8_lossy).unwrap_or_default();
                println!("  {}: {value}", h.key);
            }
        }
        println!(
            "  {}",
            String::from_utf8_lossy(message.payload().unwrap_or_default())
        );
    }
    Ok(())
}
