//! `decode_client` on arbitrary bytes must never panic, in either encoding, and every error it
//! returns must carry one of the three decoding codes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peermesh_proto::{decode_client, ErrorCode};

fuzz_target!(|data: &[u8]| {
    let Some((enc, bytes)) = peermesh_fuzz::split(data) else {
        return;
    };
    peermesh_fuzz::data_frame_roundtrip(bytes);
    if let Err(e) = decode_client(enc, bytes) {
        assert!(
            matches!(
                e.code,
                ErrorCode::Malformed
                    | ErrorCode::UnknownType
                    | ErrorCode::InvalidField
                    | ErrorCode::InvalidId
            ),
            "unexpected decode error code {:?}",
            e.code
        );
    }
});
