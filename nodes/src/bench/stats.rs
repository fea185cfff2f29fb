//! Latency samples and what the report says about them: percentiles and throughput.

use std::time::{Duration, Instant};

/// Latencies of one run, in seconds, and how long the run took.
#[derive(Debug, Clone, Default)]
pub(crate) struct Samples {
    /// One per finished request.
    pub(crate) secs: Vec<f64>,
    /// Wall time of the run.
    pub(crate) wall: Duration,
}

impl Samples {
    /// The `p`-th percentile (0–100), in milliseconds; 0 with no samples.
    pub(crate) fn percentile_ms(&self, p: f64) -> f64 {
        if self.secs.is_empty() {
            return 0.0;
        }
        let mut v = self.secs.clone();
        v.sort_by(f64::total_cmp);
        let rank = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
        v[rank.min(v.len() - 1)] * 1000.0
    }

    /// p50 in ms.
    pub(crate) fn p50(&self) -> f64 {
        self.percentile_ms(50.0)
    }

    /// p99 in ms.
    pub(crate) fn p99(&self) -> f64 {
        self.percentile_ms(99.0)
    }

    /// Finished requests per second.
    pub(crate) fn per_sec(&self) -> f64 {
        if self.wall.is_zero() {
            0.0
        } else {
            self.secs.len() as f64 / self.wall.as_secs_f64()
        }
    }
}

/// Runs `clients` loops of `one` until `duration` has passed (after a short warm-up whose
/// results are dropped); `one` returns the latencies of one request (e.g. to the first
/// chunk and to completion), or `None` when it failed.
pub(crate) async fn closed_loop<F, Fut>(clients: usize, duration: Duration, one: F) -> (Vec<Samples>, usize)
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Option<Vec<f64>>> + Send,
{
    let warm_until = Instant::now() + duration / 6;
    let start = warm_until;
    let end = start + duration;
    let mut handles = Vec::new();
    for _ in 0..clients {
        let one = one.clone();
        handles.push(tokio::spawn(async move {
            let mut got: Vec<Vec<f64>> = Vec::new();
            let mut failed = 0usize;
            loop {
                let began = Instant::now();
                if began >= end {
                    break;
                }
                let result = one().await;
                if began < start {
                    continue;
                }
                match result {
                    Some(v) => got.push(v),
                    None => failed += 1,
                }
            }
            (got, failed)
        }));
    }
    let mut series: Vec<Samples> = Vec::new();
    let mut failed = 0;
    for h in handles {
        let Ok((got, f)) = h.await else { continue };
        failed += f;
        for v in got {
            if series.len() < v.len() {
                series.resize(v.len(), Samples::default());
            }
            for (i, s) in v.into_iter().enumerate() {
                series[i].secs.push(s);
            }
        }
    }
    let wall = Instant::now().saturating_duration_since(start);
    for s in &mut series {
        s.wall = wall;
    }
    (series, failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_rate() {
        let s = Samples { secs: (1..=100).map(|i| i as f64 / 1000.0).collect(), wall: Duration::from_secs(2) };
        assert!((s.p50() - 50.0).abs() <= 1.0);
        assert!((s.p99() - 99.0).abs() <= 1.0);
        assert_eq!(s.per_sec(), 50.0);
        assert_eq!(Samples::default().p50(), 0.0);
    }
}
