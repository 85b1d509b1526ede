//! The TCP framing of the npm packages `p2p-node@0.1.x` and `p2p-manager@0.1.0`.
//!
//! # Wire format
//!
//! Every message is a 24-byte header followed by the payload:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic, `u32` little-endian (default `0xD9B4BEF9`: bytes `f9 be b4 d9`) |
//! | 4 | 12 | command, ASCII, NUL-padded on the right |
//! | 16 | 4 | payload length, `u32` little-endian |
//! | 20 | 4 | checksum: the first 4 bytes of SHA-256(SHA-256(payload)), in digest order |
//! | 24 | length | payload |
//!
//! # What the JavaScript reference does (`p2p-node@0.1.1`, `lib/Peer.js`)
//!
//! These facts were read in the package source and checked by running it under Node 20:
//!
//! - **Default magic** `Peer.prototype.magicBytes = 0xD9B4BEF9` (Bitcoin's main network),
//!   written with `writeUInt32LE`, so the stream starts `f9 be b4 d9`. `p2p-manager@0.1.0`
//!   uses the same default (`options.magic`, passed through `parseInt`) and hands it to every
//!   `Peer`. [`DEFAULT_MAGIC`] is that value.
//! - **Checksum bytes** are the first four bytes of the double SHA-256 digest, copied in digest
//!   order (`checksum.copy(out, 20)`). The receiver compares `msg.readUInt32BE(20)` with
//!   `digest.readUInt32BE(0)`: both big-endian, so this is a plain byte-for-byte comparison of
//!   the four bytes in wire order, which is what [`checksum`] and the [`Decoder`] do. The empty
//!   payload gets the checksum of the empty string, `5d f6 e0 e2`.
//! - **A bad checksum is not enforced by the reference**: it never checks the checksum of an
//!   empty payload, and on a mismatch it only tries to log it — under current Node versions
//!   that log line itself throws (`Number.prototype.toString('hex')`), inside the socket's
//!   `data` handler. This decoder is strict: a frame whose checksum does not match is dropped
//!   and reported as `bad_checksum`. A JavaScript sender always writes the right checksum, so
//!   strictness costs no interoperability.
//! - **Commands longer than 12 characters are silently truncated** by the sender (it writes
//!   `charCodeAt(i)` for `i < 12` only), shorter ones are NUL-padded. Characters are written
//!   with `writeUInt8(charCodeAt(i))`: U+0080…U+00FF go out as one Latin-1 byte, anything
//!   above U+00FF throws `ERR_OUT_OF_RANGE`. The receiver drops **every** NUL byte of the 12
//!   (so `p\0ng` arrives as `png`) and maps each other byte to a character with
//!   `String.fromCharCode` (Latin-1). This codec instead refuses to *encode* a command that is
//!   longer than 12 bytes, not ASCII, or contains NUL ([`CommandError`]), and *decodes* only
//!   commands of ASCII bytes followed by NUL padding; anything else (a Latin-1 byte, a NUL
//!   followed by a non-NUL byte) is reported as `bad_command` and the frame is skipped. The
//!   empty command (12 NULs) is valid: the reference can send it.
//! - **Limits and resynchronisation**: the reference receive buffer is 10 MiB
//!   (`MAX_RECEIVE_BUFFER = 1024*1024*10`); when it overflows, the peer emits an error and
//!   stops decoding for good. Between messages it scans byte by byte for the magic. This
//!   decoder's default [`DecoderConfig::max_payload`] is the same 10 MiB, and it keeps decoding
//!   after every error, as described at [`Decoder`].
//!
//! # Decoding
//!
//! [`Decoder::push`] bytes as they arrive, then [`Decoder::poll`] until it returns `None`
//! (incomplete: more bytes are needed). Each event is a [`Frame`] or a [`DecodeError`] with a
//! stable [`code`](DecodeError::code), a [`Severity`] and a human sentence (its `Display`).
//! The events do not depend on how the stream was split into pushes.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use sha2::{Digest, Sha256};

use super::Severity;

/// The magic of `p2p-node` and `p2p-manager` when none is given: `0xD9B4BEF9`.
pub const DEFAULT_MAGIC: u32 = 0xD9B4_BEF9;

/// The length of a frame header: magic, command, payload length, checksum.
pub const HEADER_LEN: usize = 24;

/// The length of the NUL-padded command field.
pub const COMMAND_LEN: usize = 12;

/// The default [`DecoderConfig::max_payload`]: 10 MiB, the reference's receive buffer.
pub const DEFAULT_MAX_PAYLOAD: u32 = 10 * 1024 * 1024;

