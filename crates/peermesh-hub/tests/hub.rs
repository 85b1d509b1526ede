//! End-to-end tests of the hub over real WebSocket connections on loopback.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Raw, TestHub};
use peermesh_hub::{DuplicateIdPolicy, HubConfig};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn welcome_generates_an_id_and_a_secret() {
    let hub = TestHub::default().await;
    let mut c = Raw::connect(&hub.url("")).await;
    let w = c.hello(json!({})).await;
    assert_eq!(w["type"], "welcome");
    assert_eq!(w["seq"], 1);
    let id = w["id"].as_str().unwrap();
    assert!(uuid_like(id), "{id}");
    assert_eq!(w["secret"].as_str().unwrap().len(), 32);
    assert_eq!(w["limits"]["max_frame_bytes"], 1 << 20);
}

fn uuid_like(s: &str) -> bool {
    s.len() == 36 && s.chars().filter(|c| *c == '-').count() == 4
}

#[tokio::test]
async fn direct_message_across_encodings_with_stamped_from() {
    let hub = TestHub::default().await;
    let (mut alice, _) = hub.join("alice").await;
    let (mut bob, _) = hub.join_msgpack("bob").await;
    alice
        .send(json!({"type":"emit","to":"bob","event":"chat","data":{"text":"hi","n":1.5},"from":"mallory"}))
        .await;
    let m = bob.recv().await;
    assert_eq!(m["type"], "message");
    assert_eq!(m["from"], "alice", "from is stamped by the hub: {m}");
    assert_eq!(m["event"], "chat");
    assert_eq!(m["data"], json!({"text":"hi","n":1.5}));
    assert!(m.get("room").is_none());
    // Bytes both ways: base64 in JSON, bin in MessagePack.
    bob.send(
        json!({"type":"emit","to":"alice","event":"raw","bin":serde_bytes_like(&[0, 1, 255])}),
    )
    .await;
    let m = alice.recv().await;
    assert_eq!(m["bin"], "AAH/");
    assert_eq!(m["from"], "bob");
}

/// Encodes bytes as MessagePack bin when sent through `Raw::send` in msgpack mode.
fn serde_bytes_like(b: &[u8]) -> serde_json::Value {
    // serde_json cannot hold bytes, so send the base64 form: a MessagePack client may send a
    // base64 string too (the hub accepts both for `bin`).
    use base64::Engine as _;
    json!(base64::engine::general_purpose::STANDARD.encode(b))
}

#[tokio::test]
async fn unknown_target_answers_with_req() {
    let hub = TestHub::default().await;
    let (mut alice, _) = hub.join("alice").await;
    alice
        .send(json!({"type":"emit","to":"nobody","event":"e","data":1,"req":42}))
        .await;
    let e = alice.recv().await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("unknown_target"))
    );
    assert_eq!(e["req"], 42);
    assert!(e["message"].as_str().unwrap().contains("nobody"));
    // An emit with req and no ack gets `ok`.
    let (_bob, _) = hub.join("bob").await;
    alice
        .send(json!({"type":"emit","to":"bob","event":"e","req":43}))
        .await;
    assert_eq!(alice.recv().await, json!({"seq":3,"type":"ok","req":43}));
}

