//! The client's time-dilation controller: it keeps the host's input buffer for this client at
//! its target depth by running the client's clock slightly fast or slow.
//!
//! The host reports, for each input it receives, how many ticks before it was needed the
//! input arrived (negative when late). The controller smooths those reports and answers with
//! a small factor for [`Clock::set_dilation`](crate::Clock::set_dilation): positive (run
//! faster) when inputs arrive with too little margin, negative when they wait too long.
//!
//! ```
//! use peermesh_sync::TimeDilation;
//!
//! let mut d = TimeDilation::new(4.0, 0.05);
//! assert_eq!(d.factor(), 0.0); // nothing heard yet
//! d.observe(1.0); // inputs arrive only one tick early: speed up
//! assert!(d.factor() > 0.0);
//! d.reset();
//! d.observe(4.2); // within the deadband: leave the clock alone
//! assert_eq!(d.factor(), 0.0);
//! ```

/// Weight of each new report in the moving average.
const ALPHA: f64 = 0.1;
/// Dilation per tick of error beyond the deadband.
const GAIN: f64 = 0.01;
/// Error, in ticks, that is left alone (reports are whole ticks and jitter).
const DEADBAND: f64 = 0.5;
/// Reports beyond this many ticks either way are taken as this many (keeps the average
/// finite whatever arrives).
const LIMIT: f64 = 1.0e6;

/// A proportional controller from reported input-buffer depth to clock dilation.
#[derive(Debug, Clone, PartialEq)]
pub struct TimeDilation {
    target: f64,
    max: f64,
    smoothed: Option<f64>,
}

impl TimeDilation {
    /// A controller aiming at `target_depth_ticks` of buffered input, whose factor never
    /// exceeds `max_dilation` either way. A non-finite target counts as 0 and a non-finite or
    /// negative bound as 0 (the clock is then never dilated).
    pub fn new(target_depth_ticks: f64, max_dilation: f64) -> Self {
        let target = if target_depth_ticks.is_finite() {
            target_depth_ticks.clamp(-LIMIT, LIMIT)
        } else {
            0.0
        };
        let max = if max_dilation.is_finite() {
            max_dilation.max(0.0)
        } else {
            0.0
        };
        Self {
            target,
            max,
            smoothed: None,
        }
    }

    /// Takes one report: the client's input for a tick reached the host `depth_ticks` before
    /// it was needed (negative: after). Non-finite reports are ignored.
    pub fn observe(&mut self, depth_ticks: f64) {
        if !depth_ticks.is_finite() {
            return;
        }
        let d = depth_ticks.clamp(-LIMIT, LIMIT);
        self.smoothed = Some(match self.smoothed {
            None => d,
            Some(s) => s + ALPHA * (d - s),
        });
    }

    /// The dilation to apply: positive to run faster, negative slower, 0 within half a tick
    /// of the target or before any report; always within `±max_dilation`.
    pub fn factor(&self) -> f64 {
        let Some(s) = self.smoothed else {
            return 0.0;
        };
        let error = self.target - s;
        if !error.is_finite() || error.abs() <= DEADBAND {
            return 0.0;
        }
        let f = GAIN * (error - DEADBAND.copysign(error));
        f.clamp(-self.max, self.max)
    }

    /// The smoothed depth, in ticks, once a report has arrived.
    pub fn smoothed_depth(&self) -> Option<f64> {
        self.smoothed
    }

    /// The depth aimed at, in ticks.
    pub fn target(&self) -> f64 {
        self.target
    }

    /// Forgets every report (after a resync or a reconnect).
    pub fn reset(&mut self) {
        self.smoothed = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Clock, SyncConfig};
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::collections::VecDeque;
    use std::time::Duration;

    #[test]
    fn the_sign_follows_the_error_with_a_deadband_and_a_bound() {
        let at = |depth: f64| {
            let mut d = TimeDilation::new(4.0, 0.05);
            d.observe(depth);
            d.factor()
        };
        assert_eq!(at(4.0), 0.0);
        assert_eq!(at(3.5), 0.0);
        assert_eq!(at(4.5), 0.0);
        assert!((at(2.5) - 0.01).abs() < 1e-12, "{}", at(2.5));
        assert!((at(5.5) + 0.01).abs() < 1e-12, "{}", at(5.5));
        assert_eq!(at(-100.0), 0.05);
        assert_eq!(at(100.0), -0.05);
        // Proportional: twice the error beyond the deadband, twice the factor.
        assert!((at(1.5) - 2.0 * at(2.5)).abs() < 1e-12);
    }

    #[test]
    fn reports_are_smoothed_and_non_finite_ones_ignored() {
        let mut d = TimeDilation::new(4.0, 0.05);
        assert_eq!(d.smoothed_depth(), None);
        d.observe(f64::NAN);
        assert_eq!(d.smoothed_depth(), None);
        d.observe(2.0);
        assert_eq!(d.smoothed_depth(), Some(2.0));
        d.observe(12.0);
        assert!((d.smoothed_depth().unwrap_or(0.0) - 3.0).abs() < 1e-12);
        d.observe(f64::INFINITY);
        d.observe(f64::NEG_INFINITY);
        assert!((d.smoothed_depth().unwrap_or(0.0) - 3.0).abs() < 1e-12);
        // One wild report moves the average by a tenth of its distance.
        d.observe(f64::MAX);
        assert!(d.smoothed_depth().is_some_and(f64::is_finite));
        assert_eq!(d.factor(), -0.05);
        d.reset();
        assert_eq!((d.smoothed_depth(), d.factor()), (None, 0.0));
        assert_eq!(d.target(), 4.0);
    }

