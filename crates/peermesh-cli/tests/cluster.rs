//! Three `peermesh serve --cluster` processes on a real `nats-server -js`, with `peermesh
//! connect` clients: messages and rooms across hubs, the cluster on `/status.json` and
//! `/metrics`, and `kill -9` of a hub (its ids, room members and session members released
//! within 10 s); pipes
//! (streams) between clients of different hubs, and what `kill -9` of a hub does to them.

mod common;

use std::time::{Duration, Instant};

use common::side::{exchange, Side};
use common::{http_get, Proc};
use peermesh_testkit::NatsServer;
use serde_json::{json, Value};

/// `peermesh serve --cluster URL --node-name NAME --threads 1` (three hubs share the test
/// machine); returns it, its address and its ws URL.
fn hub(nats: &NatsServer, name: &str) -> (Proc, String, String) {
    let p = Proc::spawn(
        name,
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--cluster",
            &nats.url(),
            "--node-name",
            name,
            "--threads",
            "1",
        ],
    );
    let first = p.line();
    assert_eq!(
        (&first["type"], &first["node"]),
        (&json!("listening"), &json!(name)),
        "{first}"
    );
    let addr = first["addr"].as_str().expect("addr").to_owned();
    let ws = first["ws"].as_str().expect("ws").to_owned();
    (p, addr, ws)
}

/// hub-a, hub-b and hub-c, once hub-a sees all three.
fn three(nats: &NatsServer) -> [(Proc, String, String); 3] {
    let all = ["hub-a", "hub-b", "hub-c"].map(|n| hub(nats, n));
    let a_addr = &all[0].1;
    let deadline = Instant::now() + Duration::from_secs(10);
    while nodes(a_addr).len() < 3 {
        assert!(Instant::now() < deadline, "hub-a sees {:?}", nodes(a_addr));
        std::thread::sleep(Duration::from_millis(100));
    }
    all
}

fn connect(url: &str, id: &str, args: &[&str]) -> Proc {
    let mut all = vec!["connect", url, "--id", id];
    all.extend_from_slice(args);
    let p = Proc::spawn(id, &all);
    let first = p.line();
    assert_eq!(first, json!({"type": "connected", "id": id}), "{id}");
    p
}

fn nodes(addr: &str) -> Vec<String> {
    let status: Value = serde_json::from_str(&http_get(addr, "/status.json")).expect("json");
    status["cluster"]["nodes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|n| n["node"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Reads `p`'s lines until one satisfies `done`, returning them all.
fn lines_until(p: &Proc, mut done: impl FnMut(&Value) -> bool) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        let v = p.line();
        seen.push(v.clone());
        if done(&seen[seen.len() - 1]) {
            return seen;
        }
    }
}

