//! The messages hubs of a cluster send each other over NATS (`peermesh_hub`'s relay envelope
//! and session handoff answers) on arbitrary bytes: they never panic, and what decodes
//! survives encode → decode unchanged. Byte 0's low bit chooses the decoder.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    peermesh_hub::fuzzing::check_cluster_message(data);
});
