//! Inbound rate limit: a token bucket fed `Instant`s (sans-IO).

use std::time::Instant;

/// A token bucket: `burst` tokens at most, refilled at `rate` tokens per second.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub(crate) fn new(rate_per_sec: u32, burst: u32, now: Instant) -> Self {
        Self {
            rate: f64::from(rate_per_sec),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            last: now,
        }
    }

    /// Takes one token; `false` when the bucket is empty.
    pub(crate) fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    #[test]
    fn burst_then_refill() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 5, t0);
        assert_eq!((0..10).filter(|_| b.try_take(t0)).count(), 5);
        assert!(b.try_take(t0 + Duration::from_millis(100)));
        assert!(!b.try_take(t0 + Duration::from_millis(100)));
    }

    proptest! {
        /// Over any schedule, accepted frames never exceed burst + rate × elapsed.
        #[test]
        fn never_exceeds_rate(rate in 1u32..10_000, burst in 1u32..1000,
                              gaps in prop::collection::vec(0u64..50_000, 1..500)) {
            let t0 = Instant::now();
            let mut b = TokenBucket::new(rate, burst, t0);
            let mut now = t0;
            let mut taken = 0u64;
            for g in gaps {
                now += Duration::from_micros(g);
                taken += u64::from(b.try_take(now));
            }
            let bound = f64::from(burst) + f64::from(rate) * (now - t0).as_secs_f64();
            prop_assert!(taken as f64 <= bound + 1e-6);
        }
    }
}
