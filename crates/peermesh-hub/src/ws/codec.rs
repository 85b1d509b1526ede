//! The server side of RFC 6455 framing, sans IO: bytes in, messages out; messages in, bytes out.
//!
//! The decoder reads frames from the front of a byte slice and says how many bytes it used, so
//! the caller keeps only what is left of an incomplete frame. Every payload is copied out of
//! that slice while it is unmasked (one pass), so a message owns exactly its bytes and the read
//! buffer can be given back as soon as it is empty. Fragmented messages are joined; control
//! frames may arrive between fragments. Whatever the client sends that RFC 6455 forbids a
//! server to accept is a [`ProtocolError`] with the close code to answer it with.

use bytes::{BufMut, Bytes};

/// A WebSocket message, or a control frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A text message. Decoded ones are checked to be UTF-8; the hub sends only encoder output.
    Text(Bytes),
    /// A binary message.
    Binary(Bytes),
    /// A ping (the socket answers it itself).
    Ping(Bytes),
    /// A pong.
    Pong(Bytes),
    /// A close frame, with its code and reason when it has them.
    Close(Option<CloseFrame>),
}

/// The code and reason of a close frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseFrame {
    /// The close code (1000 normal, 1001 going away, 1002 protocol error, …).
    pub code: u16,
    /// Why, in at most 123 bytes of UTF-8.
    pub reason: String,
}

/// What a client sent that a WebSocket server must refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// RSV1–3 set while no extension was negotiated.
    #[error("reserved bits are set in a frame header, but no extension was negotiated")]
    Reserved,
    /// An opcode RFC 6455 does not define.
    #[error("unknown opcode {0:#x}")]
    Opcode(u8),
    /// A client frame without a mask.
    #[error("a client's frames must be masked")]
    Unmasked,
    /// A 64-bit payload length with its most significant bit set.
    #[error("the payload length has its most significant bit set")]
    Length,
    /// A control frame without FIN.
    #[error("a control frame must not be fragmented")]
    FragmentedControl,
    /// A control frame over 125 bytes.
    #[error("a control frame carries at most 125 bytes, not {0}")]
    ControlTooLong(u64),
    /// A continuation frame with no fragmented message to continue.
    #[error("a continuation frame arrived with no fragmented message to continue")]
    Continuation,
    /// A new text or binary frame while a fragmented message is unfinished.
    #[error("a new message began before the fragmented one ended")]
    Interleaved,
    /// A message over the limit.
    #[error("the message has at least {size} bytes, over the limit of {max}")]
    TooLarge {
        /// Bytes known so far (the whole message, or its fragments up to this one).
        size: u64,
        /// The limit.
        max: usize,
    },
    /// A text message, or a close reason, that is not UTF-8.
    #[error("a text message or close reason is not valid UTF-8")]
    Utf8,
    /// A close frame with one byte, or a close code no endpoint may send.
    #[error("invalid close frame: {0}")]
    Close(&'static str),
}

impl ProtocolError {
    /// The close code that answers this error (RFC 6455 §7.4.1).
    pub fn close_code(&self) -> u16 {
        match self {
            ProtocolError::TooLarge { .. } => 1009,
            ProtocolError::Utf8 => 1007,
            _ => 1002,
        }
    }
}

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// What one call to [`Decoder::decode`] did.
#[derive(Debug, PartialEq, Eq)]
pub struct Decoded {
    /// Bytes used from the front of the input (0 when the next frame is incomplete).
    pub consumed: usize,
    /// A complete message or control frame, if one ended here.
    pub message: Option<Message>,
}

/// A fragmented message being joined.
#[derive(Debug)]
struct Partial {
    text: bool,
    bytes: Vec<u8>,
}

/// Turns the bytes a client sends into messages.
#[derive(Debug)]
pub struct Decoder {
    max_message: usize,
    partial: Option<Partial>,
}

impl Decoder {
    /// A decoder that refuses messages over `max_message` bytes (as soon as a header says so,
    /// before their payload arrives).
    pub fn new(max_message: usize) -> Self {
        Self {
            max_message,
            partial: None,
        }
    }

