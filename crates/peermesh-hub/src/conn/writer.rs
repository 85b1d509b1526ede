//! Writing to the socket: `seq` numbering, batching, close frames.

use crate::ws::{codec::truncate_utf8, CloseFrame, Message};
use bytes::BytesMut;
use peermesh_proto::{EncodedBody, Encoding, ErrorCode};

/// Chunk from which consecutive outgoing frames are carved (one allocation per chunk).
const CHUNK: usize = 16 << 10;

/// The WebSocket close code for a fatal error.
pub(crate) fn close_code(code: ErrorCode) -> u16 {
    match code {
        ErrorCode::ShuttingDown => 1001,
        ErrorCode::FrameTooLarge => 1009,
        ErrorCode::Internal => 1011,
        _ => 1008,
    }
}

/// A close frame whose reason fits the 123-byte limit.
pub(crate) fn close_frame(code: ErrorCode, message: &str) -> Message {
    let reason = if code == ErrorCode::ShuttingDown {
        "server shutting down".to_string()
    } else {
        format!("{code}: {message}")
    };
    Message::Close(Some(CloseFrame {
        code: close_code(code),
        reason: truncate_utf8(&reason, 123).to_owned(),
    }))
}

/// Numbers outgoing frames and turns encoded bodies into WebSocket messages.
#[derive(Debug)]
pub(crate) struct Framer {
    seq: u64,
    buf: BytesMut,
}

impl Framer {
    /// A framer whose next frame gets `last_seq + 1`.
    pub(crate) fn new(last_seq: u64) -> Self {
        Self {
            seq: last_seq,
            buf: BytesMut::new(),
        }
    }

    /// The complete message for `body`, with the next `seq`.
    pub(crate) fn message(&mut self, body: &EncodedBody) -> Message {
        self.seq += 1;
        let need = body.encoded_len();
        if self.buf.capacity() - self.buf.len() < need {
            self.buf.reserve(need.max(CHUNK));
        }
        body.write_with_seq(self.seq, &mut self.buf);
        let frame = self.buf.split().freeze();
        match body.encoding() {
            Encoding::Json => Message::Text(frame),
            Encoding::MsgPack => Message::Binary(frame),
        }
    }

    /// The `seq` of the last frame numbered.
    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }

    /// Gives the current chunk back (an idle connection holds no buffer).
    pub(crate) fn release(&mut self) {
        self.buf = BytesMut::new();
    }
}
