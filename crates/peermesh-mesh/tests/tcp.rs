//! End-to-end tests of the TCP shell over real loopback sockets. Every wait has a 5 s timeout;
//! nothing synchronises by sleeping.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use peermesh_mesh::manager::{
    AnswerSpec, HostSpec, ManagerConfig, ManagerEvent, PeerAddr, Selection, Severity,
};
use peermesh_mesh::tcp::{TcpManager, TcpManagerHandle, TcpOptions};
use peermesh_mesh::wire::p2p_node::{encode, DEFAULT_MAGIC};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(5);

fn spawn(cfg: ManagerConfig, listen: bool) -> (TcpManagerHandle, mpsc::Receiver<ManagerEvent>) {
    let opts = TcpOptions {
        listen: listen.then(|| "127.0.0.1:0".parse().unwrap()),
        seed: 7,
        ..TcpOptions::default()
    };
    TcpManager::spawn(cfg, opts).unwrap()
}

/// The next event `f` accepts, skipping the others.
async fn wait_for(
    rx: &mut mpsc::Receiver<ManagerEvent>,
    what: &str,
    mut f: impl FnMut(&ManagerEvent) -> bool,
) -> ManagerEvent {
    let found = timeout(WAIT, async {
        loop {
            let ev = rx.recv().await.expect("the event channel closed");
            if f(&ev) {
                return ev;
            }
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

fn frame(command: &str, payload: &[u8]) -> BytesMut {
    let mut b = BytesMut::new();
    encode(DEFAULT_MAGIC, command, payload, &mut b).unwrap();
    b
}

fn addr_of(a: SocketAddr) -> PeerAddr {
    PeerAddr {
        host: a.ip().to_string(),
        port: a.port(),
    }
}

async fn connect(a: SocketAddr) -> TcpStream {
    timeout(WAIT, TcpStream::connect(a)).await.unwrap().unwrap()
}

#[tokio::test]
async fn knock_and_answer_between_two_managers() {
    let (a, mut a_ev) = spawn(ManagerConfig::default(), true);
    let (b, mut b_ev) = spawn(ManagerConfig::default(), false);
    let a_addr = a.local_addr().unwrap();
    let a_peer = addr_of(a_addr);

    b.add_active(vec![HostSpec::Pair("127.0.0.1".into(), a_addr.port())])
        .await
        .unwrap();
    let want = a_peer.clone();
    wait_for(&mut b_ev, "B: PeerConnect(A)", |e| {
        *e == ManagerEvent::PeerConnect(want.clone())
    })
    .await;
    let ManagerEvent::PeerConnect(b_peer) = wait_for(&mut a_ev, "A: PeerConnect", |e| {
        matches!(e, ManagerEvent::PeerConnect(_))
    })
    .await
    else {
        unreachable!()
    };
    assert_eq!(b_peer.host, "127.0.0.1");

    let out = timeout(
        WAIT,
        b.send(
            Selection::new(0, "state", vec![json!("connected")]),
            "knock",
            Bytes::from_static(b"who is there"),
            Some(AnswerSpec {
                command: "answer".into(),
                timeout: Duration::from_secs(2),
            }),
        ),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(out.peers, vec![a_peer.clone()]);
    let wait = out.wait.expect("an answer wait");

    // A answers each knock.
    let ev = wait_for(
        &mut a_ev,
        "A: knock",
        |e| matches!(e, ManagerEvent::Message { command, .. } if command == "knock"),
    )
    .await;
    let ManagerEvent::Message { peer, payload, .. } = ev else {
        unreachable!()
    };
    assert_eq!(peer, b_peer);
    assert_eq!(&payload[..], b"who is there");
    let sent = timeout(WAIT, a.send_to(peer, "answer", Bytes::from_static(b"me")))
        .await
        .unwrap()
        .unwrap();
    assert!(sent);

    let ev = wait_for(&mut b_ev, "B: Answer", |e| {
        matches!(e, ManagerEvent::Answer { .. })
    })
    .await;
    assert_eq!(
        ev,
        ManagerEvent::Answer {
            wait,
            peer: a_peer.clone(),
            payload: Bytes::from_static(b"me"),
        }
    );
    let ev = wait_for(&mut b_ev, "B: AnswersDone", |e| {
        matches!(e, ManagerEvent::AnswersDone { .. })
    })
    .await;
    assert_eq!(
        ev,
        ManagerEvent::AnswersDone {
            wait,
            missing: vec![]
        }
    );

    // Shutting B down ends the connection on A's side too.
    timeout(WAIT, b.shutdown()).await.unwrap().unwrap();
    wait_for(
        &mut a_ev,
        "A: PeerEnd(B)",
        |e| matches!(e, ManagerEvent::PeerEnd { peer, .. } if *peer == b_peer),
    )
    .await;
    timeout(WAIT, a.shutdown()).await.unwrap().unwrap();
    assert_eq!(a.dropped_events(), 0);
}

#[tokio::test]
async fn garbage_and_bad_checksum_are_reported_and_the_stream_recovers() {
    let (a, mut a_ev) = spawn(ManagerConfig::default(), true);
    let mut raw = connect(a.local_addr().unwrap()).await;
    let raw_peer = addr_of(raw.local_addr().unwrap());
    let want = raw_peer.clone();
    wait_for(&mut a_ev, "PeerConnect(raw)", |e| {
        *e == ManagerEvent::PeerConnect(want.clone())
    })
    .await;

    let mut bytes = BytesMut::from(&b"this is not a frame"[..]);
    bytes.extend_from_slice(&frame("hello", b"world"));
    raw.write_all(&bytes).await.unwrap();
    let ev = wait_for(
        &mut a_ev,
        "garbage log",
        |e| matches!(e, ManagerEvent::Log { message, .. } if message.contains("garbage")),
    )
    .await;
    let ManagerEvent::Log { severity, peer, .. } = ev else {
        unreachable!()
    };
    assert_eq!(severity, Severity::Warning);
    assert_eq!(peer, Some(raw_peer.clone()));
    let ev = wait_for(&mut a_ev, "hello", |e| {
        matches!(e, ManagerEvent::Message { .. })
    })
    .await;
    assert_eq!(
        ev,
        ManagerEvent::Message {
            peer: raw_peer.clone(),
            command: "hello".into(),
            payload: Bytes::from_static(b"world"),
        }
    );

    // A frame whose payload does not match its checksum, then a good one.
    let mut bad = frame("corrupt", b"payload");
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    bad.extend_from_slice(&frame("after", b""));
    raw.write_all(&bad).await.unwrap();
    let ev = wait_for(
        &mut a_ev,
        "bad checksum log",
        |e| matches!(e, ManagerEvent::Log { message, .. } if message.contains("bad_checksum")),
    )
    .await;
    let ManagerEvent::Log { severity, .. } = ev else {
        unreachable!()
    };
    assert_eq!(severity, Severity::Warning);
    let ev = wait_for(&mut a_ev, "after", |e| {
        matches!(e, ManagerEvent::Message { .. })
    })
    .await;
    let ManagerEvent::Message { command, .. } = ev else {
        unreachable!()
    };
    assert_eq!(command, "after");
    timeout(WAIT, a.shutdown()).await.unwrap().unwrap();
}

#[tokio::test]
async fn oversized_frame_disconnects_the_peer() {
    let opts = TcpOptions {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        max_payload: 16,
        ..TcpOptions::default()
    };
    let (a, mut a_ev) = TcpManager::spawn(ManagerConfig::default(), opts).unwrap();
    let mut raw = connect(a.local_addr().unwrap()).await;
    let raw_peer = addr_of(raw.local_addr().unwrap());
    raw.write_all(&frame("big", &[0u8; 64])).await.unwrap();
    let ev = wait_for(
        &mut a_ev,
        "frame_too_large log",
        |e| matches!(e, ManagerEvent::Log { message, .. } if message.contains("frame_too_large")),
    )
    .await;
    let ManagerEvent::Log { severity, .. } = ev else {
        unreachable!()
    };
    assert_eq!(severity, Severity::Error);
    wait_for(
        &mut a_ev,
        "PeerEnd(raw)",
        |e| matches!(e, ManagerEvent::PeerEnd { peer, .. } if *peer == raw_peer),
    )
    .await;
    let mut buf = [0u8; 1024];
    let hung_up = timeout(WAIT, async {
        loop {
            match raw.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(hung_up.is_ok(), "A did not close the connection");
}

#[tokio::test]
async fn max_peers_is_enforced_for_inbound_connections() {
    let cfg = ManagerConfig {
        min_peers: 1,
        max_peers: 1,
        ..ManagerConfig::default()
    };
    let (a, mut a_ev) = spawn(cfg, true);
    let a_addr = a.local_addr().unwrap();
    let mut first = connect(a_addr).await;
    let first_peer = addr_of(first.local_addr().unwrap());
    let want = first_peer.clone();
    wait_for(&mut a_ev, "PeerConnect(first)", |e| {
        *e == ManagerEvent::PeerConnect(want.clone())
    })
    .await;

    let mut second = connect(a_addr).await;
    wait_for(
        &mut a_ev,
        "refusal",
        |e| matches!(e, ManagerEvent::Log { message, .. } if message.contains("max_peers")),
    )
    .await;
    let mut buf = [0u8; 16];
    let r = timeout(WAIT, second.read(&mut buf)).await.unwrap();
    assert!(
        matches!(r, Ok(0) | Err(_)),
        "the second connection was not closed"
    );

    // The first one still works.
    first.write_all(&frame("ping", b"1")).await.unwrap();
    let ev = wait_for(&mut a_ev, "ping", |e| {
        matches!(e, ManagerEvent::Message { .. })
    })
    .await;
    assert!(matches!(ev, ManagerEvent::Message { peer, .. } if peer == first_peer));
    timeout(WAIT, a.shutdown()).await.unwrap().unwrap();
}

#[tokio::test]
async fn failed_dial_ends_the_peer() {
    // A port nobody listens on: bind one, note it, close it.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (b, mut b_ev) = spawn(ManagerConfig::default(), false);
    b.add_active(vec![HostSpec::Pair("127.0.0.1".into(), port)])
        .await
        .unwrap();
    let ev = wait_for(&mut b_ev, "PeerEnd", |e| {
        matches!(e, ManagerEvent::PeerEnd { .. })
    })
    .await;
    let ManagerEvent::PeerEnd { peer, reason } = ev else {
        unreachable!()
    };
    assert_eq!(peer.port, port);
    assert!(reason.starts_with("dial failed"), "{reason}");
    timeout(WAIT, b.shutdown()).await.unwrap().unwrap();
}

/// An application that stops reading its events does not lose messages: the peer is slowed
/// down by TCP flow control instead, and everything arrives, in order, once it reads again.
#[tokio::test]
async fn a_slow_application_slows_the_peer_instead_of_losing_messages() {
    const FRAMES: u32 = 20_000;
    let (a, mut a_ev) = spawn(ManagerConfig::default(), true);
    let mut peer = connect(a.local_addr().unwrap()).await;
    let writer = tokio::spawn(async move {
        let mut all = BytesMut::new();
        for i in 0..FRAMES {
            all.extend_from_slice(&frame("seq", &i.to_be_bytes()));
        }
        peer.write_all(&all).await.unwrap();
        peer
    });
    // Do not read for a while: the event channel (1,024) fills long before 20,000 frames.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut next = 0u32;
    timeout(Duration::from_secs(20), async {
        while next < FRAMES {
            match a_ev.recv().await.expect("the event channel closed") {
                ManagerEvent::Message {
                    command, payload, ..
                } if command == "seq" => {
                    let got = u32::from_be_bytes(payload[..4].try_into().unwrap());
                    assert_eq!(got, next, "a message was lost or reordered");
                    next += 1;
                }
                _ => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("only {next} of {FRAMES} messages arrived"));
    assert_eq!(a.dropped_events(), 0);
    drop(writer.await.unwrap());
}
