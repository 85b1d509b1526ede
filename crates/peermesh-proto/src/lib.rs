//! The peermesh hub wire protocol, free of I/O.
//!
//! Every frame exchanged between a hub and its clients has one Rust type here ([`ClientFrame`],
//! [`ServerFrame`]) and two encodings: JSON in WebSocket text frames and MessagePack (maps with
//! the same field names) in binary frames. `docs/protocol.md` in the repository is the
//! normative specification; this crate is its reference implementation.
//!
//! ```
//! use peermesh_proto::{decode_client, ClientFrame, EncodedBody, Encoding, ServerFrame, Message,
//!                      ClientId, EventName, Payload};
//!
//! // A client's emit, as a browser would send it in a text frame:
//! let frame = decode_client(Encoding::Json,
//!     br#"{"type":"emit","to":"bob","event":"chat","data":{"text":"hi"}}"#).unwrap();
//! let ClientFrame::Emit(emit) = frame else { unreachable!() };
//! assert_eq!(emit.to.as_str(), "bob");
//!
//! // The hub stamps `from`, encodes the delivery once, and adds each recipient's `seq`:
//! let delivery = ServerFrame::Message(Message {
//!     from: ClientId::new("alice").unwrap(),
//!     event: emit.event,
//!     payload: emit.payload,
//!     room: None,
//!     ack_id: None,
//! });
//! let body = EncodedBody::encode(Encoding::Json, &delivery);
//! assert_eq!(&body.to_frame(7)[..],
//!     br#"{"seq":7,"type":"message","from":"alice","event":"chat","data":{"text":"hi"}}"#);
//! ```
//!
//! # Layout
//!
//! - [`frame`]: the typed frames.
//! - [`codec`]: JSON and MessagePack encoding and decoding, [`EncodedBody`] for shared fan-out.
//! - [`payload`]: [`Payload`], a JSON value or raw bytes.
//! - [`id`]: validated [`ClientId`], [`RoomName`] and [`EventName`].
//! - [`error`]: the stable [`ErrorCode`]s.
//! - [`stream`]: the binary data frame of streams and the sans-IO flow-control rules.
//!
//! Services (RPC between clients and the hub) and their topics have frames of their own
//! (`provide`, `call`, `invoke`, `respond`, `result`, topic frames); see `docs/protocol.md` §23.
#![deny(missing_docs)]

pub mod codec;
pub mod error;
pub mod frame;
pub mod id;
pub mod payload;
pub mod session;
pub mod stream;

pub use codec::{
    decode_client, decode_server, encode_client, encode_server, DecodeError, EncodedBody, Encoding,
    CLIENT_TYPES, SERVER_TYPES,
};
pub use error::ErrorCode;
pub use frame::{
    Call, ClientFrame, Emit, EmitRoom, ErrorFrame, Hello, Invoke, Limits, Message, Provide,
    Publication, Publish, Reply, Respond, ResumeRefusal, ServerFrame, StreamOpen, StreamRequest,
    TopicEnd, Welcome, MAX_SERVICE_ERROR_LEN,
};
pub use id::{
    ClientId, EventName, MethodName, NameError, ObjectName, RoomName, ServiceName, SessionName,
    TopicName,
};
pub use payload::Payload;
pub use session::{
    OwnerLeave, SessionChange, SessionMember, SessionMode, SessionObject, SessionOp, SessionState,
};

/// The protocol version this build speaks (sent in `hello` and `welcome`).
pub const PROTOCOL_VERSION: &str = "1.0.0";

/// The range of client protocol versions a hub of this build accepts by default.
pub const SUPPORTED_VERSIONS: &str = "^1.0";

#[cfg(test)]
mod tests;
