//! The `p2p-node` stream decoder (`peermesh_mesh::wire::p2p_node::Decoder`) on arbitrary bytes:
//! never panics, never buffers more than its capacity, reports only its four error codes, gives
//! the same events whole and split into chunks, and every frame it decodes re-encodes to bytes
//! that decode to the same frame.
//!
//! Input: byte 0 sets `max_payload` (`byte * 4`, so `frame_too_large` is easy to reach), byte 1
//! the chunk size (`byte % 32 + 1`), the rest is the TCP stream (default magic `f9 be b4 d9`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    peermesh_mesh::testing::check_p2p_node_input(data);
});