#[tokio::test]
async fn ack_round_trip_timeout_and_target_leaving() {
    let hub = TestHub::default().await;
    let (mut alice, _) = hub.join("alice").await;
    let (mut bob, _) = hub.join("bob").await;
    alice
        .send(json!({"type":"emit","to":"bob","event":"q","data":1,"ack":true,"req":7}))
        .await;
    let m = bob.recv().await;
    let ack_id = m["ack_id"].as_u64().unwrap();
    bob.send(json!({"type":"reply","ack_id":ack_id,"data":2}))
        .await;
    let a = alice.recv().await;
    assert_eq!(
        (a["type"].as_str(), &a["req"], &a["data"]),
        (Some("ack"), &json!(7), &json!(2))
    );
    // A second reply to the same ack is refused; a forged one too.
    bob.send(json!({"type":"reply","ack_id":ack_id,"data":3}))
        .await;
    bob.send(json!({"type":"reply","ack_id":999_999_999_999u64,"data":3}))
        .await;
    assert_eq!(bob.recv().await["code"], "unknown_ack");
    alice.expect_silence(Duration::from_millis(100)).await;

    // Timeout.
    alice
        .send(json!({"type":"emit","to":"bob","event":"q","ack":true,"req":8,"timeout_ms":100}))
        .await;
    let _ = bob.recv().await;
    let e = alice.recv().await;
    assert_eq!(
        (e["code"].as_str(), &e["req"]),
        (Some("ack_timeout"), &json!(8))
    );

    // The target leaves while the ack is pending.
    alice
        .send(json!({"type":"emit","to":"bob","event":"q","ack":true,"req":9}))
        .await;
    let _ = bob.recv().await;
    drop(bob);
    let e = alice.recv().await;
    assert_eq!(
        (e["code"].as_str(), &e["req"]),
        (Some("peer_left"), &json!(9))
    );
    assert_eq!(alice.recv().await["type"], "peer_left");
}

#[tokio::test]
async fn rooms_presence_fanout_and_cleanup() {
    let hub = TestHub::default().await;
    let (mut a, _) = hub.join("a").await;
    let (mut b, _) = hub.join_msgpack("b").await;
    let mut c = Raw::connect(&hub.url("")).await;
    assert_eq!(
        c.hello(json!({"id":"c","rooms":["r"]})).await["rooms"],
        json!(["r"])
    );
    a.send(json!({"type":"join","room":"r","req":1})).await;
    assert_eq!(a.recv().await["type"], "ok");
    assert_eq!(
        c.recv().await,
        json!({"seq":2,"type":"member_joined","room":"r","id":"a"})
    );
    b.send(json!({"type":"join","room":"r","req":1})).await;
    assert_eq!(b.recv().await["type"], "ok");
    assert_eq!(a.recv().await["type"], "member_joined");
    assert_eq!(c.recv().await["type"], "member_joined");
    a.send(json!({"type":"members","room":"r","req":5})).await;
    assert_eq!(a.recv().await["members"], json!(["a", "b", "c"]));

    a.send(json!({"type":"emit_room","room":"r","event":"e","data":"x"}))
        .await;
    for m in [b.recv().await, c.recv().await] {
        assert_eq!(
            (m["room"].as_str(), m["from"].as_str()),
            (Some("r"), Some("a"))
        );
    }
    a.expect_silence(Duration::from_millis(100)).await;
    a.send(json!({"type":"emit_room","room":"r","event":"e","include_self":true}))
        .await;
    assert_eq!(a.recv().await["from"], "a");
    let _ = (b.recv().await, c.recv().await);

    // Not a member.
    a.send(json!({"type":"emit_room","room":"other","event":"e","req":9}))
        .await;
    let e = a.recv().await;
    assert_eq!(
        (e["code"].as_str(), &e["req"]),
        (Some("not_in_room"), &json!(9))
    );

    b.send(json!({"type":"leave","room":"r"})).await;
    let left = a.recv().await;
    assert_eq!(
        (left["type"].as_str(), left["id"].as_str()),
        (Some("member_left"), Some("b"))
    );
    assert_eq!(c.recv().await["type"], "member_left");
    drop(c);
    assert_eq!(a.recv().await["id"], "c");
    assert_eq!(hub.handle.room_count(), 1);
    a.send(json!({"type":"leave","room":"r","req":2})).await;
    assert_eq!(a.recv().await["type"], "ok");
    assert_eq!(hub.handle.room_count(), 0, "empty rooms disappear");
}

