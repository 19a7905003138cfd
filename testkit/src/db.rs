//! PostgreSQL for tests: a fresh database per test on the server of
//! `DATABASE_URL`, and a proxy that can take that server away.

use sqlx::{Connection as _, PgConnection};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// The PostgreSQL server tests create their databases on (`DATABASE_URL`,
/// default the local cluster's `postgres` database).
pub fn admin_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// `url` with its database name replaced by `database` (its query string
/// kept).
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (url, String::new()),
    };
    let base = base.rsplit_once('/').map_or(base, |(b, _)| b);
    format!("{base}/{database}{query}")
}

/// Creates an empty database of the test's own, named with the run's prefix
/// (`RC_TEST_DB_PREFIX`, set by `scripts/test.sh`, which drops that run's
/// databases when it ends; default `rc_test_`); returns its URL.
pub async fn create_database() -> String {
    let prefix = std::env::var("RC_TEST_DB_PREFIX").unwrap_or_else(|_| "rc_test_".to_owned());
    let name = format!("{prefix}{}", Uuid::new_v4().simple());
    let admin_url = admin_url();
    let mut admin = PgConnection::connect(&admin_url)
        .await
        .expect("connect to DATABASE_URL; is PostgreSQL running?");
    sqlx::query(&format!(r#"CREATE DATABASE "{name}""#))
        .execute(&mut admin)
        .await
        .expect("create test database");
    with_database(&admin_url, &name)
}

/// A TCP proxy in front of PostgreSQL, so a test can take the database away
/// from a running server (every connection refused or cut) and give it back.
pub struct DbProxy {
    /// The loopback port the proxy listens on.
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

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn with_database_swaps_only_the_name() {
        assert_eq!(
            with_database("postgres://u:p@h:5432/postgres?sslmode=disable", "x"),
            "postgres://u:p@h:5432/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h/a", "b"), "postgres://h/b");
    }
}
