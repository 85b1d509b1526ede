//! Property checks shared by the fuzz targets and the corpus replay tests, so both run the
//! same code. Not part of the API: they panic when a property is broken.

use bytes::BytesMut;

use crate::wire::p2p_node::{encode_command, DecodeEvent, Decoder, DecoderConfig, DEFAULT_MAGIC};

/// Decodes `stream` pushed in pieces of `chunk` bytes, checking the decoder's buffer bound.
pub fn decode_chunked(config: DecoderConfig, stream: &[u8], chunk: usize) -> Vec<DecodeEvent> {
    let mut decoder = Decoder::new(config);
    let mut events = Vec::new();
    for mut piece in stream.chunks(chunk.max(1)) {
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

/// The `p2p_node_decoder` fuzz input: byte 0 sets `max_payload` (`byte * 4`), byte 1 the chunk
/// size (`byte % 32 + 1`), the rest is the stream. Checks that the events do not depend on how
/// the stream is split (whole, chunked, byte by byte), that only the four error codes occur,
/// and that every decoded frame survives encode → decode. Returns the number of frames.
pub fn check_p2p_node_input(data: &[u8]) -> usize {
    let [b0, b1, stream @ ..] = data else {
        return 0;
    };
    let config = DecoderConfig {
        magic: DEFAULT_MAGIC,
        max_payload: u32::from(*b0) * 4,
    };
    let whole = decode_chunked(config, stream, stream.len());
    let split = decode_chunked(config, stream, usize::from(b1 % 32) + 1);
    assert_eq!(
        whole, split,
        "the events depend on how the stream was split"
    );
    assert_eq!(whole, decode_chunked(config, stream, 1));
    let mut frames = 0;
    for event in &whole {
        match event {
            DecodeEvent::Frame(frame) => {
                frames += 1;
                let mut again = BytesMut::new();
                encode_command(config.magic, frame.command, &frame.payload, &mut again)
                    .expect("a decoded frame encodes");
                assert_eq!(
                    decode_chunked(config, &again, again.len()),
                    std::slice::from_ref(event),
                    "a frame changed through encode -> decode"
                );
            }
            DecodeEvent::Error(e) => {
                assert!(
                    matches!(
                        e.code(),
                        "garbage" | "frame_too_large" | "bad_checksum" | "bad_command"
                    ),
                    "unexpected code {}",
                    e.code()
                );
                assert!(!e.to_string().is_empty());
            }
        }
    }
    frames
}

/// The `peer_relay_frame` fuzz input: one WebSocket text message. Checks that the greeting,
/// envelope and message decoders return (never panic), that errors carry one of the stable
/// codes, and that a decoded envelope survives encode → decode unchanged.
pub fn check_peer_relay_frame(frame: &[u8]) {
    use crate::wire::peer_relay::{
        decode_envelope, decode_greeting, encode_envelope, Message, DEFAULT_MAX_FRAME,
    };
    let codes = ["too_large", "malformed", "bad_id", "unknown_type"];
    if let Err(e) = decode_greeting(frame) {
        assert!(codes.contains(&e.code()), "unexpected code {}", e.code());
    }
    match decode_envelope(frame, DEFAULT_MAX_FRAME) {
        Ok(env) => {
            let again = encode_envelope(&env.to, &env.from, &env.path, &env.nonce, &env.data);
            let back = decode_envelope(&again, DEFAULT_MAX_FRAME).expect("re-encoded envelope");
            assert_eq!(back, env, "an envelope changed through encode -> decode");
            match Message::decode(&env.data) {
                Ok(m) => {
                    let m2 = Message::decode(&m.encode()).expect("re-encoded message");
                    assert_eq!(m2, m, "a message changed through encode -> decode");
                }
                Err(e) => assert!(codes.contains(&e.code()), "unexpected code {}", e.code()),
            }
        }
        Err(e) => assert!(codes.contains(&e.code()), "unexpected code {}", e.code()),
    }
}
