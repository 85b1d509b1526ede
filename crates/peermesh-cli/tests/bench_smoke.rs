//! Smoke test of `peermesh bench`: a tiny run against a spawned hub (no Socket.IO reference)
//! must finish in a few seconds and print one JSON object with sane figures.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

#[test]
fn bench_spawn_tiny_run_reports_sane_figures() {
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_peermesh"))
        .args([
            "bench",
            "--spawn",
            "--no-reference",
            "--json",
            "--quiet",
            "--pairs",
            "4",
            "--rates",
            "1000,max",
            "--window",
            "4",
            "--warmup",
            "100ms",
            "--duration",
            "300ms",
            "--drain",
            "2s",
            "--max-messages",
            // High enough that the `max` step cannot finish inside the 100 ms warm-up on a
            // fast machine (it then has nothing to measure); the window still ends it.
            "20000",
            "--members",
            "20",
            "--fanout-window",
            "2",
            "--idle-conns",
            "100",
            "--settle",
            "200ms",
            "--stream-mib",
            "8",
            "--stream-rounds",
            "1",
        ])
        .env("RUST_LOG", "warn")
        .output()
        .expect("run peermesh bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed: {stderr}");
    assert!(
        start.elapsed() < Duration::from_secs(60),
        "the tiny run took {:?}",
        start.elapsed()
    );
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}): {stderr}"));

    // (a) direct messages: both steps delivered everything and measured round trips.
    let steps = report["direct"]["peermesh"]
        .as_array()
        .unwrap_or_else(|| panic!("no direct figures: {report}"));
    assert_eq!(steps.len(), 2, "{report}");
    for step in steps {
        assert!(step["msgs_per_s"].as_f64().unwrap_or(0.0) > 0.0, "{step}");
        assert!(step["sent"].as_u64().unwrap_or(0) > 0, "{step}");
        assert_eq!(step["lost"], 0, "{step}");
        assert_eq!(step["errors"], 0, "{step}");
        let rtt = &step["rtt"];
        assert!(rtt["samples"].as_u64().unwrap_or(0) > 0, "{step}");
        let p50 = rtt["p50_us"].as_f64().unwrap_or(0.0);
        let p99 = rtt["p99_us"].as_f64().unwrap_or(0.0);
        assert!(p50 > 0.0 && p50 <= p99 && p99 < 5_000_000.0, "{step}");
    }
    // The fixed-rate step offered 1,000 msgs/s for 300 ms. Under a loaded test machine the
    // generator may fall behind its schedule, so only the upper bound is firm.
    assert_eq!(steps[0]["offered_msgs_per_s"], 1000);
    let fixed = steps[0]["msgs_per_s"].as_f64().unwrap_or(0.0);
    assert!(fixed > 0.0 && fixed <= 3000.0, "{}", steps[0]);
    assert!(
        steps[1]["sent"].as_u64().unwrap_or(0) <= 4 * 20_000,
        "{}",
        steps[1]
    );

    // (b) fan-out: every member got every room message.
    let fanout = &report["fanout"]["peermesh"];
    assert_eq!(fanout["members"], 20, "{report}");
    assert!(
        fanout["deliveries_per_s"].as_f64().unwrap_or(0.0) > 0.0,
        "{fanout}"
    );
    assert!(fanout["sent"].as_u64().unwrap_or(0) > 0, "{fanout}");
    assert_eq!(fanout["lost"], 0, "{fanout}");
    assert_eq!(fanout["errors"], 0, "{fanout}");
    assert!(
        fanout["latency"]["samples"].as_u64().unwrap_or(0) > 0,
        "{fanout}"
    );

    // (c) idle connections: all open, and the hub grew by a plausible amount per connection.
    let idle = &report["idle"]["peermesh"];
    assert_eq!(idle["connections"], 100, "{report}");
    assert_eq!(idle["errors"], 0, "{idle}");
    let per_conn = idle["bytes_per_conn"].as_u64().unwrap_or(0);
    assert!(per_conn < 1 << 20, "{idle}");
    assert!(idle["rss_after_kib"].as_u64().unwrap_or(0) > 0, "{idle}");

    // (d) stream: both paths carried the bytes, the hub's memory was sampled.
    let stream = &report["stream"];
    assert_eq!(stream["bytes"], 8 << 20, "{report}");
    assert!(
        stream["hub_mib_per_s"].as_f64().unwrap_or(0.0) > 0.0,
        "{stream}"
    );
    assert!(
        stream["relay_mib_per_s"].as_f64().unwrap_or(0.0) > 0.0,
        "{stream}"
    );
    assert!(stream["hub_rss_growth_kib"].as_u64().is_some(), "{stream}");

    // The Socket.IO side was skipped, and the targets section exists.
    assert!(report["socketio"].is_null(), "{report}");
    assert!(
        report["targets"].as_array().is_some_and(|t| !t.is_empty()),
        "{report}"
    );
}

