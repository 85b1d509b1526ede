//! Replays the committed corpora of the mesh's fuzz targets (`fuzz/corpus/p2p_node_decoder/*`
//! and `fuzz/corpus/peer_relay_frame/*`) on every `cargo test`, without cargo-fuzz or nightly.
//!
//! Same inputs and checks as `fuzz/fuzz_targets/p2p_node_decoder.rs` (byte 0 sets
//! `max_payload` (`byte * 4`), byte 1 the chunk size (`byte % 32 + 1`), the rest is the stream;
//! decoding never panics, stays within capacity, gives the same events whole, chunked and byte
//! by byte, reports only the four codes, and every decoded frame survives encode → decode) and
//! `fuzz/fuzz_targets/peer_relay_frame.rs` (one WebSocket message through the peer-relay
//! decoders).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use peermesh_mesh::testing::check_p2p_node_input as check;

fn corpus_files(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read the fuzz corpus at {}: {e}", dir.display()))
        .map(|entry| entry.expect("a readable corpus entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn p2p_node_decoder_corpus_replays_cleanly() {
    let files = corpus_files("p2p_node_decoder");
    assert!(!files.is_empty(), "fuzz/corpus/p2p_node_decoder/ is empty");
    let mut failures = Vec::new();
    let mut frames = 0;
    for file in &files {
        let data = std::fs::read(file).expect("a readable corpus file");
        match catch_unwind(AssertUnwindSafe(|| check(&data))) {
            Ok(n) => frames += n,
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push(format!("{}: {msg}", file.display()));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} corpus files failed:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
    assert!(frames > 0, "no corpus input decoded to a frame");
}

#[test]
fn peer_relay_frame_corpus_replays_cleanly() {
    let files = corpus_files("peer_relay_frame");
    assert!(!files.is_empty(), "fuzz/corpus/peer_relay_frame/ is empty");
    let mut failures = Vec::new();
    for file in &files {
        let data = std::fs::read(file).expect("a readable corpus file");
        if catch_unwind(AssertUnwindSafe(|| {
            peermesh_mesh::testing::check_peer_relay_frame(&data)
        }))
        .is_err()
        {
            failures.push(file.display().to_string());
        }
    }
    assert!(failures.is_empty(), "corpus files failed: {failures:?}");
}
