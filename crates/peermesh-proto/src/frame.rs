//! The typed frames of the hub protocol, one Rust type per frame.
//!
//! [`ClientFrame`] travels client → hub, [`ServerFrame`] hub → client. Both are maps with a
//! `type` field naming the frame; `docs/protocol.md` is the normative description.

use serde::ser::SerializeMap;
use serde::Serialize;

use crate::error::ErrorCode;
use crate::id::{ClientId, EventName, MethodName, RoomName, ServiceName, SessionName, TopicName};
use crate::payload::Payload;
use crate::session::{SessionChange, SessionMode, SessionOp, SessionState};

/// A frame sent by a client to the hub.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ClientFrame {
    /// Opens the session; must be the first frame.
    Hello(Hello),
    /// Sends an event to one client.
    Emit(Emit),
    /// Answers a message that carried an `ack_id`.
    Reply(Reply),
    /// Joins a room.
    Join {
        /// The room.
        room: RoomName,
        /// Correlation number, answered by `ok` or `error`.
        req: Option<u64>,
    },
    /// Leaves a room.
    Leave {
        /// The room.
        room: RoomName,
        /// Correlation number, answered by `ok` or `error`.
        req: Option<u64>,
    },
    /// Sends an event to every member of a room.
    EmitRoom(EmitRoom),
    /// Asks for the member list of a room the client is in.
    Members {
        /// The room.
        room: RoomName,
        /// Correlation number, answered by `members` or `error`.
        req: Option<u64>,
    },
    /// Application-level ping, answered by `pong` (for clients that cannot send WebSocket pings).
    Ping {
        /// Correlation number echoed in the `pong`.
        req: Option<u64>,
    },
    /// Opens a stream to another client.
    StreamOpen(StreamOpen),
    /// Accepts a stream announced by `stream_request`.
    StreamAccept {
        /// The stream, in this connection's id space.
        stream: u64,
        /// Initial credit granted to the opener, in bytes.
        window: u64,
    },
    /// Rejects a stream announced by `stream_request`.
    StreamReject {
        /// The stream.
        stream: u64,
        /// Why, for the opener (at most 1,024 bytes; may be empty).
        reason: String,
    },
    /// Grants the other end more credit.
    StreamCredit {
        /// The stream.
        stream: u64,
        /// Bytes granted (at least 1).
        bytes: u64,
    },
    /// Ends this side's direction of a stream (half-close).
    StreamEnd {
        /// The stream.
        stream: u64,
    },
    /// Aborts a stream in both directions.
    StreamReset {
        /// The stream.
        stream: u64,
        /// Why, for the other end (at most 1,024 bytes; may be empty).
        reason: String,
    },
    /// Registers this connection as a provider of a service.
    Provide(Provide),
    /// Ends this connection's `provide`: no new call reaches it (calls it already has may
    /// still be answered); when it was the service's last provider, the service and its
    /// topics end.
    Unprovide {
        /// Correlation number, answered by `ok` or `error`.
        req: Option<u64>,
    },
    /// Calls a method of a service.
    Call(Call),
    /// A provider's answer to an `invoke`.
    Respond(Respond),
    /// A provider creates a topic of its service.
    CreateTopic {
        /// The topic, in the provider's service.
        topic: TopicName,
        /// Correlation number, answered by `ok` or `error`.
        req: Option<u64>,
    },
    /// A provider destroys a topic of its service; its subscribers are told.
    DestroyTopic {
        /// The topic, in the provider's service.
        topic: TopicName,
        /// Correlation number, answered by `ok` or `error`.
        req: Option<u64>,
    },
    /// A provider publishes to a topic of its service.
    Publish(Publish),
    /// Subscribes to a topic of a service.
    Subscribe {
        /// The service.
        service: ServiceName,
        /// The topic.
        topic: TopicName,
        /// Correlation number, answered by `ok` or `error`.
        req: Option<u64>,
    },
    /// Joins a session (a new one with a generated id when `session` is absent).
    SessionJoin {
        /// The session.
        session: Option<SessionName>,
        /// The mode, when this join creates the session (default authoritative).
        mode: Option<SessionMode>,
        /// Correlation number, carried by the `session_state` chunks.
        req: Option<u64>,
    },
    /// Leaves a session.
    SessionLeave {
        /// The session.
        session: SessionName,
        /// Correlation number, answered by `ok` or `error`.
        req: Option<u64>,
    },
    /// An operation on a session's objects.
    SessionOp {
        /// The session.
        session: SessionName,
        /// The operation.
        op: SessionOp,
        /// Correlation number, answered by `ok` (after the event) or `error`.
        req: Option<u64>,
    },
    /// The client has received every hub frame up to this `seq` (sessions that resume).
    Received {
        /// The `seq` of the last hub frame received.
        seq: u64,
    },
    /// Ends a subscription.
    Unsubscribe {
        /// The service.
        service: ServiceName,
        /// The topic.
        topic: TopicName,
        /// Correlation number, answered by `ok` or `error`.
        req: Option<u64>,
    },
}

/// Longest error message a provider may give in `respond`, in bytes.
pub const MAX_SERVICE_ERROR_LEN: usize = 4096;

