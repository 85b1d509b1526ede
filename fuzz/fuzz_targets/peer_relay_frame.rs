//! The peer-relay wire decoders (`peermesh_mesh::wire::peer_relay`) on one arbitrary WebSocket
//! message: the greeting, envelope and message decoders never panic, report only their stable
//! codes, and every envelope and message they decode re-encodes to the same thing.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    peermesh_mesh::testing::check_peer_relay_frame(data);
});