#[tokio::test]
async fn peer_left_goes_to_recent_senders_only() {
    let hub = TestHub::default().await;
    let (mut alice, _) = hub.join("alice").await;
    let (mut carol, _) = hub.join("carol").await;
    let (mut bob, _) = hub.join("bob").await;
    alice
        .send(json!({"type":"emit","to":"bob","event":"e"}))
        .await;
    let _ = bob.recv().await;
    drop(bob);
    assert_eq!(
        alice.recv().await,
        json!({"seq":2,"type":"peer_left","id":"bob"})
    );
    carol.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn duplicate_ids_reject_or_replace() {
    let hub = TestHub::default().await;
    let (mut first, w) = hub.join("dup").await;
    let mut second = Raw::connect(&hub.url("")).await;
    let e = second.hello(json!({"id":"dup"})).await;
    assert_eq!(e["code"], "id_taken");
    let (close, _) = second.recv_close().await;
    assert_eq!(close.unwrap().0, 1008);

    // Presenting the secret replaces the old connection even though it looks alive.
    let mut third = Raw::connect(&hub.url("")).await;
    let w3 = third.hello(json!({"id":"dup","secret":w["secret"]})).await;
    assert_eq!(w3["type"], "welcome");
    let (close, frames) = first.recv_close().await;
    assert_eq!(frames.last().unwrap()["code"], "replaced");
    assert!(close.unwrap().1.contains("replaced"));

    let hub = TestHub::start(HubConfig {
        duplicate_id: DuplicateIdPolicy::Replace,
        ..Default::default()
    })
    .await;
    let (mut old, _) = hub.join("x").await;
    let (mut new, _) = hub.join("x").await;
    let (_, frames) = old.recv_close().await;
    assert_eq!(frames.last().unwrap()["code"], "replaced");
    let (mut other, _) = hub.join("y").await;
    other
        .send(json!({"type":"emit","to":"x","event":"e"}))
        .await;
    assert_eq!(new.recv().await["from"], "y");
}

/// A connection replaced through its secret is not a departure: those who sent to the id are
/// told `peer_left` only when the newer connection ends.
#[tokio::test]
async fn replacement_is_not_a_departure() {
    let hub = TestHub::default().await;
    let (mut alice, _) = hub.join("alice").await;
    let (mut bob, w) = hub.join("bob").await;
    alice
        .send(json!({"type":"emit","to":"bob","event":"e"}))
        .await;
    let _ = bob.recv().await;
    let mut bob2 = Raw::connect(&hub.url("")).await;
    assert_eq!(
        bob2.hello(json!({"id":"bob","secret":w["secret"]})).await["type"],
        "welcome"
    );
    let (_, frames) = bob.recv_close().await;
    assert_eq!(frames.last().unwrap()["code"], "replaced");
    alice.expect_silence(Duration::from_millis(200)).await;
    drop(bob2);
    assert_eq!(alice.recv().await["type"], "peer_left");
}

#[tokio::test]
async fn unsupported_version_names_the_range() {
    let hub = TestHub::default().await;
    let mut c = Raw::connect(&hub.url("")).await;
    c.send(json!({"type":"hello","id":"old","version":"0.9.0"}))
        .await;
    let e = c.recv().await;
    assert_eq!(e["code"], "version_unsupported");
    assert!(e["message"].as_str().unwrap().contains("^1.0"), "{e}");
}

#[tokio::test]
async fn bad_input_gets_clear_errors_and_the_connection_carries_on() {
    let hub = TestHub::start(HubConfig {
        max_frame_bytes: 1024,
        ..Default::default()
    })
    .await;
    let mut c = Raw::connect(&hub.url("")).await;
    c.send(json!({"type":"emit","to":"x","event":"e","req":1}))
        .await;
    let e = c.recv().await;
    assert_eq!(
        (e["code"].as_str(), &e["req"]),
        (Some("hello_required"), &json!(1))
    );
    assert_eq!(c.hello(json!({"id":"c"})).await["type"], "welcome");

    let cases: Vec<(Message, &str)> = vec![
        (Message::Text("{not json".into()), "malformed"),
        (Message::Text("[1,2]".into()), "malformed"),
        (Message::Binary(vec![0xc1, 0x00].into()), "malformed"),
        (
            Message::Text(r#"{"type":"launch_missiles"}"#.into()),
            "unknown_type",
        ),
        (
            Message::Text(r#"{"type":"emit","event":"e"}"#.into()),
            "invalid_field",
        ),
        (
            Message::Text(r#"{"type":"emit","to":7,"event":"e"}"#.into()),
            "invalid_field",
        ),
        (
            Message::Text(r#"{"type":"join","room":""}"#.into()),
            "invalid_field",
        ),
        (
            Message::Text(r#"{"type":"hello","version":"1.0.0"}"#.into()),
            "already_greeted",
        ),
        (
            Message::Text(format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(2000)).into()),
            "frame_too_large",
        ),
    ];
    for (msg, code) in cases {
        c.send_raw(msg).await;
        let e = c.recv().await;
        assert_eq!(e["code"], code, "{e}");
        assert!(!e["message"].as_str().unwrap_or_default().is_empty(), "{e}");
    }
    c.send(json!({"type":"ping","req":5})).await;
    assert_eq!(c.recv().await["type"], "pong");

    // Beyond the hard cap the connection cannot continue: it is closed with a reason.
    c.send_raw(Message::Text("x".repeat(70_000).into())).await;
    let (close, frames) = c.recv_close().await;
    assert_eq!(
        frames.last().map(|f| f["code"].clone()),
        Some(json!("frame_too_large")),
        "{close:?} {frames:?}"
    );
    // The hub closes with 1009; the kernel may turn that close into a reset because the
    // oversized frame's remaining bytes were never read, so the close frame can be lost.
    if let Some((code, _)) = close {
        assert_eq!(code, 1009);
    }
}

#[tokio::test]
async fn invalid_hello_id_is_refused() {
    let hub = TestHub::default().await;
    let mut c = Raw::connect(&hub.url("")).await;
    assert_eq!(
        c.hello(json!({"id":"no spaces allowed"})).await["code"],
        "invalid_id"
    );
}

#[tokio::test]
async fn dead_connections_are_detected_and_cleaned_up() {
    let hub = TestHub::start(HubConfig {
        heartbeat_interval_ms: 50,
        heartbeat_timeout_ms: 300,
        ..Default::default()
    })
    .await;
    let (mut watcher, _) = hub.join("watcher").await;
    watcher.send(json!({"type":"join","room":"r"})).await;
    // A client that completes the handshake and then never reads or writes again: its
    // WebSocket library cannot answer pings.
    let (mut ghost, _) = hub.join("ghost").await;
    ghost.send(json!({"type":"join","room":"r"})).await;
    let joined = watcher.recv_type("member_joined").await;
    assert_eq!(joined["id"], "ghost");
    let started = std::time::Instant::now();
    let left = watcher.recv_type("member_left").await;
    assert_eq!(left["id"], "ghost");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(hub.handle.client_count(), 1);
    drop(ghost);
}

#[tokio::test]
async fn rate_limit_drops_with_a_clear_error() {
    let hub = TestHub::start(HubConfig {
        rate_per_sec: 1,
        rate_burst: 3,
        ..Default::default()
    })
    .await;
    let (mut c, _) = hub.join("c").await;
    for req in 0..6 {
        c.send(json!({"type":"ping","req":req})).await;
    }
    let mut codes = Vec::new();
    for _ in 0..6 {
        let v = c.recv().await;
        codes.push(
            v["code"]
                .as_str()
                .unwrap_or(v["type"].as_str().unwrap())
                .to_string(),
        );
    }
    assert_eq!(
        codes.iter().filter(|c| *c == "pong").count(),
        3,
        "{codes:?}"
    );
    assert_eq!(
        codes.iter().filter(|c| *c == "rate_limited").count(),
        3,
        "{codes:?}"
    );
}

#[tokio::test]
async fn client_and_room_limits() {
    let hub = TestHub::start(HubConfig {
        max_clients: 2,
        max_rooms_per_client: 2,
        ..Default::default()
    })
    .await;
    let (mut a, _) = hub.join("a").await;
    let (_b, _) = hub.join("b").await;
    let mut c = Raw::connect(&hub.url("")).await;
    assert_eq!(c.hello(json!({"id":"c"})).await["code"], "server_full");
    for room in ["1", "2", "3"] {
        a.send(json!({"type":"join","room":room,"req":1})).await;
    }
    let last = a.recv_type("error").await;
    assert_eq!(last["code"], "too_many_rooms");
}

#[tokio::test]
async fn jwt_auth_binds_ids_and_rooms() {
    use jsonwebtoken::{encode, EncodingKey, Header};
    let hub = TestHub::start(HubConfig {
        auth: peermesh_hub::AuthConfig {
            jwt_secret: Some("k".into()),
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let exp = jsonwebtoken::get_current_timestamp() + 600;
    let token = |sub: &str| {
        encode(
            &Header::default(),
            &json!({"sub":sub,"exp":exp,"rooms":["lobby","team-*"]}),
            &EncodingKey::from_secret(b"k"),
        )
        .unwrap()
    };
    let mut c = Raw::connect(&hub.url("")).await;
    assert_eq!(c.hello(json!({"id":"alice"})).await["code"], "unauthorized");
    let mut c = Raw::connect(&hub.url("")).await;
    let e = c
        .hello(json!({"id":"alice","token":token("mallory")}))
        .await;
    assert_eq!(e["code"], "unauthorized");
    let mut c = Raw::connect(&hub.url("")).await;
    let w = c.hello(json!({"token":token("alice")})).await;
    assert_eq!(w["id"], "alice", "the id comes from the token");
    c.send(json!({"type":"join","room":"team-red","req":1}))
        .await;
    assert_eq!(c.recv().await["type"], "ok");
    c.send(json!({"type":"join","room":"admin","req":2})).await;
    assert_eq!(c.recv().await["code"], "forbidden");
    // Token in the query string, as a browser would send it.
    let mut b = Raw::connect(&hub.url(&format!("?token={}", token("bob")))).await;
    assert_eq!(b.hello(json!({"id":"bob"})).await["type"], "welcome");
}

/// RS256 and EdDSA tokens verified with a public key file (test keys in tests/fixtures).
#[tokio::test]
async fn jwt_public_keys_rsa_and_ed25519() {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let exp = jsonwebtoken::get_current_timestamp() + 600;
    let cases = [
        (
            "rsa",
            Algorithm::RS256,
            EncodingKey::from_rsa_pem as fn(&[u8]) -> jsonwebtoken::errors::Result<EncodingKey>,
        ),
        (
            "ed25519",
            Algorithm::EdDSA,
            EncodingKey::from_ed_pem as fn(&[u8]) -> jsonwebtoken::errors::Result<EncodingKey>,
        ),
    ];
    for (name, alg, load) in cases {
        let hub = TestHub::start(HubConfig {
            auth: peermesh_hub::AuthConfig {
                jwt_public_key: Some(dir.join(format!("{name}-public.pem"))),
                ..Default::default()
            },
            ..Default::default()
        })
        .await;
        let private = std::fs::read(dir.join(format!("{name}-private.pem"))).unwrap();
        let token = encode(
            &Header::new(alg),
            &json!({"sub":"alice","exp":exp}),
            &load(&private).unwrap(),
        )
        .unwrap();
        let mut c = Raw::connect(&hub.url("")).await;
        assert_eq!(
            c.hello(json!({"token":token})).await["id"],
            "alice",
            "{name}"
        );
        // An HS256 token signed with some secret is refused by a public-key hub.
        let forged = encode(
            &Header::default(),
            &json!({"sub":"bob","exp":exp}),
            &EncodingKey::from_secret(b"guess"),
        )
        .unwrap();
        let mut c = Raw::connect(&hub.url("")).await;
        assert_eq!(
            c.hello(json!({"token":forged})).await["code"],
            "unauthorized",
            "{name}"
        );
    }
}

#[tokio::test]
async fn shutdown_closes_every_connection_with_a_reason() {
    let hub = TestHub::default().await;
    let (mut a, _) = hub.join("a").await;
    let (mut b, _) = hub.join_msgpack("b").await;
    hub.handle.shutdown();
    for c in [&mut a, &mut b] {
        let (close, frames) = c.recv_close().await;
        assert_eq!(frames.last().unwrap()["code"], "shutting_down");
        assert_eq!(close.unwrap(), (1001, "server shutting down".to_string()));
    }
    hub.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn status_metrics_metadata_and_proxy_ip() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let hub = TestHub::start(HubConfig {
        trust_proxy: true,
        ..Default::default()
    })
    .await;
    let mut req = hub.url("?room=x&app=demo").into_client_request().unwrap();
    req.headers_mut()
        .insert("x-forwarded-for", "203.0.113.9, 10.0.0.1".parse().unwrap());
    let mut c = Raw::connect_with(req).await;
    assert_eq!(c.hello(json!({"id":"meta"})).await["type"], "welcome");
    c.send(json!({"type":"provide","service":"calc","methods":["add"],"req":1}))
        .await;
    assert_eq!(c.recv_type("ok").await["req"], 1);
    c.send(json!({"type":"create_topic","topic":"sums","req":2}))
        .await;
    assert_eq!(c.recv_type("ok").await["req"], 2);
    let status: serde_json::Value = serde_json::from_str(&hub.get("/status.json").await).unwrap();
    assert_eq!(status["clients"], 1);
    let client = &status["client_list"][0];
    assert_eq!(client["ip"], "203.0.113.9");
    assert_eq!(client["meta"], json!([["room", "x"], ["app", "demo"]]));
    assert_eq!(
        status["service_list"],
        json!([{"name":"calc","hub":false,"providers":1,"calls_in_flight":0,"topics":1,"subscriptions":0}])
    );
    let page = hub.get("/").await;
    assert!(page.contains("<td>meta</td>"), "{page}");
    assert!(
        page.contains("<td>calc</td><td>no</td><td>1</td>"),
        "{page}"
    );
    let metrics = hub.get("/metrics").await;
    assert!(metrics.contains("peermesh_clients 1"), "{metrics}");
    assert!(metrics.contains("peermesh_services 1"), "{metrics}");
    assert!(metrics.contains("peermesh_topics 1"), "{metrics}");
    assert!(metrics.contains("peermesh_connections_total 1"));
}

#[tokio::test]
async fn slow_consumer_is_disconnected_without_stalling_the_sender() {
    let hub = TestHub::start(HubConfig {
        outbound_queue_frames: 64,
        outbound_queue_bytes: 64 << 10,
        max_frame_bytes: 32 << 10,
        rate_per_sec: 1_000_000,
        rate_burst: 1_000_000,
        ..Default::default()
    })
    .await;
    let (mut sender, _) = hub.join("sender").await;
    let (mut slow, _) = hub.join("slow").await;
    let payload = "x".repeat(16 << 10);
    // The slow client never reads; the socket buffers fill, then its queue overflows.
    let mut closed = false;
    for i in 0..20_000 {
        sender
            .send(json!({"type":"emit","to":"slow","event":"e","data":payload}))
            .await;
        if i % 64 == 0 && hub.handle.client_count() == 1 {
            closed = true;
            break;
        }
    }
    assert!(closed, "the slow consumer was never disconnected");
    sender.send(json!({"type":"ping","req":1})).await;
    assert_eq!(sender.recv_type("pong").await["req"], 1);
    let (close, frames) = slow.recv_close().await;
    let last = frames.last().unwrap();
    assert_eq!(last["code"], "slow_consumer", "{last}");
    assert_eq!(close.unwrap().0, 1008);
}
