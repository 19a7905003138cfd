//! `realchat-auth`: the gRPC server. Thin: config, tracing, run.

use realchat_auth::config::{Command, Config};
use realchat_auth::startup::{Application, migrate};

/// `RUST_LOG` when unset: info, less PostgreSQL's notices ("relation
/// _sqlx_migrations already exists, skipping" at every start).
const DEFAULT_LOG_FILTER: &str = "info,sqlx::postgres::notice=warn";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::from_args_and_env();
    init_tracing(&config.log_format);
    if let Some(Command::Migrate) = config.command {
        migrate(&config).await?;
        tracing::info!("migrations applied");
        return Ok(());
    }
    let app = Application::build(&config).await?;
    app.run_until(shutdown_signal()).await?;
    tracing::info!("server stopped");
    Ok(())
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
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
