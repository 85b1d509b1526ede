//! A sync session carried over the peermesh hub survives a dropped hub connection through the
//! hub client's own resume: the player's TCP connection to the hub is reset (through a fault
//! proxy) and refused for a while, its hub client resumes the hub session under the same id,
//! and the sync client never loses its session: no resync, no second full snapshot, and its
//! newest state is the host's state of that tick.
//!
//! Prediction is not free of mispredictions across the cut: the datagrams the player sends
//! while its hub client is between connections are dropped ([`HubTransport`] reports
//! `WouldBlock` rather than queueing them for the resume), and its inputs for the ticks the
//! host runs meanwhile reach the host too late. Each such tick is a misprediction and a
//! rollback; the test bounds them by the host's count of missed inputs and requires none
//! before the cut and none once the session has settled after it.
//!
//! Every wait is bounded and polls against a deadline; nothing sleeps to synchronise.

use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use peermesh_client::{
    Client as HubClient, ClientEvent as HubEvent, ClientOptions, EventStream, ReconnectPolicy,
};
use peermesh_hub::{Hub, HubConfig};
use peermesh_sync::client::{Client, ClientEvent, ClientStats};
use peermesh_sync::demo::{self, POSITION};
use peermesh_sync::host::{Host, HostEvent, PeerStats};
use peermesh_sync::transport::hub::HubTransport;
use peermesh_sync::transport::{run_client, run_host};
use peermesh_sync::{PeerId, SyncConfig};
use peermesh_testkit::FaultProxy;
use tokio::sync::oneshot;

/// Predictions the client must check before the cut, and again after it.
const CHECKED: u64 = 60;

/// How long any one wait may take.
const LIMIT: Duration = Duration::from_secs(30);

/// How long a shell has to stop once told.
const STOP_LIMIT: Duration = Duration::from_secs(10);

/// How long the proxy resets and refuses the player's connection: well inside the hub's resume
/// grace (10 s) and shorter than the sync layer's `peer_timeout` (1 s), so the hub's resume
/// alone carries the session. A cut longer than `peer_timeout` would make the sync layer
/// resume its own session too (`ConnectionLost`, `Reconnected { resumed: true }`), which
/// `tests/session.rs` covers.
const CUT: Duration = Duration::from_millis(500);

/// What the sync client reported so far.
#[derive(Debug, Default, Clone)]
struct Seen {
    events: Vec<ClientEvent>,
    stats: ClientStats,
    /// The tick and digest of the client's newest authoritative state.
    latest: Option<(u64, u64)>,
}

async fn connect(opts: ClientOptions) -> HubClient {
    tokio::time::timeout(LIMIT, HubClient::connect(opts))
        .await
        .expect("connects in time")
        .expect("connects")
}

