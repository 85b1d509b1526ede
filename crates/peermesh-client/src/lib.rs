//! An async Rust client of the peermesh hub.
//!
//! Connect as a client id, send events to other clients (optionally waiting for their answer),
//! join rooms and talk to them, and listen for messages and presence. The connection survives
//! drops: the client reconnects with exponential backoff, presents the same id and the secret
//! from its last `welcome`, and rejoins its rooms. Given several hub URLs
//! ([`ClientOptions::fallback_urls`]), it moves on to the next hub when one fails.
//!
//! ```no_run
//! use std::time::Duration;
//! use peermesh_client::{Client, ClientEvent, ClientOptions};
//! use serde_json::json;
//!
//! # async fn demo() -> Result<(), peermesh_client::ClientError> {
//! let alice = Client::connect(ClientOptions::new("ws://127.0.0.1:7070/ws").with_id("alice")).await?;
//! let bob = Client::connect(ClientOptions::new("ws://127.0.0.1:7070/ws").with_id("bob")).await?;
//!
//! // Bob answers questions from alice.
//! let mut questions = bob.from("alice").on("question");
//! tokio::spawn(async move {
//!     while let Some(msg) = questions.recv().await {
//!         let _ = msg.reply(json!({ "answer": 42 })).await;
//!     }
//! });
//!
//! // Alice asks, and waits up to one second for the answer.
//! let answer = alice
//!     .emit_with_ack("bob", "question", json!("life?"), Duration::from_secs(1))
//!     .await?;
//! assert_eq!(answer.as_json(), Some(&json!({ "answer": 42 })));
//!
//! // Rooms and presence.
//! let mut events = alice.events();
//! alice.join("lobby").await?;
//! bob.join("lobby").await?;
//! while let Some(event) = events.recv().await {
//!     if let ClientEvent::MemberJoined { room, id } = event {
//!         println!("{id} joined {room}");
//!         break;
//!     }
//! }
//! alice.emit_room("lobby", "chat", json!({ "text": "hi all" }), false).await?;
//! alice.close().await;
//! # Ok(()) }
//! ```
//!
//! Byte streams between two clients are tokio `AsyncRead + AsyncWrite` values, with
//! credit-based flow control end to end (see [`stream`]):
//!
//! ```no_run
//! # use peermesh_client::{Client, ClientOptions};
//! # async fn demo(alice: Client, bob: Client) -> Result<(), Box<dyn std::error::Error>> {
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! let mut incoming = bob.incoming_streams();
//! tokio::spawn(async move {
//!     while let Some(request) = incoming.recv().await {
//!         let mut stream = request.accept();
//!         let mut text = String::new();
//!         let _ = stream.read_to_string(&mut text).await;
//!         let _ = stream.shutdown().await;
//!     }
//! });
//! let mut stream = alice.open_stream("bob", Some(serde_json::json!({"file": "a.txt"}))).await?;
//! stream.write_all(b"hello bob").await?;
//! stream.shutdown().await?; // bob reads EOF
//! let mut rest = Vec::new();
//! stream.read_to_end(&mut rest).await?; // until bob ends his side
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! - `client`: [`Client`], the cloneable handle, and [`FromPeer`].
//! - `options`: [`ClientOptions`], every setting with its default.
//! - `request`: [`Request`] and [`Pending`], the futures of operations.
//! - [`listeners`]: [`Subscription`], [`Once`], [`EventStream`], [`Message`], and the bounded
//!   queues' drop policy.
//! - `event`: [`ClientEvent`], lifecycle and presence.
//! - `error`: [`ClientError`].
//! - `actor`: the task that owns the socket (diagram in its docs).
//! - `connection`: URL, WebSocket and `hello`/`welcome` handshake.
//! - `backoff`: [`Backoff`] and [`ReconnectPolicy`], the sans-IO reconnect ladder.
//! - `tracker`: the sans-IO table of requests waiting for an answer.
//! - [`stream`]: [`Stream`] (`AsyncRead + AsyncWrite` to another client), [`IncomingStreams`].
//! - [`services`]: [`Invocation`]s of a provided service, [`TopicFeed`]s of subscriptions.
//!
//! Services: a client provides one service ([`Client::provide`], answering
//! [`Client::invocations`]), calls any service ([`Client::call`]), and subscribes to topics
//! ([`Client::subscribe`]); a provider manages its service's topics ([`Client::create_topic`],
//! [`Client::publish`], [`Client::destroy_topic`]).
//!
//! # Limits
//!
//! The command inbox holds [`ClientOptions::command_capacity`] commands (callers wait when it
//! is full) and at most [`ClientOptions::max_pending_requests`] requests wait for answers
//! (the actor takes no new command beyond it); each listener queue holds [`ClientOptions::listener_capacity`] messages and each
//! event stream [`ClientOptions::event_capacity`] events, and drops for that listener alone
//! when full (see [`listeners`]). Requests wait at most [`ClientOptions::request_timeout`]
//! (acknowledgements: their own timeout); a connection that is silent for
//! [`ClientOptions::idle_timeout`] is considered dead.
#![deny(missing_docs)]

mod actor;
mod backoff;
mod client;
mod connection;
mod error;
mod event;
pub mod listeners;
mod options;
mod request;
mod resend;
pub mod services;
pub mod session;
pub mod stream;
mod tracker;

pub use backoff::{Backoff, ReconnectPolicy};
pub use client::{Client, FromPeer};
pub use error::ClientError;
pub use event::ClientEvent;
pub use listeners::{EventStream, Feed, ListenerId, Message, Once, Subscription};
pub use options::ClientOptions;
pub use peermesh_proto::{
    ClientId, Encoding, ErrorCode, EventName, MethodName, ObjectName, OwnerLeave, Payload,
    Publication, ResumeRefusal, RoomName, ServiceName, SessionChange, SessionMember, SessionMode,
    SessionName, SessionOp, TopicEnd, TopicName, PROTOCOL_VERSION,
};
pub use request::{Pending, Request};
pub use services::{FeedEnd, Invocation, Invocations, TopicFeed};
pub use session::{ObjectState, Session, SessionEnd, SessionUpdate, SessionView};
pub use stream::{IncomingStream, IncomingStreams, Stream, StreamReset};

#[cfg(test)]
mod tests;
