//! Resume at the wire level: a client that asked for it drops, stays a member while away,
//! and resumes with exactly the frames it missed; expiry, overflow, bad secrets, takeover of a
//! half-open connection and a clean close that skips the window.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Raw, TestHub};
use peermesh_hub::HubConfig;
use serde_json::{json, Value};

fn config(grace_ms: u64) -> HubConfig {
    HubConfig {
        resume_grace_ms: grace_ms,
        ..HubConfig::default()
    }
}

async fn join_resumable(hub: &TestHub, id: &str, rooms: &[&str]) -> (Raw, Value) {
    let mut c = Raw::connect(&hub.url("")).await;
    let w = c
        .hello(json!({"id": id, "resume": true, "rooms": rooms}))
        .await;
    assert_eq!(w["type"], "welcome", "{w}");
    (c, w)
}

/// Reconnects `id` asking to resume after `last_seq`.
async fn resume(hub: &TestHub, id: &str, secret: &Value, last_seq: u64) -> (Raw, Value) {
    let mut c = Raw::connect(&hub.url("")).await;
    let w = c
        .hello(json!({"id": id, "resume": true, "secret": secret, "last_seq": last_seq}))
        .await;
    if w["resumed"] == true {
        c.last_seq = last_seq;
    }
    (c, w)
}

