//! End-to-end tests of `peermesh connect`: real `peermesh serve` and `peermesh connect`
//! processes talking over loopback, driven through stdin and read through stdout.
//!
//! Every read waits for a specific line with a deadline (`LIMIT`), so a missing line fails the
//! test with the process's stderr instead of hanging it.

mod common;

use std::process::Command;
use std::time::Instant;

use serde_json::{json, Value};

use common::{Proc, BIN, LIMIT};

/// `peermesh serve` on `listen`; returns the process and its WebSocket URL.
fn serve_at(listen: &str) -> (Proc, String) {
    let hub = Proc::spawn("serve", &["serve", "--listen", listen]);
    let first = hub.line();
    assert_eq!(first["type"], "listening", "{first}");
    let ws = first["ws"].as_str().expect("ws url").to_owned();
    (hub, ws)
}

fn serve() -> (Proc, String) {
    serve_at("127.0.0.1:0")
}

/// `peermesh connect URL --id ID ARGS…`, after its `connected` line.
fn connect(url: &str, id: &str, args: &[&str]) -> Proc {
    let mut all = vec!["connect", url, "--id", id];
    all.extend_from_slice(args);
    let p = Proc::spawn(id, &all);
    let first = p.line();
    assert_eq!(first, json!({"type": "connected", "id": id}));
    p
}

