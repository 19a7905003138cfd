//! `realchat-bench`: measures RealChat Auth and its relay against the limits
//! of the machine they run on, side by side in one run:
//!
//! 1. raw bcrypt rate at the server's cost, one thread per core (the limit
//!    of Register and Login);
//! 2. Login and 3. Register throughput at saturation, as ratios to (1);
//! 4. Refresh latency and throughput idle, and while Login saturates bcrypt;
//! 5. relay drain rate against the raw producer rate (same messages, same
//!    broker, same producer settings);
//! 6. commit-to-Kafka latency of registrations at a steady moderate rate;
//! 7. peak RSS of the server and the relay.
//!
//! It starts the server and relay binaries itself (from `--bin-dir`, release
//! builds by default) on a database of its own, against a running
//! PostgreSQL and broker; `scripts/bench.sh` provides both. Every figure is
//! measured `--runs` times and reported as the median and spread, printed
//! as a table and written as JSON. `--smoke` is a short run that only
//! checks that the harness still works.

mod load;
mod relay;
mod report;
mod stats;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use realchat_testkit::broker;
use realchat_testkit::db::with_database;
use realchat_testkit::process::{Process, free_port};
use sqlx::{Connection as _, PgConnection};
use tokio::process::Command;
use tokio::time::{Instant, MissedTickBehavior};

use crate::load::{LoginClient, RefreshClient, Registerer, closed_loop, open_loop};
use crate::report::{Run, Settings};

#[derive(Parser, Clone)]
#[command(
    name = "realchat-bench",
    about = "Benchmarks RealChat Auth against bcrypt's and the broker's limits"
)]
struct Args {
    /// PostgreSQL URL of a database to connect to for creating (and at the
    /// end dropping) the benchmark's own database.
    #[arg(
        long,
        env = "BENCH_ADMIN_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    admin_database_url: String,
    /// Kafka bootstrap servers.
    #[arg(
        long,
        env = "KAFKA_BOOTSTRAP_SERVERS",
        default_value = "127.0.0.1:9092"
    )]
    kafka: String,
    /// Where `realchat-auth` and `realchat-relay` are.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// bcrypt cost of the server (and of the raw rate).
    #[arg(long, default_value_t = 12)]
    bcrypt_cost: u32,
    /// Concurrent clients of the saturation loads; default 4 per core, so
    /// the bcrypt pool (one thread per core) always has work queued.
    #[arg(long)]
    concurrency: Option<usize>,
    /// Concurrent Refresh clients of the Refresh throughput (closed loop).
    #[arg(long, default_value_t = 4)]
    refresh_clients: usize,
    /// Refresh calls per second of the Refresh latency (open loop).
    #[arg(long, default_value_t = 200.0)]
    refresh_rate: f64,
    /// Sessions the open-loop Refresh calls take turns on.
    #[arg(long, default_value_t = 16)]
    refresh_sessions: usize,
    /// Seconds of each load's measurement window (after a warm-up of 2 s).
    #[arg(long, default_value_t = 15.0)]
    duration_secs: f64,
    /// Seconds of the raw bcrypt measurement.
    #[arg(long, default_value_t = 10.0)]
    bcrypt_secs: f64,
    /// Outbox rows the relay drains (and the raw producer sends).
    #[arg(long, default_value_t = 100_000)]
    relay_rows: i64,
    /// Registrations per second of the commit-to-Kafka measurement; default a
    /// quarter of the raw bcrypt rate measured in the same run.
    #[arg(long)]
    latency_rate: Option<f64>,
    /// Seconds of registrations in the commit-to-Kafka measurement.
    #[arg(long, default_value_t = 30.0)]
    latency_secs: f64,
    /// Repetitions of every measurement; figures are their median and spread.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Where the JSON report goes.
    #[arg(long, default_value = "target/bench/results.json")]
    json: PathBuf,
    /// Diagnosis only, never a production setting: the benchmark's database
    /// runs with `synchronous_commit = off`, so commits do not wait for the
    /// WAL to reach the disk; comparing with a normal run shows how much of
    /// a latency is the disk flush.
    #[arg(long)]
    async_commit: bool,
    /// A short run (cost 4, 1 s windows, 2,000 rows, one run: about 20 s) that
    /// checks the harness works; its figures mean nothing.
    #[arg(long)]
    smoke: bool,
}

