//! Streams: the binary data frame and the sans-IO rules of flow control and half-close.
//!
//! Stream bytes travel in a compact binary WebSocket message, whatever the connection's
//! encoding (the other stream frames are ordinary JSON / MessagePack maps):
//!
//! ```text
//!   offset 0   1 byte    0x01 (DATA_FRAME_TAG; a MessagePack map never starts with it)
//!   offset 1   8 bytes   seq, unsigned big-endian (hub → client; clients write 0)
//!   offset 9   8 bytes   stream id, unsigned big-endian (in the receiving connection's id space)
//!   offset 17  1 or more bytes of stream data
//! ```
//!
//! [`SendCredit`] and [`RecvWindow`] hold the credit accounting of one direction of a stream;
//! [`HalfClose`] its ends. The hub and the Rust client both run them; they never do I/O.

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::DecodeError;
use crate::error::ErrorCode;

/// First byte of a data frame.
pub const DATA_FRAME_TAG: u8 = 0x01;
/// Length of a data frame's header (tag, seq, stream id).
pub const DATA_HEADER_LEN: usize = 17;
/// The window a receiver grants when nothing else is configured (1 MiB).
///
/// Throughput is at most the window per credit round trip (reader → hub → writer). Through a
/// hub on loopback that round trip is about 0.4 ms, so 256 KiB held a stream near 600 MiB/s
/// where a TCP relay moves 1.3–1.5 GiB/s; 1 MiB lets it reach 800+ MiB/s (docs/benchmarks.md
/// (d)). The hub holds at most this much of a stream its reader does not read.
pub const DEFAULT_WINDOW: u64 = 1 << 20;
/// Longest `reason` of `stream_reject` and `stream_reset`, in bytes.
pub const MAX_REASON_LEN: usize = 1024;

/// Whether a binary WebSocket message is a data frame (rather than a MessagePack map).
pub fn is_data_frame(message: &[u8]) -> bool {
    message.first() == Some(&DATA_FRAME_TAG)
}

/// One data frame: bytes of one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataFrame {
    /// The hub's sequence number (0 in frames from clients).
    pub seq: u64,
    /// The stream id, in the id space of the connection that carries the frame.
    pub stream: u64,
    /// The bytes (at least one).
    pub data: Bytes,
}

impl DataFrame {
    /// Parses a data frame without copying its bytes.
    pub fn decode(message: Bytes) -> Result<DataFrame, DecodeError> {
        let bad = |m: &str| DecodeError {
            code: ErrorCode::Malformed,
            message: m.to_owned(),
            req: None,
        };
        if !is_data_frame(&message) {
            return Err(bad("a data frame starts with the byte 0x01"));
        }
        let header = message
            .get(1..DATA_HEADER_LEN)
            .ok_or_else(|| bad("a data frame has a 17-byte header (tag, seq, stream id)"))?;
        let mut seq = [0u8; 8];
        let mut stream = [0u8; 8];
        seq.copy_from_slice(&header[..8]);
        stream.copy_from_slice(&header[8..]);
        if message.len() == DATA_HEADER_LEN {
            return Err(DecodeError {
                code: ErrorCode::InvalidField,
                message: "a data frame carries at least one byte of data".to_owned(),
                req: None,
            });
        }
        Ok(DataFrame {
            seq: u64::from_be_bytes(seq),
            stream: u64::from_be_bytes(stream),
            data: message.slice(DATA_HEADER_LEN..),
        })
    }

    /// Writes a header for `data_len` bytes that follow.
    pub fn put_header(out: &mut BytesMut, seq: u64, stream: u64) {
        out.put_u8(DATA_FRAME_TAG);
        out.put_u64(seq);
        out.put_u64(stream);
    }

    /// The complete frame in a fresh buffer.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(DATA_HEADER_LEN + self.data.len());
        Self::put_header(&mut out, self.seq, self.stream);
        out.put_slice(&self.data);
        out.freeze()
    }
}

/// A broken flow-control or state rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FlowError {
    /// More data than the credit allows.
    #[error("{len} bytes of data with only {credit} bytes of credit")]
    OverCredit {
        /// The data's length.
        len: u64,
        /// The credit left.
        credit: u64,
    },
    /// Credit that would exceed the largest window.
    #[error("credit of {credit} bytes would exceed the largest window of {max} bytes")]
    OverWindow {
        /// The credit after the grant.
        credit: u64,
        /// The largest window.
        max: u64,
    },
}

impl FlowError {
    /// The wire code of the violation.
    pub fn code(self) -> ErrorCode {
        ErrorCode::FlowControl
    }
}

