//! Replays the committed fuzz corpus (`fuzz/corpus/*/*`) through both decoders, so every
//! `cargo test` checks what the fuzzers found without needing cargo-fuzz or a nightly toolchain.
//!
//! A fuzz input is one selector byte (low bit 0: JSON, 1: MessagePack) followed by the frame.
//! Each file is replayed as the fuzzers read it, and also whole (without the selector) in both
//! encodings, through `decode_client` and `decode_server`. For every input:
//!
//! - decoding never panics, and a refusal carries a decoding error code;
//! - a frame that decodes is encoded again, in both encodings, and decodes to the same frame
//!   (and the same `seq` for hub frames);
//! - a stream data frame (binary, first byte 0x01) that parses encodes back to the same bytes.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use peermesh_proto::stream::DataFrame;
use peermesh_proto::{
    decode_client, decode_server, encode_client, encode_server, Encoding, ErrorCode,
};

const ENCODINGS: [Encoding; 2] = [Encoding::Json, Encoding::MsgPack];

fn corpus_files() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    let mut files = Vec::new();
    let targets = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("cannot read the fuzz corpus at {}: {e}", root.display()));
    for target in targets {
        let target = target.expect("a readable corpus directory entry").path();
        if !target.is_dir() {
            continue;
        }
        for file in std::fs::read_dir(&target).expect("a readable corpus target directory") {
            let file = file.expect("a readable corpus file entry").path();
            if file.is_file() {
                files.push(file);
            }
        }
    }
    files.sort();
    files
}

/// Checks one input in one encoding; returns how many frames decoded.
fn check(enc: Encoding, bytes: &[u8]) -> usize {
    let mut decoded = 0;
    // The binary stream data frame: parsing never panics, and what parses encodes back.
    if let Ok(frame) = DataFrame::decode(bytes::Bytes::copy_from_slice(bytes)) {
        assert_eq!(
            &frame.encode()[..],
            bytes,
            "data frame changed through decode/encode"
        );
        decoded += 1;
    }
    match decode_client(enc, bytes) {
        Ok(frame) => {
            decoded += 1;
            for out in ENCODINGS {
                let again = encode_client(out, &frame);
                let back = decode_client(out, &again).unwrap_or_else(|e| {
                    panic!("client frame {frame:?} re-encoded as {out:?} does not decode: {e}")
                });
                assert_eq!(back, frame, "client frame changed through {out:?}");
            }
        }
        Err(e) => assert!(
            matches!(
                e.code,
                ErrorCode::Malformed
                    | ErrorCode::UnknownType
                    | ErrorCode::InvalidField
                    | ErrorCode::InvalidId
            ),
            "decode_client refused with {:?}",
            e.code
        ),
    }
    match decode_server(enc, bytes) {
        Ok((seq, frame)) => {
            decoded += 1;
            for out in ENCODINGS {
                let again = encode_server(out, seq, &frame);
                let back = decode_server(out, &again).unwrap_or_else(|e| {
                    panic!("hub frame {frame:?} re-encoded as {out:?} does not decode: {e}")
                });
                assert_eq!(
                    back,
                    (seq, frame.clone()),
                    "hub frame changed through {out:?}"
                );
            }
        }
        Err(e) => assert!(
            matches!(
                e.code,
                ErrorCode::Malformed | ErrorCode::UnknownType | ErrorCode::InvalidField
            ),
            "decode_server refused with {:?}",
            e.code
        ),
    }
    decoded
}

#[test]
fn fuzz_corpus_replays_cleanly() {
    let files = corpus_files();
    assert!(
        !files.is_empty(),
        "the fuzz corpus is empty: fuzz/corpus/<target>/ should hold the committed inputs"
    );
    let mut failures = Vec::new();
    let mut decoded = 0;
    for file in &files {
        let data = std::fs::read(file).expect("a readable corpus file");
        let result = catch_unwind(AssertUnwindSafe(|| {
            let mut n = 0;
            if let Some((first, rest)) = data.split_first() {
                n += check(ENCODINGS[usize::from(first & 1)], rest);
            }
            for enc in ENCODINGS {
                n += check(enc, &data);
            }
            n
        }));
        match result {
            Ok(n) => decoded += n,
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
    // A corpus where nothing decodes would only exercise the error paths: a sign the
    // selector convention or the directory changed.
    assert!(decoded > 0, "no corpus input decoded to a frame");
}
