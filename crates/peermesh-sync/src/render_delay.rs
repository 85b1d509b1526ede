//! The adaptive interpolation delay: how far behind the newest received state a client renders
//! remote entities, so that it nearly always has a state on each side of the render time.
//!
//! Each state's arrival is compared with when its tick was produced: the offset
//! `arrival − tick × tick duration` is constant on a perfect link, and its spread over the
//! last [`WINDOW`] arrivals (95th percentile minus minimum) is the jitter to absorb. Gaps
//! between consecutive received ticks (a host sending every other tick, or losses) add their
//! own margin. The delay rises at once when more is needed and falls back slowly, so motion
//! does not visibly speed up.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use peermesh_sync::AdaptiveRenderDelay;
//!
//! let tick = Duration::from_nanos(16_666_667);
//! let mut r = AdaptiveRenderDelay::new(tick, 2, 12);
//! assert_eq!(r.delay_ticks(), 4.0); // min + 2 until it has heard something
//! let t0 = Instant::now();
//! for n in 0..200u32 {
//!     r.on_state(t0 + tick * n, u64::from(n)); // a perfect link
//! }
//! assert_eq!(r.delay_ticks(), 2.0);
//! ```

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The number of recent arrivals the jitter and gap estimates look at.
pub const WINDOW: usize = 128;
/// The most the delay falls per accepted state, in ticks.
const SLEW_DOWN: f64 = 0.05;
/// Ticks of delay per tick of jitter.
const JITTER_WEIGHT: f64 = 1.5;

/// An interpolation delay that follows the observed arrival jitter.
#[derive(Debug, Clone)]
pub struct AdaptiveRenderDelay {
    tick_ns: i128,
    min: f64,
    max: f64,
    /// The first accepted arrival and its tick; offsets are measured from it.
    origin: Option<(Instant, u64)>,
    newest: Option<u64>,
    offsets: VecDeque<i128>,
    gaps: VecDeque<u64>,
    jitter_ns: u64,
    delay: f64,
}

/// The nearest-rank 95th percentile of a sorted, non-empty slice.
fn p95<T: Copy>(sorted: &[T]) -> Option<T> {
    let rank = (sorted.len() * 95).div_ceil(100);
    sorted.get(rank.saturating_sub(1)).copied()
}

/// `a − b` in signed nanoseconds.
fn signed_ns(a: Instant, b: Instant) -> i128 {
    if a >= b {
        a.duration_since(b).as_nanos() as i128
    } else {
        -(b.duration_since(a).as_nanos() as i128)
    }
}

impl AdaptiveRenderDelay {
    /// A delay for states produced every `tick` (a zero tick counts as one nanosecond), kept
    /// between `min_ticks` and `max_ticks` (a maximum below the minimum is raised to it). It
    /// starts at `min_ticks + 2`, clamped.
    pub fn new(tick: Duration, min_ticks: u32, max_ticks: u32) -> Self {
        let min = f64::from(min_ticks);
        let max = f64::from(max_ticks.max(min_ticks));
        Self {
            tick_ns: tick.as_nanos().max(1) as i128,
            min,
            max,
            origin: None,
            newest: None,
            offsets: VecDeque::with_capacity(WINDOW),
            gaps: VecDeque::with_capacity(WINDOW),
            jitter_ns: 0,
            delay: (min + 2.0).clamp(min, max),
        }
    }

    /// Records that the state of `tick` arrived at `now`. States no newer than the newest
    /// seen are ignored (they came out of order or twice).
    pub fn on_state(&mut self, now: Instant, tick: u64) {
        if self.newest.is_some_and(|n| tick <= n) {
            return;
        }
        if let Some(prev) = self.newest {
            push_bounded(&mut self.gaps, tick - prev);
        }
        self.newest = Some(tick);
        let (t0, tick0) = *self.origin.get_or_insert((now, tick));
        let produced = i128::from(tick - tick0).saturating_mul(self.tick_ns);
        push_bounded(
            &mut self.offsets,
            signed_ns(now, t0).saturating_sub(produced),
        );

        let mut sorted: Vec<i128> = self.offsets.iter().copied().collect();
        sorted.sort_unstable();
        let spread = match (sorted.first(), p95(&sorted)) {
            (Some(&lo), Some(hi)) => hi.saturating_sub(lo),
            _ => 0,
        };
        self.jitter_ns = u64::try_from(spread).unwrap_or(u64::MAX);

        let mut gaps: Vec<u64> = self.gaps.iter().copied().collect();
        gaps.sort_unstable();
        let gap_margin = p95(&gaps).map_or(0.0, |g| g.saturating_sub(1) as f64);

        let jitter_ticks = self.jitter_ns as f64 / self.tick_ns as f64;
        let target = (1.0 + jitter_ticks * JITTER_WEIGHT + gap_margin).clamp(self.min, self.max);
        self.delay = if target >= self.delay {
            target
        } else {
            (self.delay - SLEW_DOWN).max(target)
        };
    }

