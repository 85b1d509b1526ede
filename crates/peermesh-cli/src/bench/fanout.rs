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

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::future::join_all;
use serde::Serialize;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use super::client::{open_in_room, ConnectOpts, Endpoint};
use super::dialect::{Dialect, Incoming};
use super::progress::{self, Progress};
use super::stats::{
    measure, new_histogram, split_groups, Clock, ErrorLog, Latency, Rates, Recorder, Senders,
    Window,
};
use super::target::Server;
use super::ws::WsError;

/// The room every member joins.
const ROOM: &str = "bench-fanout";

/// Settings of the fan-out scenario.
#[derive(Debug, Clone)]
pub(crate) struct FanoutConfig {
    /// Room members (receivers), not counting the sender.
    pub(crate) members: usize,
    /// Room messages in flight.
    pub(crate) window: u64,
    /// Length of the payload string in bytes.
    pub(crate) payload: usize,
    /// Warm-up before measuring.
    pub(crate) warmup: Duration,
    /// Measurement time.
    pub(crate) duration: Duration,
    /// How long to wait for in-flight deliveries at the end.
    pub(crate) drain: Duration,
    /// Most room messages sent.
    pub(crate) max_messages: u64,
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
    /// Deliveries per second during the measurement window.
    pub(crate) deliveries_per_s: f64,
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

/// State shared by the sender, the members and the controller.
struct Shared {
    clock: Clock,
    dialect: Dialect,
    delivered: AtomicU64,
    /// The sender wants a wake-up when `delivered` reaches this.
    wake_at: AtomicU64,
    wake: Notify,
    /// Measurement window in clock ns (`u64::MAX` until the window is known).
    measure_start_ns: AtomicU64,
    end_ns: AtomicU64,
    ready: AtomicU64,
    errors: ErrorLog,
}

/// Runs the scenario against `server`.
pub(crate) async fn run(
    server: &Server,
    cfg: &FanoutConfig,
    clock: Clock,
    progress: &Progress,
    tag: &str,
) -> anyhow::Result<FanoutResult> {
    let dialect = server.endpoint.dialect;
    let shared = Arc::new(Shared {
        clock,
        dialect,
        delivered: AtomicU64::new(0),
        wake_at: AtomicU64::new(u64::MAX),
        wake: Notify::new(),
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
            let endpoint = server.endpoint.clone();
            let connect = cfg.connect.clone();
            let tag = tag.to_owned();
            tokio::spawn(async move {
                let recorder = Recorder::new();
                let futs = group.into_iter().map(|i| {
                    member(
                        &endpoint, i, &tag, &shared, &recorder, &cancel, &permits, &bar, &connect,
                    )
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
    let sender_id = format!("{tag}s");
    let mut conn = open_in_room(
        &server.endpoint,
        &sender_id,
        cfg.members,
        16 << 10,
        ROOM,
        &cfg.connect,
    )
    .await
    .context("opening the sender")?;
    let setup_secs = setup_start.elapsed().as_secs_f64();
    // Let join notifications settle before the clock starts.
    tokio::time::sleep(Duration::from_millis(300)).await;

    progress.set_step(&format!("{}: fan-out to {}", dialect.label(), cfg.members));
    let bar = progress.timed("fan-out", cfg.warmup + cfg.duration);
    let window = Window::starting_now(&clock, cfg.warmup, cfg.duration, cfg.drain);
    shared.end_ns.store(window.end_ns, Ordering::SeqCst);
    shared
        .measure_start_ns
        .store(window.measure_start_ns, Ordering::SeqCst);
    let senders = Senders::new(1);
    let tpl = dialect.room_template(ROOM, cfg.payload);
    let base = shared.delivered.load(Ordering::SeqCst);
    let n = cfg.members as u64;
    let w = cfg.window.max(1);
    let cap = cfg.max_messages.max(1);

    let send_loop =
        async {
            let mut sent: u64 = 0;
            let mut sending = true;
            let drain = tokio::time::sleep_until(window.drain_until.into());
            tokio::pin!(drain);
            let end = tokio::time::sleep_until(window.end.into());
            tokio::pin!(end);
            let result: Result<(), WsError> = async {
            loop {
                let now = Instant::now();
                if sending && (now >= window.end || sent >= cap) {
                    sending = false;
                    senders.done();
                }
                let done = shared.delivered.load(Ordering::SeqCst) - base;
                if sending {
                    let allowed = (done / n + w).saturating_sub(sent).min(cap - sent);
                    if allowed > 0 {
                        let now_ns = clock.ns(now);
                        for _ in 0..allowed {
                            tpl.queue(&mut conn, now_ns);
                        }
                        sent += allowed;
                        conn.flush().await?;
                        continue;
                    }
                } else if done >= sent * n {
                    return Ok(());
                }
                // Sleep until the members have caught up (or the clock says stop).
                let target = if sending { (sent + 1).saturating_sub(w) * n } else { sent * n };
                shared.wake_at.store(base + target, Ordering::SeqCst);
                if shared.delivered.load(Ordering::SeqCst) - base >= target {
                    continue;
                }
                tokio::select! {
                    biased;
                    _ = shared.wake.notified() => {}
                    r = conn.read_some() => {
                        r?;
                        while let Some((op, payload)) = conn.next_message()? {
                            match dialect.parse(op, payload) {
                                Incoming::EnginePing => dialect.pong(&mut conn),
                                Incoming::Error(e) => shared.errors.record(format!("sender: {e}")),
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
                senders.done();
            }
            if let Err(e) = result {
                shared.errors.record(format!("sender: {e}"));
            }
            sent
        };
    let (sent, rates) = tokio::join!(
        send_loop,
        measure(&window, &shared.delivered, server, &senders)
    );
    progress::done(&bar);
    progress.step_done();

    let delivered_total = shared.delivered.load(Ordering::SeqCst) - base;
    cancel.cancel();
    let mut hist = new_histogram();
    for t in tasks {
        if let Ok(recorder) = t.await {
            recorder.merge_into(&mut hist);
        }
    }
    conn.close().await;
    Ok(FanoutResult {
        members: cfg.members,
        deliveries_per_s: rates.per_sec,
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

/// One member: open, join, then count deliveries until cancelled.
#[allow(clippy::too_many_arguments)]
async fn member(
    server: &Endpoint,
    i: usize,
    tag: &str,
    shared: &Shared,
    recorder: &Recorder,
    cancel: &CancellationToken,
    permits: &Semaphore,
    bar: &indicatif::ProgressBar,
    connect: &ConnectOpts,
) {
    let id = format!("{tag}m{i}");
    let conn = {
        let Ok(_permit) = permits.acquire().await else {
            return;
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            c = open_in_room(server, &id, i, 16 << 10, ROOM, connect) => c,
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
                let total = shared.delivered.fetch_add(got, Ordering::SeqCst) + got;
                if total >= shared.wake_at.load(Ordering::SeqCst) {
                    shared.wake.notify_one();
                }
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