impl Args {
    fn smoke(mut self) -> Self {
        self.bcrypt_cost = 4;
        self.duration_secs = 1.0;
        self.bcrypt_secs = 0.5;
        self.relay_rows = 2_000;
        self.latency_secs = 2.0;
        self.latency_rate = Some(20.0);
        self.runs = 1;
        self
    }
}

const WARMUP: Duration = Duration::from_secs(2);

/// How long a process may take to become ready (the server's first start
/// runs the migrations).
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.smoke {
        args = args.smoke();
    }
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let concurrency = args.concurrency.unwrap_or(4 * cores);
    let id = format!(
        "{}_{}",
        chrono::Utc::now().format("%Y%m%d%H%M%S"),
        std::process::id()
    );
    let database = format!("rc_bench_{id}");
    let database_url = with_database(&args.admin_database_url, &database);
    let mut admin = PgConnection::connect(&args.admin_database_url)
        .await
        .context("cannot reach PostgreSQL (scripts/bench.sh starts it)")?;
    sqlx::query(&format!("CREATE DATABASE \"{database}\""))
        .execute(&mut admin)
        .await?;
    if args.async_commit {
        sqlx::query(&format!(
            "ALTER DATABASE \"{database}\" SET synchronous_commit = off"
        ))
        .execute(&mut admin)
        .await?;
    }
    let result = bench(&args, cores, concurrency, &id, &database_url).await;
    // Dropped whatever happened; the child processes are gone by now.
    sqlx::query(&format!(
        "DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"
    ))
    .execute(&mut admin)
    .await?;
    let report = result?;
    print!("{}", report.table());
    if let Some(dir) = args.json.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.json, serde_json::to_string_pretty(&report)?)?;
    println!("JSON: {}", args.json.display());
    Ok(())
}

