//! The `p2p-node` stream decoder (`peermesh_mesh::wire::p2p_node::Decoder`) on arbitrary bytes:
//! never panics, never buffers more than its capacity, reports only its four error codes, gives
//! the same events whole and split into chunks, and every frame it decodes re-encodes to bytes
//! that decode to the same frame.
//!
//! Input: byte 0 sets `max_payload` (`byte * 4`, so `frame_too_large` is easy to reach), byte 1
//! the chunk size (`byte % 32 + 1`), the rest is the TCP stream (default magic `f9 be b4 d9`).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use peermesh_mesh::wire::p2p_node::{
    encode_command, DecodeEvent, Decoder, DecoderConfig, DEFAULT_MAGIC,
};

fn decode(config: DecoderConfig, stream: &[u8], chunk: usize) -> Vec<DecodeEvent> {
    let mut decoder = Decoder::new(config);
    let mut events = Vec::new();
    for mut piece in stream.chunks(chunk) {
        loop {
            let n = decoder.push(piece);
            piece = &piece[n..];
            assert!(decoder.buffered() <= decoder.capacity());
            while let Some(event) = decoder.poll() {
                events.push(event);
            }
            if piece.is_empty() {
                break;
            }
            assert!(decoder.free() > 0, "full buffer and no event");
        }
    }
    events
}

fuzz_target!(|data: &[u8]| {
    let [b0, b1, stream @ ..] = data else {
        return;
    };
    let config = DecoderConfig {
        magic: DEFAULT_MAGIC,
        max_payload: u32::from(*b0) * 4,
    };
    let whole = decode(config, stream, stream.len().max(1));
    let split = decode(config, stream, usize::from(b1 % 32) + 1);
    assert_eq!(
        whole, split,
        "the events depend on how the stream was split"
    );
    for event in &whole {
        match event {
            DecodeEvent::Frame(frame) => {
                let mut again = BytesMut::new();
                encode_command(config.magic, frame.command, &frame.payload, &mut again)
                    .expect("a decoded frame encodes");
                assert_eq!(
                    decode(config, &again, again.len()),
                    std::slice::from_ref(event),
                    "a frame changed through encode -> decode"
                );
            }
            DecodeEvent::Error(e) => {
                assert!(matches!(
                    e.code(),
                    "garbage" | "frame_too_large" | "bad_checksum" | "bad_command"
                ));
                assert!(!e.to_string().is_empty());
            }
        }
    }
});