/// The decoder reports skipped garbage at the latest after this many bytes (64 KiB), so an
/// endless stream of garbage is reported too, in events of exactly this size.
pub const GARBAGE_REPORT_BYTES: u64 = 64 * 1024;

/// The stable code of [`DecodeError::Garbage`].
pub const CODE_GARBAGE: &str = "garbage";
/// The stable code of [`DecodeError::FrameTooLarge`].
pub const CODE_FRAME_TOO_LARGE: &str = "frame_too_large";
/// The stable code of [`DecodeError::BadChecksum`].
pub const CODE_BAD_CHECKSUM: &str = "bad_checksum";
/// The stable code of [`DecodeError::BadCommand`].
pub const CODE_BAD_COMMAND: &str = "bad_command";

/// The four checksum bytes of `payload`, in wire order: the first four bytes of
/// SHA-256(SHA-256(payload)).
pub fn checksum(payload: &[u8]) -> [u8; 4] {
    let digest = Sha256::digest(Sha256::digest(payload));
    [digest[0], digest[1], digest[2], digest[3]]
}

/// A valid command: at most 12 ASCII bytes, none of them NUL.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Command {
    /// The command, NUL-padded: exactly the wire bytes.
    wire: [u8; COMMAND_LEN],
    /// The number of bytes before the padding.
    len: u8,
}

impl Command {
    /// Validates a command for sending.
    pub fn new(command: &str) -> Result<Self, CommandError> {
        let bytes = command.as_bytes();
        if bytes.len() > COMMAND_LEN {
            return Err(CommandError::TooLong { len: bytes.len() });
        }
        let mut wire = [0; COMMAND_LEN];
        for (index, &byte) in bytes.iter().enumerate() {
            if byte == 0 || !byte.is_ascii() {
                return Err(CommandError::NotAscii { index, byte });
            }
            wire[index] = byte;
        }
        Ok(Command {
            wire,
            // At most COMMAND_LEN (12), checked above.
            len: bytes.len() as u8,
        })
    }

    /// Parses the 12-byte command field of a header: ASCII bytes, then only NULs.
    pub fn from_wire(wire: [u8; COMMAND_LEN]) -> Result<Self, CommandError> {
        let len = wire.iter().position(|&b| b == 0).unwrap_or(COMMAND_LEN);
        if let Some(index) = wire[..len].iter().position(|b| !b.is_ascii()) {
            return Err(CommandError::NotAscii {
                index,
                byte: wire[index],
            });
        }
        if let Some(offset) = wire[len..].iter().position(|&b| b != 0) {
            let index = len + offset;
            return Err(CommandError::BadPadding {
                index,
                byte: wire[index],
            });
        }
        Ok(Command {
            wire,
            len: len as u8,
        })
    }

    /// The command as text.
    pub fn as_str(&self) -> &str {
        // Only ASCII bytes before `len`, checked at construction, so this is valid UTF-8.
        std::str::from_utf8(&self.wire[..usize::from(self.len)]).unwrap_or_default()
    }

    /// The 12 bytes of the command field, NUL-padded.
    pub fn to_wire(&self) -> [u8; COMMAND_LEN] {
        self.wire
    }
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Command({:?})", self.as_str())
    }
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a command is not valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// More than 12 bytes (the reference would silently truncate it).
    #[error("a command has at most 12 bytes, this one has {len}")]
    TooLong {
        /// The length of the command, in bytes.
        len: usize,
    },
    /// A byte that is NUL or not ASCII, before the padding.
    #[error("a command is ASCII without NUL, but byte {index} is {byte:#04x}")]
    NotAscii {
        /// Its offset in the command.
        index: usize,
        /// The byte.
        byte: u8,
    },
    /// A non-NUL byte after the first NUL of the command field.
    #[error("the command's NUL padding holds byte {byte:#04x} at offset {index}")]
    BadPadding {
        /// Its offset in the command field.
        index: usize,
        /// The byte.
        byte: u8,
    },
}

/// Why [`encode`] refused a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The command is not valid.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// The payload does not fit the `u32` length field.
    #[error("a payload of {len} bytes does not fit the 32-bit length field")]
    PayloadTooLarge {
        /// The payload length, in bytes.
        len: usize,
    },
}

