//! The client against the real hub, over loopback sockets.
//!
//! Every wait is bounded by `within` (10 s) so a bug fails the test instead of hanging it;
//! nothing sleeps to synchronise: tests wait for the message or event they expect.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use peermesh_client::{
    Client, ClientError, ClientEvent, ClientOptions, Encoding, ErrorCode, EventStream, Payload,
    ReconnectPolicy,
};
use peermesh_hub::{Hub, HubConfig, HubError, HubHandle};
use serde_json::json;
use tokio::task::JoinHandle;

const LIMIT: Duration = Duration::from_secs(10);

async fn within<T>(fut: impl IntoFuture<Output = T>) -> Result<T> {
    tokio::time::timeout(LIMIT, fut)
        .await
        .map_err(|_| anyhow!("no result within {LIMIT:?}"))
}

struct TestHub {
    addr: SocketAddr,
    handle: HubHandle,
    task: JoinHandle<Result<(), HubError>>,
}

impl TestHub {
    async fn start() -> Result<Self> {
        Self::start_at("127.0.0.1:0".parse()?).await
    }

    /// A hub on a loopback address of its own, so that restarting it on the same port can
    /// never collide with another test's `127.0.0.1:0` listener.
    async fn start_restartable(n: u8) -> Result<Self> {
        let pid = std::process::id();
        let ip = std::net::Ipv4Addr::new(127, 100 + n, (pid >> 8) as u8, (pid as u8).max(1));
        Self::start_at(SocketAddr::from((ip, 0))).await
    }

    async fn start_at(listen: SocketAddr) -> Result<Self> {
        let hub = Hub::bind(HubConfig {
            listen,
            shutdown_grace_ms: 1_000,
            ..Default::default()
        })
        .await?;
        let addr = hub.local_addr();
        let handle = hub.handle();
        let task = tokio::spawn(hub.run());
        Ok(Self { addr, handle, task })
    }

    fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    fn options(&self, id: &str) -> ClientOptions {
        ClientOptions::new(self.url()).with_id(id)
    }

    async fn client(&self, id: &str) -> Result<Client> {
        Ok(within(Client::connect(self.options(id))).await??)
    }

    /// Shuts the hub down and waits until its listener is closed.
    async fn stop(self) -> Result<SocketAddr> {
        self.handle.shutdown();
        within(self.task).await???;
        Ok(self.addr)
    }
}

/// Skips events until one matches `want`, which maps it to a result.
async fn wait_for<T>(
    events: &mut EventStream,
    mut want: impl FnMut(&ClientEvent) -> Option<T>,
) -> Result<T> {
    within(async {
        while let Some(e) = events.recv().await {
            if let Some(t) = want(&e) {
                return Ok(t);
            }
        }
        bail!("the event stream ended")
    })
    .await?
}

fn quick_reconnect(max_attempts: u32) -> Option<ReconnectPolicy> {
    Some(ReconnectPolicy {
        base_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(200),
        max_attempts,
        seed: Some(1),
        ..Default::default()
    })
}

#[tokio::test]
async fn direct_messages_in_both_encodings() -> Result<()> {
    let hub = TestHub::start().await?;
    let alice = within(Client::connect(ClientOptions {
        encoding: Encoding::Json,
        ..hub.options("alice")
    }))
    .await??;
    let bob = within(Client::connect(ClientOptions {
        encoding: Encoding::MsgPack,
        ..hub.options("bob")
    }))
    .await??;
    let mut bob_chat = bob.on("chat");
    let mut alice_chat = alice.on("chat");

    within(alice.emit("bob", "chat", json!({"text": "hi"}))).await??;
    let m = within(bob_chat.recv()).await?.context("message")?;
    assert_eq!(m.from.as_str(), "alice");
    assert_eq!(m.event.as_str(), "chat");
    assert_eq!(m.payload, Payload::Json(json!({"text": "hi"})));
    assert_eq!(m.room, None);
    assert_eq!(m.ack_id, None);

    // MessagePack → JSON, with a binary payload (base64 in the JSON frame).
    within(bob.emit("alice", "chat", vec![0u8, 1, 2, 255])).await??;
    let m = within(alice_chat.recv()).await?.context("message")?;
    assert_eq!(m.from.as_str(), "bob");
    assert_eq!(m.payload, Payload::Bin(vec![0u8, 1, 2, 255].into()));

    alice.close().await;
    bob.close().await;
    hub.stop().await?;
    Ok(())
}

