//! Tests of the peer manager's state machine, on a virtual clock.

use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;
use serde_json::json;

use super::*;

fn addr(port: u16) -> PeerAddr {
    PeerAddr {
        host: "127.0.0.1".into(),
        port,
    }
}

fn spec(port: u16) -> HostSpec {
    HostSpec::Pair("127.0.0.1".into(), port)
}

fn cfg() -> ManagerConfig {
    ManagerConfig {
        min_peers: 2,
        max_peers: 4,
        ..Default::default()
    }
}

fn dials(m: &mut PeerManager) -> Vec<PeerAddr> {
    let mut out = Vec::new();
    while let Some(a) = m.poll_action() {
        if let Action::Dial(p) = a {
            out.push(p);
        }
    }
    out
}

fn events(m: &mut PeerManager) -> Vec<ManagerEvent> {
    std::iter::from_fn(|| m.poll_event()).collect()
}

#[test]
fn host_forms() {
    let d = 8333;
    assert_eq!(HostSpec::from("example.org").resolve(d).unwrap().port, 8333);
    assert_eq!(HostSpec::from("example.org:9").resolve(d).unwrap().port, 9);
    let v6 = HostSpec::from("[::1]:7").resolve(d).unwrap();
    assert_eq!((v6.host.as_str(), v6.port), ("::1", 7));
    assert_eq!(v6.to_string(), "[::1]:7");
    assert_eq!(HostSpec::from("::1").resolve(d).unwrap().host, "::1");
    let obj = HostSpec::Object {
        host: "h".into(),
        port: None,
    };
    assert_eq!(obj.resolve(d).unwrap().port, 8333);
    assert!(HostSpec::from("h:99999").resolve(d).is_err());
    assert!(HostSpec::from("h:0").resolve(d).is_err());
    assert!(HostSpec::from("").resolve(d).is_err());
    assert!(HostSpec::from("a b:1").resolve(d).is_err());
}

#[test]
fn launch_dials_up_to_the_launch_target_and_pools_the_rest() {
    let t0 = Instant::now();
    let mut m = PeerManager::new(cfg(), t0, 1).unwrap();
    m.launch((1..=6).map(spec).collect(), t0);
    // (min + max) / 2 = 3 while launching.
    assert_eq!(dials(&mut m), vec![addr(1), addr(2), addr(3)]);
    assert_eq!(m.pool_len(), 3);
    assert_eq!(m.state(), ManagerState::Launching);
    m.handle_connected(&addr(1), t0);
    assert_eq!(m.state(), ManagerState::Running);
    assert!(events(&mut m).contains(&ManagerEvent::PeerConnect(addr(1))));
}

#[test]
fn max_peers_is_a_hard_limit() {
    let t0 = Instant::now();
    let mut m = PeerManager::new(cfg(), t0, 1).unwrap();
    m.add_active((1..=6).map(spec).collect(), t0);
    assert_eq!(dials(&mut m).len(), 4);
    for p in 1..=4 {
        m.handle_connected(&addr(p), t0);
    }
    assert!(
        !m.handle_inbound(&addr(50), t0),
        "inbound refused at max_peers"
    );
    assert_eq!(m.peers().count(), 4);
}

#[test]
fn faults_back_off_longer_each_time() {
    let t0 = Instant::now();
    let mut m = PeerManager::new(cfg(), t0, 1).unwrap();
    m.add_active(vec![spec(1)], t0);
    dials(&mut m);
    m.handle_dial_failed(&addr(1), "refused", t0);
    m.add_active(vec![spec(1)], t0 + Duration::from_secs(29));
    assert!(dials(&mut m).is_empty(), "backed off for 30 s");
    let t1 = t0 + Duration::from_secs(31);
    m.add_active(vec![spec(1)], t1);
    assert_eq!(dials(&mut m), vec![addr(1)]);
    m.handle_dial_failed(&addr(1), "refused", t1);
    m.add_active(vec![spec(1)], t1 + Duration::from_secs(59));
    assert!(dials(&mut m).is_empty(), "second fault: 60 s");
    m.add_active(vec![spec(1)], t1 + Duration::from_secs(61));
    assert_eq!(dials(&mut m), vec![addr(1)]);
    assert!(!m.handle_inbound(&addr(9), t1) || m.peer(&addr(9)).is_some());
}

