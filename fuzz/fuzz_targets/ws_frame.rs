//! The hub's WebSocket frame decoder (`peermesh_hub::ws::codec`) on arbitrary bytes, fed in
//! chunks the way the socket feeds it: it never panics, never claims more bytes than it was
//! given, returns only UTF-8 text, and every message it returns decodes the same again after
//! encoding it as a client frame. Byte 0 chooses the chunk size, byte 1 the message limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peermesh_hub::ws::codec::{client_frame, Decoder, Message};

fuzz_target!(|data: &[u8]| {
    let [chunk, limit, rest @ ..] = data else {
        return;
    };
    let chunk = usize::from(*chunk).max(1);
    let mut d = Decoder::new(usize::from(*limit) * 64);
    let mut pending: Vec<u8> = Vec::new();
    for piece in rest.chunks(chunk) {
        pending.extend_from_slice(piece);
        loop {
            let r = match d.decode(&pending) {
                Ok(r) => r,
                Err(_) => return,
            };
            assert!(r.consumed <= pending.len());
            if r.consumed == 0 {
                break;
            }
            pending.drain(..r.consumed);
            if let Some(m) = r.message {
                check(&m);
            }
        }
    }
});

fn check(m: &Message) {
    let (op, payload) = match m {
        Message::Text(t) => {
            assert!(std::str::from_utf8(t).is_ok(), "text must be UTF-8");
            (0x1, t.to_vec())
        }
        Message::Binary(b) => (0x2, b.to_vec()),
        Message::Ping(b) => (0x9, b.to_vec()),
        Message::Pong(b) => (0xA, b.to_vec()),
        Message::Close(None) => (0x8, Vec::new()),
        Message::Close(Some(c)) => {
            let mut p = c.code.to_be_bytes().to_vec();
            p.extend_from_slice(c.reason.as_bytes());
            (0x8, p)
        }
    };
    let frame = client_frame(true, op, [9, 8, 7, 6], &payload);
    let again = Decoder::new(usize::MAX >> 1)
        .decode(&frame)
        .expect("a message the decoder returned must decode again");
    assert_eq!(again.consumed, frame.len());
    assert_eq!(again.message.as_ref(), Some(m));
}
