//! Scenario (b): room fan-out — one sender, `members` receivers in one room.
//!
//! ```text
//!   sender --emit_room--> server --message--> member 0
//!                                 --message--> member 1   (member tasks: many connections each)
//!                                 ...
//!                                 --message--> member N-1
//! ```
//!
//! The sender keeps at most `window` room messages in flight: it may send message `k` once the
//! members together received `(k - window) * N` deliveries (closed loop, so the server is pushed
//! to its limit without any queue growing without bound). The members count deliveries and
//! record each delivery's latency from the sender's write to the member's read.
//!
//! With several senders (`senders`, the cluster scenario: one per hub) the window is shared:
//! message `k` of all senders together waits for `(k - window) * N` deliveries. Senders are
//! room members too (the hub requires it) and receive each other's messages; those deliveries
//! are not counted. Against several hubs ([`Targets`]), member `i` and sender `j` connect to
//! hub `i mod n` and `j mod n`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::future::join_all;
use serde::Serialize;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use super::client::{open_in_room, ConnectOpts, Endpoint};
use super::dialect::{Dialect, Incoming, Template};
use super::progress::{self, Progress};
use super::stats::{
    measure, new_histogram, split_groups, Clock, ErrorLog, Latency, Rates, Recorder, Senders,
    Window,
};
use super::target::Targets;
use super::ws::{WsConn, WsError};

/// The room every member joins (unless the configuration names another).
pub(crate) const ROOM: &str = "bench-fanout";

/// Settings of the fan-out scenario.
#[derive(Debug, Clone)]
pub(crate) struct FanoutConfig {
    /// Room members (receivers), not counting the senders.
    pub(crate) members: usize,
    /// Senders (each also in the room; at least 1).
    pub(crate) senders: usize,
    /// The room.
    pub(crate) room: String,
    /// Room messages in flight (all senders together).
    pub(crate) window: u64,
    /// Length of the payload string in bytes.
    pub(crate) payload: usize,
    /// Warm-up before measuring.
    pub(crate) warmup: Duration,
    /// Measurement time.
    pub(crate) duration: Duration,
    /// How long to wait for in-flight deliveries at the end.
    pub(crate) drain: Duration,
    /// Most room messages sent (all senders together).
    pub(crate) max_messages: u64,
    /// Wait after the last join before the clock starts (join notifications settle).
    pub(crate) settle: Duration,
    /// Tasks driving the member connections.
    pub(crate) tasks: usize,
    /// Connections opened at the same time during setup.
    pub(crate) concurrency: usize,
    /// How connections are opened.
    pub(crate) connect: ConnectOpts,
}

/// The figures of the fan-out scenario.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct FanoutResult {
    /// Receivers in the room.
    pub(crate) members: usize,
    /// Senders.
    pub(crate) senders: usize,
    /// Hubs the members and senders were spread over.
    pub(crate) hubs: usize,
    /// Room messages in flight (the closed loop's window, all senders together).
    pub(crate) in_flight: u64,
    /// Deliveries per second during the measurement window.
    pub(crate) deliveries_per_s: f64,
    /// CPU time of the server(s), summed, per delivery in the window, in microseconds.
    pub(crate) server_cpu_us_per_delivery: Option<f64>,
    /// The same with the broker's (nats-server) CPU time added; absent without a broker.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) with_broker_cpu_us_per_delivery: Option<f64>,
    /// Room messages per second the sender got through.
    pub(crate) room_msgs_per_s: f64,
    /// Latency from the sender's write to each member's read.
    pub(crate) latency: Latency,
    /// Room messages sent in total.
    pub(crate) sent: u64,
    /// Deliveries that never arrived before the drain timeout.
    pub(crate) lost: u64,
    /// Window length, deliveries, CPU use.
    pub(crate) window: Rates,
    /// Seconds spent opening and joining the members.
    pub(crate) setup_secs: f64,
    /// Errors seen.
    pub(crate) errors: u64,
    /// The first of them.
    pub(crate) first_error: Option<String>,
}

/// State shared by the senders, the members and the controller.
struct Shared {
    clock: Clock,
    dialect: Dialect,
    delivered: AtomicU64,
    /// Room messages sent by all senders together.
    sent: AtomicU64,
    /// A sender wants a wake-up when `delivered` reaches this (the smallest wish; `u64::MAX`
    /// when none waits).
    wake_at: AtomicU64,
    /// One per sender.
    wakes: Vec<Notify>,
    /// Measurement window in clock ns (`u64::MAX` until the window is known).
    measure_start_ns: AtomicU64,
    end_ns: AtomicU64,
    ready: AtomicU64,
    errors: ErrorLog,
}

