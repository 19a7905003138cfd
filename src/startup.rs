//! Builds the application from a [`Config`]: database pool and migrations,
//! hasher, signing key, and the gRPC server bound to its port, with gRPC
//! health checking (`grpc.health.v1`, SERVING only while PostgreSQL answers)
//! and server reflection (`grpc.reflection.v1` and `v1alpha`) beside `AuthApi`
//! and `AccountApi`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tonic::service::Routes;

use crate::config::{Config, DatabaseConfig, ListenConfig, SessionConfig, ThrottleConfig};
use crate::grpc::GrpcApi;
use crate::password::PasswordHasher;
use crate::proto::account_api_server::AccountApiServer;
use crate::proto::auth_api_server::AuthApiServer;
use crate::service::AuthService;
use crate::store;
use crate::transport::ConnectionLimits;

/// Largest request message accepted, in bytes; larger ones are refused by
/// tonic with OUT_OF_RANGE before they are decoded. Real requests are under
/// 4 KiB (fields are capped at 1 KiB before normalisation, tokens ~600 B).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// A built server, bound to its address but not yet serving.
pub struct Application {
    listener: TcpListener,
    http_listener: TcpListener,
    service: Arc<AuthService>,
    pool: PgPool,
    jwks: crate::observe::Jwks,
    listen: ListenConfig,
    grpc_limits: ConnectionLimits,
    http_limits: realchat_runtime::http::HttpLimits,
    sessions: SessionConfig,
    throttle: ThrottleConfig,
}

/// Applies the migrations of `migrations/` to `DATABASE_URL` and returns
/// (`realchat-auth migrate`).
///
/// # Errors
/// When the database cannot be reached or a migration fails.
pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    // One connection is all the migrator uses.
    let database = DatabaseConfig {
        max_connections: 1,
        ..config.database.clone()
    };
    let pool = database.connect().await?;
    apply_migrations(&pool).await?;
    pool.close().await;
    Ok(())
}

/// Applies the migrations of `migrations/` that `pool`'s database lacks.
async fn apply_migrations(pool: &PgPool) -> anyhow::Result<()> {
    store::MIGRATOR
        .run(pool)
        .await
        .context("applying database migrations")
}

