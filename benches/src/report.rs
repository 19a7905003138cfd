//! The report: per-run measurements, the figures (median and spread over
//! the runs, with their ratios to the limits and the targets), the machine
//! and the settings; printed as a Markdown table and written as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::load::LoadResult;
use crate::stats::{Latencies, Summary};

/// Latency percentiles and throughput of one load.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct LatencyFigures {
    /// Median latency, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile latency, milliseconds.
    pub p99_ms: f64,
    /// Calls (or events) per second.
    pub rate: f64,
    /// Calls (or events) measured.
    pub count: u64,
}

impl LatencyFigures {
    /// Latency of `steady` (an open loop at a moderate rate) and throughput
    /// of `saturating` (a closed loop).
    pub fn of(steady: &LoadResult, saturating: &LoadResult) -> Self {
        Self {
            p50_ms: steady.latencies.quantile_ms(0.5),
            p99_ms: steady.latencies.quantile_ms(0.99),
            rate: saturating.rate,
            count: steady.ok,
        }
    }

    /// The figures of `latencies` collected over `secs` seconds.
    pub fn from_latencies(latencies: &Latencies, secs: f64) -> Self {
        Self {
            p50_ms: latencies.quantile_ms(0.5),
            p99_ms: latencies.quantile_ms(0.99),
            rate: latencies.count() as f64 / secs,
            count: latencies.count(),
        }
    }
}

/// What one run measured.
#[derive(Debug, Default, Serialize)]
pub struct Run {
    /// Raw bcrypt hashes per second, one thread per core.
    pub bcrypt_rate: f64,
    /// Successful Register calls per second at saturation.
    pub register_rate: f64,
    /// Successful Login calls per second at saturation.
    pub login_rate: f64,
    /// Refresh with the server otherwise idle.
    pub refresh_idle: LatencyFigures,
    /// Refresh while Login saturates the bcrypt pool.
    pub refresh_loaded: LatencyFigures,
    /// Login calls per second beside the steady Refresh calls.
    pub refresh_loaded_login_rate: f64,
    /// Login calls per second beside saturating Refresh clients.
    pub refresh_saturated_login_rate: f64,
    /// Registration to consumer, events at a steady moderate rate.
    pub commit_to_kafka: LatencyFigures,
    /// Relay drain, events per second.
    pub relay_rate: f64,
    /// The relay's producer settings sending the same messages, per second.
    pub raw_producer_rate: f64,
    /// Failed calls of the loads, by load and gRPC code (none expected).
    pub errors: BTreeMap<String, u64>,
}

impl Run {
    /// Adds a load's failed calls to [`Run::errors`].
    pub fn note_errors(&mut self, load: &str, errors: &BTreeMap<String, u64>) {
        for (code, n) in errors {
            *self.errors.entry(format!("{load}: {code}")).or_default() += n;
        }
    }
}

/// The harness's settings, as run.
#[derive(Debug, Serialize)]
pub struct Settings {
    pub bcrypt_cost: u32,
    pub concurrency: usize,
    pub refresh_clients: usize,
    pub refresh_rate: f64,
    pub refresh_sessions: usize,
    pub duration_secs: f64,
    pub warmup_secs: f64,
    pub bcrypt_secs: f64,
    pub relay_rows: i64,
    pub latency_secs: f64,
    pub latency_rate: Option<f64>,
    pub runs: usize,
    pub smoke: bool,
    pub async_commit: bool,
    pub bin_dir: String,
}

/// The machine the run was on.
#[derive(Debug, Serialize)]
pub struct Machine {
    /// Cores available to the harness.
    pub cores: usize,
    /// Total memory, GiB.
    pub memory_gib: f64,
    /// `model name` of the first CPU in `/proc/cpuinfo`.
    pub cpu: String,
    /// Load average (1 min) when the report was made: other work on the box.
    pub load_average_1m: f64,
}

impl Machine {
    fn read() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
            .unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        let load_average_1m = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        Self {
            cores: std::thread::available_parallelism().map_or(1, usize::from),
            memory_gib: kib / 1024.0 / 1024.0,
            cpu,
            load_average_1m,
        }
    }
}

/// One row of the table.
#[derive(Debug, Serialize)]
pub struct Figure {
    /// Issue 6's number of the figure (1 to 7).
    pub number: u8,
    pub name: String,
    pub unit: &'static str,
    pub value: Option<Summary>,
    /// The ratio to the figure's limit, per run, summarised.
    pub ratio: Option<Summary>,
    /// What the ratio (or value) is held to, if anything.
    pub target: Option<Target>,
    /// Whether the median meets the target.
    pub met: Option<bool>,
}