#[test]
fn connect_timeout_and_idle_timeout() {
    let t0 = Instant::now();
    let mut m = PeerManager::new(cfg(), t0, 1).unwrap();
    m.launch(vec![spec(1), spec(2)], t0);
    dials(&mut m);
    m.handle_connected(&addr(1), t0);
    // addr(2) never connects: abandoned at the connect timeout.
    let t = m.poll_timeout().unwrap();
    assert_eq!(t, t0 + Duration::from_secs(5));
    m.handle_timeout(t);
    assert!(m.peer(&addr(2)).is_none());
    let ev = events(&mut m);
    assert!(ev
        .iter()
        .any(|e| matches!(e, ManagerEvent::PeerEnd { peer, .. } if *peer == addr(2))));
    // addr(1) stays quiet for 30 minutes: disconnected at a periodic check.
    let later = t0 + Duration::from_secs(30 * 60 + 60);
    m.handle_timeout(later);
    assert!(std::iter::from_fn(|| m.poll_action())
        .any(|a| matches!(a, Action::Close { peer, .. } if peer == addr(1))));
}

#[test]
fn below_minimum_tops_up_from_the_pool() {
    let t0 = Instant::now();
    let mut m = PeerManager::new(cfg(), t0, 1).unwrap();
    m.handle_inbound(&addr(1), t0);
    m.handle_inbound(&addr(2), t0);
    m.add_pool(vec![spec(3), spec(4)], t0);
    assert!(dials(&mut m).is_empty(), "at min_peers: pooled only");
    m.handle_closed(&addr(1), "remote hung up", t0);
    assert_eq!(dials(&mut m), vec![addr(3)]);
}