#[tokio::test]
async fn unanswered_emits_arrive_and_hold_nothing() -> Result<()> {
    let hub = TestHub::start().await?;
    let alice = hub.client("alice").await?;
    let bob = hub.client("bob").await?;
    let mut datagrams = bob.on("dgram");
    let mut events = alice.events();
    for n in 0..100u8 {
        within(alice.emit_unanswered("bob", "dgram", vec![n])).await??;
    }
    for n in 0..100u8 {
        let m = within(datagrams.recv()).await?.context("datagram")?;
        assert_eq!(m.payload, Payload::Bin(vec![n].into()));
    }
    // To nobody: accepted, never reported, nothing pending, the connection carries on.
    within(alice.emit_unanswered("nobody", "dgram", vec![1u8])).await??;
    assert_eq!(alice.pending_requests().await?, 0);
    within(alice.emit("bob", "dgram", vec![7u8])).await??;
    let m = within(datagrams.recv()).await?.context("after")?;
    assert_eq!(m.payload, Payload::Bin(vec![7u8].into()));
    assert!(events
        .try_recv()
        .is_none_or(|e| !matches!(e, ClientEvent::Error { .. })));
    alice.close().await;
    bob.close().await;
    hub.stop().await?;
    Ok(())
}

#[tokio::test]
async fn acks_round_trip() -> Result<()> {
    let hub = TestHub::start().await?;
    let alice = hub.client("alice").await?;
    let bob = within(Client::connect(ClientOptions {
        encoding: Encoding::MsgPack,
        ..hub.options("bob")
    }))
    .await??;
    let mut questions = bob.from("alice").on("q");
    let answering = tokio::spawn(async move {
        while let Some(m) = questions.recv().await {
            let n = m.payload.as_json().and_then(|v| v.as_i64()).unwrap_or(0);
            m.reply(json!(n * 2)).await?;
        }
        Ok::<_, ClientError>(())
    });
    for n in [1, 21] {
        let answer = within(alice.emit_with_ack("bob", "q", json!(n), None)).await??;
        assert_eq!(answer, Payload::Json(json!(n * 2)));
    }
    assert_eq!(alice.pending_requests().await?, 0);
    bob.close().await;
    within(answering).await???;
    alice.close().await;
    hub.stop().await?;
    Ok(())
}

#[tokio::test]
async fn ack_timeout_and_unknown_target() -> Result<()> {
    let hub = TestHub::start().await?;
    let alice = hub.client("alice").await?;
    let bob = hub.client("bob").await?;
    let mut ignored = bob.on("q");

    let err = within(alice.emit_with_ack("bob", "q", json!(1), Duration::from_millis(200)))
        .await?
        .expect_err("bob never answers");
    assert_eq!(err.code(), Some(ErrorCode::AckTimeout), "{err}");
    assert_eq!(alice.pending_requests().await?, 0, "no pending entry left");
    let m = within(ignored.recv()).await?.context("bob got it")?;
    assert!(m.ack_id.is_some());

    let err = within(alice.emit("nobody", "q", json!(1)))
        .await?
        .expect_err("unknown");
    assert_eq!(err.code(), Some(ErrorCode::UnknownTarget), "{err}");
    let err = within(alice.emit_with_ack("nobody", "q", json!(1), None))
        .await?
        .expect_err("unknown");
    assert_eq!(err.code(), Some(ErrorCode::UnknownTarget), "{err}");
    assert_eq!(alice.pending_requests().await?, 0);

    // The first connection is not retried: a taken id is reported as is.
    let err = within(Client::connect(hub.options("alice")))
        .await?
        .expect_err("taken");
    assert_eq!(err.code(), Some(ErrorCode::IdTaken), "{err}");
    hub.stop().await?;
    Ok(())
}