/// The `provide` frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Provide {
    /// The service this connection provides.
    pub service: ServiceName,
    /// Its methods (at least one, no duplicates).
    pub methods: Vec<MethodName>,
    /// Correlation number, answered by `ok` or `error`.
    pub req: Option<u64>,
}

/// The `call` frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// The service.
    pub service: ServiceName,
    /// The method.
    pub method: MethodName,
    /// The arguments.
    pub payload: Payload,
    /// Correlation number, answered by exactly one `result` or `error`.
    pub req: u64,
    /// How long to wait for the answer, in ms (default and maximum set by the hub).
    pub timeout_ms: Option<u64>,
}

/// The `respond` frame: a provider's answer to an `invoke`.
#[derive(Debug, Clone, PartialEq)]
pub struct Respond {
    /// The `call` of the `invoke` being answered.
    pub call: u64,
    /// The result, or the provider's error message (at most [`MAX_SERVICE_ERROR_LEN`] bytes).
    pub outcome: Result<Payload, String>,
}

/// The `publish` frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Publish {
    /// The topic, in the provider's service.
    pub topic: TopicName,
    /// What to publish.
    pub payload: Payload,
    /// Correlation number, answered by `ok` or `error`.
    pub req: Option<u64>,
}

/// The `invoke` frame: a caller wants this provider to run a method.
#[derive(Debug, Clone, PartialEq)]
pub struct Invoke {
    /// The call's id: answer with `respond` carrying it.
    pub call: u64,
    /// The caller, stamped by the hub.
    pub from: ClientId,
    /// The service.
    pub service: ServiceName,
    /// The method.
    pub method: MethodName,
    /// The arguments.
    pub payload: Payload,
}

/// The `publication` frame: something was published to a topic this client subscribed to.
#[derive(Debug, Clone, PartialEq)]
pub struct Publication {
    /// The service.
    pub service: ServiceName,
    /// The topic.
    pub topic: TopicName,
    /// What was published.
    pub payload: Payload,
}

/// Why a topic ended for its subscribers (`topic_ended`'s `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TopicEnd {
    /// A provider destroyed the topic (`destroyed`).
    Destroyed,
    /// The service's last provider went away (`service_gone`).
    ServiceGone,
    /// A reason this build does not know.
    Unknown,
}

impl TopicEnd {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TopicEnd::Destroyed => "destroyed",
            TopicEnd::ServiceGone => "service_gone",
            TopicEnd::Unknown => "unknown",
        }
    }

    /// Parses the wire spelling; unknown spellings give [`TopicEnd::Unknown`].
    pub fn parse(s: &str) -> Self {
        match s {
            "destroyed" => TopicEnd::Destroyed,
            "service_gone" => TopicEnd::ServiceGone,
            _ => TopicEnd::Unknown,
        }
    }
}

impl Serialize for TopicEnd {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// The `stream_open` frame.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamOpen {
    /// The client to open the stream to.
    pub to: ClientId,
    /// Metadata for the target (any JSON value; `None` when absent or null).
    pub meta: Option<serde_json::Value>,
    /// Initial credit granted to the target, in bytes.
    pub window: u64,
    /// Correlation number, answered by `stream_accepted` or `error`.
    pub req: u64,
}

/// The `stream_request` frame: another client wants a stream with this one.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamRequest {
    /// The stream, in this connection's id space.
    pub stream: u64,
    /// The opener, stamped by the hub.
    pub from: ClientId,
    /// The opener's metadata.
    pub meta: Option<serde_json::Value>,
    /// Initial credit the opener granted, in bytes.
    pub window: u64,
}

/// The `hello` frame.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Hello {
    /// Requested client id; the hub generates a UUID when absent.
    pub id: Option<ClientId>,
    /// The client's protocol version (semver, e.g. `1.0.0`).
    pub version: String,
    /// Rooms to join as part of the handshake.
    pub rooms: Vec<RoomName>,
    /// A JWT, when the hub requires authentication.
    pub token: Option<String>,
    /// The secret from an earlier `welcome`: with `last_seq`, resumes that session; without,
    /// replaces a connection of the same id.
    pub secret: Option<String>,
    /// The client can resume: the hub keeps its session through a drop for the resume window,
    /// keeps the frames it sent until the client confirms them, and sends `received`.
    pub resume: bool,
    /// With `secret`: resume the session, whose last frame this client received had this `seq`.
    pub last_seq: Option<u64>,
    /// Sessions to join as part of the handshake (each answered with its `session_state`).
    pub sessions: Vec<SessionName>,
}

/// The `emit` frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Emit {
    /// Target client id.
    pub to: ClientId,
    /// Event name.
    pub event: EventName,
    /// Payload.
    pub payload: Payload,
    /// Correlation number, answered by exactly one `ok`, `ack` or `error`.
    pub req: Option<u64>,
    /// Whether the target must acknowledge; requires `req`.
    pub ack: bool,
    /// Acknowledgement timeout in milliseconds (default 5000, capped by the hub).
    pub timeout_ms: Option<u64>,
}

/// The `reply` frame (an acknowledgement's answer).
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// The `ack_id` of the message being answered.
    pub ack_id: u64,
    /// The answer.
    pub payload: Payload,
}

