//! A host and its clients over any transport, driven by the tokio shells: the session of
//! `tests/udp.rs`, generic over the transport, with every wait bounded.

use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use peermesh_sync::client::{Client, ClientEvent};
use peermesh_sync::demo::{self, POSITION};
use peermesh_sync::host::{Host, HostEvent};
use peermesh_sync::transport::{run_client, run_host, Transport};
use peermesh_sync::{PeerId, SyncConfig};
use tokio::sync::oneshot;

/// Predictions each client must have checked (a second of ticks at 60 Hz).
pub(crate) const CHECKED: u64 = 60;

/// How long the clients have to get there.
pub(crate) const LIMIT: Duration = Duration::from_secs(30);

/// How long a shell has to stop once told.
const STOP_LIMIT: Duration = Duration::from_secs(10);

#[derive(Debug, Default, Clone)]
struct Seen {
    events: Vec<String>,
    checked: u64,
    mispredicted: u64,
    digest: Option<(u64, u64)>,
    own_moved: bool,
}

/// Runs a host on `host_net` and one client per entry of `clients` (its transport and the
/// host's address on it) until every client has checked [`CHECKED`] predictions or [`LIMIT`]
/// passed; asserts no misprediction and that each client's newest state matches the host's
/// state of that tick. Returns the transports once the shells have stopped.
pub(crate) async fn run_session<T: Transport>(
    host_net: T,
    clients: Vec<(T, T::Addr)>,
) -> (T, Vec<T>) {
    let (stop_host, host_stopped) = oneshot::channel::<()>();
    let digests: Arc<Mutex<Vec<(u64, u64)>>> = Arc::default();
    let d2 = digests.clone();
    let host_task = tokio::spawn(async move {
        let mut host_net = host_net;
        let mut host = Host::new(
            SyncConfig::default(),
            demo::schema(),
            demo::world(5, 200, true),
            5,
        )
        .expect("host");
        run_host(
            &mut host,
            &mut host_net,
            |h, ev| {
                if let HostEvent::Joined { peer, .. } = ev {
                    let s = &mut h.world_mut().store;
                    let id = s.spawn(Some(peer));
                    s.set_lanes(id, POSITION, &[500_000, 500_000, 500_000]);
                }
            },
            |h| {
                if let Some(s) = h.latest() {
                    if let Ok(mut d) = d2.lock() {
                        d.push((s.tick(), s.digest()));
                        let n = d.len();
                        if n > 600 {
                            d.drain(..n - 600);
                        }
                    }
                }
            },
            async {
                let _ = host_stopped.await;
            },
        )
        .await
        .expect("host runs");
        host_net
    });

    let mut running = Vec::new();
    for (i, (net, host_addr)) in clients.into_iter().enumerate() {
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let (stop, stopped) = oneshot::channel::<()>();
        let s2 = seen.clone();
        let task = tokio::spawn(async move {
            let mut net = net;
            let mut c = Client::new(
                SyncConfig::default(),
                demo::schema(),
                demo::world(5, 0, false),
                i as u64,
                std::time::Instant::now(),
            )
            .expect("client");
            let me = Arc::new(AtomicU32::new(0));
            let me2 = me.clone();
            c.set_sampler(move |tick, out| {
                out.push(demo::bot_input(PeerId(me2.load(Relaxed)), tick))
            });
            let s3 = s2.clone();
            run_client(
                &mut c,
                &mut net,
                host_addr,
                move |_, ev| {
                    if let ClientEvent::Connected { peer } = ev {
                        me.store(peer.0, Relaxed);
                    }
                    if let Ok(mut s) = s2.lock() {
                        s.events.push(format!("{ev:?}"));
                    }
                },
                move |c, now| {
                    let r = c.render(now);
                    let own = r
                        .rows()
                        .any(|(row, lanes)| row.predicted && lanes[0] != 500_000.0);
                    if let Ok(mut s) = s3.lock() {
                        s.checked = c.stats().predictions_checked;
                        s.mispredicted = c.stats().mispredictions;
                        s.digest = c.latest().map(|l| (l.tick(), l.digest()));
                        s.own_moved |= own;
                    }
                },
                async {
                    let _ = stopped.await;
                },
            )
            .await
            .expect("client runs");
            net
        });
        running.push((seen, stop, task));
    }

    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let done = running
            .iter()
            .all(|(s, _, _)| s.lock().map(|s| s.checked >= CHECKED).unwrap_or(false));
        if done || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (seen, _, _) in &running {
        let s = seen.lock().expect("lock").clone();
        assert!(s.checked >= CHECKED, "{s:?}");
        assert_eq!(s.mispredicted, 0, "{s:?}");
        assert!(s.own_moved, "the predicted entity never moved: {s:?}");
        assert!(s.events.iter().any(|e| e.starts_with("Connected")), "{s:?}");
        let (tick, digest) = s.digest.expect("a state");
        let host = digests.lock().expect("lock").clone();
        let theirs = host.iter().find(|(t, _)| *t == tick).map(|(_, d)| *d);
        assert_eq!(
            theirs,
            Some(digest),
            "client state at tick {tick} differs from the host's"
        );
    }
    let mut nets = Vec::new();
    for (_, stop, task) in running {
        let _ = stop.send(());
        let net = tokio::time::timeout(STOP_LIMIT, task)
            .await
            .expect("the client stops in time")
            .expect("client task");
        nets.push(net);
    }
    let _ = stop_host.send(());
    let host_net = tokio::time::timeout(STOP_LIMIT, host_task)
        .await
        .expect("the host stops in time")
        .expect("host task");
    (host_net, nets)
}
