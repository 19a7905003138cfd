//! Server settings, read from flags and environment (clap), in groups that
//! each build the settings of the part they configure (zero-to-production's
//! `configuration.rs`): [`DatabaseConfig::connect`],
//! [`PasswordConfig::hasher_settings`], [`TokenConfig::token_service`],
//! [`ThrottleConfig::limits`]. Durations are parsed once, here, into
//! [`Duration`]s; the variable's name says its unit (`*_SECS`).
//! `realchat-auth --help` lists every setting with its default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::builder::TypedValueParser as _;
use realchat_runtime::http::HttpLimits;
use realchat_runtime::settings::seconds;
use realchat_runtime::telemetry::LogFormat;
use sqlx::PgPool;

use crate::grpc::ClientAddress;
use crate::password::HasherSettings;
use crate::service::throttle::Limits;
use crate::store;
use crate::token::{SigningKey, TokenService, TokenSettings, verification_key_from_pem_file};
use crate::transport::ConnectionLimits;

/// Settings of the `realchat-auth` server. Not `Debug`: `DATABASE_URL` may
/// carry a password.
#[derive(Clone, clap::Parser)]
#[command(name = "realchat-auth", version, about = "RealChat Auth gRPC server")]
pub struct Config {
    /// What to do; without a subcommand, serve.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// PostgreSQL.
    #[command(flatten)]
    pub database: DatabaseConfig,

    /// Ports and request limits.
    #[command(flatten)]
    pub listen: ListenConfig,

    /// Password hashing.
    #[command(flatten)]
    pub passwords: PasswordConfig,

    /// Signing keys and token claims.
    #[command(flatten)]
    pub tokens: TokenConfig,

    /// Refresh-token rotation and session retention.
    #[command(flatten)]
    pub sessions: SessionConfig,

    /// Login throttling.
    #[command(flatten)]
    pub throttle: ThrottleConfig,

    /// Log format: `text` (human-readable) or `json`.
    #[arg(long, env = "AUTH_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Subcommands of `realchat-auth`.
#[derive(Clone, Debug, clap::Subcommand)]
pub enum Command {
    /// Apply the database migrations and exit.
    Migrate,
}

/// The database and its connection pool.
#[derive(Clone, clap::Args)]
pub struct DatabaseConfig {
    /// PostgreSQL connection URL.
    #[arg(
        long = "database-url",
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/realchat_auth"
    )]
    pub url: String,

    /// Most connections in the PostgreSQL pool (1..=1000).
    #[arg(long = "db-max-connections", env = "AUTH_DB_MAX_CONNECTIONS", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_connections: u32,

    /// Seconds a request waits for a database connection before UNAVAILABLE
    /// (1..=300).
    #[arg(long = "db-acquire-timeout-secs", env = "AUTH_DB_ACQUIRE_TIMEOUT_SECS",
          default_value = "5", value_parser = seconds(1..=300))]
    pub acquire_timeout: Duration,

    /// Apply pending migrations at start-up; turn off where deployments run
    /// `realchat-auth migrate` as a separate step.
    #[arg(long, env = "AUTH_MIGRATE_ON_START", default_value_t = true,
          action = clap::ArgAction::Set)]
    pub migrate_on_start: bool,
}

impl DatabaseConfig {
    /// A pool of at most `max_connections` to `url` whose acquire waits at
    /// most `acquire_timeout`.
    ///
    /// # Errors
    /// When the first connection cannot be made (naming `DATABASE_URL`).
    pub async fn connect(&self) -> anyhow::Result<PgPool> {
        store::connect(&self.url, self.max_connections, self.acquire_timeout)
            .await
            .context("connecting to DATABASE_URL")
    }
}

/// The ports the server listens on, the bounds of their connections and of
/// one request.
#[derive(Clone, clap::Args)]
pub struct ListenConfig {
    /// Address the gRPC server listens on.
    #[arg(long, env = "AUTH_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    pub grpc_addr: SocketAddr,