/// The `emit_room` frame.
#[derive(Debug, Clone, PartialEq)]
pub struct EmitRoom {
    /// Target room (the sender must be a member).
    pub room: RoomName,
    /// Event name.
    pub event: EventName,
    /// Payload.
    pub payload: Payload,
    /// Whether the sender receives its own message too.
    pub include_self: bool,
    /// Correlation number, answered by `ok` or `error`.
    pub req: Option<u64>,
}

/// A frame sent by the hub to a client. On the wire each also carries `seq`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ServerFrame {
    /// The handshake succeeded.
    Welcome(Welcome),
    /// An event from another client (directly or through a room).
    Message(Message),
    /// The answer to an acknowledged emit.
    Ack {
        /// The `req` of the emit.
        req: u64,
        /// The target's answer.
        payload: Payload,
    },
    /// A request succeeded.
    Ok {
        /// The `req` of the request.
        req: u64,
    },
    /// The member list of a room.
    Members {
        /// The `req` of the request, if it had one.
        req: Option<u64>,
        /// The room.
        room: RoomName,
        /// Its members, sorted.
        members: Vec<ClientId>,
    },
    /// Something went wrong.
    Error(ErrorFrame),
    /// A client joined a room this client is in.
    MemberJoined {
        /// The room.
        room: RoomName,
        /// The client that joined.
        id: ClientId,
    },
    /// A client left a room this client is in.
    MemberLeft {
        /// The room.
        room: RoomName,
        /// The client that left.
        id: ClientId,
    },
    /// A client this one sent to recently disconnected.
    PeerLeft {
        /// The client that disconnected.
        id: ClientId,
    },
    /// A member of a room this client is in dropped and may resume: it is away, not gone.
    MemberAway {
        /// The room.
        room: RoomName,
        /// The client that dropped.
        id: ClientId,
    },
    /// An away member of a room resumed.
    MemberBack {
        /// The room.
        room: RoomName,
        /// The client that resumed.
        id: ClientId,
    },
    /// A client this one sent to recently dropped and may resume.
    PeerAway {
        /// The client that dropped.
        id: ClientId,
    },
    /// A client that was away resumed.
    PeerBack {
        /// The client that resumed.
        id: ClientId,
    },
    /// One chunk of a session's snapshot, after a join.
    SessionState(SessionState),
    /// A change in a session this client is in.
    SessionEvent {
        /// The session.
        session: SessionName,
        /// The session's revision of this change (one more than the previous).
        rev: u64,
        /// The member whose action caused it.
        by: ClientId,
        /// What changed.
        change: SessionChange,
    },
    /// The hub has handled the client's counted frames up to this number.
    Received {
        /// Count of the client's counted frames handled in this session.
        seq: u64,
    },
    /// The `hello` asked to resume, and the hub could not: this is a fresh session.
    ResumeRejected {
        /// Why.
        reason: ResumeRefusal,
        /// A sentence for people.
        message: String,
    },
    /// The answer to `ping`.
    Pong {
        /// The `req` of the ping.
        req: Option<u64>,
    },
    /// Another client opens a stream to this one: accept or reject it.
    StreamRequest(StreamRequest),
    /// The target accepted a stream this client opened.
    StreamAccepted {
        /// The `req` of the `stream_open`.
        req: u64,
        /// The stream, in this connection's id space.
        stream: u64,
        /// Initial credit the target granted, in bytes.
        window: u64,
    },
    /// The other end granted more credit.
    StreamCredit {
        /// The stream.
        stream: u64,
        /// Bytes granted.
        bytes: u64,
    },
    /// The other end ended its direction: no more data will arrive.
    StreamEnd {
        /// The stream.
        stream: u64,
    },
    /// The stream was aborted.
    StreamReset {
        /// The stream.
        stream: u64,
        /// Why: `peer_reset` (the other end's reason follows), `peer_left`, `flow_control`, …
        code: ErrorCode,
        /// For `peer_reset`, the other end's reason as it gave it; otherwise a sentence.
        reason: String,
    },
    /// A caller wants this provider to run a method.
    Invoke(Invoke),
    /// The answer to a `call` (wire type `result`).
    CallResult {
        /// The `req` of the call.
        req: u64,
        /// The provider's result.
        payload: Payload,
    },
    /// Something was published to a topic this client subscribed to.
    Publication(Publication),
    /// A topic this client subscribed to ended; the subscription is over.
    TopicEnded {
        /// The service.
        service: ServiceName,
        /// The topic.
        topic: TopicName,
        /// Why.
        reason: TopicEnd,
    },
}

/// The `welcome` frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Welcome {
    /// The client's id (as requested, or generated).
    pub id: ClientId,
    /// A secret to present in a later `hello` to replace this connection.
    pub secret: String,
    /// The hub's protocol version.
    pub version: String,
    /// Interval of the hub's WebSocket pings in milliseconds.
    pub heartbeat_ms: u64,
    /// The rooms joined during the handshake.
    pub rooms: Vec<RoomName>,
    /// The limits this connection runs under.
    pub limits: Limits,
    /// This connection resumed an earlier session: the frames the client missed follow (with
    /// `seq` after the client's `last_seq`), and `received` says which client frames to resend.
    pub resumed: bool,
    /// On a resumed session: the number of the client's counted frames the hub has handled;
    /// the client sends again the ones after it.
    pub received: u64,
    /// How long the hub keeps the session after a drop, in ms (0: no resume, the hello did not
    /// ask for it).
    pub resume_grace_ms: u64,
}

