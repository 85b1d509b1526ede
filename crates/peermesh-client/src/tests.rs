//! Driver tests: the real actor against a scripted hub over in-memory sockets, on a paused
//! clock. Integration tests against the real hub live in `tests/`.

use std::future::IntoFuture as _;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use peermesh_proto::{
    decode_client, encode_server, ClientFrame, Encoding, ErrorCode, ErrorFrame, Hello, Limits,
    Message as ProtoMessage, Payload, RoomName, ServerFrame, Welcome,
};
use serde_json::json;
use tokio::io::DuplexStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;

use crate::connection::{BoxTransport, Connector};
use crate::{Client, ClientError, ClientEvent, ClientId, ClientOptions, ReconnectPolicy};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The hub side of in-memory connections.
struct FakeHub {
    incoming: mpsc::UnboundedReceiver<DuplexStream>,
}

/// One accepted connection, scripted by the test.
struct HubConn {
    ws: WebSocketStream<DuplexStream>,
    seq: u64,
}

fn fake_hub() -> (Connector, FakeHub) {
    let (tx, incoming) = mpsc::unbounded_channel();
    let connector: Connector = std::sync::Arc::new(move |url: String| {
        let tx = tx.clone();
        Box::pin(async move {
            let (client, server) = tokio::io::duplex(1 << 16);
            tx.send(server)
                .map_err(|_| ClientError::WebSocket("connection refused".into()))?;
            let (ws, _) = tokio_tungstenite::client_async(url, client)
                .await
                .map_err(|e| ClientError::WebSocket(e.to_string()))?;
            Ok(Box::new(ws) as BoxTransport)
        })
    });
    (connector, FakeHub { incoming })
}

impl FakeHub {
    async fn accept(&mut self) -> HubConn {
        let stream = self.incoming.recv().await.expect("a connection attempt");
        let ws = tokio_tungstenite::accept_async(stream)
            .await
            .expect("websocket upgrade");
        HubConn { ws, seq: 0 }
    }

    /// Accepts a connection and completes the handshake with `welcome`.
    async fn greet(&mut self, id: &str, rooms: &[&str]) -> (HubConn, Hello) {
        let mut conn = self.accept().await;
        let ClientFrame::Hello(hello) = conn.recv().await else {
            panic!("expected hello");
        };
        conn.send(welcome(id, rooms)).await;
        (conn, hello)
    }
}

impl HubConn {
    /// The next data frame from the client (control frames are skipped).
    async fn recv(&mut self) -> ClientFrame {
        loop {
            let msg = self.ws.next().await.expect("open").expect("readable");
            let decoded = match &msg {
                WsMessage::Text(t) => decode_client(Encoding::Json, t.as_bytes()),
                WsMessage::Binary(b) => decode_client(Encoding::MsgPack, b),
                _ => continue,
            };
            return decoded.expect("a valid client frame");
        }
    }

    async fn send(&mut self, frame: ServerFrame) {
        self.seq += 1;
        let bytes = encode_server(Encoding::Json, self.seq, &frame);
        let text = String::from_utf8(bytes.to_vec()).expect("json");
        self.ws.send(WsMessage::text(text)).await.expect("writable");
    }
}

fn id(s: &str) -> ClientId {
    ClientId::new(s).expect("valid id")
}

fn room(s: &str) -> RoomName {
    RoomName::new(s).expect("valid room")
}

fn welcome(client: &str, rooms: &[&str]) -> ServerFrame {
    ServerFrame::Welcome(Welcome {
        id: id(client),
        secret: format!("secret-of-{client}"),
        version: "1.0.0".into(),
        heartbeat_ms: 5_000,
        rooms: rooms.iter().map(|r| room(r)).collect(),
        limits: Limits {
            max_frame_bytes: 64 * 1024,
            max_rooms_per_client: 16,
            rate_per_sec: 100,
            rate_burst: 200,
            max_pending_acks: 64,
            max_ack_timeout_ms: 60_000,
            max_streams: 128,
            max_stream_window: 4 << 20,
            stream_open_timeout_ms: 10_000,
            max_calls: 1024,
            max_call_timeout_ms: 300_000,
            max_subscriptions: 256,
        },
        resumed: false,
        received: 0,
        resume_grace_ms: 0,
    })
}

