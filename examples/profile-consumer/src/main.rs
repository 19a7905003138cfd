//! `realchat-profile-consumer`: the example Profile consumer. Stops on
//! SIGINT or SIGTERM (what `docker stop` sends) after the message in hand.

use clap::Parser as _;
use realchat_profile_consumer::ProfileConfig;
use tokio::signal::unix::{SignalKind, signal};

/// `RUST_LOG` when unset: info, less PostgreSQL's notices ("relation
/// _sqlx_migrations already exists, skipping" at every start).
const DEFAULT_LOG_FILTER: &str = "info,sqlx::postgres::notice=warn";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    tracing_subscriber::fmt().with_env_filter(filter).init();
    let mut term = signal(SignalKind::terminate())?;
    realchat_profile_consumer::run(ProfileConfig::parse(), async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
    })
    .await
}