impl Application {
    /// Connects to PostgreSQL, applies the migrations, loads or generates the
    /// signing key, starts the bcrypt pool and binds `AUTH_GRPC_ADDR` and
    /// `AUTH_HTTP_ADDR` (port 0 picks a free port; see
    /// [`Application::local_addr`]).
    ///
    /// # Errors
    /// Any start-up failure, with the setting or step it concerns.
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        // The keys first: a bad key file should fail before touching the
        // database.
        let tokens = config.tokens.token_service()?;
        let pool = config.database.connect().await?;
        if config.database.migrate_on_start {
            apply_migrations(&pool).await?;
        }
        let jwks = crate::observe::Jwks {
            document: tokens.jwks().to_string(),
            max_age: config.tokens.jwks_max_age,
        };
        let hasher = PasswordHasher::new(config.passwords.hasher_settings())
            .context("starting the bcrypt pool (AUTH_BCRYPT_*)")?;
        let service = Arc::new(AuthService::new(
            pool.clone(),
            hasher,
            tokens,
            config.sessions.refresh_reuse_grace,
            config.throttle.limits(),
        ));
        let listen = &config.listen;
        let (mut grpc_limits, mut http_limits) = (listen.grpc_limits(), listen.http_limits());
        if let Some(open_files) = realchat_runtime::accept::raise_open_file_limit() {
            let open_files = usize::try_from(open_files).unwrap_or(usize::MAX);
            let database = config.database.max_connections as usize;
            let (grpc, http) = fit_to_open_files(
                open_files,
                database,
                grpc_limits.max_connections,
                http_limits.max_connections,
            );
            for (setting, configured, lowered) in [
                (
                    "AUTH_GRPC_MAX_CONNECTIONS",
                    grpc_limits.max_connections,
                    grpc,
                ),
                (
                    "AUTH_HTTP_MAX_CONNECTIONS",
                    http_limits.max_connections,
                    http,
                ),
            ] {
                if lowered < configured {
                    tracing::warn!(
                        setting,
                        configured,
                        lowered_to = lowered,
                        open_file_limit = open_files,
                        "{setting} is more than the open-file limit allows; lowered"
                    );
                }
            }
            grpc_limits.max_connections = grpc;
            http_limits.max_connections = http;
        }
        let listener = TcpListener::bind(listen.grpc_addr)
            .await
            .with_context(|| format!("binding AUTH_GRPC_ADDR {}", listen.grpc_addr))?;
        // The recorder before anything records, so early metrics count.
        let _ = crate::observe::prometheus();
        let http_listener = TcpListener::bind(listen.http_addr)
            .await
            .with_context(|| format!("binding AUTH_HTTP_ADDR {}", listen.http_addr))?;
        Ok(Self {
            listener,
            http_listener,
            service,
            pool,
            jwks,
            listen: listen.clone(),
            grpc_limits,
            http_limits,
            sessions: config.sessions.clone(),
            throttle: config.throttle.clone(),
        })
    }

    /// The address the gRPC server is bound to.
    ///
    /// # Errors
    /// When the socket has no local address (it always has once bound).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The address of the HTTP port (`/healthz`, `/readyz`, `/metrics`).
    ///
    /// # Errors
    /// When the socket has no local address (it always has once bound).
    pub fn http_addr(&self) -> std::io::Result<SocketAddr> {
        self.http_listener.local_addr()
    }

    /// Serves gRPC until `shutdown` completes, then stops accepting, lets
    /// in-flight requests finish (for at most `AUTH_SHUTDOWN_TIMEOUT_SECS`;
    /// past it they are dropped) and closes the database pool.
    ///
    /// # Errors
    /// A transport failure of the server.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let addr = self.local_addr()?;
        let (reporter, health) = tonic_health::server::health_reporter();
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        // v1 for current grpcurl and Postman; v1alpha for older clients.
        let reflection_v1 = reflection()
            .build_v1()
            .context("building the reflection service")?;
        let reflection_v1alpha = reflection()
            .build_v1alpha()
            .context("building the reflection service")?;
        let watcher = tokio::spawn(watch_database(self.pool.clone(), reporter));
        let http = tokio::spawn(realchat_runtime::http::serve(
            self.http_listener,
            crate::observe::router(self.pool.clone(), self.jwks),
            self.http_limits,
            "HTTP",
        ));
        let purger = tokio::spawn(purge_sessions(
            self.pool.clone(),
            self.sessions.session_retention,
            self.throttle.login_failure_window,
            self.sessions.session_purge_interval,
        ));
        tracing::info!(%addr, "gRPC server listening");
        let (signalled, on_signal) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async move {
            shutdown.await;
            let _ = signalled.send(());
        };
        let shutdown_timeout = self.listen.shutdown_timeout;
        let deadline = async move {
            if on_signal.await.is_ok() {
                tokio::time::sleep(shutdown_timeout).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        // One adapter serves both services: the same service, client
        // address rule and timeout.
        let api = Arc::new(GrpcApi::new(
            self.service,
            self.throttle.client_address(),
            self.listen.request_timeout,
        ));
        let auth_api =
            AuthApiServer::from_arc(Arc::clone(&api)).max_decoding_message_size(MAX_REQUEST_BYTES);
        let account_api =
            AccountApiServer::from_arc(api).max_decoding_message_size(MAX_REQUEST_BYTES);
        let routes = Routes::new(health)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(crate::grpc::Counted(auth_api))
            .add_service(crate::grpc::Counted(account_api));
        let serve = crate::transport::serve(self.listener, routes, self.grpc_limits, shutdown);
        tokio::select! {
            () = serve => {}
            () = deadline => {
                tracing::warn!("shutdown deadline passed; dropping in-flight requests");
            }
        }
        watcher.abort();
        http.abort();
        purger.abort();
        self.pool.close().await;
        Ok(())
    }
}