/// Why a resume was refused (`resume_rejected`); the connection is a fresh session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ResumeRefusal {
    /// The resume window ended (or the hub never knew the session, or restarted).
    Expired,
    /// The frames the client missed did not fit the hub's resume buffer.
    Overflow,
    /// The secret does not match the session.
    BadSecret,
    /// The session used another encoding.
    Encoding,
    /// A newer reason this build does not know.
    Unknown,
}

impl ResumeRefusal {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ResumeRefusal::Expired => "expired",
            ResumeRefusal::Overflow => "overflow",
            ResumeRefusal::BadSecret => "bad_secret",
            ResumeRefusal::Encoding => "encoding",
            ResumeRefusal::Unknown => "unknown",
        }
    }

    /// Parses the wire spelling; unknown spellings give [`ResumeRefusal::Unknown`].
    pub fn parse(s: &str) -> Self {
        match s {
            "expired" => ResumeRefusal::Expired,
            "overflow" => ResumeRefusal::Overflow,
            "bad_secret" => ResumeRefusal::BadSecret,
            "encoding" => ResumeRefusal::Encoding,
            _ => ResumeRefusal::Unknown,
        }
    }
}

impl std::fmt::Display for ResumeRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Limits announced in `welcome`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Limits {
    /// Largest frame the hub accepts, in bytes.
    pub max_frame_bytes: u64,
    /// Most rooms one client may be in.
    pub max_rooms_per_client: u64,
    /// Sustained inbound frames per second.
    pub rate_per_sec: u64,
    /// Inbound burst allowance, in frames.
    pub rate_burst: u64,
    /// Most acknowledged emits waiting for an answer at once.
    pub max_pending_acks: u64,
    /// Longest acknowledgement timeout, in milliseconds.
    pub max_ack_timeout_ms: u64,
    /// Most streams one connection may have at once (opening, open or being accepted);
    /// 0 when the hub did not say (before streams existed).
    #[serde(default)]
    pub max_streams: u64,
    /// Largest credit one end of a stream may hold, in bytes; 0 when the hub did not say.
    #[serde(default)]
    pub max_stream_window: u64,
    /// Time a stream target has to answer a `stream_open`, in ms; 0 when the hub did not say.
    #[serde(default)]
    pub stream_open_timeout_ms: u64,
    /// Most calls one connection may wait on at once; 0 when the hub did not say.
    #[serde(default)]
    pub max_calls: u64,
    /// Longest call timeout, in milliseconds; 0 when the hub did not say.
    #[serde(default)]
    pub max_call_timeout_ms: u64,
    /// Most topics one connection may subscribe to; 0 when the hub did not say.
    #[serde(default)]
    pub max_subscriptions: u64,
}

/// The `message` frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The sender, stamped by the hub.
    pub from: ClientId,
    /// Event name.
    pub event: EventName,
    /// Payload.
    pub payload: Payload,
    /// The room it was sent to, for room deliveries.
    pub room: Option<RoomName>,
    /// Present when the sender waits for an answer: send a `reply` with this id.
    pub ack_id: Option<u64>,
}

/// The `error` frame.
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorFrame {
    /// Stable machine-readable code.
    pub code: ErrorCode,
    /// A sentence for people.
    pub message: String,
    /// The `req` of the request that failed, if any.
    pub req: Option<u64>,
}

impl ErrorFrame {
    /// An error with the given code, message and correlation number.
    pub fn new(code: ErrorCode, message: impl Into<String>, req: Option<u64>) -> Self {
        Self {
            code,
            message: message.into(),
            req,
        }
    }
}

impl ServerFrame {
    /// The wire name of the frame's `type`.
    pub fn type_name(&self) -> &'static str {
        match self {
            ServerFrame::Welcome(_) => "welcome",
            ServerFrame::Message(_) => "message",
            ServerFrame::Ack { .. } => "ack",
            ServerFrame::Ok { .. } => "ok",
            ServerFrame::Members { .. } => "members",
            ServerFrame::Error(_) => "error",
            ServerFrame::MemberJoined { .. } => "member_joined",
            ServerFrame::MemberLeft { .. } => "member_left",
            ServerFrame::PeerLeft { .. } => "peer_left",
            ServerFrame::MemberAway { .. } => "member_away",
            ServerFrame::MemberBack { .. } => "member_back",
            ServerFrame::PeerAway { .. } => "peer_away",
            ServerFrame::PeerBack { .. } => "peer_back",
            ServerFrame::Received { .. } => "received",
            ServerFrame::SessionState(_) => "session_state",
            ServerFrame::SessionEvent { .. } => "session_event",
            ServerFrame::ResumeRejected { .. } => "resume_rejected",
            ServerFrame::Pong { .. } => "pong",
            ServerFrame::StreamRequest(_) => "stream_request",
            ServerFrame::StreamAccepted { .. } => "stream_accepted",
            ServerFrame::StreamCredit { .. } => "stream_credit",
            ServerFrame::StreamEnd { .. } => "stream_end",
            ServerFrame::StreamReset { .. } => "stream_reset",
            ServerFrame::Invoke(_) => "invoke",
            ServerFrame::CallResult { .. } => "result",
            ServerFrame::Publication(_) => "publication",
            ServerFrame::TopicEnded { .. } => "topic_ended",
        }
    }
}