#[tokio::test]
async fn rooms_and_presence() -> Result<()> {
    let hub = TestHub::start().await?;
    let alice = within(Client::connect(ClientOptions {
        rooms: vec!["r".into()],
        ..hub.options("alice")
    }))
    .await??;
    let mut alice_events = alice.events();
    let mut alice_room = alice.on("e");
    let bob = hub.client("bob").await?;
    let mut bob_room = bob.on("e");

    within(bob.join("r")).await??;
    let joined = wait_for(&mut alice_events, |e| match e {
        ClientEvent::MemberJoined { room, id } => Some((room.to_string(), id.to_string())),
        _ => None,
    })
    .await?;
    assert_eq!(joined, ("r".into(), "bob".into()));
    let members = within(alice.members("r")).await??;
    let names: Vec<&str> = members.iter().map(|m| m.as_str()).collect();
    assert_eq!(names, ["alice", "bob"]);

    within(bob.emit_room("r", "e", json!(1), false)).await??;
    within(bob.emit_room("r", "e", json!(2), true)).await??;
    let m = within(alice_room.recv()).await?.context("room message")?;
    assert_eq!(m.room.as_ref().map(|r| r.as_str()), Some("r"));
    assert_eq!(m.payload, Payload::Json(json!(1)));
    // Bob's first room message excluded himself: the first he sees is the second.
    let m = within(bob_room.recv()).await?.context("own room message")?;
    assert_eq!(m.payload, Payload::Json(json!(2)));
    assert_eq!(m.from.as_str(), "bob");

    within(bob.leave("r")).await??;
    let left = wait_for(&mut alice_events, |e| match e {
        ClientEvent::MemberLeft { room, id } => Some((room.to_string(), id.to_string())),
        _ => None,
    })
    .await?;
    assert_eq!(left, ("r".into(), "bob".into()));
    let err = within(bob.emit_room("r", "e", json!(3), false))
        .await?
        .expect_err("not in the room any more");
    assert_eq!(err.code(), Some(ErrorCode::NotInRoom), "{err}");

    // Alice wrote to bob, so she hears when he goes.
    within(alice.emit("bob", "bye", Payload::NULL)).await??;
    bob.close().await;
    let gone = wait_for(&mut alice_events, |e| match e {
        ClientEvent::PeerLeft { id } => Some(id.to_string()),
        _ => None,
    })
    .await?;
    assert_eq!(gone, "bob");
    alice.close().await;
    hub.stop().await?;
    Ok(())
}

#[tokio::test]
async fn once_off_and_from_filters() -> Result<()> {
    let hub = TestHub::start().await?;
    let alice = hub.client("alice").await?;
    let bob = hub.client("bob").await?;
    let carol = hub.client("carol").await?;

    let first_ping = alice.once("ping");
    let mut from_bob = alice.from("bob").on_any();
    let mut carol_pings = alice.from("carol").on("ping");
    let removed = alice.on("ping");
    let mut all = alice.on_any();
    assert!(alice.off(removed.id()));

    within(carol.emit("alice", "ping", json!(1))).await??;
    within(bob.emit("alice", "pong", json!(2))).await??;
    within(bob.emit("alice", "ping", json!(3))).await??;
    within(carol.emit("alice", "done", json!(4))).await??;

    let value = |m: peermesh_client::Message| m.payload.as_json().and_then(|v| v.as_i64());
    let mut seen = Vec::new();
    while seen.last() != Some(&Some(4)) {
        seen.push(value(within(all.recv()).await?.context("message")?));
    }
    assert_eq!(seen, [Some(1), Some(2), Some(3), Some(4)]);
    assert_eq!(within(first_ping).await?.map(value), Some(Some(1)));
    assert_eq!(from_bob.try_recv().map(value), Some(Some(2)));
    assert_eq!(from_bob.try_recv().map(value), Some(Some(3)));
    assert!(from_bob.try_recv().is_none());
    assert_eq!(carol_pings.try_recv().map(value), Some(Some(1)));
    assert!(carol_pings.try_recv().is_none());
    let mut removed = removed;
    assert!(within(removed.recv()).await?.is_none());
    hub.stop().await?;
    Ok(())
}