/// Appends one frame to `dst`; on error nothing is written.
///
/// The command must be at most 12 ASCII bytes without NUL ([`Command::new`]).
pub fn encode(
    magic: u32,
    command: &str,
    payload: &[u8],
    dst: &mut BytesMut,
) -> Result<(), EncodeError> {
    let command = Command::new(command)?;
    encode_command(magic, command, payload, dst)
}

/// Appends one frame with an already validated command to `dst`; on error nothing is written.
pub fn encode_command(
    magic: u32,
    command: Command,
    payload: &[u8],
    dst: &mut BytesMut,
) -> Result<(), EncodeError> {
    let len = u32::try_from(payload.len())
        .map_err(|_| EncodeError::PayloadTooLarge { len: payload.len() })?;
    dst.reserve(HEADER_LEN + payload.len());
    dst.put_u32_le(magic);
    dst.put_slice(&command.to_wire());
    dst.put_u32_le(len);
    dst.put_slice(&checksum(payload));
    dst.put_slice(payload);
    Ok(())
}

/// One decoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The command.
    pub command: Command,
    /// The payload; its checksum matched.
    pub payload: Bytes,
}

/// Settings of a [`Decoder`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecoderConfig {
    /// The magic that starts every frame. Defaults to [`DEFAULT_MAGIC`] (`0xD9B4BEF9`).
    pub magic: u32,
    /// The largest payload accepted, in bytes; a longer declared length is `frame_too_large`.
    /// The decoder buffers at most this plus [`HEADER_LEN`] bytes. Defaults to
    /// [`DEFAULT_MAX_PAYLOAD`] (10 MiB).
    pub max_payload: u32,
}

impl Default for DecoderConfig {
    fn default() -> Self {
        DecoderConfig {
            magic: DEFAULT_MAGIC,
            max_payload: DEFAULT_MAX_PAYLOAD,
        }
    }
}

/// What a [`Decoder`] found in the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeEvent {
    /// A complete frame with a valid command and checksum.
    Frame(Frame),
    /// Bytes that were skipped, with the reason.
    Error(DecodeError),
}

/// A problem in the stream. The decoder has already recovered when it reports one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Bytes that do not start a frame were skipped up to the next magic (or
    /// [`GARBAGE_REPORT_BYTES`] at a time). Code `garbage`, severity
    /// [`Warning`](Severity::Warning): whatever those bytes were is lost.
    #[error("skipped {skipped} bytes that do not start a frame with magic {magic:#010x}")]
    Garbage {
        /// How many bytes were skipped.
        skipped: u64,
        /// The magic the decoder looks for.
        magic: u32,
    },
    /// A header declared a payload longer than [`DecoderConfig::max_payload`]. The decoder
    /// drops the header's 4 magic bytes and looks for the next magic from there (the rest of
    /// the header and the payload, if there was one, are then reported as `garbage`). Code
    /// `frame_too_large`, severity [`Error`](Severity::Error): the peer broke the limit and
    /// should be disconnected.
    #[error(
        "a frame declares a payload of {declared} bytes, over the limit of {max}; \
         its header was skipped and the stream resynchronised"
    )]
    FrameTooLarge {
        /// The declared payload length.
        declared: u32,
        /// The limit.
        max: u32,
    },
    /// The checksum of a frame does not match its payload; the whole frame was skipped. Code
    /// `bad_checksum`, severity [`Warning`](Severity::Warning): a message was lost, the stream
    /// is still in sync.
    #[error(
        "frame `{command}` ({len} bytes of payload) has checksum {}, but its payload hashes \
         to {}; the frame was dropped",
        hex4(received),
        hex4(computed)
    )]
    BadChecksum {
        /// The frame's command.
        command: Command,
        /// The payload length.
        len: u32,
        /// The checksum in the header, in wire order.
        received: [u8; 4],
        /// The checksum of the payload, in wire order.
        computed: [u8; 4],
    },
    /// The command field of a frame is not ASCII followed by NUL padding; the whole frame was
    /// skipped. Code `bad_command`, severity [`Notice`](Severity::Notice): one well-delimited
    /// frame was dropped, the stream is still in sync.
    #[error(
        "a frame ({len} bytes of payload) was dropped because its command is not valid: {reason}"
    )]
    BadCommand {
        /// The command field as received.
        raw: [u8; COMMAND_LEN],
        /// The payload length.
        len: u32,
        /// What is wrong with it.
        reason: CommandError,
    },
}

