//! The client's reconnect ladder: after the connection to the host is lost, when to try again.
//!
//! Waits double from `base` up to `max`, each spread by ±20 % of seeded jitter so that many
//! clients cut off together do not knock in lockstep; once `give_up_after` has passed since
//! the loss the ladder gives up. The ladder only keeps time: the caller makes the attempts,
//! and reports success with [`ReconnectLadder::on_connected`].
//!
//! ```
//! use std::time::{Duration, Instant};
//! use peermesh_sync::{LadderStep, ReconnectLadder};
//!
//! let mut ladder = ReconnectLadder::default(); // 200 ms, doubling to 5 s, give up after 60 s
//! let t0 = Instant::now();
//! assert_eq!(ladder.poll(t0), LadderStep::Idle);
//! ladder.on_lost(t0);
//! let first = ladder.next_attempt().expect("scheduled");
//! assert!(first >= t0 + Duration::from_millis(160) && first <= t0 + Duration::from_millis(240));
//! assert_eq!(ladder.poll(t0), LadderStep::Wait(first));
//! assert_eq!(ladder.poll(first), LadderStep::Attempt { number: 1 });
//! assert_eq!(ladder.poll(t0 + Duration::from_secs(60)), LadderStep::GiveUp);
//! assert_eq!(ladder.poll(t0 + Duration::from_secs(61)), LadderStep::Idle);
//! ```

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Longest span the ladder works with; longer settings are taken as this (a year: never, for
/// a session, and always representable as an `Instant` offset).
pub const MAX_SPAN: Duration = Duration::from_secs(365 * 24 * 3600);
/// The spread of each wait around its nominal value, either way.
pub const JITTER: f64 = 0.2;

/// What [`ReconnectLadder::poll`] asks of the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LadderStep {
    /// Connected (or given up): nothing to do.
    Idle,
    /// Nothing to do before this instant; poll again then.
    Wait(Instant),
    /// Try to reconnect now; this is the `number`th attempt since the loss (from 1).
    Attempt {
        /// The attempt's number, from 1.
        number: u32,
    },
    /// The window has passed without a connection: stop trying. Reported once, then
    /// [`LadderStep::Idle`].
    GiveUp,
}

#[derive(Debug, Clone)]
enum State {
    Idle,
    Climbing {
        give_up_at: Instant,
        attempts: u32,
        next: Instant,
    },
}

/// Exponential backoff with jitter and a deadline, in caller-given time.
#[derive(Debug, Clone)]
pub struct ReconnectLadder {
    base: Duration,
    max: Duration,
    give_up_after: Duration,
    rng: StdRng,
    state: State,
}

impl Default for ReconnectLadder {
    /// 200 ms doubling to 5 s, giving up after 60 s, with seed 0 (give each client its own
    /// seed through [`ReconnectLadder::new`] to spread their attempts).
    fn default() -> Self {
        Self::new(
            Duration::from_millis(200),
            Duration::from_secs(5),
            Duration::from_secs(60),
            0,
        )
    }
}

impl ReconnectLadder {
    /// A ladder waiting `base` before the first attempt, doubling up to `max` (raised to
    /// `base` if below it) and giving up `give_up_after` after the loss; `seed` fixes the
    /// jitter. Durations beyond [`MAX_SPAN`] are taken as it.
    pub fn new(base: Duration, max: Duration, give_up_after: Duration, seed: u64) -> Self {
        let base = base.min(MAX_SPAN);
        Self {
            base,
            max: max.clamp(base, MAX_SPAN),
            give_up_after: give_up_after.min(MAX_SPAN),
            rng: StdRng::seed_from_u64(seed),
            state: State::Idle,
        }
    }

    /// The connection was lost at `now`: start climbing. Ignored while already climbing (the
    /// window runs from the first loss).
    pub fn on_lost(&mut self, now: Instant) {
        if matches!(self.state, State::Climbing { .. }) {
            return;
        }
        let first = self.wait_before(1);
        self.state = State::Climbing {
            give_up_at: later(now, self.give_up_after),
            attempts: 0,
            next: later(now, first),
        };
    }

    /// The connection is back: stop climbing; the next loss starts again from `base`.
    pub fn on_connected(&mut self) {
        self.state = State::Idle;
    }

    /// When the next attempt is due, if one is before the give-up time.
    pub fn next_attempt(&self) -> Option<Instant> {
        match self.state {
            State::Climbing {
                give_up_at, next, ..
            } if next < give_up_at => Some(next),
            _ => None,
        }
    }

    /// Attempts made since the loss (0 when idle).
    pub fn attempts(&self) -> u32 {
        match self.state {
            State::Climbing { attempts, .. } => attempts,
            State::Idle => 0,
        }
    }