#[test]
fn selective_send_by_property_and_answers() {
    let t0 = Instant::now();
    let mut m = PeerManager::new(
        ManagerConfig {
            max_peers: 10,
            ..cfg()
        },
        t0,
        7,
    )
    .unwrap();
    for p in 1..=5 {
        m.handle_inbound(&addr(p), t0);
    }
    m.set_property(&addr(1), "role", json!("Miner"));
    m.set_property(&addr(2), "role", json!("miner"));
    m.set_property(&addr(3), "role", json!("relay"));
    m.set_state(&addr(4), PeerState::Custom("handshaked".into()));
    events(&mut m);

    let all = m.send(
        &Selection::new(0, "role", vec![json!("MINER")]),
        "hi",
        Bytes::new(),
        None,
        t0,
    );
    assert_eq!(
        all.peers,
        vec![addr(1), addr(2)],
        "case-insensitive, all when number <= 0"
    );
    let one = m.send(
        &Selection::new(1, "state", vec![json!("connected")]),
        "hi",
        Bytes::new(),
        None,
        t0,
    );
    assert_eq!(one.peers.len(), 1);
    assert_ne!(one.peers[0], addr(4));
    let custom = m.send(
        &Selection::new(-1, "state", vec![json!("handshaked")]),
        "hi",
        Bytes::new(),
        None,
        t0,
    );
    assert_eq!(custom.peers, vec![addr(4)]);
    let none = m.send(
        &Selection::new(3, "role", vec![json!("nobody")]),
        "hi",
        Bytes::new(),
        None,
        t0,
    );
    assert!(none.peers.is_empty() && none.wait.is_none());

    let spec = AnswerSpec {
        command: "answer".into(),
        timeout: Duration::from_secs(2),
    };
    let out = m.send(
        &Selection::new(0, "role", vec![json!("miner")]),
        "knock",
        Bytes::from_static(b"\x01"),
        Some(spec),
        t0,
    );
    let wait = out.wait.unwrap();
    while m.poll_action().is_some() {}
    m.handle_message(&addr(1), "answer", Bytes::from_static(b"\x02"), t0);
    m.handle_message(&addr(3), "answer", Bytes::from_static(b"\x03"), t0);
    let ev = events(&mut m);
    let answers: Vec<_> = ev
        .iter()
        .filter_map(|e| match e {
            ManagerEvent::Answer { peer, .. } => Some(peer.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(answers, vec![addr(1)], "only chosen peers count as answers");
    m.handle_timeout(t0 + Duration::from_secs(2));
    let ev = events(&mut m);
    assert!(ev.contains(&ManagerEvent::AnswersDone {
        wait,
        missing: vec![addr(2)]
    }));
}

#[test]
fn a_wait_ends_early_when_everyone_answered() {
    let t0 = Instant::now();
    let mut m = PeerManager::new(cfg(), t0, 1).unwrap();
    m.handle_inbound(&addr(1), t0);
    let spec = AnswerSpec {
        command: "pong".into(),
        timeout: Duration::from_secs(60),
    };
    let out = m.send(
        &Selection::new(0, "state", vec![json!("connected")]),
        "ping",
        Bytes::new(),
        Some(spec),
        t0,
    );
    m.handle_message(&addr(1), "pong", Bytes::new(), t0);
    assert!(events(&mut m).contains(&ManagerEvent::AnswersDone {
        wait: out.wait.unwrap(),
        missing: vec![]
    }));
}

#[test]
fn shutdown_closes_everything_and_stops_dialling() {
    let t0 = Instant::now();
    let mut m = PeerManager::new(cfg(), t0, 1).unwrap();
    m.handle_inbound(&addr(1), t0);
    m.shutdown(t0);
    assert!(matches!(m.poll_action(), Some(Action::Close { .. })));
    m.add_active(vec![spec(2)], t0);
    assert!(dials(&mut m).is_empty());
    assert!(!m.handle_inbound(&addr(3), t0));
}

#[test]
fn bad_config_names_the_option() {
    let e = PeerManager::new(
        ManagerConfig {
            min_peers: 5,
            max_peers: 2,
            ..Default::default()
        },
        Instant::now(),
        0,
    )
    .unwrap_err();
    assert_eq!(e.key, "min_peers");
}

#[derive(Debug, Clone)]
enum Op {
    Pool(u16),
    Active(u16),
    Inbound(u16),
    Connected(u16),
    Failed(u16),
    Closed(u16),
    Message(u16),
    Send(i64),
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    let p = 1u16..12;
    prop_oneof![
        p.clone().prop_map(Op::Pool),
        p.clone().prop_map(Op::Active),
        p.clone().prop_map(Op::Inbound),
        p.clone().prop_map(Op::Connected),
        p.clone().prop_map(Op::Failed),
        p.clone().prop_map(Op::Closed),
        p.prop_map(Op::Message),
        (-2i64..5).prop_map(Op::Send),
        (0u64..120_000).prop_map(Op::Advance),
    ]
}

proptest! {
    /// Whatever happens, the active set never exceeds max_peers, the pool never exceeds
    /// max_pool, every dial is for a peer the manager tracks as connecting, and every wait ends
    /// exactly once with only chosen peers answering.
    #[test]
    fn invariants_hold(ops in prop::collection::vec(op(), 0..200), seed in any::<u64>()) {
        let t0 = Instant::now();
        let c = ManagerConfig { min_peers: 2, max_peers: 4, max_pool: 5, ..Default::default() };
        let mut m = PeerManager::new(c, t0, seed).unwrap();
        m.launch(vec![], t0);
        let mut now = t0;
        let mut waits_open = std::collections::HashSet::new();
        for op in ops {
            match op {
                Op::Pool(p) => m.add_pool(vec![spec(p)], now),
                Op::Active(p) => m.add_active(vec![spec(p)], now),
                Op::Inbound(p) => { m.handle_inbound(&addr(p), now); }
                Op::Connected(p) => m.handle_connected(&addr(p), now),
                Op::Failed(p) => m.handle_dial_failed(&addr(p), "x", now),
                Op::Closed(p) => m.handle_closed(&addr(p), "x", now),
                Op::Message(p) => m.handle_message(&addr(p), "ans", Bytes::new(), now),
                Op::Send(n) => {
                    let spec = AnswerSpec { command: "ans".into(), timeout: Duration::from_secs(3) };
                    let out = m.send(&Selection::new(n, "state", vec![json!("connected")]), "q", Bytes::new(), Some(spec), now);
                    if n > 0 { prop_assert!(out.peers.len() as i64 <= n); }
                    if let Some(w) = out.wait { waits_open.insert(w); }
                }
                Op::Advance(ms) => { now += Duration::from_millis(ms); m.handle_timeout(now); }
            }
            prop_assert!(m.peers().count() <= 4);
            prop_assert!(m.pool_len() <= 5);
            while let Some(a) = m.poll_action() {
                if let Action::Dial(p) = a {
                    prop_assert_eq!(m.peer(&p).map(|i| i.state.clone()), Some(PeerState::Connecting));
                }
            }
            while let Some(e) = m.poll_event() {
                if let ManagerEvent::AnswersDone { wait, .. } = e {
                    prop_assert!(waits_open.remove(&wait), "a wait ended twice");
                }
            }
            if let Some(t) = m.poll_timeout() { prop_assert!(t >= now || t + Duration::from_secs(1) > now); }
        }
        now += Duration::from_secs(10);
        m.handle_timeout(now);
        while let Some(e) = m.poll_event() {
            if let ManagerEvent::AnswersDone { wait, .. } = e { waits_open.remove(&wait); }
        }
        prop_assert!(waits_open.is_empty(), "every wait ends");
    }
}