impl ClientFrame {
    /// The wire name of the frame's `type`.
    pub fn type_name(&self) -> &'static str {
        match self {
            ClientFrame::Hello(_) => "hello",
            ClientFrame::Emit(_) => "emit",
            ClientFrame::Reply(_) => "reply",
            ClientFrame::Join { .. } => "join",
            ClientFrame::Leave { .. } => "leave",
            ClientFrame::EmitRoom(_) => "emit_room",
            ClientFrame::Members { .. } => "members",
            ClientFrame::Ping { .. } => "ping",
            ClientFrame::StreamOpen(_) => "stream_open",
            ClientFrame::StreamAccept { .. } => "stream_accept",
            ClientFrame::StreamReject { .. } => "stream_reject",
            ClientFrame::StreamCredit { .. } => "stream_credit",
            ClientFrame::StreamEnd { .. } => "stream_end",
            ClientFrame::StreamReset { .. } => "stream_reset",
            ClientFrame::Provide(_) => "provide",
            ClientFrame::Unprovide { .. } => "unprovide",
            ClientFrame::Call(_) => "call",
            ClientFrame::Respond(_) => "respond",
            ClientFrame::CreateTopic { .. } => "create_topic",
            ClientFrame::DestroyTopic { .. } => "destroy_topic",
            ClientFrame::Publish(_) => "publish",
            ClientFrame::Subscribe { .. } => "subscribe",
            ClientFrame::Unsubscribe { .. } => "unsubscribe",
            ClientFrame::Received { .. } => "received",
            ClientFrame::SessionJoin { .. } => "session_join",
            ClientFrame::SessionLeave { .. } => "session_leave",
            ClientFrame::SessionOp { .. } => "session_op",
        }
    }

    /// The frame's correlation number, if it has one.
    pub fn req(&self) -> Option<u64> {
        match self {
            ClientFrame::Hello(_)
            | ClientFrame::Reply(_)
            | ClientFrame::StreamAccept { .. }
            | ClientFrame::StreamReject { .. }
            | ClientFrame::StreamCredit { .. }
            | ClientFrame::StreamEnd { .. }
            | ClientFrame::StreamReset { .. }
            | ClientFrame::Received { .. }
            | ClientFrame::Respond(_) => None,
            ClientFrame::StreamOpen(o) => Some(o.req),
            ClientFrame::Call(c) => Some(c.req),
            ClientFrame::Provide(p) => p.req,
            ClientFrame::Publish(p) => p.req,
            ClientFrame::CreateTopic { req, .. }
            | ClientFrame::DestroyTopic { req, .. }
            | ClientFrame::Subscribe { req, .. }
            | ClientFrame::Unsubscribe { req, .. } => *req,
            ClientFrame::Emit(e) => e.req,
            ClientFrame::EmitRoom(e) => e.req,
            ClientFrame::Join { req, .. }
            | ClientFrame::Leave { req, .. }
            | ClientFrame::Members { req, .. }
            | ClientFrame::Unprovide { req }
            | ClientFrame::SessionJoin { req, .. }
            | ClientFrame::SessionLeave { req, .. }
            | ClientFrame::SessionOp { req, .. }
            | ClientFrame::Ping { req } => *req,
        }
    }
}

fn opt<T>(o: &Option<T>) -> usize {
    usize::from(o.is_some())
}

fn put_opt<M: SerializeMap, T: Serialize>(
    map: &mut M,
    key: &'static str,
    v: &Option<T>,
) -> Result<(), M::Error> {
    match v {
        Some(v) => map.serialize_entry(key, v),
        None => Ok(()),
    }
}