/// The drops scenario in miniature against a spawned hub: 10 clients behind fault proxies that
/// reset each connection every second (refusing it for 200 ms), a publisher sending 10
/// messages/s to each for 3 s. Every message must arrive exactly once, in order, through
/// resumed sessions.
#[test]
fn bench_drops_tiny_run_delivers_every_message_once_in_order() {
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_peermesh"))
        .args([
            "bench",
            "--spawn",
            "--no-reference",
            "--json",
            "--quiet",
            // `--scenario` is an alias of `--scenarios`.
            "--scenario",
            "drops",
            "--clients",
            "10",
            "--duration",
            "3s",
            "--cut-every",
            "1s",
            "--down",
            "200ms",
            "--rate",
            "10",
        ])
        .env("RUST_LOG", "warn")
        .output()
        .expect("run peermesh bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed: {stderr}");
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "the tiny drops run took {:?}",
        start.elapsed()
    );
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}): {stderr}"));
    let d = &report["drops"]["peermesh"];
    assert_eq!(d["clients"], 10, "{report}");
    let sent = d["sent"].as_u64().unwrap_or(0);
    // 10 clients x 10/s x 3 s, give or take the schedule's first and last tick.
    assert!((250..=310).contains(&sent), "{d}");
    assert_eq!(d["delivered"], sent, "{d}");
    assert_eq!(d["exactly_once"], sent, "{d}");
    assert_eq!(d["lost"], 0, "{d}");
    assert_eq!(d["duplicated"], 0, "{d}");
    assert_eq!(d["out_of_order"], 0, "{d}");
    assert_eq!(d["errors"], 0, "{d}");
    assert_eq!(d["unsettled"], 0, "{d}");
    assert_eq!(d["seq_gaps"], 0, "{d}");
    assert_eq!(d["seq_repeats"], 0, "{d}");
    // Every client was cut about three times, and came back through a resumed session.
    let cuts = d["cuts"].as_u64().unwrap_or(0);
    assert!(cuts >= 20, "{d}");
    let reconnects = d["reconnects"].as_u64().unwrap_or(0);
    assert!(reconnects >= 20, "{d}");
    assert_eq!(d["resumed"], reconnects, "{d}");
    assert_eq!(d["not_resumed"], 0, "{d}");
    assert!(
        d["resume_rejected"]
            .as_object()
            .is_some_and(|m| m.is_empty()),
        "{d}"
    );
    // Messages sent while a client was away were replayed on its next connection.
    assert!(d["replay"]["samples"].as_u64().unwrap_or(0) > 0, "{d}");
    assert!(d["latency"]["samples"].as_u64().unwrap_or(0) > 0, "{d}");
    assert!(report["drops"]["socketio"].is_null(), "{report}");
    let met = report["targets"]
        .as_array()
        .and_then(|t| {
            t.iter()
                .find(|c| c["target"].as_str().is_some_and(|s| s.contains("drops")))
        })
        .map(|c| c["met"].clone());
    assert_eq!(met, Some(Value::Bool(true)), "{report}");
}

