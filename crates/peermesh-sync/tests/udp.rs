//! A host and two clients over real UDP sockets on loopback, driven by the tokio shells.

use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use peermesh_sync::client::{Client, ClientEvent};
use peermesh_sync::demo::{self, POSITION};
use peermesh_sync::host::{Host, HostEvent};
use peermesh_sync::transport::udp::Udp;
use peermesh_sync::transport::{run_client, run_host};
use peermesh_sync::{PeerId, SyncConfig};
use tokio::sync::oneshot;

#[derive(Debug, Default, Clone)]
struct Seen {
    events: Vec<String>,
    checked: u64,
    mispredicted: u64,
    digest: Option<(u64, u64)>,
    own_moved: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_runs_over_udp_on_loopback() {
    let mut host_net = Udp::bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let host_addr = host_net.local_addr().expect("addr");
    let (stop_host, host_stopped) = oneshot::channel::<()>();
    let digests: Arc<Mutex<Vec<(u64, u64)>>> = Arc::default();
    let d2 = digests.clone();
    let host_task = tokio::spawn(async move {
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
    });

    let mut clients = Vec::new();
    for i in 0..2u64 {
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let (stop, stopped) = oneshot::channel::<()>();
        let s2 = seen.clone();
        let task = tokio::spawn(async move {
            let mut net = Udp::bind("127.0.0.1:0".parse().expect("addr"))
                .await
                .expect("bind");
            let mut c = Client::new(
                SyncConfig::default(),
                demo::schema(),
                demo::world(5, 0, false),
                i,
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
                move |c, ev| {
                    if let ClientEvent::Connected { peer } = ev {
                        me.store(peer.0, Relaxed);
                    }
                    if let (Ok(mut s), _) = (s2.lock(), c) {
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
        });
        clients.push((seen, stop, task));
    }

    // Until both clients have checked 60 predictions (a second of ticks), at most 20 s.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let done = clients
            .iter()
            .all(|(s, _, _)| s.lock().map(|s| s.checked >= 60).unwrap_or(false));
        if done || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (seen, _, _) in &clients {
        let s = seen.lock().expect("lock").clone();
        assert!(s.checked >= 60, "{s:?}");
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
    for (_, stop, task) in clients {
        let _ = stop.send(());
        task.await.expect("client task");
    }
    let _ = stop_host.send(());
    host_task.await.expect("host task");
}
