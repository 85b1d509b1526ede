//! `decode_server` on arbitrary bytes must never panic, in either encoding (a client library
//! decodes whatever its hub, or anything pretending to be one, sends).
#![no_main]

use libfuzzer_sys::fuzz_target;
use peermesh_proto::{decode_server, ErrorCode};

fuzz_target!(|data: &[u8]| {
    let Some((enc, bytes)) = peermesh_fuzz::split(data) else {
        return;
    };
    peermesh_fuzz::data_frame_roundtrip(bytes);
    if let Err(e) = decode_server(enc, bytes) {
        assert!(
            matches!(
                e.code,
                ErrorCode::Malformed | ErrorCode::UnknownType | ErrorCode::InvalidField
            ),
            "unexpected decode error code {:?}",
            e.code
        );
    }
});
