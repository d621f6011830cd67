//! Token bucket behind `pg_tviews_bgw.max_rows_per_second`: pure Rust with an injected clock
//! (microseconds), so its behaviour is unit-tested deterministically. Used by each drainer.

/// Keys per second with a burst of one second's worth; a rate of 0 means unlimited.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: u64,
    tokens: f64,
    last_us: u64,
}

impl TokenBucket {
    pub fn new(rate: u64, now_us: u64) -> TokenBucket {
        TokenBucket {
            rate,
            tokens: rate as f64,
            last_us: now_us,
        }
    }

    /// Applies a new rate (after a reload) without granting a fresh burst.
    pub fn set_rate(&mut self, rate: u64, now_us: u64) {
        if rate != self.rate {
            self.refill(now_us);
            self.rate = rate;
            self.tokens = self.tokens.min(rate as f64);
        }
    }

    fn refill(&mut self, now_us: u64) {
        let elapsed = now_us.saturating_sub(self.last_us) as f64 / 1e6;
        self.tokens = (self.tokens + elapsed * self.rate as f64).min(self.rate as f64);
        self.last_us = now_us;
    }

    /// How many of `want` keys may be refreshed now (0 when the bucket is empty).
    pub fn grant(&mut self, want: u64, now_us: u64) -> u64 {
        if self.rate == 0 {
            return want;
        }
        self.refill(now_us);
        (self.tokens.floor() as u64).min(want)
    }

    /// Records that `used` keys were refreshed (may exceed the grant: a batch is all or nothing).
    pub fn spend(&mut self, used: u64, now_us: u64) {
        if self.rate == 0 {
            return;
        }
        self.refill(now_us);
        self.tokens -= used as f64;
    }

    /// Microseconds until at least one key may be refreshed.
    pub fn wait_us(&self, now_us: u64) -> u64 {
        if self.rate == 0 {
            return 0;
        }
        let elapsed = now_us.saturating_sub(self.last_us) as f64 / 1e6;
        let tokens = self.tokens + elapsed * self.rate as f64;
        if tokens >= 1.0 {
            0
        } else {
            ((1.0 - tokens) / self.rate as f64 * 1e6).ceil() as u64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;

    #[test]
    fn unlimited_grants_everything() {
        let mut b = TokenBucket::new(0, 0);
        assert_eq!(b.grant(1_000_000, 0), 1_000_000);
        b.spend(1_000_000, 0);
        assert_eq!(b.wait_us(0), 0);
    }

    #[test]
    fn burst_of_one_second_then_steady_rate() {
        let mut b = TokenBucket::new(100, 0);
        assert_eq!(b.grant(1000, 0), 100, "a full bucket holds one second");
        b.spend(100, 0);
        assert_eq!(b.grant(1000, 0), 0);
        assert_eq!(b.wait_us(0), 10_000, "one key every 10 ms");
        assert_eq!(b.grant(1000, S / 2), 50);
        b.spend(50, S / 2);
        assert_eq!(b.grant(1000, 10 * S), 100, "never more than the burst");
    }

    #[test]
    fn overspending_a_batch_is_paid_back_later() {
        let mut b = TokenBucket::new(100, 0);
        b.spend(300, 0);
        assert_eq!(b.grant(10, S), 0, "still 100 keys in debt after one second");
        assert_eq!(b.wait_us(S), S + 10_000, "101 tokens to earn at 100/s");
        assert_eq!(b.grant(10, 3 * S), 10);
    }

    #[test]
    fn draining_n_keys_takes_n_over_rate_seconds() {
        let (rate, total, batch) = (2000u64, 20_000u64, 500u64);
        let mut b = TokenBucket::new(rate, 0);
        let (mut now, mut done) = (0u64, 0u64);
        while done < total {
            let granted = b.grant(batch, now);
            if granted == 0 {
                now += b.wait_us(now).max(1);
                continue;
            }
            b.spend(granted, now);
            done += granted;
        }
        // The first second's burst is free: 20k keys at 2k/s need at least 9 s.
        assert!((9 * S..=10 * S).contains(&now), "took {} ms", now / 1000);
    }

    #[test]
    fn a_new_rate_applies_without_a_fresh_burst() {
        let mut b = TokenBucket::new(1000, 0);
        b.spend(1000, 0);
        b.set_rate(10, 0);
        assert_eq!(b.grant(100, 0), 0);
        assert_eq!(b.grant(100, S), 10);
        b.set_rate(0, S);
        assert_eq!(b.grant(100, S), 100, "0 lifts the limit at once");
    }
}
