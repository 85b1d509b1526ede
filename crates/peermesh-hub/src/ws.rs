//! The hub's WebSocket layer (RFC 6455, server side): the upgrade, the framing and the socket.
//!
//! The hub has its own because an idle connection should cost as little as possible: the
//! socket holds no read or write buffer while it waits (see [`socket`]), where a general
//! WebSocket library keeps both for the life of the connection. The framing is a sans-IO
//! codec ([`codec`]), fuzzed and property-tested; clients (the Rust client, `peermesh connect`,
//! the benches) still use `tokio-tungstenite`, which the hub's tests talk to it with.
//!
//! ```
//! use peermesh_hub::ws::codec::{client_frame, Decoder, Message};
//!
//! let frame = client_frame(true, 0x1, [1, 2, 3, 4], b"hello");
//! let decoded = Decoder::new(1024).decode(&frame).expect("a valid frame");
//! assert_eq!(decoded.consumed, frame.len());
//! assert_eq!(decoded.message, Some(Message::Text("hello".into())));
//! ```

pub mod codec;
pub(crate) mod handshake;
pub(crate) mod socket;

pub use codec::{CloseFrame, Message};
pub(crate) use socket::{Limits, WebSocket, WsError};
