//! `realchat-relay`: publishes the auth service's outbox to Kafka.

use realchat_relay::RelayConfig;
use realchat_runtime::{settings, shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut config: RelayConfig = settings::from_args_and_env();
    config
        .kafka
        .kafka_config
        .extend(realchat_relay::kafka_settings_from_env(std::env::vars()));
    telemetry::init(config.log_format);
    realchat_relay::run(config, shutdown::signal()).await
}