impl Serialize for ServerFrame {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let ty = self.type_name();
        match self {
            ServerFrame::Welcome(w) => {
                // The resume fields are written only when they say something, so a hub
                // without resume writes the same welcome as before them.
                let n = 7 + 2 * usize::from(w.resumed) + usize::from(w.resume_grace_ms > 0);
                let mut m = s.serialize_map(Some(n))?;
                m.serialize_entry("type", ty)?;
                m.serialize_entry("id", &w.id)?;
                m.serialize_entry("secret", &w.secret)?;
                m.serialize_entry("version", &w.version)?;
                m.serialize_entry("heartbeat_ms", &w.heartbeat_ms)?;
                m.serialize_entry("rooms", &w.rooms)?;
                m.serialize_entry("limits", &w.limits)?;
                if w.resumed {
                    m.serialize_entry("resumed", &true)?;
                    m.serialize_entry("received", &w.received)?;
                }
                if w.resume_grace_ms > 0 {
                    m.serialize_entry("resume_grace_ms", &w.resume_grace_ms)?;
                }
                m.end()
            }
            ServerFrame::Message(msg) => {
                let n = 3 + msg.payload.entries() + opt(&msg.room) + opt(&msg.ack_id);
                let mut m = s.serialize_map(Some(n))?;
                m.serialize_entry("type", ty)?;
                m.serialize_entry("from", &msg.from)?;
                m.serialize_entry("event", &msg.event)?;
                msg.payload.serialize_entry(&mut m)?;
                put_opt(&mut m, "room", &msg.room)?;
                put_opt(&mut m, "ack_id", &msg.ack_id)?;
                m.end()
            }
            ServerFrame::Ack { req, payload } => {
                let mut m = s.serialize_map(Some(2 + payload.entries()))?;
                m.serialize_entry("type", ty)?;
                m.serialize_entry("req", req)?;
                payload.serialize_entry(&mut m)?;
                m.end()
            }
            ServerFrame::Ok { req } => {
                let mut m = s.serialize_map(Some(2))?;
                m.serialize_entry("type", ty)?;
                m.serialize_entry("req", req)?;
                m.end()
            }
            ServerFrame::Members { req, room, members } => {
                let mut m = s.serialize_map(Some(3 + opt(req)))?;
                m.serialize_entry("type", ty)?;
                put_opt(&mut m, "req", req)?;
                m.serialize_entry("room", room)?;
                m.serialize_entry("members", members)?;
                m.end()
            }
            ServerFrame::Error(e) => {
                let mut m = s.serialize_map(Some(3 + opt(&e.req)))?;
                m.serialize_entry("type", ty)?;
                m.serialize_entry("code", &e.code)?;
                m.serialize_entry("message", &e.message)?;
                put_opt(&mut m, "req", &e.req)?;
                m.end()
            }
            ServerFrame::MemberJoined { room, id }
            | ServerFrame::MemberLeft { room, id }
            | ServerFrame::MemberAway { room, id }
            | ServerFrame::MemberBack { room, id } => {
                let mut m = s.serialize_map(Some(3))?;
                m.serialize_entry("type", ty)?;
                m.serialize_entry("room", room)?;
                m.serialize_entry("id", id)?;
                m.end()
            }
            ServerFrame::PeerLeft { id }
            | ServerFrame::PeerAway { id }
            | ServerFrame::PeerBack { id } => {
                let mut m = s.serialize_map(Some(2))?;
                m.serialize_entry("type", ty)?;
                m.serialize_entry("id", id)?;
                m.end()
            }
            ServerFrame::Received { seq } => {
                // `seq` is the frame's own sequence number: the count goes in `count`.
                let mut m = s.serialize_map(Some(2))?;
                m.serialize_entry("type", ty)?;
                m.serialize_entry("count", seq)?;
                m.end()
            }
            ServerFrame::SessionState(st) => {
                let n = 8 + opt(&st.req) + opt(&st.authority);
                let mut m = s.serialize_map(Some(n))?;
                m.serialize_entry("type", ty)?;
                m.serialize_entry("session", &st.session)?;
                put_opt(&mut m, "req", &st.req)?;
                m.serialize_entry("rev", &st.rev)?;
                m.serialize_entry("mode", st.mode.as_str())?;
                put_opt(&mut m, "authority", &st.authority)?;
                m.serialize_entry("epoch", &st.epoch)?;
                m.serialize_entry("roster", &st.members)?;
                m.serialize_entry("objects", &st.objects)?;
                m.serialize_entry("more", &st.more)?;
                m.end()
            }
            ServerFrame::SessionEvent {
                session,
                rev,
                by,
                change,
            } => {
                let mut m = s.serialize_map(Some(4 + change.entries()))?;
                m.serialize_entry("type", ty)?;
                m.serialize_entry("session", session)?;
                m.serialize_entry("rev", rev)?;
                m.serialize_entry("by", by)?;
                change.serialize_fields(&mut m)?;
                m.end()
            }
            ServerFrame::ResumeRejected { reason, message } => {
                let mut m = s.serialize_map(Some(3))?;
                m.serialize_entry("type", ty)?;
                m.serialize_entry("reason", reason.as_str())?;
                m.serialize_entry("message", message)?;
                m.end()
            }
            ServerFrame::Pong { req } => {
                let mut m = s.serialize_map(Some(1 + opt(req)))?;
                m.serialize_entry("type", ty)?;
                put_opt(&mut m, "req", req)?;
                m.end()
            }
            ServerFrame::StreamRequest(r) => {
                let mut m = s.serialize_map(Some(4 + opt(&r.meta)))?;
                m.serialize_entry("type", ty)?;
                m.serialize_entry("stream", &r.stream)?;
                m.serialize_entry("from", &r.from)?;
                put_opt(&mut m, "meta", &r.meta)?;
                m.serialize_entry("window", &r.window)?;
                m.end()
            }
            ServerFrame::StreamAccepted {
                req,
                stream,
                window,
            } => {
                let mut m = s.serialize_map(Some(4))?;
                m.serialize_entry("type", ty)?;
                m.serialize_entry("req", req)?;
                m.serialize_entry("stream", stream)?;
                m.serialize_entry("window", window)?;
                m.end()
            }
            ServerFrame::StreamCredit { stream, bytes } => {
                let mut m = s.serialize_map(Some(3))?;
                m.serialize_entry("type", ty)?;
                m.serialize_entry("stream", stream)?;
                m.serialize_entry("bytes", bytes)?;
                m.end()
            }
            ServerFrame::StreamEnd { stream } => {
                let mut m = s.serialize_map(Some(2))?;
                m.serialize_entry("type", ty)?;
                m.serialize_entry("stream", stream)?;
                m.end()
            }
            ServerFrame::StreamReset {
                stream,
                code,
                reason,
            } => {
                let mut m = s.serialize_map(Some(4))?;
                m.serialize_entry("type", ty)?;
                m.serialize_entry("stream", stream)?;
                m.serialize_entry("code", code)?;
                m.serialize_entry("reason", reason)?;
                m.end()
            }
            ServerFrame::Invoke(i) => {
                let mut m = s.serialize_map(Some(5 + i.payload.entries()))?;
                m.serialize_entry("type", ty)?;
                m.serialize_entry("call", &i.call)?;
                m.serialize_entry("from", &i.from)?;
                m.serialize_entry("service", &i.service)?;
                m.serialize_entry("method", &i.method)?;
                i.payload.serialize_entry(&mut m)?;
                m.end()
            }
            ServerFrame::CallResult { req, payload } => {
                let mut m = s.serialize_map(Some(2 + payload.entries()))?;
                m.serialize_entry("type", ty)?;
                m.serialize_entry("req", req)?;
                payload.serialize_entry(&mut m)?;
                m.end()
            }
            ServerFrame::Publication(p) => {
                let mut m = s.serialize_map(Some(3 + p.payload.entries()))?;
                m.serialize_entry("type", ty)?;
                m.serialize_entry("service", &p.service)?;
                m.serialize_entry("topic", &p.topic)?;
                p.payload.serialize_entry(&mut m)?;
                m.end()
            }
            ServerFrame::TopicEnded {
                service,
                topic,
                reason,
            } => {
                let mut m = s.serialize_map(Some(4))?;
                m.serialize_entry("type", ty)?;
                m.serialize_entry("service", service)?;
                m.serialize_entry("topic", topic)?;
                m.serialize_entry("reason", reason)?;
                m.end()
            }
        }
    }
}