impl DecodeError {
    /// The stable machine-readable code: `garbage`, `frame_too_large`, `bad_checksum` or
    /// `bad_command`.
    pub fn code(&self) -> &'static str {
        match self {
            DecodeError::Garbage { .. } => CODE_GARBAGE,
            DecodeError::FrameTooLarge { .. } => CODE_FRAME_TOO_LARGE,
            DecodeError::BadChecksum { .. } => CODE_BAD_CHECKSUM,
            DecodeError::BadCommand { .. } => CODE_BAD_COMMAND,
        }
    }

    /// How bad it is (documented on each variant).
    pub fn severity(&self) -> Severity {
        match self {
            DecodeError::Garbage { .. } | DecodeError::BadChecksum { .. } => Severity::Warning,
            DecodeError::FrameTooLarge { .. } => Severity::Error,
            DecodeError::BadCommand { .. } => Severity::Notice,
        }
    }
}

fn hex4(bytes: &[u8; 4]) -> String {
    format!(
        "{:02x}{:02x}{:02x}{:02x}",
        bytes[0], bytes[1], bytes[2], bytes[3]
    )
}

/// A sans-IO stream decoder of `p2p-node` frames.
///
/// Feed it with [`push`](Self::push), drain it with [`poll`](Self::poll). It never panics and
/// never buffers more than [`capacity`](Self::capacity) bytes (`max_payload` + 24): `push`
/// takes only what fits and returns how many bytes it took; polling frees space, and a full
/// buffer always decodes into at least one event.
///
/// Recovery, in the order the checks run:
///
/// 1. Bytes before the magic are skipped and reported once the next magic is found (or every
///    [`GARBAGE_REPORT_BYTES`]): `garbage`.
/// 2. A declared length over `max_payload`: `frame_too_large`, the magic is dropped, go to 1.
/// 3. Once the whole frame is buffered, a bad command field (`bad_command`) or checksum
///    (`bad_checksum`) drops the whole frame; the next frame follows directly.
///
/// The events are the same however the stream is split into pushes: every decision is taken
/// only when the bytes it depends on are buffered.
#[derive(Debug)]
pub struct Decoder {
    config: DecoderConfig,
    buf: BytesMut,
    /// Garbage bytes skipped and not reported yet; always below [`GARBAGE_REPORT_BYTES`]
    /// between calls.
    skipped: u64,
}

impl Decoder {
    /// A decoder with an empty buffer.
    pub fn new(config: DecoderConfig) -> Self {
        Decoder {
            config,
            buf: BytesMut::new(),
            skipped: 0,
        }
    }

    /// Its settings.
    pub fn config(&self) -> &DecoderConfig {
        &self.config
    }

    /// The most bytes it ever buffers: `max_payload` + [`HEADER_LEN`].
    pub fn capacity(&self) -> usize {
        usize::try_from(self.config.max_payload)
            .unwrap_or(usize::MAX)
            .saturating_add(HEADER_LEN)
    }

    /// How many bytes are buffered and not decoded yet.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// How many bytes the next [`push`](Self::push) can take.
    pub fn free(&self) -> usize {
        self.capacity().saturating_sub(self.buf.len())
    }