/// The cluster scenario in miniature: its own nats-server and three hubs (and a hub without a
/// cluster), a few pairs at a low rate for 300 ms in each layout, a small room in three
/// layouts, one busy session in two layouts, and six ids and a session of 50 objects on a hub
/// killed with SIGKILL. The dead hub's ids take the cluster's `dead_after` (5 s) to be
/// released, so this run lasts about 15 s. Needs `nats-server` (scripts/test.sh installs it).
#[test]
fn bench_cluster_tiny_run_covers_every_part() {
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_peermesh"))
        .args([
            "bench",
            "--json",
            "--quiet",
            // No hub URL and no --spawn: the cluster scenario starts its own hubs.
            "--scenarios",
            "cluster",
            "--pairs",
            "3",
            "--cluster-rate",
            "300",
            "--warmup",
            "100ms",
            "--duration",
            "300ms",
            "--drain",
            "2s",
            "--cluster-members",
            "9",
            "--fanout-window",
            "2",
            "--cluster-ids",
            "6",
            "--session-members",
            "5",
            "--session-ops",
            "300",
            "--cluster-session-objects",
            "50",
            "--cluster-rounds",
            "2",
        ])
        .env("RUST_LOG", "warn")
        .output()
        .expect("run peermesh bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed: {stderr}");
    assert!(
        start.elapsed() < Duration::from_secs(60),
        "the tiny cluster run took {:?}",
        start.elapsed()
    );
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}): {stderr}"));
    let c = &report["cluster"];
    assert_eq!(c["hubs"], 3, "{report}");

    // Direct messages in both layouts and on a hub without a cluster: everything echoed,
    // round trips measured; only the cross-hub step went through NATS.
    let d = &c["direct"];
    assert_eq!(d["offered_msgs_per_s"], 300, "{c}");
    for layout in ["single_hub", "same_hub", "cross_hub"] {
        let step = &d[layout];
        assert!(step["sent"].as_u64().unwrap_or(0) > 0, "{layout}: {d}");
        assert_eq!(step["lost"], 0, "{layout}: {d}");
        assert_eq!(step["errors"], 0, "{layout}: {d}");
        assert!(
            step["rtt"]["samples"].as_u64().unwrap_or(0) > 0,
            "{layout}: {d}"
        );
    }
    // The reference: NATS alone, the same rate, every probe echoed.
    let n = &d["nats_alone"];
    assert_eq!(n["offered_msgs_per_s"], 300, "{d}");
    assert!(n["sent"].as_u64().unwrap_or(0) > 0, "{n}");
    assert_eq!(n["lost"], 0, "{n}");
    assert!(n["rtt"]["samples"].as_u64().unwrap_or(0) > 0, "{n}");
    assert!(n["rtt"]["p50_us"].as_f64().unwrap_or(0.0) > 0.0, "{n}");
    assert_eq!(d["same_hub_relayed"], 0, "{d}");
    assert!(d["cross_hub_relayed"].as_u64().unwrap_or(0) > 0, "{d}");
    assert!(d["p99_ratio"].as_f64().is_some(), "{d}");
    // Two alternating rounds, each with both p99s, and their median.
    let rounds = d["rounds"].as_array().cloned().unwrap_or_default();
    assert_eq!(rounds.len(), 2, "{d}");
    assert!(
        rounds
            .iter()
            .all(|r| r["same_p99_us"].as_f64().unwrap_or(0.0) > 0.0
                && r["cross_p99_us"].as_f64().unwrap_or(0.0) > 0.0),
        "{d}"
    );
    assert!(d["median_round_ratio"].as_f64().is_some(), "{d}");

    // Fan-out in three layouts: every member got every room message; CPU per delivery known.
    for layout in ["single_hub", "cluster_one_hub", "cluster_spread"] {
        let f = &c["fanout"][layout];
        assert_eq!(f["members"], 9, "{layout}: {c}");
        assert_eq!(f["senders"], 3, "{layout}: {f}");
        assert!(f["deliveries_per_s"].as_f64().unwrap_or(0.0) > 0.0, "{f}");
        assert_eq!(f["lost"], 0, "{layout}: {f}");
        assert_eq!(f["errors"], 0, "{layout}: {f}");
        assert!(f["server_cpu_us_per_delivery"].is_number(), "{f}");
    }
    assert_eq!(c["fanout"]["cluster_spread"]["hubs"], 3, "{c}");
    assert_eq!(c["fanout"]["cluster_one_hub"]["hubs"], 1, "{c}");

    // One busy session: every member applied every operation, in both layouts; in the
    // cluster, 3 of the 5 members were on hubs that do not hold it.
    for (layout, elsewhere) in [("single_hub", 0), ("cluster_spread", 3)] {
        let b = &c["sessions"][layout];
        assert_eq!(b["members"], 5, "{layout}: {c}");
        assert_eq!(b["members_elsewhere"], elsewhere, "{layout}: {b}");
        assert_eq!(b["ops"], 300, "{layout}: {b}");
        assert!(b["ops_per_s"].as_f64().unwrap_or(0.0) > 0.0, "{b}");
    }
    // The NATS messages the hubs published per operation: only in the cluster, and some.
    assert!(
        c["sessions"]["single_hub"]["nats_msgs_per_op"].is_null(),
        "{c}"
    );
    let per_op = c["sessions"]["cluster_spread"]["nats_msgs_per_op"].as_f64();
    assert!(per_op.is_some_and(|m| m > 0.0), "{c}");
    // The killed hub's session went on elsewhere with all its objects (50 and one per member).
    let t = &c["takeover"];
    assert_eq!(t["objects"], 52, "{c}");
    assert_eq!(t["objects_kept"], 52, "{t}");
    assert_eq!(t["same_revision"], true, "{t}");
    let gone = t["gone_s"].as_f64().unwrap_or(f64::MAX);
    assert!((1.0..20.0).contains(&gone), "{t}");

    // The killed hub's ids were all accepted by the others, after the cluster's dead_after.
    let dead = &c["dead_hub"];
    assert_eq!(dead["clients"], 6, "{dead}");
    assert_eq!(dead["accepted"], 6, "{dead}");
    assert_eq!(dead["errors"], 0, "{dead}");
    let all = dead["all_s"].as_f64().unwrap_or(f64::MAX);
    assert!((1.0..20.0).contains(&all), "{dead}");
    assert!(dead["refused"].as_u64().unwrap_or(0) > 0, "{dead}");

    let cluster_targets = report["targets"]
        .as_array()
        .map(|t| {
            t.iter()
                .filter(|c| {
                    c["target"]
                        .as_str()
                        .is_some_and(|s| s.starts_with("cluster"))
                })
                .count()
        })
        .unwrap_or(0);
    assert_eq!(cluster_targets, 3, "{report}");
}