    /// Address of the HTTP server with `/healthz`, `/readyz`, `/metrics`
    /// (Prometheus) and the JWKS (`/.well-known/jwks.json`); port 0 picks a
    /// free port (logged at start).
    #[arg(long, env = "AUTH_HTTP_ADDR", default_value = "127.0.0.1:9464")]
    pub http_addr: SocketAddr,

    /// Seconds an RPC may take before the server gives up on it with
    /// UNAVAILABLE (a stalled database must not hold requests forever;
    /// 1..=600).
    #[arg(long = "request-timeout-secs", env = "AUTH_REQUEST_TIMEOUT_SECS",
          default_value = "30", value_parser = seconds(1..=600))]
    pub request_timeout: Duration,

    /// Seconds in-flight requests get to finish after SIGTERM or SIGINT
    /// before the server stops anyway (1..=3600).
    #[arg(long = "shutdown-timeout-secs", env = "AUTH_SHUTDOWN_TIMEOUT_SECS",
          default_value = "30", value_parser = seconds(1..=3600))]
    pub shutdown_timeout: Duration,

    /// Connections open at once on the gRPC port (1..=1000000); at the
    /// limit, new ones wait and connections with no request in flight are
    /// closed to make room. Lowered at start to what the open-file limit
    /// allows.
    #[arg(long, env = "AUTH_GRPC_MAX_CONNECTIONS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000).map(|n| n as usize))]
    pub grpc_max_connections: usize,

    /// Seconds a new gRPC connection gets to send the HTTP/2 preface and its
    /// first frame before it is closed (1..=300).
    #[arg(long = "grpc-handshake-timeout-secs", env = "AUTH_GRPC_HANDSHAKE_TIMEOUT_SECS",
          default_value = "10", value_parser = seconds(1..=300))]
    pub grpc_handshake_timeout: Duration,

    /// Seconds a gRPC connection may stay open with no request in flight
    /// before it gets a GOAWAY (gRPC's MAX_CONNECTION_IDLE; 1..=86400).
    #[arg(long = "grpc-idle-timeout-secs", env = "AUTH_GRPC_IDLE_TIMEOUT_SECS",
          default_value = "300", value_parser = seconds(1..=86_400))]
    pub grpc_idle_timeout: Duration,

    /// Seconds between HTTP/2 PINGs the server sends on each gRPC
    /// connection to find dead peers (1..=86400).
    #[arg(long = "grpc-keepalive-interval-secs", env = "AUTH_GRPC_KEEPALIVE_INTERVAL_SECS",
          default_value = "60", value_parser = seconds(1..=86_400))]
    pub grpc_keepalive_interval: Duration,

    /// Seconds a PING may go unanswered before its connection is closed
    /// (1..=3600).
    #[arg(long = "grpc-keepalive-timeout-secs", env = "AUTH_GRPC_KEEPALIVE_TIMEOUT_SECS",
          default_value = "20", value_parser = seconds(1..=3600))]
    pub grpc_keepalive_timeout: Duration,

    /// Requests in flight at once on one gRPC connection
    /// (SETTINGS_MAX_CONCURRENT_STREAMS; 1..=10000).
    #[arg(long, env = "AUTH_GRPC_MAX_CONCURRENT_STREAMS", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub grpc_max_concurrent_streams: u32,

    /// Largest header list (metadata) of a gRPC request, bytes
    /// (SETTINGS_MAX_HEADER_LIST_SIZE; 1024..=1048576).
    #[arg(long, env = "AUTH_GRPC_MAX_HEADER_BYTES", default_value_t = 16 * 1024,
          value_parser = clap::value_parser!(u32).range(1024..=1_048_576))]
    pub grpc_max_header_bytes: u32,

    /// Requests in flight at once on the gRPC port, over all connections
    /// (1..=1000000); past it RESOURCE_EXHAUSTED with RetryInfo. With
    /// 64 KiB requests it bounds the memory requests can hold.
    #[arg(long, env = "AUTH_GRPC_MAX_REQUESTS_IN_FLIGHT", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000).map(|n| n as usize))]
    pub grpc_max_requests_in_flight: usize,

    /// Connections open at once on the HTTP port (1..=100000).
    #[arg(long, env = "AUTH_HTTP_MAX_CONNECTIONS", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..=100_000).map(|n| n as usize))]
    pub http_max_connections: usize,

    /// Seconds an HTTP-port connection gets to send its whole request head
    /// (1..=300).
    #[arg(long = "http-header-timeout-secs", env = "AUTH_HTTP_HEADER_TIMEOUT_SECS",
          default_value = "10", value_parser = seconds(1..=300))]
    pub http_header_timeout: Duration,

    /// Largest request head on the HTTP port, bytes (8192..=1048576).
    #[arg(long, env = "AUTH_HTTP_MAX_HEADER_BYTES", default_value_t = 16 * 1024,
          value_parser = clap::value_parser!(u32).range(8192..=1_048_576).map(|n| n as usize))]
    pub http_max_header_bytes: usize,
}

