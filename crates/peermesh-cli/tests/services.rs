//! `peermesh connect` service and session ops with real processes: `provide`, `call`,
//! `respond`, `subscribe`, `unsubscribe`, `create_topic`, `publish`, `destroy_topic`, and the
//! `session_*` ops, against a real `peermesh serve` (with the built-in `time` service switched
//! on by its config file).
//!
//! Every read waits for a specific line with a deadline (`LIMIT`).

mod common;

use serde_json::json;

use common::Proc;

/// `peermesh serve` with `args`; returns the process and its WebSocket URL.
fn serve_with(args: &[&str]) -> (Proc, String) {
    let mut all = vec!["serve", "--listen", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let hub = Proc::spawn("serve", &all);
    let first = hub.line();
    assert_eq!(first["type"], "listening", "{first}");
    let ws = first["ws"].as_str().expect("ws url").to_owned();
    (hub, ws)
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
fn provide_call_respond_and_every_call_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("hub.toml");
    std::fs::write(&config, "builtin_time_service = true\n").expect("write config");
    let config = config.to_str().expect("utf-8 path").to_owned();
    let (_hub, url) = serve_with(&["--config", &config]);
    let mut calc = connect(&url, "calc", &["--enc", "msgpack"]);
    let mut alice = connect(&url, "alice", &[]);

    calc.send(r#"{"op":"provide","service":"calc","methods":["add","div"],"req":1}"#);
    assert_eq!(calc.line(), json!({"type": "ok", "req": 1}));
    alice.send(r#"{"op":"call","service":"calc","method":"add","data":[1,2],"req":2}"#);
    let inv = calc.line();
    assert_eq!(
        (
            &inv["type"],
            &inv["from"],
            &inv["service"],
            &inv["method"],
            &inv["data"]
        ),
        (
            &json!("invoke"),
            &json!("alice"),
            &json!("calc"),
            &json!("add"),
            &json!([1, 2])
        ),
        "{inv}"
    );
    let call = inv["call"].as_u64().expect("call id");
    calc.send_json(json!({"op": "respond", "call": call, "data": 3, "req": 3}));
    assert_eq!(calc.line(), json!({"type": "ok", "req": 3}));
    assert_eq!(alice.line(), json!({"type": "result", "req": 2, "data": 3}));

    // service_error with the provider's message.
    alice.send(r#"{"op":"call","service":"calc","method":"div","data":[1,0],"req":4}"#);
    let call = calc.expect_type("invoke")["call"].clone();
    calc.send_json(json!({"op": "respond", "call": call, "error": "division by zero"}));
    let e = alice.line();
    assert_eq!(
        (&e["code"], &e["message"], &e["req"]),
        (
            &json!("service_error"),
            &json!("division by zero"),
            &json!(4)
        ),
        "{e}"
    );
    // call_timeout: calc does not answer.
    alice.send(r#"{"op":"call","service":"calc","method":"add","timeout_ms":100,"req":5}"#);
    calc.expect_type("invoke");
    let e = alice.line();
    assert_eq!(
        (&e["code"], &e["req"]),
        (&json!("call_timeout"), &json!(5)),
        "{e}"
    );
    alice.send(r#"{"op":"call","service":"nope","method":"x","req":6}"#);
    assert_eq!(alice.line()["code"], "unknown_service");
    alice.send(r#"{"op":"call","service":"calc","method":"nope","req":7}"#);
    assert_eq!(alice.line()["code"], "unknown_method");
    alice.send(r#"{"op":"call","service":"calc","method":"add"}"#);
    assert_eq!(alice.line()["code"], "bad_command");

    // The hub's built-in service.
    alice.send(r#"{"op":"call","service":"time","method":"echo","data":{"x":1},"req":8}"#);
    assert_eq!(
        alice.line(),
        json!({"type": "result", "req": 8, "data": {"x": 1}})
    );

    // provider_left: calc holds a call and goes away.
    alice.send(r#"{"op":"call","service":"calc","method":"add","timeout_ms":10000,"req":9}"#);
    calc.expect_type("invoke");
    let (_, status) = calc.finish();
    assert!(status.success(), "calc exits 0 at end of input");
    let e = alice.line();
    assert_eq!(
        (&e["code"], &e["req"]),
        (&json!("provider_left"), &json!(9)),
        "{e}"
    );
    let (rest, status) = alice.finish();
    assert!(status.success(), "{rest:?}");
}

#[test]
fn subscribe_publish_unsubscribe_and_topic_ends() {
    let (_hub, url) = serve_with(&[]);
    let mut news = connect(&url, "news", &[]);
    let mut alice = connect(&url, "alice", &["--enc", "msgpack"]);
    news.send(r#"{"op":"provide","service":"news","methods":["latest"],"req":1}"#);
    assert_eq!(news.line(), json!({"type": "ok", "req": 1}));
    news.send(r#"{"op":"create_topic","topic":"sport","req":2}"#);
    assert_eq!(news.line(), json!({"type": "ok", "req": 2}));
    news.send(r#"{"op":"create_topic","topic":"weather","req":3}"#);
    assert_eq!(news.line(), json!({"type": "ok", "req": 3}));

    alice.send(r#"{"op":"subscribe","service":"news","topic":"sport","req":1}"#);
    assert_eq!(alice.line(), json!({"type": "ok", "req": 1}));
    alice.send(r#"{"op":"subscribe","service":"news","topic":"weather","req":2}"#);
    assert_eq!(alice.line(), json!({"type": "ok", "req": 2}));
    alice.send(r#"{"op":"subscribe","service":"news","topic":"nope","req":3}"#);
    assert_eq!(alice.line()["code"], "unknown_topic");

    news.send(r#"{"op":"publish","topic":"sport","data":"2-1","req":4}"#);
    assert_eq!(news.line(), json!({"type": "ok", "req": 4}));
    assert_eq!(
        alice.line(),
        json!({"type": "publication", "service": "news", "topic": "sport", "data": "2-1"})
    );
    news.send(r#"{"op":"publish","topic":"weather","bin":"AQI="}"#);
    assert_eq!(
        alice.line(),
        json!({"type": "publication", "service": "news", "topic": "weather", "bin": "AQI="})
    );

    alice.send(r#"{"op":"unsubscribe","service":"news","topic":"weather","req":4}"#);
    assert_eq!(alice.line(), json!({"type": "ok", "req": 4}));
    alice.send(r#"{"op":"unsubscribe","service":"news","topic":"weather","req":5}"#);
    assert_eq!(alice.line()["code"], "not_subscribed");

    news.send(r#"{"op":"destroy_topic","topic":"sport","req":5}"#);
    assert_eq!(news.line(), json!({"type": "ok", "req": 5}));
    assert_eq!(
        alice.line(),
        json!({"type": "topic_ended", "service": "news", "topic": "sport", "reason": "destroyed"})
    );
    // Resubscribe to weather, then the provider leaves: service_gone.
    alice.send(r#"{"op":"subscribe","service":"news","topic":"weather","req":6}"#);
    assert_eq!(alice.line(), json!({"type": "ok", "req": 6}));
    let (_, status) = news.finish();
    assert!(status.success());
    assert_eq!(
        alice.line(),
        json!({"type": "topic_ended", "service": "news", "topic": "weather", "reason": "service_gone"})
    );
    alice.send(r#"{"op":"publish","topic":"x","data":1,"req":7}"#);
    assert_eq!(alice.line()["code"], "not_provider");
    let (rest, status) = alice.finish();
    assert!(status.success(), "{rest:?}");
}

#[test]
fn session_ops_state_events_and_errors_as_lines() {
    let (_hub, url) = serve_with(&[]);
    let mut alice = connect(&url, "alice", &[]);
    let mut bob = connect(&url, "bob", &["--enc", "msgpack"]);
    alice.send(r#"{"op":"session_join","session":"game","req":1}"#);
    let st = alice.expect_type("session_state");
    assert_eq!(
        (&st["session"], &st["req"], &st["authority"], &st["epoch"]),
        (&json!("game"), &json!(1), &json!("alice"), &json!(1)),
        "{st}"
    );
    alice
        .send(r#"{"op":"session_create","session":"game","object":"ball","data":{"x":1},"req":2}"#);
    // The event (printed by the session's reader) and the `ok` may come in either order.
    let mut two = [alice.line(), alice.line()];
    two.sort_by_key(|v| v["type"].to_string());
    let [ok, ev] = two;
    assert_eq!(ok, json!({"type": "ok", "req": 2}));
    assert_eq!(
        (&ev["event"], &ev["object"], &ev["owner"], &ev["data"]),
        (
            &json!("created"),
            &json!("ball"),
            &json!("alice"),
            &json!({"x": 1})
        ),
        "{ev}"
    );
    bob.send(r#"{"op":"session_join","session":"game","req":1}"#);
    let st = bob.expect_type("session_state");
    assert_eq!(st["objects"][0]["id"], "ball", "{st}");
    assert_eq!(st["roster"].as_array().map(Vec::len), Some(2));
    bob.send(r#"{"op":"session_update","session":"game","object":"ball","data":2,"req":2}"#);
    let e = bob.expect_type("error");
    assert_eq!(
        (&e["code"], &e["req"]),
        (&json!("not_owner"), &json!(2)),
        "{e}"
    );
    alice.send(r#"{"op":"session_patch","session":"game","object":"ball","data":{"y":2},"req":3}"#);
    let ev = bob.expect_type("session_event");
    assert_eq!(ev["data"], json!({"x": 1, "y": 2}), "{ev}");
    alice.send(r#"{"op":"session_transfer","session":"game","object":"ball","to":"bob","req":4}"#);
    let ev = bob.expect_type("session_event");
    assert_eq!(
        (&ev["event"], &ev["owner"]),
        (&json!("transferred"), &json!("bob"))
    );
    bob.send(r#"{"op":"session_delete","session":"game","object":"ball","req":3}"#);
    assert_eq!(bob.expect_type("ok")["req"], 3);
    alice.send(r#"{"op":"session_create","session":"game","object":"x","on_owner_leave":"maybe"}"#);
    assert_eq!(alice.expect_type("error")["code"], "bad_command");
    alice.send(r#"{"op":"session_leave","session":"game","req":5}"#);
    // The `ok` and the session's end come from two tasks: either order.
    let (mut ok, mut ended) = (None, None);
    while ok.is_none() || ended.is_none() {
        let v = alice.line();
        match v["type"].as_str() {
            Some("ok") => ok = Some(v),
            Some("session_ended") => ended = Some(v),
            _ => {}
        }
    }
    assert_eq!(ok.map(|v| v["req"].clone()), Some(json!(5)));
    assert_eq!(ended.map(|v| v["reason"].clone()), Some(json!("left")));
    // bob sees alice leave and becomes the authority.
    let ev = loop {
        let ev = bob.expect_type("session_event");
        if ev["event"] == "authority" {
            break ev;
        }
    };
    assert_eq!(
        (&ev["event"], &ev["member"]),
        (&json!("authority"), &json!("bob")),
        "{ev}"
    );
}