/// The gRPC and HTTP connection limits lowered, where needed, to what an
/// open-file limit of `open_files` leaves after the `database` pool and a
/// reserve of 64 descriptors (files, logs, listeners): the HTTP port (probes
/// and scrapes) keeps at most an eighth of the room, the gRPC port the rest;
/// each at least 1. Limits that fit are kept as they are.
fn fit_to_open_files(
    open_files: usize,
    database: usize,
    grpc: usize,
    http: usize,
) -> (usize, usize) {
    const RESERVE: usize = 64;
    let room = open_files.saturating_sub(database + RESERVE).max(2);
    if grpc.saturating_add(http) <= room {
        return (grpc, http);
    }
    let http = http.min((room / 8).max(1));
    let grpc = grpc.min(room - http).max(1);
    (grpc, http)
}

/// Deletes expired and revoked sessions past their `retention`, and login
/// throttle rows whose window ended, every `interval`, in batches of 1,000
/// (each its own short statement). Every replica runs it; the deletes are
/// idempotent.
async fn purge_sessions(
    pool: PgPool,
    retention: Duration,
    throttle_window: Duration,
    interval: Duration,
) {
    const BATCH: i64 = 1000;
    loop {
        let purged = realchat_runtime::housekeeping::delete_in_batches(
            BATCH as u64,
            usize::MAX,
            "session purge failed; retrying later",
            || async {
                let mut conn = pool.acquire().await?;
                let sessions = store::sessions::purge(&mut conn, retention, BATCH).await?;
                // Throttle rows of ended windows go with them.
                let throttle = store::throttle::purge(&mut conn, throttle_window, BATCH).await?;
                Ok::<_, store::StoreError>(sessions.max(throttle))
            },
        )
        .await;
        if purged > 0 {
            tracing::info!(purged, "purged old sessions");
        }
        tokio::time::sleep(interval).await;
    }
}

/// How often the health watcher pings PostgreSQL.
const HEALTH_PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Keeps the gRPC health status of the server (`""`), of `AuthApi` and of
/// `AccountApi` at
/// SERVING while PostgreSQL answers within a second and every migration is
/// applied (as `/readyz`), NOT_SERVING otherwise.
async fn watch_database(pool: PgPool, reporter: tonic_health::server::HealthReporter) {
    use tonic::server::NamedService as _;
    use tonic_health::ServingStatus;
    let mut last = None;
    loop {
        let (database, migrations) = crate::observe::readiness(&pool, Duration::from_secs(1)).await;
        let status = if database && migrations {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        if last != Some(status) {
            tracing::info!(?status, "health status");
            // AuthApi last: whoever sees its new status sees the others'.
            for service in [
                "",
                AccountApiServer::<GrpcApi>::NAME,
                AuthApiServer::<GrpcApi>::NAME,
            ] {
                reporter.set_service_status(service, status).await;
            }
            last = Some(status);
        }
        tokio::time::sleep(HEALTH_PROBE_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::fit_to_open_files;

    #[test]
    fn connection_limits_fit_the_open_file_limit() {
        // Room enough: unchanged.
        assert_eq!(fit_to_open_files(20_000, 10, 10_000, 256), (10_000, 256));
        // 1024 descriptors: 950 of room, the HTTP port an eighth of it.
        assert_eq!(fit_to_open_files(1024, 10, 10_000, 256), (832, 118));
        // A huge HTTP limit no longer starves the gRPC port.
        assert_eq!(fit_to_open_files(400, 4, 10_000, 100_000), (291, 41));
        // Below the reserve: one each, never zero.
        assert_eq!(fit_to_open_files(50, 10, 10_000, 256), (1, 1));
    }
}