impl ListenConfig {
    /// The bounds on the gRPC port's connections and requests: a request
    /// gets the request timeout from its headers to its answer, body
    /// included, and a connection asked to close gets it for what it has in
    /// flight.
    pub fn grpc_limits(&self) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: self.grpc_max_connections,
            handshake_timeout: self.grpc_handshake_timeout,
            idle_timeout: self.grpc_idle_timeout,
            keepalive_interval: self.grpc_keepalive_interval,
            keepalive_timeout: self.grpc_keepalive_timeout,
            max_concurrent_streams: self.grpc_max_concurrent_streams,
            max_header_bytes: self.grpc_max_header_bytes,
            max_requests_in_flight: self.grpc_max_requests_in_flight,
            request_timeout: self.request_timeout,
        }
    }

    /// The bounds on the HTTP port's connections.
    pub fn http_limits(&self) -> HttpLimits {
        HttpLimits {
            max_connections: self.http_max_connections,
            header_timeout: self.http_header_timeout,
            max_header_bytes: self.http_max_header_bytes,
        }
    }
}

/// Where the bcrypt threads run relative to the rest of the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BcryptPriority {
    /// Linux SCHED_IDLE: they run on cycles nothing else wants, so hashing
    /// never delays Refresh, Logout or the database work, and still takes
    /// every idle core.
    Idle,
    /// The same as every other thread.
    Normal,
}

/// bcrypt and its thread pool.
#[derive(Clone, clap::Args)]
pub struct PasswordConfig {
    /// bcrypt cost factor (4..=31); each step doubles the work.
    #[arg(long, env = "AUTH_BCRYPT_COST", default_value_t = 12,
          value_parser = clap::value_parser!(u32).range(4..=31))]
    pub bcrypt_cost: u32,

    /// bcrypt worker threads (0..=1024); 0 = one per core.
    #[arg(long, env = "AUTH_BCRYPT_THREADS", default_value_t = 0,
          value_parser = clap::value_parser!(u16).range(0..=1024).map(usize::from))]
    pub bcrypt_threads: usize,

    /// bcrypt jobs that may wait beyond the running ones; past it,
    /// RESOURCE_EXHAUSTED (0..=1000000).
    #[arg(long, env = "AUTH_BCRYPT_QUEUE", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(0..=1_000_000).map(|n| n as usize))]
    pub bcrypt_queue: usize,

    /// Scheduling of the bcrypt threads: `idle` (Linux SCHED_IDLE: they
    /// run on cycles nothing else wants, so hashing never delays Refresh,
    /// Logout or the database work, and still takes every idle core) or
    /// `normal` (the same as every other thread).
    #[arg(long, env = "AUTH_BCRYPT_PRIORITY", value_enum, default_value_t = BcryptPriority::Idle)]
    pub bcrypt_priority: BcryptPriority,
}

impl PasswordConfig {
    /// The settings of the password hasher.
    pub fn hasher_settings(&self) -> HasherSettings {
        HasherSettings {
            cost: self.bcrypt_cost,
            threads: self.bcrypt_threads,
            queue: self.bcrypt_queue,
            idle_priority: self.bcrypt_priority == BcryptPriority::Idle,
        }
    }
}

