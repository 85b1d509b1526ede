//! Scenario (c): idle connections — the server's memory per connected, identified, idle client.
//!
//! The server's resident set (`VmRSS` from `/proc/PID/status`) is read before any client
//! connects and again once `connections` clients have completed their handshake and the server
//! had `settle` to finish its work; the difference divided by the number of clients is the cost
//! of one idle connection. The clients keep answering pings, so no heartbeat closes them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use futures_util::future::join_all;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::client::{open, ConnectOpts, Endpoint};
use super::dialect::Incoming;
use super::progress::{self, Progress};
use super::stats::{split_groups, ErrorLog};
use super::target::Server;
use super::ws::WsError;

/// Settings of the idle-connection scenario.
#[derive(Debug, Clone)]
pub(crate) struct IdleConfig {
    /// Connections to open.
    pub(crate) connections: usize,
    /// Connections opened at the same time.
    pub(crate) concurrency: usize,
    /// Wait between the last handshake and the RSS reading.
    pub(crate) settle: Duration,
    /// Tasks holding the connections.
    pub(crate) tasks: usize,
    /// How connections are opened.
    pub(crate) connect: ConnectOpts,
}

/// The figures of the idle scenario.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct IdleResult {
    /// Connections that completed their handshake.
    pub(crate) connections: u64,
    /// Server RSS before the first connection, KiB.
    pub(crate) rss_before_kib: u64,
    /// Server RSS with every connection open, KiB.
    pub(crate) rss_after_kib: u64,
    /// (after - before) / connections, in bytes.
    pub(crate) bytes_per_conn: u64,
    /// Connections opened per second during setup.
    pub(crate) connects_per_s: f64,
    /// Connections that failed.
    pub(crate) errors: u64,
    /// The first failure.
    pub(crate) first_error: Option<String>,
}

/// Runs the scenario against `server` (which must have a known pid).
pub(crate) async fn run(
    server: &Server,
    cfg: &IdleConfig,
    progress: &Progress,
    tag: &str,
) -> anyhow::Result<IdleResult> {
    let Some(rss_before) = server.rss_kib() else {
        bail!("the server's RSS is unknown: pass --hub-pid / --socketio-pid, or use --spawn");
    };
    let label = server.endpoint.dialect.label();
    progress.set_step(&format!("{label}: {} idle connections", cfg.connections));
    let bar = progress.counter("opening idle connections", cfg.connections as u64);
    let ready = Arc::new(AtomicU64::new(0));
    let finished = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(ErrorLog::default());
    let cancel = CancellationToken::new();
    let permits = Arc::new(Semaphore::new(cfg.concurrency.max(1)));
    let start = Instant::now();
    let tasks: Vec<_> = split_groups((0..cfg.connections).collect(), cfg.tasks)
        .into_iter()
        .map(|group| {
            let endpoint = server.endpoint.clone();
            let ready = ready.clone();
            let finished = finished.clone();
            let errors = errors.clone();
            let cancel = cancel.clone();
            let permits = permits.clone();
            let connect = cfg.connect.clone();
            let bar = bar.clone();
            let tag = tag.to_owned();
            tokio::spawn(async move {
                let ctx = Ctx {
                    endpoint: &endpoint,
                    ready: &ready,
                    finished: &finished,
                    errors: &errors,
                    cancel: &cancel,
                    permits: &permits,
                    connect: &connect,
                    bar: &bar,
                    tag: &tag,
                };
                join_all(group.into_iter().map(|i| idle_client(&ctx, i))).await;
            })
        })
        .collect();

    // Every connection either becomes ready or fails; both end the wait, as does the timeout.
    let deadline = start + cfg.connect.timeout + Duration::from_secs(120);
    let total = cfg.connections as u64;
    while finished.load(Ordering::SeqCst) < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let setup = start.elapsed().as_secs_f64();
    let connected = ready.load(Ordering::SeqCst);
    progress::done(&bar);
    tokio::time::sleep(cfg.settle).await;
    let rss_after = server.rss_kib().unwrap_or(rss_before);
    progress.step_done();
    cancel.cancel();
    for t in tasks {
        let _ = t.await;
    }
    if connected == 0 {
        bail!(
            "no connection could be opened: {}",
            errors.first().unwrap_or_else(|| "timed out".into())
        );
    }
    Ok(IdleResult {
        connections: connected,
        rss_before_kib: rss_before,
        rss_after_kib: rss_after,
        bytes_per_conn: rss_after.saturating_sub(rss_before) * 1024 / connected,
        connects_per_s: (connected as f64 / setup.max(1e-9)).round(),
        errors: errors.count(),
        first_error: errors.first(),
    })
}

struct Ctx<'a> {
    endpoint: &'a Endpoint,
    ready: &'a AtomicU64,
    finished: &'a AtomicU64,
    errors: &'a ErrorLog,
    cancel: &'a CancellationToken,
    permits: &'a Semaphore,
    connect: &'a ConnectOpts,
    bar: &'a indicatif::ProgressBar,
    tag: &'a str,
}

async fn idle_client(ctx: &Ctx<'_>, i: usize) {
    let id = format!("{}i{i}", ctx.tag);
    let opened = {
        let Ok(_permit) = ctx.permits.acquire().await else {
            ctx.finished.fetch_add(1, Ordering::SeqCst);
            return;
        };
        tokio::select! {
            _ = ctx.cancel.cancelled() => None,
            c = open(ctx.endpoint, &id, i, 512, ctx.connect) => Some(c),
        }
    };
    let mut conn = match opened {
        Some(Ok(c)) => c,
        Some(Err(e)) => {
            ctx.errors.record(format!("{id}: {e}"));
            ctx.finished.fetch_add(1, Ordering::SeqCst);
            return;
        }
        None => {
            ctx.finished.fetch_add(1, Ordering::SeqCst);
            return;
        }
    };
    ctx.ready.fetch_add(1, Ordering::SeqCst);
    ctx.finished.fetch_add(1, Ordering::SeqCst);
    ctx.bar.inc(1);
    let dialect = ctx.endpoint.dialect;
    let cancelled = ctx.cancel.cancelled();
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
                    Incoming::EnginePing => dialect.pong(&mut conn),
                    Incoming::Error(e) => ctx.errors.record(format!("{id}: {e}")),
                    Incoming::Message(_) | Incoming::Invoke { .. } | Incoming::Other => {}
                }
            }
            conn.flush().await?;
        }
    }
    .await;
    if let Err(e) = result {
        ctx.errors.record(format!("{id}: {e}"));
    }
    conn.close().await;
}
