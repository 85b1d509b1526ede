//! Services and topics at the wire level: raw WebSocket clients provide, call, answer,
//! subscribe and publish through a real hub, and every frame (and `seq`) that comes back is
//! checked.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Raw, TestHub};
use peermesh_hub::{HubConfig, ServiceError, ServiceSpec, ServiceStats};
use peermesh_proto::Payload;
use serde_json::{json, Value};

/// The next frame must be the answer to `req` (a `result`, `ok` or `error`).
async fn answer(c: &mut Raw, req: u64) -> Value {
    loop {
        let v = c.recv().await;
        if v["req"] == req {
            return v;
        }
        assert!(
            v["type"] == "member_joined" || v["type"] == "invoke" || v["type"] == "publication",
            "unexpected {v}"
        );
    }
}

async fn expect_error(c: &mut Raw, req: u64, code: &str) -> Value {
    let v = answer(c, req).await;
    assert_eq!(
        (v["type"].as_str(), v["code"].as_str()),
        (Some("error"), Some(code)),
        "{v}"
    );
    assert!(!v["message"].as_str().unwrap_or("").is_empty(), "{v}");
    v
}

async fn expect_ok(c: &mut Raw, req: u64) {
    let v = answer(c, req).await;
    assert_eq!(v["type"], "ok", "{v}");
}

async fn provide(c: &mut Raw, service: &str, methods: &[&str]) {
    c.send(json!({"type":"provide","service":service,"methods":methods,"req":900}))
        .await;
    expect_ok(c, 900).await;
}

/// Pings `c` and returns every frame that came before the pong (nothing else is in flight).
async fn flush(c: &mut Raw) -> Vec<Value> {
    c.send(json!({"type":"ping","req":7777})).await;
    let mut before = Vec::new();
    loop {
        let v = c.recv().await;
        if v["type"] == "pong" && v["req"] == 7777 {
            return before;
        }
        before.push(v);
    }
}