#[test]
fn two_clients_chat_with_acks_and_errors() {
    let (_hub, url) = serve();
    let mut bob = connect(&url, "bob", &["--enc", "msgpack"]);
    let mut alice = connect(&url, "alice", &[]);

    alice.send(r#"{"op":"emit","to":"bob","event":"chat","data":{"text":"hi"}}"#);
    assert_eq!(
        bob.line(),
        json!({"type": "message", "from": "alice", "event": "chat", "data": {"text": "hi"}})
    );

    // Acknowledged emit: bob answers with the ack_id he was given.
    alice.send(r#"{"op":"emit","to":"bob","event":"q","data":1,"ack":true,"req":7}"#);
    let q = bob.line();
    assert_eq!(q["event"], "q");
    assert_eq!(q["data"], 1);
    let ack_id = q["ack_id"].as_u64().expect("ack_id");
    bob.send_json(json!({"op": "reply", "ack_id": ack_id, "data": 2}));
    assert_eq!(alice.line(), json!({"type": "ack", "req": 7, "data": 2}));

    // Unanswered: ack_timeout, carrying the req.
    alice.send(
        r#"{"op":"emit","to":"bob","event":"q","data":3,"ack":true,"timeout_ms":200,"req":8}"#,
    );
    assert!(bob.line()["ack_id"].is_u64());
    let err = alice.line();
    assert_eq!(err["type"], "error");
    assert_eq!(err["code"], "ack_timeout");
    assert_eq!(err["req"], 8);
    assert!(err["message"].is_string());

    // Unknown target.
    alice.send(r#"{"op":"emit","to":"nobody","event":"chat","data":1,"req":9}"#);
    let err = alice.line();
    assert_eq!(err["code"], "unknown_target", "{err}");
    assert_eq!(err["req"], 9);

    // Success with a req prints ok; bytes travel as base64.
    alice.send(r#"{"op":"emit","to":"bob","event":"b","bin":"AAEC/w==","req":10}"#);
    assert_eq!(alice.line(), json!({"type": "ok", "req": 10}));
    assert_eq!(
        bob.line(),
        json!({"type": "message", "from": "alice", "event": "b", "bin": "AAEC/w=="})
    );

    // Bob leaves: alice, who wrote to him, hears it.
    let (rest, status) = bob.finish();
    assert!(rest.is_empty(), "{rest:?}");
    assert!(status.success(), "{status}");
    assert_eq!(alice.line(), json!({"type": "peer_left", "id": "bob"}));
    let (rest, status) = alice.finish();
    assert!(rest.is_empty(), "{rest:?}");
    assert!(status.success(), "{status}");
}

#[test]
fn rooms_members_and_presence() {
    let (_hub, url) = serve();
    let mut alice = connect(&url, "alice", &["--room", "r"]);
    let mut bob = connect(&url, "bob", &[]);

    bob.send(r#"{"op":"join","room":"r","req":1}"#);
    assert_eq!(bob.line(), json!({"type": "ok", "req": 1}));
    assert_eq!(
        alice.line(),
        json!({"type": "member_joined", "room": "r", "id": "bob"})
    );
    bob.send(r#"{"op":"members","room":"r","req":2}"#);
    assert_eq!(
        bob.line(),
        json!({"type": "members", "req": 2, "room": "r", "members": ["alice", "bob"]})
    );

    // Line order is hub order: the emit_room right after a join is already in the room.
    bob.send(r#"{"op":"join","room":"s"}"#);
    bob.send(
        r#"{"op":"emit_room","room":"s","event":"e","data":"self","include_self":true,"req":3}"#,
    );
    let mut got = [bob.line(), bob.line()];
    got.sort_by_key(|v| v["type"].as_str().map(str::to_owned));
    assert_eq!(
        got,
        [
            json!({"type": "message", "from": "bob", "event": "e", "data": "self", "room": "s"}),
            json!({"type": "ok", "req": 3}),
        ]
    );

    alice.send(r#"{"op":"emit_room","room":"r","event":"e","data":{"n":1}}"#);
    assert_eq!(
        bob.line(),
        json!({"type": "message", "from": "alice", "event": "e", "data": {"n": 1}, "room": "r"})
    );

    bob.send(r#"{"op":"leave","room":"r","req":4}"#);
    assert_eq!(bob.line(), json!({"type": "ok", "req": 4}));
    assert_eq!(
        alice.line(),
        json!({"type": "member_left", "room": "r", "id": "bob"})
    );
    bob.send(r#"{"op":"members","room":"r","req":5}"#);
    let err = bob.line();
    assert_eq!(err["code"], "not_in_room", "{err}");
    assert_eq!(err["req"], 5);

    let (_, status) = bob.finish();
    assert!(status.success());
    let (_, status) = alice.finish();
    assert!(status.success());
}

#[test]
fn bad_commands_get_errors_and_change_nothing() {
    let (_hub, url) = serve();
    let mut alice = connect(&url, "alice", &[]);
    for line in [
        "not json",
        r#"[1,2]"#,
        r#"{"op":"fly","req":1}"#,
        r#"{"op":"emit","to":"bob","req":2}"#,
        r#"{"op":"emit","to":"bob","event":"x","ack":true}"#,
        r#"{"op":"join","room":"r","typo":1,"req":3}"#,
        r#"{"op":"emit","to":"bob","event":"x","data":1,"bin":"AA==","req":4}"#,
    ] {
        alice.send(line);
    }
    alice.send("");
    alice.send(r#"{"op":"join","room":"ok","req":5}"#);
    let expected_reqs = [None, None, Some(1), Some(2), None, Some(3), Some(4)];
    for req in expected_reqs {
        let err = alice.line();
        assert_eq!(err["type"], "error", "{err}");
        assert_eq!(err["code"], "bad_command", "{err}");
        assert!(err["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert_eq!(err.get("req").and_then(Value::as_u64), req, "{err}");
    }
    assert_eq!(alice.line(), json!({"type": "ok", "req": 5}));
    // An invalid name is refused by the client before it reaches the hub.
    alice.send(r#"{"op":"emit","to":"not valid","event":"x","req":6}"#);
    let err = alice.line();
    assert_eq!(err["code"], "invalid_name", "{err}");
    assert_eq!(err["req"], 6);
    let (rest, status) = alice.finish();
    assert!(rest.is_empty(), "{rest:?}");
    assert!(status.success(), "{status}");
}

#[test]
fn end_of_input_waits_for_pending_answers() {
    let (_hub, url) = serve();
    let mut bob = connect(&url, "bob", &[]);
    let mut alice = connect(&url, "alice", &[]);
    alice.send(r#"{"op":"emit","to":"bob","event":"q","data":"?","ack":true,"req":1}"#);
    alice.close_stdin();
    let q = bob.line();
    bob.send_json(json!({"op": "reply", "ack_id": q["ack_id"], "data": "!"}));
    let (rest, status) = alice.finish();
    assert_eq!(rest, [json!({"type": "ack", "req": 1, "data": "!"})]);
    assert!(status.success(), "{status}");
    let (_, status) = bob.finish();
    assert!(status.success());
}

#[test]
fn reconnects_to_a_restarted_hub() {
    // A loopback address of its own: restarting on the same port can never collide with
    // another test's 127.0.0.1:0 listener.
    let pid = std::process::id();
    let (mut hub, url) = serve_at(&format!(
        "127.110.{}.{}:0",
        (pid >> 8) as u8,
        (pid as u8).max(1)
    ));
    let addr = url
        .trim_start_matches("ws://")
        .trim_end_matches("/ws")
        .to_owned();
    let alice = connect(&url, "alice", &["--room", "r"]);
    hub.kill();
    assert_eq!(
        alice.expect_type("connection_lost")["type"],
        "connection_lost"
    );
    let first = alice.expect_type("reconnecting");
    assert_eq!(first["attempt"], 1);
    assert!(
        first["delay_ms"].as_u64().is_some_and(|d| d <= 200),
        "{first}"
    );

    let (_hub, url2) = serve_at(&addr);
    assert_eq!(url2, url);
    let back = alice.expect_type("reconnected");
    assert_eq!(back["id"], "alice");
    assert_eq!(back["rooms"], json!(["r"]));

    // The room was rejoined on the new hub.
    let mut bob = connect(&url, "bob", &[]);
    bob.send(r#"{"op":"join","room":"r","req":1}"#);
    assert_eq!(bob.line(), json!({"type": "ok", "req": 1}));
    bob.send(r#"{"op":"members","room":"r","req":2}"#);
    assert_eq!(bob.line()["members"], json!(["alice", "bob"]));
    let (_, status) = alice.finish();
    assert!(status.success(), "{status}");
}

/// A URL where nothing listens: a port that was bound, then released.
fn dead_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let addr = listener.local_addr().expect("local address");
    drop(listener);
    format!("ws://{addr}/ws")
}

#[test]
fn several_hubs_skip_a_dead_one_and_fail_over_to_the_next() {
    let (mut hub_a, a) = serve();
    let (_hub_b, b) = serve();

    // Comma-separated: the dead URL is skipped.
    let carol = Proc::spawn(
        "carol",
        &["connect", &format!("{},{a}", dead_url()), "--id", "carol"],
    );
    assert_eq!(
        carol.line(),
        json!({"type": "connected", "id": "carol", "url": a})
    );
    let (rest, status) = carol.finish();
    assert!(rest.is_empty(), "{rest:?}");
    assert!(status.success(), "{status}");

    // Repeated --url: alice is on a, bob on b.
    let mut alice = Proc::spawn(
        "alice",
        &[
            "connect", "--url", &a, "--url", &b, "--id", "alice", "--room", "r",
        ],
    );
    assert_eq!(
        alice.line(),
        json!({"type": "connected", "id": "alice", "url": a})
    );
    let mut bob = connect(&b, "bob", &["--room", "r"]);

    // a goes away: alice moves to b, where her session is new.
    hub_a.kill();
    alice.expect_type("connection_lost");
    let back = alice.expect_type("reconnected");
    assert_eq!(back["id"], "alice");
    assert_eq!(back["url"], json!(b));
    assert_eq!(back["rooms"], json!(["r"]));
    assert_eq!(alice.expect_type("resynced")["reason"], "expired");

    assert_eq!(
        bob.line(),
        json!({"type": "member_joined", "room": "r", "id": "alice"}),
        "alice rejoined r on b"
    );
    bob.send(r#"{"op":"members","room":"r","req":1}"#);
    assert_eq!(bob.line()["members"], json!(["alice", "bob"]));
    bob.send(r#"{"op":"emit","to":"alice","event":"m","data":"on b","req":2}"#);
    assert_eq!(bob.line(), json!({"type": "ok", "req": 2}));
    let m = alice.expect_type("message");
    assert_eq!(
        (m["from"].clone(), m["data"].clone()),
        (json!("bob"), json!("on b"))
    );
    alice.send(r#"{"op":"emit","to":"bob","event":"m","data":"hi","req":3}"#);
    assert_eq!(alice.expect_type("ok")["req"], 3);
    assert_eq!(
        bob.line(),
        json!({"type": "message", "from": "alice", "event": "m", "data": "hi"})
    );

    let (_, status) = alice.finish();
    assert!(status.success(), "{status}");
    let (_, status) = bob.finish();
    assert!(status.success(), "{status}");
}

#[test]
fn an_invalid_url_in_the_list_is_refused_before_connecting() {
    let (_hub, url) = serve();
    let p = Proc::spawn(
        "alice",
        &["connect", &url, "--url", "http://h/ws", "--id", "alice"],
    );
    let err = p.line();
    assert_eq!(err["type"], "error", "{err}");
    assert_eq!(err["code"], "invalid_url", "{err}");
    let (rest, status) = p.finish();
    assert!(rest.is_empty(), "{rest:?}");
    assert_eq!(status.code(), Some(1));
}

#[test]
fn lost_for_good_exits_non_zero() {
    // Its own loopback address, so no other test's hub can take the port after the kill.
    let pid = std::process::id();
    let (mut hub, url) = serve_at(&format!(
        "127.111.{}.{}:0",
        (pid >> 8) as u8,
        (pid as u8).max(1)
    ));
    let alice = connect(&url, "alice", &["--reconnect-attempts", "2"]);
    hub.kill();
    let mut attempts = Vec::new();
    let deadline = Instant::now() + LIMIT;
    let lost = loop {
        let Some(v) = alice.next(deadline) else {
            alice.fail("stdout ended before `lost`");
        };
        match v["type"].as_str() {
            Some("reconnecting") => attempts.push(v["attempt"].clone()),
            Some("lost") => break v,
            _ => {}
        }
    };
    assert_eq!(attempts, [json!(1), json!(2)]);
    assert!(lost["reason"].as_str().is_some_and(|r| !r.is_empty()));
    // The process ends on its own, stdin still open.
    let deadline = Instant::now() + LIMIT;
    let mut rest = Vec::new();
    while let Some(v) = alice.next(deadline) {
        rest.push(v);
    }
    assert!(rest.is_empty(), "{rest:?}");
    let (_, status) = alice.finish();
    assert_eq!(status.code(), Some(1));
}

#[test]
fn help_explains_the_contract() {
    let out = Command::new(BIN)
        .args(["connect", "--help"])
        .output()
        .expect("run --help");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        r#""op":"emit""#,
        r#""op":"reply""#,
        r#""op":"join""#,
        r#""op":"leave""#,
        r#""op":"emit_room""#,
        r#""op":"members""#,
        r#""type":"connected""#,
        r#""type":"message""#,
        r#""type":"ack""#,
        "bad_command",
        "member_joined",
        "peer_left",
        "reconnecting",
        "reconnected",
        r#""type":"lost""#,
        "--enc",
        "--room",
        "--token",
        "--url",
        "req",
        "exits 0",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}:\n{help}");
    }
}

#[test]
fn resumes_through_a_reset_connection_and_says_so() {
    let (_hub, url) = serve();
    let hub_addr: std::net::SocketAddr = url
        .trim_start_matches("ws://")
        .trim_end_matches("/ws")
        .parse()
        .expect("hub address");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let proxy = rt
        .block_on(peermesh_testkit::FaultProxy::start(hub_addr, None))
        .expect("fault proxy");
    let via = format!("ws://{}/ws", proxy.addr());
    let alice = connect(&via, "alice", &["--room", "r"]);
    let mut bob = connect(&url, "bob", &[]);
    bob.send(r#"{"op":"emit","to":"alice","event":"m","data":1,"req":1}"#);
    assert_eq!(bob.line(), json!({"type": "ok", "req": 1}));
    assert_eq!(alice.expect_type("message")["data"], 1);

    // alice's TCP connection is reset and refused for a moment; bob writes meanwhile.
    assert_eq!(proxy.cut(std::time::Duration::from_millis(300)), 1);
    alice.expect_type("connection_lost");
    for n in 2..5 {
        bob.send(&format!(
            r#"{{"op":"emit","to":"alice","event":"m","data":{n},"req":{n}}}"#
        ));
        assert_eq!(bob.expect_type("ok")["req"], n, "alice is away, not gone");
    }
    // Events and messages are printed by two tasks: the replayed messages may come before or
    // after the `reconnected` / `resumed` lines, but each once and in order.
    let (mut reconnected, mut resumed, mut got) = (None, false, Vec::new());
    while reconnected.is_none() || !resumed || got.len() < 3 {
        let v = alice.line();
        match v["type"].as_str() {
            Some("reconnected") => reconnected = Some(v),
            Some("resumed") => {
                assert!(reconnected.is_some(), "resumed comes after reconnected");
                resumed = true;
            }
            Some("message") => got.push(v["data"].clone()),
            _ => {}
        }
    }
    assert_eq!(reconnected.map(|v| v["rooms"].clone()), Some(json!(["r"])));
    assert_eq!(
        got,
        [json!(2), json!(3), json!(4)],
        "each missed message once, in order"
    );
    bob.send(r#"{"op":"emit","to":"alice","event":"m","data":"after","req":9}"#);
    let m = alice.expect_type("message");
    assert_eq!(m["data"], "after", "no duplicate before it: {m}");
    drop(proxy);
}