fn roster_ids(state: &Value) -> Vec<String> {
    state["roster"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(|m| m["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// `/status.json`'s cluster counter `name` on the hub at `addr`.
fn cluster_count(addr: &str, name: &str) -> u64 {
    let status: Value = serde_json::from_str(&http_get(addr, "/status.json")).expect("json");
    status["cluster"][name].as_u64().unwrap_or(0)
}

#[test]
fn kill_9_of_a_sessions_home_hub_leaves_the_session_to_a_hub_with_members() {
    let nats = NatsServer::start();
    let [(mut a, _, a_ws), (_b, b_addr, b_ws), (_c, c_addr, c_ws)] = three(&nats);
    // A session held by hub-a (alice created it), with members on hub-b and hub-c, each
    // owning an object.
    let mut alice = connect(&a_ws, "alice", &[]);
    let mut bob = connect(&b_ws, "bob", &[]);
    let mut carol = connect(&c_ws, "carol", &[]);
    alice.send(r#"{"op":"session_join","session":"game","req":1}"#);
    assert_eq!(alice.expect_type("session_state")["authority"], "alice");
    for (p, name) in [(&mut bob, "bob"), (&mut carol, "carol")] {
        p.send(r#"{"op":"session_join","session":"game","req":1}"#);
        let s = p.expect_type("session_state");
        assert_eq!(s["authority"], "alice", "one session across hubs: {s}");
        p.send_json(
            json!({"op": "session_create", "session": "game", "object": name, "data": 1, "req": 2}),
        );
        assert_eq!(p.expect_type("ok")["req"], 2);
    }
    // erin, on hub-c too, will leave right after the kill.
    let mut erin = connect(&c_ws, "erin", &[]);
    erin.send(r#"{"op":"session_join","session":"game","req":1}"#);
    erin.expect_type("session_state");
    alice.send(r#"{"op":"session_create","session":"game","object":"alice","data":1,"req":2}"#);
    let last = |e: &Value| e["event"] == "created" && e["object"] == "alice";
    let rev = lines_until(&bob, last).last().map(|e| e["rev"].clone());
    assert_eq!(
        lines_until(&carol, last).last().map(|e| e["rev"].clone()),
        rev
    );

    // kill -9 of the session's home. hub-b and hub-c both mirror the session; one takes it
    // over, the other follows it there (a fresh snapshot for its member). alice leaves with
    // her hub: her object goes to the new authority.
    a.kill();
    let killed = Instant::now();
    alice.kill();
    // An operation sent to the dead home is never answered there: bob's hub answers it.
    bob.send(r#"{"op":"session_update","session":"game","object":"bob","data":5,"req":5}"#);
    // A leave sent to the dead home is done where the session goes.
    erin.send(r#"{"op":"session_leave","session":"game","req":6}"#);
    let gone = |v: &Value| {
        (v["type"] == "session_event" && v["event"] == "member_left" && v["member"] == "alice")
            || (v["type"] == "session_state" && !roster_ids(v).contains(&"alice".to_owned()))
    };
    let (mut bob_saw_gone, mut unanswered) = (false, None);
    while !(bob_saw_gone && unanswered.is_some()) {
        let v = bob.line();
        bob_saw_gone |= gone(&v);
        if v["type"] == "error" {
            unanswered = Some(v);
        }
    }
    let e = unanswered.unwrap_or_default();
    assert_eq!(
        (&e["code"], &e["req"]),
        (&json!("cluster_unavailable"), &json!(5)),
        "{e}"
    );
    lines_until(&carol, gone);
    let took = killed.elapsed();
    let left = lines_until(&erin, |v| v["req"] == 6)
        .pop()
        .unwrap_or_default();
    assert_eq!(left["type"], "ok", "{left}");
    eprintln!("after kill -9 of the session's home: alice gone from it for both after {took:?}");
    assert!(took < Duration::from_secs(12), "{took:?}");
    let taken = cluster_count(&b_addr, "sessions_taken_over")
        + cluster_count(&c_addr, "sessions_taken_over");
    assert_eq!(taken, 1, "exactly one hub took it over");

    // It goes on: one operation, the same revision for both; the others' objects are intact.
    bob.send(r#"{"op":"session_update","session":"game","object":"bob","data":9,"req":3}"#);
    let updated =
        |v: &Value| v["type"] == "session_event" && v["object"] == "bob" && v["data"] == 9;
    let at_bob = lines_until(&bob, updated).pop().expect("event");
    let at_carol = lines_until(&carol, updated).pop().expect("event");
    assert_eq!(at_bob["rev"], at_carol["rev"], "{at_bob} {at_carol}");
    // A late joiner on hub-b sees it all, from whichever hub holds it now.
    let mut dave = connect(&b_ws, "dave", &[]);
    dave.send(r#"{"op":"session_join","session":"game","req":1}"#);
    let s = dave.expect_type("session_state");
    assert_eq!(roster_ids(&s), ["bob", "carol", "dave"], "erin left: {s}");
    assert_eq!(
        s["rev"],
        json!(at_bob["rev"].as_u64().map(|r| r + 1)),
        "{s}"
    );
    let objects = s["objects"].as_array().expect("objects");
    let find = |id: &str| {
        objects
            .iter()
            .find(|o| o["id"] == id)
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert_eq!(find("bob")["data"], 9, "{s}");
    assert_eq!(find("carol")["data"], 1, "{s}");
    assert_eq!(
        find("alice")["owner"],
        s["authority"],
        "alice's object went to the authority: {s}"
    );
    assert!(s["authority"] == "bob" || s["authority"] == "carol", "{s}");
    drop((bob, carol, dave, erin));
}

#[test]
fn kill_9_of_a_hub_releases_its_ids_and_room_members_within_ten_seconds() {
    let nats = NatsServer::start();
    let [(_a, a_addr, a_ws), (_b, _, b_ws), (mut c, _, c_ws)] = three(&nats);
    assert_eq!(nodes(&a_addr), ["hub-a", "hub-b", "hub-c"]);

    let mut alice = connect(&a_ws, "alice", &["--room", "r"]);
    let mut carol = connect(&c_ws, "carol", &["--room", "r"]);
    assert_eq!(
        alice.expect_type("member_joined"),
        json!({"type": "member_joined", "room": "r", "id": "carol"})
    );
    // Across processes, both ways, with an acknowledgement.
    alice.send(r#"{"op":"emit","to":"carol","event":"q","data":1,"ack":true,"req":1}"#);
    let q = carol.expect_type("message");
    assert_eq!((&q["from"], &q["data"]), (&json!("alice"), &json!(1)));
    let ack_id = q["ack_id"].as_u64().expect("ack_id");
    carol.send_json(json!({"op": "reply", "ack_id": ack_id, "data": 2}));
    assert_eq!(
        alice.expect_type("ack"),
        json!({"type": "ack", "req": 1, "data": 2})
    );
    carol.send(r#"{"op":"emit_room","room":"r","event":"e","data":"hi"}"#);
    assert_eq!(
        alice.expect_type("message"),
        json!({"type": "message", "from": "carol", "event": "e", "data": "hi", "room": "r"})
    );
    // A hub session held by hub-a, with a member on hub-c.
    alice.send(r#"{"op":"session_join","session":"game","req":2}"#);
    assert_eq!(alice.expect_type("session_state")["authority"], "alice");
    carol.send(r#"{"op":"session_join","session":"game","req":2}"#);
    let s = carol.expect_type("session_state");
    assert_eq!(s["authority"], "alice", "one session across hubs: {s}");
    let e = alice.expect_type("session_event");
    assert_eq!(
        (&e["event"], &e["member"]),
        (&json!("member_joined"), &json!("carol"))
    );
    // A topic of a provider on hub-c, with a subscriber on hub-a.
    carol.send(r#"{"op":"provide","service":"news","methods":["get"],"req":3}"#);
    assert_eq!(carol.expect_type("ok")["req"], 3);
    carol.send(r#"{"op":"create_topic","topic":"sport","req":4}"#);
    assert_eq!(carol.expect_type("ok")["req"], 4);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        alice.send(r#"{"op":"subscribe","service":"news","topic":"sport","req":5}"#);
        let v = loop {
            let v = alice.line();
            if v["req"] == 5 {
                break v;
            }
        };
        if v["type"] == "ok" {
            break;
        }
        // Until hub-c's heartbeat advertised the topic.
        assert!(
            v["code"] == "unknown_topic" || v["code"] == "unknown_service",
            "{v}"
        );
        assert!(
            Instant::now() < deadline,
            "the topic was never offered to hub-a"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The same id on another hub is refused while carol holds it.
    let taken = Proc::spawn("carol-2", &["connect", &b_ws, "--id", "carol"]);
    let e = taken.expect_type("error");
    assert_eq!(e["code"], "id_taken", "{e}");
    drop(taken);

    // kill -9 of hub-c: no goodbye, its heartbeats stop.
    c.kill();
    let killed = Instant::now();
    carol.kill();
    // The room and the session lose carol, and her topic ends (in any order): her hub is dead.
    let (mut room_left, mut session_left, mut topic_ended) = (false, false, false);
    let mut members_gone = Duration::ZERO;
    while !(room_left && session_left && topic_ended) {
        let v = alice.line();
        if v == json!({"type": "member_left", "room": "r", "id": "carol"}) {
            room_left = true;
            members_gone = killed.elapsed();
        } else if v["type"] == "session_event" && v["event"] == "member_left" {
            assert_eq!(v["member"], "carol", "{v}");
            session_left = true;
        } else if v["type"] == "topic_ended" {
            assert_eq!(
                v,
                json!({"type": "topic_ended", "service": "news", "topic": "sport", "reason": "service_gone"})
            );
            topic_ended = true;
            let took = killed.elapsed();
            eprintln!("topic_ended {took:?} after kill -9");
            assert!(took < Duration::from_secs(10), "{took:?}");
        }
    }
    // carol's id is free: she connects to hub-b.
    let carol_again = loop {
        let p = Proc::spawn("carol-3", &["connect", &b_ws, "--id", "carol"]);
        let first = p.line();
        if first["type"] == "connected" {
            break p;
        }
        assert_eq!(first["code"], "id_taken", "{first}");
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "carol's id still held after 10 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let id_free = killed.elapsed();
    eprintln!("after kill -9: members left after {members_gone:?}, id free after {id_free:?}");
    assert!(members_gone < Duration::from_secs(10), "{members_gone:?}");
    assert!(id_free < Duration::from_secs(10), "{id_free:?}");
    assert_eq!(nodes(&a_addr), ["hub-a", "hub-b"]);
    let metrics = http_get(&a_addr, "/metrics");
    assert!(metrics.contains("peermesh_cluster_nodes 2"), "{metrics}");
    assert!(metrics.contains("peermesh_cluster_sent_total"), "{metrics}");
    drop(carol_again);
}

#[test]
fn serve_refuses_zero_worker_threads() {
    let p = Proc::spawn(
        "serve",
        &["serve", "--listen", "127.0.0.1:0", "--threads", "0"],
    );
    let (lines, status) = p.finish_keep_stderr();
    assert!(!status.0.success(), "{lines:?}");
    assert!(
        status.1.contains("--threads") && status.1.contains("1..=1024"),
        "the error names the flag and its range: {}",
        status.1
    );
}

#[test]
fn serve_with_an_unreachable_cluster_fails_with_the_fix_and_cluster_wait_joins_later() {
    let port = peermesh_testkit::free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let p = Proc::spawn(
        "serve",
        &["serve", "--listen", "127.0.0.1:0", "--cluster", &url],
    );
    let (lines, status) = p.finish_keep_stderr();
    assert!(!status.0.success(), "{lines:?}");
    assert!(
        status.1.contains(&url) && status.1.contains("--cluster-wait"),
        "the error names the server and the fix: {}",
        status.1
    );

    // With --cluster-wait the hub waits for NATS, then serves.
    let waiting = Proc::spawn(
        "serve",
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--cluster",
            &url,
            "--node-name",
            "late",
            "--cluster-wait",
            "30s",
        ],
    );
    std::thread::sleep(Duration::from_millis(500));
    let _nats = NatsServer::start_on(port, true);
    let first = waiting.line();
    assert_eq!(
        (&first["type"], &first["node"]),
        (&json!("listening"), &json!("late")),
        "{first}"
    );
}

#[test]
fn pipes_cross_hubs_and_a_killed_hub_ends_its_streams_with_peer_left() {
    let nats = NatsServer::start();
    let [(_a, _, a_ws), (_b, _, b_ws), (mut c, _, c_ws)] = three(&nats);

    // 3 MiB one way, 15 KB the other, between processes on hub-a and hub-b.
    exchange(&a_ws, &b_ws, 7);

    // A pipe to a client of hub-c, then kill -9 of hub-c: the other end learns peer_left
    // once the cluster declares hub-c dead.
    let carol = Side::spawn(&c_ws, &["--id", "carol", "--accept-pipe"]);
    carol.wait_for("\"type\":\"connected\"");
    let mut dave = Side::spawn(&a_ws, &["--id", "dave", "--pipe", "carol"]);
    dave.wait_for("\"type\":\"stream\"");
    c.kill();
    let killed = Instant::now();
    assert_eq!(dave.exit_code(), 1, "dave's stderr:\n{}", dave.stderr());
    let took = killed.elapsed();
    assert!(dave.stderr().contains("peer_left"), "{}", dave.stderr());
    eprintln!("the stream's other end learned peer_left {took:?} after kill -9 of its hub");
    assert!(took < Duration::from_secs(10), "{took:?}");
    drop(carol);
}