    /// Buffers as much of `data` as fits and returns how many bytes were taken. When it took
    /// less than all of `data`, [`poll`](Self::poll) until `None` and push the rest.
    pub fn push(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.free());
        self.buf.extend_from_slice(&data[..n]);
        n
    }

    /// The next event, or `None` when more bytes are needed (the frame is incomplete).
    pub fn poll(&mut self) -> Option<DecodeEvent> {
        let magic = self.config.magic.to_le_bytes();
        if self.buf.len() < magic.len() {
            return None;
        }
        if self.buf[..4] != magic {
            // Skip up to the next magic. Without one, keep the last 3 bytes: they may be the
            // start of a magic split across pushes.
            let found = self.buf.windows(4).position(|w| w == magic);
            let skippable = found.unwrap_or(self.buf.len() - 3);
            let room = GARBAGE_REPORT_BYTES - self.skipped;
            let take = usize::try_from(room).map_or(skippable, |room| skippable.min(room));
            self.buf.advance(take);
            self.skipped += take as u64;
            if self.skipped == GARBAGE_REPORT_BYTES {
                return Some(self.report_garbage());
            }
            found?;
        }
        // The magic is at the front.
        if self.skipped > 0 {
            return Some(self.report_garbage());
        }
        if self.buf.len() < HEADER_LEN {
            return None;
        }
        let declared = u32::from_le_bytes([self.buf[16], self.buf[17], self.buf[18], self.buf[19]]);
        if declared > self.config.max_payload {
            self.buf.advance(magic.len());
            return Some(DecodeEvent::Error(DecodeError::FrameTooLarge {
                declared,
                max: self.config.max_payload,
            }));
        }
        // `declared <= max_payload`, so the total is at most `capacity()` and fits a usize.
        let total = HEADER_LEN.saturating_add(usize::try_from(declared).unwrap_or(usize::MAX));
        if self.buf.len() < total {
            return None;
        }
        let frame = self.buf.split_to(total).freeze();
        let mut raw = [0; COMMAND_LEN];
        raw.copy_from_slice(&frame[4..16]);
        let command = match Command::from_wire(raw) {
            Ok(command) => command,
            Err(reason) => {
                return Some(DecodeEvent::Error(DecodeError::BadCommand {
                    raw,
                    len: declared,
                    reason,
                }))
            }
        };
        let received = [frame[20], frame[21], frame[22], frame[23]];
        let payload = frame.slice(HEADER_LEN..);
        let computed = checksum(&payload);
        if received != computed {
            return Some(DecodeEvent::Error(DecodeError::BadChecksum {
                command,
                len: declared,
                received,
                computed,
            }));
        }
        Some(DecodeEvent::Frame(Frame { command, payload }))
    }

    fn report_garbage(&mut self) -> DecodeEvent {
        let skipped = std::mem::take(&mut self.skipped);
        DecodeEvent::Error(DecodeError::Garbage {
            skipped,
            magic: self.config.magic,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn frame(magic: u32, command: &str, payload: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode(magic, command, payload, &mut out).unwrap();
        out.to_vec()
    }

    /// Pushes `chunks` one after the other, polling to exhaustion after every push.
    fn decode_chunks<'a>(
        config: DecoderConfig,
        chunks: impl IntoIterator<Item = &'a [u8]>,
    ) -> (Vec<DecodeEvent>, Decoder) {
        let mut decoder = Decoder::new(config);
        let mut events = Vec::new();
        for chunk in chunks {
            let mut rest = chunk;
            loop {
                let n = decoder.push(rest);
                rest = &rest[n..];
                assert!(decoder.buffered() <= decoder.capacity());
                while let Some(event) = decoder.poll() {
                    events.push(event);
                }
                if rest.is_empty() {
                    break;
                }
                // A full buffer always yields an event, so the next push makes progress.
                assert!(decoder.free() > 0, "stuck with a full buffer");
            }
        }
        (events, decoder)
    }

    fn decode_all(config: DecoderConfig, bytes: &[u8]) -> Vec<DecodeEvent> {
        decode_chunks(config, [bytes]).0
    }

    fn codes(events: &[DecodeEvent]) -> Vec<&'static str> {
        events
            .iter()
            .map(|e| match e {
                DecodeEvent::Frame(_) => "frame",
                DecodeEvent::Error(e) => e.code(),
            })
            .collect()
    }

    fn small(max_payload: u32) -> DecoderConfig {
        DecoderConfig {
            max_payload,
            ..DecoderConfig::default()
        }
    }

    // Produced by the real package: `npm pack p2p-node@0.1.1`, `npm install` it, then
    // `Peer.prototype.send` on a `new Peer('127.0.0.1', 8333, magic)` whose `socket` is a stub
    // recording `write(buf)`, printing `buf.toString('hex')` (Node 20.20.2):
    // - send('version', Buffer.from('hello')) with the default magic;
    // - send('ping') (no data) with magic 0x01020304;
    // - send('abcdefghijklmnop', Buffer.from([1,2,3])): the sender truncates to 12 bytes;
    // - send('caf\u00e9', Buffer.from([0])): the sender writes the Latin-1 byte 0xe9.
    const JS_VERSION_HELLO: &str = "f9beb4d976657273696f6e0000000000050000009595c9df68656c6c6f";
    const JS_PING_EMPTY_MAGIC_01020304: &str = "0403020170696e670000000000000000000000005df6e0e2";
    const JS_LONG_COMMAND: &str = "f9beb4d96162636465666768696a6b6c0300000019c6197e010203";
    const JS_LATIN1_COMMAND: &str = "f9beb4d9636166e90000000000000000010000001406e05800";

    #[test]
    fn known_answer_encode_matches_the_js_package() {
        assert_eq!(
            frame(DEFAULT_MAGIC, "version", b"hello"),
            hex(JS_VERSION_HELLO)
        );
        assert_eq!(
            frame(0x0102_0304, "ping", b""),
            hex(JS_PING_EMPTY_MAGIC_01020304)
        );
        assert_eq!(checksum(b""), [0x5d, 0xf6, 0xe0, 0xe2]);
    }

    #[test]
    fn known_answer_decode_of_js_frames() {
        let events = decode_all(DecoderConfig::default(), &hex(JS_VERSION_HELLO));
        let [DecodeEvent::Frame(f)] = &events[..] else {
            panic!("{events:?}")
        };
        assert_eq!(
            (f.command.as_str(), &f.payload[..]),
            ("version", &b"hello"[..])
        );

        let config = DecoderConfig {
            magic: 0x0102_0304,
            ..DecoderConfig::default()
        };
        let events = decode_all(config, &hex(JS_PING_EMPTY_MAGIC_01020304));
        let [DecodeEvent::Frame(f)] = &events[..] else {
            panic!("{events:?}")
        };
        assert_eq!((f.command.as_str(), f.payload.len()), ("ping", 0));

        // The JS sender truncated the command; what arrives is a valid 12-byte command.
        let events = decode_all(DecoderConfig::default(), &hex(JS_LONG_COMMAND));
        let [DecodeEvent::Frame(f)] = &events[..] else {
            panic!("{events:?}")
        };
        assert_eq!(
            (f.command.as_str(), &f.payload[..]),
            ("abcdefghijkl", &[1, 2, 3][..])
        );
        // ... which our encoder refuses to do silently.
        assert_eq!(
            encode(DEFAULT_MAGIC, "abcdefghijklmnop", b"", &mut BytesMut::new()),
            Err(EncodeError::Command(CommandError::TooLong { len: 16 }))
        );

        // A Latin-1 command is not ASCII: the frame is skipped, the stream stays in sync.
        let mut stream = hex(JS_LATIN1_COMMAND);
        stream.extend(hex(JS_VERSION_HELLO));
        let events = decode_all(DecoderConfig::default(), &stream);
        assert_eq!(codes(&events), ["bad_command", "frame"]);
        let DecodeEvent::Error(e) = &events[0] else {
            unreachable!()
        };
        assert_eq!(e.severity(), Severity::Notice);
        assert_eq!(
            e,
            &DecodeError::BadCommand {
                raw: *b"caf\xe9\0\0\0\0\0\0\0\0",
                len: 1,
                reason: CommandError::NotAscii {
                    index: 3,
                    byte: 0xe9
                },
            }
        );
    }

    #[test]
    fn incomplete_until_the_last_byte() {
        let bytes = frame(DEFAULT_MAGIC, "tx", b"0123456789");
        let mut decoder = Decoder::new(DecoderConfig::default());
        for &b in &bytes[..bytes.len() - 1] {
            assert_eq!(decoder.push(&[b]), 1);
            assert_eq!(decoder.poll(), None);
        }
        decoder.push(&bytes[bytes.len() - 1..]);
        assert!(matches!(decoder.poll(), Some(DecodeEvent::Frame(_))));
        assert_eq!((decoder.poll(), decoder.buffered()), (None, 0));
    }

    #[test]
    fn resyncs_after_garbage() {
        let mut stream = b"hello, this is not a frame".to_vec();
        stream.extend(frame(DEFAULT_MAGIC, "a", b"1"));
        stream.extend([0xf9, 0xbe, 0xb4]); // a truncated magic is garbage too
        stream.extend(frame(DEFAULT_MAGIC, "b", b"2"));
        let events = decode_all(DecoderConfig::default(), &stream);
        assert_eq!(codes(&events), ["garbage", "frame", "garbage", "frame"]);
        let DecodeEvent::Error(e) = &events[0] else {
            unreachable!()
        };
        assert_eq!(
            e,
            &DecodeError::Garbage {
                skipped: 26,
                magic: DEFAULT_MAGIC
            }
        );
        assert_eq!(e.severity(), Severity::Warning);
        assert!(matches!(
            &events[2],
            DecodeEvent::Error(DecodeError::Garbage { skipped: 3, .. })
        ));
    }

    #[test]
    fn endless_garbage_is_reported_in_bounded_pieces() {
        let garbage = vec![0x55; 3 * GARBAGE_REPORT_BYTES as usize + 10];
        let (events, decoder) = decode_chunks(small(100), garbage.chunks(1000));
        assert_eq!(events.len(), 3);
        for event in &events {
            assert!(matches!(
                event,
                DecodeEvent::Error(DecodeError::Garbage {
                    skipped: GARBAGE_REPORT_BYTES,
                    ..
                })
            ));
        }
        assert!(decoder.buffered() <= 3);
    }

    #[test]
    fn oversized_frame_is_reported_and_skipped() {
        let mut stream = frame(DEFAULT_MAGIC, "big", &[7; 101]);
        stream.extend(frame(DEFAULT_MAGIC, "ok", &[7; 100]));
        let events = decode_all(small(100), &stream);
        assert_eq!(codes(&events), ["frame_too_large", "garbage", "frame"]);
        let DecodeEvent::Error(e) = &events[0] else {
            unreachable!()
        };
        assert_eq!(
            e,
            &DecodeError::FrameTooLarge {
                declared: 101,
                max: 100
            }
        );
        assert_eq!(e.severity(), Severity::Error);
        // The rest of the big frame: 20 header bytes and its payload.
        assert!(matches!(
            &events[1],
            DecodeEvent::Error(DecodeError::Garbage { skipped: 121, .. })
        ));
    }

    #[test]
    fn oversized_header_needs_no_payload_and_memory_stays_bounded() {
        // A header declaring 4 GiB: reported as soon as the header is complete.
        let mut header = frame(DEFAULT_MAGIC, "huge", b"");
        header[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut decoder = Decoder::new(small(16));
        assert_eq!(decoder.push(&header), HEADER_LEN);
        assert!(matches!(
            decoder.poll(),
            Some(DecodeEvent::Error(DecodeError::FrameTooLarge { .. }))
        ));
        // The buffer never takes more than its capacity.
        assert_eq!(decoder.capacity(), 16 + HEADER_LEN);
        let free = decoder.free();
        assert_eq!((free, decoder.push(&[0; 1000])), (20, 20));
        assert_eq!(decoder.buffered(), decoder.capacity());
    }

    #[test]
    fn bad_checksum_skips_only_that_frame() {
        let mut bad = frame(DEFAULT_MAGIC, "pong", b"abc");
        bad[20] ^= 0xff;
        let mut stream = bad.clone();
        stream.extend(frame(DEFAULT_MAGIC, "pong", b"abd"));
        let events = decode_all(DecoderConfig::default(), &stream);
        assert_eq!(codes(&events), ["bad_checksum", "frame"]);
        let DecodeEvent::Error(e) = &events[0] else {
            unreachable!()
        };
        let computed = checksum(b"abc");
        assert_eq!(
            e,
            &DecodeError::BadChecksum {
                command: Command::new("pong").unwrap(),
                len: 3,
                received: [bad[20], bad[21], bad[22], bad[23]],
                computed,
            }
        );
        assert_eq!(e.severity(), Severity::Warning);
        assert!(e.to_string().contains(&hex4(&computed)), "{e}");

        // The empty payload's checksum is checked too (the reference does not).
        let mut empty = frame(DEFAULT_MAGIC, "verack", b"");
        empty[23] ^= 1;
        assert_eq!(
            codes(&decode_all(DecoderConfig::default(), &empty)),
            ["bad_checksum"]
        );
    }

    #[test]
    fn bad_padding_is_a_bad_command() {
        let mut f = frame(DEFAULT_MAGIC, "p", b"x");
        f[6] = b'n'; // "p\0n": the reference would read "pn"
        let events = decode_all(DecoderConfig::default(), &f);
        let [DecodeEvent::Error(e)] = &events[..] else {
            panic!("{events:?}")
        };
        assert_eq!(e.code(), "bad_command");
        assert!(matches!(
            e,
            DecodeError::BadCommand {
                reason: CommandError::BadPadding {
                    index: 2,
                    byte: b'n'
                },
                ..
            }
        ));
    }

    #[test]
    fn encoder_validates_the_command() {
        let mut out = BytesMut::new();
        assert!(encode(DEFAULT_MAGIC, "", b"", &mut out).is_ok());
        assert!(encode(DEFAULT_MAGIC, "twelve_bytes", b"", &mut out).is_ok());
        let written = out.len();
        assert_eq!(
            encode(DEFAULT_MAGIC, "thirteen_byte", b"", &mut out),
            Err(EncodeError::Command(CommandError::TooLong { len: 13 }))
        );
        assert_eq!(
            encode(DEFAULT_MAGIC, "café", b"", &mut out),
            Err(EncodeError::Command(CommandError::NotAscii {
                index: 3,
                byte: 0xc3
            }))
        );
        assert_eq!(
            encode(DEFAULT_MAGIC, "a\0b", b"", &mut out),
            Err(EncodeError::Command(CommandError::NotAscii {
                index: 1,
                byte: 0
            }))
        );
        assert_eq!(out.len(), written, "a refused frame writes nothing");
        let events = decode_all(DecoderConfig::default(), &out);
        assert_eq!(codes(&events), ["frame", "frame"]);
    }

    // --- property tests --------------------------------------------------------------------

    fn command() -> impl Strategy<Value = String> {
        "[\\x01-\\x7f]{0,12}"
    }

    /// A piece of a stream: valid frames, near-misses and garbage.
    fn segment(magic: u32) -> impl Strategy<Value = Vec<u8>> {
        let payload = proptest::collection::vec(any::<u8>(), 0..80);
        prop_oneof![
            4 => (command(), payload.clone()).prop_map(move |(c, p)| frame(magic, &c, &p)),
            1 => proptest::collection::vec(any::<u8>(), 0..40),
            1 => (command(), payload.clone(), 20..24usize, any::<u8>()).prop_map(
                move |(c, p, at, x)| {
                    let mut f = frame(magic, &c, &p);
                    f[at] ^= x | 1; // bad checksum
                    f
                }
            ),
            1 => (command(), payload.clone(), 4..16usize, 0x80..=0xffu8).prop_map(
                move |(c, p, at, x)| {
                    let mut f = frame(magic, &c, &p);
                    f[at] = x; // bad command
                    f
                }
            ),
            1 => (command(), payload, any::<u32>()).prop_map(move |(c, p, len)| {
                let mut f = frame(magic, &c, &p);
                f[16..20].copy_from_slice(&len.to_le_bytes()); // lying length
                f
            }),
            1 => (0..4usize).prop_map(move |n| magic.to_le_bytes()[..n].to_vec()),
        ]
    }

    fn stream() -> impl Strategy<Value = (DecoderConfig, Vec<u8>)> {
        (
            prop_oneof![
                Just(DEFAULT_MAGIC),
                Just(0),
                Just(0x4141_4141),
                any::<u32>()
            ],
            0..120u32,
        )
            .prop_flat_map(|(magic, max_payload)| {
                let config = DecoderConfig { magic, max_payload };
                proptest::collection::vec(segment(magic), 0..12)
                    .prop_map(move |segs| (config, segs.concat()))
            })
    }

    proptest! {
        #[test]
        fn roundtrip(
            magic in any::<u32>(),
            frames in proptest::collection::vec(
                (command(), proptest::collection::vec(any::<u8>(), 0..300)), 0..8),
        ) {
            let mut wire = BytesMut::new();
            for (c, p) in &frames {
                encode(magic, c, p, &mut wire).unwrap();
            }
            let config = DecoderConfig { magic, max_payload: 300 };
            let (events, decoder) = decode_chunks(config, [&wire[..]]);
            prop_assert_eq!(events.len(), frames.len());
            for (event, (c, p)) in events.iter().zip(&frames) {
                let DecodeEvent::Frame(f) = event else {
                    return Err(TestCaseError::fail(format!("not a frame: {event:?}")));
                };
                prop_assert_eq!(f.command.as_str(), c.as_str());
                prop_assert_eq!(&f.payload[..], &p[..]);
            }
            prop_assert_eq!(decoder.buffered(), 0);
        }

        #[test]
        fn decode_never_panics_on_arbitrary_bytes(
            magic in prop_oneof![Just(DEFAULT_MAGIC), Just(0), any::<u32>()],
            max_payload in prop_oneof![0..64u32, Just(u32::MAX), any::<u32>()],
            bytes in proptest::collection::vec(any::<u8>(), 0..2048),
            chunk in 1..64usize,
        ) {
            let config = DecoderConfig { magic, max_payload };
            let (events, decoder) = decode_chunks(config, bytes.chunks(chunk));
            prop_assert!(decoder.buffered() <= decoder.capacity());
            for event in &events {
                if let DecodeEvent::Error(e) = event {
                    prop_assert!(!e.to_string().is_empty());
                    let _ = e.severity();
                }
            }
        }

        #[test]
        fn splitting_the_stream_changes_nothing(
            (config, bytes) in stream(),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let whole = decode_all(config, &bytes);
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut start = 0;
            for cut in cuts.into_iter().chain([bytes.len()]) {
                chunks.push(&bytes[start..cut]);
                start = cut;
            }
            let (split, _) = decode_chunks(config, chunks);
            prop_assert_eq!(&split, &whole);
            // Byte by byte too.
            let (bytewise, _) = decode_chunks(config, bytes.chunks(1));
            prop_assert_eq!(&bytewise, &whole);
        }

    }
}
