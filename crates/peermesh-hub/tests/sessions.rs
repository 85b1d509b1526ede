//! Sessions at the wire level: membership, authority and epochs, ownership rules, merge
//! patches, late join under load (snapshot then events with no gap or duplicate), owner
//! and authority leaving, and away/back through resume.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;

use common::{Raw, TestHub};
use peermesh_hub::HubConfig;
use serde_json::{json, Value};

/// A member's mirror of a session, built only from what the hub sent it.
#[derive(Debug, Default, PartialEq)]
struct Mirror {
    rev: u64,
    authority: Option<String>,
    epoch: u64,
    members: Vec<String>,
    objects: BTreeMap<String, (Value, Option<String>)>,
}

impl Mirror {
    /// Reads `session_state` chunks (the first one given) until the last.
    async fn from_state(c: &mut Raw, first: Value) -> Self {
        let mut m = Mirror {
            rev: first["rev"].as_u64().unwrap(),
            authority: first["authority"].as_str().map(str::to_owned),
            epoch: first["epoch"].as_u64().unwrap(),
            members: first["roster"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["id"].as_str().unwrap().to_owned())
                .collect(),
            objects: BTreeMap::new(),
        };
        let mut chunk = first;
        loop {
            for o in chunk["objects"].as_array().unwrap() {
                let owner = o["owner"].as_str().map(str::to_owned);
                m.objects.insert(
                    o["id"].as_str().unwrap().to_owned(),
                    (o["data"].clone(), owner),
                );
            }
            if chunk["more"] != true {
                return m;
            }
            chunk = c.recv_type("session_state").await;
            assert_eq!(chunk["rev"], m.rev, "every chunk has the same revision");
        }
    }

    fn apply(&mut self, e: &Value) {
        let rev = e["rev"].as_u64().unwrap();
        assert_eq!(rev, self.rev + 1, "no gap, no duplicate: {e}");
        self.rev = rev;
        let obj = || e["object"].as_str().unwrap().to_owned();
        let member = || e["member"].as_str().unwrap().to_owned();
        match e["event"].as_str().unwrap() {
            "member_joined" => self.members.push(member()),
            "member_left" => self.members.retain(|m| *m != member()),
            "member_away" | "member_back" => {}
            "authority" => {
                self.authority = e["member"].as_str().map(str::to_owned);
                let epoch = e["epoch"].as_u64().unwrap();
                assert!(epoch > self.epoch, "epochs grow");
                self.epoch = epoch;
            }
            "created" => {
                let owner = e["owner"].as_str().map(str::to_owned);
                self.objects.insert(obj(), (e["data"].clone(), owner));
            }
            "updated" => self.objects.get_mut(&obj()).unwrap().0 = e["data"].clone(),
            "deleted" => {
                self.objects.remove(&obj());
            }
            "transferred" => {
                self.objects.get_mut(&obj()).unwrap().1 = e["owner"].as_str().map(str::to_owned)
            }
            other => panic!("unknown event {other}"),
        }
    }
}

async fn join(hub: &TestHub, id: &str, session: &str) -> (Raw, Mirror) {
    let (mut c, _) = hub.join(id).await;
    c.send(json!({"type":"session_join","session":session,"req":1}))
        .await;
    let first = c.recv_type("session_state").await;
    assert_eq!(first["req"], 1, "{first}");
    let m = Mirror::from_state(&mut c, first).await;
    (c, m)
}

/// Next frame that answers `req` (events before it are applied to `m`).
async fn answer(c: &mut Raw, m: &mut Mirror, req: u64) -> Value {
    loop {
        let v = c.recv().await;
        if v["type"] == "session_event" {
            m.apply(&v);
        } else if v["req"] == req {
            return v;
        }
    }
}

async fn op(c: &mut Raw, m: &mut Mirror, req: u64, frame: Value) -> Value {
    let mut f = frame;
    f["type"] = json!("session_op");
    f["session"] = json!("g");
    f["req"] = json!(req);
    c.send(f).await;
    answer(c, m, req).await
}

