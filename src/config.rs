//! Server settings: one struct, read from flags and environment (clap).
//! `realchat-auth --help` lists every setting with its default.

use clap::builder::TypedValueParser;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Settings of the `realchat-auth` server. Durations are whole seconds.
/// Not `Debug`: `DATABASE_URL` may carry a password.
#[derive(Clone, clap::Parser)]
#[command(name = "realchat-auth", version, about = "RealChat Auth gRPC server")]
pub struct Config {
    /// What to do; without a subcommand, serve.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// PostgreSQL connection URL.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/realchat_auth"
    )]
    pub database_url: String,

    /// Address the gRPC server listens on.
    #[arg(long, env = "AUTH_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    pub grpc_addr: SocketAddr,

    /// Address of the HTTP server with `/healthz`, `/readyz` and `/metrics`
    /// (Prometheus); port 0 picks a free port (logged at start).
    #[arg(long, env = "AUTH_HTTP_ADDR", default_value = "127.0.0.1:9464")]
    pub http_addr: SocketAddr,

    /// bcrypt cost factor (4..=31); each step doubles the work.
    #[arg(long, env = "AUTH_BCRYPT_COST", default_value_t = 12,
          value_parser = clap::value_parser!(u32).range(4..=31))]
    pub bcrypt_cost: u32,

    /// bcrypt worker threads (0..=1024); 0 = one per core.
    #[arg(long, env = "AUTH_BCRYPT_THREADS", default_value_t = 0,
          value_parser = TypedValueParser::map(clap::value_parser!(u16).range(0..=1024), usize::from))]
    pub bcrypt_threads: usize,

    /// bcrypt jobs that may wait beyond the running ones; past it,
    /// RESOURCE_EXHAUSTED (0..=1000000).
    #[arg(long, env = "AUTH_BCRYPT_QUEUE", default_value_t = 256,
          value_parser = TypedValueParser::map(clap::value_parser!(u32).range(0..=1_000_000), |n| n as usize))]
    pub bcrypt_queue: usize,

    /// Scheduling of the bcrypt threads: `idle` (Linux SCHED_IDLE: they
    /// run on cycles nothing else wants, so hashing never delays Refresh,
    /// Logout or the database work, and still takes every idle core) or
    /// `normal` (the same as every other thread).
    #[arg(long, env = "AUTH_BCRYPT_PRIORITY", default_value = "idle",
          value_parser = ["idle", "normal"])]
    pub bcrypt_priority: String,

    /// PEM file with the PKCS#8 private key that signs tokens: Ed25519
    /// (EdDSA) or P-256 (ES256). Unset: an Ed25519 key is generated at start
    /// and tokens do not survive a restart.
    #[arg(long, env = "AUTH_SIGNING_KEY_FILE")]
    pub signing_key_file: Option<PathBuf>,

    /// PEM files of keys that verify tokens but do not sign them, comma
    /// separated: the previous key after a rotation (until the tokens it
    /// signed expire) and the next one before it. Private (PKCS#8) or public
    /// (SPKI) Ed25519 or P-256 keys. All are published in the JWKS.
    #[arg(long, env = "AUTH_VERIFICATION_KEY_FILES")]
    pub verification_key_files: Option<String>,

    /// `max-age` of the JWKS document (`/.well-known/jwks.json`), seconds:
    /// how long verifiers may cache it. Publish a next key at least this long
    /// before it starts signing.
    #[arg(long, env = "AUTH_JWKS_MAX_AGE_SECS", default_value_t = 300,
          value_parser = clap::value_parser!(u32).range(0..=31_536_000))]
    pub jwks_max_age_secs: u32,

    /// `iss` claim of issued tokens, required on verification.
    #[arg(long, env = "AUTH_ISSUER", default_value = "realchat-auth")]
    pub issuer: String,

    /// `aud` claim of issued tokens, required on verification.
    #[arg(long, env = "AUTH_AUDIENCE", default_value = "realchat")]
    pub audience: String,

    /// Access-token lifetime, seconds (1..=86400).
    #[arg(long, env = "AUTH_ACCESS_TOKEN_TTL_SECS", default_value_t = 900,
          value_parser = clap::value_parser!(i64).range(1..=86_400))]
    pub access_token_ttl_secs: i64,

    /// Refresh-token lifetime, seconds (1..=31536000, a year). Each rotation
    /// issues a token with a full lifetime, so an active session slides.
    #[arg(long, env = "AUTH_REFRESH_TOKEN_TTL_SECS", default_value_t = 2_592_000,
          value_parser = clap::value_parser!(i64).range(1..=31_536_000))]
    pub refresh_token_ttl_secs: i64,

    /// Seconds during which a just-retired refresh token yields the session's
    /// current token instead of revoking the session (0..=300).
    #[arg(long, env = "AUTH_REFRESH_REUSE_GRACE_SECS", default_value_t = 10,
          value_parser = clap::value_parser!(i64).range(0..=300))]
    pub refresh_reuse_grace_secs: i64,

    /// Clock skew tolerated when checking token expiry, seconds (0..=300).
    #[arg(long, env = "AUTH_TOKEN_LEEWAY_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(0..=300))]
    pub token_leeway_secs: u64,

    /// Failed logins of one account within the window after which further
    /// attempts get RESOURCE_EXHAUSTED until the window ends.
    #[arg(long, env = "AUTH_LOGIN_MAX_FAILURES_PER_ACCOUNT", default_value_t = 5,
          value_parser = clap::value_parser!(i32).range(1..))]
    pub login_max_failures_per_account: i32,

    /// Failed logins from one client address within the window after which
    /// its further attempts get RESOURCE_EXHAUSTED until the window ends.
    #[arg(long, env = "AUTH_LOGIN_MAX_FAILURES_PER_CLIENT", default_value_t = 50,
          value_parser = clap::value_parser!(i32).range(1..))]
    pub login_max_failures_per_client: i32,

    /// Length of the login-throttling window, seconds (1..=86400).
    #[arg(long, env = "AUTH_LOGIN_FAILURE_WINDOW_SECS", default_value_t = 900,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub login_failure_window_secs: u64,

    /// Request header whose last entry is the client address, as a trusted
    /// proxy appends it (e.g. `x-forwarded-for`), for throttling. Unset: the
    /// TCP peer address.
    #[arg(long, env = "AUTH_CLIENT_IP_HEADER", value_parser = parse_header_name)]
    pub client_ip_header: Option<String>,

    /// Seconds an RPC may take before the server gives up on it with
    /// UNAVAILABLE (a stalled database must not hold requests forever;
    /// 1..=600).
    #[arg(long, env = "AUTH_REQUEST_TIMEOUT_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=600))]
    pub request_timeout_secs: u64,

    /// Most connections in the PostgreSQL pool (1..=1000).
    #[arg(long, env = "AUTH_DB_MAX_CONNECTIONS", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub db_max_connections: u32,

    /// Seconds a request waits for a database connection before UNAVAILABLE
    /// (1..=300).
    #[arg(long, env = "AUTH_DB_ACQUIRE_TIMEOUT_SECS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..=300))]
    pub db_acquire_timeout_secs: u64,

    /// Apply pending migrations at start-up; turn off where deployments run
    /// `realchat-auth migrate` as a separate step.
    #[arg(long, env = "AUTH_MIGRATE_ON_START", default_value_t = true,
          action = clap::ArgAction::Set)]
    pub migrate_on_start: bool,

    /// Seconds in-flight requests get to finish after SIGTERM or SIGINT
    /// before the server stops anyway (1..=3600).
    #[arg(long, env = "AUTH_SHUTDOWN_TIMEOUT_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub shutdown_timeout_secs: u64,

    /// Sessions that expired or were revoked more than this many seconds ago
    /// are deleted (0..=315360000, ten years).
    #[arg(long, env = "AUTH_SESSION_RETENTION_SECS", default_value_t = 2_592_000,
          value_parser = clap::value_parser!(u64).range(0..=315_360_000))]
    pub session_retention_secs: u64,

    /// Seconds between purges of old sessions (1..=86400).
    #[arg(long, env = "AUTH_SESSION_PURGE_INTERVAL_SECS", default_value_t = 3600,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub session_purge_interval_secs: u64,

    /// Log format: `text` (human-readable) or `json`.
    #[arg(long, env = "AUTH_LOG_FORMAT", default_value = "text",
          value_parser = ["text", "json"])]
    pub log_format: String,
}