/// The keys that sign and verify tokens, and the claims of issued tokens.
#[derive(Clone, clap::Args)]
pub struct TokenConfig {
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
    #[arg(long = "jwks-max-age-secs", env = "AUTH_JWKS_MAX_AGE_SECS", default_value = "300",
          value_parser = seconds(0..=31_536_000))]
    pub jwks_max_age: Duration,

    /// `iss` claim of issued tokens, required on verification.
    #[arg(long, env = "AUTH_ISSUER", default_value = "realchat-auth")]
    pub issuer: String,

    /// `aud` claim of issued tokens, required on verification.
    #[arg(long, env = "AUTH_AUDIENCE", default_value = "realchat")]
    pub audience: String,

    /// Access-token lifetime, seconds (1..=86400).
    #[arg(long = "access-token-ttl-secs", env = "AUTH_ACCESS_TOKEN_TTL_SECS",
          default_value = "900", value_parser = seconds(1..=86_400))]
    pub access_token_ttl: Duration,

    /// Refresh-token lifetime, seconds (1..=31536000, a year). Each rotation
    /// issues a token with a full lifetime, so an active session slides.
    #[arg(long = "refresh-token-ttl-secs", env = "AUTH_REFRESH_TOKEN_TTL_SECS",
          default_value = "2592000", value_parser = seconds(1..=31_536_000))]
    pub refresh_token_ttl: Duration,

    /// Clock skew tolerated on a token's `exp`, `nbf` and `iat`, seconds
    /// (0..=300).
    #[arg(long = "token-leeway-secs", env = "AUTH_TOKEN_LEEWAY_SECS", default_value = "30",
          value_parser = seconds(0..=300))]
    pub token_leeway: Duration,
}

impl TokenConfig {
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

    /// Loads the signing key (or generates one, with a warning) and the
    /// verification-only keys, and builds the token service over them.
    ///
    /// # Errors
    /// A key file that cannot be read or is no usable key, named by its
    /// setting.
    pub fn token_service(&self) -> anyhow::Result<TokenService> {
        let key = match &self.signing_key_file {
            Some(path) => SigningKey::from_pem_file(path).context("AUTH_SIGNING_KEY_FILE")?,
            None => {
                tracing::warn!(
                    "AUTH_SIGNING_KEY_FILE is not set: generated a signing key; \
                     tokens will not survive a restart"
                );
                SigningKey::generate()?
            }
        };
        tracing::info!(kid = key.kid(), "signing key loaded");
        let verification_keys = self
            .verification_key_paths()
            .iter()
            .map(|path| verification_key_from_pem_file(path))
            .collect::<Result<Vec<_>, _>>()
            .context("AUTH_VERIFICATION_KEY_FILES")?;
        for k in &verification_keys {
            tracing::info!(kid = k.kid(), "verification key loaded");
        }
        Ok(TokenService::with_verification_keys(
            key,
            verification_keys,
            TokenSettings {
                issuer: self.issuer.clone(),
                audience: self.audience.clone(),
                access_ttl: self.access_token_ttl,
                refresh_ttl: self.refresh_token_ttl,
                leeway: self.token_leeway,
            },
        ))
    }
}

/// Refresh-token rotation and how long ended sessions are kept.
#[derive(Clone, clap::Args)]
pub struct SessionConfig {
    /// Seconds during which a just-retired refresh token yields the session's
    /// current token instead of revoking the session (0..=300).
    #[arg(long = "refresh-reuse-grace-secs", env = "AUTH_REFRESH_REUSE_GRACE_SECS",
          default_value = "10", value_parser = seconds(0..=300))]
    pub refresh_reuse_grace: Duration,

    /// Sessions that expired or were revoked more than this many seconds ago
    /// are deleted (0..=315360000, ten years).
    #[arg(long = "session-retention-secs", env = "AUTH_SESSION_RETENTION_SECS",
          default_value = "2592000", value_parser = seconds(0..=315_360_000))]
    pub session_retention: Duration,

    /// Seconds between purges of old sessions and ended throttle windows
    /// (1..=86400).
    #[arg(long = "session-purge-interval-secs", env = "AUTH_SESSION_PURGE_INTERVAL_SECS",
          default_value = "3600", value_parser = seconds(1..=86_400))]
    pub session_purge_interval: Duration,
}