    #[test]
    fn bad_settings_never_dilate() {
        for d in [
            TimeDilation::new(4.0, f64::NAN),
            TimeDilation::new(4.0, -0.1),
            TimeDilation::new(4.0, f64::INFINITY),
        ] {
            let mut d = d;
            d.observe(-50.0);
            assert_eq!(d.factor(), 0.0);
        }
        let mut d = TimeDilation::new(f64::NAN, 0.05);
        d.observe(0.0);
        assert_eq!(d.factor(), 0.0);
    }

    /// A client at 60 Hz whose inputs take `one_way` to reach the host, and whose depth
    /// reports take as long to come back, plus up to `noise` ticks of report jitter. Returns
    /// the true depth of each tick's input, and checks the factor's bound on the way.
    fn closed_loop(start_error_ticks: i64, noise: f64, seconds: u64) -> Vec<(f64, f64)> {
        let cfg = SyncConfig::default();
        let tick = cfg.tick();
        let tick_ns = tick.as_nanos() as i64;
        let one_way = Duration::from_millis(50);
        let target = 4.0;
        let max = cfg.max_time_dilation;
        let mut rng = StdRng::seed_from_u64(1);
        let mut ctl = TimeDilation::new(target, max);
        let mut clock = Clock::new(&cfg);
        // The host's tick at real time t is t / tick. An input sent at t for tick n arrives at
        // t + one_way and is needed at n * tick: a client in step sends for tick
        // (t + one_way) / tick + target. This one starts `start_error_ticks` behind that.
        let lead = (one_way.as_nanos() as i64) / tick_ns + target as i64;
        clock.jump_to(u64::try_from(lead - start_error_ticks + 100).unwrap_or(0));
        let host_offset = 100i64; // the host starts at tick 100
        let mut reports: VecDeque<(i64, f64)> = VecDeque::new();
        let mut out = Vec::new();
        let frames = seconds as i64 * 60;
        for k in 0..frames {
            let now_ns = k * tick_ns;
            // Reports that made it back.
            while reports.front().is_some_and(|&(at, _)| at <= now_ns) {
                if let Some((_, depth)) = reports.pop_front() {
                    ctl.observe(depth);
                }
            }
            let f = ctl.factor();
            assert!(f.abs() <= max, "factor {f}");
            clock.set_dilation(f);
            let frame = clock.advance(tick);
            for i in 0..frame.steps {
                let n = (frame.first_tick + u64::from(i)) as i64;
                let arrive_ns = now_ns + one_way.as_nanos() as i64;
                let host_tick = arrive_ns as f64 / tick_ns as f64 + host_offset as f64;
                let depth = n as f64 - host_tick;
                let heard = depth + noise * (rng.random::<f64>() * 2.0 - 1.0);
                reports.push_back((arrive_ns + one_way.as_nanos() as i64, heard.round()));
                out.push((now_ns as f64 / 1e9, depth));
            }
        }
        out
    }

    /// The time after which every true depth stays within `tolerance` of the target.
    fn settled_after(run: &[(f64, f64)], tolerance: f64) -> f64 {
        run.iter()
            .rev()
            .find(|&&(_, d)| (d - 4.0).abs() > tolerance)
            .map_or(0.0, |&(t, _)| t)
    }

    #[test]
    fn a_client_six_ticks_late_converges_within_ten_seconds() {
        let run = closed_loop(6, 0.0, 30);
        assert!(run[0].1 < -1.5, "starts late: {:?}", run[0]);
        let t = settled_after(&run, 1.0);
        // At most 5 % fast, five ticks take at least 5 / (60 * 0.05) s to make up.
        assert!(t > 1.5 && t < 10.0, "settled after {t} s");
        // It got there by speeding up: more ticks than real time alone gives.
        assert!(run.len() > 30 * 60);
    }

    #[test]
    fn a_client_six_ticks_early_slows_down_and_converges() {
        let run = closed_loop(-6, 0.0, 30);
        assert!(run[0].1 > 9.5, "starts early: {:?}", run[0]);
        assert!(settled_after(&run, 1.0) < 10.0);
        assert!(run.len() < 30 * 60);
    }

    #[test]
    fn noisy_reports_still_converge_on_average() {
        let run = closed_loop(6, 1.5, 30);
        let last: Vec<f64> = run.iter().filter(|p| p.0 >= 10.0).map(|p| p.1).collect();
        let mean = last.iter().sum::<f64>() / last.len() as f64;
        assert!((mean - 4.0).abs() < 1.0, "mean depth {mean}");
        assert!(last.iter().all(|d| (d - 4.0).abs() < 2.0));
    }

    proptest! {
        /// Whatever the settings and reports, the factor stays within the bound and finite.
        #[test]
        fn the_factor_is_always_bounded(
            target in prop_oneof![any::<f64>(), -20.0f64..20.0],
            max in prop_oneof![any::<f64>(), 0.0f64..0.25],
            reports in prop::collection::vec(prop_oneof![any::<f64>(), -50.0f64..50.0], 0..200),
        ) {
            let mut d = TimeDilation::new(target, max);
            let bound = if max.is_finite() { max.max(0.0) } else { 0.0 };
            for r in reports {
                d.observe(r);
                let f = d.factor();
                prop_assert!(f.is_finite());
                prop_assert!(f.abs() <= bound, "{f} beyond {bound}");
            }
        }
    }
}
