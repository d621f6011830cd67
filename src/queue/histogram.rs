//! Fixed-size lag histogram kept per TVIEW in shared memory: commit-to-applied latency of the
//! keys applied over the last one to two windows, for p50/p95/p99 in `pg_tviews_queue_status`.
//! Pure Rust, plain old data, with the clock passed in (unit-tested).

/// Bucket `i` holds latencies below `2^i` ms (bucket 0: below 1 ms); the last one is open-ended.
pub const BUCKETS: usize = 20;
/// Length of one window in microseconds; percentiles cover the current and the previous window.
pub const WINDOW_US: i64 = 60_000_000;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LagHistogram {
    window_start: i64,
    current: [u32; BUCKETS],
    previous: [u32; BUCKETS],
}

fn bucket_of(lag_us: i64) -> usize {
    let ms = (lag_us.max(0) / 1000) as u64;
    // below 1 ms -> 0, [1,2) -> 1, [2,4) -> 2, ...
    ((u64::BITS - ms.leading_zeros()) as usize).min(BUCKETS - 1)
}

/// Upper bound, in milliseconds, of bucket `i` (what a percentile in that bucket reports).
pub fn bucket_upper_ms(i: usize) -> f64 {
    if i == 0 {
        1.0
    } else {
        (1u64 << i) as f64
    }
}

impl LagHistogram {
    fn rotate(&mut self, now: i64) {
        if now - self.window_start >= 2 * WINDOW_US {
            self.previous = [0; BUCKETS];
            self.current = [0; BUCKETS];
            self.window_start = now;
        } else if now - self.window_start >= WINDOW_US {
            self.previous = self.current;
            self.current = [0; BUCKETS];
            self.window_start += WINDOW_US;
        }
    }

    /// Records `count` keys applied at `now` that were committed `lag_us` earlier.
    pub fn record(&mut self, lag_us: i64, count: u32, now: i64) {
        self.rotate(now);
        let b = bucket_of(lag_us);
        self.current[b] = self.current[b].saturating_add(count);
    }

    /// Latency (ms, bucket upper bound) below which `quantile` of recent keys were applied.
    pub fn percentile(&self, quantile: f64, now: i64) -> Option<f64> {
        let mut view = *self;
        view.rotate(now);
        let counts: Vec<u64> = (0..BUCKETS)
            .map(|i| u64::from(view.current[i]) + u64::from(view.previous[i]))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = (quantile * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(bucket_upper_ms(i));
            }
        }
        Some(bucket_upper_ms(BUCKETS - 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: i64 = 1000;

    #[test]
    fn buckets_are_powers_of_two_milliseconds() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(999), 0);
        assert_eq!(bucket_of(MS), 1);
        assert_eq!(bucket_of(3 * MS), 2);
        assert_eq!(bucket_of(1000 * MS), 10);
        assert_eq!(bucket_of(i64::MAX), BUCKETS - 1);
    }

    #[test]
    fn percentiles_over_recorded_lags() {
        let mut h = LagHistogram::default();
        h.record(500, 90, 0); // 90 keys under 1 ms
        h.record(5 * MS, 9, 0); // 9 keys at 5 ms -> bucket [4, 8)
        h.record(300 * MS, 1, 0); // 1 key at 300 ms -> bucket [256, 512)
        assert_eq!(h.percentile(0.5, 0), Some(1.0));
        assert_eq!(h.percentile(0.95, 0), Some(8.0));
        assert_eq!(h.percentile(0.99, 0), Some(8.0));
        assert_eq!(h.percentile(1.0, 0), Some(512.0));
    }

    #[test]
    fn old_windows_age_out() {
        let mut h = LagHistogram::default();
        h.record(100 * MS, 10, 0);
        assert_eq!(
            h.percentile(0.5, WINDOW_US + 1),
            Some(128.0),
            "previous window still counts"
        );
        h.record(500, 10, WINDOW_US + 1);
        assert_eq!(h.percentile(0.99, WINDOW_US + 1), Some(128.0));
        assert_eq!(
            h.percentile(0.99, 2 * WINDOW_US + 1),
            Some(1.0),
            "first window dropped"
        );
        assert_eq!(
            h.percentile(0.5, 10 * WINDOW_US),
            None,
            "idle long enough: no data"
        );
    }
}
