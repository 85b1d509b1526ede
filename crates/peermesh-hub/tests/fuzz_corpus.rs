//! Replays the committed corpora of the fuzz targets `cluster_message` and `ws_frame`
//! (`fuzz/corpus/<target>/*`) on every `cargo test`, without cargo-fuzz: same input format
//! and checks as `fuzz/fuzz_targets/<target>.rs` (no panic; what decodes survives a round
//! trip). `PEERMESH_WRITE_SEEDS=1 cargo test -p peermesh-hub --test
//! fuzz_corpus` writes the seed inputs into the corpus.

use std::path::{Path, PathBuf};

use peermesh_hub::fuzzing::{check_cluster_message, check_ws_frame, cluster_seeds};

#[test]
fn cluster_message_corpus_replays_cleanly() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/cluster_message");
    if std::env::var_os("PEERMESH_WRITE_SEEDS").is_some() {
        for (i, s) in cluster_seeds().iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i}")), s).expect("write a seed");
        }
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read the fuzz corpus at {}: {e}", dir.display()))
        .map(|e| e.expect("a readable corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let seeds = cluster_seeds();
    assert!(
        files.len() >= seeds.len(),
        "fuzz/corpus/cluster_message/ lacks its seeds"
    );
    let decoded = files
        .iter()
        .filter(|f| check_cluster_message(&std::fs::read(f).expect("a readable corpus file")))
        .count();
    // Every seed decodes; so must at least as many corpus inputs.
    assert!(seeds.iter().all(|s| check_cluster_message(s)));
    assert!(
        decoded >= seeds.len(),
        "only {decoded} of {} inputs decode",
        files.len()
    );
}

#[test]
fn ws_frame_corpus_replays_cleanly() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/ws_frame");
    let files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read the fuzz corpus at {}: {e}", dir.display()))
        .map(|e| e.expect("a readable corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    assert!(files.len() >= 20, "fuzz/corpus/ws_frame/ lost its inputs");
    let messages: usize = files
        .iter()
        .map(|f| check_ws_frame(&std::fs::read(f).expect("a readable corpus file")))
        .sum();
    // The corpus covers fragmented, control and close frames: many of them decode.
    assert!(messages >= files.len(), "only {messages} messages decoded");
}
