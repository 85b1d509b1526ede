//! `peermesh connect --pipe` / `--accept-pipe` end to end: real `peermesh serve` and two
//! `peermesh connect` processes. stdout must carry the stream's bytes and nothing else, and
//! both ends exit 0 once the stream ended cleanly.
//!
//! The large transfer also measures the hub process's memory (`VmRSS` in /proc/PID/status):
//! 100 MiB go through while the receiving side reads slowly, and the hub's resident set must
//! grow by less than 32 MiB. `PEERMESH_PIPE_MIB` changes the size.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

mod common;

use common::side::{exchange, Gen, Side};
use common::BIN;

struct Hub {
    child: Child,
    url: String,
}

impl Hub {
    fn start() -> Hub {
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn peermesh serve");
        let mut first = String::new();
        BufReader::new(child.stdout.take().expect("piped stdout"))
            .read_line(&mut first)
            .expect("the listening line");
        let v: serde_json::Value = serde_json::from_str(&first).expect("a JSON listening line");
        let url = v["ws"].as_str().expect("a ws URL").to_owned();
        Hub { child, url }
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the hub's /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("a VmRSS line")
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn pipe_carries_bytes_both_ways_and_both_ends_exit_0() {
    let hub = Hub::start();
    let stderr = exchange(&hub.url, &hub.url, 1);
    assert!(stderr.contains("\"type\":\"stream\""));
}

#[test]
fn a_pipe_to_nobody_or_a_vanished_peer_exits_1() {
    let hub = Hub::start();
    let mut alone = Side::spawn(&hub.url, &["--id", "alone", "--pipe", "nobody"]);
    drop(alone.child.stdin.take());
    assert_eq!(alone.exit_code(), 1);
    assert!(
        alone.stderr().contains("unknown_target"),
        "{}",
        alone.stderr()
    );

    let mut bob = Side::spawn(&hub.url, &["--id", "bob", "--accept-pipe"]);
    bob.wait_for("\"type\":\"connected\"");
    let mut alice = Side::spawn(&hub.url, &["--id", "alice", "--pipe", "bob"]);
    bob.wait_for("\"type\":\"stream\"");
    let _ = bob.child.kill();
    let _ = bob.child.wait();
    // alice's stdin stays open: the reset alone must end her.
    assert_eq!(alice.exit_code(), 1, "{}", alice.stderr());
    assert!(alice.stderr().contains("peer_left"), "{}", alice.stderr());
}

#[test]
fn a_hundred_mib_through_the_hub_keep_its_memory_bounded() {
    let mib: usize = std::env::var("PEERMESH_PIPE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let total = mib << 20;
    let hub = Hub::start();
    let mut bob = Side::spawn(&hub.url, &["--id", "bob", "--accept-pipe"]);
    bob.wait_for("\"type\":\"connected\"");
    let mut alice = Side::spawn(&hub.url, &["--id", "alice", "--pipe", "bob"]);
    bob.wait_for("\"type\":\"stream\"");
    let before = hub.rss_kib();

    // Sample the hub's RSS while the bytes flow.
    let peak = Arc::new(AtomicU64::new(before));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        let path = format!("/proc/{}/status", hub.child.id());
        thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                if let Ok(s) = std::fs::read_to_string(&path) {
                    if let Some(kib) = s
                        .lines()
                        .find_map(|l| l.strip_prefix("VmRSS:"))
                        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                    {
                        peak.fetch_max(kib, Ordering::Relaxed);
                    }
                }
                thread::sleep(Duration::from_millis(10));
            }
        })
    };

    let mut stdin = alice.child.stdin.take().expect("piped stdin");
    let writer = thread::spawn(move || {
        let mut g = Gen(7);
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..(total >> 20) {
            g.fill(&mut buf);
            stdin.write_all(&buf).expect("alice's stdin");
        }
    });
    drop(bob.child.stdin.take());
    // bob's stdout is read slowly, in small pieces, and checked byte for byte.
    let mut out = bob.child.stdout.take().expect("piped stdout");
    let mut g = Gen(7);
    let mut want = vec![0u8; 1 << 20];
    let mut at = want.len();
    let mut got = vec![0u8; 4096];
    let mut received = 0usize;
    let started = Instant::now();
    loop {
        let n = out.read(&mut got).expect("bob's stdout");
        if n == 0 {
            break;
        }
        for &b in &got[..n] {
            if at == want.len() {
                g.fill(&mut want);
                at = 0;
            }
            assert_eq!(b, want[at], "byte {received} differs");
            at += 1;
            received += 1;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    writer.join().expect("writer");
    done.store(true, Ordering::Relaxed);
    sampler.join().expect("sampler");
    assert_eq!(received, total);
    assert_eq!(alice.exit_code(), 0, "{}", alice.stderr());
    assert_eq!(bob.exit_code(), 0, "{}", bob.stderr());
    let growth = peak.load(Ordering::Relaxed).saturating_sub(before);
    eprintln!(
        "{mib} MiB in {secs:.2} s ({:.0} MiB/s); hub RSS {before} KiB before, peak growth {growth} KiB",
        mib as f64 / secs
    );
    assert!(
        growth < 32 << 10,
        "the hub's RSS grew by {growth} KiB (limit 32 MiB)"
    );
}
