//! The reconnect ladder: exponential backoff with jitter, free of I/O.
//!
//! [`Backoff`] is a plain state machine. It never reads a clock and never sleeps: the caller
//! feeds it the current [`Instant`] each time a connection attempt is needed, and it answers
//! with the delay to wait before that attempt, or `None` when the attempt count or the time
//! budget of the [`ReconnectPolicy`] is used up. Jitter comes from a seeded RNG, so a given seed
//! and sequence of instants always yields the same ladder (unit tests and proptests below run it
//! thousands of times without a socket).
//!
//! The delay before attempt `n` (1-based) is
//! `min(max_delay, base * factor^(n-1)) * (1 - jitter * r)` with `r` uniform in `[0, 1)`,
//! then shortened so that the attempt starts no later than `max_elapsed` after the ladder began.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

/// How a client retries after its connection to the hub drops.
///
/// The ladder starts when a live connection is lost and ends at the first successful handshake
/// (the next drop starts a fresh ladder) or when it runs out of attempts or time.
#[derive(Debug, Clone, PartialEq)]
pub struct ReconnectPolicy {
    /// Delay before the first attempt, before jitter. Defaults to 200 ms.
    pub base_delay: Duration,
    /// Multiplier applied to the delay after each attempt. Values below 1 are treated as 1.
    /// Defaults to 2.
    pub factor: f64,
    /// Longest delay between two attempts. Defaults to 5 s.
    pub max_delay: Duration,
    /// Most attempts per ladder; 0 disables reconnection. With several hub URLs
    /// ([`ClientOptions::fallback_urls`](crate::ClientOptions::fallback_urls)), one attempt
    /// tries each of them once. Defaults to 8.
    pub max_attempts: u32,
    /// Longest time from the drop to the start of the last attempt. Defaults to 60 s.
    pub max_elapsed: Duration,
    /// Fraction of each delay that is randomised away, in `[0, 1]`: a delay `d` becomes a value
    /// in `(d * (1 - jitter), d]`. Defaults to 0.5.
    pub jitter: f64,
    /// Seed of the jitter RNG, for reproducible ladders. Defaults to `None` (a random seed).
    pub seed: Option<u64>,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        Self {
            base_delay: Duration::from_millis(200),
            factor: 2.0,
            max_delay: Duration::from_secs(5),
            max_attempts: 8,
            max_elapsed: Duration::from_secs(60),
            jitter: 0.5,
            seed: None,
        }
    }
}

/// The state of one reconnect ladder (sans-IO).
///
/// ```
/// use std::time::{Duration, Instant};
/// use peermesh_client::{Backoff, ReconnectPolicy};
///
/// let policy = ReconnectPolicy { jitter: 0.0, max_attempts: 3, ..Default::default() };
/// let mut ladder = Backoff::new(policy, 7);
/// let t0 = Instant::now();
/// assert_eq!(ladder.next_delay(t0), Some(Duration::from_millis(200)));
/// assert_eq!(ladder.next_delay(t0), Some(Duration::from_millis(400)));
/// assert_eq!(ladder.next_delay(t0), Some(Duration::from_millis(800)));
/// assert_eq!(ladder.next_delay(t0), None); // three attempts used
/// assert_eq!(ladder.attempt(), 3);
/// ```
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: ReconnectPolicy,
    rng: StdRng,
    attempt: u32,
    started: Option<Instant>,
}

impl Backoff {
    /// A fresh ladder for `policy`, its jitter drawn from an RNG seeded with `seed`.
    pub fn new(policy: ReconnectPolicy, seed: u64) -> Self {
        Self {
            policy,
            rng: StdRng::seed_from_u64(seed),
            attempt: 0,
            started: None,
        }
    }

    /// A fresh ladder seeded from `policy.seed`, or from the operating system when it is `None`.
    pub fn from_policy(policy: ReconnectPolicy) -> Self {
        let seed = policy.seed.unwrap_or_else(|| rand::rng().random());
        Self::new(policy, seed)
    }

    /// The policy this ladder follows.
    pub fn policy(&self) -> &ReconnectPolicy {
        &self.policy
    }

    /// Number of attempts handed out since the ladder (re)started.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// When the ladder started (the first [`next_delay`](Self::next_delay) call), if it has.
    pub fn started(&self) -> Option<Instant> {
        self.started
    }

    /// Starts a new ladder: call it after a successful handshake.
    pub fn reset(&mut self) {
        self.attempt = 0;
        self.started = None;
    }

    /// The delay to wait, from `now`, before the next attempt; `None` when the ladder is
    /// exhausted (no attempts left, or the time budget is spent).
    ///
    /// The first call starts the ladder's clock at `now`. Each `Some` counts as one attempt.
    pub fn next_delay(&mut self, now: Instant) -> Option<Duration> {
        let started = *self.started.get_or_insert(now);
        if self.attempt >= self.policy.max_attempts {
            return None;
        }
        let spent = now.saturating_duration_since(started);
        let remaining = self.policy.max_elapsed.checked_sub(spent)?;
        // An attempt exactly at the end of the budget is allowed only on the very first call
        // (a zero budget still permits nothing after it).
        if remaining.is_zero() && self.attempt > 0 {
            return None;
        }
        let delay = self.raw_delay().min(remaining);
        self.attempt += 1;
        Some(delay)
    }