#[tokio::test]
async fn authority_ownership_patches_and_errors() {
    let hub = TestHub::default().await;
    // alice joins in hello (after the hub measured her round trip).
    let mut alice = Raw::connect(&hub.url("")).await;
    let w = alice.hello(json!({"id":"alice","sessions":["g"]})).await;
    assert_eq!(w["type"], "welcome");
    let first = alice.recv_type("session_state").await;
    assert_eq!(first["roster"][0]["id"], "alice");
    assert!(first["roster"][0]["rtt_ms"].is_number(), "{first}");
    let mut a = Mirror::from_state(&mut alice, first).await;
    assert_eq!((a.authority.as_deref(), a.epoch), (Some("alice"), 1));

    let (mut bob, mut b) = join(&hub, "bob", "g").await;
    assert_eq!(b.members, ["alice", "bob"]);
    assert_eq!(b.authority.as_deref(), Some("alice"));

    let ok = op(
        &mut alice,
        &mut a,
        2,
        json!({"op":"create","object":"ball","data":{"x":1,"y":2}}),
    )
    .await;
    assert_eq!(ok["type"], "ok", "{ok}");
    let e = op(
        &mut bob,
        &mut b,
        2,
        json!({"op":"update","object":"ball","data":{"x":9}}),
    )
    .await;
    assert_eq!(e["code"], "not_owner", "{e}");
    assert!(e["message"].as_str().unwrap().contains("owner"));
    let e = op(&mut bob, &mut b, 3, json!({"op":"delete","object":"nope"})).await;
    assert_eq!(e["code"], "unknown_object");
    let e = op(
        &mut alice,
        &mut a,
        3,
        json!({"op":"create","object":"ball","data":1}),
    )
    .await;
    assert_eq!(e["code"], "object_exists");
    let e = op(&mut alice, &mut a, 4, json!({"op":"jump","object":"ball"})).await;
    assert_eq!(e["code"], "invalid_field");
    let e = op(
        &mut alice,
        &mut a,
        5,
        json!({"op":"transfer","object":"ball","to":"zed"}),
    )
    .await;
    assert_eq!(e["code"], "not_member");
    bob.send(json!({"type":"session_op","session":"other","op":"delete","object":"x","req":9}))
        .await;
    assert_eq!(answer(&mut bob, &mut b, 9).await["code"], "unknown_session");

    let ok = op(
        &mut alice,
        &mut a,
        6,
        json!({"op":"patch","object":"ball","data":{"y":null,"z":3}}),
    )
    .await;
    assert_eq!(ok["type"], "ok");
    assert_eq!(a.objects["ball"].0, json!({"x":1,"z":3}));
    let ok = op(
        &mut alice,
        &mut a,
        7,
        json!({"op":"transfer","object":"ball","to":"bob"}),
    )
    .await;
    assert_eq!(ok["type"], "ok");
    // bob catches up on the events, then may update.
    let ok = op(
        &mut bob,
        &mut b,
        10,
        json!({"op":"update","object":"ball","data":"bob's"}),
    )
    .await;
    assert_eq!(ok["type"], "ok", "{ok}");
    assert_eq!(b.objects["ball"], (json!("bob's"), Some("bob".into())));
    // Objects without owner belong to the authority: bob may not change them.
    op(
        &mut alice,
        &mut a,
        8,
        json!({"op":"create","object":"table","data":0,"owned":false}),
    )
    .await;
    let e = op(
        &mut bob,
        &mut b,
        11,
        json!({"op":"update","object":"table","data":1}),
    )
    .await;
    assert_eq!(e["code"], "not_owner");
    // alice's own object that goes with her.
    op(
        &mut alice,
        &mut a,
        9,
        json!({"op":"create","object":"hat","data":0,"on_owner_leave":"delete"}),
    )
    .await;
    op(
        &mut alice,
        &mut a,
        10,
        json!({"op":"create","object":"cup","data":0}),
    )
    .await;

    // alice leaves: bob becomes authority in epoch 2, gets "cup", "hat" is deleted.
    alice
        .send_raw(tokio_tungstenite::tungstenite::Message::Close(None))
        .await;
    bob.send(json!({"type":"ping","req":50})).await;
    let _ = answer(&mut bob, &mut b, 50).await;
    while b.members.len() != 1 {
        let v = bob.recv_type("session_event").await;
        b.apply(&v);
    }
    assert_eq!((b.authority.as_deref(), b.epoch), (Some("bob"), 2));
    assert!(!b.objects.contains_key("hat"));
    assert_eq!(b.objects["cup"].1.as_deref(), Some("bob"));
    let ok = op(
        &mut bob,
        &mut b,
        12,
        json!({"op":"update","object":"table","data":1}),
    )
    .await;
    assert_eq!(ok["type"], "ok", "the new authority owns what has no owner");
    // bob leaves: the session closes.
    bob.send(json!({"type":"session_leave","session":"g","req":13}))
        .await;
    assert_eq!(answer(&mut bob, &mut b, 13).await["type"], "ok");
    assert_eq!(hub.handle.session_stats().sessions, 0);
}