    /// The largest message it accepts.
    pub fn max_message(&self) -> usize {
        self.max_message
    }

    /// Whether a fragmented message is unfinished.
    pub fn in_message(&self) -> bool {
        self.partial.is_some()
    }

    /// Decodes the frame at the front of `input`. With `consumed == 0` the frame is
    /// incomplete: call again with more bytes. A frame that continues a fragmented message is
    /// consumed without a message until its last fragment.
    pub fn decode(&mut self, input: &[u8]) -> Result<Decoded, ProtocolError> {
        const INCOMPLETE: Decoded = Decoded {
            consumed: 0,
            message: None,
        };
        let [b0, b1, ..] = *input else {
            return Ok(INCOMPLETE);
        };
        let fin = b0 & 0x80 != 0;
        if b0 & 0x70 != 0 {
            return Err(ProtocolError::Reserved);
        }
        let opcode = b0 & 0x0F;
        let control = match opcode {
            OP_CONTINUATION | OP_TEXT | OP_BINARY => false,
            OP_CLOSE | OP_PING | OP_PONG => true,
            other => return Err(ProtocolError::Opcode(other)),
        };
        if b1 & 0x80 == 0 {
            return Err(ProtocolError::Unmasked);
        }
        let (len, at) = match b1 & 0x7F {
            126 => match input.get(2..4) {
                Some(&[a, b]) => (u64::from(u16::from_be_bytes([a, b])), 4),
                _ => return Ok(INCOMPLETE),
            },
            127 => match input.get(2..10).map(<[u8; 8]>::try_from) {
                Some(Ok(b)) => (u64::from_be_bytes(b), 10),
                _ => return Ok(INCOMPLETE),
            },
            n => (u64::from(n), 2),
        };
        if len >> 63 != 0 {
            return Err(ProtocolError::Length);
        }
        if control {
            if !fin {
                return Err(ProtocolError::FragmentedControl);
            }
            if len > 125 {
                return Err(ProtocolError::ControlTooLong(len));
            }
        } else {
            match (&self.partial, opcode) {
                (None, OP_CONTINUATION) => return Err(ProtocolError::Continuation),
                (Some(_), OP_TEXT | OP_BINARY) => return Err(ProtocolError::Interleaved),
                _ => {}
            }
            let before = self.partial.as_ref().map_or(0, |p| p.bytes.len() as u64);
            let size = before.saturating_add(len);
            if size > self.max_message as u64 {
                return Err(ProtocolError::TooLarge {
                    size,
                    max: self.max_message,
                });
            }
        }
        let Some(&[k0, k1, k2, k3]) = input.get(at..at + 4) else {
            return Ok(INCOMPLETE);
        };
        let start = at + 4;
        // `len` is at most `max_message` or 125 here, so it fits a usize.
        let end = start + len as usize;
        let Some(masked) = input.get(start..end) else {
            return Ok(INCOMPLETE);
        };
        let key = [k0, k1, k2, k3];
        let message = match opcode {
            OP_CONTINUATION => {
                let Some(p) = self.partial.as_mut() else {
                    return Err(ProtocolError::Continuation);
                };
                unmask_into(masked, key, &mut p.bytes);
                if fin {
                    let Some(p) = self.partial.take() else {
                        return Err(ProtocolError::Continuation);
                    };
                    Some(finish(p.text, p.bytes)?)
                } else {
                    None
                }
            }
            OP_TEXT | OP_BINARY => {
                let mut bytes = Vec::with_capacity(masked.len());
                unmask_into(masked, key, &mut bytes);
                let text = opcode == OP_TEXT;
                if fin {
                    Some(finish(text, bytes)?)
                } else {
                    self.partial = Some(Partial { text, bytes });
                    None
                }
            }
            _ => {
                let mut bytes = Vec::with_capacity(masked.len());
                unmask_into(masked, key, &mut bytes);
                Some(match opcode {
                    OP_PING => Message::Ping(bytes.into()),
                    OP_PONG => Message::Pong(bytes.into()),
                    _ => Message::Close(close_payload(&bytes)?),
                })
            }
        };
        Ok(Decoded {
            consumed: end,
            message,
        })
    }
}