/// Login throttling and how clients are told apart.
#[derive(Clone, clap::Args)]
pub struct ThrottleConfig {
    /// Failed logins of one account within the window after which further
    /// attempts get RESOURCE_EXHAUSTED until the window ends (at least 1).
    #[arg(long, env = "AUTH_LOGIN_MAX_FAILURES_PER_ACCOUNT", default_value_t = 5,
          value_parser = clap::value_parser!(i32).range(1..))]
    pub login_max_failures_per_account: i32,

    /// Failed logins from one client address within the window after which
    /// its further attempts get RESOURCE_EXHAUSTED until the window ends (at
    /// least 1).
    #[arg(long, env = "AUTH_LOGIN_MAX_FAILURES_PER_CLIENT", default_value_t = 50,
          value_parser = clap::value_parser!(i32).range(1..))]
    pub login_max_failures_per_client: i32,

    /// Length of the login-throttling window, seconds (1..=86400).
    #[arg(long = "login-failure-window-secs", env = "AUTH_LOGIN_FAILURE_WINDOW_SECS",
          default_value = "900", value_parser = seconds(1..=86_400))]
    pub login_failure_window: Duration,

    /// Request header to which the proxies in front of the server append the
    /// address they received the request from (e.g. `x-forwarded-for`); the
    /// client address for throttling is the entry the outermost trusted
    /// proxy added (see `AUTH_TRUSTED_PROXY_HOPS`). Every line of the header
    /// is read, in order, as one list. Unset: the TCP peer address.
    #[arg(long, env = "AUTH_CLIENT_IP_HEADER", value_parser = parse_header_name)]
    pub client_ip_header: Option<String>,

    /// Proxies in front of the server that each append to
    /// `AUTH_CLIENT_IP_HEADER` (1..=16): the client address is this many
    /// entries from the end of the header's list. 1 for one load balancer;
    /// 2 for a CDN in front of it. Entries before it are the client's own
    /// and never read.
    #[arg(long, env = "AUTH_TRUSTED_PROXY_HOPS", default_value_t = 1,
          value_parser = clap::value_parser!(u8).range(1..=16).map(usize::from))]
    pub trusted_proxy_hops: usize,
}

impl ThrottleConfig {
    /// How the client address of a request is found.
    pub fn client_address(&self) -> ClientAddress {
        ClientAddress {
            header: self.client_ip_header.clone(),
            trusted_hops: self.trusted_proxy_hops,
        }
    }

    /// The throttle's limits and window.
    pub fn limits(&self) -> Limits {
        Limits {
            per_account: self.login_max_failures_per_account,
            per_client: self.login_max_failures_per_client,
            window: self.login_failure_window,
        }
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser as _;

    use super::{BcryptPriority, Config};

    #[test]
    fn defaults_parse_and_bad_values_name_their_setting() {
        let config = Config::try_parse_from(["realchat-auth"]).unwrap();
        assert_eq!(config.passwords.bcrypt_cost, 12);
        assert_eq!(config.listen.grpc_addr.to_string(), "127.0.0.1:50051");
        assert_eq!(config.tokens.access_token_ttl, Duration::from_secs(900));
        assert_eq!(
            config.tokens.refresh_token_ttl,
            Duration::from_secs(30 * 24 * 3600)
        );
        assert_eq!(config.sessions.refresh_reuse_grace, Duration::from_secs(10));
        assert_eq!(config.passwords.bcrypt_priority, BcryptPriority::Idle);
        for (flag, value) in [
            ("--db-max-connections", "0"),
            ("--refresh-reuse-grace-secs", "99999999999999999"),
            ("--refresh-token-ttl-secs", "99999999999999999"),
            ("--access-token-ttl-secs", "0"),
            ("--bcrypt-cost", "3"),
            ("--grpc-addr", "not-an-address"),
            ("--bcrypt-priority", "high"),
            ("--log-format", "xml"),
        ] {
            let error = Config::try_parse_from(["realchat-auth", flag, value])
                .err()
                .unwrap_or_else(|| panic!("{flag} {value} was accepted"));
            assert!(error.to_string().contains(flag), "{error}");
        }
    }
}