impl Serialize for ClientFrame {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let ty = self.type_name();
        match self {
            ClientFrame::Hello(h) => {
                let n = 2
                    + opt(&h.id)
                    + usize::from(!h.rooms.is_empty())
                    + opt(&h.token)
                    + opt(&h.secret)
                    + usize::from(h.resume)
                    + opt(&h.last_seq)
                    + usize::from(!h.sessions.is_empty());
                let mut m = s.serialize_map(Some(n))?;
                m.serialize_entry("type", ty)?;
                put_opt(&mut m, "id", &h.id)?;
                m.serialize_entry("version", &h.version)?;
                if !h.rooms.is_empty() {
                    m.serialize_entry("rooms", &h.rooms)?;
                }
                put_opt(&mut m, "token", &h.token)?;
                put_opt(&mut m, "secret", &h.secret)?;
                if h.resume {
                    m.serialize_entry("resume", &true)?;
                }
                put_opt(&mut m, "last_seq", &h.last_seq)?;
                if !h.sessions.is_empty() {
                    m.serialize_entry("sessions", &h.sessions)?;
                }
                m.end()
            }
            ClientFrame::Emit(e) => {
                let n =
                    3 + e.payload.entries() + opt(&e.req) + usize::from(e.ack) + opt(&e.timeout_ms);
                let mut m = s.serialize_map(Some(n))?;
                m.serialize_entry("type", ty)?;
                m.serialize_entry("to", &e.to)?;
                m.serialize_entry("event", &e.event)?;
                e.payload.serialize_entry(&mut m)?;
                put_opt(&mut m, "req", &e.req)?;
                if e.ack {
                    m.serialize_entry("ack", &true)?;
                }
                put_opt(&mut m, "timeout_ms", &e.timeout_ms)?;
                m.end()
            }
            ClientFrame::Reply(r) => {
                let mut m = s.serialize_map(Some(2 + r.payload.entries()))?;
                m.serialize_entry("type", ty)?;
                m.serialize_entry("ack_id", &r.ack_id)?;
                r.payload.serialize_entry(&mut m)?;
                m.end()
            }
            ClientFrame::Join { room, req }
            | ClientFrame::Leave { room, req }
            | ClientFrame::Members { room, req } => {
                let mut m = s.serialize_map(Some(2 + opt(req)))?;
                m.serialize_entry("type", ty)?;
                m.serialize_entry("room", room)?;
                put_opt(&mut m, "req", req)?;
                m.end()
            }
            ClientFrame::EmitRoom(e) => {
                let n = 3 + e.payload.entries() + usize::from(e.include_self) + opt(&e.req);
                let mut m = s.serialize_map(Some(n))?;
                m.serialize_entry("type", ty)?;
                m.serialize_entry("room", &e.room)?;
                m.serialize_entry("event", &e.event)?;
                e.payload.serialize_entry(&mut m)?;
                if e.include_self {
                    m.serialize_entry("include_self", &true)?;
                }
                put_opt(&mut m, "req", &e.req)?;
                m.end()
            }
            ClientFrame::Ping { req } => {
                let mut m = s.serialize_map(Some(1 + opt(req)))?;
                m.serialize_entry("type", ty)?;
                put_opt(&mut m, "req", req)?;
                m.end()
            }
            ClientFrame::StreamOpen(o) => {
                let mut m = s.serialize_map(Some(4 + opt(&o.meta)))?;
                m.serialize_entry("type", ty)?;
                m.serialize_entry("req", &o.req)?;
                m.serialize_entry("to", &o.to)?;
                put_opt(&mut m, "meta", &o.meta)?;
                m.serialize_entry("window", &o.window)?;
                m.end()
            }
            ClientFrame::StreamAccept { stream, window } => {
                let mut m = s.serialize_map(Some(3))?;
                m.serialize_entry("type", ty)?;
                m.serialize_entry("stream", stream)?;
                m.serialize_entry("window", window)?;
                m.end()
            }
            ClientFrame::StreamReject { stream, reason }
            | ClientFrame::StreamReset { stream, reason } => {
                let mut m = s.serialize_map(Some(2 + usize::from(!reason.is_empty())))?;
                m.serialize_entry("type", ty)?;
                m.serialize_entry("stream", stream)?;
                if !reason.is_empty() {
                    m.serialize_entry("reason", reason)?;
                }
                m.end()
            }
            ClientFrame::StreamCredit { stream, bytes } => {
                let mut m = s.serialize_map(Some(3))?;
                m.serialize_entry("type", ty)?;
                m.serialize_entry("stream", stream)?;
                m.serialize_entry("bytes", bytes)?;
                m.end()
            }
            ClientFrame::StreamEnd { stream } => {
                let mut m = s.serialize_map(Some(2))?;
                m.serialize_entry("type", ty)?;
                m.serialize_entry("stream", stream)?;
                m.end()
            }
            ClientFrame::Provide(p) => {
                let mut m = s.serialize_map(Some(3 + opt(&p.req)))?;
                m.serialize_entry("type", ty)?;
                m.serialize_entry("service", &p.service)?;
                m.serialize_entry("methods", &p.methods)?;
                put_opt(&mut m, "req", &p.req)?;
                m.end()
            }
            ClientFrame::Unprovide { req } => {
                let mut m = s.serialize_map(Some(1 + opt(req)))?;
                m.serialize_entry("type", ty)?;
                put_opt(&mut m, "req", req)?;
                m.end()
            }
            ClientFrame::Call(c) => {
                let n = 4 + c.payload.entries() + opt(&c.timeout_ms);
                let mut m = s.serialize_map(Some(n))?;
                m.serialize_entry("type", ty)?;
                m.serialize_entry("service", &c.service)?;
                m.serialize_entry("method", &c.method)?;
                c.payload.serialize_entry(&mut m)?;
                m.serialize_entry("req", &c.req)?;
                put_opt(&mut m, "timeout_ms", &c.timeout_ms)?;
                m.end()
            }
            ClientFrame::Respond(r) => {
                let n = 2 + match &r.outcome {
                    Ok(p) => p.entries(),
                    Err(_) => 1,
                };
                let mut m = s.serialize_map(Some(n))?;
                m.serialize_entry("type", ty)?;
                m.serialize_entry("call", &r.call)?;
                match &r.outcome {
                    Ok(p) => p.serialize_entry(&mut m)?,
                    Err(e) => m.serialize_entry("error", e)?,
                }
                m.end()
            }
            ClientFrame::CreateTopic { topic, req } | ClientFrame::DestroyTopic { topic, req } => {
                let mut m = s.serialize_map(Some(2 + opt(req)))?;
                m.serialize_entry("type", ty)?;
                m.serialize_entry("topic", topic)?;
                put_opt(&mut m, "req", req)?;
                m.end()
            }
            ClientFrame::Publish(p) => {
                let mut m = s.serialize_map(Some(2 + p.payload.entries() + opt(&p.req)))?;
                m.serialize_entry("type", ty)?;
                m.serialize_entry("topic", &p.topic)?;
                p.payload.serialize_entry(&mut m)?;
                put_opt(&mut m, "req", &p.req)?;
                m.end()
            }
            ClientFrame::Subscribe {
                service,
                topic,
                req,
            }
            | ClientFrame::Unsubscribe {
                service,
                topic,
                req,
            } => {
                let mut m = s.serialize_map(Some(3 + opt(req)))?;
                m.serialize_entry("type", ty)?;
                m.serialize_entry("service", service)?;
                m.serialize_entry("topic", topic)?;
                put_opt(&mut m, "req", req)?;
                m.end()
            }
            ClientFrame::Received { seq } => {
                let mut m = s.serialize_map(Some(2))?;
                m.serialize_entry("type", ty)?;
                m.serialize_entry("seq", seq)?;
                m.end()
            }
            ClientFrame::SessionJoin { session, mode, req } => {
                let mut m = s.serialize_map(Some(1 + opt(session) + opt(mode) + opt(req)))?;
                m.serialize_entry("type", ty)?;
                put_opt(&mut m, "session", session)?;
                if let Some(mode) = mode {
                    m.serialize_entry("mode", mode.as_str())?;
                }
                put_opt(&mut m, "req", req)?;
                m.end()
            }
            ClientFrame::SessionLeave { session, req } => {
                let mut m = s.serialize_map(Some(2 + opt(req)))?;
                m.serialize_entry("type", ty)?;
                m.serialize_entry("session", session)?;
                put_opt(&mut m, "req", req)?;
                m.end()
            }
            ClientFrame::SessionOp { session, op, req } => {
                let mut m = s.serialize_map(Some(4 + op.entries() + opt(req)))?;
                m.serialize_entry("type", ty)?;
                m.serialize_entry("session", session)?;
                op.serialize_fields(&mut m)?;
                put_opt(&mut m, "req", req)?;
                m.end()
            }
        }
    }
}
