//! Streams between Rust clients through a real hub over loopback sockets.
//!
//! Every wait is bounded (`within`); nothing sleeps to synchronise. The large transfer is
//! 16 MiB by default; `PEERMESH_STREAM_MIB=100` runs the full 100 MiB of the issue.
#![allow(clippy::unwrap_used)]

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, Result};
use peermesh_client::{Client, ClientOptions, ErrorCode, Stream, StreamReset};
use peermesh_hub::{Hub, HubConfig, HubHandle};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIMIT: Duration = Duration::from_secs(60);

async fn within<T>(fut: impl IntoFuture<Output = T>) -> Result<T> {
    tokio::time::timeout(LIMIT, fut)
        .await
        .map_err(|_| anyhow!("no result within {LIMIT:?}"))
}

struct TestHub {
    addr: SocketAddr,
    handle: HubHandle,
}

impl TestHub {
    async fn start(cfg: HubConfig) -> Result<Self> {
        let hub = Hub::bind(HubConfig {
            listen: "127.0.0.1:0".parse()?,
            shutdown_grace_ms: 1_000,
            ..cfg
        })
        .await?;
        let addr = hub.local_addr();
        let handle = hub.handle();
        tokio::spawn(hub.run());
        Ok(Self { addr, handle })
    }

    async fn client(&self, id: &str) -> Result<Client> {
        let opts = ClientOptions {
            reconnect: None,
            incoming_stream_capacity: 64,
            ..ClientOptions::new(format!("ws://{}/ws", self.addr)).with_id(id)
        };
        Ok(within(Client::connect(opts)).await??)
    }

    /// Waits until the hub holds no stream state at all.
    async fn until_no_streams(&self) -> Result<()> {
        within(async {
            while self.handle.stream_ends() != 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
    }
}

impl Drop for TestHub {
    fn drop(&mut self) {
        self.handle.shutdown();
    }
}

/// A deterministic byte source (xorshift), so the reader can check every byte.
struct Bytes(u64);

impl Bytes {
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            *b = self.0 as u8;
        }
    }
}

/// Opens a stream from `a` to `b` (which accepts it) and returns both ends.
async fn pair(a: &Client, b: &Client) -> Result<(Stream, Stream)> {
    let mut incoming = b.incoming_streams();
    let open = a.open_stream(b.id().as_str(), Some(json!({"name": "test"})));
    let accept = async {
        let req = incoming.recv().await.ok_or(anyhow!("no request"))?;
        assert_eq!(req.from().map(|f| f.as_str()), Some(a.id().as_str()));
        assert_eq!(req.meta(), Some(&json!({"name": "test"})));
        Ok::<_, anyhow::Error>(req.accept())
    };
    let (opened, accepted) = within(async { tokio::join!(open.into_future(), accept) }).await?;
    Ok((opened?, accepted?))
}

