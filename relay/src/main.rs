//! `realchat-relay`: publishes the auth service's outbox to Kafka.

use realchat_relay::RelayConfig;

/// `RUST_LOG` when unset: info, less PostgreSQL's notices ("relation
/// _sqlx_migrations already exists, skipping" at every start).
const DEFAULT_LOG_FILTER: &str = "info,sqlx::postgres::notice=warn";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut config = RelayConfig::from_args_and_env();
    config
        .kafka_config
        .extend(realchat_relay::kafka_settings_from_env(std::env::vars()));
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if config.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
    realchat_relay::run(config, shutdown_signal()).await
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = term.recv() => {},
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("shutdown signal received");
}