async fn bench(
    args: &Args,
    cores: usize,
    concurrency: usize,
    id: &str,
    database_url: &str,
) -> anyhow::Result<report::Report> {
    let (server, url) = start_server(&args.bin_dir, database_url, args.bcrypt_cost).await?;
    let pool = sqlx::PgPool::connect(database_url).await?;
    let window = Duration::from_secs_f64(args.duration_secs);
    let tag = id.replace('_', "-");

    // Users for the Login and Refresh loads, registered once (untimed).
    let login_users: Vec<String> = (0..concurrency)
        .map(|i| format!("login-{tag}-{i}@bench.example"))
        .collect();
    let refresh_users: Vec<String> = (0..args.refresh_clients)
        .map(|i| format!("refresh-{tag}-{i}@bench.example"))
        .collect();
    load::register_users(&url, &login_users, concurrency).await?;
    load::register_users(&url, &refresh_users, concurrency).await?;

    let mut runs = Vec::with_capacity(args.runs);
    let mut relay_peak = 0;
    for run in 0..args.runs {
        eprintln!("run {}/{}", run + 1, args.runs);
        let mut r = Run::default();
        let prefix = format!("bench.{tag}.{run}.");
        // The relay runs during the server's loads, as it does in service.
        let mut relay = relay::start_relay(&args.bin_dir, database_url, &args.kafka, &prefix)?;

        r.bcrypt_rate = raw_bcrypt_rate(
            args.bcrypt_cost,
            cores,
            Duration::from_secs_f64(args.bcrypt_secs),
        )
        .await?;
        eprintln!("  raw bcrypt: {:.2} hashes/s", r.bcrypt_rate);

        let clients = futures::future::try_join_all(
            (0..concurrency).map(|i| Registerer::new(&url, format!("reg-{tag}-{run}-{i}"))),
        )
        .await?;
        let register = closed_loop(clients, WARMUP, window).await?;
        r.register_rate = register.rate;
        r.note_errors("register", &register.errors);
        eprintln!("  register: {:.2}/s", r.register_rate);

        let login = closed_loop(login_clients(&url, &login_users).await?, WARMUP, window).await?;
        r.login_rate = login.rate;
        r.note_errors("login", &login.errors);
        eprintln!("  login: {:.2}/s", r.login_rate);

        // Latency at a steady moderate rate (open loop), throughput at
        // saturation (closed loop); each idle, then beside a Login load.
        let sessions = args.refresh_sessions;
        let rate = args.refresh_rate;
        let idle = open_loop(
            refresh_clients(&url, &refresh_users, sessions).await?,
            rate,
            WARMUP,
            window,
        )
        .await?;
        let idle_max = closed_loop(
            refresh_clients(&url, &refresh_users, args.refresh_clients).await?,
            WARMUP,
            window,
        )
        .await?;
        r.refresh_idle = report::LatencyFigures::of(&idle, &idle_max);
        r.note_errors("refresh (idle)", &idle.errors);
        r.note_errors("refresh (idle, saturating)", &idle_max.errors);
        let (loaded, login_beside) = tokio::join!(
            async {
                open_loop(
                    refresh_clients(&url, &refresh_users, sessions).await?,
                    rate,
                    WARMUP,
                    window,
                )
                .await
            },
            async { closed_loop(login_clients(&url, &login_users).await?, WARMUP, window).await },
        );
        let (loaded, login_beside) = (loaded?, login_beside?);
        let (loaded_max, login_beside_max) = tokio::join!(
            async {
                closed_loop(
                    refresh_clients(&url, &refresh_users, args.refresh_clients).await?,
                    WARMUP,
                    window,
                )
                .await
            },
            async { closed_loop(login_clients(&url, &login_users).await?, WARMUP, window).await },
        );
        let (loaded_max, login_beside_max) = (loaded_max?, login_beside_max?);
        r.refresh_loaded = report::LatencyFigures::of(&loaded, &loaded_max);
        r.refresh_loaded_login_rate = login_beside.rate;
        r.refresh_saturated_login_rate = login_beside_max.rate;
        r.note_errors("refresh (under login load)", &loaded.errors);
        r.note_errors("refresh (under login load, saturating)", &loaded_max.errors);
        r.note_errors("login (beside refresh)", &login_beside.errors);
        eprintln!(
            "  refresh p99: idle {:.2} ms, under login load {:.2} ms",
            r.refresh_idle.p99_ms, r.refresh_loaded.p99_ms
        );

        let rate = args.latency_rate.unwrap_or(r.bcrypt_rate / 4.0);
        let latency = commit_to_kafka(
            args,
            &url,
            &mut relay,
            &format!("{prefix}user"),
            &format!("lat-{tag}-{run}"),
            rate,
        )
        .await?;
        r.commit_to_kafka = latency;
        eprintln!(
            "  commit-to-Kafka at {rate:.1}/s: p50 {:.2} ms, p99 {:.2} ms",
            r.commit_to_kafka.p50_ms, r.commit_to_kafka.p99_ms
        );
        relay_peak = relay_peak.max(relay.stop().await?.unwrap_or(0));

        relay::prefill(&pool, args.relay_rows, &format!("drain-{tag}-{run}")).await?;
        let drain = relay::drain(
            &pool,
            &args.bin_dir,
            database_url,
            &args.kafka,
            &format!("{prefix}drain."),
            args.relay_rows,
        )
        .await?;
        r.relay_rate = drain.relay_rate;
        r.raw_producer_rate = drain.raw_rate;
        relay_peak = relay_peak.max(drain.relay_peak_rss.unwrap_or(0));
        eprintln!(
            "  drain: relay {:.0}/s, raw producer {:.0}/s",
            r.relay_rate, r.raw_producer_rate
        );
        runs.push(r);
    }
    pool.close().await;
    let server_peak = server.stop().await?.unwrap_or(0);
    Ok(report::Report::new(
        Settings {
            bcrypt_cost: args.bcrypt_cost,
            concurrency,
            refresh_clients: args.refresh_clients,
            refresh_rate: args.refresh_rate,
            refresh_sessions: args.refresh_sessions,
            duration_secs: args.duration_secs,
            warmup_secs: WARMUP.as_secs_f64(),
            bcrypt_secs: args.bcrypt_secs,
            relay_rows: args.relay_rows,
            latency_secs: args.latency_secs,
            latency_rate: args.latency_rate,
            runs: args.runs,
            smoke: args.smoke,
            async_commit: args.async_commit,
            bin_dir: args.bin_dir.display().to_string(),
        },
        runs,
        server_peak,
        relay_peak,
    ))
}

