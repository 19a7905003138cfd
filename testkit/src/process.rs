//! Our binaries as child processes, for the tests and the benchmark alike:
//! where the binaries are, a clean command for one, and [`Process`], a
//! running child whose log lines are captured (and, for the benchmark,
//! echoed), with readiness, signals, exit and peak memory.

use std::ffi::OsStr;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::io::{AsyncBufReadExt as _, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

pub use nix::sys::signal::Signal;

use crate::http::http_status;
use crate::wait::eventually;

/// Our binary `name` (`realchat-relay`, `realchat-auth`) as built next to
/// the running test binary (`target/<profile>/deps/api-<hash>` →
/// `target/<profile>/<name>`; `scripts/test.sh` builds them first), or as
/// named by `REALCHAT_RELAY_BIN` / `REALCHAT_AUTH_BIN`.
pub fn bin(name: &str) -> PathBuf {
    let variable = format!("{}_BIN", name.to_ascii_uppercase().replace('-', "_"));
    if let Some(path) = std::env::var_os(variable) {
        return path.into();
    }
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().unwrap().parent().unwrap().join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build -p {name}` (scripts/test.sh does)",
        path.display()
    );
    path
}

/// The relay binary (see [`bin`]).
pub fn relay_bin() -> PathBuf {
    bin("realchat-relay")
}

/// A free loopback address, found by binding port 0.
pub fn free_port() -> std::io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// A command for one of our binaries with a clean environment: only PATH,
/// `RUST_LOG=info` and `NO_COLOR=1` are inherited or set, so no setting of
/// the caller's leaks in.
pub fn command(bin: impl AsRef<OsStr>) -> Command {
    let mut command = Command::new(bin);
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1");
    command
}

/// `command` (a [`command`] for a test, or a plain one that inherits the
/// caller's environment for the benchmark) set up as the relay on
/// `database_url`, publishing to the broker at `bootstrap` under
/// `topic_prefix`.
pub fn relay_command(
    mut command: Command,
    database_url: &str,
    bootstrap: &str,
    topic_prefix: &str,
) -> Command {
    command
        .env("DATABASE_URL", database_url)
        .env("KAFKA_BOOTSTRAP_SERVERS", bootstrap)
        .env("RELAY_TOPIC_PREFIX", topic_prefix);
    command
}

/// A running process of ours (the relay or the server) with its captured
/// log lines, printed when the test fails (panics) so the failure shows what
/// the process did. Killed if dropped.
pub struct Process {
    name: String,
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
    /// The tasks reading stdout and stderr into `logs`.
    readers: Vec<JoinHandle<()>>,
    /// Whether the lines went to stderr as they came.
    echo: bool,
    /// Its HTTP port (`/readyz`), when the caller chose it.
    http_addr: Option<SocketAddr>,
}

impl Drop for Process {
    fn drop(&mut self) {
        if std::thread::panicking() && !self.echo {
            for line in self.logs.lock().unwrap().iter() {
                eprintln!("{}: {line}", self.name);
            }
        }
    }
}

impl Process {
    /// Spawns `command` and captures its stdout and stderr lines; panics if
    /// it cannot start.
    pub fn spawn(command: Command) -> Self {
        Self::start("process", command, false).expect("start the process")
    }

    /// Starts the relay with `env` on top of a fast test setting (100 ms
    /// poll, 3 s delivery timeout, 1 s backoff cap, metrics on a free port).
    pub fn relay(database_url: &str, bootstrap: &str, prefix: &str, env: &[(&str, &str)]) -> Self {
        let mut command = relay_command(command(relay_bin()), database_url, bootstrap, prefix);
        command
            .env("RELAY_POLL_INTERVAL_MS", "100")
            .env("RELAY_DELIVERY_TIMEOUT_MS", "3000")
            .env("RELAY_MAX_BACKOFF_MS", "1000")
            .env("RELAY_METRICS_ADDR", "127.0.0.1:0")
            .envs(env.iter().copied());
        Self::spawn(command)
    }

    /// Spawns `command` as `name` and captures its stdout and stderr lines,
    /// also writing each to stderr (prefixed with `name`) when `echo` is set.
    ///
    /// # Errors
    /// When the binary cannot be started (not built, most likely).
    pub fn start(name: &str, mut command: Command, echo: bool) -> anyhow::Result<Self> {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        let logs = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        let streams: [Option<Box<dyn AsyncRead + Unpin + Send>>; 2] = [
            child.stdout.take().map(|s| Box::new(s) as _),
            child.stderr.take().map(|s| Box::new(s) as _),
        ];
        for stream in streams.into_iter().flatten() {
            let logs = Arc::clone(&logs);
            let prefix = echo.then(|| name.to_owned());
            readers.push(tokio::spawn(async move {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(prefix) = &prefix {
                        eprintln!("{prefix}: {line}");
                    }
                    logs.lock().unwrap().push(line);
                }
            }));
        }
        Ok(Self {
            name: name.to_owned(),
            child,
            logs,
            readers,
            echo,
            http_addr: None,
        })
    }

    /// The same process, known to serve HTTP (`/readyz`) on `addr`.
    pub fn with_http_addr(mut self, addr: SocketAddr) -> Self {
        self.http_addr = Some(addr);
        self
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

    /// Waits until `GET /readyz` on its HTTP address (see
    /// [`Process::with_http_addr`]) answers 200.
    ///
    /// # Errors
    /// When it has no HTTP address, exits first, or is not ready `within`.
    pub async fn wait_ready(&mut self, within: Duration) -> anyhow::Result<()> {
        let Some(addr) = self.http_addr else {
            bail!("{} has no HTTP address to probe", self.name);
        };
        let (name, child) = (&self.name, &mut self.child);
        let ready = crate::wait::poll(within, Duration::from_millis(50), async || {
            if let Some(status) = child.try_wait()? {
                bail!("{name} exited during start-up: {status}");
            }
            Ok((http_status(addr, "/readyz").await == Some(200)).then_some(()))
        })
        .await?;
        ready.ok_or_else(|| anyhow::anyhow!("{name} not ready within {within:?}"))
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

    /// Sends `signal` without waiting; `false` when the process is gone.
    pub fn try_signal(&self, signal: Signal) -> bool {
        let Some(pid) = self.child.id().and_then(|pid| i32::try_from(pid).ok()) else {
            return false;
        };
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).is_ok()
    }

    /// Sends `signal` (SIGTERM, SIGINT, SIGSTOP, SIGCONT) without waiting.
    pub fn signal(&self, signal: Signal) {
        assert!(
            self.try_signal(signal),
            "{} is gone: no {signal}",
            self.name
        );
    }

    /// SIGKILL: no chance to flush or mark.
    pub async fn kill(mut self) {
        self.child.kill().await.unwrap();
    }

    /// SIGTERM, then waits for the exit; returns the exit code.
    pub async fn terminate(self) -> Option<i32> {
        self.signal(Signal::SIGTERM);
        self.wait().await
    }

    /// Waits up to 60 s for the exit; returns the exit code.
    pub async fn wait(mut self) -> Option<i32> {
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} exits within 60 s", self.name))
            .unwrap();
        status.code()
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

    /// Stops the process with SIGTERM (its graceful shutdown) and waits up to
    /// 30 s, then kills it, warning on stderr. Returns its peak RSS, read
    /// just before the signal.
    ///
    /// # Errors
    /// When waiting for or killing the process fails.
    pub async fn stop(mut self) -> anyhow::Result<Option<u64>> {
        let peak = self.peak_rss_bytes();
        self.try_signal(Signal::SIGTERM);
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
