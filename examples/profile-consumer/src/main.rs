//! `realchat-profile-consumer`: the example Profile consumer. Stops on
//! SIGINT or SIGTERM (what `docker stop` sends) after the message in hand.

use realchat_profile_consumer::ProfileConfig;
use realchat_runtime::telemetry::LogFormat;
use realchat_runtime::{settings, shutdown, telemetry};

/// The consumer's settings plus the process's own.
#[derive(clap::Parser)]
#[command(name = "realchat-profile-consumer", about = "Example Profile consumer")]
struct Cli {
    #[command(flatten)]
    profile: ProfileConfig,

    /// Log format: `text` (human-readable) or `json` (one object per line,
    /// for log shippers). The level comes from `RUST_LOG` (default
    /// `info,sqlx::postgres::notice=warn`).
    #[arg(long, env = "PROFILE_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli: Cli = settings::from_args_and_env();
    telemetry::init(cli.log_format);
    realchat_profile_consumer::run(cli.profile, shutdown::signal()).await
}