    /// What to do at `now`: wait, attempt (the next wait starts now), or give up.
    pub fn poll(&mut self, now: Instant) -> LadderStep {
        let State::Climbing {
            give_up_at,
            attempts,
            next,
        } = self.state
        else {
            return LadderStep::Idle;
        };
        if now >= give_up_at {
            self.state = State::Idle;
            return LadderStep::GiveUp;
        }
        if now < next {
            return LadderStep::Wait(next.min(give_up_at));
        }
        let number = attempts.saturating_add(1);
        let wait = self.wait_before(number.saturating_add(1));
        self.state = State::Climbing {
            give_up_at,
            attempts: number,
            next: later(now, wait),
        };
        LadderStep::Attempt { number }
    }

    /// The nominal wait before attempt `number` (from 1): `base` doubled per earlier attempt,
    /// at most `max`.
    pub fn nominal_wait(&self, number: u32) -> Duration {
        let doublings = number.saturating_sub(1).min(31);
        self.base.saturating_mul(1 << doublings).min(self.max)
    }

    /// The nominal wait spread by a fresh draw within ±[`JITTER`].
    fn wait_before(&mut self, number: u32) -> Duration {
        let nominal = self.nominal_wait(number);
        let f = (1.0 - JITTER + 2.0 * JITTER * self.rng.random::<f64>())
            .clamp(1.0 - JITTER, 1.0 + JITTER);
        Duration::try_from_secs_f64(nominal.as_secs_f64() * f).unwrap_or(nominal)
    }
}

