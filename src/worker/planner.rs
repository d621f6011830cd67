//! Batch sizing for a drainer: coalescing (`coalesce_ms`: wait briefly for a fuller batch when
//! the queue is shallow) and the time budget (`max_batch_ms`: shrink batches that hold their
//! locks too long, grow them back when they are quick). Pure Rust with explicit times.

/// How long to wait before taking a batch of `queued` keys whose oldest is `oldest_age_us` old;
/// `None` means take it now.
pub fn coalesce_wait_us(
    queued: usize,
    batch_size: usize,
    oldest_age_us: i64,
    coalesce_us: i64,
) -> Option<i64> {
    if coalesce_us <= 0 || queued == 0 || queued >= batch_size || oldest_age_us >= coalesce_us {
        return None;
    }
    Some(coalesce_us - oldest_age_us.max(0))
}

/// Current batch limit under a time budget.
#[derive(Debug, Clone)]
pub struct BatchPlanner {
    limit: usize,
}

impl BatchPlanner {
    pub fn new(batch_size: usize) -> BatchPlanner {
        BatchPlanner {
            limit: batch_size.max(1),
        }
    }

    /// Keys to take next: never more than `batch_size` (which may have been reloaded).
    pub fn limit(&mut self, batch_size: usize) -> usize {
        self.limit = self.limit.clamp(1, batch_size.max(1));
        self.limit
    }

    /// Adapts after a batch of `keys` that took `elapsed_ms`; a budget of 0 disables it.
    pub fn observe(&mut self, keys: usize, elapsed_ms: u64, budget_ms: u64, batch_size: usize) {
        if budget_ms == 0 {
            self.limit = batch_size.max(1);
        } else if elapsed_ms > budget_ms {
            self.limit = (keys / 2).max(1);
        } else if elapsed_ms * 2 < budget_ms && keys >= self.limit {
            self.limit = (self.limit * 2).min(batch_size.max(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalescing_waits_only_for_shallow_young_queues() {
        assert_eq!(coalesce_wait_us(10, 1000, 2_000, 5_000), Some(3_000));
        assert_eq!(
            coalesce_wait_us(10, 1000, 6_000, 5_000),
            None,
            "oldest key waited long enough"
        );
        assert_eq!(
            coalesce_wait_us(1000, 1000, 0, 5_000),
            None,
            "a full batch goes now"
        );
        assert_eq!(coalesce_wait_us(10, 1000, 0, 0), None, "disabled");
        assert_eq!(
            coalesce_wait_us(0, 1000, 0, 5_000),
            None,
            "nothing to wait for"
        );
    }

    #[test]
    fn slow_batches_shrink_and_fast_ones_grow_back() {
        let mut p = BatchPlanner::new(1000);
        assert_eq!(p.limit(1000), 1000);
        p.observe(1000, 400, 100, 1000);
        assert_eq!(p.limit(1000), 500);
        p.observe(500, 150, 100, 1000);
        assert_eq!(p.limit(1000), 250);
        p.observe(250, 20, 100, 1000);
        assert_eq!(p.limit(1000), 500);
        p.observe(500, 20, 100, 1000);
        p.observe(1000, 20, 100, 1000);
        assert_eq!(p.limit(1000), 1000, "never above batch_size");
        p.observe(3, 10, 100, 1000);
        assert_eq!(
            p.limit(1000),
            1000,
            "a small batch says nothing about larger ones"
        );
    }

    #[test]
    fn budget_off_and_reloaded_batch_size() {
        let mut p = BatchPlanner::new(1000);
        p.observe(1000, 400, 100, 1000);
        p.observe(10, 0, 0, 1000);
        assert_eq!(p.limit(1000), 1000, "budget 0 restores batch_size");
        assert_eq!(p.limit(10), 10, "a lower batch_size applies at once");
    }
}
