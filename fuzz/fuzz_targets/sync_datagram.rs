//! The sync wire decoders (`peermesh_sync`: client and host datagrams, state bodies with and
//! without a baseline) on arbitrary bytes: they never panic, and what decodes survives
//! encode → decode unchanged. Byte 0 chooses the decoder (low two bits).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    peermesh_sync::testing::check_datagram(data);
});
