//! The reference under a cross-hub round trip: NATS alone, at the same offered rate.
//!
//! A round trip between two clients of different hubs crosses the broker twice
//! (originator's hub → nats-server → echoer's hub, and back). This step measures what those
//! two crossings cost without any hub: a prober client publishes timestamped messages to
//! `peermesh.bench.ping` at `rate / 2` per second, an echo client (its own multi-threaded
//! runtime on its own thread, as a hub would have) republishes each to `peermesh.bench.pong`,
//! and the prober times the round trip on one clock. Both are `async-nats` clients, the
//! library the hubs use, on the cluster's own nats-server. The difference between the
//! cross-hub figures and these is what the hubs add.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use peermesh_cluster::async_nats;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::progress::Progress;
use super::stats::{new_histogram, Clock, Latency, Rates, Sample, Window};
use super::target::Measured;

const PING: &str = "peermesh.bench.ping";
const PONG: &str = "peermesh.bench.pong";
/// Bytes of a probe that carry its send time and sequence number.
const HEADER: usize = 16;

/// What the step measures with.
#[derive(Debug, Clone)]
pub(crate) struct FloorConfig {
    /// The nats-server to measure.
    pub(crate) url: String,
    /// Offered messages per second, both legs (the prober sends half of it).
    pub(crate) rate: u64,
    /// Probe size in bytes (at least the 16-byte header).
    pub(crate) payload: usize,
    /// Sending before measuring.
    pub(crate) warmup: Duration,
    /// Measuring.
    pub(crate) duration: Duration,
    /// Waiting for probes in flight after sending stops.
    pub(crate) drain: Duration,
}

/// The figures of the step.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct NatsFloor {
    /// Offered messages per second (both legs).
    pub(crate) offered_msgs_per_s: u64,
    /// Messages per second that crossed nats-server during the window (both legs).
    pub(crate) msgs_per_s: f64,
    /// Round trip prober → nats-server → echo → nats-server → prober.
    pub(crate) rtt: Latency,
    /// Probes sent.
    pub(crate) sent: u64,
    /// Probes whose echo never came back before the drain ended.
    pub(crate) lost: u64,
    /// Window length and CPU use (servers = the idle hubs, broker = nats-server).
    pub(crate) window: Rates,
}

/// Runs the echo client on its own runtime until `stop` is cancelled.
fn spawn_echo(
    url: String,
    ready: tokio::sync::oneshot::Sender<anyhow::Result<()>>,
    stop: CancellationToken,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("nats-floor-echo".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready.send(Err(anyhow::anyhow!("echo runtime: {e}")));
                    return;
                }
            };
            rt.block_on(async move {
                let setup = async {
                    let client = async_nats::connect(url.as_str())
                        .await
                        .context("echo client: connect")?;
                    let sub = client
                        .subscribe(PING.to_owned())
                        .await
                        .context("echo client: subscribe")?;
                    client.flush().await.context("echo client: flush")?;
                    anyhow::Ok((client, sub))
                };
                let (client, mut sub) = match setup.await {
                    Ok(x) => {
                        let _ = ready.send(Ok(()));
                        x
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        return;
                    }
                };
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        m = sub.next() => match m {
                            Some(m) => {
                                if client.publish(PONG.to_owned(), m.payload).await.is_err() {
                                    break;
                                }
                            }
                            None => break,
                        },
                    }
                }
            });
        })
        .context("starting the echo thread")
}

/// Measures NATS alone: see the module documentation.
pub(crate) async fn run(
    cfg: &FloorConfig,
    measured: &Measured,
    clock: Clock,
    progress: &Progress,
) -> anyhow::Result<NatsFloor> {
    progress.set_step("nats-server alone: round trips");
    let stop = CancellationToken::new();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let echo = spawn_echo(cfg.url.clone(), ready_tx, stop.clone())?;
    let _stop_echo = stop.clone().drop_guard();
    ready_rx.await.context("the echo thread ended")??;

    let client = async_nats::connect(cfg.url.as_str())
        .await
        .context("prober: connect")?;
    let mut pongs = client
        .subscribe(PONG.to_owned())
        .await
        .context("prober: subscribe")?;
    client.flush().await.context("prober: flush")?;

    let window = Window::starting_now(&clock, cfg.warmup, cfg.duration, cfg.drain);
    let sent = Arc::new(AtomicU64::new(0));
    let delivered = Arc::new(AtomicU64::new(0));
    let per_s = (cfg.rate / 2).max(1);
    let size = cfg.payload.max(HEADER);
    let sender = {
        let client = client.clone();
        let sent = sent.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / per_s));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let end = tokio::time::Instant::from_std(window.end);
            let mut seq = 0u64;
            loop {
                let at = tick.tick().await;
                if at >= end {
                    break;
                }
                let mut probe = Vec::with_capacity(size);
                probe.extend_from_slice(&clock.ns(std::time::Instant::now()).to_le_bytes());
                probe.extend_from_slice(&seq.to_le_bytes());
                probe.resize(size, b'x');
                if client.publish(PING.to_owned(), probe.into()).await.is_err() {
                    break;
                }
                seq += 1;
                sent.store(seq, Ordering::Relaxed);
            }
        })
    };

    let mut hist = new_histogram();
    let mut received = 0u64;
    let mut first: Option<Sample> = None;
    let mut last: Option<Sample> = None;
    let drain_until = tokio::time::Instant::from_std(window.drain_until);
    let measure_start = tokio::time::Instant::from_std(window.measure_start);
    let end = tokio::time::Instant::from_std(window.end);
    loop {
        let deadline = if first.is_none() {
            measure_start
        } else if last.is_none() {
            end
        } else {
            drain_until
        };
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                if first.is_none() {
                    first = Some(Sample::take(&delivered, measured));
                } else if last.is_none() {
                    last = Some(Sample::take(&delivered, measured));
                } else {
                    break;
                }
            }
            m = pongs.next() => {
                let Some(m) = m else { break };
                let now = clock.ns(std::time::Instant::now());
                let Some(head) = m.payload.get(..8) else { continue };
                let mut b = [0u8; 8];
                b.copy_from_slice(head);
                let sent_ns = u64::from_le_bytes(b);
                // Both legs of a round trip crossed the broker.
                delivered.fetch_add(2, Ordering::Relaxed);
                received += 1;
                if window.counts(sent_ns, now) {
                    hist.saturating_record(now.saturating_sub(sent_ns).max(1));
                }
                if last.is_some() && received >= sent.load(Ordering::Relaxed) && sender.is_finished() {
                    break;
                }
            }
        }
    }
    let _ = sender.await;
    stop.cancel();
    let _ = tokio::task::spawn_blocking(move || echo.join()).await;
    let (Some(a), Some(b)) = (first, last) else {
        anyhow::bail!("the NATS round trips ended before the measurement window");
    };
    let rates = a.rates(&b);
    let sent = sent.load(Ordering::Relaxed);
    progress.step_done();
    Ok(NatsFloor {
        offered_msgs_per_s: cfg.rate,
        msgs_per_s: rates.per_sec,
        rtt: Latency::of(&hist),
        sent,
        lost: sent.saturating_sub(received),
        window: rates,
    })
}