/// The whole length (header, mask key and payload) of the frame at the front of `input`, once
/// its header has arrived and if that length is at most `max`: what a reader must hold to
/// decode it. `None` if the header is incomplete or the frame longer than `max`. It checks
/// nothing else: [`Decoder::decode`] does.
pub fn frame_len(input: &[u8], max: usize) -> Option<usize> {
    let b1 = *input.get(1)?;
    let (len, header) = match b1 & 0x7F {
        126 => (
            u64::from(u16::from_be_bytes(input.get(2..4)?.try_into().ok()?)),
            4,
        ),
        127 => (u64::from_be_bytes(input.get(2..10)?.try_into().ok()?), 10),
        n => (u64::from(n), 2),
    };
    let mask = if b1 & 0x80 != 0 { 4 } else { 0 };
    let total = usize::try_from(len).ok()?.checked_add(header + mask)?;
    (total <= max).then_some(total)
}

fn finish(text: bool, bytes: Vec<u8>) -> Result<Message, ProtocolError> {
    if text {
        std::str::from_utf8(&bytes).map_err(|_| ProtocolError::Utf8)?;
        Ok(Message::Text(bytes.into()))
    } else {
        Ok(Message::Binary(bytes.into()))
    }
}

/// The code and reason of a received close frame.
fn close_payload(bytes: &[u8]) -> Result<Option<CloseFrame>, ProtocolError> {
    match bytes {
        [] => Ok(None),
        [_] => Err(ProtocolError::Close("a close payload of one byte")),
        [a, b, reason @ ..] => {
            let code = u16::from_be_bytes([*a, *b]);
            if !sendable_close_code(code) {
                return Err(ProtocolError::Close("a close code no endpoint may send"));
            }
            let reason = std::str::from_utf8(reason).map_err(|_| ProtocolError::Utf8)?;
            Ok(Some(CloseFrame {
                code,
                reason: reason.to_owned(),
            }))
        }
    }
}

/// Close codes an endpoint may put in a close frame (RFC 6455 §7.4, and the registry's
/// 1012–1014).
fn sendable_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Appends `masked` to `out`, unmasked with `key` (eight bytes at a time).
fn unmask_into(masked: &[u8], key: [u8; 4], out: &mut Vec<u8>) {
    out.reserve(masked.len());
    let wide = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = masked.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        out.extend_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    // Each whole chunk is 8 bytes, so the tail starts at key index 0.
    for (i, b) in chunks.remainder().iter().enumerate() {
        out.push(b ^ key[i % 4]);
    }
}

/// Appends a server frame (FIN set, not masked) with `payload` to `out`.
pub fn encode_frame(opcode: u8, payload: &[u8], out: &mut impl BufMut) {
    out.put_u8(0x80 | opcode);
    match payload.len() {
        n @ 0..=125 => out.put_u8(n as u8),
        n @ 126..=0xFFFF => {
            out.put_u8(126);
            out.put_u16(n as u16);
        }
        n => {
            out.put_u8(127);
            out.put_u64(n as u64);
        }
    }
    out.put_slice(payload);
}

