//! Three hubs in one process, clustered through a real `nats-server -js` on loopback: ids,
//! direct messages, acks, rooms and presence across hubs; a hub leaving; NATS restarting.
//! Every wait is bounded; nothing sleeps to synchronise (polls check a condition).

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{open_stream, Raw, TestHub};
use peermesh_hub::HubConfig;
use peermesh_testkit::NatsServer;
use serde_json::{json, Value};

async fn hub(nats: &NatsServer, name: &str) -> TestHub {
    TestHub::start(HubConfig {
        cluster: Some(nats.url()),
        node_name: Some(name.into()),
        ..HubConfig::default()
    })
    .await
}

async fn three(nats: &NatsServer) -> [TestHub; 3] {
    let (a, b, c) = tokio::join!(hub(nats, "hub-a"), hub(nats, "hub-b"), hub(nats, "hub-c"));
    [a, b, c]
}

/// Polls `ok` every 20 ms until it holds, failing after `limit`.
async fn until(what: &str, limit: Duration, mut ok: impl AsyncFnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !ok().await {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

/// Says hello as `id`, returning the client and the first frame (welcome or error).
async fn hello(hub: &TestHub, id: &str) -> (Raw, Value) {
    let mut c = Raw::connect(&hub.url("")).await;
    let first = c.hello(json!({"id": id})).await;
    (c, first)
}

/// Resumes `id`'s session on `hub` after `last` (the hub must say `welcome`, resumed).
async fn resume_on(hub: &TestHub, id: &str, secret: &Value, last: u64) -> (Raw, Value) {
    let mut c = Raw::connect(&hub.url("")).await;
    let w = c
        .hello(json!({"id": id, "resume": true, "secret": secret, "last_seq": last}))
        .await;
    assert_eq!(
        (&w["type"], &w["resumed"]),
        (&json!("welcome"), &json!(true)),
        "{w}"
    );
    c.last_seq = last;
    (c, w)
}

/// The `data` of the next `n` messages `c` receives (other frames skipped).
async fn messages(c: &mut Raw, n: usize) -> Vec<Value> {
    let mut got = Vec::new();
    while got.len() < n {
        let v = c.recv().await;
        if v["type"] == "message" {
            got.push(v["data"].clone());
        }
    }
    got
}

/// Whether `id` is known as connected somewhere in the cluster, seen from `hub`: an emit to it
/// is accepted (`ok`) rather than refused with `unknown_target`.
async fn reachable(from: &mut Raw, id: &str, req: u64) -> bool {
    from.send(json!({"type":"emit","to":id,"event":"probe","req":req}))
        .await;
    // Presence of earlier contacts (`peer_left`, …) may come first.
    let mut v = from.recv().await;
    while v["req"].is_null() {
        v = from.recv().await;
    }
    assert_eq!(v["req"], req, "{v}");
    v["type"] == "ok"
}

/// Waits (up to 5 s) until `id` is reachable from `from`'s hub.
async fn await_visible(from: &mut Raw, id: &str, req: u64) {
    until(
        &format!("{id} visible"),
        Duration::from_secs(5),
        async || reachable(from, id, req).await,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_hellos_with_one_id_on_three_hubs_have_exactly_one_winner() {
    let nats = NatsServer::start();
    let hubs = three(&nats).await;
    for i in 0..10 {
        let id = format!("player-{i}");
        let (a, b, c) = tokio::join!(
            hello(&hubs[0], &id),
            hello(&hubs[1], &id),
            hello(&hubs[2], &id)
        );
        let firsts = [&a.1, &b.1, &c.1];
        let winners = firsts.iter().filter(|f| f["type"] == "welcome").count();
        assert_eq!(winners, 1, "{id}: {firsts:?}");
        for f in firsts.iter().filter(|f| f["type"] != "welcome") {
            assert_eq!(f["code"], "id_taken", "{f}");
            let m = f["message"].as_str().unwrap_or_default();
            assert!(
                m.contains("hub-"),
                "the refusal names the hub holding the id: {m}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_messages_acks_and_peer_left_cross_hubs() {
    let nats = NatsServer::start();
    let [a, b, _c] = three(&nats).await;
    let (mut alice, _) = a.join("alice").await;
    let (mut bob, _) = b.join_msgpack("bob").await;
    await_visible(&mut alice, "bob", 1).await;
    while bob.try_recv(Duration::from_millis(200)).await.is_some() {}

    alice
        .send(
            json!({"type":"emit","to":"bob","event":"chat","data":{"text":"hi","n":1.5},"req":10}),
        )
        .await;
    assert_eq!(alice.recv().await["type"], "ok");
    let m = bob.recv().await;
    assert_eq!(
        (&m["type"], &m["from"], &m["event"], &m["data"]),
        (
            &json!("message"),
            &json!("alice"),
            &json!("chat"),
            &json!({"text":"hi","n":1.5})
        )
    );

    // An acknowledged message: the reply crosses back to the sender's hub.
    alice
        .send(json!({"type":"emit","to":"bob","event":"q","data":1,"ack":true,"req":11}))
        .await;
    let m = bob.recv().await;
    let ack_id = m["ack_id"].as_u64().expect("an ack_id");
    bob.send(json!({"type":"reply","ack_id":ack_id,"data":{"answer":42}}))
        .await;
    let ack = alice.recv().await;
    assert_eq!(
        (&ack["type"], &ack["req"], &ack["data"]),
        (&json!("ack"), &json!(11), &json!({"answer":42}))
    );
    // A second reply is refused on bob's hub, as on one hub.
    bob.send(json!({"type":"reply","ack_id":ack_id,"data":0}))
        .await;
    assert_eq!(bob.recv().await["code"], "unknown_ack");

    // Bob answers alice the same way (both directions).
    bob.send(json!({"type":"emit","to":"alice","event":"back","data":"yo"}))
        .await;
    let m = alice.recv().await;
    assert_eq!((&m["from"], &m["data"]), (&json!("bob"), &json!("yo")));

    // An id that is on no hub: unknown_target, with the req.
    alice
        .send(json!({"type":"emit","to":"nobody","event":"e","req":12}))
        .await;
    let e = alice.recv().await;
    assert_eq!(
        (&e["code"], &e["req"]),
        (&json!("unknown_target"), &json!(12))
    );

    // Bob leaves while an ack is pending: alice hears peer_left for the ack and for bob.
    alice
        .send(json!({"type":"emit","to":"bob","event":"q","ack":true,"req":13}))
        .await;
    let _ = bob.recv().await;
    drop(bob);
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let v = alice.recv().await;
        seen.push(v);
    }
    assert!(
        seen.iter()
            .any(|v| v["code"] == "peer_left" && v["req"] == 13),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|v| v["type"] == "peer_left" && v["id"] == "bob"),
        "{seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_emits_reach_every_member_on_every_hub_exactly_once_with_cluster_presence() {
    let nats = NatsServer::start();
    let hubs = three(&nats).await;
    // Two members per hub; each joins with a request, answered once the cluster knows.
    let mut members: Vec<(String, Raw)> = Vec::new();
    for (h, hub) in hubs.iter().enumerate() {
        for k in 0..2 {
            let id = format!("m{h}{k}");
            let (mut c, _) = hub.join(&id).await;
            c.send(json!({"type":"join","room":"lobby","req":1})).await;
            assert_eq!(c.recv_type("ok").await["req"], 1);
            members.push((id, c));
        }
    }
    // Every hub lists all six.
    let all: Vec<String> = members.iter().map(|(id, _)| id.clone()).collect();
    for (id, c) in members.iter_mut() {
        let ok = until(
            "cluster-wide member list",
            Duration::from_secs(5),
            async || {
                c.send(json!({"type":"members","room":"lobby","req":2}))
                    .await;
                let v = c.recv_type("members").await;
                v["members"] == json!(all)
            },
        )
        .await;
        let _ = (id, ok);
    }
    // Drain presence noise.
    for (_, c) in members.iter_mut() {
        while c.try_recv(Duration::from_millis(300)).await.is_some() {}
    }

    // Each member emits once: every member gets each of the five others' emits exactly once.
    for (i, (_, c)) in members.iter_mut().enumerate() {
        c.send(json!({"type":"emit_room","room":"lobby","event":"hi","data":i}))
            .await;
    }
    for (id, c) in members.iter_mut() {
        let mut got: HashMap<String, u32> = HashMap::new();
        while got.values().sum::<u32>() < 5 {
            let v = c.recv().await;
            if v["type"] == "message" {
                assert_eq!(v["room"], "lobby", "{v}");
                *got.entry(v["from"].as_str().unwrap_or_default().to_owned())
                    .or_default() += 1;
            }
        }
        assert!(
            !got.contains_key(id.as_str()),
            "{id} got its own emit: {got:?}"
        );
        assert!(got.values().all(|n| *n == 1), "{id}: {got:?}");
        // And nothing more arrives (no duplicate).
        if let Some(v) = c.try_recv(Duration::from_millis(300)).await {
            panic!("{id}: unexpected {v}");
        }
    }

    // Presence across hubs: a member leaving on hub-c is seen on hub-a and hub-b.
    let (_, mut leaver) = members.pop().expect("six members");
    leaver
        .send(json!({"type":"leave","room":"lobby","req":3}))
        .await;
    for (_, c) in members.iter_mut() {
        let v = c.recv_type("member_left").await;
        assert_eq!((&v["room"], &v["id"]), (&json!("lobby"), &json!("m21")));
    }
    // And a newcomer on hub-b is announced everywhere.
    let (mut newcomer, _) = hubs[1].join("late").await;
    newcomer
        .send(json!({"type":"join","room":"lobby","req":4}))
        .await;
    for (_, c) in members.iter_mut() {
        let v = c.recv_type("member_joined").await;
        assert_eq!((&v["room"], &v["id"]), (&json!("lobby"), &json!("late")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_that_shuts_down_frees_its_ids_and_members_at_once() {
    let nats = NatsServer::start();
    let [a, b, c] = three(&nats).await;
    let (mut alice, _) = a.join("alice").await;
    alice.send(json!({"type":"join","room":"r","req":1})).await;
    assert_eq!(alice.recv_type("ok").await["req"], 1);
    let (mut carol, _) = c.join("carol").await;
    carol.send(json!({"type":"join","room":"r","req":1})).await;
    assert_eq!(carol.recv_type("ok").await["req"], 1);
    let v = alice.recv_type("member_joined").await;
    assert_eq!(v["id"], "carol");

    c.handle.shutdown();
    let started = Instant::now();
    let v = alice.recv_type("member_left").await;
    assert_eq!(v["id"], "carol");
    // carol may connect to hub-b straight away.
    let (_carol, w) = hello(&b, "carol").await;
    assert_eq!(w["type"], "welcome", "{w}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubs_keep_serving_local_traffic_while_nats_restarts_and_then_reconnect() {
    let mut nats = NatsServer::start();
    let [a, b, _c] = three(&nats).await;
    let (mut alice, _) = a.join("alice").await;
    let (mut ann, _) = a.join("ann").await;
    let (_bob, _) = b.join("bob").await;
    let (carl, _) = a.join("carl").await;
    await_visible(&mut alice, "bob", 1).await;

    nats.kill();
    // carl leaves while the registry is unreachable: his id cannot be released now.
    drop(carl);
    // Local traffic carries on.
    for i in 0..20 {
        alice
            .send(json!({"type":"emit","to":"ann","event":"e","data":i}))
            .await;
        let m = ann.recv_type("message").await;
        assert_eq!(m["data"], i);
    }
    // A new client cannot be registered in the cluster meanwhile: a clear refusal.
    let (_, first) = hello(&a, "newbie").await;
    assert_eq!(first["code"], "cluster_unavailable", "{first}");

    nats.restart();
    // After the reconnect, new clients register and cross-hub messages flow again.
    until(
        "registration after the restart",
        Duration::from_secs(20),
        async || hello(&a, "newbie").await.1["type"] == "welcome",
    )
    .await;
    let mut n = 100;
    until("bob reachable again", Duration::from_secs(20), async || {
        n += 1;
        reachable(&mut alice, "bob", n).await
    })
    .await;
    // Reconciling after the outage releases carl's id: he can connect to another hub.
    let took = until(
        "carl's id released by reconciling",
        Duration::from_secs(15),
        async || hello(&b, "carl").await.1["type"] == "welcome",
    )
    .await;
    eprintln!("carl's id was free again {took:?} after NATS came back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_resumes_on_another_hub_without_loss_or_duplicates() {
    let nats = NatsServer::start();
    let [a, b, c] = three(&nats).await;
    let mut alice = Raw::connect(&a.url("")).await;
    let w = alice
        .hello(json!({"id": "alice", "resume": true, "rooms": ["r"]}))
        .await;
    assert_eq!(w["type"], "welcome", "{w}");
    let secret = w["secret"].clone();
    let (mut bob, _) = b.join("bob").await;
    bob.send(json!({"type":"join","room":"r","req":1})).await;
    assert_eq!(bob.recv_type("ok").await["req"], 1);
    await_visible(&mut bob, "alice", 2).await;
    while alice.try_recv(Duration::from_millis(300)).await.is_some() {}

    // alice reads 1..=3 of bob's messages, then her connection to hub-a breaks.
    for i in 1..=5 {
        bob.send(json!({"type":"emit","to":"alice","event":"n","data":i}))
            .await;
    }
    for i in 1..=3 {
        assert_eq!(alice.recv_type("message").await["data"], i);
    }
    let last = alice.last_seq;
    drop(alice);
    // More arrive while she is between hubs.
    for i in 6..=8 {
        bob.send(json!({"type":"emit","to":"alice","event":"n","data":i}))
            .await;
    }
    // She resumes on hub-c: everything after `last`, exactly once, numbered on from there.
    let (mut alice, w) = resume_on(&c, "alice", &secret, last).await;
    assert_eq!(w["secret"], secret, "the same session");
    assert_eq!(w["rooms"], json!(["r"]), "{w}");
    assert_eq!(
        messages(&mut alice, 5).await,
        [4, 5, 6, 7, 8].map(|i| json!(i))
    );
    // New traffic reaches her on hub-c, direct and in the room.
    bob.send(json!({"type":"emit","to":"alice","event":"n","data":9}))
        .await;
    assert_eq!(alice.recv_type("message").await["data"], 9);
    bob.send(json!({"type":"emit_room","room":"r","event":"room","data":"hi"}))
        .await;
    let m = alice.recv_type("message").await;
    assert_eq!((&m["room"], &m["data"]), (&json!("r"), &json!("hi")));
    // She is still a member for bob, who never heard that she left.
    bob.send(json!({"type":"members","room":"r","req":3})).await;
    let v = bob.recv_type("members").await;
    assert_eq!(v["members"], json!(["alice", "bob"]), "{v}");
    while let Some(v) = bob.try_recv(Duration::from_millis(300)).await {
        assert!(
            v["type"] != "member_left" && v["type"] != "peer_left",
            "bob must not hear alice left: {v}"
        );
    }
    assert_eq!(a.handle.client_count(), 0, "hub-a let the session go");
    assert_eq!(c.handle.client_count(), 1);

    // A wrong secret on yet another hub: refused, the session stays where it is.
    let mut thief = Raw::connect(&a.url("")).await;
    let e = thief
        .hello(json!({"id":"alice","resume":true,"secret":"0000","last_seq":1}))
        .await;
    assert_eq!(e["code"], "id_taken", "{e}");
    bob.send(json!({"type":"emit","to":"alice","event":"n","data":10}))
        .await;
    assert_eq!(alice.recv_type("message").await["data"], 10);
}

/// Waits until `hub` sees exactly `nodes` offering service `calc` (from their heartbeats).
async fn offered_by(hub: &TestHub, nodes: &[&str]) {
    until("calc advertised", Duration::from_secs(10), async || {
        let status: Value =
            serde_json::from_str(&hub.get("/status.json").await).unwrap_or_default();
        let offering: Vec<&str> = status["cluster"]["nodes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|n| n["services"].get("calc").is_some())
                    .filter_map(|n| n["node"].as_str())
                    .collect()
            })
            .unwrap_or_default();
        offering == nodes
    })
    .await;
}

/// Sends a call and returns its answer (`result` or `error`).
async fn call(c: &mut Raw, method: &str, data: Value, req: u64) -> Value {
    c.send(json!({"type":"call","service":"calc","method":method,"data":data,"req":req}))
        .await;
    loop {
        let v = c.recv().await;
        if v["req"] == req && (v["type"] == "result" || v["type"] == "error") {
            return v;
        }
    }
}

/// Answers every `invoke` waiting for provider `p` with `data * 10`; returns how many.
async fn answer_all(p: &mut Raw) -> usize {
    let mut n = 0;
    while let Some(v) = p.try_recv(Duration::from_millis(200)).await {
        if v["type"] == "invoke" {
            let x = v["data"].as_i64().unwrap_or_default();
            p.send(json!({"type":"respond","call":v["call"],"data":x * 10}))
                .await;
            n += 1;
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_on_any_hub_share_the_calls_with_the_same_errors() {
    let nats = NatsServer::start();
    let [a, b, c] = three(&nats).await;
    let (mut p1, _) = a.join("provider-1").await;
    p1.send(json!({"type":"provide","service":"calc","methods":["times10","div"],"req":1}))
        .await;
    assert_eq!(p1.recv_type("ok").await["req"], 1);
    let (mut caller, _) = c.join("caller").await;

    // Once hub-a advertises the service, a call from hub-c reaches provider-1.
    let mut req = 100;
    until("calc offered to hub-c", Duration::from_secs(10), async || {
        req += 1;
        caller
            .send(json!({"type":"call","service":"calc","method":"times10","data":1,"req":req}))
            .await;
        loop {
            tokio::select! {
                v = caller.recv() => {
                    if v["req"] == req {
                        assert_eq!(v["code"], "unknown_service", "{v}");
                        return false;
                    }
                }
                inv = p1.recv_type("invoke") => {
                    assert_eq!((&inv["from"], &inv["service"]), (&json!("caller"), &json!("calc")));
                    p1.send(json!({"type":"respond","call":inv["call"],"data":10})).await;
                    let v = caller.recv_type("result").await;
                    assert_eq!((&v["req"], &v["data"]), (&json!(req), &json!(10)));
                    return true;
                }
            }
        }
    })
    .await;

    // The provider's error crosses as service_error; an unknown method is unknown_method.
    caller
        .send(json!({"type":"call","service":"calc","method":"div","data":0,"req":2}))
        .await;
    let inv = p1.recv_type("invoke").await;
    p1.send(json!({"type":"respond","call":inv["call"],"error":"division by zero"}))
        .await;
    let e = caller.recv_type("error").await;
    assert_eq!(
        (&e["code"], &e["req"], &e["message"]),
        (
            &json!("service_error"),
            &json!(2),
            &json!("division by zero")
        )
    );

    // A second provider on hub-b: calls from hub-c are shared between the two hubs.
    let (mut p2, _) = b.join("provider-2").await;
    p2.send(json!({"type":"provide","service":"calc","methods":["times10","div"],"req":1}))
        .await;
    assert_eq!(p2.recv_type("ok").await["req"], 1);
    offered_by(&c, &["hub-a", "hub-b"]).await;
    for i in 0..20 {
        caller
            .send(
                json!({"type":"call","service":"calc","method":"times10","data":i,"req":1000 + i}),
            )
            .await;
    }
    let (n1, n2) = tokio::join!(answer_all(&mut p1), answer_all(&mut p2));
    assert_eq!(n1 + n2, 20, "{n1} + {n2}");
    assert!(n1 >= 5 && n2 >= 5, "shared: {n1} and {n2}");
    let mut results = 0;
    while results < 20 {
        let v = caller.recv_type("result").await;
        let i = v["req"].as_i64().unwrap_or_default() - 1000;
        assert_eq!(v["data"], i * 10, "{v}");
        results += 1;
    }

    // A provider that leaves with a call in flight: provider_left at the caller on hub-c.
    drop(p2);
    p1.send(json!({"type":"unprovide","req":3})).await;
    let _ = p1.recv_type("ok").await;
    let (mut p3, _) = b.join("provider-3").await;
    p3.send(json!({"type":"provide","service":"calc","methods":["times10"],"req":1}))
        .await;
    assert_eq!(p3.recv_type("ok").await["req"], 1);
    offered_by(&c, &["hub-b"]).await;
    let r = {
        caller
            .send(json!({"type":"call","service":"calc","method":"times10","data":1,"req":3}))
            .await;
        let _ = p3.recv_type("invoke").await;
        drop(p3);
        caller.recv_type("error").await
    };
    assert_eq!(
        (&r["code"], &r["req"]),
        (&json!("provider_left"), &json!(3)),
        "{r}"
    );

    // No provider anywhere: unknown_service, as on one hub.
    offered_by(&c, &[]).await;
    let v = call(&mut caller, "times10", json!(1), 4).await;
    assert_eq!(v["code"], "unknown_service", "{v}");
}

/// Subscribes `c` to `news/sport`, retrying until the provider's hub advertised the topic.
async fn subscribe_sport(c: &mut Raw) {
    let mut req = 500;
    until("news/sport offered", Duration::from_secs(10), async || {
        req += 1;
        c.send(json!({"type":"subscribe","service":"news","topic":"sport","req":req}))
            .await;
        let v = c.recv().await;
        assert_eq!(v["req"], req, "{v}");
        if v["type"] == "error" {
            assert!(
                v["code"] == "unknown_service" || v["code"] == "unknown_topic",
                "{v}"
            );
        }
        v["type"] == "ok"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_publications_reach_subscribers_on_every_hub_once() {
    let nats = NatsServer::start();
    let [a, b, c] = three(&nats).await;
    let (mut p, _) = a.join("newsroom").await;
    p.send(json!({"type":"provide","service":"news","methods":["ask"],"req":1}))
        .await;
    assert_eq!(p.recv_type("ok").await["req"], 1);
    p.send(json!({"type":"create_topic","topic":"sport","req":2}))
        .await;
    assert_eq!(p.recv_type("ok").await["req"], 2);
    let (mut sa, _) = a.join("reader-a").await;
    let (mut sb, _) = b.join_msgpack("reader-b").await;
    let (mut sc, _) = c.join("reader-c").await;
    for s in [&mut sa, &mut sb, &mut sc] {
        subscribe_sport(s).await;
    }
    for i in 0..3 {
        p.send(json!({"type":"publish","topic":"sport","data":{"goal":i},"req":10 + i}))
            .await;
    }
    for (name, s) in [("a", &mut sa), ("b", &mut sb), ("c", &mut sc)] {
        for i in 0..3 {
            let v = s.recv_type("publication").await;
            assert_eq!(
                (&v["service"], &v["topic"], &v["data"]),
                (&json!("news"), &json!("sport"), &json!({"goal": i})),
                "reader-{name}"
            );
        }
        if let Some(v) = s.try_recv(Duration::from_millis(300)).await {
            panic!("reader-{name}: unexpected {v}");
        }
    }
    // An unsubscribed reader on another hub hears nothing more.
    sc.send(json!({"type":"unsubscribe","service":"news","topic":"sport","req":20}))
        .await;
    assert_eq!(sc.recv_type("ok").await["req"], 20);
    sc.send(json!({"type":"unsubscribe","service":"news","topic":"sport","req":21}))
        .await;
    assert_eq!(sc.recv_type("error").await["code"], "not_subscribed");
    p.send(json!({"type":"publish","topic":"sport","data":"late","req":30}))
        .await;
    assert_eq!(sb.recv_type("publication").await["data"], "late");
    assert_eq!(sa.recv_type("publication").await["data"], "late");
    if let Some(v) = sc.try_recv(Duration::from_millis(300)).await {
        panic!("reader-c unsubscribed: unexpected {v}");
    }
    // The topic ends: every subscriber, on every hub, is told.
    p.send(json!({"type":"destroy_topic","topic":"sport","req":31}))
        .await;
    for s in [&mut sa, &mut sb] {
        let v = s.recv_type("topic_ended").await;
        assert_eq!(
            (&v["service"], &v["topic"]),
            (&json!("news"), &json!("sport")),
            "{v}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_shutting_down_hands_its_clients_a_hint_and_their_sessions_move() {
    let nats = NatsServer::start();
    let [a, b, c] = three(&nats).await;
    let mut alice = Raw::connect(&a.url("")).await;
    let w = alice.hello(json!({"id": "alice", "resume": true})).await;
    let secret = w["secret"].clone();
    let (mut bob, _) = b.join("bob").await;
    await_visible(&mut bob, "alice", 1).await;
    while alice.try_recv(Duration::from_millis(300)).await.is_some() {}
    for i in 1..=2 {
        bob.send(json!({"type":"emit","to":"alice","event":"n","data":i}))
            .await;
        assert_eq!(alice.recv_type("message").await["data"], i);
    }
    bob.send(json!({"type":"emit","to":"alice","event":"n","data":3}))
        .await;
    let last = alice.last_seq; // 3 is on its way or queued: not confirmed

    a.handle.shutdown();
    let (close, _) = alice.recv_close().await;
    let (code, reason) = close.expect("a close frame");
    assert_eq!(code, 1001);
    assert!(reason.contains("another hub"), "the hint: {reason}");
    for i in 4..=5 {
        bob.send(json!({"type":"emit","to":"alice","event":"n","data":i}))
            .await;
    }
    // She resumes on hub-c: nothing lost, nothing twice; no one heard she left.
    let (mut alice, _) = resume_on(&c, "alice", &secret, last).await;
    assert_eq!(messages(&mut alice, 3).await, [3, 4, 5].map(|i| json!(i)));
    while let Some(v) = bob.try_recv(Duration::from_millis(300)).await {
        assert!(
            v["type"] != "peer_left",
            "bob must not hear alice left: {v}"
        );
    }
    tokio::time::timeout(Duration::from_secs(10), a.task)
        .await
        .expect("hub-a stops once its session moved")
        .expect("task")
        .expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_moving_under_a_steady_stream_loses_nothing_and_repeats_nothing() {
    let nats = NatsServer::start();
    let [a, b, c] = three(&nats).await;
    let mut alice = Raw::connect(&a.url("")).await;
    let w = alice.hello(json!({"id": "alice", "resume": true})).await;
    let secret = w["secret"].clone();
    let (mut bob, _) = b.join("bob").await;
    await_visible(&mut bob, "alice", 1).await;
    while alice.try_recv(Duration::from_millis(300)).await.is_some() {}
    // bob sends 1..=300, one every 2 ms, while alice moves from hub-a to hub-c.
    let sender = tokio::spawn(async move {
        for i in 1..=300 {
            bob.send(json!({"type":"emit","to":"alice","event":"n","data":i}))
                .await;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        bob
    });
    let mut got: Vec<i64> = Vec::new();
    while got.len() < 80 {
        let v = alice.recv().await;
        if v["type"] == "message" {
            got.push(v["data"].as_i64().unwrap_or_default());
        }
    }
    let last = alice.last_seq;
    drop(alice);
    let (mut alice, _) = resume_on(&c, "alice", &secret, last).await;
    while got.len() < 300 {
        let v = alice.recv().await;
        if v["type"] == "message" {
            got.push(v["data"].as_i64().unwrap_or_default());
        }
    }
    let mut bob = sender.await.expect("sender");
    let mut sorted = got.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), 300, "no message lost or repeated: {got:?}");
    assert_eq!(sorted, (1..=300).collect::<Vec<i64>>());
    if let Some(v) = alice.try_recv(Duration::from_millis(300)).await {
        panic!("nothing more: {v}");
    }
    let out_of_order = got.windows(2).filter(|w| w[0] > w[1]).count();
    eprintln!("300 messages across the move, {out_of_order} out of order");
    assert!(bob
        .try_recv(Duration::from_millis(100))
        .await
        .is_none_or(|v| v["type"] != "peer_left"));
}

async fn no_streams_left(hubs: &[&TestHub]) {
    until(
        "every stream end freed",
        Duration::from_secs(5),
        async || hubs.iter().all(|h| h.handle.stream_ends() == 0),
    )
    .await;
}

/// Sends `total` bytes on stream `s` as the credit allows (starting from `credit`), in chunks
/// of at most `chunk`, then ends the stream.
async fn send_all(mut a: Raw, s: u64, mut credit: u64, total: usize, chunk: usize) -> Raw {
    let data = pattern(total);
    let mut at = 0;
    while at < total {
        while credit == 0 {
            let v = a.recv().await;
            if v["type"] == "stream_credit" {
                assert_eq!(v["stream"], s, "{v}");
                credit += v["bytes"].as_u64().expect("bytes");
            } else {
                assert_ne!(v["type"], "stream_reset", "{v}");
            }
        }
        let n = chunk.min(total - at).min(credit as usize);
        a.send_raw(common::data_frame(s, &data[at..at + n])).await;
        at += n;
        credit -= n as u64;
    }
    a.send(json!({"type":"stream_end","stream":s})).await;
    a
}

/// Reads stream `s` to its end, granting each frame's bytes back: returns the bytes.
async fn read_all(mut b: Raw, s: u64) -> (Raw, Vec<u8>) {
    let mut got = Vec::new();
    loop {
        let v = b.recv().await;
        match v["type"].as_str() {
            Some("$data") => {
                assert_eq!(v["stream"], s, "{v}");
                let len = v["len"].as_u64().expect("len");
                got.extend_from_slice(v["data"].as_str().expect("data").as_bytes());
                b.send(json!({"type":"stream_credit","stream":s,"bytes":len}))
                    .await;
            }
            Some("stream_end") => {
                assert_eq!(v["stream"], s, "{v}");
                return (b, got);
            }
            Some("stream_reset") => panic!("the stream was reset: {v}"),
            _ => {}
        }
    }
}

/// ASCII digits, so the test client's text view of a data frame is exact.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| b'0' + (i * 7 % 10) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_cross_hubs_with_flow_control_end_to_end() {
    let nats = NatsServer::start();
    let [a, b, c] = three(&nats).await;
    let (mut alice, _) = a.join("alice").await;
    let (mut bob, _) = b.join_msgpack("bob").await;
    let (mut carol, _) = c.join("carol").await;
    await_visible(&mut alice, "bob", 1).await;
    await_visible(&mut carol, "bob", 2).await;
    while bob.try_recv(Duration::from_millis(200)).await.is_some() {}

    // A refusal crosses back with the target's reason.
    common::rejected_open(&mut carol, &mut bob, "carol", "bob", 5).await;

    // The target's window is enforced at the opener's hub: 10 bytes pass, the 11th resets
    // both ends with flow_control.
    let (sa, sb) = open_stream(&mut alice, &mut bob, "bob", 6, 1000, 10).await;
    alice.send_raw(common::data_frame(sa, b"0123456789")).await;
    let d = bob.recv_type("$data").await;
    assert_eq!(
        (&d["stream"], &d["data"]),
        (&json!(sb), &json!("0123456789"))
    );
    alice.send_raw(common::data_frame(sa, b"!")).await;
    assert_eq!(
        alice.recv_type("stream_reset").await["code"],
        "flow_control"
    );
    let rb = bob.recv_type("stream_reset").await;
    assert_eq!(
        (&rb["stream"], &rb["code"]),
        (&json!(sb), &json!("flow_control"))
    );
    no_streams_left(&[&a, &b]).await;

    // Credit granted on hub-b reaches alice on hub-a; both directions carry data.
    let (sa, sb) = open_stream(&mut alice, &mut bob, "bob", 7, 100, 4).await;
    bob.send_raw(common::data_frame(sb, b"pong")).await;
    let d = alice.recv_type("$data").await;
    assert_eq!((&d["stream"], &d["data"]), (&json!(sa), &json!("pong")));
    bob.send(json!({"type":"stream_credit","stream":sb,"bytes":6}))
        .await;
    let cr = alice.recv_type("stream_credit").await;
    assert_eq!((&cr["stream"], &cr["bytes"]), (&json!(sa), &json!(6)));
    bob.send(json!({"type":"stream_end","stream":sb})).await;
    assert_eq!(alice.recv_type("stream_end").await["stream"], sa);

    alice.send(json!({"type":"stream_end","stream":sa})).await;
    assert_eq!(bob.recv_type("stream_end").await["stream"], sb);
    no_streams_left(&[&a, &b]).await;

    // 1 MiB through a 64 KiB window, complete and in order.
    let total = 1 << 20;
    let (sa, sb) = open_stream(&mut alice, &mut bob, "bob", 8, 0, 65_536).await;
    let (alice, (bob, got)) = tokio::join!(
        send_all(alice, sa, 65_536, total, 16_384),
        read_all(bob, sb)
    );
    assert_eq!(got.len(), total);
    assert!(
        got == pattern(total),
        "the bytes arrive in order, unchanged"
    );
    let (mut alice, mut bob) = (alice, bob);
    bob.send(json!({"type":"stream_end","stream":sb})).await;
    assert_eq!(alice.recv_type("stream_end").await["stream"], sa);
    no_streams_left(&[&a, &b]).await;

    // An open stream whose other end disconnects: peer_left on the other hub.
    let (sa, _) = open_stream(&mut alice, &mut bob, "bob", 9, 10, 10).await;
    drop(bob);
    let r = alice.recv_type("stream_reset").await;
    assert_eq!(
        (&r["stream"], &r["code"]),
        (&json!(sa), &json!("peer_left")),
        "{r}"
    );
    // An open whose target disconnects before answering fails with peer_left.
    let (mut dave, _) = b.join("dave").await;
    await_visible(&mut carol, "dave", 20).await;
    carol
        .send(json!({"type":"stream_open","req":21,"to":"dave"}))
        .await;
    dave.recv_type("stream_request").await;
    drop(dave);
    let e = carol.recv_type("error").await;
    assert_eq!(
        (&e["code"], &e["req"]),
        (&json!("peer_left"), &json!(21)),
        "{e}"
    );
    no_streams_left(&[&a, &b, &c]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_open_across_hubs_times_out_on_both_ends() {
    let nats = NatsServer::start();
    let cfg = |name: &str| HubConfig {
        cluster: Some(nats.url()),
        node_name: Some(name.into()),
        stream_open_timeout_ms: 500,
        ..HubConfig::default()
    };
    let (a, b) = tokio::join!(TestHub::start(cfg("hub-a")), TestHub::start(cfg("hub-b")));
    let (mut alice, _) = a.join("alice").await;
    let (mut bob, _) = b.join("bob").await;
    await_visible(&mut alice, "bob", 1).await;
    alice
        .send(json!({"type":"stream_open","req":2,"to":"bob"}))
        .await;
    let r = bob.recv_type("stream_request").await;
    // bob never answers: alice's open fails, and bob's offer is withdrawn (the opener's
    // reset names only its own id: bob's hub finds the stream by it).
    let e = alice.recv_type("error").await;
    assert_eq!(
        (&e["code"], &e["req"]),
        (&json!("stream_timeout"), &json!(2)),
        "{e}"
    );
    let x = bob.recv_type("stream_reset").await;
    assert_eq!(
        (&x["stream"], &x["code"]),
        (&r["stream"], &json!("stream_timeout")),
        "{x}"
    );
    // A late answer is ignored.
    bob.send(json!({"type":"stream_accept","stream":r["stream"],"window":5}))
        .await;
    alice.expect_silence(Duration::from_millis(300)).await;
    no_streams_left(&[&a, &b]).await;
    // Still served.
    alice
        .send(json!({"type":"stream_open","req":3,"to":"nobody"}))
        .await;
    let e = alice.recv_type("error").await;
    assert_eq!(
        (&e["code"], &e["req"]),
        (&json!("unknown_target"), &json!(3))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_across_hubs_are_reset_when_nats_goes_away_never_left_with_a_gap() {
    let mut nats = NatsServer::start();
    let (a, b) = tokio::join!(hub(&nats, "hub-a"), hub(&nats, "hub-b"));
    let (mut alice, _) = a.join("alice").await;
    let (mut bob, _) = b.join("bob").await;
    let (mut ann, _) = a.join("ann").await;
    await_visible(&mut alice, "bob", 1).await;
    while bob.try_recv(Duration::from_millis(200)).await.is_some() {}
    let (sa, sb) = open_stream(&mut alice, &mut bob, "bob", 2, 100, 100).await;
    // A stream within hub-a is not affected.
    let (la, _) = open_stream(&mut alice, &mut ann, "ann", 3, 100, 100).await;
    nats.kill();
    let r = alice.recv_type("stream_reset").await;
    assert_eq!(
        (&r["stream"], &r["code"]),
        (&json!(sa), &json!("cluster_unavailable")),
        "{r}"
    );
    let r = bob.recv_type("stream_reset").await;
    assert_eq!(
        (&r["stream"], &r["code"]),
        (&json!(sb), &json!("cluster_unavailable")),
        "{r}"
    );
    alice.send_raw(common::data_frame(la, b"local")).await;
    assert_eq!(ann.recv_type("$data").await["data"], "local");
    drop(nats);
}

/// Joins session `name` and returns its snapshot (one chunk).
async fn join_session(c: &mut Raw, name: &str, req: u64) -> Value {
    c.send(json!({"type":"session_join","session":name,"req":req}))
        .await;
    loop {
        let v = c.recv().await;
        if v["type"] == "error" {
            panic!("join refused: {v}");
        }
        if v["type"] == "session_state" && v["req"] == req {
            assert_eq!(v["more"], false, "{v}");
            return v;
        }
    }
}

/// The next `session_event` of `c`.
async fn session_event(c: &mut Raw) -> Value {
    c.recv_type("session_event").await
}

fn roster(snap: &Value) -> Vec<String> {
    snap["roster"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|m| m["id"].as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_spans_hubs_with_one_authority_one_order_and_late_joins_anywhere() {
    let nats = NatsServer::start();
    let [a, b, c] = three(&nats).await;
    let (mut alice, _) = a.join("alice").await;
    let (mut bob, _) = b.join_msgpack("bob").await;
    let (mut carol, _) = c.join("carol").await;

    let s = join_session(&mut alice, "game", 1).await;
    assert_eq!(
        (&s["authority"], &s["epoch"]),
        (&json!("alice"), &json!(1)),
        "{s}"
    );
    // bob and carol join at hub-a's session from their hubs: one session, one authority.
    let s = join_session(&mut bob, "game", 1).await;
    assert_eq!(roster(&s), ["alice", "bob"], "{s}");
    assert_eq!(s["authority"], "alice", "{s}");
    let e = session_event(&mut alice).await;
    assert_eq!(
        (&e["event"], &e["member"]),
        (&json!("member_joined"), &json!("bob")),
        "{e}"
    );
    let s = join_session(&mut carol, "game", 1).await;
    assert_eq!(roster(&s), ["alice", "bob", "carol"]);
    for m in [&mut alice, &mut bob] {
        let e = session_event(m).await;
        assert_eq!(
            (&e["event"], &e["member"]),
            (&json!("member_joined"), &json!("carol"))
        );
    }

    // Operations from any hub are ordered by the one session: every member sees the same
    // revisions, and the actor gets the event before its ok.
    bob.send(json!({"type":"session_op","session":"game","op":"create","object":"ball","data":{"x":1},"req":2}))
        .await;
    let mut revs = Vec::new();
    for m in [&mut alice, &mut bob, &mut carol] {
        let e = session_event(m).await;
        assert_eq!(
            (&e["event"], &e["object"], &e["by"], &e["owner"]),
            (
                &json!("created"),
                &json!("ball"),
                &json!("bob"),
                &json!("bob")
            ),
            "{e}"
        );
        revs.push(e["rev"].clone());
    }
    assert_eq!(
        bob.recv().await,
        json!({"seq": bob.last_seq, "type":"ok","req":2})
    );
    carol
        .send(json!({"type":"session_op","session":"game","op":"patch","object":"ball","data":{"y":2},"req":3}))
        .await;
    let e = carol.recv_type("error").await;
    assert_eq!(
        (&e["code"], &e["req"]),
        (&json!("not_owner"), &json!(3)),
        "{e}"
    );
    carol
        .send(json!({"type":"session_op","session":"game","op":"create","object":"flag","data":"red","req":4}))
        .await;
    for m in [&mut alice, &mut bob, &mut carol] {
        let e = session_event(m).await;
        assert_eq!(
            (&e["object"], &e["by"]),
            (&json!("flag"), &json!("carol")),
            "{e}"
        );
        revs.push(e["rev"].clone());
    }
    assert_eq!(revs[0], revs[1]);
    assert_eq!(revs[1], revs[2]);
    assert_eq!(revs[3], revs[4]);
    assert_eq!(revs[4], revs[5]);
    assert!(revs[3].as_u64() > revs[0].as_u64());

    // A late joiner on any hub gets the whole state at the latest revision.
    let (mut dave, _) = c.join("dave").await;
    let s = join_session(&mut dave, "game", 5).await;
    assert_eq!(roster(&s), ["alice", "bob", "carol", "dave"]);
    assert!(s["rev"].as_u64() >= revs[5].as_u64(), "{s}");
    let objects: Vec<&str> = s["objects"]
        .as_array()
        .map(|o| o.iter().filter_map(|x| x["id"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(objects, ["ball", "flag"], "{s}");

    // The authority (on the session's hub) leaves: exactly one other member takes over,
    // and everyone hears it in the same order.
    alice
        .send(json!({"type":"session_leave","session":"game","req":6}))
        .await;
    assert_eq!(alice.recv_type("ok").await["req"], 6);
    let mut authorities = Vec::new();
    for m in [&mut bob, &mut carol, &mut dave] {
        let e = loop {
            let e = session_event(m).await;
            if e["event"] == "authority" {
                break e;
            }
        };
        authorities.push((e["member"].clone(), e["epoch"].clone()));
    }
    assert_eq!(authorities[0], authorities[1]);
    assert_eq!(authorities[1], authorities[2]);
    assert_eq!(authorities[0].1, 2);

    // A member on another hub disconnects: it leaves for good, everyone hears it.
    drop(carol);
    for m in [&mut bob, &mut dave] {
        loop {
            let e = session_event(m).await;
            if e["event"] == "member_left" && e["member"] == "carol" {
                break;
            }
        }
    }
    // bob leaves from hub-b; the session lives on with dave.
    bob.send(json!({"type":"session_leave","session":"game","req":7}))
        .await;
    assert_eq!(bob.recv_type("ok").await["req"], 7);
    let e = loop {
        let e = session_event(&mut dave).await;
        if e["event"] == "member_left" {
            break e;
        }
    };
    assert_eq!(e["member"], "bob");
    bob.send(json!({"type":"session_op","session":"game","op":"delete","object":"flag","req":8}))
        .await;
    let e = bob.recv_type("error").await;
    assert_eq!(
        (&e["code"], &e["req"]),
        (&json!("unknown_session"), &json!(8)),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hubs_creating_one_session_at_once_make_one_session() {
    let nats = NatsServer::start();
    let [a, b, _c] = three(&nats).await;
    for i in 0..5 {
        let name = format!("race-{i}");
        let (mut alice, _) = a.join(&format!("alice-{i}")).await;
        let (mut bob, _) = b.join(&format!("bob-{i}")).await;
        let (sa, sb) = tokio::join!(
            join_session(&mut alice, &name, 1),
            join_session(&mut bob, &name, 1)
        );
        // Whoever came second sees the first in its snapshot; the first hears the second join.
        let (first, second) = if roster(&sa).len() == 1 {
            (sa, sb)
        } else {
            (sb, sa)
        };
        assert_eq!(roster(&first).len(), 1, "{first}");
        assert_eq!(roster(&second).len(), 2, "one session, not two: {second}");
        assert_eq!(first["authority"], second["authority"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_membership_follows_a_client_to_another_hub_and_ends_with_its_home() {
    let nats = NatsServer::start();
    let [a, b, c] = three(&nats).await;
    let (mut alice, _) = a.join("alice").await;
    join_session(&mut alice, "game", 1).await;
    let mut bob = Raw::connect(&b.url("")).await;
    let w = bob.hello(json!({"id": "bob", "resume": true})).await;
    assert_eq!(w["type"], "welcome", "{w}");
    let secret = w["secret"].clone();
    join_session(&mut bob, "game", 1).await;
    assert_eq!(session_event(&mut alice).await["member"], "bob");

    // bob's connection to hub-b breaks; he resumes on hub-c. He stays a member (no one hears
    // he left), gets a fresh snapshot there, and the session's events reach him on hub-c.
    let last = bob.last_seq;
    drop(bob);
    let e = session_event(&mut alice).await;
    assert_eq!(
        (&e["event"], &e["member"]),
        (&json!("member_away"), &json!("bob")),
        "{e}"
    );
    let (mut bob, _) = resume_on(&c, "bob", &secret, last).await;
    let s = bob.recv_type("session_state").await;
    assert_eq!(
        (&s["session"], &s["req"]),
        (&json!("game"), &Value::Null),
        "{s}"
    );
    assert_eq!(roster(&s), ["alice", "bob"]);
    let e = session_event(&mut alice).await;
    assert_eq!(
        (&e["event"], &e["member"]),
        (&json!("member_back"), &json!("bob")),
        "{e}"
    );
    alice
        .send(json!({"type":"session_op","session":"game","op":"create","object":"o","data":1,"req":2}))
        .await;
    let e = session_event(&mut bob).await;
    assert_eq!(
        (&e["event"], &e["object"]),
        (&json!("created"), &json!("o")),
        "{e}"
    );
    assert_eq!(session_event(&mut alice).await["object"], "o");
    assert_eq!(alice.recv_type("ok").await["req"], 2);
    // His operations go from hub-c to the session's hub.
    bob.send(
        json!({"type":"session_op","session":"game","op":"create","object":"p","data":2,"req":3}),
    )
    .await;
    let e = session_event(&mut alice).await;
    assert_eq!(e["object"], "p");
    assert_eq!(bob.recv_type("ok").await["req"], 3);

    // The session's hub leaves the cluster. hub-c, where bob is, mirrors the session and
    // takes it over: alice (gone with hub-a) leaves it, bob becomes authority and keeps
    // every object, and the session goes on at the next revision.
    let rev = e["rev"].as_u64().expect("rev");
    let before = Instant::now();
    a.handle.shutdown();
    let mut seen = Vec::new();
    let e = loop {
        let e = session_event(&mut bob).await;
        seen.push(e.clone());
        if e["event"] == "member_left" {
            break e;
        }
    };
    eprintln!(
        "hub-c took the session over {:?} after hub-a left",
        before.elapsed()
    );
    assert_eq!(e["member"], "alice", "{seen:?}");
    let revs: Vec<u64> = seen.iter().filter_map(|e| e["rev"].as_u64()).collect();
    let want: Vec<u64> = (rev + 1..=rev + seen.len() as u64).collect();
    assert_eq!(revs, want, "no revision skipped or repeated: {seen:?}");
    assert!(
        seen.iter()
            .any(|e| e["event"] == "authority" && e["member"] == "bob"),
        "{seen:?}"
    );
    // alice's leave may have reached hub-c before hub-a left: wait for the takeover (an
    // operation sent before it would go to hub-a and be answered `cluster_unavailable`).
    until(
        "hub-c took the session over",
        Duration::from_secs(10),
        async || {
            let status: Value =
                serde_json::from_str(&c.get("/status.json").await).unwrap_or_default();
            status["cluster"]["sessions_taken_over"] == 1
        },
    )
    .await;
    bob.send(
        json!({"type":"session_op","session":"game","op":"update","object":"p","data":3,"req":4}),
    )
    .await;
    let e = session_event(&mut bob).await;
    assert_eq!(
        (&e["object"], &e["rev"]),
        (&json!("p"), &json!(rev + seen.len() as u64 + 1)),
        "{e}"
    );
    assert_eq!(bob.recv_type("ok").await["req"], 4);
    // A late joiner on hub-b finds it on hub-c, with everything.
    let (mut dave, _) = b.join("dave").await;
    let s = join_session(&mut dave, "game", 1).await;
    assert_eq!(roster(&s), ["bob", "dave"], "{s}");
    assert_eq!(s["authority"], "bob", "{s}");
    let objects: Vec<&Value> = s["objects"].as_array().expect("objects").iter().collect();
    assert!(
        objects.iter().any(|o| o["id"] == "p" && o["data"] == 3),
        "{s}"
    );
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_leaving_the_sessions_home_hub_for_another_stays_a_member() {
    let nats = NatsServer::start();
    let [a, b, _c] = three(&nats).await;
    // bob creates the session on hub-b (its home), alice joins from hub-a.
    let mut bob = Raw::connect(&b.url("")).await;
    let w = bob.hello(json!({"id": "bob", "resume": true})).await;
    let secret = w["secret"].clone();
    join_session(&mut bob, "match", 1).await;
    let (mut alice, _) = a.join("alice").await;
    let s = join_session(&mut alice, "match", 1).await;
    assert_eq!(roster(&s), ["bob", "alice"]);
    assert_eq!(session_event(&mut bob).await["member"], "alice");

    // bob's session moves from the home hub to hub-a: he stays a member (and authority).
    let last = bob.last_seq;
    drop(bob);
    assert_eq!(session_event(&mut alice).await["event"], "member_away");
    let (mut bob, _) = resume_on(&a, "bob", &secret, last).await;
    let s = bob.recv_type("session_state").await;
    assert_eq!(
        (&s["authority"], &s["req"]),
        (&json!("bob"), &Value::Null),
        "{s}"
    );
    assert_eq!(session_event(&mut alice).await["event"], "member_back");
    bob.send(json!({"type":"session_op","session":"match","op":"create","object":"score","data":0,"req":2}))
        .await;
    for m in [&mut alice, &mut bob] {
        let e = session_event(m).await;
        assert_eq!(
            (&e["event"], &e["object"]),
            (&json!("created"), &json!("score")),
            "{e}"
        );
    }
    assert_eq!(bob.recv_type("ok").await["req"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_operations_from_three_hubs_reach_every_member_in_one_order_without_gaps() {
    let nats = NatsServer::start();
    let [a, b, c] = three(&nats).await;
    let mut members = Vec::new();
    for (hub, id) in [(&a, "m-a"), (&b, "m-b"), (&c, "m-c")] {
        let (mut m, _) = hub.join(id).await;
        join_session(&mut m, "busy", 1).await;
        members.push(m);
    }
    // Everyone has seen everyone join.
    while members[0]
        .try_recv(Duration::from_millis(200))
        .await
        .is_some()
    {}
    while members[1]
        .try_recv(Duration::from_millis(200))
        .await
        .is_some()
    {}
    while members[2]
        .try_recv(Duration::from_millis(200))
        .await
        .is_some()
    {}

    // Each member creates 50 objects as fast as it can; all 150 events must reach every
    // member with the same revisions in the same order, none missing.
    const EACH: usize = 50;
    let tasks: Vec<_> = members
        .into_iter()
        .enumerate()
        .map(|(k, mut m)| {
            tokio::spawn(async move {
                for i in 0..EACH {
                    let object = format!("o-{k}-{i}");
                    m.send(json!({"type":"session_op","session":"busy","op":"create","object":object,"data":i,"req":i + 10}))
                        .await;
                }
                let mut seen = Vec::new();
                let mut oks = 0;
                while seen.len() < 3 * EACH || oks < EACH {
                    let Some(v) = m.try_recv(Duration::from_secs(5)).await else {
                        panic!("member {k}: {} events, {oks} oks; last {:?}", seen.len(), seen.last());
                    };
                    match v["type"].as_str() {
                        Some("session_event") => {
                            seen.push((v["rev"].as_u64().unwrap_or(0), v["object"].clone()))
                        }
                        Some("ok") => oks += 1,
                        Some("error") => panic!("{v}"),
                        _ => {}
                    }
                }
                seen
            })
        })
        .collect();
    let mut views = Vec::new();
    for t in tasks {
        views.push(t.await.expect("a member task"));
    }
    assert_eq!(
        views[0], views[1],
        "hub-a and hub-b members saw different orders"
    );
    assert_eq!(
        views[1], views[2],
        "hub-b and hub-c members saw different orders"
    );
    let revs: Vec<u64> = views[0].iter().map(|(r, _)| *r).collect();
    let first = revs[0];
    assert_eq!(
        revs,
        (first..first + 3 * EACH as u64).collect::<Vec<_>>(),
        "one revision per event, no gap"
    );
}

/// Room emits from senders on all three hubs while a member moves from hub to hub: every emit
/// reaches it exactly once, each sender's in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_emits_reach_a_member_moving_between_hubs_exactly_once() {
    const N: i64 = 400;
    let nats = NatsServer::start();
    let hubs = three(&nats).await;
    let mut alice = Raw::connect(&hubs[0].url("")).await;
    let w = alice.hello(json!({"id": "alice", "resume": true})).await;
    let secret = w["secret"].clone();
    alice.send(json!({"type":"join","room":"r","req":1})).await;
    assert_eq!(alice.recv_type("ok").await["req"], 1);
    let mut senders = Vec::new();
    for (k, name) in ["bob", "carol", "dave"].into_iter().enumerate() {
        let (mut s, _) = hubs[k].join(name).await;
        s.send(json!({"type":"join","room":"r","req":1})).await;
        assert_eq!(s.recv_type("ok").await["req"], 1);
        senders.push(s);
    }
    let all = json!(["alice", "bob", "carol", "dave"]);
    until(
        "every hub lists the four members",
        Duration::from_secs(5),
        async || {
            alice
                .send(json!({"type":"members","room":"r","req":2}))
                .await;
            alice.recv_type("members").await["members"] == all
        },
    )
    .await;
    while alice.try_recv(Duration::from_millis(300)).await.is_some() {}
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                for i in 1..=N {
                    s.send(json!({"type":"emit_room","room":"r","event":"n","data":i}))
                        .await;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                s
            })
        })
        .collect();
    let mut got: HashMap<String, Vec<i64>> = HashMap::new();
    let total = |g: &HashMap<String, Vec<i64>>| g.values().map(Vec::len).sum::<usize>();
    // Moves: hub-a → hub-b → hub-c → hub-a, a third of the way apart.
    for (hop, at) in [(1usize, 150usize), (2, 450), (0, 750)] {
        while total(&got) < at {
            let v = alice.recv().await;
            if v["type"] == "message" {
                let from = v["from"].as_str().unwrap_or_default().to_owned();
                got.entry(from)
                    .or_default()
                    .push(v["data"].as_i64().unwrap_or(-1));
            }
        }
        let last = alice.last_seq;
        drop(alice);
        alice = resume_on(&hubs[hop], "alice", &secret, last).await.0;
    }
    while total(&got) < 3 * N as usize {
        let Some(v) = alice.try_recv(Duration::from_secs(5)).await else {
            break;
        };
        if v["type"] == "message" {
            let from = v["from"].as_str().unwrap_or_default().to_owned();
            got.entry(from)
                .or_default()
                .push(v["data"].as_i64().unwrap_or(-1));
        }
    }
    for t in tasks {
        t.await.expect("sender");
    }
    if let Some(v) = alice.try_recv(Duration::from_millis(500)).await {
        assert_ne!(v["type"], "message", "nothing more: {v}");
    }
    for name in ["bob", "carol", "dave"] {
        let seen = got.get(name).cloned().unwrap_or_default();
        let mut sorted = seen.clone();
        sorted.sort_unstable();
        let repeated = sorted.len() - {
            let mut d = sorted.clone();
            d.dedup();
            d.len()
        };
        sorted.dedup();
        let missing: Vec<i64> = (1..=N)
            .filter(|i| sorted.binary_search(i).is_err())
            .collect();
        assert!(
            missing.is_empty() && repeated == 0,
            "{name}: {} missing {missing:?}, {repeated} repeated",
            missing.len()
        );
        assert!(
            seen.windows(2).all(|w| w[0] < w[1]),
            "{name}: out of order: {seen:?}"
        );
    }
    let (mut replayed, mut skipped) = (0, 0);
    for h in &hubs {
        let status: Value = serde_json::from_str(&h.get("/status.json").await).expect("json");
        replayed += status["cluster"]["room_emits_replayed"]
            .as_u64()
            .expect("replayed");
        skipped += status["cluster"]["room_emits_skipped"]
            .as_u64()
            .expect("skipped");
    }
    eprintln!("3 moves under 3 x {N} room emits: {replayed} replayed, {skipped} skipped");
}

/// Subscribes `c` to `service/topic`, retrying until a hub advertised the topic to `c`'s hub.
async fn subscribe_when_offered(c: &mut Raw, service: &str, topic: &str, req: &mut u64) {
    until("the topic offered", Duration::from_secs(10), async || {
        *req += 1;
        c.send(json!({"type":"subscribe","service":service,"topic":topic,"req":*req}))
            .await;
        let v = c.recv().await;
        assert_eq!(v["req"], *req, "{v}");
        v["type"] == "ok"
    })
    .await;
}

/// Publications of providers on two hubs (3 topics x 400, about 1 ms apart each) reach a
/// subscriber whose session moves hub-a -> hub-b -> hub-c -> hub-a meanwhile: each exactly
/// once, in order per topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_publications_reach_a_subscriber_moving_between_hubs_exactly_once() {
    const N: i64 = 400;
    let nats = NatsServer::start();
    let hubs = three(&nats).await;
    // news/sport and news/weather provided on hub-a, feed/live on hub-b.
    let (mut news, _) = hubs[0].join("newsroom").await;
    news.send(json!({"type":"provide","service":"news","methods":["ask"],"req":1}))
        .await;
    assert_eq!(news.recv_type("ok").await["req"], 1);
    let (mut feed, _) = hubs[1].join("feeder").await;
    feed.send(json!({"type":"provide","service":"feed","methods":["ask"],"req":1}))
        .await;
    assert_eq!(feed.recv_type("ok").await["req"], 1);
    for (req, topic) in [(2, "sport"), (3, "weather")] {
        news.send(json!({"type":"create_topic","topic":topic,"req":req}))
            .await;
        assert_eq!(news.recv_type("ok").await["req"], req);
    }
    feed.send(json!({"type":"create_topic","topic":"live","req":2}))
        .await;
    assert_eq!(feed.recv_type("ok").await["req"], 2);
    let topics = [("news", "sport"), ("news", "weather"), ("feed", "live")];
    // Every hub knows every topic before the moves (probes, gone before the publications).
    for (h, id) in hubs[1..].iter().zip(["probe-b", "probe-c"]) {
        let (mut probe, _) = h.join(id).await;
        let mut req = 0;
        for (service, topic) in topics {
            subscribe_when_offered(&mut probe, service, topic, &mut req).await;
        }
    }
    let mut r = Raw::connect(&hubs[0].url("")).await;
    let w = r.hello(json!({"id": "reader", "resume": true})).await;
    let secret = w["secret"].clone();
    let mut req = 0;
    for (service, topic) in topics {
        subscribe_when_offered(&mut r, service, topic, &mut req).await;
    }
    let pubs = [(news, "sport"), (feed, "live")];
    let mut tasks = Vec::new();
    for (mut p, first) in pubs {
        tasks.push(tokio::spawn(async move {
            for i in 1..=N {
                let topics: &[&str] = if first == "sport" {
                    &["sport", "weather"]
                } else {
                    &["live"]
                };
                for t in topics {
                    p.send(json!({"type":"publish","topic":t,"data":i})).await;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            p
        }));
    }
    let mut got: HashMap<String, Vec<i64>> = HashMap::new();
    let total = |g: &HashMap<String, Vec<i64>>| g.values().map(Vec::len).sum::<usize>();
    let take = |v: Value, got: &mut HashMap<String, Vec<i64>>| {
        if v["type"] == "publication" {
            let key = format!(
                "{}/{}",
                v["service"].as_str().unwrap_or_default(),
                v["topic"].as_str().unwrap_or_default()
            );
            got.entry(key)
                .or_default()
                .push(v["data"].as_i64().unwrap_or(-1));
        }
    };
    // Moves: hub-a -> hub-b -> hub-c -> hub-a, a third of the way apart.
    for (hop, at) in [(1usize, 150usize), (2, 450), (0, 750)] {
        while total(&got) < at {
            let v = r.recv().await;
            take(v, &mut got);
        }
        let last = r.last_seq;
        drop(r);
        r = resume_on(&hubs[hop], "reader", &secret, last).await.0;
    }
    while total(&got) < 3 * N as usize {
        let Some(v) = r.try_recv(Duration::from_secs(5)).await else {
            break;
        };
        take(v, &mut got);
    }
    for t in tasks {
        t.await.expect("publisher");
    }
    if let Some(v) = r.try_recv(Duration::from_millis(500)).await {
        assert_ne!(v["type"], "publication", "nothing more: {v}");
    }
    for (service, topic) in topics {
        let name = format!("{service}/{topic}");
        let seen = got.get(&name).cloned().unwrap_or_default();
        let mut sorted = seen.clone();
        sorted.sort_unstable();
        let repeated = sorted.len() - {
            let mut d = sorted.clone();
            d.dedup();
            d.len()
        };
        sorted.dedup();
        let missing: Vec<i64> = (1..=N)
            .filter(|i| sorted.binary_search(i).is_err())
            .collect();
        assert!(
            missing.is_empty() && repeated == 0,
            "{name}: {} missing {missing:?}, {repeated} repeated",
            missing.len()
        );
        assert!(
            seen.windows(2).all(|w| w[0] < w[1]),
            "{name}: out of order: {seen:?}"
        );
    }
    let (mut replayed, mut skipped) = (0, 0);
    for h in &hubs {
        let status: Value = serde_json::from_str(&h.get("/status.json").await).expect("json");
        replayed += status["cluster"]["topic_messages_replayed"]
            .as_u64()
            .expect("replayed");
        skipped += status["cluster"]["topic_messages_skipped"]
            .as_u64()
            .expect("skipped");
    }
    eprintln!("3 moves under 3 x {N} publications: {replayed} replayed, {skipped} skipped");
}

/// A subscriber whose session moves keeps its subscriptions: to a topic of its old hub's
/// provider (then remote), and back to the provider's hub (then local again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_move_with_a_session_to_another_hub_and_back() {
    let nats = NatsServer::start();
    let [a, b, _c] = three(&nats).await;
    let (mut p, _) = a.join("newsroom").await;
    p.send(json!({"type":"provide","service":"news","methods":["ask"],"req":1}))
        .await;
    assert_eq!(p.recv_type("ok").await["req"], 1);
    for (req, topic) in [(2, "sport"), (3, "weather")] {
        p.send(json!({"type":"create_topic","topic":topic,"req":req}))
            .await;
        assert_eq!(p.recv_type("ok").await["req"], req);
    }
    let mut r = Raw::connect(&a.url("")).await;
    let w = r.hello(json!({"id": "reader", "resume": true})).await;
    let secret = w["secret"].clone();
    subscribe_sport(&mut r).await;
    r.send(json!({"type":"subscribe","service":"news","topic":"weather","req":7}))
        .await;
    assert_eq!(r.recv_type("ok").await["req"], 7);
    // Wait until hub-b knows the topics, so the move finds them offered there.
    let (mut probe, _) = b.join("probe").await;
    subscribe_sport(&mut probe).await;
    let mut n = 0;
    for (hub, name) in [(&b, "hub-b"), (&a, "hub-a")] {
        let last = r.last_seq;
        drop(r);
        r = resume_on(hub, "reader", &secret, last).await.0;
        n += 1;
        p.send(json!({"type":"publish","topic":"sport","data":n,"req":100 + n}))
            .await;
        let v = r.recv_type("publication").await;
        assert_eq!(
            (&v["topic"], &v["data"]),
            (&json!("sport"), &json!(n)),
            "on {name}: {v}"
        );
        if name == "hub-b" {
            // The weather topic ends while the reader is on hub-b: it is told there (the
            // subscription moved with it).
            p.send(json!({"type":"destroy_topic","topic":"weather","req":50}))
                .await;
            let v = r.recv_type("topic_ended").await;
            assert_eq!(v["topic"], "weather", "{v}");
        }
    }
    // Subscribed once on hub-a again: one publication, one delivery.
    p.send(json!({"type":"publish","topic":"sport","data":"last","req":200}))
        .await;
    assert_eq!(r.recv_type("publication").await["data"], "last");
    if let Some(v) = r.try_recv(Duration::from_millis(300)).await {
        panic!("nothing more: {v}");
    }
}

/// Sends `frames` back to back in one write, reading nothing in between: the hub has them all
/// before it can have answered any.
async fn burst(c: &mut Raw, frames: &[Value]) {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    for f in frames {
        let msg = if c.msgpack {
            Message::Binary(rmp_serde::to_vec_named(f).expect("msgpack").into())
        } else {
            Message::Text(f.to_string().into())
        };
        c.ws.feed(msg).await.expect("a frame queued");
    }
    c.ws.flush().await.expect("the burst written");
}

/// What a session operation of a burst should produce: the event, the object, its new value.
type Expected = (&'static str, String, Option<Value>);

/// Seven operations on objects `<p>-1` and `<p>-2` of session `session` with reqs `req..`,
/// each depending on the one before (applied in another order, one of them fails), and the
/// events they make.
fn dependent_ops(session: &str, p: &str, req: u64) -> (Vec<Value>, Vec<Expected>) {
    let (o1, o2) = (format!("{p}-1"), format!("{p}-2"));
    let ops = vec![
        json!({"op":"create","object":o1,"data":{"n":0}}),
        json!({"op":"patch","object":o1,"data":{"n":1}}),
        json!({"op":"update","object":o1,"data":{"n":2}}),
        json!({"op":"create","object":o2,"data":"x"}),
        json!({"op":"delete","object":o2}),
        json!({"op":"create","object":o2,"data":"y"}),
        json!({"op":"transfer","object":o1}),
    ];
    let frames = ops
        .into_iter()
        .zip(req..)
        .map(|(mut op, req)| {
            op["type"] = json!("session_op");
            op["session"] = json!(session);
            op["req"] = json!(req);
            op
        })
        .collect();
    let events = vec![
        ("created", o1.clone(), Some(json!({"n":0}))),
        ("updated", o1.clone(), Some(json!({"n":1}))),
        ("updated", o1.clone(), Some(json!({"n":2}))),
        ("created", o2.clone(), Some(json!("x"))),
        ("deleted", o2.clone(), None),
        ("created", o2, Some(json!("y"))),
        ("transferred", o1, None),
    ];
    (frames, events)
}

/// Checks that `event` is `want` by `by`.
fn check_event(event: &Value, want: &Expected, by: &str) {
    let (kind, object, data) = want;
    assert_eq!(
        (
            &event["type"],
            &event["event"],
            &event["object"],
            &event["by"]
        ),
        (
            &json!("session_event"),
            &json!(kind),
            &json!(object),
            &json!(by)
        ),
        "expected {kind} {object} by {by}, got {event}"
    );
    if let Some(data) = data {
        assert_eq!(&event["data"], data, "{event}");
    }
}

/// The actor of a burst: its next frames are exactly, for each operation, its event and the
/// `ok` of its req (from `req` on). Returns the events' revisions.
async fn actor_sees(c: &mut Raw, by: &str, want: &[Expected], req: u64) -> Vec<u64> {
    let mut revs = Vec::new();
    for (w, req) in want.iter().zip(req..) {
        let e = c.recv().await;
        check_event(&e, w, by);
        revs.push(e["rev"].as_u64().expect("a rev"));
        assert_eq!(
            c.recv().await,
            json!({"seq": c.last_seq, "type": "ok", "req": req}),
            "the ok of operation {req}"
        );
    }
    revs
}

/// Another member: its next session events are the burst's, with the same revisions.
async fn member_sees(c: &mut Raw, by: &str, want: &[Expected], revs: &[u64]) {
    for (w, rev) in want.iter().zip(revs) {
        let e = session_event(c).await;
        check_event(&e, w, by);
        assert_eq!(e["rev"], *rev, "{e}");
    }
}

/// The next frame of `c` is the snapshot answering `req`, with roster `members`.
async fn snapshot_of(c: &mut Raw, req: u64, members: &[&str]) -> Value {
    let s = c.recv().await;
    assert_eq!(
        (&s["type"], &s["req"], &s["more"]),
        (&json!("session_state"), &json!(req), &json!(false)),
        "the join's snapshot first, got {s}"
    );
    assert_eq!(roster(&s), members, "{s}");
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_sent_right_behind_a_session_join_are_applied_in_order_on_any_hub() {
    let nats = NatsServer::start();
    let [a, b, c] = three(&nats).await;
    let (mut alice, _) = a.join("alice").await;
    join_session(&mut alice, "game", 1).await;
    let (mut bob, _) = b.join_msgpack("bob").await;

    // 1. The session lives on hub-a; bob, on hub-b, joins it and operates in one burst. NATS
    // is frozen meanwhile, so hub-b is still asking the registry where the session lives
    // when the operations arrive; a frame for another session and a ping are answered at once.
    let join = json!({"type":"session_join","session":"game","req":1});
    let (ops, want) = dependent_ops("game", "b", 2);
    let other =
        json!({"type":"session_op","session":"elsewhere","op":"delete","object":"x","req":90});
    let ping = json!({"type":"ping","req":91});
    nats.freeze();
    burst(&mut bob, &[vec![join], ops, vec![other, ping]].concat()).await;
    let e = bob.recv().await;
    assert_eq!(
        (&e["type"], &e["code"], &e["req"]),
        (&json!("error"), &json!("unknown_session"), &json!(90)),
        "only the frame for another session is answered while the join waits: {e}"
    );
    assert_eq!(bob.recv().await["type"], "pong");
    nats.thaw();
    snapshot_of(&mut bob, 1, &["alice", "bob"]).await;
    let revs = actor_sees(&mut bob, "bob", &want, 2).await;
    let e = session_event(&mut alice).await;
    assert_eq!(
        (&e["event"], &e["member"]),
        (&json!("member_joined"), &json!("bob"))
    );
    member_sees(&mut alice, "bob", &want, &revs).await;

    // 2. bob creates a session on hub-b in the same burst as its operations (hub-b wins the
    // claim while they wait).
    let join = json!({"type":"session_join","session":"fresh","req":11});
    let (ops, want) = dependent_ops("fresh", "f", 12);
    nats.freeze();
    burst(
        &mut bob,
        &[vec![join], ops, vec![json!({"type":"ping","req":92})]].concat(),
    )
    .await;
    assert_eq!(bob.recv().await["type"], "pong");
    nats.thaw();
    snapshot_of(&mut bob, 11, &["bob"]).await;
    actor_sees(&mut bob, "bob", &want, 12).await;

    // 3. dave, on hub-c, joins it; then carol, also on hub-c, joins and operates in one burst
    // and leaves at its end. Hub-c knows the session's home from dave's membership, so her
    // operations go there before her snapshot is back (NATS is frozen); her leave waits for
    // the snapshot.
    let (mut dave, _) = c.join("dave").await;
    join_session(&mut dave, "fresh", 1).await;
    assert_eq!(session_event(&mut bob).await["member"], "dave");
    let (mut carol, _) = c.join("carol").await;
    let join = json!({"type":"session_join","session":"fresh","req":1});
    let (ops, want) = dependent_ops("fresh", "c", 2);
    let leave = json!({"type":"session_leave","session":"fresh","req":9});
    nats.freeze();
    burst(
        &mut carol,
        &[
            vec![join],
            ops,
            vec![leave, json!({"type":"ping","req":10})],
        ]
        .concat(),
    )
    .await;
    assert_eq!(carol.recv().await["type"], "pong");
    nats.thaw();
    snapshot_of(&mut carol, 1, &["bob", "dave", "carol"]).await;
    let revs = actor_sees(&mut carol, "carol", &want, 2).await;
    assert_eq!(carol.recv().await["req"], 9, "the leave's ok");
    for m in [&mut bob, &mut dave] {
        let e = session_event(m).await;
        assert_eq!(
            (&e["event"], &e["member"]),
            (&json!("member_joined"), &json!("carol"))
        );
        member_sees(m, "carol", &want, &revs).await;
        // Her leave: her object c-2 goes to the authority (c-1 has no owner since the
        // transfer), then she is gone.
        let e = session_event(m).await;
        assert_eq!(
            (&e["event"], &e["object"], &e["owner"]),
            (&json!("transferred"), &json!("c-2"), &json!("bob")),
            "{e}"
        );
        let e = session_event(m).await;
        assert_eq!(
            (&e["event"], &e["member"]),
            (&json!("member_left"), &json!("carol")),
            "{e}"
        );
    }
    // Hub-c does not count her as a member: dave's next event does not reach her, and her
    // operations are refused as a non-member's.
    dave.send(
        json!({"type":"session_op","session":"fresh","op":"create","object":"d","data":1,"req":2}),
    )
    .await;
    assert_eq!(session_event(&mut dave).await["object"], "d");
    carol.send(json!({"type":"ping","req":11})).await;
    assert_eq!(
        carol.recv().await["type"],
        "pong",
        "nothing of the session after her leave"
    );
    carol
        .send(json!({"type":"session_op","session":"fresh","op":"delete","object":"d","req":12}))
        .await;
    let e = carol.recv().await;
    assert_eq!(
        (&e["code"], &e["req"]),
        (&json!("unknown_session"), &json!(12)),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_beyond_the_frames_a_join_holds_is_refused_for_the_excess_only() {
    const HELD: usize = 256;
    const SENT: usize = 300;
    let nats = NatsServer::start();
    let [a, b, _c] = three(&nats).await;
    let (mut alice, _) = a.join("alice").await;
    join_session(&mut alice, "crowd", 1).await;
    let (mut bob, _) = b.join("bob").await;

    let mut frames = vec![json!({"type":"session_join","session":"crowd","req":1})];
    frames.extend((0..SENT).map(|i| {
        json!({"type":"session_op","session":"crowd","op":"create","object":format!("o-{i}"),"data":i,"req":i + 2})
    }));
    frames.push(json!({"type":"ping","req":1000}));
    nats.freeze();
    burst(&mut bob, &frames).await;
    // While the join waits for the registry, the first 256 operations wait with it; the rest
    // are refused at once, each with its req.
    for i in HELD..SENT {
        let e = bob.recv().await;
        assert_eq!(
            (&e["type"], &e["code"], &e["req"]),
            (&json!("error"), &json!("rate_limited"), &json!(i + 2)),
            "{e}"
        );
    }
    assert_eq!(bob.recv().await["type"], "pong");
    nats.thaw();
    snapshot_of(&mut bob, 1, &["alice", "bob"]).await;
    let want: Vec<Expected> = (0..HELD)
        .map(|i| ("created", format!("o-{i}"), Some(json!(i))))
        .collect();
    let revs = actor_sees(&mut bob, "bob", &want, 2).await;
    assert_eq!(session_event(&mut alice).await["member"], "bob");
    member_sees(&mut alice, "bob", &want, &revs).await;
    // The refused ones changed nothing: the first of them can be made now.
    bob.send(json!({"type":"session_op","session":"crowd","op":"create","object":format!("o-{HELD}"),"data":0,"req":2000}))
        .await;
    check_event(
        &bob.recv().await,
        &("created", format!("o-{HELD}"), None),
        "bob",
    );
    assert_eq!(bob.recv().await["req"], 2000);

    // The frames held behind a join are bounded in bytes too (4 MiB): of five operations of
    // 900 kB each, four are held (and then refused by the home: each value is larger than an
    // object may be), the fifth is refused at once.
    join_session(&mut alice, "heavy", 2).await;
    let big = "x".repeat(900_000);
    let mut frames = vec![json!({"type":"session_join","session":"heavy","req":1})];
    frames.extend((0..5).map(|i| {
        json!({"type":"session_op","session":"heavy","op":"create","object":format!("big-{i}"),"data":big,"req":i + 2})
    }));
    nats.freeze();
    burst(&mut bob, &frames).await;
    let e = bob.recv().await;
    assert_eq!(
        (&e["type"], &e["code"], &e["req"]),
        (&json!("error"), &json!("rate_limited"), &json!(6)),
        "{e}"
    );
    nats.thaw();
    snapshot_of(&mut bob, 1, &["alice", "bob"]).await;
    for req in 2..6 {
        let e = bob.recv().await;
        assert_eq!(
            (&e["code"], &e["req"]),
            (&json!("object_too_large"), &json!(req)),
            "{e}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_the_registry_cannot_resolve_fails_with_every_frame_behind_it() {
    let mut nats = NatsServer::start();
    let b = hub(&nats, "hub-b").await;
    let (mut bob, _) = b.join("bob").await;
    let (ops, _) = dependent_ops("lost", "b", 2);
    let join = json!({"type":"session_join","session":"lost","req":1});
    nats.freeze();
    burst(
        &mut bob,
        &[vec![join], ops, vec![json!({"type":"ping","req":20})]].concat(),
    )
    .await;
    assert_eq!(bob.recv().await["type"], "pong");
    // The claim of the session's name was sent; NATS dies before answering it. When the
    // request gives up (its timeout: about 10 s in all), the join and each operation behind
    // it fail with cluster_unavailable, in order, and the connection stays open.
    nats.kill();
    for req in 1..=8 {
        let e = bob
            .try_recv(Duration::from_secs(20))
            .await
            .expect("an answer once the claim gives up");
        assert_eq!(
            (&e["type"], &e["code"], &e["req"]),
            (&json!("error"), &json!("cluster_unavailable"), &json!(req)),
            "{e}"
        );
    }
    bob.send(json!({"type":"ping","req":21})).await;
    assert_eq!(bob.recv().await["type"], "pong");
}

/// A topic created on one hub can be subscribed to from another right away: a new offer is
/// advertised at once, not at the next once-a-second heartbeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_topic_is_offered_to_other_hubs_at_once() {
    let nats = NatsServer::start();
    let [a, b, _c] = three(&nats).await;
    let (mut p, _) = a.join("newsroom").await;
    p.send(json!({"type":"provide","service":"news","methods":["ask"],"req":1}))
        .await;
    assert_eq!(p.recv_type("ok").await["req"], 1);
    let (mut r, _) = b.join("reader").await;
    let mut req = 10;
    for k in 0..5 {
        let topic = format!("t{k}");
        p.send(json!({"type":"create_topic","topic":topic,"req":100 + k}))
            .await;
        assert_eq!(p.recv_type("ok").await["req"], 100 + k);
        let took = until(
            "the topic offered on hub-b",
            Duration::from_secs(5),
            async || {
                req += 1;
                r.send(json!({"type":"subscribe","service":"news","topic":topic,"req":req}))
                    .await;
                let v = r.recv().await;
                assert_eq!(v["req"], req, "{v}");
                v["type"] == "ok"
            },
        )
        .await;
        // Before, up to a heartbeat (1 s); now a NATS hop.
        assert!(took < Duration::from_millis(300), "topic {topic}: {took:?}");
    }
}

/// Reads `c`'s frames until one satisfies `done` (within `limit`), returning them all.
async fn frames_until(c: &mut Raw, limit: Duration, done: impl Fn(&Value) -> bool) -> Vec<Value> {
    let start = Instant::now();
    let mut seen = Vec::new();
    loop {
        assert!(
            start.elapsed() < limit,
            "not within {limit:?}; saw {seen:?}"
        );
        if let Some(v) = c.try_recv(Duration::from_millis(200)).await {
            let last = done(&v);
            seen.push(v);
            if last {
                return seen;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_cut_off_while_another_took_its_session_over_sends_its_members_there() {
    let nats = NatsServer::start();
    let upstream = std::net::SocketAddr::from(([127, 0, 0, 1], nats.port()));
    let proxy = peermesh_testkit::FaultProxy::start(upstream, None)
        .await
        .expect("proxy");
    let a = TestHub::start(HubConfig {
        cluster: Some(format!("nats://{}", proxy.addr())),
        node_name: Some("hub-a".into()),
        ..HubConfig::default()
    })
    .await;
    let (b, c) = tokio::join!(hub(&nats, "hub-b"), hub(&nats, "hub-c"));
    let (mut alice, _) = a.join("alice").await;
    join_session(&mut alice, "game", 1).await;
    let (mut bob, _) = b.join("bob").await;
    join_session(&mut bob, "game", 1).await;
    let (mut carol, _) = c.join("carol").await;
    join_session(&mut carol, "game", 1).await;
    let joined = |v: &Value| v["type"] == "session_event" && v["member"] == "carol";
    frames_until(&mut alice, Duration::from_secs(5), joined).await;
    frames_until(&mut bob, Duration::from_secs(5), joined).await;

    // hub-a loses NATS for 7 s: hub-b and hub-c count it dead after 5 s, and one of them
    // takes the session over; alice, whose id was released with her hub, leaves it there.
    proxy.cut(Duration::from_secs(7));
    let cut = Instant::now();
    let gone = |v: &Value| {
        (v["type"] == "session_event" && v["event"] == "member_left" && v["member"] == "alice")
            || (v["type"] == "session_state" && !roster(v).contains(&"alice".to_owned()))
    };
    frames_until(&mut bob, Duration::from_secs(12), gone).await;
    frames_until(&mut carol, Duration::from_secs(12), gone).await;
    eprintln!(
        "alice gone from the session {:?} after the cut",
        cut.elapsed()
    );

    // hub-a comes back. The registry says another hub holds the session: hub-a hands it
    // over, and alice joins it there (a fresh snapshot with everyone).
    let back = frames_until(&mut alice, Duration::from_secs(25), |v| {
        v["type"] == "session_state" && roster(v).len() == 3
    })
    .await;
    let s = back.last().cloned().unwrap_or_default();
    assert_eq!(s["req"], Value::Null, "{s}");
    eprintln!(
        "alice back in the session {:?} after the cut",
        cut.elapsed()
    );
    for m in [&mut bob, &mut carol] {
        frames_until(m, Duration::from_secs(5), |v| {
            v["type"] == "session_event" && v["event"] == "member_joined" && v["member"] == "alice"
        })
        .await;
    }
    // One session, one order again.
    alice
        .send(json!({"type":"session_op","session":"game","op":"create","object":"x","data":1,"req":9}))
        .await;
    let created = |v: &Value| v["type"] == "session_event" && v["object"] == "x";
    let at_bob = frames_until(&mut bob, Duration::from_secs(5), created).await;
    let at_carol = frames_until(&mut carol, Duration::from_secs(5), created).await;
    let at_alice = frames_until(&mut alice, Duration::from_secs(5), created).await;
    let rev = |seen: &[Value]| seen.last().map(|v| v["rev"].clone());
    assert_eq!(rev(&at_bob), rev(&at_carol));
    assert_eq!(rev(&at_bob), rev(&at_alice));
    assert_eq!(alice.recv_type("ok").await["req"], 9);
    let status: Value = serde_json::from_str(&a.get("/status.json").await).expect("json");
    assert_eq!(status["cluster"]["sessions_handed_over"], 1, "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_nats_restart_members_elsewhere_are_resynced_and_the_session_can_still_outlive_its_home(
) {
    let mut nats = NatsServer::start();
    let [a, b, _c] = three(&nats).await;
    let (mut alice, _) = a.join("alice").await;
    join_session(&mut alice, "game", 1).await;
    let (mut bob, _) = b.join("bob").await;
    join_session(&mut bob, "game", 1).await;
    frames_until(&mut alice, Duration::from_secs(5), |v| {
        v["type"] == "session_event" && v["member"] == "bob"
    })
    .await;

    // hub-b mirrors the session it has a member of (ready to take it over).
    let status: Value = serde_json::from_str(&b.get("/status.json").await).expect("json");
    let counts = |st: &Value| {
        (
            st["cluster"]["sessions_elsewhere"].clone(),
            st["cluster"]["sessions_mirrored"].clone(),
        )
    };
    assert_eq!(counts(&status), (json!(1), json!(1)), "{status}");

    // NATS restarts: events may have been lost on the way to hub-b, so bob gets the
    // session's state again once hub-b is back (a resync, without `req`).
    nats.restart();
    let restarted = Instant::now();
    let seen = frames_until(&mut bob, Duration::from_secs(20), |v| {
        v["type"] == "session_state"
    })
    .await;
    let s = seen.last().cloned().unwrap_or_default();
    eprintln!("bob resynced {:?} after the restart", restarted.elapsed());
    assert_eq!(
        (&s["req"], roster(&s)),
        (&Value::Null, vec!["alice".to_owned(), "bob".to_owned()]),
        "{s}"
    );
    // Events flow again, and hub-b's mirror is whole: the session outlives hub-a.
    let status: Value = serde_json::from_str(&b.get("/status.json").await).expect("json");
    assert_eq!(counts(&status), (json!(1), json!(1)), "{status}");
    let metrics = b.get("/metrics").await;
    assert!(
        metrics.contains("peermesh_cluster_sessions_mirrored 1"),
        "{metrics}"
    );
    alice
        .send(json!({"type":"session_op","session":"game","op":"create","object":"o","data":1,"req":2}))
        .await;
    frames_until(&mut bob, Duration::from_secs(10), |v| {
        v["type"] == "session_event" && v["object"] == "o"
    })
    .await;
    a.handle.shutdown();
    frames_until(&mut bob, Duration::from_secs(15), |v| {
        v["type"] == "session_event" && v["event"] == "member_left" && v["member"] == "alice"
    })
    .await;
    until(
        "hub-b took the session over",
        Duration::from_secs(10),
        async || {
            let status: Value =
                serde_json::from_str(&b.get("/status.json").await).unwrap_or_default();
            status["cluster"]["sessions_taken_over"] == 1
        },
    )
    .await;
    bob.send(
        json!({"type":"session_op","session":"game","op":"update","object":"o","data":2,"req":3}),
    )
    .await;
    assert_eq!(bob.recv_type("ok").await["req"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_moving_hubs_while_its_sessions_home_is_dying_follows_the_session() {
    let nats = NatsServer::start();
    let upstream = std::net::SocketAddr::from(([127, 0, 0, 1], nats.port()));
    let proxy = peermesh_testkit::FaultProxy::start(upstream, None)
        .await
        .expect("proxy");
    let a = TestHub::start(HubConfig {
        cluster: Some(format!("nats://{}", proxy.addr())),
        node_name: Some("hub-a".into()),
        ..HubConfig::default()
    })
    .await;
    let (b, c) = tokio::join!(hub(&nats, "hub-b"), hub(&nats, "hub-c"));
    let (mut alice, _) = a.join("alice").await;
    join_session(&mut alice, "game", 1).await;
    let (mut carol, _) = b.join("carol").await;
    join_session(&mut carol, "game", 1).await;
    let mut bob = Raw::connect(&b.url("")).await;
    let w = bob.hello(json!({"id": "bob", "resume": true})).await;
    let secret = w["secret"].clone();
    join_session(&mut bob, "game", 1).await;
    frames_until(&mut carol, Duration::from_secs(5), |v| {
        v["type"] == "session_event" && v["member"] == "bob"
    })
    .await;

    // hub-a, the session's home, is cut off for good (as good as dead). Before the others
    // notice, bob's connection moves from hub-b to hub-c: hub-c asks the silent hub-a for
    // his snapshot, which never comes.
    proxy.cut(Duration::from_secs(60));
    let last = bob.last_seq;
    drop(bob);
    let (mut bob, _) = resume_on(&c, "bob", &secret, last).await;

    // hub-b takes the session over (carol is there); hub-c follows it there with bob, who
    // gets the session's state: a resync, not silence.
    let s = frames_until(&mut bob, Duration::from_secs(15), |v| {
        v["type"] == "session_state"
    })
    .await
    .pop()
    .unwrap_or_default();
    assert_eq!(s["req"], Value::Null, "{s}");
    assert_eq!(roster(&s), ["carol", "bob"], "{s}");
    carol
        .send(json!({"type":"session_op","session":"game","op":"create","object":"o","data":1,"req":2}))
        .await;
    frames_until(&mut bob, Duration::from_secs(5), |v| {
        v["type"] == "session_event" && v["object"] == "o"
    })
    .await;
    // Well past the 10 s the new home waits for confirmations, bob is still a member.
    tokio::time::sleep(Duration::from_secs(11)).await;
    bob.send(
        json!({"type":"session_op","session":"game","op":"update","object":"o","data":2,"req":3}),
    )
    .await;
    let e = frames_until(&mut bob, Duration::from_secs(5), |v| v["req"] == 3).await;
    let last = e.last().cloned().unwrap_or_default();
    assert_eq!(
        last["type"], "error",
        "bob cannot update carol's object, but is a member: {last}"
    );
    assert_eq!(last["code"], "not_owner", "{last}");
    drop(a);
}

/// A member of a session held on hub-a owns more objects than a connection's queue holds
/// frames on hub-b; it leaves. Its leave (one event per object) crosses to hub-b in a few
/// burst messages, and both members there get every event in order and stay connected; hub-b's
/// mirror stays whole. Before, hub-a published one message per event and hub-b cut both
/// members off as slow consumers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leave_with_more_events_than_a_members_queue_holds_crosses_hubs_whole() {
    let nats = NatsServer::start();
    let a = hub(&nats, "hub-a").await;
    let b = TestHub::start(HubConfig {
        cluster: Some(nats.url()),
        node_name: Some("hub-b".into()),
        outbound_queue_frames: 64,
        ..HubConfig::default()
    })
    .await;
    let (mut alice, _) = a.join("alice").await;
    join_session(&mut alice, "big", 1).await;
    const OBJECTS: u64 = 500;
    for i in 0..OBJECTS {
        alice
            .send(json!({"type":"session_op","session":"big","op":"create","object":format!("o{i}"),"data":i,"req":10 + i}))
            .await;
    }
    frames_until(&mut alice, Duration::from_secs(10), |v| {
        v["type"] == "ok" && v["req"] == 10 + OBJECTS - 1
    })
    .await;
    let mut members = Vec::new();
    for id in ["bob", "carol"] {
        let (mut c, _) = b.join(id).await;
        c.send(json!({"type":"session_join","session":"big","req":1}))
            .await;
        let mut objects = 0;
        loop {
            let v = c.recv().await;
            if v["type"] == "session_state" {
                objects += v["objects"].as_array().map_or(0, Vec::len);
                if v["more"] == false {
                    break;
                }
            }
        }
        assert_eq!(objects, OBJECTS as usize);
        members.push(c);
    }
    let sent = |st: &Value| st["cluster"]["sent"].as_u64().unwrap_or(0);
    let before: Value = serde_json::from_str(&a.get("/status.json").await).expect("json");
    alice
        .send(json!({"type":"session_leave","session":"big","req":2}))
        .await;
    for c in members.iter_mut() {
        let events = frames_until(c, Duration::from_secs(10), |v| {
            v["type"] == "session_event" && v["event"] == "member_left"
        })
        .await;
        let events: Vec<&Value> = events
            .iter()
            .filter(|v| v["type"] == "session_event")
            .collect();
        // carol's join came after bob's: bob saw it first.
        let events: Vec<&Value> = events
            .into_iter()
            .filter(|v| v["event"] != "member_joined")
            .collect();
        assert_eq!(
            events.len() as u64,
            OBJECTS + 2,
            "authority, transfers, departure"
        );
        assert_eq!(events[0]["event"], "authority", "{}", events[0]);
        assert!(events[1..=OBJECTS as usize]
            .iter()
            .all(|e| e["event"] == "transferred" && e["owner"] == "bob"));
        assert!(events
            .windows(2)
            .all(|w| w[1]["rev"].as_u64() == w[0]["rev"].as_u64().map(|r| r + 1)));
        // Still connected.
        c.send(json!({"type":"ping","req":99})).await;
        frames_until(c, Duration::from_secs(5), |v| v["type"] == "pong").await;
    }
    let after: Value = serde_json::from_str(&a.get("/status.json").await).expect("json");
    let messages = sent(&after) - sent(&before);
    assert!(
        messages < 20,
        "{messages} messages from hub-a for a leave of {OBJECTS} objects"
    );
    let status: Value = serde_json::from_str(&b.get("/status.json").await).expect("json");
    assert_eq!(
        status["cluster"]["sessions_mirrored"], 1,
        "hub-b's mirror is whole: {status}"
    );
    drop(nats);
}

/// A busy session's events cross hubs batched, and in order: alice (on the session's hub)
/// sends 1,000 updates back to back while bob (on hub-b) sends 50 of his own. Bob gets every
/// event once, in revision order, and each `ok` of his after the event of his operation, as on
/// one hub (the answers to him join the batch of events ahead of them); hub-a publishes far
/// fewer NATS messages than events. Before batching, every event was a NATS message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_sessions_events_cross_hubs_batched_and_in_order() {
    let nats = NatsServer::start();
    let (a, b) = tokio::join!(hub(&nats, "hub-a"), hub(&nats, "hub-b"));
    let (mut alice, _) = a.join("alice").await;
    let (mut bob, _) = b.join("bob").await;
    join_session(&mut alice, "busy", 1).await;
    alice
        .send(json!({"type":"session_op","session":"busy","op":"create","object":"a","data":0,"req":2}))
        .await;
    frames_until(&mut alice, Duration::from_secs(5), |v| v["req"] == 2).await;
    join_session(&mut bob, "busy", 1).await;
    bob.send(
        json!({"type":"session_op","session":"busy","op":"create","object":"b","data":0,"req":2}),
    )
    .await;
    let start = frames_until(&mut bob, Duration::from_secs(5), |v| v["req"] == 2).await;
    let first_rev = start
        .iter()
        .rev()
        .find(|v| v["type"] == "session_event")
        .and_then(|v| v["rev"].as_u64())
        .expect("bob saw his create");
    let sent = |st: &Value| st["cluster"]["sent"].as_u64().unwrap_or(0);
    let before: Value = serde_json::from_str(&a.get("/status.json").await).expect("json");
    const ALICE: u64 = 1000;
    const BOB: u64 = 50;
    let alice_sends = async {
        for i in 0..ALICE {
            alice
                .send(json!({"type":"session_op","session":"busy","op":"update","object":"a","data":i,"req":100 + i}))
                .await;
        }
    };
    let bob_sends = async {
        for i in 0..BOB {
            bob.send(json!({"type":"session_op","session":"busy","op":"update","object":"b","data":i,"req":100 + i}))
                .await;
        }
    };
    tokio::join!(alice_sends, bob_sends);
    let last_rev = first_rev + ALICE + BOB;
    let seen = frames_until(&mut bob, Duration::from_secs(20), |v| {
        v["type"] == "session_event" && v["rev"] == last_rev
    })
    .await;
    let mut rev = first_rev;
    let (mut own_events, mut oks) = (0u64, 0u64);
    for v in &seen {
        match v["type"].as_str() {
            Some("session_event") => {
                rev += 1;
                assert_eq!(v["rev"].as_u64(), Some(rev), "no gap, no duplicate: {v}");
                if v["by"] == "bob" {
                    own_events += 1;
                }
            }
            Some("ok") => {
                oks += 1;
                assert!(
                    oks <= own_events,
                    "bob's ok {} came before the event of his operation",
                    v["req"]
                );
            }
            _ => panic!("unexpected frame {v}"),
        }
    }
    assert_eq!(own_events, BOB);
    let after: Value = serde_json::from_str(&a.get("/status.json").await).expect("json");
    let messages = sent(&after) - sent(&before);
    assert!(
        messages < ALICE / 2,
        "hub-a published {messages} NATS messages for {} events and {BOB} answers",
        ALICE + BOB
    );
    // /status.json counts the batches and what went in them.
    let count = |st: &Value, k: &str| st["cluster"][k].as_u64().unwrap_or(0);
    let batched = count(&after, "batched_messages") - count(&before, "batched_messages");
    assert!(
        count(&after, "batches") > count(&before, "batches"),
        "{after}"
    );
    assert!(
        batched >= ALICE / 2,
        "only {batched} of {} messages went in batches",
        ALICE + BOB
    );
    let metrics = a.get("/metrics").await;
    assert!(
        metrics.contains("peermesh_cluster_batched_messages_total"),
        "{metrics}"
    );
    drop(nats);
}

/// A session's snapshot is larger than the outbound queue of a member's hub allows: a member
/// joining there gets it whole, as on the session's own hub, and stays connected. Before, the
/// relayed chunks went through the queue's limits and the joiner was cut off as a slow
/// consumer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_larger_than_a_members_queue_reaches_a_joiner_on_another_hub_whole() {
    let nats = NatsServer::start();
    let a = hub(&nats, "hub-a").await;
    let b = TestHub::start(HubConfig {
        cluster: Some(nats.url()),
        node_name: Some("hub-b".into()),
        max_frame_bytes: 16 << 10,
        outbound_queue_bytes: 64 << 10,
        ..HubConfig::default()
    })
    .await;
    let (mut alice, _) = a.join("alice").await;
    join_session(&mut alice, "wide", 1).await;
    const OBJECTS: u64 = 600;
    let pad = "x".repeat(400);
    for i in 0..OBJECTS {
        alice
            .send(json!({"type":"session_op","session":"wide","op":"create","object":format!("o{i}"),"data":{"i":i,"pad":pad},"req":10 + i}))
            .await;
    }
    frames_until(&mut alice, Duration::from_secs(10), |v| {
        v["type"] == "ok" && v["req"] == 10 + OBJECTS - 1
    })
    .await;
    // About 250 KiB of state: four times what hub-b queues for one connection.
    let (mut bob, _) = b.join("bob").await;
    bob.send(json!({"type":"session_join","session":"wide","req":1}))
        .await;
    let mut objects = 0;
    loop {
        let v = bob.recv().await;
        assert_ne!(v["type"], "error", "{v}");
        if v["type"] == "session_state" {
            objects += v["objects"].as_array().map_or(0, Vec::len);
            if v["more"] == false {
                break;
            }
        }
    }
    assert_eq!(objects, OBJECTS as usize);
    bob.send(json!({"type":"ping","req":99})).await;
    frames_until(&mut bob, Duration::from_secs(5), |v| v["type"] == "pong").await;
    drop(nats);
}