#[tokio::test]
async fn reconnects_to_a_restarted_hub_and_rejoins_rooms() -> Result<()> {
    let hub = TestHub::start_restartable(1).await?;
    let alice = within(Client::connect(ClientOptions {
        rooms: vec!["lobby".into()],
        reconnect: quick_reconnect(100),
        ..hub.options("alice")
    }))
    .await??;
    let mut events = alice.events();
    let mut chat = alice.on("chat");
    let bob = hub.client("bob").await?;
    let mut bob_q = bob.on("q");

    // An acknowledged emit is pending (bob got it, never answers) when the hub goes away.
    let pending = alice
        .emit_with_ack("bob", "q", Payload::NULL, Duration::from_secs(30))
        .send()
        .await?;
    within(bob_q.recv())
        .await?
        .context("bob got the question")?;
    let addr = hub.stop().await?;

    wait_for(&mut events, |e| {
        matches!(e, ClientEvent::ConnectionLost { .. }).then_some(())
    })
    .await?;
    wait_for(&mut events, |e| {
        matches!(e, ClientEvent::Reconnecting { attempt: 1, .. }).then_some(())
    })
    .await?;

    // A new hub knows nothing of the session: it cannot resume it, so the client resyncs.
    let hub = TestHub::start_at(addr).await?;
    let rooms = wait_for(&mut events, |e| match e {
        ClientEvent::Reconnected { id, rooms, .. } => {
            assert_eq!(id.as_str(), "alice");
            Some(rooms.iter().map(|r| r.to_string()).collect::<Vec<_>>())
        }
        _ => None,
    })
    .await?;
    assert_eq!(rooms, ["lobby"]);
    let reason = wait_for(&mut events, |e| match e {
        ClientEvent::Resynced { reason, .. } => Some(*reason),
        _ => None,
    })
    .await?;
    assert_eq!(reason, peermesh_client::ResumeRefusal::Expired);
    // What waited on the old session failed once the hub said so.
    let err = within(pending).await?.expect_err("fails with the session");
    assert_eq!(err.code_name(), "connection_lost", "{err}");

    // Same id, same rooms, on the new hub.
    let carol = hub.client("carol").await?;
    within(carol.join("lobby")).await??;
    let members = within(carol.members("lobby")).await??;
    let names: Vec<&str> = members.iter().map(|m| m.as_str()).collect();
    assert_eq!(names, ["alice", "carol"]);
    within(carol.emit("alice", "chat", json!("welcome back"))).await??;
    let m = within(chat.recv())
        .await?
        .context("message after reconnect")?;
    assert_eq!(m.from.as_str(), "carol");
    within(alice.emit("carol", "chat", json!("thanks"))).await??;
    alice.close().await;
    hub.stop().await?;
    Ok(())
}

#[tokio::test]
async fn lost_for_good_when_attempts_run_out() -> Result<()> {
    let hub = TestHub::start_restartable(2).await?;
    let alice = within(Client::connect(ClientOptions {
        reconnect: quick_reconnect(3),
        ..hub.options("alice")
    }))
    .await??;
    let mut events = alice.events();
    let mut sub = alice.on_any();
    hub.stop().await?;

    let mut attempts = Vec::new();
    let reason = wait_for(&mut events, |e| match e {
        ClientEvent::Reconnecting { attempt, .. } => {
            attempts.push(*attempt);
            None
        }
        ClientEvent::Lost { reason } => Some(reason.clone()),
        _ => None,
    })
    .await?;
    assert_eq!(attempts, [1, 2, 3]);
    assert!(reason.contains("gave up after 3"), "{reason}");
    assert!(within(events.recv()).await?.is_none(), "the stream ends");
    assert!(within(sub.recv()).await?.is_none(), "listeners end");
    within(alice.closed()).await?;
    let err = within(alice.emit("bob", "x", Payload::NULL))
        .await?
        .expect_err("closed");
    assert_eq!(err, ClientError::Closed);
    Ok(())
}

#[tokio::test]
async fn without_reconnect_a_drop_is_final() -> Result<()> {
    let hub = TestHub::start().await?;
    let alice = within(Client::connect(ClientOptions {
        reconnect: None,
        ..hub.options("alice")
    }))
    .await??;
    let mut events = alice.events();
    hub.stop().await?;
    let reason = wait_for(&mut events, |e| match e {
        ClientEvent::Lost { reason } => Some(reason.clone()),
        ClientEvent::Reconnecting { .. } => Some("reconnecting".into()),
        _ => None,
    })
    .await?;
    assert!(reason.contains("disabled"), "{reason}");
    within(alice.closed()).await?;
    Ok(())
}

#[tokio::test]
async fn requests_queued_in_order_arrive_in_order() -> Result<()> {
    let hub = TestHub::start().await?;
    let alice = hub.client("alice").await?;
    let bob = hub.client("bob").await?;
    let mut inbox = bob.on("n");
    let mut pending = Vec::new();
    for n in 0..50 {
        pending.push(alice.emit("bob", "n", json!(n)).send().await?);
    }
    let join = alice.join("late").send().await?;
    let talk = alice
        .emit_room("late", "n", json!(-1), false)
        .send()
        .await?;
    for p in pending {
        within(p).await??;
    }
    within(join).await??;
    within(talk).await??;
    for n in 0..50 {
        let m = within(inbox.recv()).await?.context("message")?;
        assert_eq!(m.payload, Payload::Json(json!(n)));
    }
    let fut = alice.members("late").into_future();
    assert_eq!(within(fut).await??.len(), 1);
    hub.stop().await?;
    Ok(())
}
