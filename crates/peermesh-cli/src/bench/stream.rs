//! Scenario (d): stream throughput through the hub against a plain TCP relay.
//!
//! Two `peermesh-client` clients, alice and bob, open a stream through the hub; alice writes
//! `bytes` in 64 KiB writes and shuts down, bob reads until EOF. The time from the first write
//! to bob's EOF gives the hub's throughput. The reference, measured in the same run: two TCP
//! connections on loopback joined by `tokio::io::copy_bidirectional` (a relay on its own
//! two-thread runtime, as the hub has its own process), the same bytes written and read the
//! same way. Rounds alternate hub and relay; the median of each is reported. The hub's RSS is
//! sampled every 20 ms during its transfers.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use peermesh_client::{Client, ClientOptions, Encoding};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::target::Server;

/// Bytes per write and per read.
const IO_CHUNK: usize = 64 << 10;

/// Settings of the stream scenario.
#[derive(Debug, Clone)]
pub(crate) struct StreamConfig {
    /// Bytes per transfer.
    pub(crate) bytes: u64,
    /// The receive window of both clients.
    pub(crate) window: u64,
    /// Transfers per side (alternating); the median is reported.
    pub(crate) rounds: usize,
    /// Encoding between the clients and the hub (data frames are binary either way).
    pub(crate) encoding: Encoding,
    /// Time allowed to connect.
    pub(crate) connect_timeout: Duration,
}

/// The figures of the stream scenario.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct StreamResult {
    /// Bytes per transfer.
    pub(crate) bytes: u64,
    /// Receive window, bytes.
    pub(crate) window: u64,
    /// Transfers per side.
    pub(crate) rounds: usize,
    /// Median throughput through the hub, MiB/s.
    pub(crate) hub_mib_per_s: f64,
    /// Median throughput through the TCP relay, MiB/s.
    pub(crate) relay_mib_per_s: f64,
    /// hub ÷ relay.
    pub(crate) ratio: f64,
    /// Hub RSS before the first transfer, KiB (when its pid is known).
    pub(crate) hub_rss_before_kib: Option<u64>,
    /// Largest hub RSS growth seen during the transfers, KiB.
    pub(crate) hub_rss_growth_kib: Option<u64>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn mib_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64().max(1e-9)
}

/// Writes `bytes` then shuts down, while reading everything from `rx`; returns the time.
async fn transfer<W, R>(mut tx: W, mut rx: R, bytes: u64) -> anyhow::Result<Duration>
where
    W: AsyncWrite + Unpin + Send + 'static,
    R: AsyncRead + Unpin + Send + 'static,
{
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        let chunk = vec![0x5au8; IO_CHUNK];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(IO_CHUNK as u64) as usize;
            tx.write_all(&chunk[..n]).await?;
            left -= n as u64;
        }
        tx.shutdown().await?;
        Ok::<_, std::io::Error>(tx)
    });
    let mut buf = vec![0u8; IO_CHUNK];
    let mut got = 0u64;
    loop {
        let n = rx.read(&mut buf).await.context("reading")?;
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    let elapsed = started.elapsed();
    let _tx = writer
        .await
        .context("the writer task")?
        .context("writing")?;
    if got != bytes {
        return Err(anyhow!("received {got} bytes of {bytes}"));
    }
    Ok(elapsed)
}

/// A `tokio::io::copy_bidirectional` relay on its own runtime: it joins the first connection it
/// accepts to the second, for each pair.
struct Relay {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Relay {
    fn start() -> anyhow::Result<Relay> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("bench-tcp-relay".into())
            .spawn(move || {
                rt.block_on(async move {
                    let Ok(listener) = TcpListener::from_std(std_listener) else {
                        return;
                    };
                    let serve = async {
                        loop {
                            let (Ok((mut a, _)), Ok((mut b, _))) =
                                (listener.accept().await, listener.accept().await)
                            else {
                                return;
                            };
                            let _ = a.set_nodelay(true);
                            let _ = b.set_nodelay(true);
                            tokio::spawn(async move {
                                let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                            });
                        }
                    };
                    tokio::select! {
                        _ = serve => {}
                        _ = stopped => {}
                    }
                });
            })?;
        Ok(Relay {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    async fn round(&self, bytes: u64) -> anyhow::Result<Duration> {
        let tx = TcpStream::connect(self.addr).await?;
        let rx = TcpStream::connect(self.addr).await?;
        tx.set_nodelay(true)?;
        rx.set_nodelay(true)?;
        // The relay pairs connections in accept order; tx connected first.
        transfer(tx, rx, bytes).await
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn hub_round(server: &Server, cfg: &StreamConfig, round: usize) -> anyhow::Result<Duration> {
    let url = format!(
        "ws://{}{}",
        server.endpoint.url.host, server.endpoint.url.target
    );
    let opts = |id: String| ClientOptions {
        id: Some(id),
        encoding: cfg.encoding,
        reconnect: None,
        connect_timeout: cfg.connect_timeout,
        stream_window: cfg.window,
        stream_send_buffer: (cfg.window as usize).max(IO_CHUNK),
        ..ClientOptions::new(url.clone())
    };
    let tag = format!("stream{}-{round}", std::process::id());
    let alice = Client::connect(opts(format!("{tag}-a"))).await?;
    let bob = Client::connect(opts(format!("{tag}-b"))).await?;
    let mut incoming = bob.incoming_streams();
    let (opened, accepted) = tokio::join!(alice.open_stream(bob.id().as_str(), None), async {
        incoming.recv().await.map(|r| r.accept())
    });
    let tx = opened?;
    let rx = accepted.ok_or_else(|| anyhow!("bob got no stream request"))?;
    let elapsed = transfer(tx, rx, cfg.bytes).await?;
    alice.close().await;
    bob.close().await;
    Ok(elapsed)
}

/// Runs the scenario against `server` and the relay.
pub(crate) async fn run(server: &Server, cfg: &StreamConfig) -> anyhow::Result<StreamResult> {
    let relay = Relay::start().context("starting the TCP relay")?;
    let before = server.rss_kib();
    let peak = Arc::new(AtomicU64::new(before.unwrap_or(0)));
    let sampling = tokio_util::sync::CancellationToken::new();
    let sampler = {
        let (peak, stop) = (peak.clone(), sampling.clone());
        let pid = server.pid;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            while !stop.is_cancelled() {
                tick.tick().await;
                if let Some(kib) = pid.and_then(super::target::rss_kib) {
                    peak.fetch_max(kib, Ordering::Relaxed);
                }
            }
        })
    };
    let mut hub = Vec::new();
    let mut tcp = Vec::new();
    for round in 0..cfg.rounds.max(1) {
        let d = hub_round(server, cfg, round)
            .await
            .context("through the hub")?;
        hub.push(mib_per_s(cfg.bytes, d));
        let d = relay
            .round(cfg.bytes)
            .await
            .context("through the TCP relay")?;
        tcp.push(mib_per_s(cfg.bytes, d));
    }
    sampling.cancel();
    let _ = sampler.await;
    let (hub_mib_per_s, relay_mib_per_s) = (median(hub), median(tcp));
    Ok(StreamResult {
        bytes: cfg.bytes,
        window: cfg.window,
        rounds: cfg.rounds.max(1),
        hub_mib_per_s,
        relay_mib_per_s,
        ratio: (hub_mib_per_s / relay_mib_per_s.max(1e-9) * 100.0).round() / 100.0,
        hub_rss_before_kib: before,
        hub_rss_growth_kib: before.map(|b| peak.load(Ordering::Relaxed).saturating_sub(b)),
    })
}
