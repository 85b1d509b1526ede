//! Whatever decodes must survive encode → decode unchanged, in the same encoding and in the
//! other one (the hub forwards frames between JSON and MessagePack clients). The input is tried
//! both as a client frame and as a hub frame.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((enc, bytes)) = peermesh_fuzz::split(data) else {
        return;
    };
    let _ = peermesh_fuzz::client_roundtrip(enc, bytes);
    let _ = peermesh_fuzz::server_roundtrip(enc, bytes);
});
