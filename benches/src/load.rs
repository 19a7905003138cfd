//! The gRPC load generator: closed-loop clients (each sends its next call
//! when the previous one returns), one HTTP/2 connection each.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use realchat_auth::proto::auth_api_client::AuthApiClient;
use realchat_auth::proto::{LoginRequest, RefreshRequest, RegisterRequest};
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::stats::{Latencies, steady_rate};

/// The password every benchmark user has (not on the blocklist).
pub const PASSWORD: &str = "bench-Pass-7c1e9a";

/// One closed-loop client.
pub trait Client: Send + 'static {
    /// Sends one call and waits for its answer.
    fn call(&mut self) -> impl Future<Output = Result<(), tonic::Status>> + Send;
}

/// What a load produced in its measurement window.
pub struct LoadResult {
    /// Successful calls per second, steady state (see [`steady_rate`]).
    pub rate: f64,
    /// Successful calls in the window.
    pub ok: u64,
    /// Failed calls in the window, by gRPC code.
    pub errors: BTreeMap<String, u64>,
    /// Latency of the successful calls.
    pub latencies: Latencies,
}

/// A connection to the server.
pub async fn connect(url: &str) -> anyhow::Result<AuthApiClient<Channel>> {
    Ok(AuthApiClient::connect(url.to_owned()).await?)
}

/// Runs `clients` in closed loops for `warmup + window`; counts only calls
/// that complete inside the window (after the warm-up). Calls in flight when
/// the window ends are awaited but not counted.
pub async fn closed_loop<C: Client>(
    clients: Vec<C>,
    warmup: Duration,
    window: Duration,
) -> anyhow::Result<LoadResult> {
    let start = Instant::now();
    let from = start + warmup;
    let until = from + window;
    let mut tasks = Vec::with_capacity(clients.len());
    for mut client in clients {
        tasks.push(tokio::spawn(async move {
            let mut done = Vec::new();
            let mut errors: BTreeMap<String, u64> = BTreeMap::new();
            let mut latencies = Latencies::new()?;
            while Instant::now() < until {
                let sent = Instant::now();
                let result = client.call().await;
                let finished = Instant::now();
                if finished < from || finished > until {
                    continue;
                }
                match result {
                    Ok(()) => {
                        latencies.record(finished - sent);
                        done.push((finished - start).as_secs_f64());
                    }
                    Err(status) => *errors.entry(format!("{:?}", status.code())).or_default() += 1,
                }
            }
            anyhow::Ok((done, errors, latencies))
        }));
    }
    let mut times = Vec::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut latencies = Latencies::new()?;
    for task in tasks {
        let (done, task_errors, task_latencies) = task.await??;
        times.extend(done);
        for (code, n) in task_errors {
            *errors.entry(code).or_default() += n;
        }
        latencies.merge(&task_latencies)?;
    }
    Ok(LoadResult {
        rate: steady_rate(&mut times),
        ok: times.len() as u64,
        errors,
        latencies,
    })
}

/// Sends calls at a fixed `rate` (per second) for `warmup + window`,
/// whatever the answers' timing (an open loop), each on the next free client
/// of `clients`; a call's latency runs from its scheduled time, so waiting
/// for a free client counts (no coordinated omission). Counts the calls
/// scheduled inside the window.
pub async fn open_loop<C: Client>(
    clients: Vec<C>,
    rate: f64,
    warmup: Duration,
    window: Duration,
) -> anyhow::Result<LoadResult> {
    anyhow::ensure!(
        rate > 0.0 && !clients.is_empty(),
        "open loop needs a rate and clients"
    );
    let (free, mut next_free) = tokio::sync::mpsc::unbounded_channel();
    for client in clients {
        free.send(client)
            .map_err(|_| anyhow::anyhow!("cannot queue a client"))?;
    }
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    let start = Instant::now();
    let from = start + warmup;
    let until = from + window;
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut scheduled = start;
    while scheduled < until {
        tokio::time::sleep_until(scheduled).await;
        let mut client = next_free
            .recv()
            .await
            .ok_or_else(|| anyhow::anyhow!("clients lost"))?;
        let (free, done) = (free.clone(), done_tx.clone());
        let at = scheduled;
        tokio::spawn(async move {
            let result = client.call().await;
            let latency = at.elapsed();
            let _ = free.send(client);
            let _ = done.send((at, latency, result));
        });
        scheduled += period;
    }
    drop(done_tx);
    let mut result = LoadResult {
        rate: 0.0,
        ok: 0,
        errors: BTreeMap::new(),
        latencies: Latencies::new()?,
    };
    while let Some((at, latency, outcome)) = done_rx.recv().await {
        if at < from {
            continue;
        }
        match outcome {
            Ok(()) => {
                result.ok += 1;
                result.latencies.record(latency);
            }
            Err(status) => {
                *result
                    .errors
                    .entry(format!("{:?}", status.code()))
                    .or_default() += 1
            }
        }
    }
    result.rate = result.ok as f64 / window.as_secs_f64();
    Ok(result)
}

