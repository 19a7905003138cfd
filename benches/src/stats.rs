//! Summaries: latency percentiles of one measurement, and the median and
//! spread of a figure over repeated runs.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies of one measurement, recorded in microseconds (1 µs to 10 min,
/// 3 significant digits).
pub struct Latencies(Histogram<u64>);

impl Latencies {
    /// An empty recorder.
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self(Histogram::new_with_bounds(1, 600_000_000, 3)?))
    }

    /// Records one latency; values below 1 µs count as 1 µs.
    pub fn record(&mut self, latency: std::time::Duration) {
        let micros = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        self.0.saturating_record(micros);
    }

    /// Adds another recorder's values.
    pub fn merge(&mut self, other: &Self) -> anyhow::Result<()> {
        Ok(self.0.add(&other.0)?)
    }

    /// Number of values.
    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// The `q` quantile (0..=1) in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        self.0.value_at_quantile(q) as f64 / 1000.0
    }
}

/// A figure over repeated runs: the median and the spread (min and max).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Summary {
    /// Median of the runs (the mean of the middle two for an even count).
    pub median: f64,
    /// Smallest run.
    pub min: f64,
    /// Largest run.
    pub max: f64,
}

impl Summary {
    /// Summarises `values` (one per run); `None` when there are none.
    pub fn of(values: &[f64]) -> Option<Self> {
        let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Some(Self {
            median,
            min: sorted[0],
            max: sorted[n - 1],
        })
    }
}

/// The steady rate of events whose completion times (seconds from any
/// origin) are `times`: (n - 1) / (last - first), so the window's edges,
/// where a closed loop is ramping up or draining, do not count.
pub fn steady_rate(times: &mut [f64]) -> f64 {
    times.sort_by(f64::total_cmp);
    let n = times.len();
    match &*times {
        [first, .., last] if last > first => (n - 1) as f64 / (last - first),
        _ => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_spread() {
        let s = Summary::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        let s = Summary::of(&[4.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!(s.median, 2.5);
        assert!(Summary::of(&[]).is_none());
    }

    #[test]
    fn steady_rate_ignores_the_edges() {
        // Ten completions, one every 0.5 s: 2 per second whatever the origin.
        let mut times: Vec<f64> = (0..10).map(|i| 7.0 + f64::from(i) * 0.5).collect();
        assert!((steady_rate(&mut times) - 2.0).abs() < 1e-9);
        assert_eq!(steady_rate(&mut [1.0]), 0.0);
    }
}