impl Shared {
    /// Counts `got` deliveries and wakes the senders when one of them waits for this many.
    fn delivered(&self, got: u64) {
        let total = self.delivered.fetch_add(got, Ordering::SeqCst) + got;
        if total >= self.wake_at.load(Ordering::SeqCst) {
            // Wake every sender (a spurious wake-up only makes one re-check); each sets its
            // next wish again.
            self.wake_at.store(u64::MAX, Ordering::SeqCst);
            for w in &self.wakes {
                w.notify_one();
            }
        }
    }
}

/// CPU microseconds per delivery from a CPU percentage over a window.
pub(crate) fn cpu_us_per_delivery(cpu_pct: Option<f64>, rates: &Rates) -> Option<f64> {
    let pct = cpu_pct?;
    (rates.delivered > 0).then(|| {
        let us = pct / 100.0 * rates.secs * 1e6 / rates.delivered as f64;
        (us * 1000.0).round() / 1000.0
    })
}

/// Runs the scenario against `targets`.
pub(crate) async fn run(
    targets: &Targets,
    cfg: &FanoutConfig,
    clock: Clock,
    progress: &Progress,
    tag: &str,
) -> anyhow::Result<FanoutResult> {
    let dialect = targets.dialect();
    let n_senders = cfg.senders.max(1);
    let shared = Arc::new(Shared {
        clock,
        dialect,
        delivered: AtomicU64::new(0),
        sent: AtomicU64::new(0),
        wake_at: AtomicU64::new(u64::MAX),
        wakes: (0..n_senders).map(|_| Notify::new()).collect(),
        measure_start_ns: AtomicU64::new(u64::MAX),
        end_ns: AtomicU64::new(0),
        ready: AtomicU64::new(0),
        errors: ErrorLog::default(),
    });
    let cancel = CancellationToken::new();
    let permits = Arc::new(Semaphore::new(cfg.concurrency.max(1)));
    let setup_start = Instant::now();
    progress.set_step(&format!("{}: fan-out setup", dialect.label()));
    let bar = progress.counter("joining members", cfg.members as u64);

    let ids: Vec<usize> = (0..cfg.members).collect();
    let tasks: Vec<_> = split_groups(ids, cfg.tasks)
        .into_iter()
        .map(|group| {
            let shared = shared.clone();
            let cancel = cancel.clone();
            let permits = permits.clone();
            let bar = bar.clone();
            let targets = targets.clone();
            let connect = cfg.connect.clone();
            let room = cfg.room.clone();
            let tag = tag.to_owned();
            tokio::spawn(async move {
                let recorder = Recorder::new();
                let futs = group.into_iter().map(|i| {
                    let ctx = MemberCtx {
                        server: targets.endpoint(i, 0),
                        tag: &tag,
                        room: &room,
                        shared: &shared,
                        recorder: &recorder,
                        cancel: &cancel,
                        permits: &permits,
                        bar: &bar,
                        connect: &connect,
                    };
                    async move { member(&ctx, i).await }
                });
                join_all(futs).await;
                recorder
            })
        })
        .collect();

    // Wait for every member (a failure aborts the scenario).
    let setup_deadline = Instant::now() + cfg.connect.timeout + Duration::from_secs(60);
    loop {
        let ready = shared.ready.load(Ordering::SeqCst);
        if ready >= cfg.members as u64 {
            break;
        }
        if shared.errors.count() > 0 || Instant::now() >= setup_deadline {
            cancel.cancel();
            for t in tasks {
                let _ = t.await;
            }
            progress::done(&bar);
            bail!(
                "only {ready} of {} members joined: {}",
                cfg.members,
                shared
                    .errors
                    .first()
                    .unwrap_or_else(|| "setup timed out".into())
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    progress::done(&bar);
    let mut conns = Vec::with_capacity(n_senders);
    for j in 0..n_senders {
        let sender_id = if n_senders == 1 {
            format!("{tag}s")
        } else {
            format!("{tag}s{j}")
        };
        let conn = open_in_room(
            targets.endpoint(j, 0),
            &sender_id,
            cfg.members + j,
            16 << 10,
            &cfg.room,
            &cfg.connect,
        )
        .await
        .with_context(|| format!("opening the sender {sender_id}"))?;
        conns.push(conn);
    }
    let setup_secs = setup_start.elapsed().as_secs_f64();
    // Let join notifications settle before the clock starts.
    tokio::time::sleep(cfg.settle).await;

    progress.set_step(&format!("{}: fan-out to {}", dialect.label(), cfg.members));
    let bar = progress.timed("fan-out", cfg.warmup + cfg.duration);
    let window = Window::starting_now(&clock, cfg.warmup, cfg.duration, cfg.drain);
    shared.end_ns.store(window.end_ns, Ordering::SeqCst);
    shared
        .measure_start_ns
        .store(window.measure_start_ns, Ordering::SeqCst);
    let senders = Senders::new(n_senders);
    let base = shared.delivered.load(Ordering::SeqCst);
    let send = SendCtx {
        shared: &shared,
        senders: &senders,
        window: &window,
        tpl: dialect.room_template(&cfg.room, cfg.payload),
        base,
        n: cfg.members as u64,
        w: cfg.window.max(1),
        // Each sender takes at most its share of the window at a time, so that all send.
        chunk: cfg.window.max(1).div_ceil(n_senders as u64),
        cap: cfg.max_messages.max(1),
    };
    let send_loops = join_all(
        conns
            .iter_mut()
            .enumerate()
            .map(|(j, conn)| send_loop(&send, j, conn)),
    );
    let (_, rates) = tokio::join!(
        send_loops,
        measure(&window, &shared.delivered, &targets.measured, &senders)
    );
    progress::done(&bar);
    progress.step_done();

    let sent = shared.sent.load(Ordering::SeqCst);
    let n = cfg.members as u64;
    let delivered_total = shared.delivered.load(Ordering::SeqCst) - base;
    cancel.cancel();
    let mut hist = new_histogram();
    for t in tasks {
        if let Ok(recorder) = t.await {
            recorder.merge_into(&mut hist);
        }
    }
    for conn in conns {
        conn.close().await;
    }
    let with_broker = rates
        .broker_cpu_pct
        .map(|b| b + rates.server_cpu_pct.unwrap_or(0.0));
    Ok(FanoutResult {
        members: cfg.members,
        senders: n_senders,
        hubs: targets.endpoints.len().min(cfg.members.max(n_senders)),
        in_flight: cfg.window.max(1),
        deliveries_per_s: rates.per_sec,
        server_cpu_us_per_delivery: cpu_us_per_delivery(rates.server_cpu_pct, &rates),
        with_broker_cpu_us_per_delivery: cpu_us_per_delivery(with_broker, &rates),
        room_msgs_per_s: (rates.per_sec / n as f64).round(),
        latency: Latency::of(&hist),
        sent,
        lost: (sent * n).saturating_sub(delivered_total),
        window: rates,
        setup_secs: (setup_secs * 100.0).round() / 100.0,
        errors: shared.errors.count(),
        first_error: shared.errors.first(),
    })
}

/// What every sender shares.
struct SendCtx<'a> {
    shared: &'a Shared,
    senders: &'a Senders,
    window: &'a Window,
    tpl: Template,
    /// `delivered` when the clock started.
    base: u64,
    /// Members (deliveries per room message).
    n: u64,
    /// Room messages in flight, all senders together.
    w: u64,
    /// Most room messages one sender takes from the window at a time.
    chunk: u64,
    /// Most room messages sent, all senders together.
    cap: u64,
}

impl SendCtx<'_> {
    /// Takes up to `chunk` room messages that the window allows now; returns how many.
    fn claim(&self) -> u64 {
        let sh = self.shared;
        let done = sh.delivered.load(Ordering::SeqCst) - self.base;
        let limit = (done / self.n + self.w).min(self.cap);
        let mut total = sh.sent.load(Ordering::SeqCst);
        loop {
            let take = limit.saturating_sub(total).min(self.chunk);
            if take == 0 {
                return 0;
            }
            match sh
                .sent
                .compare_exchange(total, total + take, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return take,
                Err(now) => total = now,
            }
        }
    }
}

/// One sender: sends what the shared window allows until the window ends, then waits until
/// the members received everything sent (or the drain ends).
async fn send_loop(ctx: &SendCtx<'_>, j: usize, conn: &mut WsConn) {
    let sh = ctx.shared;
    let dialect = sh.dialect;
    let window = ctx.window;
    let mut sending = true;
    let drain = tokio::time::sleep_until(window.drain_until.into());
    tokio::pin!(drain);
    let end = tokio::time::sleep_until(window.end.into());
    tokio::pin!(end);
    let result: Result<(), WsError> = async {
        loop {
            let now = Instant::now();
            if sending && (now >= window.end || sh.sent.load(Ordering::SeqCst) >= ctx.cap) {
                sending = false;
                ctx.senders.done();
            }
            if sending {
                let n = ctx.claim();
                if n > 0 {
                    let now_ns = sh.clock.ns(now);
                    for _ in 0..n {
                        ctx.tpl.queue(conn, now_ns);
                    }
                    conn.flush().await?;
                    continue;
                }
            }
            // Sleep until the members have caught up (or the clock says stop).
            let sent = sh.sent.load(Ordering::SeqCst);
            let target = if sending {
                (sent + 1).saturating_sub(ctx.w) * ctx.n
            } else {
                sent * ctx.n
            };
            if !sending && sh.delivered.load(Ordering::SeqCst) - ctx.base >= target {
                return Ok(());
            }
            sh.wake_at.fetch_min(ctx.base + target, Ordering::SeqCst);
            if sh.delivered.load(Ordering::SeqCst) - ctx.base >= target {
                continue;
            }
            tokio::select! {
                biased;
                _ = sh.wakes[j].notified() => {}
                r = conn.read_some() => {
                    r?;
                    while let Some((op, payload)) = conn.next_message()? {
                        match dialect.parse(op, payload) {
                            Incoming::EnginePing => dialect.pong(conn),
                            Incoming::Error(e) => sh.errors.record(format!("sender {j}: {e}")),
                            // Other senders' room messages (not counted), notifications.
                            _ => {}
                        }
                    }
                    conn.flush().await?;
                }
                _ = &mut end, if sending => {}
                _ = &mut drain => return Ok(()),
            }
        }
    }
    .await;
    if sending {
        ctx.senders.done();
    }
    if let Err(e) = result {
        sh.errors.record(format!("sender {j}: {e}"));
    }
}

/// What a member needs.
#[derive(Clone, Copy)]
struct MemberCtx<'a> {
    server: &'a Endpoint,
    tag: &'a str,
    room: &'a str,
    shared: &'a Shared,
    recorder: &'a Recorder,
    cancel: &'a CancellationToken,
    permits: &'a Semaphore,
    bar: &'a indicatif::ProgressBar,
    connect: &'a ConnectOpts,
}

