//! The server in-process: a fresh, migrated database, the gRPC and HTTP
//! ports on free loopback ports, and a client (zero-to-production's
//! `spawn_app`).

use std::net::SocketAddr;
use std::time::Duration;

use realchat_auth::config::Config;
use realchat_auth::proto::account_api_client::AccountApiClient;
use realchat_auth::proto::auth_api_client::AuthApiClient;
use realchat_auth::proto::{LoginRequest, LoginResponse, RegisterRequest};
use realchat_auth::startup::Application;
use sqlx::PgPool;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use uuid::Uuid;

use crate::db::create_database;
use crate::wait::eventually;

/// Settings for one test server: its own database, port 0, bcrypt cost 4.
pub fn test_config(database_url: &str) -> Config {
    let mut config = <Config as clap::Parser>::parse_from(["realchat-auth"]);
    config.database.url = database_url.to_owned();
    config.listen.grpc_addr = "127.0.0.1:0".parse().unwrap();
    config.listen.http_addr = "127.0.0.1:0".parse().unwrap();
    config.passwords.bcrypt_cost = 4;
    config
}

/// A running server and what a test needs to talk to it.
pub struct TestApp {
    /// The gRPC address.
    pub addr: SocketAddr,
    /// The HTTP address (`/healthz`, `/readyz`, `/metrics`).
    pub http_addr: SocketAddr,
    /// A client on one shared connection.
    pub client: AuthApiClient<Channel>,
    /// An AccountApi client on the same connection; its calls carry
    /// [`bearer`] credentials.
    pub account: AccountApiClient<Channel>,
    /// The test database, for direct checks.
    pub pool: PgPool,
    /// The test database's URL.
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
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .expect("connect gRPC client");
        let client = AuthApiClient::new(channel.clone());
        let account = AccountApiClient::new(channel);
        let pool = PgPool::connect(&database_url).await.expect("test pool");
        Self {
            addr,
            http_addr,
            client,
            account,
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
        self.try_login(email, password).await.expect("login")
    }

    /// Logs in, returning the answer whatever it is.
    pub async fn try_login(
        &self,
        email: &str,
        password: &str,
    ) -> Result<LoginResponse, tonic::Status> {
        self.client
            .clone()
            .login(LoginRequest {
                email: email.into(),
                password: password.into(),
                ..Default::default()
            })
            .await
            .map(tonic::Response::into_inner)
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

/// `message` as a request carrying `access_token` as an AccountApi call
/// does: `authorization: Bearer <access token>` (RFC 6750 §2.1).
pub fn bearer<T>(message: T, access_token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {access_token}").parse().unwrap(),
    );
    request
}
