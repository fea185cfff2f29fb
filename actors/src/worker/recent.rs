//! A worker's recent times to first token: the samples of the last few seconds, read as a
//! p95 for its heartbeat (what autoscaling on time to first token reads).

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

/// How far back the p95 looks.
const WINDOW: Duration = Duration::from_secs(10);

/// Most samples kept (the newest): a worker finishing thousands of generations in the
/// window is measured on its latest.
const MOST: usize = 1024;

/// Samples of the last [`WINDOW`].
#[derive(Debug, Default)]
pub(crate) struct Recent {
    samples: VecDeque<(Instant, Duration)>,
}

impl Recent {
    /// Adds a sample taken at `at`.
    pub(crate) fn add(&mut self, at: Instant, value: Duration) {
        if self.samples.len() == MOST {
            self.samples.pop_front();
        }
        self.samples.push_back((at, value));
    }

    /// The 95th percentile of the samples of the window ending at `now`, in ms (rounded
    /// up); none when the window is empty. Older samples are dropped.
    pub(crate) fn p95(&mut self, now: Instant) -> Option<u32> {
        while self.samples.front().is_some_and(|(at, _)| now.saturating_duration_since(*at) > WINDOW) {
            self.samples.pop_front();
        }
        let mut values: Vec<Duration> = self.samples.iter().map(|(_, v)| *v).collect();
        if values.is_empty() {
            return None;
        }
        values.sort_unstable();
        // Nearest rank: the smallest value with at least 95 % of the samples at or below.
        let rank = (values.len() * 95).div_ceil(100).max(1);
        let ms = values[rank - 1].as_micros().div_ceil(1000);
        Some(ms.min(u128::from(u32::MAX)) as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_p95_is_of_the_last_ten_seconds_only() {
        let start = Instant::now();
        let mut r = Recent::default();
        assert_eq!(r.p95(start), None);
        // 100 samples of 1..=100 ms: the 95th is 95 ms.
        for i in 1..=100u64 {
            r.add(start, Duration::from_millis(i));
        }
        assert_eq!(r.p95(start), Some(95));
        // One slow sample later; 11 s on, only it is left.
        let later = start + Duration::from_secs(5);
        r.add(later, Duration::from_millis(4000));
        assert_eq!(r.p95(start + Duration::from_secs(11)), Some(4000));
        assert_eq!(r.p95(start + Duration::from_secs(16)), None);
        // The newest MOST samples are kept.
        for _ in 0..(MOST + 10) {
            r.add(later, Duration::from_millis(1));
        }
        assert_eq!(r.samples.len(), MOST);
    }
}
