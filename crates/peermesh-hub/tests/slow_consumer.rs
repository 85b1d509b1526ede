//! A client that stops reading must not slow anyone else down.
//!
//! A pair measures round trips (alice → bob → alice) while a third client streams 1 KiB frames
//! at a fixed rate, alternately to a client that reads them and to one that never reads. The
//! pair's p99 with the stalled reader must stay within 20% of its p99 with the healthy one.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Raw, TestHub};
use futures_util::{SinkExt, StreamExt};
use peermesh_hub::HubConfig;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

// A p99 of 600 round trips is their 6th slowest, and the median of 5 such rounds failed the
// bound about one run in ten on a quiet 2-core machine with no change in the hub: 1,500 round
// trips per round (the 15th slowest) and 7 rounds of each kind make the estimate steady.
const ROUND_TRIPS: usize = 1_500;
const ROUNDS: usize = 7;

async fn p99_round_trip(alice: &mut Raw) -> Duration {
    let mut samples = Vec::with_capacity(ROUND_TRIPS);
    for i in 0..ROUND_TRIPS {
        let t = Instant::now();
        alice
            .send(json!({"type":"emit","to":"bob","event":"ping","data":i}))
            .await;
        let echo = alice.recv_type("message").await;
        assert_eq!(echo["data"], i);
        samples.push(t.elapsed());
    }
    samples.sort();
    samples[samples.len() * 99 / 100]
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_does_not_raise_the_others_latency() {
    let hub = TestHub::start(HubConfig {
        outbound_queue_bytes: 256 << 20,
        outbound_queue_frames: 1 << 20,
        rate_per_sec: 1_000_000,
        rate_burst: 1_000_000,
        ..Default::default()
    })
    .await;
    let (mut alice, _) = hub.join("alice").await;
    let (mut bob, _) = hub.join("bob").await;
    // bob echoes everything back to alice.
    let echo = tokio::spawn(async move {
        while let Some(m) = bob.try_recv(Duration::from_secs(30)).await {
            if m["type"] == "message" {
                bob.send(json!({"type":"emit","to":"alice","event":"pong","data":m["data"]}))
                    .await;
            }
        }
    });
    // A healthy reader and a stalled one (connected, never reads).
    let (mut healthy, _) = hub.join("healthy").await;
    let drain = tokio::spawn(async move { while healthy.ws.next().await.is_some() {} });
    let (_stalled, _) = hub.join("stalled").await;

    let mut fast = Vec::new();
    let mut slow = Vec::new();
    for round in 0..2 * ROUNDS {
        let target = if round % 2 == 0 { "healthy" } else { "stalled" };
        let (mut loader, _) = hub.join(&format!("loader{round}")).await;
        let frame =
            json!({"type":"emit","to":target,"event":"load","data":"x".repeat(1024)}).to_string();
        let stop = tokio_util::sync::CancellationToken::new();
        let stop2 = stop.clone();
        let load = tokio::spawn(async move {
            // 2,000 frames/s of 1 KiB.
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            while !stop2.is_cancelled() {
                tick.tick().await;
                for _ in 0..2 {
                    loader
                        .ws
                        .send(Message::Text(frame.clone().into()))
                        .await
                        .unwrap();
                }
            }
            loader
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let p99 = p99_round_trip(&mut alice).await;
        stop.cancel();
        drop(load.await.unwrap());
        if target == "healthy" {
            fast.push(p99)
        } else {
            slow.push(p99)
        }
    }
    let (fast, slow) = (median(fast), median(slow));
    eprintln!("p99 round trip: healthy reader {fast:?}, stalled reader {slow:?}");
    // 20% as the issue asks, plus 50 µs for scheduler granularity at sub-millisecond scale.
    let bound = fast.mul_f64(1.2) + Duration::from_micros(50);
    assert!(
        slow <= bound,
        "stalled reader raised p99 from {fast:?} to {slow:?}"
    );
    echo.abort();
    drain.abort();
}
