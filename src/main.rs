//! `realchat-auth`: the gRPC server. Thin: settings, tracing, run.

use realchat_auth::config::{Command, Config};
use realchat_auth::startup::{Application, migrate};
use realchat_runtime::{settings, shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config: Config = settings::from_args_and_env();
    telemetry::init(config.log_format);
    if let Some(Command::Migrate) = config.command {
        migrate(&config).await?;
        tracing::info!("migrations applied");
        return Ok(());
    }
    let app = Application::build(&config).await?;
    app.run_until(shutdown::signal()).await?;
    tracing::info!("server stopped");
    Ok(())
}
