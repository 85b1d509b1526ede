//! Shared measurement plumbing: the clock, measurement windows, latency histograms, error logs
//! and samples of delivery counters and CPU time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use super::target::{cpu_time, Measured};

/// The bench's time origin: timestamps in payloads are nanoseconds since it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    epoch: Instant,
}

impl Clock {
    /// A clock starting now.
    pub(crate) fn new() -> Self {
        Self {
            epoch: Instant::now(),
        }
    }

    /// Nanoseconds from the epoch to `t` (0 before the epoch).
    pub(crate) fn ns(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }
}

/// One measurement step: warm up, measure, then drain what is still in flight.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window {
    /// Sending starts.
    pub(crate) start: Instant,
    /// Measurement starts: latencies of messages sent from here on count.
    pub(crate) measure_start: Instant,
    /// Sending stops.
    pub(crate) end: Instant,
    /// Waiting for in-flight messages stops.
    pub(crate) drain_until: Instant,
    /// `measure_start` in clock nanoseconds.
    pub(crate) measure_start_ns: u64,
    /// `end` in clock nanoseconds.
    pub(crate) end_ns: u64,
}

impl Window {
    /// A window starting now.
    pub(crate) fn starting_now(
        clock: &Clock,
        warmup: Duration,
        duration: Duration,
        drain: Duration,
    ) -> Self {
        let start = Instant::now();
        let measure_start = start + warmup;
        let end = measure_start + duration;
        Self {
            start,
            measure_start,
            end,
            drain_until: end + drain,
            measure_start_ns: clock.ns(measure_start),
            end_ns: clock.ns(end),
        }
    }

    /// Whether a message sent at `sent_ns` and received at `now_ns` counts for latency.
    pub(crate) fn counts(&self, sent_ns: u64, now_ns: u64) -> bool {
        sent_ns >= self.measure_start_ns && now_ns <= self.end_ns
    }
}

/// A latency histogram in nanoseconds (1 ns to 60 s, 3 significant digits).
pub(crate) fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that satisfy hdrhistogram's rules (low >= 1, high >= 2 * low).
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid constant histogram bounds")
}

/// A histogram shared by the connections of one task, fed in batches.
pub(crate) struct Recorder {
    hist: Mutex<Histogram<u64>>,
}

impl Recorder {
    /// An empty recorder.
    pub(crate) fn new() -> Self {
        Self {
            hist: Mutex::new(new_histogram()),
        }
    }

    /// Records a batch of latencies (ns) and clears it.
    pub(crate) fn record(&self, batch: &mut Vec<u64>) {
        if batch.is_empty() {
            return;
        }
        let mut h = self.hist.lock().unwrap_or_else(|e| e.into_inner());
        for &v in batch.iter() {
            h.saturating_record(v.max(1));
        }
        batch.clear();
    }

