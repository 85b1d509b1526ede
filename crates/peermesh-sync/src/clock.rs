//! The fixed-timestep loop: real time accumulates, the simulation steps in whole ticks, and the
//! renderer blends between the last two ticks by the remainder.
//!
//! A client may run its clock slightly fast or slow (time dilation, within
//! `max_time_dilation`) to keep the host's input buffer at its target depth; the clock only
//! applies the factor it is given.

use std::time::Duration;

use crate::config::SyncConfig;

/// What one [`Clock::advance`] asks of the caller.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Frame {
    /// Simulation steps to run now, in order (at most `max_steps_per_advance`).
    pub steps: u32,
    /// The tick number of the first of those steps.
    pub first_tick: u64,
    /// How far between the last two ticks to render, in `[0, 1)`.
    pub alpha: f64,
    /// Time dropped because it exceeded the step bound (a stall), if any.
    pub dropped: Duration,
}

/// A fixed-timestep accumulator.
#[derive(Debug, Clone)]
pub struct Clock {
    tick: Duration,
    max_steps: u32,
    max_dilation: f64,
    dilation: f64,
    accumulated: Duration,
    next_tick: u64,
}

impl Clock {
    /// A clock at tick 0 for `config` (which should be [validated](SyncConfig::validate)).
    pub fn new(config: &SyncConfig) -> Self {
        Self {
            tick: config.tick(),
            max_steps: config.max_steps_per_advance.max(1),
            max_dilation: config.max_time_dilation.clamp(0.0, 0.25),
            dilation: 0.0,
            accumulated: Duration::ZERO,
            next_tick: 0,
        }
    }

    /// Sets the time dilation: `0.02` runs 2 % fast, `-0.02` 2 % slow; clamped to the
    /// configured bound.
    pub fn set_dilation(&mut self, factor: f64) {
        let f = if factor.is_finite() { factor } else { 0.0 };
        self.dilation = f.clamp(-self.max_dilation, self.max_dilation);
    }

    /// The dilation in effect.
    pub fn dilation(&self) -> f64 {
        self.dilation
    }

    /// The number of the next tick to simulate.
    pub fn next_tick(&self) -> u64 {
        self.next_tick
    }

    /// Moves the clock to `tick` (after an initial sync or a resync), keeping the remainder.
    pub fn jump_to(&mut self, tick: u64) {
        self.next_tick = tick;
    }

    /// Adds `dt` of real time (scaled by the dilation) and says how many steps to run.
    pub fn advance(&mut self, dt: Duration) -> Frame {
        let scaled = dt.mul_f64(1.0 + self.dilation);
        self.accumulated += scaled;
        let due = self.accumulated.as_nanos() / self.tick.as_nanos().max(1);
        let steps = u32::try_from(due).unwrap_or(u32::MAX).min(self.max_steps);
        self.accumulated -= self.tick * steps;
        let mut dropped = Duration::ZERO;
        if self.accumulated >= self.tick {
            // Keep less than one tick: the rest of a stall is not made up.
            let keep = Duration::from_nanos(
                (self.accumulated.as_nanos() % self.tick.as_nanos().max(1)) as u64,
            );
            dropped = self.accumulated - keep;
            self.accumulated = keep;
        }
        let first_tick = self.next_tick;
        self.next_tick = self.next_tick.saturating_add(u64::from(steps));
        Frame {
            steps,
            first_tick,
            alpha: self.accumulated.as_secs_f64() / self.tick.as_secs_f64(),
            dropped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn steps_whole_ticks_and_blends_the_remainder() {
        let cfg = SyncConfig::default();
        let mut c = Clock::new(&cfg);
        let f = c.advance(Duration::from_millis(10));
        assert_eq!((f.steps, f.first_tick), (0, 0));
        assert!((f.alpha - 0.6).abs() < 1e-6, "{f:?}");
        let f = c.advance(Duration::from_millis(10));
        assert_eq!((f.steps, f.first_tick), (1, 0));
        assert_eq!(c.next_tick(), 1);
    }

    #[test]
    fn a_stall_runs_at_most_the_bound_and_drops_the_rest() {
        let mut c = Clock::new(&SyncConfig::default());
        let f = c.advance(Duration::from_secs(1));
        assert_eq!(f.steps, 8);
        assert!(f.dropped > Duration::from_millis(800), "{f:?}");
        assert!(f.alpha < 1.0);
        let f = c.advance(Duration::ZERO);
        assert_eq!(f.steps, 0, "the stall is not made up later");
    }

    #[test]
    fn dilation_is_bounded_and_speeds_up_or_slows_down() {
        let cfg = SyncConfig::default();
        let mut fast = Clock::new(&cfg);
        fast.set_dilation(0.5);
        assert_eq!(fast.dilation(), 0.05);
        let mut slow = Clock::new(&cfg);
        slow.set_dilation(-0.05);
        let (mut nf, mut ns) = (0, 0);
        for _ in 0..6000 {
            nf += fast.advance(Duration::from_millis(1)).steps;
            ns += slow.advance(Duration::from_millis(1)).steps;
        }
        // 6 s at 60 Hz is 360 ticks; ±5 %.
        assert_eq!((nf, ns), (378, 342));
        fast.set_dilation(f64::NAN);
        assert_eq!(fast.dilation(), 0.0);
    }

    proptest! {
        /// Without stalls, the ticks run equal real time divided by the tick, whatever the
        /// frame sizes.
        #[test]
        fn ticks_track_real_time(frames in prop::collection::vec(0u64..100, 1..400)) {
            let cfg = SyncConfig::default();
            let mut c = Clock::new(&cfg);
            let mut total = Duration::ZERO;
            let mut steps = 0u64;
            for ms in frames {
                let dt = Duration::from_millis(ms);
                total += dt;
                let f = c.advance(dt);
                prop_assert!(f.alpha >= 0.0 && f.alpha < 1.0);
                prop_assert_eq!(f.dropped, Duration::ZERO);
                steps += u64::from(f.steps);
            }
            let want = (total.as_nanos() / cfg.tick().as_nanos()) as u64;
            prop_assert_eq!(steps, want);
        }
    }
}
