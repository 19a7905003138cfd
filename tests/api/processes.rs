//! Real processes for the relay's fault tests: the `realchat-relay` binary
//! and a broker of the test's own that it can stop and start again.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::PgPool;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use uuid::Uuid;

use crate::helpers::eventually;

/// The relay binary, built next to this test binary (`scripts/test.sh`
/// builds it first) or named by `REALCHAT_RELAY_BIN`.
pub fn relay_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("REALCHAT_RELAY_BIN") {
        return path.into();
    }
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/api-<hash> -> target/<profile>/realchat-relay
    let path = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("realchat-relay");
    assert!(
        path.exists(),
        "{} is missing: run `cargo build -p realchat-relay` (scripts/test.sh does)",
        path.display()
    );
    path
}

/// A running process of ours (the relay or the server) with its captured
/// log lines, printed when the test fails (panics) so the failure shows what
/// the process did.
pub struct Process {
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
    /// The tasks reading stdout and stderr into `logs`.
    readers: Vec<tokio::task::JoinHandle<()>>,
}

/// The relay process.
pub type RelayProcess = Process;

impl Drop for Process {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for line in self.logs.lock().unwrap().iter() {
                eprintln!("process: {line}");
            }
        }
    }
}

/// A command for one of our binaries with a clean environment: only PATH,
/// `RUST_LOG=info` and `NO_COLOR=1` are inherited or set.
pub fn command(bin: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new(bin);
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1");
    command
}

impl Process {
    /// Starts the relay with `env` on top of a fast test setting: 100 ms
    /// poll, 3 s delivery timeout, 1 s backoff cap.
    pub fn start(database_url: &str, bootstrap: &str, prefix: &str, env: &[(&str, &str)]) -> Self {
        let mut command = command(relay_bin());
        command
            .env("DATABASE_URL", database_url)
            .env("KAFKA_BOOTSTRAP_SERVERS", bootstrap)
            .env("RELAY_TOPIC_PREFIX", prefix)
            .env("RELAY_POLL_INTERVAL_MS", "100")
            .env("RELAY_DELIVERY_TIMEOUT_MS", "3000")
            .env("RELAY_MAX_BACKOFF_MS", "1000")
            .env("RELAY_METRICS_ADDR", "127.0.0.1:0");
        for (k, v) in env {
            command.env(k, v);
        }
        Self::spawn(command)
    }

    /// Spawns `command` and captures its stdout and stderr lines.
    pub fn spawn(mut command: Command) -> Self {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start the process");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let logs = Arc::clone(&logs);
            readers.push(tokio::spawn(async move {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    logs.lock().unwrap().push(line);
                }
            }));
        }
        Self {
            child,
            logs,
            readers,
        }
    }

    /// Waits until a log line contains `needle`; returns that line.
    pub async fn wait_log(&self, needle: &str, within: Duration) -> String {
        self.wait_log_after(0, needle, within).await
    }

    /// Waits until a log line after the first `skip` contains `needle`.
    pub async fn wait_log_after(&self, skip: usize, needle: &str, within: Duration) -> String {
        eventually(within, &format!("log line {needle:?}"), || {
            let found = self
                .logs
                .lock()
                .unwrap()
                .iter()
                .skip(skip)
                .find(|l| l.contains(needle))
                .cloned();
            async move { found }
        })
        .await
    }

    /// Every log line so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// The address its metrics server bound (from the `metrics listening`
    /// log line).
    pub async fn metrics_addr(&self) -> String {
        let line = self
            .wait_log("metrics listening", Duration::from_secs(30))
            .await;
        line.split("addr=")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned()
    }

    /// SIGKILL: no chance to flush or mark.
    pub async fn kill(mut self) {
        self.child.kill().await.unwrap();
    }

    /// SIGTERM, then waits for the exit; returns the exit code.
    pub async fn terminate(self) -> Option<i32> {
        self.signal("-TERM");
        self.wait().await
    }

    /// Sends a signal (`-TERM`, `-INT`) without waiting.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().unwrap().to_string();
        let sent = std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap();
        assert!(sent.success());
    }

    /// Waits for the process to exit (as [`Process::wait`]) and for its
    /// output to be read to the end; returns the exit code and every line,
    /// the shutdown's included.
    pub async fn wait_with_logs(mut self) -> (Option<i32>, Vec<String>) {
        let readers = std::mem::take(&mut self.readers);
        let logs = Arc::clone(&self.logs);
        let code = self.wait().await;
        for reader in readers {
            reader.await.unwrap();
        }
        let lines = logs.lock().unwrap().clone();
        (code, lines)
    }

    /// Waits for the exit; returns the exit code.
    pub async fn wait(mut self) -> Option<i32> {
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("relay exits within 60 s of SIGTERM")
            .unwrap();
        status.code()
    }
}

/// A tansu broker of the test's own on a free port, storing in SQLite so
/// that topics and messages survive a restart.
pub struct Broker {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Broker {
    pub async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("rc-test-broker-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut broker = Self {
            port,
            dir,
            child: None,
        };
        broker.resume().await;
        broker
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stops the broker (SIGKILL) and waits until its port is closed.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
        }
        let port = self.port;
        eventually(
            Duration::from_secs(10),
            "the broker port to close",
            || async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_err()
                    .then_some(())
            },
        )
        .await;
    }

    /// Starts the broker (again) on the same port and storage.
    pub async fn resume(&mut self) {
        let bin = std::env::var_os("TANSU_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let home = std::env::var_os("CARGO_HOME")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| {
                        PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cargo")
                    });
                home.join("bin/tansu")
            });
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new(bin)
            .current_dir(&self.dir)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start tansu (TANSU_BIN or $CARGO_HOME/bin/tansu)");
        self.child = Some(child);
        let port = self.port;
        eventually(
            Duration::from_secs(20),
            "the broker to listen",
            || async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .ok()
                    .map(|_| ())
            },
        )
        .await;
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Inserts `count` outbox rows directly, spread round-robin over `keys`
/// aggregate ids (`key-0` …), each payload carrying its per-key sequence
/// number `n`. Returns their event ids in `seq` order.
pub async fn insert_events(pool: &PgPool, keys: i64, count: i64) -> Vec<Uuid> {
    sqlx::query_scalar(
        "INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload)
         SELECT gen_random_uuid(), 'user', 'key-' || (g % $1), 'TestEvent',
                jsonb_build_object('key', 'key-' || (g % $1), 'n', g / $1)
         FROM generate_series(0, $2 - 1) AS g
         ORDER BY g
         RETURNING id",
    )
    .bind(keys)
    .bind(count)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// `GET path` over HTTP/1.1 on `addr`; returns the status code and body.
pub async fn http_get(addr: &str, path: &str) -> (u16, String) {
    let (status, _, body) = http_get_with_headers(addr, path).await;
    (status, body)
}

/// `GET path` over HTTP/1.1 on `addr`; returns the status code, the
/// headers (names lower-cased) and the body.
pub async fn http_get_with_headers(
    addr: &str,
    path: &str,
) -> (u16, std::collections::HashMap<String, String>, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response.split_whitespace().nth(1).unwrap().parse().unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

/// The value of an unlabelled metric in a Prometheus text exposition.
pub fn metric(exposition: &str, name: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let (metric, value) = line.split_once(' ')?;
        (metric == name).then(|| value.trim().parse().ok())?
    })
}