fn reset_of(e: &std::io::Error) -> Option<StreamReset> {
    e.get_ref()?.downcast_ref::<StreamReset>().cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_arrive_exactly_with_random_writes_and_a_slow_reader() -> Result<()> {
    let mib: usize = std::env::var("PEERMESH_STREAM_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16);
    let total = mib << 20;
    let hub = TestHub::start(HubConfig::default()).await?;
    let alice = hub.client("alice").await?;
    let bob = hub.client("bob").await?;
    let (mut tx, mut rx) = pair(&alice, &bob).await?;

    let writer = tokio::spawn(async move {
        let mut src = Bytes(0x9e37_79b9_7f4a_7c15);
        let mut sizes = Bytes(42);
        let mut buf = vec![0u8; 200_000];
        let mut sent = 0;
        while sent < total {
            let mut r = [0u8; 4];
            sizes.fill(&mut r);
            let n = (u32::from_le_bytes(r) as usize % buf.len() + 1).min(total - sent);
            src.fill(&mut buf[..n]);
            tx.write_all(&buf[..n]).await?;
            sent += n;
        }
        tx.shutdown().await?;
        Ok::<_, std::io::Error>(tx)
    });

    // The reader reads in small random pieces, and now and then stops for a while: the
    // writer must wait for it (its window is the default), whatever it writes.
    let mut expect = Bytes(0x9e37_79b9_7f4a_7c15);
    let mut sizes = Bytes(7);
    let mut got = vec![0u8; 70_000];
    let mut want = vec![0u8; 70_000];
    let mut received = 0usize;
    let mut reads = 0u64;
    within(async {
        loop {
            let mut r = [0u8; 4];
            sizes.fill(&mut r);
            let n = u32::from_le_bytes(r) as usize % got.len() + 1;
            let k = rx.read(&mut got[..n]).await?;
            if k == 0 {
                break;
            }
            expect.fill(&mut want[..k]);
            assert!(
                got[..k] == want[..k],
                "byte mismatch after {received} bytes"
            );
            received += k;
            reads += 1;
            if reads % 64 == 0 {
                tokio::task::yield_now().await;
            }
        }
        Ok::<_, anyhow::Error>(())
    })
    .await??;
    assert_eq!(received, total);
    let tx = within(writer).await???;
    rx.shutdown().await?;
    drop((tx, rx));
    hub.until_no_streams().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_lets_the_other_side_answer() -> Result<()> {
    let hub = TestHub::start(HubConfig::default()).await?;
    let alice = hub.client("alice").await?;
    let bob = hub.client("bob").await?;
    let (mut a, mut b) = pair(&alice, &bob).await?;
    a.write_all(b"question").await?;
    a.shutdown().await?;
    let mut q = Vec::new();
    within(b.read_to_end(&mut q)).await??;
    assert_eq!(q, b"question");
    b.write_all(b"answer").await?;
    b.shutdown().await?;
    let mut ans = Vec::new();
    within(a.read_to_end(&mut ans)).await??;
    assert_eq!(ans, b"answer");
    // Both directions ended: nothing is left anywhere, and dropping resets nothing.
    hub.until_no_streams().await?;
    drop((a, b));
    assert_eq!(within(alice.stream_count()).await??, 0);
    assert_eq!(within(bob.stream_count()).await??, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejection_reaches_the_opener_with_its_reason() -> Result<()> {
    let hub = TestHub::start(HubConfig::default()).await?;
    let alice = hub.client("alice").await?;
    let bob = hub.client("bob").await?;
    let mut incoming = bob.incoming_streams();
    let open = alice.open_stream("bob", None);
    let (opened, ()) = within(async {
        tokio::join!(open.into_future(), async {
            incoming.recv().await.unwrap().reject("busy right now");
        })
    })
    .await?;
    let err = opened.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::StreamRejected), "{err}");
    assert_eq!(err.message(), "busy right now");
    // Nobody listens on carol's side: rejected at once.
    let carol = hub.client("carol").await?;
    let err = within(alice.open_stream("carol", None)).await?.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::StreamRejected), "{err}");
    drop(carol);
    let err = within(alice.open_stream("nobody", None))
        .await?
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::UnknownTarget), "{err}");
    hub.until_no_streams().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_reaches_the_other_side_with_its_reason() -> Result<()> {
    let hub = TestHub::start(HubConfig::default()).await?;
    let alice = hub.client("alice").await?;
    let bob = hub.client("bob").await?;
    let (a, mut b) = pair(&alice, &bob).await?;
    a.reset("changed my mind");
    let mut buf = [0u8; 16];
    let err = within(b.read(&mut buf)).await?.unwrap_err();
    let reset = reset_of(&err).expect("a StreamReset inside the io error");
    assert_eq!(reset.code, ErrorCode::PeerReset);
    assert_eq!(reset.reason, "changed my mind");
    assert!(b.write_all(b"x").await.is_err());
    hub.until_no_streams().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnect_mid_stream_resets_the_other_side_and_frees_everything() -> Result<()> {
    let hub = TestHub::start(HubConfig::default()).await?;
    let alice = hub.client("alice").await?;
    let bob = hub.client("bob").await?;
    let (mut a, mut b) = pair(&alice, &bob).await?;
    let (mut a2, _b2) = pair(&alice, &bob).await?;
    a.write_all(&[1u8; 100_000]).await?;
    let mut first = vec![0u8; 1000];
    within(b.read_exact(&mut first)).await??;
    bob.close().await;
    for s in [&mut a, &mut a2] {
        let mut buf = [0u8; 16];
        let err = within(s.read(&mut buf)).await?.unwrap_err();
        let reset = reset_of(&err).expect("a StreamReset");
        assert_eq!(reset.code, ErrorCode::PeerLeft, "{reset}");
    }
    hub.until_no_streams().await?;
    assert_eq!(within(alice.stream_count()).await??, 0);
    // Bob's side failed locally, after the bytes that had arrived.
    let mut rest = Vec::new();
    assert!(within(b.read_to_end(&mut rest)).await?.is_err());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stream_slows_neither_other_streams_nor_messages() -> Result<()> {
    let hub = TestHub::start(HubConfig::default()).await?;
    let alice = hub.client("alice").await?;
    let bob = hub.client("bob").await?;
    let (mut stalled_tx, stalled_rx) = pair(&alice, &bob).await?;
    // Fill the stalled stream: bob's window goes out, the send buffer (128 KiB) fills, and
    // then the writer is held back: bob reads nothing, so no credit comes.
    let window = peermesh_proto::stream::DEFAULT_WINDOW as usize;
    within(stalled_tx.write_all(&vec![5u8; window + (128 << 10)])).await??;
    let held_back = async {
        tokio::time::timeout(Duration::ZERO, stalled_tx.write_all(&[1]))
            .await
            .is_err()
    };
    assert!(held_back.await, "a write beyond window + buffer must wait");
    // Another stream moves 4 MiB, and messages flow, while the first one is stalled.
    let (mut tx, mut rx) = pair(&alice, &bob).await?;
    let mut messages = bob.on("ping");
    let send = tokio::spawn(async move {
        tx.write_all(&vec![9u8; 4 << 20]).await?;
        tx.shutdown().await?;
        Ok::<_, std::io::Error>(tx)
    });
    let mut all = Vec::new();
    within(rx.read_to_end(&mut all)).await??;
    assert_eq!(all.len(), 4 << 20);
    within(send).await???;
    within(alice.emit("bob", "ping", json!(1))).await??;
    let m = within(messages.recv()).await?.unwrap();
    assert_eq!(m.payload.as_json(), Some(&json!(1)));
    // Still held back: nothing was read on the stalled stream.
    let still = tokio::time::timeout(Duration::ZERO, stalled_tx.write_all(&[1])).await;
    assert!(still.is_err());
    drop(stalled_rx);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_streams_across_fifty_clients() -> Result<()> {
    let hub = TestHub::start(HubConfig::default()).await?;
    let mut clients = Vec::new();
    for i in 0..50 {
        clients.push(hub.client(&format!("c{i}")).await?);
    }
    // Every client echoes whatever its incoming streams carry.
    let mut echoes = Vec::new();
    for c in &clients {
        let mut incoming = c.incoming_streams();
        echoes.push(tokio::spawn(async move {
            let mut tasks = Vec::new();
            while let Some(req) = incoming.recv().await {
                let mut s = req.accept();
                tasks.push(tokio::spawn(async move {
                    let mut buf = Vec::new();
                    s.read_to_end(&mut buf).await?;
                    s.write_all(&buf).await?;
                    s.shutdown().await?;
                    Ok::<_, std::io::Error>(s)
                }));
            }
            tasks
        }));
    }
    // Each client opens 20 streams to other clients: 1,000 streams, all open at once.
    let mut streams = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        for k in 0..20 {
            let to = format!("c{}", (i + 1 + k) % 50);
            streams.push((i, k, c.open_stream(to, None).send().await?));
        }
    }
    let mut open = Vec::new();
    for (i, k, pending) in streams {
        let s = within(pending)
            .await?
            .map_err(|e| anyhow!("stream {k} of c{i}: {e}"))?;
        open.push((i, k, s));
    }
    assert_eq!(open.len(), 1000);
    assert_eq!(hub.handle.stream_ends(), 2000);
    let mut checks = Vec::new();
    for (i, k, mut s) in open {
        checks.push(tokio::spawn(async move {
            let msg = format!("stream {k} of c{i}").repeat(100);
            s.write_all(msg.as_bytes()).await?;
            s.shutdown().await?;
            let mut back = Vec::new();
            s.read_to_end(&mut back).await?;
            assert_eq!(back, msg.as_bytes());
            Ok::<_, std::io::Error>(())
        }));
    }
    for c in checks {
        within(c).await???;
    }
    hub.until_no_streams().await?;
    for c in &clients {
        c.close().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_fails_when_the_target_never_answers() -> Result<()> {
    let hub = TestHub::start(HubConfig {
        stream_open_timeout_ms: 200,
        ..HubConfig::default()
    })
    .await?;
    let alice = hub.client("alice").await?;
    let bob = hub.client("bob").await?;
    let mut incoming = bob.incoming_streams();
    let open = alice.open_stream("bob", None).send().await?;
    let held = within(incoming.recv()).await?.unwrap();
    let err = within(open).await?.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::StreamTimeout), "{err}");
    // Bob's late accept gets a stream that is already reset.
    let mut late = held.accept();
    let mut buf = [0u8; 4];
    let err = within(late.read(&mut buf)).await?.unwrap_err();
    assert_eq!(
        reset_of(&err).map(|r| r.code),
        Some(ErrorCode::StreamTimeout)
    );
    hub.until_no_streams().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_beyond_the_hubs_limit_is_clamped_to_it() -> Result<()> {
    let hub = TestHub::start(HubConfig {
        max_stream_window_bytes: 64 << 10,
        ..HubConfig::default()
    })
    .await?;
    let big = |id: &str| ClientOptions {
        reconnect: None,
        stream_window: 8 << 20,
        ..ClientOptions::new(format!("ws://{}/ws", hub.addr)).with_id(id)
    };
    let alice = within(Client::connect(big("alice"))).await??;
    let bob = within(Client::connect(big("bob"))).await??;
    let (mut a, mut b) = pair(&alice, &bob).await?;
    let send = tokio::spawn(async move {
        a.write_all(&vec![3u8; 1 << 20]).await?;
        a.shutdown().await?;
        Ok::<_, std::io::Error>(a)
    });
    let mut all = Vec::new();
    within(b.read_to_end(&mut all)).await??;
    assert_eq!(all.len(), 1 << 20);
    within(send).await???;
    Ok(())
}