/// Polls `seen` until `done` holds; panics with what was seen after [`LIMIT`].
async fn wait_until(seen: &Mutex<Seen>, what: &str, done: impl Fn(&Seen) -> bool) -> Seen {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let s = seen.lock().expect("lock").clone();
        if done(&s) {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {what} within {LIMIT:?}: {s:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Receives hub client events until `want` picks one; panics after [`LIMIT`].
async fn next_hub_event<T>(
    events: &mut EventStream,
    log: &mut Vec<HubEvent>,
    mut want: impl FnMut(&HubEvent) -> Option<T>,
) -> T {
    tokio::time::timeout(LIMIT, async {
        while let Some(e) = events.recv().await {
            let got = want(&e);
            log.push(e);
            if let Some(t) = got {
                return t;
            }
        }
        panic!("the hub client's event stream ended: {log:#?}")
    })
    .await
    .unwrap_or_else(|_| panic!("no such hub client event within {LIMIT:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_session_survives_a_dropped_hub_connection_through_the_hub_resume() {
    let hub = Hub::bind(HubConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        resume_grace_ms: 10_000,
        shutdown_grace_ms: 500,
        ..HubConfig::default()
    })
    .await
    .expect("hub binds");
    let hub_addr = hub.local_addr();
    let hub_task = tokio::spawn(hub.run());
    let proxy = FaultProxy::start(hub_addr, None)
        .await
        .expect("proxy starts");

    // The host talks to the hub directly; the player goes through the proxy and reconnects
    // quickly once it lets connections through again.
    let host_hub =
        connect(ClientOptions::new(format!("ws://{hub_addr}/ws")).with_id("sync-host")).await;
    let player_hub = connect(ClientOptions {
        reconnect: Some(ReconnectPolicy {
            base_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(100),
            max_attempts: 1_000,
            max_elapsed: Duration::from_secs(60),
            seed: Some(7),
            ..Default::default()
        }),
        ..ClientOptions::new(format!("ws://{}/ws", proxy.addr())).with_id("player")
    })
    .await;
    let mut hub_events = player_hub.events();
    let mut hub_log = Vec::new();
    let host_net = HubTransport::new(host_hub);
    let player_net = HubTransport::new(player_hub);
    let host_id = host_net.client().id().to_string();

    // The host, recording the digest of each state it produces (the last 600 ticks) and its
    // counters for the player.
    let (stop_host, host_stopped) = oneshot::channel::<()>();
    let digests: Arc<Mutex<Vec<(u64, u64)>>> = Arc::default();
    let host_digests = digests.clone();
    let player_stats: Arc<Mutex<Option<PeerStats>>> = Arc::default();
    let host_player_stats = player_stats.clone();
    let host_task = tokio::spawn(async move {
        let mut net = host_net;
        let mut host = Host::new(
            SyncConfig::default(),
            demo::schema(),
            demo::world(5, 200, true),
            5,
        )
        .expect("host");
        run_host(
            &mut host,
            &mut net,
            |h, ev| {
                if let HostEvent::Joined { peer, .. } = ev {
                    let store = &mut h.world_mut().store;
                    let id = store.spawn(Some(peer));
                    store.set_lanes(id, POSITION, &[500_000, 500_000, 500_000]);
                }
            },
            |h| {
                let player = h.peers().next();
                *host_player_stats.lock().expect("lock") = player.and_then(|p| h.stats(p));
                if let Some(s) = h.latest() {
                    let mut d = host_digests.lock().expect("lock");
                    d.push((s.tick(), s.digest()));
                    let n = d.len();
                    if n > 600 {
                        d.drain(..n - 600);
                    }
                }
            },
            async {
                let _ = host_stopped.await;
            },
        )
        .await
        .expect("host runs");
        net
    });

    // The player's sync client, predicting its own entity with the demo's bot input.
    let (stop_client, client_stopped) = oneshot::channel::<()>();
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let on_event_seen = seen.clone();
    let on_frame_seen = seen.clone();
    let client_task = tokio::spawn(async move {
        let mut net = player_net;
        let mut c = Client::new(
            SyncConfig::default(),
            demo::schema(),
            demo::world(5, 0, false),
            1,
            std::time::Instant::now(),
        )
        .expect("client");
        let me = Arc::new(AtomicU32::new(0));
        let sampler_me = me.clone();
        c.set_sampler(move |tick, out| {
            out.push(demo::bot_input(PeerId(sampler_me.load(Relaxed)), tick))
        });
        run_client(
            &mut c,
            &mut net,
            host_id,
            move |_, ev| {
                if let ClientEvent::Connected { peer } = ev {
                    me.store(peer.0, Relaxed);
                }
                on_event_seen.lock().expect("lock").events.push(ev.clone());
            },
            move |c, _now| {
                let mut s = on_frame_seen.lock().expect("lock");
                s.stats = c.stats();
                s.latest = c.latest().map(|l| (l.tick(), l.digest()));
            },
            async {
                let _ = client_stopped.await;
            },
        )
        .await
        .expect("client runs");
        net
    });

    // Predicting before the cut.
    let before = wait_until(&seen, "predictions before the cut", |s| {
        s.stats.predictions_checked >= CHECKED
    })
    .await;
    assert_eq!(before.stats.mispredictions, 0, "{before:#?}");

    // The player's connection is reset and refused for CUT.
    proxy.wait_connections(1).await;
    assert_eq!(proxy.cut(CUT), 1, "the player's connection is reset");
    next_hub_event(&mut hub_events, &mut hub_log, |e| {
        matches!(e, HubEvent::ConnectionLost { .. }).then_some(())
    })
    .await;
    next_hub_event(&mut hub_events, &mut hub_log, |e| match e {
        HubEvent::Resumed { .. } => Some(()),
        HubEvent::Resynced { reason, message } => {
            panic!("the hub refused the resume ({reason:?}): {message}")
        }
        HubEvent::Lost { reason } => panic!("the hub client gave up: {reason}"),
        _ => None,
    })
    .await;
    assert!(
        hub_log
            .iter()
            .any(|e| matches!(e, HubEvent::Reconnected { .. })),
        "resumed without reconnecting: {hub_log:#?}"
    );
    assert!(proxy.stats().accepted >= 2, "{:?}", proxy.stats());

    // Predicting again after the resume; then, the session settled, predicting right.
    let from = before.stats.predictions_checked;
    let settled = wait_until(&seen, "predictions after the cut", |s| {
        s.stats.predictions_checked >= from + CHECKED
    })
    .await;
    let from = settled.stats.predictions_checked;
    let after = wait_until(&seen, "predictions once settled", |s| {
        s.stats.predictions_checked >= from + CHECKED
    })
    .await;
    let host = digests.lock().expect("lock").clone();
    let host_player = player_stats
        .lock()
        .expect("lock")
        .expect("the host has the player");

    let _ = stop_client.send(());
    let player_net = tokio::time::timeout(STOP_LIMIT, client_task)
        .await
        .expect("the client stops in time")
        .expect("client task");
    let _ = stop_host.send(());
    let host_net = tokio::time::timeout(STOP_LIMIT, host_task)
        .await
        .expect("the host stops in time")
        .expect("host task");

    // The sync session carried on: one full snapshot, no resync, no misprediction.
    assert!(
        after
            .events
            .iter()
            .any(|e| matches!(e, ClientEvent::Synced { .. })),
        "{after:#?}"
    );
    assert!(
        !after
            .events
            .contains(&ClientEvent::Reconnected { resumed: false }),
        "the sync session was replaced: {after:#?}"
    );
    assert_eq!(after.stats.full_snapshots, 1, "{after:#?}");
    assert_eq!(after.stats.resyncs, 0, "{after:#?}");
    assert_eq!(host_player.full_snapshots, 1, "{host_player:#?}");
    assert_eq!(host_player.resumes, 0, "{host_player:#?}");
    // Mispredictions only for ticks the host ran without the player's input (see the top of
    // the file), and none once settled.
    assert!(
        after.stats.mispredictions <= host_player.input_misses,
        "{after:#?} {host_player:#?}"
    );
    assert_eq!(
        after.stats.mispredictions, settled.stats.mispredictions,
        "mispredicting once settled: {after:#?}"
    );
    let (tick, digest) = after.latest.expect("a state");
    let theirs = host.iter().find(|(t, _)| *t == tick).map(|(_, d)| *d);
    assert_eq!(
        theirs,
        Some(digest),
        "the client's state at tick {tick} differs from the host's"
    );

    player_net.client().close().await;
    host_net.client().close().await;
    hub_task.abort();
}
