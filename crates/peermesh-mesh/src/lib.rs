//! The peermesh overlay node: the wire formats of the JavaScript peers it interoperates with
//! and the peer manager, free of I/O, plus the tokio shell that runs the manager over TCP
//! ([`tcp`]); the Kademlia mesh comes next.
//!
//! This crate holds the sans-IO peer manager ([`manager::PeerManager`]: pool, active set,
//! back-off, selective send with answer collection) and the codec of the `p2p-node` TCP framing, the one spoken by
//! the npm packages `p2p-node@0.1.x` and `p2p-manager@0.1.0`: a 24-byte header (magic, a
//! 12-byte command, payload length, double-SHA-256 checksum) and the payload.
//!
//! ```
//! use bytes::BytesMut;
//! use peermesh_mesh::wire::p2p_node::{encode, DecodeEvent, Decoder, DecoderConfig, DEFAULT_MAGIC};
//!
//! let mut wire = BytesMut::new();
//! encode(DEFAULT_MAGIC, "version", b"hello", &mut wire).unwrap();
//!
//! // Bytes arrive in whatever pieces TCP delivers; the decoder reassembles them.
//! let mut decoder = Decoder::new(DecoderConfig::default());
//! let (first, rest) = wire.split_at(10);
//! assert_eq!(decoder.push(first), 10);
//! assert!(decoder.poll().is_none()); // incomplete: push more bytes
//! decoder.push(rest);
//! let Some(DecodeEvent::Frame(frame)) = decoder.poll() else { unreachable!() };
//! assert_eq!(frame.command.as_str(), "version");
//! assert_eq!(&frame.payload[..], b"hello");
//! ```
//!
//! # Layout
//!
//! - [`manager`]: the peer manager's state machine, generic over transport and wire format.
//! - [`tcp`]: the tokio shell that runs the peer manager over TCP with the `p2p-node` framing
//!   ([`tcp::TcpManager`]).
//! - [`wire`]: the wire formats, one module per format, and the [`wire::Severity`] of the
//!   events their decoders report.
//!   - [`wire::p2p_node`]: the `p2p-node` framing: [`wire::p2p_node::Decoder`] and
//!     [`wire::p2p_node::encode`].
#![deny(missing_docs)]

pub mod id;
pub mod manager;
pub mod node;
pub mod sim;
pub mod socket;
pub mod tcp;
#[doc(hidden)]
pub mod testing;
pub mod wire;
pub mod ws;