fn options() -> ClientOptions {
    ClientOptions {
        id: Some("alice".into()),
        reconnect: Some(ReconnectPolicy {
            seed: Some(7),
            ..Default::default()
        }),
        ..ClientOptions::new("ws://hub.test/ws")
    }
}

async fn connect(opts: ClientOptions) -> (Client, HubConn, Hello, FakeHub) {
    let (connector, mut hub) = fake_hub();
    let client = tokio::spawn(Client::connect_with(opts, connector));
    let (conn, hello) = hub.greet("alice", &[]).await;
    let client = client.await.expect("join").expect("connected");
    (client, conn, hello, hub)
}

#[tokio::test(start_paused = true)]
async fn handshake_sends_hello_and_emit_waits_for_ok() -> TestResult {
    let opts = ClientOptions {
        rooms: vec!["lobby".into()],
        token: Some("jwt".into()),
        ..options()
    };
    let (client, mut conn, hello, _hub) = connect(opts).await;
    assert_eq!(hello.id, Some(id("alice")));
    assert_eq!(hello.version, crate::PROTOCOL_VERSION);
    assert_eq!(hello.rooms, [room("lobby")]);
    assert_eq!(hello.token.as_deref(), Some("jwt"));
    assert_eq!(hello.secret, None);
    assert_eq!(client.id().as_str(), "alice");

    let emit = tokio::spawn(
        client
            .emit("bob", "chat", json!({"text": "hi"}))
            .into_future(),
    );
    let ClientFrame::Emit(e) = conn.recv().await else {
        panic!("expected emit");
    };
    assert_eq!((e.to.as_str(), e.event.as_str()), ("bob", "chat"));
    assert_eq!(e.payload, Payload::Json(json!({"text": "hi"})));
    assert!(!e.ack);
    let req = e.req.expect("emits carry a req");
    conn.send(ServerFrame::Ok { req }).await;
    emit.await??;
    assert_eq!(client.pending_requests().await?, 0);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn hub_errors_map_to_client_errors() -> TestResult {
    let (client, mut conn, _, _hub) = connect(options()).await;
    let emit = tokio::spawn(client.emit("ghost", "chat", Payload::NULL).into_future());
    let req = conn.recv().await.req().expect("req");
    conn.send(ServerFrame::Error(ErrorFrame::new(
        ErrorCode::UnknownTarget,
        "no client \"ghost\" is connected",
        Some(req),
    )))
    .await;
    let err = emit.await?.expect_err("unknown target");
    assert_eq!(err.code(), Some(ErrorCode::UnknownTarget));
    assert_eq!(err.message(), "no client \"ghost\" is connected");

    // Invalid names never reach the hub.
    let err = client.join("bad\nroom").await.expect_err("invalid");
    assert_eq!(err.code_name(), "invalid_name");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn ack_round_trip_and_replies() -> TestResult {
    let (client, mut conn, _, _hub) = connect(options()).await;

    // Outgoing: alice asks, the hub relays bob's answer.
    let ask = tokio::spawn(
        client
            .emit_with_ack("bob", "q", json!(1), Duration::from_secs(2))
            .into_future(),
    );
    let ClientFrame::Emit(e) = conn.recv().await else {
        panic!("expected emit");
    };
    assert!(e.ack);
    assert_eq!(e.timeout_ms, Some(2_000));
    conn.send(ServerFrame::Ack {
        req: e.req.expect("req"),
        payload: Payload::Json(json!(2)),
    })
    .await;
    assert_eq!(ask.await??, Payload::Json(json!(2)));

    // Incoming: bob asks alice.
    let mut questions = client.on("q");
    conn.send(ServerFrame::Message(ProtoMessage {
        from: id("bob"),
        event: "q".parse()?,
        payload: Payload::Json(json!("?")),
        room: None,
        ack_id: Some(41),
    }))
    .await;
    let msg = questions.recv().await.expect("message");
    assert!(msg.wants_reply());
    let reply = tokio::spawn(msg.reply(vec![1u8, 2, 3]).into_future());
    let ClientFrame::Reply(r) = conn.recv().await else {
        panic!("expected reply");
    };
    assert_eq!(r.ack_id, 41);
    assert_eq!(r.payload, Payload::Bin(vec![1u8, 2, 3].into()));
    reply.await??;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn ack_timeout_leaves_nothing_pending() -> TestResult {
    let (client, mut conn, _, _hub) = connect(options()).await;
    let started = tokio::time::Instant::now();
    let ask = tokio::spawn(
        client
            .emit_with_ack("bob", "q", Payload::NULL, None)
            .into_future(),
    );
    let req = conn.recv().await.req().expect("req");
    // The hub never answers; the paused clock jumps to the client's deadline.
    let err = ask.await?.expect_err("times out");
    assert_eq!(err, ClientError::AckTimeout(Duration::from_secs(5)));
    assert_eq!(err.code(), Some(ErrorCode::AckTimeout));
    assert_eq!(started.elapsed(), Duration::from_secs(5));
    assert_eq!(client.pending_requests().await?, 0);
    // Late answers (the hub's own ack_timeout, an ack) match nothing and change nothing:
    // no second outcome, no unsolicited error event.
    let mut events = client.events();
    conn.send(ServerFrame::Error(ErrorFrame::new(
        ErrorCode::AckTimeout,
        "the target did not answer in time",
        Some(req),
    )))
    .await;
    conn.send(ServerFrame::Ack {
        req,
        payload: Payload::NULL,
    })
    .await;
    conn.send(ServerFrame::PeerLeft { id: id("bob") }).await;
    assert!(matches!(
        events.recv().await,
        Some(ClientEvent::Connected { .. })
    ));
    assert_eq!(
        events.recv().await,
        Some(ClientEvent::PeerLeft { id: id("bob") })
    );
    assert_eq!(client.pending_requests().await?, 0);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn listeners_filter_and_unsubscribe() -> TestResult {
    let (client, mut conn, _, _hub) = connect(options()).await;
    let mut chat = client.on("chat");
    let mut all = client.on_any();
    let mut from_bob = client.from("bob").on_any();
    let mut bob_chat = client.from("bob").on("chat");
    let once = client.once("chat");
    let removed = client.on("chat");
    assert!(client.off(removed.id()));
    assert!(!client.off(removed.id()));

    let send = |from: &str, event: &str, n: i64| {
        ServerFrame::Message(ProtoMessage {
            from: id(from),
            event: event.parse().expect("event"),
            payload: Payload::Json(json!(n)),
            room: None,
            ack_id: None,
        })
    };
    conn.send(send("carol", "chat", 1)).await;
    conn.send(send("bob", "move", 2)).await;
    conn.send(send("bob", "chat", 3)).await;
    // A marker everyone listening to everything sees last.
    conn.send(send("carol", "end", 4)).await;

    let n = |m: crate::Message| m.payload.as_json().and_then(|v| v.as_i64());
    let mut seen = Vec::new();
    while let Some(m) = all.recv().await {
        let v = n(m);
        seen.push(v);
        if v == Some(4) {
            break;
        }
    }
    assert_eq!(seen, [Some(1), Some(2), Some(3), Some(4)]);
    assert_eq!(chat.try_recv().and_then(n), Some(1));
    assert_eq!(chat.try_recv().and_then(n), Some(3));
    assert!(chat.try_recv().is_none());
    assert_eq!(from_bob.try_recv().and_then(n), Some(2));
    assert_eq!(from_bob.try_recv().and_then(n), Some(3));
    assert_eq!(bob_chat.try_recv().and_then(n), Some(3));
    assert!(bob_chat.try_recv().is_none());
    assert_eq!(once.await.and_then(n), Some(1));
    let mut removed = removed;
    assert!(removed.recv().await.is_none(), "off ends the subscription");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn presence_events_and_unsolicited_errors() -> TestResult {
    let (client, mut conn, _, _hub) = connect(options()).await;
    let mut events = client.events();
    assert_eq!(
        events.recv().await,
        Some(ClientEvent::Connected { id: id("alice") })
    );
    conn.send(ServerFrame::MemberJoined {
        room: room("r"),
        id: id("bob"),
    })
    .await;
    conn.send(ServerFrame::MemberLeft {
        room: room("r"),
        id: id("bob"),
    })
    .await;
    conn.send(ServerFrame::PeerLeft { id: id("bob") }).await;
    conn.send(ServerFrame::Error(ErrorFrame::new(
        ErrorCode::RateLimited,
        "slow down",
        None,
    )))
    .await;
    assert_eq!(
        events.recv().await,
        Some(ClientEvent::MemberJoined {
            room: room("r"),
            id: id("bob")
        })
    );
    assert_eq!(
        events.recv().await,
        Some(ClientEvent::MemberLeft {
            room: room("r"),
            id: id("bob")
        })
    );
    assert_eq!(
        events.recv().await,
        Some(ClientEvent::PeerLeft { id: id("bob") })
    );
    assert_eq!(
        events.recv().await,
        Some(ClientEvent::Error {
            code: ErrorCode::RateLimited,
            message: "slow down".into()
        })
    );
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn reconnects_with_secret_and_rooms_and_fails_pending_requests() -> TestResult {
    let (client, mut conn, _, mut hub) = connect(options()).await;
    let mut events = client.events();
    assert!(matches!(
        events.recv().await,
        Some(ClientEvent::Connected { .. })
    ));

    // Join a room so it is rejoined after the reconnect.
    let join = tokio::spawn(client.join("lobby").into_future());
    let req = conn.recv().await.req().expect("req");
    conn.send(ServerFrame::Ok { req }).await;
    join.await??;

    // An acknowledged emit is in flight when the connection drops.
    let ask = tokio::spawn(
        client
            .emit_with_ack("bob", "q", Payload::NULL, None)
            .into_future(),
    );
    conn.recv().await;
    drop(conn);

    let err = ask.await?.expect_err("fails at the drop");
    assert_eq!(err.code_name(), "connection_lost");
    assert!(matches!(
        events.recv().await,
        Some(ClientEvent::ConnectionLost { .. })
    ));
    let Some(ClientEvent::Reconnecting { attempt: 1, delay }) = events.recv().await else {
        panic!("expected the first attempt");
    };
    assert!(delay <= Duration::from_millis(200) && delay > Duration::from_millis(100));

    // While disconnected, operations fail fast.
    let err = client
        .emit("bob", "x", Payload::NULL)
        .await
        .expect_err("down");
    assert_eq!(err, ClientError::NotConnected);

    let (mut conn, hello) = hub.greet("alice", &["lobby"]).await;
    assert_eq!(hello.id, Some(id("alice")));
    assert_eq!(hello.secret.as_deref(), Some("secret-of-alice"));
    assert_eq!(hello.rooms, [room("lobby")]);
    assert_eq!(
        events.recv().await,
        Some(ClientEvent::Reconnected {
            id: id("alice"),
            attempt: 1,
            rooms: vec![room("lobby")],
            url: "ws://hub.test/ws".into(),
        })
    );

    // The new connection works.
    let emit = tokio::spawn(client.emit("bob", "x", Payload::NULL).into_future());
    let req = conn.recv().await.req().expect("req");
    conn.send(ServerFrame::Ok { req }).await;
    emit.await??;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn gives_up_when_attempts_run_out() -> TestResult {
    let opts = ClientOptions {
        reconnect: Some(ReconnectPolicy {
            max_attempts: 3,
            seed: Some(1),
            ..Default::default()
        }),
        ..options()
    };
    let (client, conn, _, hub) = connect(opts).await;
    let mut events = client.events();
    events.recv().await;
    // Every later attempt is refused.
    drop(hub);
    drop(conn);
    assert!(matches!(
        events.recv().await,
        Some(ClientEvent::ConnectionLost { .. })
    ));
    for n in 1..=3 {
        let Some(ClientEvent::Reconnecting { attempt, .. }) = events.recv().await else {
            panic!("expected attempt {n}");
        };
        assert_eq!(attempt, n);
    }
    let Some(ClientEvent::Lost { reason }) = events.recv().await else {
        panic!("expected lost");
    };
    assert!(reason.contains("gave up after 3"), "{reason}");
    assert_eq!(events.recv().await, None);
    client.closed().await;
    assert!(client.is_closed());
    let err = client
        .emit("bob", "x", Payload::NULL)
        .await
        .expect_err("closed");
    assert_eq!(err, ClientError::Closed);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_silent_hub_is_detected_and_replaced_is_final() -> TestResult {
    let (client, conn, _, mut hub) = connect(options()).await;
    let mut events = client.events();
    events.recv().await;
    let started = tokio::time::Instant::now();
    // `conn` stays open but never reads or writes: no pong, no frame.
    let Some(ClientEvent::ConnectionLost { reason }) = events.recv().await else {
        panic!("expected connection lost");
    };
    assert!(reason.contains("nothing heard"), "{reason}");
    assert_eq!(started.elapsed(), Duration::from_secs(20));
    drop(conn);

    let (mut conn, _) = hub.greet("alice", &[]).await;
    while !matches!(
        events.recv().await,
        Some(ClientEvent::Reconnected { .. }) | None
    ) {}
    conn.send(ServerFrame::Error(ErrorFrame::new(
        ErrorCode::Replaced,
        "a newer connection replaced this one",
        None,
    )))
    .await;
    assert!(matches!(
        events.recv().await,
        Some(ClientEvent::Error {
            code: ErrorCode::Replaced,
            ..
        })
    ));
    assert!(matches!(
        events.recv().await,
        Some(ClientEvent::ConnectionLost { .. })
    ));
    assert!(matches!(
        events.recv().await,
        Some(ClientEvent::Lost { .. })
    ));
    assert_eq!(events.recv().await, None);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn close_fails_pending_and_ends_listeners() -> TestResult {
    let (client, mut conn, _, _hub) = connect(options()).await;
    let mut sub = client.on_any();
    let mut events = client.events();
    let members = tokio::spawn(client.members("lobby").into_future());
    let ClientFrame::Members { room: r, .. } = conn.recv().await else {
        panic!("expected members");
    };
    assert_eq!(r, room("lobby"));
    client.close().await;
    assert_eq!(members.await?.expect_err("closed"), ClientError::Closed);
    assert!(sub.recv().await.is_none());
    assert!(matches!(
        events.recv().await,
        Some(ClientEvent::Connected { .. })
    ));
    assert_eq!(events.recv().await, None);
    // The hub sees the close handshake.
    let closed = loop {
        match conn.ws.next().await {
            Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => break true,
            Some(Ok(_)) => continue,
        }
    };
    assert!(closed);
    client.close().await;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn refused_handshakes_return_the_hub_error() {
    let (connector, mut hub) = fake_hub();
    let client = tokio::spawn(Client::connect_with(options(), connector));
    let mut conn = hub.accept().await;
    conn.recv().await;
    conn.send(ServerFrame::Error(ErrorFrame::new(
        ErrorCode::IdTaken,
        "alice is taken",
        None,
    )))
    .await;
    let err = client.await.expect("join").expect_err("refused");
    assert_eq!(err.code(), Some(ErrorCode::IdTaken));
}

#[tokio::test(start_paused = true)]
async fn requests_sent_in_order_reach_the_hub_in_order() -> TestResult {
    let (client, mut conn, _, _hub) = connect(options()).await;
    let join = client.join("r").send().await?;
    let emit = client.emit_room("r", "e", json!("x"), true).send().await?;
    let first = conn.recv().await;
    let second = conn.recv().await;
    assert_eq!(first.type_name(), "join");
    let ClientFrame::EmitRoom(e) = second else {
        panic!("expected emit_room");
    };
    assert!(e.include_self);
    conn.send(ServerFrame::Ok {
        req: first.req().expect("req"),
    })
    .await;
    conn.send(ServerFrame::Ok {
        req: e.req.expect("req"),
    })
    .await;
    join.await?;
    emit.await?;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn the_pending_limit_holds_back_new_commands() -> TestResult {
    let opts = ClientOptions {
        max_pending_requests: 1,
        ..options()
    };
    let (client, mut conn, _, _hub) = connect(opts).await;
    let first = client.emit("bob", "n", json!(1)).send().await?;
    let second = client.emit("bob", "n", json!(2)).send().await?;
    let req = conn.recv().await.req().expect("req");
    // The second stays in the inbox while the first waits for its answer.
    let held = tokio::time::timeout(Duration::from_secs(1), conn.recv()).await;
    assert!(held.is_err(), "the second emit was sent too early");
    conn.send(ServerFrame::Ok { req }).await;
    first.await?;
    let ClientFrame::Emit(e) = conn.recv().await else {
        panic!("expected the second emit");
    };
    assert_eq!(e.payload, Payload::Json(json!(2)));
    conn.send(ServerFrame::Ok {
        req: e.req.expect("req"),
    })
    .await;
    second.await?;
    Ok(())
}

/// Attempts seen by [`fake_hubs`]: the URL opened (without its query) and when.
type Tried = std::sync::Arc<parking_lot::Mutex<Vec<(String, tokio::time::Instant)>>>;
/// URLs (without their query) whose connections [`fake_hubs`] refuses.
type Down = std::sync::Arc<parking_lot::Mutex<Vec<&'static str>>>;

/// Like [`fake_hub`], for several hub URLs: every attempt is recorded, attempts to a URL in
/// `down` are refused, the others reach the one scripted hub.
fn fake_hubs(down: Down) -> (Connector, FakeHub, Tried) {
    let (inner, hub) = fake_hub();
    let tried = Tried::default();
    let seen = tried.clone();
    let connector: Connector = std::sync::Arc::new(move |url: String| {
        let base = url
            .split_once('?')
            .map_or(url.as_str(), |(b, _)| b)
            .to_owned();
        seen.lock()
            .push((base.clone(), tokio::time::Instant::now()));
        if down.lock().contains(&base.as_str()) {
            return Box::pin(async move {
                Err(ClientError::WebSocket(format!(
                    "{base}: connection refused"
                )))
            });
        }
        inner(url)
    });
    (connector, hub, tried)
}

#[tokio::test(start_paused = true)]
async fn several_urls_connect_in_order_and_reconnect_in_rounds() -> TestResult {
    let opts = ClientOptions {
        reconnect: Some(ReconnectPolicy {
            jitter: 0.0,
            ..Default::default()
        }),
        ..options().with_fallback_urls(["ws://b.test/ws", "ws://c.test/ws"])
    };
    let opts = ClientOptions {
        url: "ws://a.test/ws".into(),
        ..opts
    };
    let down = Down::default();
    down.lock().push("ws://a.test/ws");
    let (connector, mut hub, tried) = fake_hubs(down.clone());
    let client = tokio::spawn(Client::connect_with(opts, connector));
    // a is down: the first connection goes to b.
    let (conn, _) = hub.greet("alice", &[]).await;
    let client = client.await??;
    assert_eq!(client.current_url(), "ws://b.test/ws");
    let mut events = client.events();
    assert!(matches!(
        events.recv().await,
        Some(ClientEvent::Connected { .. })
    ));

    // Every hub is down when b's connection drops.
    down.lock().extend(["ws://b.test/ws", "ws://c.test/ws"]);
    let dropped = tokio::time::Instant::now();
    drop(conn);
    assert!(matches!(
        events.recv().await,
        Some(ClientEvent::ConnectionLost { .. })
    ));
    assert_eq!(
        events.recv().await,
        Some(ClientEvent::Reconnecting {
            attempt: 1,
            delay: Duration::from_millis(200)
        })
    );
    // Round 1 (b, c, a) fails; the ladder's next delay comes before round 2.
    assert_eq!(
        events.recv().await,
        Some(ClientEvent::Reconnecting {
            attempt: 2,
            delay: Duration::from_millis(400)
        })
    );
    assert_eq!(
        client.current_url(),
        "ws://b.test/ws",
        "the last hub reached"
    );
    // a comes back while the client waits: round 2 tries b and c, then reaches a.
    down.lock().retain(|u| *u != "ws://a.test/ws");
    let (_conn, hello) = hub.greet("alice", &[]).await;
    assert_eq!(hello.secret.as_deref(), Some("secret-of-alice"));
    assert_eq!(
        events.recv().await,
        Some(ClientEvent::Reconnected {
            id: id("alice"),
            attempt: 2,
            rooms: Vec::new(),
            url: "ws://a.test/ws".into(),
        })
    );
    assert_eq!(client.current_url(), "ws://a.test/ws");

    let tried = tried.lock().clone();
    let urls: Vec<&str> = tried.iter().map(|(u, _)| u.as_str()).collect();
    assert_eq!(
        urls,
        [
            "ws://a.test/ws",
            "ws://b.test/ws",
            // round 1, after 200 ms: the lost hub first, then the others in order
            "ws://b.test/ws",
            "ws://c.test/ws",
            "ws://a.test/ws",
            // round 2, 400 ms later
            "ws://b.test/ws",
            "ws://c.test/ws",
            "ws://a.test/ws",
        ]
    );
    let after = |i: usize| tried[i].1 - dropped;
    let round1 = Duration::from_millis(200);
    let round2 = round1 + Duration::from_millis(400);
    assert_eq!(
        (2..8).map(after).collect::<Vec<_>>(),
        [round1, round1, round1, round2, round2, round2],
        "no wait within a round, the backoff between rounds"
    );
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn every_url_is_checked_before_connecting() {
    let (connector, _hub, tried) = fake_hubs(Down::default());
    let opts = options().with_fallback_urls(["ws://b.test/ws", "http://c.test/ws"]);
    let err = Client::connect_with(opts, connector)
        .await
        .expect_err("an invalid URL");
    assert!(
        matches!(&err, ClientError::InvalidUrl(m) if m.contains("http://c.test/ws")),
        "{err:?}"
    );
    assert!(tried.lock().is_empty(), "nothing was opened");
}

#[tokio::test(start_paused = true)]
async fn a_permanent_refusal_does_not_try_the_next_url() {
    let (connector, mut hub, tried) = fake_hubs(Down::default());
    let opts = options().with_fallback_urls(["ws://b.test/ws"]);
    let client = tokio::spawn(Client::connect_with(opts, connector));
    let mut conn = hub.accept().await;
    conn.recv().await;
    conn.send(ServerFrame::Error(ErrorFrame::new(
        ErrorCode::Unauthorized,
        "no token",
        None,
    )))
    .await;
    let err = client.await.expect("join").expect_err("refused");
    assert_eq!(err.code(), Some(ErrorCode::Unauthorized));
    let urls: Vec<String> = tried.lock().iter().map(|(u, _)| u.clone()).collect();
    assert_eq!(urls, ["ws://hub.test/ws"]);
}