    /// Adds this recorder's samples into `into`.
    pub(crate) fn merge_into(&self, into: &mut Histogram<u64>) {
        let h = self.hist.lock().unwrap_or_else(|e| e.into_inner());
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = into.add(&*h);
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Latency {
    /// Number of samples.
    pub(crate) samples: u64,
    /// Median.
    pub(crate) p50_us: f64,
    /// 99th percentile.
    pub(crate) p99_us: f64,
    /// 99.9th percentile.
    pub(crate) p999_us: f64,
    /// Largest sample.
    pub(crate) max_us: f64,
}

impl Latency {
    /// Percentiles of a histogram of nanoseconds.
    pub(crate) fn of(h: &Histogram<u64>) -> Self {
        let us = |ns: u64| (ns as f64 / 1000.0 * 10.0).round() / 10.0;
        Self {
            samples: h.len(),
            p50_us: us(h.value_at_quantile(0.5)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        }
    }
}

/// Errors seen during a scenario: how many, and the first one in words.
#[derive(Default)]
pub(crate) struct ErrorLog {
    count: AtomicU64,
    first: Mutex<Option<String>>,
}

impl ErrorLog {
    /// Counts an error and keeps its text if it is the first.
    pub(crate) fn record(&self, what: impl std::fmt::Display) {
        if self.count.fetch_add(1, Ordering::Relaxed) == 0 {
            let mut first = self.first.lock().unwrap_or_else(|e| e.into_inner());
            if first.is_none() {
                *first = Some(what.to_string());
            }
        }
    }

    /// The number of errors.
    pub(crate) fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The first error's text.
    pub(crate) fn first(&self) -> Option<String> {
        self.first.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A snapshot of counters at one instant.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    at: Instant,
    delivered: u64,
    server_cpu: Option<(Duration, Duration)>,
    broker_cpu: Option<Duration>,
    own_cpu: Option<Duration>,
    machine: Option<MachineCpu>,
}

/// Machine-wide CPU time from `/proc/stat`.
#[derive(Debug, Clone, Copy)]
struct MachineCpu {
    /// Time any core spent doing something (user, nice, system, irq, softirq).
    busy: Duration,
    /// Time the hypervisor gave our cores to someone else.
    steal: Duration,
}

fn machine_cpu() -> Option<MachineCpu> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let f: Vec<u64> = line
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let get = |i: usize| f.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal, in USER_HZ (100 per second).
    let busy = get(0) + get(1) + get(2) + get(5) + get(6);
    Some(MachineCpu {
        busy: Duration::from_millis(busy * 10),
        steal: Duration::from_millis(get(7) * 10),
    })
}

impl Sample {
    /// Takes a snapshot.
    pub(crate) fn take(delivered: &AtomicU64, measured: &Measured) -> Self {
        Self {
            at: Instant::now(),
            delivered: delivered.load(Ordering::SeqCst),
            server_cpu: measured.server_cpu(),
            broker_cpu: measured.broker_cpu(),
            own_cpu: cpu_time("self"),
            machine: machine_cpu(),
        }
    }

    /// Rates between two snapshots.
    pub(crate) fn rates(&self, later: &Sample) -> Rates {
        let secs = later.at.saturating_duration_since(self.at).as_secs_f64();
        let pct = |a: Option<Duration>, b: Option<Duration>| match (a, b) {
            (Some(a), Some(b)) if secs > 0.0 => {
                Some((b.saturating_sub(a).as_secs_f64() / secs * 1000.0).round() / 10.0)
            }
            _ => None,
        };
        let delivered = later.delivered.saturating_sub(self.delivered);
        let total = |c: Option<(Duration, Duration)>| c.map(|(u, s)| u + s);
        let sys = |c: Option<(Duration, Duration)>| c.map(|(_, s)| s);
        let server_cpu_pct = pct(total(self.server_cpu), total(later.server_cpu));
        let server_sys_pct = pct(sys(self.server_cpu), sys(later.server_cpu));
        let generator_cpu_pct = pct(self.own_cpu, later.own_cpu);
        let broker_cpu_pct = pct(self.broker_cpu, later.broker_cpu);
        let busy_pct = pct(self.machine.map(|m| m.busy), later.machine.map(|m| m.busy));
        let other_cpu_pct = busy_pct.map(|b| {
            let other = b
                - server_cpu_pct.unwrap_or(0.0)
                - generator_cpu_pct.unwrap_or(0.0)
                - broker_cpu_pct.unwrap_or(0.0);
            (other.max(0.0) * 10.0).round() / 10.0
        });
        Rates {
            secs,
            delivered,
            per_sec: if secs > 0.0 {
                (delivered as f64 / secs).round()
            } else {
                0.0
            },
            server_cpu_pct,
            server_sys_pct,
            broker_cpu_pct,
            generator_cpu_pct,
            other_cpu_pct,
            steal_pct: pct(
                self.machine.map(|m| m.steal),
                later.machine.map(|m| m.steal),
            ),
        }
    }
}

/// What happened between two samples.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct Rates {
    /// Length of the measurement window in seconds.
    pub(crate) secs: f64,
    /// Deliveries counted in the window.
    pub(crate) delivered: u64,
    /// Deliveries per second.
    pub(crate) per_sec: f64,
    /// CPU used by the server, in percent of one core.
    pub(crate) server_cpu_pct: Option<f64>,
    /// Part of `server_cpu_pct` spent in the kernel (system calls, TCP).
    pub(crate) server_sys_pct: Option<f64>,
    /// CPU used by the message broker of a cluster (nats-server), in percent of one core;
    /// absent without one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) broker_cpu_pct: Option<f64>,
    /// CPU used by this load generator, in percent of one core.
    pub(crate) generator_cpu_pct: Option<f64>,
    /// CPU used by every other process on the machine (not the servers, the broker or the
    /// generator), in percent of one core: anything
    /// far from 0 means the figures were disturbed.
    pub(crate) other_cpu_pct: Option<f64>,
    /// CPU time the hypervisor took from this machine, in percent of one core.
    pub(crate) steal_pct: Option<f64>,
}

/// Splits `items` into at most `groups` chunks of nearly equal size.
pub(crate) fn split_groups<T>(items: Vec<T>, groups: usize) -> Vec<Vec<T>> {
    let groups = groups.max(1).min(items.len().max(1));
    let mut out: Vec<Vec<T>> = (0..groups).map(|_| Vec::new()).collect();
    for (i, item) in items.into_iter().enumerate() {
        out[i % groups].push(item);
    }
    out.retain(|g| !g.is_empty());
    out
}

/// A counter of live senders that wakes the controller when the last one stops.
pub(crate) struct Senders {
    active: AtomicU64,
    /// Notified when `active` drops to zero.
    pub(crate) all_done: tokio::sync::Notify,
}

impl Senders {
    /// `n` senders, all active.
    pub(crate) fn new(n: usize) -> Arc<Self> {
        Arc::new(Self {
            active: AtomicU64::new(n as u64),
            all_done: tokio::sync::Notify::new(),
        })
    }

    /// One sender stopped sending.
    pub(crate) fn done(&self) {
        if self.active.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.all_done.notify_one();
        }
    }
}

/// Waits for the measurement window and samples the delivery counter at its edges.
///
/// The window closes at `window.end`, or earlier when every sender stopped (message cap).
pub(crate) async fn measure(
    window: &Window,
    delivered: &AtomicU64,
    measured: &Measured,
    senders: &Senders,
) -> Rates {
    let done = senders.all_done.notified();
    tokio::pin!(done);
    done.as_mut().enable();
    tokio::select! {
        _ = tokio::time::sleep_until(window.measure_start.into()) => {}
        _ = &mut done => {
            // Everything was sent during the warm-up: nothing to measure.
            return Rates::default();
        }
    }
    let first = Sample::take(delivered, measured);
    tokio::select! {
        _ = tokio::time::sleep_until(window.end.into()) => {}
        _ = &mut done => {}
    }
    let last = Sample::take(delivered, measured);
    first.rates(&last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_balanced() {
        let g = split_groups((0..10).collect(), 4);
        assert_eq!(g.len(), 4);
        assert_eq!(g.iter().map(Vec::len).sum::<usize>(), 10);
        assert_eq!(split_groups(vec![1], 4).len(), 1);
        assert!(split_groups(Vec::<u8>::new(), 4).is_empty());
    }

    #[test]
    fn latency_summary() {
        let r = Recorder::new();
        let mut batch: Vec<u64> = (1..=1000).map(|i| i * 1000).collect();
        r.record(&mut batch);
        assert!(batch.is_empty());
        let mut h = new_histogram();
        r.merge_into(&mut h);
        let l = Latency::of(&h);
        assert_eq!(l.samples, 1000);
        assert!((l.p50_us - 500.0).abs() < 1.0, "{l:?}");
        assert!((l.p99_us - 990.0).abs() < 1.0, "{l:?}");
    }
}
