//! Tracing set-up: one subscriber per process, to standard output, in the
//! format the deployment reads.

/// `RUST_LOG` when unset: info, less PostgreSQL's notices ("relation
/// _sqlx_migrations already exists, skipping" at every start).
pub const DEFAULT_LOG_FILTER: &str = "info,sqlx::postgres::notice=warn";

/// How log lines are written (`AUTH_LOG_FORMAT`, `RELAY_LOG_FORMAT`,
/// `PROFILE_LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Installs the process's tracing subscriber: level from `RUST_LOG` (else
/// [`DEFAULT_LOG_FILTER`]), lines in `format`. Call once, first thing in
/// `main`; a second call in one process does nothing.
pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    // `try_init`: a test that starts two binaries' code in one process must
    // not fail on the second.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