/// Starts `realchat-auth` from `bin_dir` on free loopback ports with its
/// own database and bcrypt cost, and waits until `/readyz` says ready.
/// Returns the process and its gRPC URL.
async fn start_server(
    bin_dir: &Path,
    database_url: &str,
    bcrypt_cost: u32,
) -> anyhow::Result<(Process, String)> {
    let grpc_addr = free_port()?;
    let http_addr = free_port()?;
    // The caller's environment is inherited, as a deployment's would be.
    let mut command = Command::new(bin_dir.join("realchat-auth"));
    command
        .env("DATABASE_URL", database_url)
        .env("AUTH_GRPC_ADDR", grpc_addr.to_string())
        .env("AUTH_HTTP_ADDR", http_addr.to_string())
        .env("AUTH_BCRYPT_COST", bcrypt_cost.to_string())
        // Warnings and errors only, echoed to stderr, apart from the table.
        .env("RUST_LOG", "warn");
    let mut server = Process::start("realchat-auth", command, true)
        .context("build it first: see scripts/bench.sh")?
        .with_http_addr(http_addr);
    server.wait_ready(READY_TIMEOUT).await?;
    Ok((server, format!("http://{grpc_addr}")))
}

async fn login_clients(url: &str, users: &[String]) -> anyhow::Result<Vec<LoginClient>> {
    futures::future::try_join_all(users.iter().map(|u| LoginClient::new(url, u.clone()))).await
}

/// `sessions` Refresh clients, each with a session of its own, spread over
/// `users`.
async fn refresh_clients(
    url: &str,
    users: &[String],
    sessions: usize,
) -> anyhow::Result<Vec<RefreshClient>> {
    futures::future::try_join_all(
        users
            .iter()
            .cycle()
            .take(sessions)
            .map(|u| RefreshClient::new(url, u.clone())),
    )
    .await
}

/// Hashes per second at `cost` with `threads` threads hashing flat out for
/// `duration` (each thread's rate is its hashes over its own elapsed time,
/// up to its last hash), summed.
async fn raw_bcrypt_rate(cost: u32, threads: usize, duration: Duration) -> anyhow::Result<f64> {
    tokio::task::spawn_blocking(move || {
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    scope.spawn(move || {
                        let start = std::time::Instant::now();
                        let mut hashes = 0u32;
                        while start.elapsed() < duration {
                            bcrypt::hash(load::PASSWORD, cost)?;
                            hashes += 1;
                        }
                        anyhow::Ok(f64::from(hashes) / start.elapsed().as_secs_f64())
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| {
                    w.join()
                        .map_err(|_| anyhow::anyhow!("a bcrypt thread panicked"))?
                })
                .sum()
        })
    })
    .await?
}

/// Registers at `rate` per second for `--latency-secs` (an open loop: one
/// call per tick, whatever the previous ones do) while a consumer reads
/// `topic`; the time from each registration's transaction to its arrival.
async fn commit_to_kafka(
    args: &Args,
    url: &str,
    relay: &mut Process,
    topic: &str,
    email_prefix: &str,
    rate: f64,
) -> anyhow::Result<report::LatencyFigures> {
    relay.wait_ready(READY_TIMEOUT).await?;
    let consumer = broker::new_consumer(&args.kafka, true)?;
    let partitions = broker::partitions(&consumer, topic)
        .with_context(|| format!("topic {topic} has no partitions"))?;
    broker::read_from_beginning(&consumer, topic, partitions)?;
    // Warm-up: the first event pays for metadata and connections.
    let warm = format!("{email_prefix}-warm");
    load::register_users(url, &[format!("{warm}@bench.example")], 1).await?;
    relay::commit_to_consumer(&consumer, &warm, 1, Duration::from_secs(30)).await?;

    let count = (rate * args.latency_secs).round().max(1.0) as usize;
    let client = load::connect(url).await?;
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.01)));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let prefix = email_prefix.to_owned();
    let producer = tokio::spawn(async move {
        let mut calls = Vec::with_capacity(count);
        for i in 0..count {
            ticker.tick().await;
            let mut client = client.clone();
            let request = realchat_auth::proto::RegisterRequest {
                email: format!("{prefix}-{i}@bench.example"),
                password: load::PASSWORD.to_owned(),
            };
            calls.push(tokio::spawn(async move { client.register(request).await }));
        }
        for call in calls {
            call.await??;
        }
        anyhow::Ok(())
    });
    let started = Instant::now();
    let latencies = relay::commit_to_consumer(
        &consumer,
        &format!("{email_prefix}-"),
        count,
        Duration::from_secs_f64(args.latency_secs + 60.0),
    )
    .await?;
    producer.await??;
    eprintln!(
        "  ({count} events in {:.1} s)",
        started.elapsed().as_secs_f64()
    );
    Ok(report::LatencyFigures::from_latencies(
        &latencies,
        args.latency_secs,
    ))
}