/// Registers fresh users `<prefix>-<client>-<n>@bench.example`.
pub struct Registerer {
    client: AuthApiClient<Channel>,
    prefix: String,
    n: u64,
}

impl Registerer {
    /// A client whose emails start with `prefix` (unique per client and run).
    pub async fn new(url: &str, prefix: String) -> anyhow::Result<Self> {
        Ok(Self {
            client: connect(url).await?,
            prefix,
            n: 0,
        })
    }
}

impl Client for Registerer {
    async fn call(&mut self) -> Result<(), tonic::Status> {
        self.n += 1;
        let request = RegisterRequest {
            email: format!("{}-{}@bench.example", self.prefix, self.n),
            password: PASSWORD.to_owned(),
        };
        self.client.register(request).await.map(drop)
    }
}

/// Logs in as one existing user, again and again.
pub struct LoginClient {
    client: AuthApiClient<Channel>,
    email: String,
}

impl LoginClient {
    /// A client for the user `email` (with [`PASSWORD`]).
    pub async fn new(url: &str, email: String) -> anyhow::Result<Self> {
        Ok(Self {
            client: connect(url).await?,
            email,
        })
    }
}

impl Client for LoginClient {
    async fn call(&mut self) -> Result<(), tonic::Status> {
        let request = LoginRequest {
            email: self.email.clone(),
            password: PASSWORD.to_owned(),
            ..Default::default()
        };
        self.client.login(request).await.map(drop)
    }
}

/// Refreshes one session, rotating its refresh token at every call.
pub struct RefreshClient {
    client: AuthApiClient<Channel>,
    refresh_token: String,
}

impl RefreshClient {
    /// Logs in as `email` to start the session it will refresh.
    pub async fn new(url: &str, email: String) -> anyhow::Result<Self> {
        let mut client = connect(url).await?;
        let login = client
            .login(LoginRequest {
                email,
                password: PASSWORD.to_owned(),
                ..Default::default()
            })
            .await?
            .into_inner();
        Ok(Self {
            client,
            refresh_token: login.refresh_token,
        })
    }
}

impl Client for RefreshClient {
    async fn call(&mut self) -> Result<(), tonic::Status> {
        let request = RefreshRequest {
            refresh_token: self.refresh_token.clone(),
        };
        let response = self.client.refresh(request).await?.into_inner();
        self.refresh_token = response.refresh_token;
        Ok(())
    }
}

/// Registers `emails` (with [`PASSWORD`]), `parallel` at a time; untimed
/// set-up for the login and refresh loads.
pub async fn register_users(url: &str, emails: &[String], parallel: usize) -> anyhow::Result<()> {
    for chunk in emails.chunks(parallel.max(1)) {
        let mut calls = Vec::new();
        for email in chunk {
            let mut client = connect(url).await?;
            let request = RegisterRequest {
                email: email.clone(),
                password: PASSWORD.to_owned(),
            };
            calls.push(async move { client.register(request).await });
        }
        for result in futures::future::join_all(calls).await {
            result?;
        }
    }
    Ok(())
}