/// Appends `message` as a server frame to `out`.
pub fn encode(message: &Message, out: &mut impl BufMut) {
    match message {
        Message::Text(b) => encode_frame(OP_TEXT, b, out),
        Message::Binary(b) => encode_frame(OP_BINARY, b, out),
        Message::Ping(b) => encode_frame(OP_PING, &b[..b.len().min(125)], out),
        Message::Pong(b) => encode_frame(OP_PONG, &b[..b.len().min(125)], out),
        Message::Close(None) => encode_frame(OP_CLOSE, &[], out),
        Message::Close(Some(c)) => {
            let mut payload = Vec::with_capacity(2 + c.reason.len());
            payload.extend_from_slice(&c.code.to_be_bytes());
            payload.extend_from_slice(truncate_utf8(&c.reason, 123).as_bytes());
            encode_frame(OP_CLOSE, &payload, out);
        }
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
pub fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    &s[..cut]
}

/// A client frame (masked with `key`) for tests and fuzzing.
pub fn client_frame(fin: bool, opcode: u8, key: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(if fin { 0x80 } else { 0 } | opcode);
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n @ 126..=0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// Decodes everything in `input`, one message per call, as the socket does.
    fn decode_all(
        d: &mut Decoder,
        mut input: &[u8],
    ) -> Result<(Vec<Message>, usize), ProtocolError> {
        let mut out = Vec::new();
        loop {
            let r = d.decode(input)?;
            if r.consumed == 0 {
                return Ok((out, input.len()));
            }
            input = &input[r.consumed..];
            out.extend(r.message);
        }
    }

    #[test]
    fn frame_len_reads_the_header_only_and_respects_the_cap() {
        let small = client_frame(true, OP_TEXT, KEY, b"hello");
        assert_eq!(frame_len(&small, 1 << 20), Some(small.len()));
        assert_eq!(frame_len(&small[..1], 1 << 20), None);
        let big = client_frame(true, OP_BINARY, KEY, &vec![7u8; 70_000]);
        // The 64-bit length is complete after 10 bytes; the payload need not have arrived.
        assert_eq!(frame_len(&big[..10], 1 << 20), Some(big.len()));
        assert_eq!(frame_len(&big[..9], 1 << 20), None);
        assert_eq!(frame_len(&big[..10], 70_000), None, "over the cap");
        let mid = client_frame(true, OP_BINARY, KEY, &vec![7u8; 300]);
        assert_eq!(frame_len(&mid[..4], 1 << 20), Some(mid.len()));
        // A length no buffer could hold is refused, not overflowed.
        let huge = [0x82, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];
        assert_eq!(frame_len(&huge, usize::MAX), None);
    }

    #[test]
    fn a_masked_text_frame_is_a_text_message() {
        let mut d = Decoder::new(1024);
        let f = client_frame(true, OP_TEXT, KEY, b"Hello");
        // RFC 6455 §5.7's example, with another key.
        let r = d.decode(&f).expect("valid");
        assert_eq!(r.consumed, f.len());
        assert_eq!(r.message, Some(Message::Text(Bytes::from_static(b"Hello"))));
    }

    #[test]
    fn lengths_of_16_and_64_bits_decode() {
        for n in [125usize, 126, 127, 65_535, 65_536, 70_000] {
            let payload: Vec<u8> = (0..n).map(|i| i as u8).collect();
            let f = client_frame(true, OP_BINARY, KEY, &payload);
            let mut d = Decoder::new(1 << 20);
            let r = d.decode(&f).expect("valid");
            assert_eq!(r.consumed, f.len(), "{n}");
            assert_eq!(r.message, Some(Message::Binary(payload.into())), "{n}");
        }
    }

    #[test]
    fn an_incomplete_frame_consumes_nothing_at_every_cut() {
        let f = client_frame(true, OP_BINARY, KEY, &[7u8; 300]);
        for cut in 0..f.len() {
            let mut d = Decoder::new(1024);
            assert_eq!(
                d.decode(&f[..cut]).expect("no error on a prefix"),
                Decoded {
                    consumed: 0,
                    message: None
                },
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn fragments_join_and_control_frames_pass_between_them() {
        let mut input = client_frame(false, OP_TEXT, KEY, "héllo, ".as_bytes());
        input.extend(client_frame(true, OP_PING, KEY, b"p"));
        input.extend(client_frame(false, OP_CONTINUATION, KEY, b"wor"));
        input.extend(client_frame(true, OP_CONTINUATION, KEY, b"ld"));
        let mut d = Decoder::new(1024);
        let (msgs, left) = decode_all(&mut d, &input).expect("valid");
        assert_eq!(left, 0);
        assert_eq!(
            msgs,
            vec![
                Message::Ping(Bytes::from_static(b"p")),
                Message::Text(Bytes::from("héllo, world"))
            ]
        );
        assert!(!d.in_message());
    }

    #[test]
    fn a_utf8_character_split_over_fragments_is_valid() {
        let s = "é".as_bytes();
        let mut input = client_frame(false, OP_TEXT, KEY, &s[..1]);
        input.extend(client_frame(true, OP_CONTINUATION, KEY, &s[1..]));
        let (msgs, _) = decode_all(&mut Decoder::new(16), &input).expect("valid");
        assert_eq!(msgs, vec![Message::Text(Bytes::from("é"))]);
    }

    #[test]
    fn forbidden_frames_are_errors_with_their_close_codes() {
        let cases: Vec<(Vec<u8>, ProtocolError, u16)> = vec![
            (
                {
                    let mut f = client_frame(true, OP_TEXT, KEY, b"x");
                    f[0] |= 0x40;
                    f
                },
                ProtocolError::Reserved,
                1002,
            ),
            (
                client_frame(true, 0x3, KEY, b""),
                ProtocolError::Opcode(3),
                1002,
            ),
            (
                client_frame(true, 0xB, KEY, b""),
                ProtocolError::Opcode(0xB),
                1002,
            ),
            (vec![0x81, 0x01, b'x'], ProtocolError::Unmasked, 1002),
            (
                client_frame(false, OP_PING, KEY, b""),
                ProtocolError::FragmentedControl,
                1002,
            ),
            (
                client_frame(true, OP_PONG, KEY, &[0; 126]),
                ProtocolError::ControlTooLong(126),
                1002,
            ),
            (
                client_frame(true, OP_CONTINUATION, KEY, b"x"),
                ProtocolError::Continuation,
                1002,
            ),
            (
                client_frame(true, OP_TEXT, KEY, &[0xff, 0xfe]),
                ProtocolError::Utf8,
                1007,
            ),
            (
                client_frame(true, OP_CLOSE, KEY, &[0x03]),
                ProtocolError::Close("a close payload of one byte"),
                1002,
            ),
            (
                client_frame(true, OP_CLOSE, KEY, &1005u16.to_be_bytes()),
                ProtocolError::Close("a close code no endpoint may send"),
                1002,
            ),
            (
                client_frame(true, OP_BINARY, KEY, &[0; 65]),
                ProtocolError::TooLarge { size: 65, max: 64 },
                1009,
            ),
            (
                vec![0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0],
                ProtocolError::Length,
                1002,
            ),
        ];
        for (input, want, code) in cases {
            let got = Decoder::new(64)
                .decode(&input)
                .expect_err("must be refused");
            assert_eq!(got, want);
            assert_eq!(got.close_code(), code, "{want}");
        }
    }

    #[test]
    fn a_frame_over_the_limit_is_refused_before_its_payload_arrives() {
        // Only the header of a 1 GB frame: refused at once, nothing buffered.
        let mut header = vec![0x82, 0x80 | 127];
        header.extend_from_slice(&(1u64 << 30).to_be_bytes());
        let err = Decoder::new(1 << 20)
            .decode(&header)
            .expect_err("too large");
        assert_eq!(
            err,
            ProtocolError::TooLarge {
                size: 1 << 30,
                max: 1 << 20
            }
        );
    }

    #[test]
    fn fragments_count_against_the_limit_together() {
        let mut d = Decoder::new(10);
        let first = client_frame(false, OP_BINARY, KEY, &[1; 6]);
        assert_eq!(d.decode(&first).expect("fits").consumed, first.len());
        let second = client_frame(true, OP_CONTINUATION, KEY, &[2; 6]);
        assert_eq!(
            d.decode(&second).expect_err("too large"),
            ProtocolError::TooLarge { size: 12, max: 10 }
        );
    }

    #[test]
    fn a_new_message_inside_a_fragmented_one_is_refused() {
        let mut d = Decoder::new(64);
        let first = client_frame(false, OP_BINARY, KEY, b"ab");
        d.decode(&first).expect("valid");
        let again = client_frame(true, OP_TEXT, KEY, b"c");
        assert_eq!(d.decode(&again), Err(ProtocolError::Interleaved));
    }

    #[test]
    fn close_frames_carry_their_code_and_reason() {
        let mut payload = 4000u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"bye");
        let f = client_frame(true, OP_CLOSE, KEY, &payload);
        let r = Decoder::new(64).decode(&f).expect("valid");
        assert_eq!(
            r.message,
            Some(Message::Close(Some(CloseFrame {
                code: 4000,
                reason: "bye".into()
            })))
        );
        let empty = client_frame(true, OP_CLOSE, KEY, b"");
        let r = Decoder::new(64).decode(&empty).expect("valid");
        assert_eq!(r.message, Some(Message::Close(None)));
    }

    #[test]
    fn server_frames_use_the_shortest_length_and_no_mask() {
        for (n, header) in [
            (0usize, 2usize),
            (125, 2),
            (126, 4),
            (65_535, 4),
            (65_536, 10),
        ] {
            let mut out = Vec::new();
            encode_frame(OP_BINARY, &vec![9u8; n], &mut out);
            assert_eq!(out.len(), header + n, "{n}");
            assert_eq!(out[0], 0x82);
            assert_eq!(out[1] & 0x80, 0, "not masked");
        }
        let mut out = Vec::new();
        let reason = "é".repeat(100);
        encode(
            &Message::Close(Some(CloseFrame { code: 1008, reason })),
            &mut out,
        );
        // 2 header bytes, the code, and 61 two-byte characters (122 ≤ 123 bytes).
        assert_eq!(out.len(), 2 + 2 + 122);
    }

    proptest! {
        /// Any sequence of messages, fragmented anywhere with pings between fragments, masked
        /// with any keys and delivered in any chunks, decodes to the same messages in order.
        #[test]
        fn messages_survive_any_fragmentation_and_any_chunking(
            msgs in proptest::collection::vec(
                (any::<bool>(), proptest::collection::vec(any::<u8>(), 0..300), 1usize..4),
                1..12,
            ),
            key in any::<[u8; 4]>(),
            chunk in 1usize..64,
        ) {
            let mut wire = Vec::new();
            let mut want = Vec::new();
            for (text, raw, pieces) in &msgs {
                let payload: Vec<u8> = if *text {
                    String::from_utf8_lossy(raw).into_owned().into_bytes()
                } else {
                    raw.clone()
                };
                // Cut on character boundaries only where needed: split by bytes anyway, the
                // decoder checks UTF-8 on the joined message.
                let step = payload.len().div_ceil(*pieces).max(1);
                let parts: Vec<&[u8]> = if payload.is_empty() {
                    vec![&payload[..]]
                } else {
                    payload.chunks(step).collect()
                };
                for (i, part) in parts.iter().enumerate() {
                    let op = if i == 0 { if *text { OP_TEXT } else { OP_BINARY } } else { OP_CONTINUATION };
                    wire.extend(client_frame(i + 1 == parts.len(), op, key, part));
                    if i == 0 && parts.len() > 1 {
                        wire.extend(client_frame(true, OP_PING, key, b"hi"));
                        want.push(Message::Ping(Bytes::from_static(b"hi")));
                    }
                }
                want.push(if *text { Message::Text(payload.into()) } else { Message::Binary(payload.into()) });
            }
            // Feed in chunks, keeping what is left of an incomplete frame, as the socket does.
            let mut d = Decoder::new(1 << 16);
            let mut pending: Vec<u8> = Vec::new();
            let mut got = Vec::new();
            for piece in wire.chunks(chunk) {
                pending.extend_from_slice(piece);
                let (msgs, left) = decode_all(&mut d, &pending).expect("valid stream");
                got.extend(msgs);
                pending.drain(..pending.len() - left);
            }
            prop_assert!(pending.is_empty());
            prop_assert_eq!(got, want);
        }

        /// Arbitrary bytes never panic the decoder, and it never claims more than it was given.
        #[test]
        fn arbitrary_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut d = Decoder::new(256);
            let mut rest = &input[..];
            while let Ok(r) = d.decode(rest) {
                prop_assert!(r.consumed <= rest.len());
                if r.consumed == 0 {
                    break;
                }
                rest = &rest[r.consumed..];
            }
        }
    }
}