/// Waits until `f` holds for the hub (bounded).
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let ok = tokio::time::timeout(common::WAIT, async {
        while !f() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(ok.is_ok(), "timed out waiting for {what}");
}

#[tokio::test]
async fn a_dropped_client_is_away_then_resumes_with_exactly_what_it_missed() {
    let hub = TestHub::start(config(10_000)).await;
    let (mut alice, w) = join_resumable(&hub, "alice", &["r"]).await;
    assert_eq!(w["resume_grace_ms"], 10_000, "{w}");
    let secret = w["secret"].clone();
    let (mut bob, _) = hub.join("bob").await;
    bob.send(json!({"type":"join","room":"r","req":1})).await;
    assert_eq!(bob.recv_type("ok").await["req"], 1);
    assert_eq!(alice.recv_type("member_joined").await["id"], "bob");
    // bob writes to alice, so he hears of her presence changes as a contact too.
    bob.send(json!({"type":"emit","to":"alice","event":"e","data":0}))
        .await;
    assert_eq!(alice.recv_type("message").await["data"], 0);
    // alice sends 3 counted frames; none confirmed by a receipt yet is fine.
    for i in 0..3 {
        alice
            .send(json!({"type":"emit","to":"bob","event":"e","data":i}))
            .await;
        assert_eq!(bob.recv_type("message").await["data"], i);
    }
    let last = alice.last_seq;
    drop(alice); // no close frame: a drop
    let away = bob.recv().await;
    assert!(
        away["type"] == "member_away" || away["type"] == "peer_away",
        "{away}"
    );
    let away2 = bob.recv().await;
    let mut kinds = [away["type"].clone(), away2["type"].clone()];
    kinds.sort_by_key(|v| v.to_string());
    assert_eq!(kinds, [json!("member_away"), json!("peer_away")]);
    assert_eq!(hub.handle.client_count(), 2, "alice still holds her id");
    // While alice is away, bob's messages to her are accepted and kept.
    for i in 10..15 {
        bob.send(json!({"type":"emit","to":"alice","event":"e","data":i}))
            .await;
    }
    bob.send(json!({"type":"emit_room","room":"r","event":"room","data":"hi"}))
        .await;
    // A stranger cannot take the id without the secret.
    let mut thief = Raw::connect(&hub.url("")).await;
    let e = thief
        .hello(json!({"id":"alice","resume":true,"secret":"0000","last_seq":1}))
        .await;
    assert_eq!(e["code"], "id_taken", "{e}");

    let (mut alice, w) = resume(&hub, "alice", &secret, last).await;
    assert_eq!(
        (&w["type"], &w["resumed"], &w["received"], &w["seq"]),
        (&json!("welcome"), &json!(true), &json!(3), &json!(0)),
        "{w}"
    );
    assert_eq!(w["rooms"], json!(["r"]));
    let mut got = Vec::new();
    for _ in 0..6 {
        let v = alice.recv().await;
        assert!(v["seq"].as_u64().unwrap() > last, "{v}");
        got.push(v["data"].clone());
    }
    assert_eq!(
        got,
        [
            json!(10),
            json!(11),
            json!(12),
            json!(13),
            json!(14),
            json!("hi")
        ]
    );
    let mut back = vec![
        bob.recv().await["type"].clone(),
        bob.recv().await["type"].clone(),
    ];
    back.sort_by_key(|v| v.to_string());
    assert_eq!(back, [json!("member_back"), json!("peer_back")]);
    // The session carries on as before.
    alice
        .send(json!({"type":"emit","to":"bob","event":"e","data":"again"}))
        .await;
    assert_eq!(bob.recv_type("message").await["data"], "again");
    bob.send(json!({"type":"emit","to":"alice","event":"e","data":"more"}))
        .await;
    assert_eq!(alice.recv_type("message").await["data"], "more");
}

#[tokio::test]
async fn receipts_confirm_frames_both_ways_and_a_replay_skips_what_was_confirmed() {
    let hub = TestHub::start(config(10_000)).await;
    let (mut alice, w) = join_resumable(&hub, "alice", &[]).await;
    let secret = w["secret"].clone();
    let (mut bob, _) = hub.join("bob").await;
    // 40 counted frames: the hub confirms at 32 at once.
    for i in 0..40 {
        alice
            .send(json!({"type":"emit","to":"bob","event":"e","data":i}))
            .await;
    }
    let r = alice.recv_type("received").await;
    assert_eq!(r["count"], 32, "{r}");
    // ... and the rest after a short delay.
    let r = alice.recv_type("received").await;
    assert_eq!(r["count"], 40, "{r}");
    for i in 0..5 {
        bob.send(json!({"type":"emit","to":"alice","event":"e","data":i}))
            .await;
        alice.recv_type("message").await;
    }
    // alice confirms everything so far, then misses two messages.
    alice
        .send(json!({"type":"received","seq": alice.last_seq}))
        .await;
    let confirmed = alice.last_seq;
    for i in 5..7 {
        bob.send(json!({"type":"emit","to":"alice","event":"e","data":i}))
            .await;
    }
    // She read them, but pretends she did not: the replay starts after what she says.
    alice.recv_type("message").await;
    alice.recv_type("message").await;
    drop(alice);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (mut alice, w) = resume(&hub, "alice", &secret, confirmed).await;
    assert_eq!(w["resumed"], true, "{w}");
    assert_eq!(w["received"], 40);
    assert_eq!(alice.recv().await["data"], 5);
    assert_eq!(alice.recv().await["data"], 6);
}

#[tokio::test]
async fn after_the_window_a_resume_is_rejected_and_the_session_is_fresh() {
    let hub = TestHub::start(config(300)).await;
    let (alice, w) = join_resumable(&hub, "alice", &["r"]).await;
    let secret = w["secret"].clone();
    let (mut bob, _) = hub.join("bob").await;
    bob.send(json!({"type":"join","room":"r","req":1})).await;
    assert_eq!(bob.recv_type("ok").await["req"], 1);
    let last = alice.last_seq;
    drop(alice);
    assert_eq!(bob.recv_type("member_away").await["id"], "alice");
    // The window ends: now she is gone.
    let left = bob.recv_type("member_left").await;
    assert_eq!(left["id"], "alice");
    until("alice unregistered", || hub.handle.client_count() == 1).await;
    let (mut alice, w) = resume(&hub, "alice", &secret, last).await;
    assert_eq!(w["type"], "welcome", "{w}");
    assert_eq!(w.get("resumed"), None, "a fresh session: {w}");
    let r = alice.recv().await;
    assert_eq!(
        (&r["type"], &r["reason"]),
        (&json!("resume_rejected"), &json!("expired")),
        "{r}"
    );
    assert!(r["message"].as_str().unwrap().contains("fresh session"));
    // A wrong secret on a buried session: bad_secret.
    drop(alice);
    until("alice gone again", || hub.handle.client_count() == 1).await;
    let mut mallory = Raw::connect(&hub.url("")).await;
    let w = mallory
        .hello(json!({"id":"alice","resume":true,"secret":"nope","last_seq":3}))
        .await;
    assert_eq!(w["type"], "welcome");
    // The fresh session was resumable too: it was buried when its window ended, with its own
    // secret, which mallory does not have.
    let r = mallory.recv().await;
    assert_eq!(
        (&r["type"], &r["reason"]),
        (&json!("resume_rejected"), &json!("bad_secret")),
        "{r}"
    );
}

#[tokio::test]
async fn an_away_client_whose_missed_frames_overflow_is_gone_and_told_why() {
    let hub = TestHub::start(HubConfig {
        resume_grace_ms: 10_000,
        resume_buffer_bytes: 64 << 10,
        max_frame_bytes: 16 << 10,
        rate_per_sec: 100_000,
        rate_burst: 100_000,
        ..HubConfig::default()
    })
    .await;
    let (alice, w) = join_resumable(&hub, "alice", &[]).await;
    let secret = w["secret"].clone();
    let (mut bob, _) = hub.join("bob").await;
    let last = alice.last_seq;
    drop(alice);
    until("alice away", || hub.handle.client_count() == 2).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let big = "x".repeat(8 << 10);
    for _ in 0..20 {
        bob.send(json!({"type":"emit","to":"alice","event":"e","data":big}))
            .await;
    }
    until("alice gone", || hub.handle.client_count() == 1).await;
    let (mut alice, w) = resume(&hub, "alice", &secret, last).await;
    assert_eq!(w["type"], "welcome");
    let r = alice.recv().await;
    assert_eq!(
        (&r["type"], &r["reason"]),
        (&json!("resume_rejected"), &json!("overflow")),
        "{r}"
    );
}

#[tokio::test]
async fn a_resume_takes_over_a_half_open_connection_without_id_taken() {
    let hub = TestHub::start(config(10_000)).await;
    let (mut old, w) = join_resumable(&hub, "alice", &[]).await;
    let secret = w["secret"].clone();
    let (mut bob, _) = hub.join("bob").await;
    bob.send(json!({"type":"emit","to":"alice","event":"e","data":1}))
        .await;
    assert_eq!(old.recv_type("message").await["data"], 1);
    let last = old.last_seq;
    // The old socket is still open as far as the hub knows.
    let (mut alice, w) = resume(&hub, "alice", &secret, last).await;
    assert_eq!(w["resumed"], true, "{w}");
    let (close, _) = old.recv_close().await;
    assert_eq!(
        close.unwrap().0,
        1008,
        "the old socket is closed as replaced"
    );
    bob.send(json!({"type":"emit","to":"alice","event":"e","data":2}))
        .await;
    assert_eq!(alice.recv_type("message").await["data"], 2);
    // No away / back noise for bob: alice was never away.
    bob.send(json!({"type":"ping","req":9})).await;
    assert_eq!(bob.recv().await["type"], "pong");
}

#[tokio::test]
async fn a_clean_close_leaves_at_once_and_non_resumable_clients_leave_on_drop() {
    let hub = TestHub::start(config(10_000)).await;
    let (mut alice, _) = join_resumable(&hub, "alice", &["r"]).await;
    let (carol, _) = {
        let mut c = Raw::connect(&hub.url("")).await;
        let w = c.hello(json!({"id":"carol","rooms":["r"]})).await;
        (c, w)
    };
    let (mut bob, _) = hub.join("bob").await;
    bob.send(json!({"type":"join","room":"r","req":1})).await;
    assert_eq!(bob.recv_type("ok").await["req"], 1);
    alice
        .send_raw(tokio_tungstenite::tungstenite::Message::Close(None))
        .await;
    let left = bob.recv_type("member_left").await;
    assert_eq!(
        left["id"], "alice",
        "a close frame skips the window: {left}"
    );
    drop(carol); // did not ask to resume: gone on drop
    let left = bob.recv_type("member_left").await;
    assert_eq!(left["id"], "carol", "{left}");
    until("both gone", || hub.handle.client_count() == 1).await;
}
