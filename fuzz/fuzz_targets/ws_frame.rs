//! The hub's WebSocket frame decoder (`peermesh_hub::ws::codec`) on arbitrary bytes, fed in
//! chunks the way the socket feeds it: it never panics, never claims more bytes than it was
//! given, returns only UTF-8 text, and every message it returns decodes the same again after
//! encoding it as a client frame. Byte 0 chooses the chunk size, byte 1 the message limit.
//! The checks live in `peermesh_hub::fuzzing::check_ws_frame`, which the corpus replay test
//! (`crates/peermesh-hub/tests/fuzz_corpus.rs`) runs too.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    peermesh_hub::fuzzing::check_ws_frame(data);
});