/// A target: the median must be at least or at most `bound`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Target {
    /// `true`: at least; `false`: at most (strictly below for latencies).
    pub at_least: bool,
    pub bound: f64,
    /// Whether the target is on the ratio (else on the value).
    pub on_ratio: bool,
}

/// The whole report.
#[derive(Debug, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub settings: Settings,
    pub figures: Vec<Figure>,
    /// Peak RSS of the server over the whole run, bytes.
    pub server_peak_rss_bytes: u64,
    /// Peak RSS of the relay processes (the largest), bytes.
    pub relay_peak_rss_bytes: u64,
    pub runs: Vec<Run>,
}

impl Report {
    /// Summarises `runs` into the seven figures.
    pub fn new(settings: Settings, runs: Vec<Run>, server_peak: u64, relay_peak: u64) -> Self {
        let of = |f: &dyn Fn(&Run) -> f64| Summary::of(&runs.iter().map(f).collect::<Vec<_>>());
        let at_least = |bound, on_ratio| {
            Some(Target {
                at_least: true,
                bound,
                on_ratio,
            })
        };
        let below = |bound, on_ratio| {
            Some(Target {
                at_least: false,
                bound,
                on_ratio,
            })
        };
        let mib = |bytes: u64| Summary::of(&[bytes as f64 / 1024.0 / 1024.0]);
        let mut figures = vec![
            figure(
                1,
                format!(
                    "Raw bcrypt, cost {}, one thread per core",
                    settings.bcrypt_cost
                ),
                "hashes/s",
                of(&|r| r.bcrypt_rate),
                None,
                None,
            ),
            figure(
                2,
                "Login at saturation (ratio to 1)".into(),
                "calls/s",
                of(&|r| r.login_rate),
                of(&|r| r.login_rate / r.bcrypt_rate),
                at_least(0.9, true),
            ),
            figure(
                3,
                "Register at saturation (ratio to 1)".into(),
                "calls/s",
                of(&|r| r.register_rate),
                of(&|r| r.register_rate / r.bcrypt_rate),
                at_least(0.9, true),
            ),
            figure(
                4,
                format!("Refresh idle, {}/s: p50", settings.refresh_rate),
                "ms",
                of(&|r| r.refresh_idle.p50_ms),
                None,
                None,
            ),
            figure(
                4,
                format!("Refresh idle, {}/s: p99", settings.refresh_rate),
                "ms",
                of(&|r| r.refresh_idle.p99_ms),
                None,
                None,
            ),
            figure(
                4,
                "Refresh idle: throughput at saturation".into(),
                "calls/s",
                of(&|r| r.refresh_idle.rate),
                None,
                None,
            ),
            figure(
                4,
                format!("Refresh under Login load, {}/s: p50", settings.refresh_rate),
                "ms",
                of(&|r| r.refresh_loaded.p50_ms),
                None,
                None,
            ),
            figure(
                4,
                format!(
                    "Refresh under Login load, {}/s: p99 (ratio to idle p99)",
                    settings.refresh_rate
                ),
                "ms",
                of(&|r| r.refresh_loaded.p99_ms),
                of(&|r| r.refresh_loaded.p99_ms / r.refresh_idle.p99_ms),
                below(2.0, true),
            ),
            figure(
                4,
                "Refresh under Login load: throughput at saturation".into(),
                "calls/s",
                of(&|r| r.refresh_loaded.rate),
                None,
                None,
            ),
            figure(
                4,
                "Login beside the steady Refresh calls (ratio to 1)".into(),
                "calls/s",
                of(&|r| r.refresh_loaded_login_rate),
                of(&|r| r.refresh_loaded_login_rate / r.bcrypt_rate),
                None,
            ),
            figure(
                4,
                "Login beside saturating Refresh clients (ratio to 1)".into(),
                "calls/s",
                of(&|r| r.refresh_saturated_login_rate),
                of(&|r| r.refresh_saturated_login_rate / r.bcrypt_rate),
                None,
            ),
            figure(
                5,
                format!(
                    "Relay drain of {} rows (ratio to raw producer)",
                    settings.relay_rows
                ),
                "events/s",
                of(&|r| r.relay_rate),
                of(&|r| r.relay_rate / r.raw_producer_rate),
                at_least(0.8, true),
            ),
            figure(
                5,
                "Raw producer, same messages and settings".into(),
                "events/s",
                of(&|r| r.raw_producer_rate),
                None,
                None,
            ),
            figure(
                6,
                "Commit-to-Kafka: p50".into(),
                "ms",
                of(&|r| r.commit_to_kafka.p50_ms),
                None,
                below(10.0, false),
            ),
            figure(
                6,
                "Commit-to-Kafka: p99".into(),
                "ms",
                of(&|r| r.commit_to_kafka.p99_ms),
                None,
                below(50.0, false),
            ),
            figure(
                7,
                "Peak RSS, server".into(),
                "MiB",
                mib(server_peak),
                None,
                None,
            ),
            figure(
                7,
                "Peak RSS, relay".into(),
                "MiB",
                mib(relay_peak),
                None,
                None,
            ),
        ];
        for f in &mut figures {
            f.met = f.target.and_then(|t| {
                let basis = if t.on_ratio { f.ratio } else { f.value }?;
                Some(if t.at_least {
                    basis.median >= t.bound
                } else {
                    basis.median < t.bound
                })
            });
        }
        Self {
            machine: Machine::read(),
            settings,
            figures,
            server_peak_rss_bytes: server_peak,
            relay_peak_rss_bytes: relay_peak,
            runs,
        }
    }

