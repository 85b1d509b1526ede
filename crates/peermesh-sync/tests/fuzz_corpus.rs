//! Replays the committed corpus of the fuzz target `sync_datagram` (`fuzz/corpus/sync_datagram/*`)
//! on every `cargo test`, without cargo-fuzz: same input format and checks as
//! `fuzz/fuzz_targets/sync_datagram.rs` (no panic; what decodes survives a round trip).
//! `PEERMESH_WRITE_SEEDS=1 cargo test -p peermesh-sync --test fuzz_corpus` writes the seed
//! inputs into the corpus.

use std::path::{Path, PathBuf};

use peermesh_sync::testing::{check_datagram, seeds};

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/sync_datagram")
}

#[test]
fn sync_datagram_corpus_replays_cleanly() {
    let dir = corpus_dir();
    if std::env::var_os("PEERMESH_WRITE_SEEDS").is_some() {
        for (i, s) in seeds().iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i}")), s).expect("write a seed");
        }
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read the fuzz corpus at {}: {e}", dir.display()))
        .map(|e| e.expect("a readable corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(
        files.len() >= seeds().len(),
        "fuzz/corpus/sync_datagram/ lacks its seeds"
    );
    let mut decoded = 0;
    for f in &files {
        let data = std::fs::read(f).expect("a readable corpus file");
        if check_datagram(&data) {
            decoded += 1;
        }
    }
    assert!(
        decoded >= seeds().len(),
        "only {decoded} corpus inputs decode"
    );
}