/// The sending side's credit: bytes granted by the receiver and not yet sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendCredit {
    credit: u64,
    max: u64,
}

impl SendCredit {
    /// Starts with the receiver's initial `window`; grants may never take the credit above
    /// `max`.
    pub fn new(window: u64, max: u64) -> Result<Self, FlowError> {
        if window > max {
            return Err(FlowError::OverWindow {
                credit: window,
                max,
            });
        }
        Ok(Self {
            credit: window,
            max,
        })
    }

    /// No credit yet (the receiver has not said its window).
    pub fn none(max: u64) -> Self {
        Self { credit: 0, max }
    }

    /// Bytes that may be sent now.
    pub fn available(&self) -> u64 {
        self.credit
    }

    /// The receiver granted `bytes` more.
    pub fn grant(&mut self, bytes: u64) -> Result<(), FlowError> {
        let credit = self.credit.saturating_add(bytes);
        if credit > self.max {
            return Err(FlowError::OverWindow {
                credit,
                max: self.max,
            });
        }
        self.credit = credit;
        Ok(())
    }

    /// `len` bytes are being sent.
    pub fn consume(&mut self, len: u64) -> Result<(), FlowError> {
        if len > self.credit {
            return Err(FlowError::OverCredit {
                len,
                credit: self.credit,
            });
        }
        self.credit -= len;
        Ok(())
    }
}

/// The receiving side's window: what it granted, what arrived, what the application read.
///
/// The receiver grants `window` bytes up front. Bytes that arrive use up credit; bytes the
/// application reads are given back as credit once at least half the window has been read, so
/// a steady transfer costs two credit frames per window and the receiver never holds more
/// than `window` unread bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvWindow {
    window: u64,
    /// Granted and not yet used by arriving data.
    outstanding: u64,
    /// Arrived and not yet read.
    buffered: u64,
    /// Read and not yet granted again.
    consumed: u64,
}

impl RecvWindow {
    /// A window of `window` bytes, all of it granted.
    pub fn new(window: u64) -> Self {
        Self {
            window,
            outstanding: window,
            buffered: 0,
            consumed: 0,
        }
    }

    /// The window's size.
    pub fn window(&self) -> u64 {
        self.window
    }

    /// Bytes that arrived and were not read yet.
    pub fn buffered(&self) -> u64 {
        self.buffered
    }

    /// `len` bytes arrived.
    pub fn on_data(&mut self, len: u64) -> Result<(), FlowError> {
        if len > self.outstanding {
            return Err(FlowError::OverCredit {
                len,
                credit: self.outstanding,
            });
        }
        self.outstanding -= len;
        self.buffered += len;
        Ok(())
    }

    /// The application read `len` bytes (at most what is buffered). Returns the credit to
    /// grant now, if any.
    pub fn on_read(&mut self, len: u64) -> Option<u64> {
        let len = len.min(self.buffered);
        self.buffered -= len;
        self.consumed += len;
        self.poll_credit()
    }

    /// The credit due now: everything read since the last grant, once that is at least half
    /// the window (or the whole window is read).
    pub fn poll_credit(&mut self) -> Option<u64> {
        let due = self.consumed > 0
            && (self.consumed.saturating_mul(2) >= self.window || self.outstanding == 0);
        if !due {
            return None;
        }
        let grant = self.consumed;
        self.consumed = 0;
        self.outstanding += grant;
        Some(grant)
    }
}

/// The two ends of a stream as one side sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HalfClose {
    local_ended: bool,
    remote_ended: bool,
}

impl HalfClose {
    /// Whether this side may still send data.
    pub fn may_send(&self) -> bool {
        !self.local_ended
    }

    /// Whether data from the other side may still arrive.
    pub fn may_receive(&self) -> bool {
        !self.remote_ended
    }

    /// This side ends its direction; `false` if it had already.
    pub fn end_local(&mut self) -> bool {
        !std::mem::replace(&mut self.local_ended, true)
    }

    /// The other side ended its direction; `false` if it had already.
    pub fn end_remote(&mut self) -> bool {
        !std::mem::replace(&mut self.remote_ended, true)
    }

