//! Replays the committed corpus of the fuzz target `cluster_message`
//! (`fuzz/corpus/cluster_message/*`) on every `cargo test`, without cargo-fuzz: same input
//! format and checks as `fuzz/fuzz_targets/cluster_message.rs` (no panic; what decodes
//! survives a round trip). `PEERMESH_WRITE_SEEDS=1 cargo test -p peermesh-hub --test
//! fuzz_corpus` writes the seed inputs into the corpus.

use std::path::{Path, PathBuf};

use peermesh_hub::fuzzing::{check_cluster_message, cluster_seeds};

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
