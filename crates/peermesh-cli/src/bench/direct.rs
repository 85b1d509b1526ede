//! Scenario (a): direct messages between client pairs.
//!
//! `pairs` originators `a<i>` each send to an echoer `b<i>`, which sends every message straight
//! back. The payload starts with the originator's send timestamp, so the originator measures the
//! full round trip a → hub → b → hub → a. Every round trip is two messages routed by the server;
//! rates and throughput count both.
//!
//! ```text
//!   originator task(s)                server                echoer task(s)
//!   a0..a(n-1) --emit to b<i>-------> route ---------------> b<i>
//!   a<i> <---------------------------- route <--emit to a<i>- b<i>
//! ```
//!
//! The same machinery measures RPC ([`Flavor::Rpc`]): each echoer provides a
//! service of its own (`provide`), each originator calls it (`call`, answered by `respond`,
//! delivered as `result`; scenario (f)); against Socket.IO, the originator's `emitWithAck` reaches the echoer
//! through the server, which answers through the ack. Rates and throughput then count calls.
//!
//! Against several hubs of a cluster ([`Targets`] with more than one endpoint), originator `a<i>`
//! connects to hub `i mod n` and echoer `b<i>` to hub `(i + echo_shift) mod n`: a shift of 0
//! keeps every pair on one hub, a shift of 1 puts the two ends of every pair on different hubs.
//!
//! A fixed-rate step sends on a schedule (open loop; the connections' schedules are spread over
//! the period so they do not fire together). The `max` step keeps `window` messages in flight per
//! originator (closed loop) and reports what the server sustains.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::future::join_all;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::client::{open, ConnectOpts};
use super::dialect::{Dialect, Incoming, Template};
use super::progress::{self, Progress};
use super::stats::{
    measure, new_histogram, split_groups, Clock, ErrorLog, Latency, Rates, Recorder, Senders,
    Window,
};
use super::target::Targets;
use super::ws::{WsConn, WsError};

/// An offered load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rate {
    /// This many messages per second through the server (both directions counted).
    Fixed(u64),
    /// As many as `window` messages in flight per originator allow.
    Max,
}

impl Rate {
    /// Parses `1000`, `10k`, `50000` or `max`.
    pub(crate) fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim().to_ascii_lowercase();
        if s == "max" {
            return Ok(Rate::Max);
        }
        let (num, mult) = match s.strip_suffix('k') {
            Some(n) => (n, 1000),
            None => (s.as_str(), 1),
        };
        match num.parse::<u64>() {
            Ok(n) if n > 0 => Ok(Rate::Fixed(n * mult)),
            _ => Err(format!(
                "invalid rate {s:?}: expected a positive number, `10k` or `max`"
            )),
        }
    }

    /// Label for reports.
    pub(crate) fn label(self) -> String {
        match self {
            Rate::Fixed(n) => format!("{n}/s"),
            Rate::Max => "max".to_owned(),
        }
    }
}

/// What a round trip is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    /// A direct message and its echo: two messages routed.
    Direct,
    /// A call and its result: one call.
    Rpc,
}

impl Flavor {
    /// Units counted per round trip (messages for direct, calls for RPC).
    fn per_round_trip(self) -> u64 {
        match self {
            Flavor::Direct => 2,
            Flavor::Rpc => 1,
        }
    }
}

/// Settings of the direct-message scenario.
#[derive(Debug, Clone)]
pub(crate) struct DirectConfig {
    /// Direct messages or RPC calls.
    pub(crate) flavor: Flavor,
    /// Originator/echoer pairs.
    pub(crate) pairs: usize,
    /// Offered loads, one step each.
    pub(crate) rates: Vec<Rate>,
    /// Messages in flight per originator in the `max` step.
    pub(crate) window: u64,
    /// Length of the payload string in bytes.
    pub(crate) payload: usize,
    /// Warm-up before measuring, per step.
    pub(crate) warmup: Duration,
    /// Measurement time per step.
    pub(crate) duration: Duration,
    /// How long to wait for in-flight messages after a step.
    pub(crate) drain: Duration,
    /// Most messages an originator sends in one step.
    pub(crate) max_messages: u64,
    /// Tasks driving the connections.
    pub(crate) tasks: usize,
    /// How connections are opened.
    pub(crate) connect: ConnectOpts,
    /// Echoer `b<i>` connects `echo_shift` servers after its originator (round robin over
    /// the targets' endpoints; meaningless with one server).
    pub(crate) echo_shift: usize,
    /// What the progress display calls the steps (`direct`, `rpc`, …).
    pub(crate) label: String,
}