    /// Both directions ended: the stream is over.
    pub fn finished(&self) -> bool {
        self.local_ended && self.remote_ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn data_frames_roundtrip_and_refuse_junk() {
        let f = DataFrame {
            seq: 7,
            stream: 0x0102_0304_0506_0708,
            data: Bytes::from_static(b"hello"),
        };
        let wire = f.encode();
        assert_eq!(wire.len(), DATA_HEADER_LEN + 5);
        assert_eq!(&wire[..3], &[0x01, 0, 0]);
        assert_eq!(DataFrame::decode(wire), Ok(f));
        for junk in [
            &b""[..],
            b"\x01",
            b"\x01\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\x01",
            b"\x82",
        ] {
            assert!(DataFrame::decode(Bytes::copy_from_slice(junk)).is_err());
        }
        let empty = DataFrame::decode(Bytes::from_static(&[1; 17])).unwrap_err();
        assert_eq!(empty.code, ErrorCode::InvalidField);
    }

    #[test]
    fn credit_is_enforced() {
        let mut s = SendCredit::new(10, 20).unwrap();
        s.consume(4).unwrap();
        assert_eq!(s.available(), 6);
        assert_eq!(
            s.consume(7),
            Err(FlowError::OverCredit { len: 7, credit: 6 })
        );
        s.grant(14).unwrap();
        assert!(s.grant(1).is_err(), "20 is the largest window");
        assert!(SendCredit::new(21, 20).is_err());
    }

    #[test]
    fn half_close_finishes_with_both_ends() {
        let mut h = HalfClose::default();
        assert!(h.may_send() && h.may_receive());
        assert!(h.end_local());
        assert!(!h.end_local(), "a second end is reported");
        assert!(!h.may_send() && !h.finished());
        assert!(h.end_remote());
        assert!(h.finished());
    }

    #[test]
    fn the_receiver_grants_half_windows() {
        let mut r = RecvWindow::new(100);
        r.on_data(60).unwrap();
        assert_eq!(r.on_read(30), None);
        assert_eq!(r.on_read(30), Some(60));
        r.on_data(100).unwrap();
        assert!(r.on_data(1).is_err(), "credit is 100 - 60 + 60 - 100 = 0");
    }

    proptest! {
        /// Any sequence of ends: each direction ends once (later ends are reported as
        /// repeats), sending stops with the local end, receiving with the remote end, and the
        /// stream is finished exactly when both ended.
        #[test]
        fn half_close_transitions(ops in prop::collection::vec(any::<bool>(), 0..8)) {
            let mut h = HalfClose::default();
            let (mut local, mut remote) = (false, false);
            for local_end in ops {
                if local_end {
                    prop_assert_eq!(h.end_local(), !local);
                    local = true;
                } else {
                    prop_assert_eq!(h.end_remote(), !remote);
                    remote = true;
                }
                prop_assert_eq!(h.may_send(), !local);
                prop_assert_eq!(h.may_receive(), !remote);
                prop_assert_eq!(h.finished(), local && remote);
            }
        }

        /// A sender's credit never goes negative or above the largest window, and a refused
        /// operation changes nothing.
        #[test]
        fn send_credit_stays_within_bounds(
            max in 0u64..1_000,
            ops in prop::collection::vec((any::<bool>(), 0u64..600), 0..100),
        ) {
            let mut c = SendCredit::none(max);
            for (grant, n) in ops {
                let before = c.available();
                let r = if grant { c.grant(n) } else { c.consume(n) };
                match r {
                    Ok(()) if grant => prop_assert_eq!(c.available(), before + n),
                    Ok(()) => prop_assert_eq!(c.available(), before - n),
                    Err(e) => {
                        prop_assert_eq!(c.available(), before);
                        prop_assert_eq!(e.code(), ErrorCode::FlowControl);
                    }
                }
                prop_assert!(c.available() <= max);
            }
        }

        /// Whatever the sender, the receiver and the application do, the sender never holds
        /// more credit than the window, the receiver never buffers more than the window, data
        /// within credit is always accepted, and every byte read is eventually granted again.
        #[test]
        fn credit_accounting_is_conserved(
            window in 1u64..10_000,
            ops in prop::collection::vec((0u8..3, 1u64..5_000), 0..400),
        ) {
            let mut send = SendCredit::new(window, window).unwrap();
            let mut recv = RecvWindow::new(window);
            let mut in_flight: u64 = 0; // sent, not yet arrived
            for (op, n) in ops {
                match op {
                    0 => {
                        let n = n.min(send.available());
                        if n > 0 {
                            send.consume(n).unwrap();
                            in_flight += n;
                        }
                    }
                    1 => {
                        if in_flight > 0 {
                            recv.on_data(in_flight).unwrap();
                            in_flight = 0;
                        }
                    }
                    _ => {
                        if let Some(g) = recv.on_read(n) {
                            send.grant(g).unwrap();
                        }
                    }
                }
                prop_assert!(send.available() <= window);
                prop_assert!(recv.buffered() <= window);
                prop_assert_eq!(
                    send.available() + in_flight + recv.buffered() + recv.consumed,
                    window
                );
            }
        }
    }
}
