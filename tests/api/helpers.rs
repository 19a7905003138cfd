//! The test kit: a fresh, migrated database per test, the server started
//! in-process on a free port, a gRPC client, and the relay and a Kafka
//! consumer on a topic prefix of the test's own.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use realchat_auth::config::Config;
use realchat_auth::proto::auth_api_client::AuthApiClient;
use realchat_auth::proto::{LoginRequest, LoginResponse, RegisterRequest};
use realchat_auth::startup::Application;
use sqlx::{Connection as _, PgConnection, PgPool};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use uuid::Uuid;

/// The PostgreSQL server tests create their databases on (`DATABASE_URL`,
/// default the local cluster's `postgres` database).
pub fn admin_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// The broker tests publish to (`KAFKA_BOOTSTRAP_SERVERS`, default loopback).
pub fn bootstrap_servers() -> String {
    std::env::var("KAFKA_BOOTSTRAP_SERVERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

/// `admin_url()` with its database replaced by `name`.
fn url_for(name: &str) -> String {
    let admin = admin_url();
    let (base, query) = match admin.split_once('?') {
        Some((b, q)) => (b.to_owned(), format!("?{q}")),
        None => (admin.clone(), String::new()),
    };
    let cut = base.rfind('/').expect("DATABASE_URL has a path");
    format!("{}/{name}{query}", &base[..cut])
}

/// Creates an empty database of the test's own, named with the run's prefix
/// (`RC_TEST_DB_PREFIX`, set by `scripts/test.sh`, which drops that run's
/// databases when it ends; default `rc_test_`).
pub async fn create_database() -> String {
    let prefix = std::env::var("RC_TEST_DB_PREFIX").unwrap_or_else(|_| "rc_test_".to_owned());
    let name = format!("{prefix}{}", Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(&admin_url())
        .await
        .expect("connect to DATABASE_URL; is PostgreSQL running?");
    sqlx::query(&format!(r#"CREATE DATABASE "{name}""#))
        .execute(&mut admin)
        .await
        .expect("create test database");
    url_for(&name)
}

/// Settings for one test server: its own database, port 0, bcrypt cost 4.
pub fn test_config(database_url: &str) -> Config {
    let mut config = <Config as clap::Parser>::parse_from(["realchat-auth"]);
    config.database_url = database_url.to_owned();
    config.grpc_addr = "127.0.0.1:0".parse().unwrap();
    config.http_addr = "127.0.0.1:0".parse().unwrap();
    config.bcrypt_cost = 4;
    config
}

/// A running server and what a test needs to talk to it.
pub struct TestApp {
    pub addr: SocketAddr,
    /// The HTTP port (`/healthz`, `/readyz`, `/metrics`).
    pub http_addr: SocketAddr,
    pub client: AuthApiClient<Channel>,
    /// The test database, for direct checks.
    pub pool: PgPool,
    pub database_url: String,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    /// A server with default settings on a fresh database.
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    /// A server on a fresh database, with `tweak` applied to its settings.
    pub async fn spawn_with(tweak: impl FnOnce(&mut Config)) -> Self {
        let database_url = create_database().await;
        let mut config = test_config(&database_url);
        tweak(&mut config);
        Self::start(config, database_url).await
    }

    /// A server with `config` as given (its database must exist).
    pub async fn start(config: Config, database_url: String) -> Self {
        let app = Application::build(&config).await.expect("build app");
        let addr = app.local_addr().unwrap();
        let http_addr = app.http_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until(async {
            let _ = stopped.await;
        }));
        let client = AuthApiClient::connect(format!("http://{addr}"))
            .await
            .expect("connect gRPC client");
        let pool = PgPool::connect(&database_url).await.expect("test pool");
        Self {
            addr,
            http_addr,
            client,
            pool,
            database_url,
            stop: Some(stop),
            server: Some(server),
        }
    }

    /// A fresh client (its own HTTP/2 connection) to the server.
    pub async fn new_client(&self) -> AuthApiClient<Channel> {
        AuthApiClient::new(self.channel().await)
    }

    /// A fresh HTTP/2 connection to the server, for any gRPC client.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .expect("connect to the gRPC server")
    }

    /// Registers `email` with `password`; panics unless it succeeds.
    pub async fn register(&self, email: &str, password: &str) -> Uuid {
        let response = self
            .client
            .clone()
            .register(RegisterRequest {
                email: email.into(),
                password: password.into(),
            })
            .await
            .expect("register");
        response
            .into_inner()
            .user_id
            .parse()
            .expect("user_id is a UUID")
    }

    /// Logs in; panics unless it succeeds.
    pub async fn login(&self, email: &str, password: &str) -> LoginResponse {
        self.client
            .clone()
            .login(LoginRequest {
                email: email.into(),
                password: password.into(),
            })
            .await
            .expect("login")
            .into_inner()
    }

    /// Outbox rows not yet marked published.
    pub async fn unpublished(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// Waits until every outbox row is marked published.
    pub async fn wait_all_published(&self, within: Duration) {
        eventually(
            within,
            "every outbox row to be marked published",
            || async { (self.unpublished().await == 0).then_some(()) },
        )
        .await;
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.expect("server task").expect("server result");
        }
    }
}

/// Polls `check` every 25 ms until it returns `Some`, or panics after
/// `within`: a wait for a condition, never a fixed sleep.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A TCP proxy in front of PostgreSQL, so a test can take the database away
/// from a running server (every connection refused or cut) and give it back.
pub struct DbProxy {
    pub port: u16,
    /// `host:port` of the PostgreSQL server, as written in `admin_url()`.
    upstream: String,
    task: Option<JoinHandle<()>>,
}

impl DbProxy {
    /// Starts a proxy to the PostgreSQL server of `admin_url()`.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let admin = admin_url();
        let authority = admin.split("//").nth(1).unwrap().split('/').next().unwrap();
        let upstream = authority.rsplit('@').next().unwrap().to_owned();
        let mut proxy = Self {
            port,
            upstream,
            task: None,
        };
        proxy.task = Some(Self::serve(listener, proxy.upstream.clone()));
        proxy
    }

    fn serve(listener: TcpListener, upstream: String) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut links = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                let upstream = upstream.clone();
                links.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
            // Dropping `links` (when this task is aborted) cuts every link.
        })
    }

    /// `url` (a database URL on the same server) routed through the proxy.
    pub fn route(&self, url: &str) -> String {
        url.replacen(&self.upstream, &format!("127.0.0.1:{}", self.port), 1)
    }

    /// Cuts every connection and refuses new ones.
    pub async fn take_down(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Accepts connections again, on the same port.
    pub async fn bring_back(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        self.task = Some(Self::serve(listener, self.upstream.clone()));
    }
}

/// A PKCS#8 Ed25519 key written as PEM, as `openssl genpkey` would.
pub fn write_key_file() -> (std::path::PathBuf, Vec<u8>) {
    let rng = ring::rand::SystemRandom::new();
    let der = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
        .unwrap()
        .as_ref()
        .to_vec();
    let path = std::env::temp_dir().join(format!("rc-test-key-{}.pem", uuid::Uuid::new_v4()));
    std::fs::write(
        &path,
        pem::encode(&pem::Pem::new("PRIVATE KEY", der.clone())),
    )
    .unwrap();
    (path, der)
}