/// `now + d`, or `now` in the (unreachable with [`MAX_SPAN`]) case it cannot be represented.
fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Polls exactly when asked until the ladder gives up; returns the attempt instants.
    fn climb(ladder: &mut ReconnectLadder, t0: Instant) -> (Vec<Instant>, Instant) {
        ladder.on_lost(t0);
        let mut now = t0;
        let mut attempts = Vec::new();
        for _ in 0..10_000 {
            match ladder.poll(now) {
                LadderStep::Wait(t) => {
                    assert!(t > now);
                    now = t;
                }
                LadderStep::Attempt { number } => {
                    attempts.push(now);
                    assert_eq!(number as usize, attempts.len());
                    assert_eq!(ladder.attempts(), number);
                }
                LadderStep::GiveUp => return (attempts, now),
                LadderStep::Idle => panic!("idle while climbing"),
            }
        }
        panic!("never gave up");
    }

    #[test]
    fn waits_double_from_base_and_cap_at_max_within_the_jitter() {
        let t0 = Instant::now();
        let mut ladder = ReconnectLadder::new(ms(200), ms(5000), Duration::from_secs(120), 9);
        let (attempts, _) = climb(&mut ladder, t0);
        let nominal = [200u64, 400, 800, 1600, 3200, 5000, 5000, 5000];
        let mut prev = t0;
        for (i, &at) in attempts.iter().enumerate() {
            let want = ms(*nominal.get(i).unwrap_or(&5000));
            assert_eq!(ladder.nominal_wait(i as u32 + 1), want);
            let wait = at - prev;
            assert!(
                wait >= want.mul_f64(0.8) && wait <= want.mul_f64(1.2),
                "attempt {}: waited {wait:?}, nominal {want:?}",
                i + 1
            );
            prev = at;
        }
        assert!(attempts.len() > 20);
        assert_eq!(ladder.nominal_wait(0), ms(200));
        assert_eq!(ladder.nominal_wait(u32::MAX), ms(5000));
    }

    #[test]
    fn the_jitter_spreads_within_twenty_percent() {
        let t0 = Instant::now();
        let (mut lo, mut hi) = (Duration::MAX, Duration::ZERO);
        for seed in 0..2000 {
            let mut ladder = ReconnectLadder::new(ms(1000), ms(8000), ms(60_000), seed);
            ladder.on_lost(t0);
            let first = ladder.next_attempt().expect("scheduled") - t0;
            assert!(first >= ms(800) && first <= ms(1200), "{first:?}");
            lo = lo.min(first);
            hi = hi.max(first);
        }
        assert!(lo < ms(820) && hi > ms(1180), "{lo:?}..{hi:?}");
    }

    #[test]
    fn it_gives_up_once_the_window_has_passed_then_stays_idle() {
        let t0 = Instant::now();
        let mut ladder = ReconnectLadder::default();
        let (attempts, gave_up) = climb(&mut ladder, t0);
        assert_eq!(gave_up, t0 + Duration::from_secs(60));
        assert!(attempts.iter().all(|&a| a < gave_up));
        // About 6 s of doubling, then one every 5 s.
        assert!((13..=18).contains(&attempts.len()), "{}", attempts.len());
        assert_eq!(ladder.poll(gave_up), LadderStep::Idle);
        assert_eq!(ladder.poll(gave_up + ms(1)), LadderStep::Idle);
        assert_eq!(ladder.next_attempt(), None);
        assert_eq!(ladder.attempts(), 0);

        // A caller that sleeps through the window gets the give-up, not a stale attempt.
        let mut ladder = ReconnectLadder::default();
        ladder.on_lost(t0);
        assert_eq!(
            ladder.poll(t0 + Duration::from_secs(600)),
            LadderStep::GiveUp
        );
        // Waits never reach past the give-up time.
        let mut ladder = ReconnectLadder::new(ms(1000), ms(1000), ms(500), 1);
        ladder.on_lost(t0);
        assert_eq!(ladder.next_attempt(), None);
        assert_eq!(ladder.poll(t0), LadderStep::Wait(t0 + ms(500)));
        assert_eq!(ladder.poll(t0 + ms(500)), LadderStep::GiveUp);
    }

    #[test]
    fn connecting_resets_and_a_new_loss_starts_from_base() {
        let t0 = Instant::now();
        let mut ladder = ReconnectLadder::default();
        assert_eq!(ladder.poll(t0), LadderStep::Idle);
        ladder.on_lost(t0);
        let mut now = t0;
        while ladder.attempts() < 5 {
            now = ladder.next_attempt().expect("climbing");
            assert!(matches!(ladder.poll(now), LadderStep::Attempt { .. }));
        }
        // A second loss report while climbing changes nothing.
        let before = ladder.next_attempt();
        ladder.on_lost(now);
        assert_eq!((ladder.next_attempt(), ladder.attempts()), (before, 5));

        ladder.on_connected();
        assert_eq!(ladder.poll(now), LadderStep::Idle);
        assert_eq!(ladder.next_attempt(), None);
        let t1 = now + Duration::from_secs(100);
        ladder.on_lost(t1);
        let first = ladder.next_attempt().expect("scheduled") - t1;
        assert!(first >= ms(160) && first <= ms(240), "{first:?}");
        assert_eq!(ladder.poll(t1 + first), LadderStep::Attempt { number: 1 });
        // The window runs from the new loss.
        assert_ne!(
            ladder.poll(t1 + Duration::from_secs(59)),
            LadderStep::GiveUp
        );
    }

    #[test]
    fn the_schedule_is_fixed_by_the_seed() {
        let t0 = Instant::now();
        let offsets = |seed| {
            let mut l = ReconnectLadder::new(ms(200), ms(5000), ms(60_000), seed);
            let (attempts, _) = climb(&mut l, t0);
            attempts.iter().map(|&a| a - t0).collect::<Vec<_>>()
        };
        assert_eq!(offsets(5), offsets(5));
        assert_ne!(offsets(5), offsets(6));
        // From any base instant.
        let mut l = ReconnectLadder::new(ms(200), ms(5000), ms(60_000), 5);
        let t1 = t0 + Duration::from_secs(999);
        let (attempts, _) = climb(&mut l, t1);
        assert_eq!(
            attempts.iter().map(|&a| a - t1).collect::<Vec<_>>(),
            offsets(5)
        );
    }

    #[test]
    fn extreme_settings_do_not_panic() {
        let t0 = Instant::now();
        let mut l = ReconnectLadder::new(Duration::MAX, Duration::ZERO, Duration::MAX, 1);
        l.on_lost(t0);
        assert_eq!(l.nominal_wait(40), MAX_SPAN);
        assert!(matches!(l.poll(t0), LadderStep::Wait(_)));
        let mut l = ReconnectLadder::new(Duration::ZERO, Duration::ZERO, ms(10), 1);
        l.on_lost(t0);
        assert_eq!(l.poll(t0), LadderStep::Attempt { number: 1 });
        assert_eq!(l.poll(t0), LadderStep::Attempt { number: 2 });
        assert_eq!(l.poll(t0 + ms(10)), LadderStep::GiveUp);
    }

    proptest! {
        /// Polled at arbitrary times, attempts are numbered 1, 2, 3…, never come after the
        /// give-up time, and the give-up is reported exactly once.
        #[test]
        fn polling_at_any_times_keeps_the_rules(
            seed in any::<u64>(),
            base_ms in 0u64..2000,
            max_ms in 0u64..10_000,
            window_ms in 0u64..30_000,
            steps in prop::collection::vec(0u64..3000, 1..200),
        ) {
            let t0 = Instant::now();
            let mut l = ReconnectLadder::new(ms(base_ms), ms(max_ms), ms(window_ms), seed);
            l.on_lost(t0);
            let deadline = t0 + ms(window_ms);
            let mut now = t0;
            let mut expected = 1;
            let mut gave_up = 0;
            for dt in steps {
                now += ms(dt);
                match l.poll(now) {
                    LadderStep::Attempt { number } => {
                        prop_assert_eq!(number, expected);
                        prop_assert!(now < deadline);
                        expected += 1;
                    }
                    LadderStep::Wait(t) => {
                        prop_assert!(t > now && t <= deadline);
                    }
                    LadderStep::GiveUp => {
                        prop_assert!(now >= deadline);
                        gave_up += 1;
                    }
                    LadderStep::Idle => prop_assert_eq!(gave_up, 1),
                }
                if let Some(next) = l.next_attempt() {
                    prop_assert!(next < deadline);
                }
            }
            prop_assert!(gave_up <= 1);
            if now >= deadline {
                prop_assert_eq!(gave_up, 1);
            }
        }
    }
}
