//! Logging: `tracing` to stderr, filtered by `RUST_LOG` (default `peermesh=info`).
//!
//! stdout belongs to the JSON line protocol of `connect` and the address line of `serve`.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber.
pub(crate) fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new("peermesh=info,peermesh_hub=info,peermesh_client=info,peermesh_cli=info")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