    /// The jittered delay for the next attempt, before the budget cap.
    fn raw_delay(&mut self) -> Duration {
        let p = &self.policy;
        let factor = if p.factor.is_finite() {
            p.factor.max(1.0)
        } else {
            1.0
        };
        let exponent = i32::try_from(self.attempt).unwrap_or(i32::MAX);
        let max = p.max_delay.as_secs_f64();
        let grown = p.base_delay.as_secs_f64() * factor.powi(exponent);
        let capped = if grown.is_finite() {
            grown.min(max)
        } else {
            max
        };
        let jitter = if p.jitter.is_finite() {
            p.jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let r: f64 = if jitter > 0.0 { self.rng.random() } else { 0.0 };
        let secs = capped * (1.0 - jitter * r);
        // `try_from_secs_f64` refuses negatives and overflows; both are impossible here
        // (capped <= max, the factor is >= 0), but stay total: fall back to the cap.
        Duration::try_from_secs_f64(secs)
            .unwrap_or(p.max_delay)
            .min(p.max_delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn no_jitter() -> ReconnectPolicy {
        ReconnectPolicy {
            jitter: 0.0,
            ..Default::default()
        }
    }

    #[test]
    fn defaults_match_the_documented_values() {
        let p = ReconnectPolicy::default();
        assert_eq!(p.base_delay, Duration::from_millis(200));
        assert_eq!(p.factor, 2.0);
        assert_eq!(p.max_delay, Duration::from_secs(5));
        assert_eq!(p.max_attempts, 8);
        assert_eq!(p.max_elapsed, Duration::from_secs(60));
    }

    #[test]
    fn doubles_until_the_cap_then_stops_after_max_attempts() {
        let mut b = Backoff::new(no_jitter(), 1);
        let t0 = Instant::now();
        let got: Vec<u128> = std::iter::from_fn(|| b.next_delay(t0))
            .map(|d| d.as_millis())
            .collect();
        assert_eq!(got, [200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        assert_eq!(b.attempt(), 8);
        assert_eq!(b.next_delay(t0), None);
    }

    #[test]
    fn the_time_budget_shortens_then_ends_the_ladder() {
        let policy = ReconnectPolicy {
            max_elapsed: Duration::from_secs(1),
            max_attempts: 100,
            ..no_jitter()
        };
        let mut b = Backoff::new(policy, 1);
        let t0 = Instant::now();
        assert_eq!(b.next_delay(t0), Some(Duration::from_millis(200)));
        // The caller waited, then the attempt took 700 ms to fail: 900 ms spent.
        let t1 = t0 + Duration::from_millis(900);
        assert_eq!(b.next_delay(t1), Some(Duration::from_millis(100)));
        let t2 = t0 + Duration::from_secs(1);
        assert_eq!(b.next_delay(t2), None);
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::new(no_jitter(), 1);
        let t0 = Instant::now();
        b.next_delay(t0);
        b.next_delay(t0);
        b.reset();
        assert_eq!(b.attempt(), 0);
        assert_eq!(b.started(), None);
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(b.next_delay(later), Some(Duration::from_millis(200)));
    }

    #[test]
    fn zero_attempts_disables_reconnection() {
        let policy = ReconnectPolicy {
            max_attempts: 0,
            ..Default::default()
        };
        assert_eq!(Backoff::new(policy, 1).next_delay(Instant::now()), None);
    }

    #[test]
    fn jitter_stays_within_its_band_and_is_reproducible() {
        let t0 = Instant::now();
        let ladder = |seed| {
            let mut b = Backoff::new(ReconnectPolicy::default(), seed);
            std::iter::from_fn(move || b.next_delay(t0)).collect::<Vec<_>>()
        };
        assert_eq!(ladder(42), ladder(42));
        assert_ne!(ladder(42), ladder(43));
        let expected = [200u64, 400, 800, 1600, 3200, 5000, 5000, 5000];
        for (d, full) in ladder(42).iter().zip(expected) {
            let full = Duration::from_millis(full);
            assert!(
                *d <= full && *d > full / 2,
                "{d:?} outside ({:?}, {full:?}]",
                full / 2
            );
        }
    }

    #[test]
    fn silly_policies_do_not_panic() {
        let policy = ReconnectPolicy {
            base_delay: Duration::MAX,
            factor: f64::INFINITY,
            max_delay: Duration::MAX,
            jitter: f64::NAN,
            max_elapsed: Duration::MAX,
            ..Default::default()
        };
        let mut b = Backoff::new(policy, 3);
        let t0 = Instant::now();
        while b.next_delay(t0).is_some() {}
        assert_eq!(b.attempt(), 8);
    }

    proptest! {
        #[test]
        fn ladders_respect_every_bound(
            seed in any::<u64>(),
            base_ms in 0u64..2_000,
            factor in 0.5f64..4.0,
            max_ms in 0u64..10_000,
            max_attempts in 0u32..20,
            budget_ms in 0u64..120_000,
            jitter in 0.0f64..=1.0,
            // How long each failed attempt takes, cycled through.
            costs in proptest::collection::vec(0u64..3_000, 1..8),
        ) {
            let policy = ReconnectPolicy {
                base_delay: Duration::from_millis(base_ms),
                factor,
                max_delay: Duration::from_millis(max_ms),
                max_attempts,
                max_elapsed: Duration::from_millis(budget_ms),
                jitter,
                seed: None,
            };
            let mut b = Backoff::new(policy.clone(), seed);
            let t0 = Instant::now();
            let mut now = t0;
            let mut handed_out = 0u32;
            for i in 0..100usize {
                let Some(delay) = b.next_delay(now) else { break };
                handed_out += 1;
                prop_assert!(delay <= policy.max_delay, "{delay:?} > {:?}", policy.max_delay);
                // The attempt starts after the delay: never past the budget.
                now += delay;
                prop_assert!(now - t0 <= policy.max_elapsed);
                now += Duration::from_millis(costs[i % costs.len()]);
            }
            prop_assert!(handed_out <= policy.max_attempts);
            prop_assert_eq!(handed_out, b.attempt());
            prop_assert_eq!(b.next_delay(now), None);
        }
    }
}