/// One member: open, join, then count deliveries until cancelled.
async fn member(ctx: &MemberCtx<'_>, i: usize) {
    let MemberCtx {
        server,
        tag,
        room,
        shared,
        recorder,
        cancel,
        permits,
        bar,
        connect,
    } = *ctx;
    let id = format!("{tag}m{i}");
    let conn = {
        let Ok(_permit) = permits.acquire().await else {
            return;
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            c = open_in_room(server, &id, i, 16 << 10, room, connect) => c,
        }
    };
    let mut conn = match conn {
        Ok(c) => c,
        Err(e) => {
            shared.errors.record(format!("member {id}: {e}"));
            return;
        }
    };
    shared.ready.fetch_add(1, Ordering::SeqCst);
    bar.inc(1);
    let mut latencies: Vec<u64> = Vec::with_capacity(64);
    let cancelled = cancel.cancelled();
    tokio::pin!(cancelled);
    let result: Result<(), WsError> = async {
        loop {
            tokio::select! {
                biased;
                _ = &mut cancelled => return Ok(()),
                r = conn.read_some() => { r?; }
            }
            let now_ns = shared.clock.ns(Instant::now());
            let start_ns = shared.measure_start_ns.load(Ordering::Relaxed);
            let end_ns = shared.end_ns.load(Ordering::Relaxed);
            let mut got = 0;
            while let Some((op, payload)) = conn.next_message()? {
                match shared.dialect.parse(op, payload) {
                    Incoming::Message(t) => {
                        got += 1;
                        if t >= start_ns && now_ns <= end_ns {
                            latencies.push(now_ns.saturating_sub(t));
                        }
                    }
                    Incoming::Invoke { .. } => {}
                    Incoming::EnginePing => shared.dialect.pong(&mut conn),
                    Incoming::Other => {}
                    Incoming::Error(e) => shared.errors.record(format!("member {id}: {e}")),
                }
            }
            if got > 0 {
                shared.delivered(got);
                recorder.record(&mut latencies);
            }
            conn.flush().await?;
        }
    }
    .await;
    if let Err(e) = result {
        shared.errors.record(format!("member {id}: {e}"));
    }
    conn.close().await;
}