async fn until_clean(hub: &TestHub) {
    let done = tokio::time::timeout(common::WAIT, async {
        loop {
            let st = hub.handle.service_stats();
            if st == ServiceStats::default() && hub.handle.client_count() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(
        done.is_ok(),
        "hub state left: {:?}",
        hub.handle.service_stats()
    );
}

#[tokio::test]
async fn a_call_reaches_the_provider_and_its_answer_the_caller_across_encodings() {
    let hub = TestHub::default().await;
    let (mut calc, _) = hub.join_msgpack("calc-1").await;
    let (mut alice, _) = hub.join("alice").await;
    provide(&mut calc, "calc", &["add", "div"]).await;

    alice
        .send(json!({"type":"call","service":"calc","method":"add","data":[2,3],"req":1}))
        .await;
    let inv = calc.recv_type("invoke").await;
    assert_eq!(
        (&inv["from"], &inv["service"], &inv["method"], &inv["data"]),
        (
            &json!("alice"),
            &json!("calc"),
            &json!("add"),
            &json!([2, 3])
        ),
        "{inv}"
    );
    let call = inv["call"].as_u64().unwrap();
    assert!(call < 1 << 53, "call ids are exact in JavaScript");
    calc.send(json!({"type":"respond","call":call,"data":5}))
        .await;
    let r = answer(&mut alice, 1).await;
    assert_eq!(
        r,
        json!({"seq": r["seq"], "type":"result","req":1,"data":5})
    );

    // service_error carries the provider's message as given.
    alice
        .send(json!({"type":"call","service":"calc","method":"div","data":[1,0],"req":2}))
        .await;
    let inv = calc.recv_type("invoke").await;
    calc.send(json!({"type":"respond","call":inv["call"],"error":"division by zero"}))
        .await;
    let e = expect_error(&mut alice, 2, "service_error").await;
    assert_eq!(e["message"], "division by zero");

    // A second answer to the same call: unknown_call for the provider, nothing for alice.
    calc.send(json!({"type":"respond","call":inv["call"],"data":1}))
        .await;
    let e = calc.recv_type("error").await;
    assert_eq!(e["code"], "unknown_call", "{e}");
    assert!(flush(&mut alice).await.is_empty());
    // A call id whose caller never existed.
    calc.send(json!({"type":"respond","call":(1u64 << 52) + 5,"data":1}))
        .await;
    assert_eq!(calc.recv_type("error").await["code"], "unknown_call");

    // Binary arguments and results stay bytes.
    alice
        .send(json!({"type":"call","service":"calc","method":"add","bin":"AAEC","req":3}))
        .await;
    let inv = calc.recv_type("invoke").await;
    assert_eq!(inv["bin"], json!({"$bin": [0, 1, 2]}), "msgpack bin: {inv}");
    calc.send(json!({"type":"respond","call":inv["call"],"bin":"/w=="}))
        .await;
    assert_eq!(answer(&mut alice, 3).await["bin"], "/w==");
    drop(calc);
    drop(alice);
    until_clean(&hub).await;
}

#[tokio::test]
async fn every_error_code_of_calls() {
    let config = HubConfig {
        max_calls_per_client: 2,
        max_calls_per_provider: 1,
        max_call_timeout_ms: 10_000,
        default_call_timeout_ms: 10_000,
        ..HubConfig::default()
    };
    let hub = TestHub::start(config).await;
    let (mut p1, _) = hub.join("p1").await;
    let (mut alice, _) = hub.join("alice").await;
    let (mut bob, _) = hub.join("bob").await;
    provide(&mut p1, "svc", &["slow", "never"]).await;

    let call = |req: u64, service: &str, method: &str, extra: Value| {
        let mut v = json!({"type":"call","service":service,"method":method,"req":req});
        if let (Some(m), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            m.extend(e.clone());
        }
        v
    };
    alice.send(call(1, "nosuch", "x", json!({}))).await;
    expect_error(&mut alice, 1, "unknown_service").await;
    alice.send(call(2, "svc", "nosuch", json!({}))).await;
    expect_error(&mut alice, 2, "unknown_method").await;
    alice
        .send(call(3, "svc", "slow", json!({"timeout_ms": 0})))
        .await;
    expect_error(&mut alice, 3, "invalid_field").await;
    alice
        .send(call(4, "svc", "slow", json!({"timeout_ms": 10_001})))
        .await;
    expect_error(&mut alice, 4, "invalid_field").await;
    let e = {
        alice
            .send(json!({"type":"call","service":"svc","method":"slow"}))
            .await;
        alice.recv_type("error").await
    };
    assert_eq!(
        (e["code"].as_str(), e.get("req")),
        (Some("invalid_field"), None),
        "{e}"
    );

    // call_timeout: the provider never answers.
    alice
        .send(call(5, "svc", "never", json!({"timeout_ms": 50})))
        .await;
    let inv = p1.recv_type("invoke").await;
    expect_error(&mut alice, 5, "call_timeout").await;
    // ... and its late answer is refused.
    p1.send(json!({"type":"respond","call":inv["call"],"data":1}))
        .await;
    assert_eq!(p1.recv_type("error").await["code"], "unknown_call");

    // service_busy: p1 holds one call (its bound is 1).
    bob.send(call(1, "svc", "slow", json!({}))).await;
    let held = p1.recv_type("invoke").await;
    alice.send(call(6, "svc", "slow", json!({}))).await;
    expect_error(&mut alice, 6, "service_busy").await;

    // too_many_calls: alice's bound is 2 (the hub's own time service would do, but a second
    // provider keeps it on the wire).
    let (mut p2, _) = hub.join("p2").await;
    let (mut p3, _) = hub.join("p3").await;
    provide(&mut p2, "svc", &["slow"]).await;
    provide(&mut p3, "svc", &["slow"]).await;
    alice.send(call(7, "svc", "slow", json!({}))).await;
    alice.send(call(8, "svc", "slow", json!({}))).await;
    alice.send(call(9, "svc", "slow", json!({}))).await;
    expect_error(&mut alice, 9, "too_many_calls").await;

    // provider_left: p2 and p3 hold alice's calls 7 and 8 and leave.
    p2.recv_type("invoke").await;
    p3.recv_type("invoke").await;
    drop(p2);
    drop(p3);
    let mut left = Vec::new();
    for _ in 0..2 {
        let e = alice.recv_type("error").await;
        assert_eq!(e["code"], "provider_left", "{e}");
        left.push(e["req"].as_u64().unwrap());
    }
    left.sort_unstable();
    assert_eq!(left, [7, 8]);

    // bob's held call still completes.
    p1.send(json!({"type":"respond","call":held["call"],"data":"late but fine"}))
        .await;
    assert_eq!(answer(&mut bob, 1).await["data"], "late but fine");

    // already_providing, and not_provider for topic operations of a non-provider.
    p1.send(json!({"type":"provide","service":"other","methods":["m"],"req":10}))
        .await;
    expect_error(&mut p1, 10, "already_providing").await;
    alice
        .send(json!({"type":"create_topic","topic":"t","req":11}))
        .await;
    expect_error(&mut alice, 11, "not_provider").await;
    alice
        .send(json!({"type":"publish","topic":"t","data":1,"req":12}))
        .await;
    expect_error(&mut alice, 12, "not_provider").await;
    alice
        .send(json!({"type":"destroy_topic","topic":"t","req":13}))
        .await;
    expect_error(&mut alice, 13, "not_provider").await;
    drop((p1, alice, bob));
    until_clean(&hub).await;
}

#[tokio::test]
async fn three_providers_share_the_calls_evenly() {
    let hub = TestHub::default().await;
    let mut providers = Vec::new();
    for i in 0..3 {
        let (mut p, _) = hub.join(&format!("worker-{i}")).await;
        provide(&mut p, "jobs", &["run"]).await;
        providers.push(p);
    }
    let (mut alice, _) = hub.join("alice").await;
    // 30 calls, none answered yet: least-busy with round-robin ties gives 10 each.
    for req in 1..=30u64 {
        alice
            .send(json!({"type":"call","service":"jobs","method":"run","data":req,"req":req}))
            .await;
    }
    // alice's frames are handled in order: once she has her pong, every invoke is queued.
    assert!(flush(&mut alice).await.is_empty());
    let mut invokes = Vec::new();
    for p in &mut providers {
        let got: Vec<Value> = flush(p).await;
        assert_eq!(
            got.len(),
            10,
            "each of 3 providers gets 10 of 30 calls: {got:?}"
        );
        invokes.push(got);
    }
    assert_eq!(hub.handle.service_stats().calls_in_flight, 30);
    for (p, got) in providers.iter_mut().zip(&invokes) {
        for inv in got {
            p.send(json!({"type":"respond","call":inv["call"],"data":inv["data"]}))
                .await;
        }
    }
    let mut answered: Vec<u64> = Vec::new();
    for _ in 0..30 {
        let r = alice.recv_type("result").await;
        assert_eq!(r["req"], r["data"], "{r}");
        answered.push(r["req"].as_u64().unwrap());
    }
    answered.sort_unstable();
    assert_eq!(answered, (1..=30).collect::<Vec<_>>());
    assert_eq!(hub.handle.service_stats().calls_in_flight, 0);

    // A busy provider is skipped: worker-0 holds one call, the next two go to the others.
    alice
        .send(json!({"type":"call","service":"jobs","method":"run","req":100}))
        .await;
    let holder = loop {
        let mut found = None;
        for (i, p) in providers.iter_mut().enumerate() {
            if !flush(p).await.is_empty() {
                found = Some(i);
            }
        }
        if let Some(i) = found {
            break i;
        }
    };
    for req in [101, 102] {
        alice
            .send(json!({"type":"call","service":"jobs","method":"run","req":req}))
            .await;
    }
    assert!(flush(&mut alice).await.is_empty());
    for (i, p) in providers.iter_mut().enumerate() {
        let got = flush(p).await;
        assert_eq!(got.len(), usize::from(i != holder), "provider {i}: {got:?}");
    }
}

#[tokio::test]
async fn the_hub_answers_before_client_providers_of_the_same_service() {
    let hub = TestHub::default().await;
    let spec = ServiceSpec::new("calc")
        .unwrap()
        .method("add", |call| async move {
            let a = call.payload.as_json().cloned().unwrap_or_default();
            match (a[0].as_i64(), a[1].as_i64()) {
                (Some(x), Some(y)) => Ok(Payload::Json(json!({"sum": x + y, "by": "hub"}))),
                _ => Err(ServiceError::new("add takes two integers")),
            }
        })
        .unwrap();
    let handle = hub.handle.provide(spec).unwrap();
    let again = ServiceSpec::new("calc")
        .unwrap()
        .method("x", |_| async { Ok(Payload::NULL) })
        .unwrap();
    assert!(
        hub.handle.provide(again).is_err(),
        "one hub provider per name"
    );

    let (mut client_calc, _) = hub.join("client-calc").await;
    provide(&mut client_calc, "calc", &["add", "mul"]).await;
    let (mut alice, _) = hub.join_msgpack("alice").await;

    alice
        .send(json!({"type":"call","service":"calc","method":"add","data":[1,2],"req":1}))
        .await;
    assert_eq!(
        answer(&mut alice, 1).await["data"],
        json!({"sum":3,"by":"hub"})
    );
    alice
        .send(json!({"type":"call","service":"calc","method":"add","data":"x","req":2}))
        .await;
    let e = expect_error(&mut alice, 2, "service_error").await;
    assert_eq!(e["message"], "add takes two integers");
    // The client provider never saw those calls.
    assert!(flush(&mut client_calc).await.is_empty());

    // A method only the client has goes to the client.
    alice
        .send(json!({"type":"call","service":"calc","method":"mul","data":[2,3],"req":3}))
        .await;
    let inv = client_calc.recv_type("invoke").await;
    client_calc
        .send(json!({"type":"respond","call":inv["call"],"data":6}))
        .await;
    assert_eq!(answer(&mut alice, 3).await["data"], 6);

    // Withdrawn, the hub no longer answers: the client provider does.
    drop(handle);
    alice
        .send(json!({"type":"call","service":"calc","method":"add","data":[1,2],"req":4}))
        .await;
    let inv = client_calc.recv_type("invoke").await;
    client_calc
        .send(json!({"type":"respond","call":inv["call"],"data":"client"}))
        .await;
    assert_eq!(answer(&mut alice, 4).await["data"], "client");
}

#[tokio::test]
async fn the_builtin_time_service_answers_when_configured() {
    let hub = TestHub::start(HubConfig {
        builtin_time_service: true,
        ..HubConfig::default()
    })
    .await;
    let (mut alice, _) = hub.join("alice").await;
    alice
        .send(json!({"type":"call","service":"time","method":"now","req":1}))
        .await;
    let r = answer(&mut alice, 1).await;
    assert!(
        r["data"]["unix_ms"].as_u64().unwrap() > 1_600_000_000_000,
        "{r}"
    );
    alice
        .send(json!({"type":"call","service":"time","method":"echo","data":{"a":[1]},"req":2}))
        .await;
    assert_eq!(answer(&mut alice, 2).await["data"], json!({"a":[1]}));
    assert_eq!(hub.handle.service_stats().hub_providers, 1);
}

#[tokio::test]
async fn topics_are_namespaced_by_service_and_end_with_it() {
    let config = HubConfig {
        max_topics_per_service: 2,
        max_subscriptions_per_client: 2,
        ..HubConfig::default()
    };
    let hub = TestHub::start(config).await;
    let (mut weather, _) = hub.join("weather").await;
    let (mut sport, _) = hub.join("sport").await;
    let (mut alice, _) = hub.join("alice").await;
    let (mut bob, _) = hub.join_msgpack("bob").await;
    provide(&mut weather, "weather", &["now"]).await;
    provide(&mut sport, "sport", &["score"]).await;
    for p in [&mut weather, &mut sport] {
        p.send(json!({"type":"create_topic","topic":"news","req":1}))
            .await;
        expect_ok(p, 1).await;
        // Creating it again changes nothing.
        p.send(json!({"type":"create_topic","topic":"news","req":2}))
            .await;
        expect_ok(p, 2).await;
    }
    weather
        .send(json!({"type":"create_topic","topic":"alerts","req":3}))
        .await;
    expect_ok(&mut weather, 3).await;
    weather
        .send(json!({"type":"create_topic","topic":"third","req":4}))
        .await;
    expect_error(&mut weather, 4, "too_many_topics").await;

    alice
        .send(json!({"type":"subscribe","service":"weather","topic":"news","req":1}))
        .await;
    expect_ok(&mut alice, 1).await;
    alice
        .send(json!({"type":"subscribe","service":"weather","topic":"nope","req":2}))
        .await;
    expect_error(&mut alice, 2, "unknown_topic").await;
    alice
        .send(json!({"type":"subscribe","service":"nope","topic":"news","req":3}))
        .await;
    expect_error(&mut alice, 3, "unknown_service").await;
    alice
        .send(json!({"type":"subscribe","service":"weather","topic":"alerts","req":4}))
        .await;
    expect_ok(&mut alice, 4).await;
    alice
        .send(json!({"type":"subscribe","service":"sport","topic":"news","req":5}))
        .await;
    expect_error(&mut alice, 5, "too_many_subscriptions").await;
    bob.send(json!({"type":"subscribe","service":"sport","topic":"news","req":1}))
        .await;
    expect_ok(&mut bob, 1).await;
    bob.send(json!({"type":"subscribe","service":"weather","topic":"news","req":2}))
        .await;
    expect_ok(&mut bob, 2).await;
    assert_eq!(hub.handle.service_stats().subscriptions, 4);

    // Same topic name, two services: each publication reaches its own subscribers only.
    weather
        .send(json!({"type":"publish","topic":"news","data":"rain","req":5}))
        .await;
    expect_ok(&mut weather, 5).await;
    sport
        .send(json!({"type":"publish","topic":"news","bin":"AQ==","req":6}))
        .await;
    expect_ok(&mut sport, 6).await;
    let a = flush(&mut alice).await;
    assert_eq!(
        a,
        [
            json!({"seq":a[0]["seq"],"type":"publication","service":"weather","topic":"news","data":"rain"})
        ]
    );
    let b = flush(&mut bob).await;
    assert_eq!(b.len(), 2, "{b:?}");
    assert!(b.contains(&json!({"seq":b[0]["seq"],"type":"publication","service":"weather","topic":"news","data":"rain"}))
        || b.contains(&json!({"seq":b[1]["seq"],"type":"publication","service":"weather","topic":"news","data":"rain"})));
    assert!(
        b.iter()
            .any(|v| v["service"] == "sport" && v["bin"] == json!({"$bin": [1]})),
        "{b:?}"
    );
    weather
        .send(json!({"type":"publish","topic":"nope","data":1,"req":7}))
        .await;
    expect_error(&mut weather, 7, "unknown_topic").await;

    // Unsubscribe: no more publications; a second unsubscribe is not_subscribed.
    bob.send(json!({"type":"unsubscribe","service":"weather","topic":"news","req":3}))
        .await;
    expect_ok(&mut bob, 3).await;
    bob.send(json!({"type":"unsubscribe","service":"weather","topic":"news","req":4}))
        .await;
    expect_error(&mut bob, 4, "not_subscribed").await;
    weather
        .send(json!({"type":"publish","topic":"news","data":"sun","req":8}))
        .await;
    expect_ok(&mut weather, 8).await;
    assert!(flush(&mut bob).await.is_empty());
    assert_eq!(flush(&mut alice).await.len(), 1);

    // Destroyed: subscribers are told, and the topic is gone.
    weather
        .send(json!({"type":"destroy_topic","topic":"news","req":9}))
        .await;
    expect_ok(&mut weather, 9).await;
    let ended = alice.recv_type("topic_ended").await;
    assert_eq!(
        (&ended["service"], &ended["topic"], &ended["reason"]),
        (&json!("weather"), &json!("news"), &json!("destroyed"))
    );
    weather
        .send(json!({"type":"destroy_topic","topic":"news","req":10}))
        .await;
    expect_error(&mut weather, 10, "unknown_topic").await;
    // alice's slot is free again: she may subscribe to sport/news now.
    alice
        .send(json!({"type":"subscribe","service":"sport","topic":"news","req":6}))
        .await;
    expect_ok(&mut alice, 6).await;

    // The provider leaves: its service goes, and so do its topics.
    drop(weather);
    let ended = alice.recv_type("topic_ended").await;
    assert_eq!(
        (&ended["service"], &ended["topic"], &ended["reason"]),
        (&json!("weather"), &json!("alerts"), &json!("service_gone"))
    );
    drop(sport);
    let mut gone = vec![alice.recv_type("topic_ended").await];
    gone.push(bob.recv_type("topic_ended").await);
    for g in gone {
        assert_eq!(
            (&g["service"], &g["reason"]),
            (&json!("sport"), &json!("service_gone"))
        );
    }
    drop((alice, bob));
    until_clean(&hub).await;
}

#[tokio::test]
async fn the_hub_publishes_and_its_topics_end_when_withdrawn() {
    let hub = TestHub::default().await;
    let spec = ServiceSpec::new("clock")
        .unwrap()
        .method("now", |_| async { Ok(Payload::Json(json!(1))) })
        .unwrap();
    let clock = hub.handle.provide(spec).unwrap();
    clock.create_topic("ticks").unwrap();
    let (mut alice, _) = hub.join("alice").await;
    alice
        .send(json!({"type":"subscribe","service":"clock","topic":"ticks","req":1}))
        .await;
    expect_ok(&mut alice, 1).await;
    assert_eq!(clock.publish("ticks", Payload::Json(json!(42))).unwrap(), 1);
    let p = alice.recv_type("publication").await;
    assert_eq!((&p["topic"], &p["data"]), (&json!("ticks"), &json!(42)));
    assert!(clock.publish("nope", Payload::NULL).is_err());
    clock.withdraw();
    let e = alice.recv_type("topic_ended").await;
    assert_eq!(e["reason"], "service_gone");
    drop(alice);
    until_clean(&hub).await;
}

#[tokio::test]
async fn a_slow_subscriber_is_closed_and_the_others_keep_receiving() {
    let hub = TestHub::start(HubConfig {
        max_frame_bytes: 64 << 10,
        outbound_queue_bytes: 1 << 20,
        ..HubConfig::default()
    })
    .await;
    let (mut feed, _) = hub.join("feed").await;
    provide(&mut feed, "feed", &["x"]).await;
    feed.send(json!({"type":"create_topic","topic":"t","req":1}))
        .await;
    expect_ok(&mut feed, 1).await;
    let (mut slow, _) = hub.join("slow").await;
    let (mut fast, _) = hub.join("fast").await;
    for c in [&mut slow, &mut fast] {
        c.send(json!({"type":"subscribe","service":"feed","topic":"t","req":1}))
            .await;
        expect_ok(c, 1).await;
    }
    // 1,200 publications of 16 KiB (far beyond the socket buffers): `fast` reads them all,
    // `slow` reads nothing, and its mailbox bound (1 MiB) closes it.
    const N: u64 = 1200;
    let reader = tokio::spawn(async move {
        for i in 0..N {
            let p = fast.recv_type("publication").await;
            assert_eq!(p["data"]["i"], i);
        }
        fast
    });
    let pad = "x".repeat(16 << 10);
    for i in 0..N {
        feed.send(json!({"type":"publish","topic":"t","data":{"i":i,"pad":pad}}))
            .await;
    }
    let _fast = reader.await.unwrap();
    // The hub closes it; the close frame itself may not get through the full socket (the hub
    // gives up writing it after a second), but if it does, it names the reason.
    let (close, _) = slow.recv_close().await;
    if let Some((_, reason)) = close {
        assert!(reason.starts_with("slow_consumer"), "{reason}");
    }
    let cleaned = tokio::time::timeout(common::WAIT, async {
        while hub.handle.service_stats().subscriptions != 1 || hub.handle.client_count() != 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(cleaned.is_ok(), "{:?}", hub.handle.service_stats());
}

#[tokio::test]
async fn unprovide_stops_new_calls_lets_pending_ones_finish_and_ends_the_service_last() {
    let hub = TestHub::default().await;
    let (mut one, w) = hub.join("calc-1").await;
    assert_eq!(w["limits"]["max_calls"], 1024, "{w}");
    assert_eq!(w["limits"]["max_call_timeout_ms"], 60_000, "{w}");
    assert_eq!(w["limits"]["max_subscriptions"], 1024, "{w}");
    let (mut two, _) = hub.join("calc-2").await;
    let (mut alice, _) = hub.join("alice").await;
    one.send(json!({"type":"unprovide","req":1})).await;
    expect_error(&mut one, 1, "not_provider").await;
    provide(&mut one, "calc", &["add"]).await;
    provide(&mut two, "calc", &["add"]).await;
    one.send(json!({"type":"create_topic","topic":"sums","req":2}))
        .await;
    expect_ok(&mut one, 2).await;
    alice
        .send(json!({"type":"subscribe","service":"calc","topic":"sums","req":1}))
        .await;
    expect_ok(&mut alice, 1).await;

    // A call reaches calc-1 (calc-2 is made busier first), then calc-1 unprovides.
    alice
        .send(json!({"type":"call","service":"calc","method":"add","data":[1,1],"req":2}))
        .await;
    alice
        .send(json!({"type":"call","service":"calc","method":"add","data":[2,2],"req":3}))
        .await;
    let (held, other) = tokio::join!(one.recv_type("invoke"), two.recv_type("invoke"));
    one.send(json!({"type":"unprovide","req":3})).await;
    expect_ok(&mut one, 3).await;
    // The service lives on with calc-2, and so does its topic.
    assert_eq!(hub.handle.service_stats().client_providers, 1);
    assert_eq!(hub.handle.service_stats().topics, 1);
    // Every new call goes to calc-2.
    for req in 10..20u64 {
        alice
            .send(json!({"type":"call","service":"calc","method":"add","data":[req,0],"req":req}))
            .await;
        let inv = two.recv_type("invoke").await;
        two.send(json!({"type":"respond","call":inv["call"],"data":req}))
            .await;
        assert_eq!(answer(&mut alice, req).await["data"], req);
    }
    assert!(flush(&mut one).await.is_empty(), "no call reaches calc-1");
    // The call calc-1 already had may still be answered.
    one.send(json!({"type":"respond","call":held["call"],"data":"late"}))
        .await;
    two.send(json!({"type":"respond","call":other["call"],"data":"other"}))
        .await;
    let mut got = [answer(&mut alice, 2).await, answer(&mut alice, 3).await]
        .map(|v| v["data"].as_str().unwrap().to_owned());
    got.sort();
    assert_eq!(got, ["late", "other"]);

    // calc-1 may provide again (another service); calc-2 unprovides, the last provider: the
    // service and its topics end.
    provide(&mut one, "other", &["x"]).await;
    two.send(json!({"type":"unprovide","req":4})).await;
    expect_ok(&mut two, 4).await;
    let ended = alice.recv_type("topic_ended").await;
    assert_eq!(
        (&ended["service"], &ended["topic"], &ended["reason"]),
        (&json!("calc"), &json!("sums"), &json!("service_gone"))
    );
    alice
        .send(json!({"type":"call","service":"calc","method":"add","data":[1,1],"req":30}))
        .await;
    expect_error(&mut alice, 30, "unknown_service").await;
    drop((one, two, alice));
    until_clean(&hub).await;
}

#[tokio::test]
async fn an_away_provider_gets_calls_only_when_no_present_one_can_take_them() {
    let hub = TestHub::start(HubConfig {
        resume_grace_ms: 10_000,
        ..HubConfig::default()
    })
    .await;
    // p1 asked to be resumable and drops its socket: it is away, still a provider.
    let mut p1 = Raw::connect(&hub.url("")).await;
    let w = p1.hello(json!({"id":"p1","resume":true})).await;
    assert_eq!(w["type"], "welcome", "{w}");
    provide(&mut p1, "calc", &["add"]).await;
    let (mut p2, _) = hub.join("p2").await;
    provide(&mut p2, "calc", &["add"]).await;
    drop(p1);
    let (mut alice, _) = hub.join("alice").await;
    let away = || async {
        let v: Value = serde_json::from_str(&hub.get("/status.json").await).unwrap();
        v["client_list"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["id"] == "p1" && c["away"] == true)
    };
    tokio::time::timeout(common::WAIT, async {
        while !away().await {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("p1 is away");
    // Every call goes to p2, though p2 is the busier one (it answers only at the end).
    let mut calls = Vec::new();
    for req in 1..=4u64 {
        alice
            .send(json!({"type":"call","service":"calc","method":"add","data":[req,1],"req":req}))
            .await;
        let inv = p2.recv_type("invoke").await;
        assert_eq!(inv["data"], json!([req, 1]), "{inv}");
        calls.push(inv["call"].clone());
    }
    for (req, call) in (1..=4u64).zip(calls) {
        p2.send(json!({"type":"respond","call":call,"data":req + 1}))
            .await;
        assert_eq!(answer(&mut alice, req).await["data"], req + 1);
    }
    // p2 stops providing: the away p1 is the only provider left and takes the next call,
    // which waits for its resume.
    p2.send(json!({"type":"unprovide","req":901})).await;
    expect_ok(&mut p2, 901).await;
    assert_eq!(hub.handle.service_stats().calls_in_flight, 0);
    alice
        .send(json!({"type":"call","service":"calc","method":"add","data":[9,9],"req":9}))
        .await;
    tokio::time::timeout(common::WAIT, async {
        while hub.handle.service_stats().calls_in_flight != 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the call is routed to p1");
}