#[tokio::test]
async fn a_late_joiner_of_a_busy_session_sees_no_gap_and_no_duplicate() {
    let hub = TestHub::start(HubConfig {
        rate_per_sec: 1_000_000,
        rate_burst: 1_000_000,
        ..HubConfig::default()
    })
    .await;
    let (mut alice, mut a) = join(&hub, "alice", "g").await;
    // Write 3,000 operations without waiting; carol joins in the middle of them.
    let writer = tokio::spawn(async move {
        for i in 0..3_000u64 {
            let obj = format!("o{}", i % 500);
            let f = if i < 500 {
                json!({"type":"session_op","session":"g","op":"create","object":obj,"data":i})
            } else if i % 7 == 0 {
                json!({"type":"session_op","session":"g","op":"patch","object":obj,"data":{"n":i}})
            } else {
                json!({"type":"session_op","session":"g","op":"update","object":obj,"data":{"v":i}})
            };
            alice.send(f).await;
        }
        alice.send(json!({"type":"ping","req":77})).await;
        let _ = answer(&mut alice, &mut a, 77).await;
        (alice, a)
    });
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let (mut carol, mut c) = join(&hub, "carol", "g").await;
    let (_alice, a) = writer.await.unwrap();
    // carol catches up to alice's revision.
    while c.rev < a.rev {
        let v = carol.recv_type("session_event").await;
        c.apply(&v);
    }
    assert!(c.rev > 0);
    assert_eq!(c.objects, a.objects);
    assert_eq!(c.objects.len(), 500);
    // A late joiner after everything gets the same state in its snapshot.
    let (_dave, d) = join(&hub, "dave", "g").await;
    assert_eq!(d.objects, a.objects);
}

#[tokio::test]
async fn a_dropped_member_is_away_then_back_then_gone_when_its_window_ends() {
    let hub = TestHub::start(HubConfig {
        resume_grace_ms: 400,
        ..HubConfig::default()
    })
    .await;
    let (mut bob, mut b) = join(&hub, "bob", "g").await;
    let mut alice = Raw::connect(&hub.url("")).await;
    let w = alice
        .hello(json!({"id":"alice","resume":true,"sessions":["g"]}))
        .await;
    let secret = w["secret"].clone();
    let first = alice.recv_type("session_state").await;
    let mut a = Mirror::from_state(&mut alice, first).await;
    op(
        &mut alice,
        &mut a,
        1,
        json!({"op":"create","object":"o","data":1}),
    )
    .await;
    let last = alice.last_seq;
    drop(alice);
    let mut kinds = Vec::new();
    while !kinds.contains(&"member_away".to_string()) {
        let v = bob.recv_type("session_event").await;
        b.apply(&v);
        kinds.push(v["event"].as_str().unwrap().to_owned());
    }
    // She resumes: back, and the session goes on.
    let mut alice = Raw::connect(&hub.url("")).await;
    let w = alice
        .hello(json!({"id":"alice","resume":true,"secret":secret,"last_seq":last}))
        .await;
    assert_eq!(w["resumed"], true, "{w}");
    let v = bob.recv_type("session_event").await;
    b.apply(&v);
    assert_eq!(v["event"], "member_back");
    // She drops again and her window ends: gone, and her object goes to the authority (bob).
    drop(alice);
    while b.members.contains(&"alice".to_string()) {
        let v = bob.recv_type("session_event").await;
        b.apply(&v);
    }
    assert_eq!(b.objects["o"].1.as_deref(), Some("bob"));
}

/// A member owning more objects than a connection's outbound queue holds frames leaves: its
/// leave is one event per object, all queued at once. Every other member gets all of them in
/// order and stays connected (before, each was cut off as a slow consumer).
#[tokio::test]
async fn a_leave_with_more_events_than_the_outbound_queue_holds_reaches_every_member() {
    let hub = TestHub::start(HubConfig {
        outbound_queue_frames: 64,
        rate_per_sec: 1_000_000,
        rate_burst: 1_000_000,
        ..HubConfig::default()
    })
    .await;
    let (mut alice, mut a) = join(&hub, "alice", "g").await;
    for i in 0..300u64 {
        let r = op(
            &mut alice,
            &mut a,
            10 + i,
            json!({"op":"create","object":format!("o{i}"),"data":i}),
        )
        .await;
        assert_eq!(r["type"], "ok", "{r}");
    }
    let (mut bob, mut b) = join(&hub, "bob", "g").await;
    let (mut carol, mut c) = join(&hub, "carol", "g").await;
    assert_eq!(b.objects.len(), 300);
    alice
        .send(json!({"type":"session_leave","session":"g","req":1000}))
        .await;
    // bob and carol: a new authority, 300 transfers and alice's departure, then a pong.
    for (raw, m) in [(&mut bob, &mut b), (&mut carol, &mut c)] {
        raw.send(json!({"type":"ping","req":2000})).await;
        let pong = answer(raw, m, 2000).await;
        assert_eq!(pong["type"], "pong", "{pong}");
        while m.members.contains(&"alice".to_owned()) {
            let v = raw.recv_type("session_event").await;
            m.apply(&v);
        }
        assert_eq!(m.authority.as_deref(), Some("bob"));
        assert_eq!(m.objects.len(), 300);
        assert!(m
            .objects
            .values()
            .all(|(_, owner)| owner.as_deref() == Some("bob")));
    }
    assert_eq!(b, c);
    // Both are still connected and members: the session goes on.
    let r = op(
        &mut bob,
        &mut b,
        3000,
        json!({"op":"update","object":"o1","data":"x"}),
    )
    .await;
    assert_eq!(r["type"], "ok", "{r}");
    let v = carol.recv_type("session_event").await;
    c.apply(&v);
    assert_eq!(b, c);
}
