//! The measured processes: the auth server and the relay, started from their
//! binaries as child processes, so each one's peak memory is its own.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsFd as _;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::time::{Instant, sleep};

/// How long a process may take to become ready (the server's first start
/// runs the migrations).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A child process of the harness: killed if the harness exits early.
pub struct Process {
    name: &'static str,
    child: Child,
    /// Its HTTP address (`/readyz`, `/metrics`).
    pub http_addr: SocketAddr,
}

impl Process {
    /// Starts `realchat-auth` from `bin_dir` on free loopback ports with
    /// its own database and bcrypt cost, and waits until `/readyz` says
    /// ready. Returns the process and its gRPC URL.
    pub async fn server(
        bin_dir: &Path,
        database_url: &str,
        bcrypt_cost: u32,
    ) -> anyhow::Result<(Self, String)> {
        let grpc_addr = free_port()?;
        let http_addr = free_port()?;
        let mut command = Command::new(bin_dir.join("realchat-auth"));
        command
            .env("DATABASE_URL", database_url)
            .env("AUTH_GRPC_ADDR", grpc_addr.to_string())
            .env("AUTH_HTTP_ADDR", http_addr.to_string())
            .env("AUTH_BCRYPT_COST", bcrypt_cost.to_string())
            .env("RUST_LOG", "warn");
        let process = Self::start("realchat-auth", command, http_addr).await?;
        Ok((process, format!("http://{grpc_addr}")))
    }

    /// Starts `realchat-relay` from `bin_dir` on `database_url`, publishing
    /// user events to `<topic_prefix>user`. Does not wait for readiness:
    /// the drain measurement counts the relay's start-up.
    pub fn relay(
        bin_dir: &Path,
        database_url: &str,
        kafka: &str,
        topic_prefix: &str,
    ) -> anyhow::Result<Self> {
        let http_addr = free_port()?;
        let mut command = Command::new(bin_dir.join("realchat-relay"));
        command
            .env("DATABASE_URL", database_url)
            .env("KAFKA_BOOTSTRAP_SERVERS", kafka)
            .env("RELAY_TOPIC_PREFIX", topic_prefix)
            .env("RELAY_METRICS_ADDR", http_addr.to_string())
            .env("RUST_LOG", "warn");
        Self::spawn("realchat-relay", command, http_addr)
    }

    async fn start(
        name: &'static str,
        command: Command,
        http_addr: SocketAddr,
    ) -> anyhow::Result<Self> {
        let mut process = Self::spawn(name, command, http_addr)?;
        process.wait_ready().await?;
        Ok(process)
    }

    fn spawn(
        name: &'static str,
        mut command: Command,
        http_addr: SocketAddr,
    ) -> anyhow::Result<Self> {
        // Their logs (warnings and errors only: RUST_LOG=warn) go to the
        // harness's stderr, apart from the table on stdout.
        let logs = std::io::stderr().as_fd().try_clone_to_owned()?;
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::from(logs))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!("cannot start {name} (build it first: see scripts/bench.sh)")
            })?;
        Ok(Self {
            name,
            child,
            http_addr,
        })
    }

    /// Waits until `GET /readyz` answers 200.
    pub async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("{} exited during start-up: {status}", self.name);
            }
            if http_status(self.http_addr, "/readyz").await == Some(200) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{} not ready within {READY_TIMEOUT:?}", self.name);
            }
            // Polling a condition (readiness), bounded by the deadline.
            sleep(Duration::from_millis(50)).await;
        }
    }

    /// Peak resident set size so far (`VmHWM` in `/proc/<pid>/status`), in
    /// bytes; `None` once the process has exited or off Linux.
    pub fn peak_rss_bytes(&self) -> Option<u64> {
        let pid = self.child.id()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    /// Stops the process with SIGTERM (its graceful shutdown) and waits up to
    /// 30 s, then kills it. Returns its peak RSS, read just before the signal.
    pub async fn stop(mut self) -> anyhow::Result<Option<u64>> {
        let peak = self.peak_rss_bytes();
        if let Some(pid) = self.child.id() {
            let pid = i32::try_from(pid).context("pid out of range")?;
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            )?;
        }
        match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(status) => {
                let status = status?;
                if !status.success() {
                    eprintln!("warning: {} exited with {status}", self.name);
                }
            }
            Err(_) => {
                eprintln!(
                    "warning: {} ignored SIGTERM for 30 s; killing it",
                    self.name
                );
                self.child.kill().await?;
            }
        }
        Ok(peak)
    }
}

/// A free loopback port, found by binding port 0.
fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// The status code of `GET path` on `addr` (HTTP/1.1), or `None` when the
/// port does not answer.
async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.ok()?;
    let head = String::from_utf8_lossy(&response);
    head.split_whitespace().nth(1)?.parse().ok()
}
