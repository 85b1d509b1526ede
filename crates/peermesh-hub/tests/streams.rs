//! Streams at the wire level: raw WebSocket clients drive `stream_*` frames and binary data
//! frames through a real hub and check every frame (and `seq`) that comes back.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{data_frame, Raw, TestHub};
use peermesh_hub::HubConfig;
use serde_json::{json, Value};

/// alice opens a stream to bob, bob accepts: returns (alice's id, bob's id).
async fn open(a: &mut Raw, b: &mut Raw, to: &str, wa: u64, wb: u64) -> (u64, u64) {
    common::open_stream(a, b, to, 11, wa, wb).await
}

async fn until_no_streams(hub: &TestHub) {
    tokio::time::timeout(common::WAIT, async {
        while hub.handle.stream_ends() != 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("every stream end freed");
}

async fn still_serves(c: &mut Raw) {
    c.send(json!({"type":"ping","req":99})).await;
    assert_eq!(c.recv_type("pong").await["req"], 99);
}

#[tokio::test]
async fn data_end_and_credit_cross_between_json_and_msgpack_with_rewritten_ids() {
    let hub = TestHub::default().await;
    let (mut alice, _) = hub.join("alice").await;
    let (mut bob, _) = hub.join_msgpack("bob").await;
    let (mut carol, _) = hub.join("carol").await;
    // carol's stream to bob takes bob's first id, so alice's and bob's ids differ.
    common::rejected_open(&mut carol, &mut bob, "carol", "bob", 1).await;

    let (sa, sb) = open(&mut alice, &mut bob, "bob", 1000, 10).await;
    assert_ne!(sa, sb, "each connection has its own ids");
    alice.send_raw(data_frame(sa, b"hello")).await;
    let d = bob.recv().await;
    assert_eq!(
        (d["type"].clone(), d["stream"].clone(), d["data"].clone()),
        (json!("$data"), json!(sb), json!("hello"))
    );
    bob.send(json!({"type":"stream_credit","stream":sb,"bytes":5}))
        .await;
    let c = alice.recv().await;
    assert_eq!(
        c,
        json!({"seq": c["seq"], "type":"stream_credit","stream":sa,"bytes":5})
    );
    // A JSON connection receives stream data as binary frames too.
    bob.send_raw(data_frame(sb, b"hi alice")).await;
    let d = alice.recv().await;
    assert_eq!(
        (d["stream"].clone(), d["data"].clone()),
        (json!(sa), json!("hi alice"))
    );
    alice.send(json!({"type":"stream_end","stream":sa})).await;
    assert_eq!(bob.recv().await["type"], "stream_end");
    assert_eq!(
        hub.handle.stream_ends(),
        2,
        "half-closed: both ends still held"
    );
    bob.send(json!({"type":"stream_end","stream":sb})).await;
    let e = alice.recv().await;
    assert_eq!(
        (e["type"].clone(), e["stream"].clone()),
        (json!("stream_end"), json!(sa))
    );
    until_no_streams(&hub).await;
    // Frames on a finished stream are ignored: no error, no delivery.
    alice.send_raw(data_frame(sa, b"late")).await;
    still_serves(&mut alice).await;
    bob.expect_silence(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn data_beyond_the_credit_resets_both_ends_with_flow_control() {
    let hub = TestHub::default().await;
    let (mut alice, _) = hub.join("alice").await;
    let (mut bob, _) = hub.join("bob").await;
    let (sa, sb) = open(&mut alice, &mut bob, "bob", 0, 10).await;
    alice.send_raw(data_frame(sa, b"0123456789")).await;
    assert_eq!(bob.recv().await["len"], 10);
    alice.send_raw(data_frame(sa, b"!")).await;
    let ra = alice.recv_type("stream_reset").await;
    assert_eq!(
        (ra["stream"].clone(), ra["code"].clone()),
        (json!(sa), json!("flow_control"))
    );
    let rb = bob.recv_type("stream_reset").await;
    assert_eq!(
        (rb["stream"].clone(), rb["code"].clone()),
        (json!(sb), json!("flow_control"))
    );
    until_no_streams(&hub).await;
    still_serves(&mut alice).await;

    // Credit beyond the largest window is a flow-control error too.
    let hub = TestHub::start(HubConfig {
        max_stream_window_bytes: 100,
        ..Default::default()
    })
    .await;
    let (mut alice, _) = hub.join("alice").await;
    let (mut bob, _) = hub.join("bob").await;
    let (sa, sb) = open(&mut alice, &mut bob, "bob", 0, 60).await;
    bob.send(json!({"type":"stream_credit","stream":sb,"bytes":41}))
        .await;
    assert_eq!(
        alice.recv_type("stream_reset").await["code"],
        "flow_control"
    );
    assert_eq!(bob.recv_type("stream_reset").await["code"], "flow_control");
    let _ = sa;
    until_no_streams(&hub).await;
}

#[tokio::test]
async fn bad_stream_frames_get_stable_codes_and_the_connection_carries_on() {
    let hub = TestHub::start(HubConfig {
        max_streams_per_client: 2,
        max_stream_window_bytes: 1000,
        ..Default::default()
    })
    .await;
    let (mut alice, _) = hub.join("alice").await;
    let (mut bob, _) = hub.join("bob").await;
    let code = |v: &Value| {
        (
            v["code"].as_str().unwrap_or("").to_owned(),
            v["req"].clone(),
        )
    };

    alice.send_raw(data_frame(999, b"x")).await;
    assert_eq!(code(&alice.recv_type("error").await).0, "unknown_stream");
    alice
        .send(json!({"type":"stream_credit","stream":999,"bytes":5}))
        .await;
    assert_eq!(code(&alice.recv_type("error").await).0, "unknown_stream");
    alice
        .send(json!({"type":"stream_credit","stream":1,"bytes":0}))
        .await;
    assert_eq!(code(&alice.recv_type("error").await).0, "invalid_field");
    alice.send(json!({"type":"stream_open","to":"bob"})).await;
    assert_eq!(
        code(&alice.recv_type("error").await).0,
        "invalid_field",
        "req is required"
    );
    alice
        .send(json!({"type":"stream_open","req":3,"to":"bob","window":1001}))
        .await;
    assert_eq!(
        code(&alice.recv_type("error").await),
        ("invalid_field".into(), json!(3))
    );
    alice
        .send(json!({"type":"stream_open","req":4,"to":"nobody"}))
        .await;
    assert_eq!(
        code(&alice.recv_type("error").await),
        ("unknown_target".into(), json!(4))
    );
    alice
        .send(json!({"type":"stream_reset","stream":1,"reason":"x".repeat(2000)}))
        .await;
    assert_eq!(code(&alice.recv_type("error").await).0, "invalid_field");
    alice
        .send_raw(tokio_tungstenite::tungstenite::Message::Binary(
            vec![1u8, 0, 0].into(),
        ))
        .await;
    assert_eq!(code(&alice.recv_type("error").await).0, "malformed");

    // Ending twice breaks the stream's rules: both ends are reset with `stream_state`.
    let (sa, _) = open(&mut alice, &mut bob, "bob", 100, 100).await;
    alice.send(json!({"type":"stream_end","stream":sa})).await;
    assert_eq!(bob.recv_type("stream_end").await["type"], "stream_end");
    alice.send(json!({"type":"stream_end","stream":sa})).await;
    assert_eq!(
        alice.recv_type("stream_reset").await["code"],
        "stream_state"
    );
    assert_eq!(bob.recv_type("stream_reset").await["code"], "stream_state");

    // Accepting something that was not offered.
    let (sa, sb) = open(&mut alice, &mut bob, "bob", 100, 100).await;
    bob.send(json!({"type":"stream_accept","stream":sb,"window":5}))
        .await;
    assert_eq!(bob.recv_type("stream_reset").await["code"], "stream_state");
    assert_eq!(alice.recv_type("stream_reset").await["stream"], sa);

    // Two streams at most per connection.
    open(&mut alice, &mut bob, "bob", 10, 10).await;
    open(&mut alice, &mut bob, "bob", 10, 10).await;
    alice
        .send(json!({"type":"stream_open","req":8,"to":"bob"}))
        .await;
    assert_eq!(
        code(&alice.recv_type("error").await),
        ("too_many_streams".into(), json!(8))
    );
    let (mut carol, _) = hub.join("carol").await;
    carol
        .send(json!({"type":"stream_open","req":9,"to":"bob"}))
        .await;
    assert_eq!(
        code(&carol.recv_type("error").await),
        ("too_many_streams".into(), json!(9))
    );
    still_serves(&mut alice).await;
    still_serves(&mut bob).await;
}

#[tokio::test]
async fn leaving_resets_every_stream_with_peer_left_and_frees_all_state() {
    let hub = TestHub::default().await;
    let (mut alice, _) = hub.join("alice").await;
    let (mut bob, _) = hub.join_msgpack("bob").await;
    let (sa, _) = open(&mut alice, &mut bob, "bob", 100, 100).await;
    alice.send_raw(data_frame(sa, b"partial")).await;
    assert_eq!(bob.recv().await["type"], "$data");
    // A second stream is offered to bob but never answered.
    alice
        .send(json!({"type":"stream_open","req":21,"to":"bob"}))
        .await;
    bob.recv_type("stream_request").await;
    assert_eq!(hub.handle.stream_ends(), 4);
    drop(bob);
    let mut seen = Vec::new();
    for _ in 0..2 {
        let f = alice.recv().await;
        seen.push((f["type"].clone(), f["code"].clone()));
    }
    seen.sort_by_key(|s| s.0.to_string());
    assert_eq!(
        seen,
        [
            (json!("error"), json!("peer_left")),
            (json!("stream_reset"), json!("peer_left"))
        ]
    );
    until_no_streams(&hub).await;
    still_serves(&mut alice).await;
}

#[tokio::test]
async fn an_unanswered_open_times_out_on_both_sides() {
    let hub = TestHub::start(HubConfig {
        stream_open_timeout_ms: 100,
        ..Default::default()
    })
    .await;
    let (mut alice, _) = hub.join("alice").await;
    let (mut bob, _) = hub.join("bob").await;
    alice
        .send(json!({"type":"stream_open","req":5,"to":"bob"}))
        .await;
    let r = bob.recv_type("stream_request").await;
    let e = alice.recv_type("error").await;
    assert_eq!(
        (e["code"].clone(), e["req"].clone()),
        (json!("stream_timeout"), json!(5))
    );
    let reset = bob.recv_type("stream_reset").await;
    assert_eq!(
        (reset["stream"].clone(), reset["code"].clone()),
        (r["stream"].clone(), json!("stream_timeout"))
    );
    until_no_streams(&hub).await;
}

#[tokio::test]
async fn stream_data_is_neither_rate_limited_nor_bounded_by_the_outbound_queue() {
    let hub = TestHub::start(HubConfig {
        rate_per_sec: 1,
        rate_burst: 3,
        max_frame_bytes: 64 << 10,
        outbound_queue_bytes: 64 << 10,
        max_stream_window_bytes: 4 << 20,
        ..Default::default()
    })
    .await;
    let (mut alice, _) = hub.join("alice").await;
    let (mut bob, _) = hub.join("bob").await;
    let (sa, _) = open(&mut alice, &mut bob, "bob", 0, 2 << 20).await;
    // 2 MiB in 128 frames while bob reads nothing: far over the rate and the queue bound.
    let chunk = vec![b'z'; 16 << 10];
    for _ in 0..128 {
        alice.send_raw(data_frame(sa, &chunk)).await;
    }
    let mut got = 0;
    while got < 2 << 20 {
        let d = bob.recv().await;
        assert_eq!(d["type"], "$data", "{d}");
        got += d["len"].as_u64().unwrap() as usize;
    }
    assert_eq!(got, 2 << 20);
    still_serves(&mut bob).await;
}
