//! End-to-end sessions over the in-memory network: deterministic, seeded, virtual time.

use std::time::Duration;

use peermesh_sync::demo::{self, Cut, DemoConfig};

#[test]
fn explore() {
    let cfg = DemoConfig {
        clients: 4,
        entities: 1000,
        duration: Duration::from_secs(10),
        ..DemoConfig::default()
    };
    let r = demo::run(&cfg, |_| {}).expect("run");
    for c in &r.clients {
        println!("{c:#?}");
    }
    println!("lost {} of {}", r.lost, r.sent);
    let _ = Cut { client: 0, at: Duration::ZERO, length: Duration::ZERO };
}