    /// The figures as a Markdown table, with the machine and settings.
    pub fn table(&self) -> String {
        let m = &self.machine;
        let s = &self.settings;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Machine: {} cores, {:.1} GiB, {}; load average {:.2} at the end.",
            m.cores, m.memory_gib, m.cpu, m.load_average_1m
        );
        let _ = writeln!(
            out,
            "Settings: bcrypt cost {}, {} saturating clients, Refresh latency at {}/s over {} sessions \
             and throughput with {} clients, {} s windows after {} s warm-up, {} relay rows, \
             commit-to-Kafka over {} s, {} run(s){}; median (min–max) of the runs.\n",
            s.bcrypt_cost,
            s.concurrency,
            s.refresh_rate,
            s.refresh_sessions,
            s.refresh_clients,
            s.duration_secs,
            s.warmup_secs,
            s.relay_rows,
            s.latency_secs,
            s.runs,
            match (s.smoke, s.async_commit) {
                (true, _) => ", SMOKE (figures mean nothing)",
                (false, true) => ", DIAGNOSIS: synchronous_commit = off",
                (false, false) => "",
            }
        );
        let _ = writeln!(out, "| # | Figure | Value | Ratio | Target | Met |");
        let _ = writeln!(out, "|---|---|---|---|---|---|");
        for f in &self.figures {
            let value = f
                .value
                .map_or("—".into(), |v| format!("{} {}", spread(v), f.unit));
            let ratio = f.ratio.map_or("—".into(), spread);
            let target = f.target.map_or("—".into(), |t| {
                let op = if t.at_least {
                    "≥"
                } else if t.on_ratio {
                    "≤"
                } else {
                    "<"
                };
                let what = if t.on_ratio { "ratio" } else { f.unit };
                if t.on_ratio {
                    format!("{what} {op} {}", t.bound)
                } else {
                    format!("{op} {} {what}", t.bound)
                }
            });
            let met = match f.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "—",
            };
            let _ = writeln!(
                out,
                "| {} | {} | {value} | {ratio} | {target} | {met} |",
                f.number, f.name
            );
        }
        let errors: BTreeMap<&String, u64> =
            self.runs
                .iter()
                .flat_map(|r| &r.errors)
                .fold(BTreeMap::new(), |mut all, (k, v)| {
                    *all.entry(k).or_default() += v;
                    all
                });
        if errors.is_empty() {
            let _ = writeln!(out, "\nNo call failed.");
        } else {
            let _ = writeln!(out, "\nFailed calls: {errors:?}");
        }
        out
    }
}

fn figure(
    number: u8,
    name: String,
    unit: &'static str,
    value: Option<Summary>,
    ratio: Option<Summary>,
    target: Option<Target>,
) -> Figure {
    Figure {
        number,
        name,
        unit,
        value,
        ratio,
        target,
        met: None,
    }
}

/// `median (min–max)` with precision suited to the magnitude.
fn spread(s: Summary) -> String {
    if s.min == s.max {
        return number(s.median);
    }
    format!("{} ({}–{})", number(s.median), number(s.min), number(s.max))
}

fn number(x: f64) -> String {
    match x.abs() {
        a if a >= 1000.0 => format!("{x:.0}"),
        a if a >= 10.0 => format!("{x:.1}"),
        _ => format!("{x:.2}"),
    }
}
