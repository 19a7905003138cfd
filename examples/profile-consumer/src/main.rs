//! `realchat-profile-consumer`: the example Profile consumer.

use clap::Parser as _;
use realchat_profile_consumer::ProfileConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).init();
    realchat_profile_consumer::run(ProfileConfig::parse(), async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
}