    /// How many ticks behind the newest state to render, within the bounds.
    pub fn delay_ticks(&self) -> f64 {
        self.delay
    }

    /// The current delay as a duration.
    pub fn delay(&self) -> Duration {
        let ns = self.delay * self.tick_ns as f64;
        Duration::from_nanos(if ns.is_finite() && ns > 0.0 {
            ns.min(u64::MAX as f64) as u64
        } else {
            0
        })
    }

    /// The arrival jitter over the window: 95th percentile minus minimum of the offsets.
    pub fn jitter(&self) -> Duration {
        Duration::from_nanos(self.jitter_ns)
    }

    /// The newest tick whose state was accepted.
    pub fn newest_tick(&self) -> Option<u64> {
        self.newest
    }
}

fn push_bounded<T>(q: &mut VecDeque<T>, v: T) {
    if q.len() == WINDOW {
        q.pop_front();
    }
    q.push_back(v);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    const TICK: Duration = Duration::from_nanos(16_666_667);

    /// States of ticks `0..n` produced every tick, each arriving after `base + U(0, jitter)`,
    /// fed in arrival order.
    fn jittered(r: &mut AdaptiveRenderDelay, t0: Instant, n: u32, jitter: Duration, seed: u64) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut arrivals: Vec<(Instant, u64)> = (0..n)
            .map(|i| {
                let extra = jitter.mul_f64(rng.random::<f64>());
                (
                    t0 + TICK * i + Duration::from_millis(30) + extra,
                    u64::from(i),
                )
            })
            .collect();
        arrivals.sort();
        for (at, tick) in arrivals {
            r.on_state(at, tick);
        }
    }

    #[test]
    fn steady_arrivals_give_the_minimum() {
        let t0 = Instant::now();
        let mut r = AdaptiveRenderDelay::new(TICK, 2, 12);
        assert_eq!(r.delay_ticks(), 4.0);
        assert_eq!(r.newest_tick(), None);
        for n in 0..300u32 {
            r.on_state(
                t0 + TICK * n + Duration::from_millis(45),
                u64::from(n) + 1000,
            );
        }
        assert_eq!(r.delay_ticks(), 2.0);
        assert_eq!(r.jitter(), Duration::ZERO);
        assert_eq!(r.newest_tick(), Some(1299));
        assert_eq!(r.delay(), TICK * 2);
    }

    #[test]
    fn the_initial_delay_is_clamped_and_bad_bounds_are_mended() {
        assert_eq!(AdaptiveRenderDelay::new(TICK, 2, 3).delay_ticks(), 3.0);
        assert_eq!(AdaptiveRenderDelay::new(TICK, 5, 1).delay_ticks(), 5.0);
        assert_eq!(AdaptiveRenderDelay::new(TICK, 0, 0).delay_ticks(), 0.0);
        let mut r = AdaptiveRenderDelay::new(Duration::ZERO, 1, 4);
        let t0 = Instant::now();
        r.on_state(t0, 0);
        r.on_state(t0 + Duration::from_secs(1), 1);
        assert_eq!(r.delay_ticks(), 4.0);
    }

    #[test]
    fn twenty_ms_of_jitter_at_60_hz_gives_two_to_four_ticks() {
        let t0 = Instant::now();
        let mut r = AdaptiveRenderDelay::new(TICK, 1, 12);
        jittered(&mut r, t0, 1200, Duration::from_millis(20), 3);
        let d = r.delay_ticks();
        assert!((2.0..=4.0).contains(&d), "delay {d}");
        let j = r.jitter();
        assert!(
            j > Duration::from_millis(15) && j <= Duration::from_millis(20),
            "jitter {j:?}"
        );
        // Less jitter, less delay.
        let mut calm = AdaptiveRenderDelay::new(TICK, 1, 12);
        jittered(&mut calm, t0, 1200, Duration::from_millis(5), 3);
        assert!(calm.delay_ticks() < d);
    }

    #[test]
    fn gaps_between_received_ticks_add_a_margin() {
        let t0 = Instant::now();
        // A host that sends every third tick needs three ticks of delay.
        let mut r = AdaptiveRenderDelay::new(TICK, 1, 12);
        for n in 0..300u32 {
            r.on_state(t0 + TICK * (3 * n), u64::from(3 * n));
        }
        assert_eq!(r.jitter(), Duration::ZERO);
        assert!((r.delay_ticks() - 3.0).abs() < 1e-9, "{}", r.delay_ticks());
        // An occasional lost state (under 5 %) does not.
        let mut r = AdaptiveRenderDelay::new(TICK, 1, 12);
        for n in (0..600u32).filter(|n| n % 50 != 7) {
            r.on_state(t0 + TICK * n, u64::from(n));
        }
        assert!((r.delay_ticks() - 1.0).abs() < 1e-9, "{}", r.delay_ticks());
    }

    #[test]
    fn old_and_repeated_ticks_are_ignored() {
        let t0 = Instant::now();
        let mut r = AdaptiveRenderDelay::new(TICK, 2, 12);
        for n in 0..200u32 {
            r.on_state(t0 + TICK * n, u64::from(n));
        }
        // A very late old state and a repeat change nothing.
        r.on_state(t0 + Duration::from_secs(60), 10);
        r.on_state(t0 + Duration::from_secs(60), 199);
        assert_eq!(r.jitter(), Duration::ZERO);
        assert_eq!(r.newest_tick(), Some(199));
        assert_eq!(r.delay_ticks(), 2.0);
    }

    #[test]
    fn a_stall_raises_the_delay_at_once_and_it_falls_back_slowly() {
        let t0 = Instant::now();
        let mut r = AdaptiveRenderDelay::new(TICK, 2, 12);
        let mut n = 0u32;
        let state = |r: &mut AdaptiveRenderDelay, at: Instant, n: &mut u32| {
            r.on_state(at, u64::from(*n));
            *n += 1;
        };
        while n < 300 {
            state(&mut r, t0 + TICK * n, &mut n);
        }
        assert_eq!(r.delay_ticks(), 2.0);
        // 200 ms of nothing, then the twelve held-back states at once.
        let burst_at = t0 + TICK * n + Duration::from_millis(200);
        for _ in 0..12 {
            state(&mut r, burst_at, &mut n);
        }
        let peak = r.delay_ticks();
        assert!(peak >= 8.0, "peak {peak}");
        assert!(r.jitter() >= Duration::from_millis(90), "{:?}", r.jitter());
        // Back to steady arrivals: it falls by at most 0.05 tick a state, back to the minimum.
        let mut last = peak;
        let mut calls = 0;
        while r.delay_ticks() > 2.0 && calls < 1000 {
            state(&mut r, t0 + TICK * n, &mut n);
            let d = r.delay_ticks();
            assert!(d <= last + 1e-12, "rose without cause: {last} → {d}");
            assert!(last - d <= SLEW_DOWN + 1e-9, "fell too fast: {last} → {d}");
            last = d;
            calls += 1;
        }
        assert_eq!(r.delay_ticks(), 2.0);
        // The burst stays in the window for a while, then the fall takes (peak − 2) / 0.05.
        assert!(calls > 150, "back after {calls} states");
    }

    proptest! {
        /// Whatever arrives, the delay stays within its bounds.
        #[test]
        fn the_delay_stays_within_bounds(
            lo in 0u32..20,
            hi in 0u32..20,
            tick_us in 0u64..100_000,
            states in prop::collection::vec((0u64..500, -5i64..20), 0..400),
        ) {
            let t0 = Instant::now();
            let mut r = AdaptiveRenderDelay::new(Duration::from_micros(tick_us), lo, hi);
            let (min, max) = (f64::from(lo), f64::from(hi.max(lo)));
            let mut now = t0;
            let mut tick = 1_000u64;
            for (dt, dtick) in states {
                now += Duration::from_millis(dt);
                tick = tick.saturating_add_signed(dtick);
                r.on_state(now, tick);
                let d = r.delay_ticks();
                prop_assert!(d >= min && d <= max, "{d} outside {min}..={max}");
            }
        }
    }
}