/// The figures of one step.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct DirectStep {
    /// `1000/s` or `max`.
    pub(crate) rate: String,
    /// Offered messages per second (both directions), absent for `max`.
    pub(crate) offered_msgs_per_s: Option<u64>,
    /// Messages per second the server delivered during the measurement window.
    pub(crate) msgs_per_s: f64,
    /// Round-trip latency (originator → server → echoer → server → originator).
    pub(crate) rtt: Latency,
    /// Messages originated in the step.
    pub(crate) sent: u64,
    /// Originated messages whose echo never came back before the drain timeout.
    pub(crate) lost: u64,
    /// Window length, deliveries, CPU use.
    pub(crate) window: Rates,
    /// Errors reported by the server or the connections during the step.
    pub(crate) errors: u64,
    /// The first of them.
    pub(crate) first_error: Option<String>,
}

struct Originator {
    conn: WsConn,
    tpl: Template,
    /// Position of this connection among all originators (spreads the schedules).
    index: usize,
}

/// Runs every step against `targets`.
pub(crate) async fn run(
    targets: &Targets,
    cfg: &DirectConfig,
    clock: Clock,
    progress: &Progress,
    tag: &str,
) -> anyhow::Result<Vec<DirectStep>> {
    let dialect = targets.dialect();
    let delivered = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(ErrorLog::default());
    let cancel = CancellationToken::new();

    // Echoers first, so that every originator's target exists.
    let bar = progress.counter("opening pairs", 2 * cfg.pairs as u64);
    let mut echoers = Vec::with_capacity(cfg.pairs);
    for i in 0..cfg.pairs {
        let id = format!("{tag}b{i}");
        let at = targets.endpoint(i, cfg.echo_shift);
        let mut conn = open(at, &id, 2 * i, 16 << 10, &cfg.connect)
            .await
            .with_context(|| format!("opening echoer {id}"))?;
        if cfg.flavor == Flavor::Rpc {
            dialect
                .provide(&mut conn, &format!("{tag}s{i}"), cfg.connect.timeout)
                .await
                .with_context(|| format!("providing the service of {id}"))?;
        }
        echoers.push((
            conn,
            dialect.direct_template(&format!("{tag}a{i}"), cfg.payload),
        ));
        bar.inc(1);
    }
    let mut originators = Vec::with_capacity(cfg.pairs);
    for i in 0..cfg.pairs {
        let id = format!("{tag}a{i}");
        let conn = open(
            targets.endpoint(i, 0),
            &id,
            2 * i + 1,
            16 << 10,
            &cfg.connect,
        )
        .await
        .with_context(|| format!("opening originator {id}"))?;
        let tpl = match (cfg.flavor, dialect) {
            (Flavor::Direct, _) => dialect.direct_template(&format!("{tag}b{i}"), cfg.payload),
            (Flavor::Rpc, Dialect::SocketIo) => {
                dialect.call_template(&format!("{tag}b{i}"), cfg.payload)
            }
            (Flavor::Rpc, Dialect::Peermesh(_)) => {
                dialect.call_template(&format!("{tag}s{i}"), cfg.payload)
            }
        };
        originators.push(Originator {
            conn,
            tpl,
            index: i,
        });
        bar.inc(1);
    }
    progress::done(&bar);

    let echo_tasks: Vec<_> = split_groups(echoers, cfg.tasks)
        .into_iter()
        .map(|group| {
            let errors = errors.clone();
            let cancel = cancel.clone();
            let payload = cfg.payload;
            tokio::spawn(async move {
                let futs = group
                    .into_iter()
                    .map(|(conn, tpl)| echo(conn, tpl, dialect, payload, &errors, &cancel));
                join_all(futs).await;
            })
        })
        .collect();

    let mut groups = split_groups(originators, cfg.tasks);
    let mut steps = Vec::new();
    for &rate in &cfg.rates {
        progress.set_step(&format!(
            "{}: {} {}",
            dialect.label(),
            cfg.label,
            rate.label()
        ));
        let bar = progress.timed(
            &format!("{} {}", cfg.label, rate.label()),
            cfg.warmup + cfg.duration,
        );
        let errors_before = errors.count();
        let window = Window::starting_now(&clock, cfg.warmup, cfg.duration, cfg.drain);
        let senders = Senders::new(cfg.pairs);
        let step = Arc::new(StepCtx {
            rate,
            window,
            clock,
            dialect,
            pairs: cfg.pairs,
            window_per_conn: cfg.window.max(1),
            per_round_trip: cfg.flavor.per_round_trip(),
            cap: cfg.max_messages.max(1),
            delivered: delivered.clone(),
            errors: errors.clone(),
            senders: senders.clone(),
        });
        let handles: Vec<_> = groups
            .drain(..)
            .map(|mut group| {
                let step = step.clone();
                tokio::spawn(async move {
                    let recorder = Recorder::new();
                    let counts =
                        join_all(group.iter_mut().map(|o| originate(o, &step, &recorder))).await;
                    (group, recorder, counts)
                })
            })
            .collect();
        let rates = measure(&window, &delivered, &targets.measured, &senders).await;
        let mut hist: Histogram<u64> = new_histogram();
        let (mut sent, mut received) = (0, 0);
        for h in handles {
            let (group, recorder, counts) = h.await.context("an originator task panicked")?;
            recorder.merge_into(&mut hist);
            for (s, r) in counts {
                sent += s;
                received += r;
            }
            groups.push(group);
        }
        progress::done(&bar);
        progress.step_done();
        steps.push(DirectStep {
            rate: rate.label(),
            offered_msgs_per_s: match rate {
                Rate::Fixed(n) => Some(n),
                Rate::Max => None,
            },
            msgs_per_s: rates.per_sec,
            rtt: Latency::of(&hist),
            sent,
            lost: sent.saturating_sub(received),
            window: rates,
            errors: errors.count() - errors_before,
            first_error: errors.first(),
        });
        // Let the server settle between steps.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    cancel.cancel();
    for t in echo_tasks {
        let _ = t.await;
    }
    for group in groups {
        for o in group {
            o.conn.close().await;
        }
    }
    Ok(steps)
}

struct StepCtx {
    rate: Rate,
    window: Window,
    clock: Clock,
    dialect: Dialect,
    pairs: usize,
    window_per_conn: u64,
    /// Units counted per round trip (2 messages, or 1 call).
    per_round_trip: u64,
    cap: u64,
    delivered: Arc<AtomicU64>,
    errors: Arc<ErrorLog>,
    senders: Arc<Senders>,
}

/// Reads echoes and records their round trips; returns how many were due to arrive.
struct Reading {
    received: u64,
    latencies: Vec<u64>,
}

impl Reading {
    /// Handles everything buffered on the connection; returns the number of echoes.
    fn drain_frames(
        &mut self,
        conn: &mut WsConn,
        step: &StepCtx,
        now_ns: u64,
    ) -> Result<u64, WsError> {
        let mut got = 0;
        while let Some((op, payload)) = conn.next_message()? {
            match step.dialect.parse(op, payload) {
                Incoming::Message(t) => {
                    got += 1;
                    if step.window.counts(t, now_ns) {
                        self.latencies.push(now_ns.saturating_sub(t));
                    }
                }
                Incoming::EnginePing => step.dialect.pong(conn),
                Incoming::Other => {}
                Incoming::Invoke { .. } => step.errors.record("a call reached a caller"),
                Incoming::Error(e) => step.errors.record(e),
            }
        }
        self.received += got;
        Ok(got)
    }
}

/// Drives one originator through one step; returns (sent, echoes received).
async fn originate(o: &mut Originator, step: &StepCtx, recorder: &Recorder) -> (u64, u64) {
    let mut sent = 0;
    let mut reading = Reading {
        received: 0,
        latencies: Vec::with_capacity(64),
    };
    let result = match step.rate {
        Rate::Max => originate_max(o, step, recorder, &mut sent, &mut reading).await,
        Rate::Fixed(rate) => {
            originate_fixed(o, step, recorder, rate, &mut sent, &mut reading).await
        }
    };
    if let Err(e) = result {
        step.errors.record(format!("originator: {e}"));
    }
    recorder.record(&mut reading.latencies);
    (sent, reading.received)
}

async fn originate_max(
    o: &mut Originator,
    step: &StepCtx,
    recorder: &Recorder,
    sent: &mut u64,
    reading: &mut Reading,
) -> Result<(), WsError> {
    let w = &step.window;
    let mut sending = true;
    let mut guard = StopGuard::new(&step.senders);
    let first = step.window_per_conn.min(step.cap);
    let now_ns = step.clock.ns(Instant::now());
    for _ in 0..first {
        o.tpl.queue(&mut o.conn, now_ns);
    }
    *sent = first;
    o.conn.flush().await?;
    let drain = tokio::time::sleep_until(w.drain_until.into());
    tokio::pin!(drain);
    loop {
        if !sending && reading.received >= *sent {
            return Ok(());
        }
        tokio::select! {
            biased;
            r = o.conn.read_some() => { r?; }
            _ = &mut drain => return Ok(()),
        }
        let now = Instant::now();
        let now_ns = step.clock.ns(now);
        let got = reading.drain_frames(&mut o.conn, step, now_ns)?;
        if sending {
            if now >= w.end || *sent >= step.cap {
                sending = false;
                guard.stop();
            } else {
                let n = got.min(step.cap - *sent);
                for _ in 0..n {
                    o.tpl.queue(&mut o.conn, now_ns);
                }
                *sent += n;
            }
        }
        step.delivered
            .fetch_add(step.per_round_trip * got, Ordering::Relaxed);
        recorder.record(&mut reading.latencies);
        o.conn.flush().await?;
    }
}

async fn originate_fixed(
    o: &mut Originator,
    step: &StepCtx,
    recorder: &Recorder,
    rate: u64,
    sent: &mut u64,
    reading: &mut Reading,
) -> Result<(), WsError> {
    let w = &step.window;
    // Originals per second on this connection: each round trip is two messages (or one call).
    let per_conn = (rate as f64 / step.per_round_trip as f64 / step.pairs as f64).max(0.001);
    let period = Duration::from_secs_f64(1.0 / per_conn).max(Duration::from_millis(1));
    let offset = period.mul_f64(o.index as f64 / step.pairs as f64);
    let start = w.start + offset;
    let mut ticker = tokio::time::interval_at(start.into(), period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sending = true;
    let mut guard = StopGuard::new(&step.senders);
    let drain = tokio::time::sleep_until(w.drain_until.into());
    tokio::pin!(drain);
    loop {
        if !sending && reading.received >= *sent {
            return Ok(());
        }
        tokio::select! {
            biased;
            r = o.conn.read_some() => {
                r?;
                let now_ns = step.clock.ns(Instant::now());
                let got = reading.drain_frames(&mut o.conn, step, now_ns)?;
                step.delivered
            .fetch_add(step.per_round_trip * got, Ordering::Relaxed);
                recorder.record(&mut reading.latencies);
            }
            _ = ticker.tick(), if sending => {
                let now = Instant::now();
                if now >= w.end || *sent >= step.cap {
                    sending = false;
                    guard.stop();
                } else {
                    // Messages due since this connection's start (the first one at once),
                    // at most 1,000 at a time when the generator fell behind.
                    let elapsed = now.saturating_duration_since(start).as_secs_f64();
                    let due = (elapsed * per_conn) as u64 + 1;
                    let n = due.saturating_sub(*sent).min(1000).min(step.cap - *sent);
                    let now_ns = step.clock.ns(now);
                    for _ in 0..n {
                        o.tpl.queue(&mut o.conn, now_ns);
                    }
                    *sent += n;
                }
            }
            _ = &mut drain => return Ok(()),
        }
        o.conn.flush().await?;
    }
}

/// Marks a sender as stopped exactly once, also when it fails.
struct StopGuard<'a> {
    senders: &'a Senders,
    stopped: bool,
}

impl<'a> StopGuard<'a> {
    fn new(senders: &'a Senders) -> Self {
        Self {
            senders,
            stopped: false,
        }
    }

    fn stop(&mut self) {
        if !self.stopped {
            self.stopped = true;
            self.senders.done();
        }
    }
}

impl Drop for StopGuard<'_> {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Echoes every delivery back to the originator (answers every call) until cancelled.
async fn echo(
    mut conn: WsConn,
    tpl: Template,
    dialect: Dialect,
    payload_len: usize,
    errors: &ErrorLog,
    cancel: &CancellationToken,
) {
    let cancelled = cancel.cancelled();
    tokio::pin!(cancelled);
    let result: Result<(), WsError> = async {
        loop {
            tokio::select! {
                biased;
                _ = &mut cancelled => return Ok(()),
                r = conn.read_some() => { r?; }
            }
            while let Some((op, payload)) = conn.next_message()? {
                match dialect.parse(op, payload) {
                    Incoming::Message(t) => tpl.queue(&mut conn, t),
                    Incoming::Invoke { stamp, id } => {
                        dialect.queue_respond(&mut conn, id, stamp, payload_len)
                    }
                    Incoming::EnginePing => dialect.pong(&mut conn),
                    Incoming::Other => {}
                    Incoming::Error(e) => errors.record(e),
                }
            }
            conn.flush().await?;
        }
    }
    .await;
    if let Err(e) = result {
        if !cancel.is_cancelled() {
            errors.record(format!("echoer: {e}"));
        }
    }
    conn.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        assert_eq!(Rate::parse("1000"), Ok(Rate::Fixed(1000)));
        assert_eq!(Rate::parse("10k"), Ok(Rate::Fixed(10_000)));
        assert_eq!(Rate::parse("MAX"), Ok(Rate::Max));
        assert!(Rate::parse("0").is_err());
        assert!(Rate::parse("fast").is_err());
    }
}
