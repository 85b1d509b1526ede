//! Three cluster nodes on a real `nats-server` (with JetStream) on loopback. Every wait is
//! bounded and polls; nothing sleeps to synchronise.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use peermesh_cluster::{Claim, Cluster, ClusterConfig, ClusterError, Event};

struct Nats {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Nats {
    fn start() -> Nats {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        Nats::start_on(port)
    }

    fn start_on(port: u16) -> Nats {
        Nats::start_with(port, true)
    }

    fn start_with(port: u16, jetstream: bool) -> Nats {
        let dir = tempfile::tempdir().expect("a temp dir");
        let mut cmd = Command::new("nats-server");
        cmd.args(["-a", "127.0.0.1", "-p", &port.to_string()]);
        if jetstream {
            cmd.arg("-js").arg("-sd").arg(dir.path());
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server is installed (scripts/test.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Nats {
            child,
            port,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops the server (SIGKILL) and waits for it.
    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port and store.
    fn start_again(&mut self) {
        let child = Command::new("nats-server")
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self._dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts again");
        self.child = child;
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn node(nats: &Nats, name: &str) -> Cluster {
    Cluster::join(ClusterConfig::new(nats.url(), name))
        .await
        .expect("joins")
}

async fn until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_see_each_other_and_exactly_one_wins_each_id() {
    let nats = Nats::start();
    let (a, b, c) = tokio::join!(
        node(&nats, "hub-a"),
        node(&nats, "hub-b"),
        node(&nats, "hub-c")
    );
    until("members", Duration::from_secs(5), || {
        [&a, &b, &c].iter().all(|n| n.members().len() == 3)
    })
    .await;
    a.set_clients(7);
    until("client count", Duration::from_secs(5), || {
        b.members()
            .iter()
            .any(|m| m.name == "hub-a" && m.clients == 7)
    })
    .await;

    // 20 ids claimed by all three at the same moment: exactly one winner each, and the
    // losers name it.
    for i in 0..20 {
        let id = format!("player-{i} ü/é");
        let (ra, rb, rc) = tokio::join!(a.claim(&id), b.claim(&id), c.claim(&id));
        let results = [
            ("hub-a", ra.expect("a")),
            ("hub-b", rb.expect("b")),
            ("hub-c", rc.expect("c")),
        ];
        let winners: Vec<&str> = results
            .iter()
            .filter(|(_, r)| *r == Claim::Won)
            .map(|(n, _)| *n)
            .collect();
        assert_eq!(winners.len(), 1, "{id}: {results:?}");
        for (_, r) in &results {
            if let Claim::Taken { node } = r {
                assert_eq!(node, winners[0]);
            }
        }
    }
    // A claim by the holder again is a win; release frees the id for another node.
    assert_eq!(a.claim("solo").await.expect("claim"), Claim::Won);
    assert_eq!(a.claim("solo").await.expect("again"), Claim::Won);
    assert_eq!(
        b.claim("solo").await.expect("b"),
        Claim::Taken {
            node: "hub-a".into()
        }
    );
    until("owner seen", Duration::from_secs(5), || {
        c.owner("solo").as_deref() == Some("hub-a")
    })
    .await;
    b.release("solo").await.expect("not b's: no effect");
    assert_eq!(
        c.claim("solo").await.expect("c"),
        Claim::Taken {
            node: "hub-a".into()
        }
    );
    a.release("solo").await.expect("release");
    assert_eq!(c.claim("solo").await.expect("c"), Claim::Won);

    // A second node with a taken name is refused.
    match Cluster::join(ClusterConfig::new(nats.url(), "hub-b")).await {
        Err(ClusterError::NameTaken(n)) => assert_eq!(n, "hub-b"),
        other => panic!("expected NameTaken, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_ids_are_released_within_ten_seconds_and_a_leaving_nodes_at_once() {
    let nats = Nats::start();
    let a = node(&nats, "hub-a").await;
    let b = node(&nats, "hub-b").await;
    let c = node(&nats, "hub-c").await;
    until("members", Duration::from_secs(5), || a.members().len() == 3).await;
    for i in 0..50 {
        assert_eq!(c.claim(&format!("c-{i}")).await.expect("claim"), Claim::Won);
    }
    assert_eq!(b.claim("b-1").await.expect("claim"), Claim::Won);
    until("owners seen", Duration::from_secs(5), || {
        a.owner("c-49").as_deref() == Some("hub-c")
    })
    .await;

    // hub-c stops without a word (as kill -9: heartbeats stop, nothing released).
    drop(c);
    let released = until("hub-c's ids released", Duration::from_secs(10), || {
        (0..50).all(|i| a.owner(&format!("c-{i}")).is_none())
    })
    .await;
    assert!(
        a.members().iter().all(|m| m.name != "hub-c"),
        "{:?}",
        a.members()
    );
    assert_eq!(a.claim("c-7").await.expect("claim"), Claim::Won);
    eprintln!("a dead node's 50 ids were free after {released:?}");
    assert!(
        a.released() + b.released() == 50,
        "released {} + {}",
        a.released(),
        b.released()
    );

    // hub-b leaves: its id is free at once, and it is gone from the table at once.
    b.leave().await.expect("leave");
    until("hub-b gone", Duration::from_secs(1), || {
        a.members().len() == 1
    })
    .await;
    assert_eq!(a.claim("b-1").await.expect("claim"), Claim::Won);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_unreachable_is_a_clear_error_and_wait_keeps_trying() {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let url = format!("nats://127.0.0.1:{port}");
    let err = Cluster::join(ClusterConfig::new(url.clone(), "hub-a"))
        .await
        .expect_err("nothing listens");
    let msg = err.to_string();
    assert!(matches!(err, ClusterError::Unreachable { .. }), "{msg}");
    assert!(
        msg.contains(&url) && msg.contains("--cluster-wait"),
        "{msg}"
    );

    // With a wait, the node joins once the server comes up.
    let waiting = tokio::spawn(Cluster::join(ClusterConfig {
        wait: Some(Duration::from_secs(20)),
        ..ClusterConfig::new(url, "hub-a")
    }));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _nats = Nats::start_on(port);
    let a = waiting.await.expect("task").expect("joined after the wait");
    assert_eq!(a.claim("late").await.expect("claim"), Claim::Won);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_jetstream_is_named_with_the_fix() {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let _nats = Nats::start_with(port, false);
    let err = Cluster::join(ClusterConfig::new(
        format!("nats://127.0.0.1:{port}"),
        "hub-a",
    ))
    .await
    .expect_err("no JetStream");
    assert!(matches!(err, ClusterError::NoJetStream { .. }), "{err}");
    assert!(err.to_string().contains("-js"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_members_are_cluster_wide_and_a_dead_nodes_members_leave() {
    let nats = Nats::start();
    let a = node(&nats, "hub-a").await;
    let b = node(&nats, "hub-b").await;
    let mut events = b.take_events().expect("the first call gets the events");
    assert!(b.take_events().is_none(), "only one receiver");
    until("members", Duration::from_secs(5), || a.members().len() == 2).await;

    a.join_room("lobby ü", "alice").await.expect("join");
    b.join_room("lobby ü", "bob").await.expect("join");
    a.join_room("other", "alice").await.expect("join");
    until("members seen", Duration::from_secs(5), || {
        b.room_members("lobby ü").len() == 2
    })
    .await;
    assert_eq!(
        b.room_members("lobby ü"),
        vec![
            ("alice".to_owned(), "hub-a".to_owned()),
            ("bob".to_owned(), "hub-b".to_owned())
        ]
    );
    let mut joined = Vec::new();
    while joined.len() < 3 {
        match tokio::time::timeout(Duration::from_secs(5), events.recv()).await {
            Ok(Some(Event::Joined { room, id, node })) => joined.push((room, id, node)),
            other => panic!("expected a join, got {other:?}"),
        }
    }
    assert!(joined.contains(&("lobby ü".into(), "alice".into(), "hub-a".into())));

    // A leave by a node that does not hold the entry changes nothing; by the holder, it frees.
    b.leave_room("other", "alice").await.expect("no effect");
    a.leave_room("other", "alice").await.expect("leave");
    match tokio::time::timeout(Duration::from_secs(5), events.recv()).await {
        Ok(Some(Event::Left { room, id, node })) => {
            assert_eq!(
                (room.as_str(), id.as_str(), node.as_str()),
                ("other", "alice", "hub-a")
            )
        }
        other => panic!("expected a leave, got {other:?}"),
    }

    // hub-a dies: its member and its id go within ten seconds, reported as events.
    assert_eq!(a.claim("alice").await.expect("claim"), Claim::Won);
    let start = Instant::now();
    drop(a);
    let (mut left, mut released, mut gone) = (false, false, false);
    while !(left && released && gone) {
        match tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
            Ok(Some(Event::NodeGone { node })) => {
                assert_eq!(node, "hub-a");
                assert!(!gone, "reported once");
                gone = true;
            }
            Ok(Some(Event::Left { room, id, node })) => {
                assert_eq!(
                    (room.as_str(), id.as_str(), node.as_str()),
                    ("lobby ü", "alice", "hub-a")
                );
                left = true;
            }
            Ok(Some(Event::IdReleased { id, node })) => {
                assert_eq!((id.as_str(), node.as_str()), ("alice", "hub-a"));
                released = true;
            }
            other => panic!("expected hub-a's entries to go, got {other:?}"),
        }
    }
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(
        b.room_members("lobby ü"),
        vec![("bob".to_owned(), "hub-b".to_owned())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_nats_declares_no_one_dead() {
    let mut nats = Nats::start();
    let quick = |name: &str| ClusterConfig {
        heartbeat: Duration::from_millis(200),
        dead_after: Duration::from_secs(1),
        ..ClusterConfig::new(nats.url(), name)
    };
    let a = Cluster::join(quick("hub-a")).await.expect("joins");
    let b = Cluster::join(quick("hub-b")).await.expect("joins");
    let mut events = b.take_events().expect("events");
    until("members", Duration::from_secs(5), || b.members().len() == 2).await;

    // NATS is away for three times `dead_after`: the silence is NATS's, not hub-a's.
    nats.stop();
    let away = Instant::now();
    while away.elapsed() < Duration::from_secs(3) {
        assert!(
            b.is_member("hub-a"),
            "hub-a declared dead while NATS was away"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    nats.start_again();
    until("reconnected", Duration::from_secs(10), || {
        a.connected() && b.connected()
    })
    .await;
    let back = Instant::now();
    while back.elapsed() < Duration::from_secs(2) {
        assert!(
            b.is_member("hub-a"),
            "hub-a declared dead after NATS came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    while let Ok(ev) = events.try_recv() {
        assert!(!matches!(ev, Event::NodeGone { .. }), "{ev:?}");
    }

    // A node that really falls silent is still declared dead.
    drop(a);
    let dead = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match events.recv().await {
                Some(Event::NodeGone { node }) => return node,
                Some(_) => continue,
                None => panic!("events ended"),
            }
        }
    })
    .await
    .expect("hub-a declared dead");
    assert_eq!(dead, "hub-a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gone_nodes_sessions_are_taken_over_by_exactly_one_node_or_freed_after_a_grace() {
    let nats = Nats::start();
    let (a, b, c) = tokio::join!(
        node(&nats, "hub-a"),
        node(&nats, "hub-b"),
        node(&nats, "hub-c")
    );
    until("members", Duration::from_secs(5), || b.members().len() == 3).await;
    assert_eq!(a.claim_session("s1").await.expect("claim"), Claim::Won);
    assert_eq!(a.claim_session("s2").await.expect("claim"), Claim::Won);
    // A node that is still live cannot be taken over from.
    assert_eq!(
        b.take_over_session("s1", "hub-a").await.expect("take over"),
        Claim::Taken {
            node: "hub-a".into()
        }
    );

    a.leave().await.expect("leave");
    let left = Instant::now();
    until("hub-a gone", Duration::from_secs(5), || {
        !b.is_member("hub-a") && !c.is_member("hub-a")
    })
    .await;
    // Its sessions are still its own: a plain claim does not take them...
    assert_eq!(
        b.claim_session("s1").await.expect("claim"),
        Claim::Taken {
            node: "hub-a".into()
        }
    );
    // ...a take-over does, for exactly one of two nodes trying at once.
    let (x, y) = tokio::join!(
        b.take_over_session("s1", "hub-a"),
        c.take_over_session("s1", "hub-a")
    );
    let (x, y) = (x.expect("b"), y.expect("c"));
    match (&x, &y) {
        (Claim::Won, Claim::Taken { node }) => assert_eq!(node, "hub-b"),
        (Claim::Taken { node }, Claim::Won) => assert_eq!(node, "hub-c"),
        other => panic!("exactly one must win: {other:?}"),
    }
    // The session no node took over is freed after the grace.
    loop {
        match b.claim_session("s2").await.expect("claim") {
            Claim::Won => break,
            Claim::Taken { node } => assert_eq!(node, "hub-a"),
        }
        assert!(left.elapsed() < Duration::from_secs(12), "s2 never freed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let freed = left.elapsed();
    eprintln!("a left node's session key was freed {freed:?} after it left");
    assert!(
        freed >= Duration::from_secs(4),
        "freed before the grace: {freed:?}"
    );
}