impl Config {
    /// The settings from the command line and the environment, as
    /// [`clap::Parser::parse`] reads them, except that each setting's value
    /// is named by its environment variable (`--bcrypt-cost
    /// <AUTH_BCRYPT_COST>`), in `--help` and in the error that a bad value
    /// gives at start, since deployments mostly set the variables. Exits
    /// (status 2) on a bad value.
    pub fn from_args_and_env() -> Self {
        use clap::{CommandFactory as _, FromArgMatches as _};
        let command = Self::command().mut_args(|arg| match arg.get_env() {
            Some(env) => {
                let name = env.to_string_lossy().into_owned();
                arg.value_name(name)
            }
            None => arg,
        });
        Self::from_arg_matches(&command.get_matches()).unwrap_or_else(|e| e.exit())
    }

    /// The paths of `AUTH_VERIFICATION_KEY_FILES`: comma separated, spaces
    /// around entries and empty entries ignored.
    pub fn verification_key_paths(&self) -> Vec<PathBuf> {
        self.verification_key_files
            .iter()
            .flat_map(|list| list.split(','))
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(PathBuf::from)
            .collect()
    }
}

/// A request header name gRPC metadata can carry as text.
fn parse_header_name(name: &str) -> Result<String, String> {
    let lower = name.to_ascii_lowercase();
    match tonic::metadata::AsciiMetadataKey::from_bytes(lower.as_bytes()) {
        Ok(_) if !lower.ends_with("-bin") => Ok(lower),
        _ => Err(format!("{name:?} is not a text header name")),
    }
}

/// Subcommands of `realchat-auth`.
#[derive(Clone, Debug, clap::Subcommand)]
pub enum Command {
    /// Apply the database migrations and exit.
    Migrate,
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::Config;

    #[test]
    fn defaults_parse_and_bad_values_name_their_setting() {
        let config = Config::try_parse_from(["realchat-auth"]).unwrap();
        assert_eq!(config.bcrypt_cost, 12);
        assert_eq!(config.grpc_addr.to_string(), "127.0.0.1:50051");
        assert_eq!(config.access_token_ttl_secs, 900);
        assert_eq!(config.refresh_token_ttl_secs, 30 * 24 * 3600);
        assert_eq!(config.refresh_reuse_grace_secs, 10);
        for (flag, value) in [
            ("--db-max-connections", "0"),
            ("--refresh-reuse-grace-secs", "99999999999999999"),
            ("--refresh-token-ttl-secs", "99999999999999999"),
            ("--access-token-ttl-secs", "0"),
            ("--bcrypt-cost", "3"),
            ("--grpc-addr", "not-an-address"),
        ] {
            let error = Config::try_parse_from(["realchat-auth", flag, value])
                .err()
                .unwrap_or_else(|| panic!("{flag} {value} was accepted"));
            assert!(error.to_string().contains(flag), "{error}");
        }
    }
}
