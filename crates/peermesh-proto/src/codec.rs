//! Encoding and decoding of frames in JSON (text frames) and MessagePack (binary frames).
//!
//! Decoding is one pass over a flat map of optional fields followed by a typed check, so the
//! happy path never buffers. Only when decoding fails does a second, lenient pass run to tell a
//! malformed frame from an unknown type or a bad field, and to recover `req` for the error reply.
//!
//! Hub → client frames are encoded once into an [`EncodedBody`] (the frame without its `seq`),
//! shared as [`Bytes`] across every recipient, and completed per connection by
//! [`EncodedBody::write_with_seq`], which only prepends the sequence number.

use std::borrow::Cow;

use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;
use serde_json::Value;

use crate::error::ErrorCode;
use crate::frame::*;
use crate::id::{
    ClientId, EventName, MethodName, NameError, ObjectName, RoomName, ServiceName, SessionName,
    TopicName,
};
use crate::payload::{BinField, Payload};
use crate::session::{
    OwnerLeave, RawObject, SessionChange, SessionMember, SessionMode, SessionOp, SessionState,
};

/// The encoding of a connection or frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Encoding {
    /// JSON in WebSocket text frames.
    #[default]
    Json,
    /// MessagePack in WebSocket binary frames.
    MsgPack,
}

impl Encoding {
    /// Parses the `enc` query parameter (`json` or `msgpack`).
    pub fn from_param(s: &str) -> Option<Self> {
        match s {
            "json" => Some(Encoding::Json),
            "msgpack" | "messagepack" => Some(Encoding::MsgPack),
            _ => None,
        }
    }

    /// The query-parameter spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Json => "json",
            Encoding::MsgPack => "msgpack",
        }
    }
}

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct DecodeError {
    /// The stable error code: `malformed`, `unknown_type` or `invalid_field`.
    pub code: ErrorCode,
    /// A sentence for people.
    pub message: String,
    /// The frame's `req`, when it could still be read.
    pub req: Option<u64>,
}

impl DecodeError {
    fn new(code: ErrorCode, message: impl Into<String>, req: Option<u64>) -> Self {
        Self {
            code,
            message: message.into(),
            req,
        }
    }
}

/// Deepest nesting accepted in a MessagePack frame (serde_json enforces 128 for JSON).
pub const MAX_DEPTH: usize = 128;

fn check_container(enc: Encoding, bytes: &[u8]) -> Result<(), DecodeError> {
    let ok = match enc {
        Encoding::Json => bytes
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| *b == b'{'),
        Encoding::MsgPack => bytes
            .first()
            .is_some_and(|b| matches!(b, 0x80..=0x8f | 0xde | 0xdf)),
    };
    if ok {
        Ok(())
    } else {
        let what = match enc {
            Encoding::Json => "a JSON object",
            Encoding::MsgPack => "a MessagePack map",
        };
        Err(DecodeError::new(
            ErrorCode::Malformed,
            format!("a frame must be {what}"),
            None,
        ))
    }
}

fn from_slice<'a, T: Deserialize<'a>>(enc: Encoding, bytes: &'a [u8]) -> Result<T, String> {
    match enc {
        Encoding::Json => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
        Encoding::MsgPack => {
            let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
            de.set_max_depth(MAX_DEPTH);
            T::deserialize(&mut de).map_err(|e| e.to_string())
        }
    }
}

/// Lenient view of any frame, used only to explain a decoding failure.
#[derive(Deserialize)]
struct Probe {
    #[serde(rename = "type", default)]
    ty: Option<Lenient<String>>,
    #[serde(default)]
    req: Option<Lenient<u64>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Lenient<T> {
    Good(T),
    Other(serde::de::IgnoredAny),
}

impl<T> Lenient<T> {
    fn good(self) -> Option<T> {
        match self {
            Lenient::Good(t) => Some(t),
            Lenient::Other(_) => None,
        }
    }
}

fn explain(enc: Encoding, bytes: &[u8], known: &[&str], serde_msg: String) -> DecodeError {
    let probe: Probe = match from_slice(enc, bytes) {
        Ok(p) => p,
        Err(_) => return DecodeError::new(ErrorCode::Malformed, serde_msg, None),
    };
    let req = probe.req.and_then(Lenient::good);
    match probe.ty.map(Lenient::good) {
        None => DecodeError::new(ErrorCode::InvalidField, "missing field `type`", req),
        Some(None) => DecodeError::new(ErrorCode::InvalidField, "`type` must be a string", req),
        Some(Some(t)) if !known.contains(&t.as_str()) => DecodeError::new(
            ErrorCode::UnknownType,
            format!(
                "unknown frame type {:?}; expected one of: {}",
                t.chars().take(64).collect::<String>(),
                known.join(", ")
            ),
            req,
        ),
        Some(Some(_)) => DecodeError::new(ErrorCode::InvalidField, serde_msg, req),
    }
}

// ---------------------------------------------------------------------------------------------
// client → hub

/// The `type` values of client frames.
pub const CLIENT_TYPES: &[&str] = &[
    "hello",
    "emit",
    "reply",
    "join",
    "leave",
    "emit_room",
    "members",
    "ping",
    "stream_open",
    "stream_accept",
    "stream_reject",
    "stream_credit",
    "stream_end",
    "stream_reset",
    "provide",
    "unprovide",
    "call",
    "respond",
    "create_topic",
    "destroy_topic",
    "publish",
    "subscribe",
    "unsubscribe",
    "received",
    "session_join",
    "session_leave",
    "session_op",
];

/// Most methods one `provide` may list.
pub const MAX_METHODS: usize = 256;

#[derive(Deserialize)]
struct RawClient<'a> {
    #[serde(rename = "type", borrow)]
    ty: Cow<'a, str>,
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    rooms: Option<Vec<Cow<'a, str>>>,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    resume: Option<bool>,
    #[serde(default)]
    last_seq: Option<u64>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default, borrow)]
    sessions: Option<Vec<Cow<'a, str>>>,
    #[serde(default, borrow)]
    session: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    mode: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    op: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    object: Option<Cow<'a, str>>,
    #[serde(default)]
    owned: Option<bool>,
    #[serde(default, borrow)]
    on_owner_leave: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    to: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    event: Option<Cow<'a, str>>,
    #[serde(default)]
    data: Option<Value>,
    #[serde(default)]
    bin: Option<BinField>,
    #[serde(default)]
    req: Option<u64>,
    #[serde(default)]
    ack: Option<bool>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    ack_id: Option<u64>,
    #[serde(default, borrow)]
    room: Option<Cow<'a, str>>,
    #[serde(default)]
    include_self: Option<bool>,
    #[serde(default)]
    stream: Option<u64>,
    #[serde(default)]
    window: Option<u64>,
    #[serde(default)]
    bytes: Option<u64>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    meta: Option<Value>,
    #[serde(default, borrow)]
    service: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    method: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    methods: Option<Vec<Cow<'a, str>>>,
    #[serde(default, borrow)]
    topic: Option<Cow<'a, str>>,
    #[serde(default)]
    call: Option<u64>,
    #[serde(default)]
    error: Option<String>,
}

struct Fields<'r> {
    ty: &'static str,
    req: Option<u64>,
    _raw: std::marker::PhantomData<&'r ()>,
}

impl Fields<'_> {
    fn err(&self, message: impl Into<String>) -> DecodeError {
        DecodeError::new(ErrorCode::InvalidField, message, self.req)
    }
    fn need<T>(&self, v: Option<T>, name: &str) -> Result<T, DecodeError> {
        v.ok_or_else(|| self.err(format!("`{}` frame is missing field `{name}`", self.ty)))
    }
    fn name<T>(
        &self,
        v: Option<Cow<'_, str>>,
        field: &str,
        parse: fn(&str) -> Result<T, NameError>,
    ) -> Result<T, DecodeError> {
        let v = self.need(v, field)?;
        parse(&v).map_err(|e| self.err(format!("`{field}`: {e}")))
    }
    fn payload(&self, data: Option<Value>, bin: Option<BinField>) -> Result<Payload, DecodeError> {
        Payload::from_fields(data, bin).map_err(|m| self.err(m))
    }
    fn reason(&self, v: Option<String>) -> Result<String, DecodeError> {
        let v = v.unwrap_or_default();
        if v.len() > crate::stream::MAX_REASON_LEN {
            return Err(self.err(format!(
                "`reason` has {} bytes; at most {} are allowed",
                v.len(),
                crate::stream::MAX_REASON_LEN
            )));
        }
        Ok(v)
    }
}

/// Decodes one client → hub frame.
pub fn decode_client(enc: Encoding, bytes: &[u8]) -> Result<ClientFrame, DecodeError> {
    check_container(enc, bytes)?;
    let raw: RawClient<'_> = match from_slice(enc, bytes) {
        Ok(r) => r,
        Err(msg) => return Err(explain(enc, bytes, CLIENT_TYPES, msg)),
    };
    let Some(ty) = CLIENT_TYPES.iter().copied().find(|t| *t == raw.ty) else {
        return Err(explain(enc, bytes, CLIENT_TYPES, String::new()));
    };
    let f = Fields {
        ty,
        req: raw.req,
        _raw: std::marker::PhantomData,
    };
    Ok(match ty {
        "hello" => {
            let id = match raw.id {
                Some(id) => Some(
                    ClientId::new(&id)
                        .map_err(|e| DecodeError::new(ErrorCode::InvalidId, e.to_string(), None))?,
                ),
                None => None,
            };
            let rooms = raw
                .rooms
                .unwrap_or_default()
                .iter()
                .map(|r| RoomName::new(r).map_err(|e| f.err(format!("`rooms`: {e}"))))
                .collect::<Result<Vec<_>, _>>()?;
            ClientFrame::Hello(Hello {
                id,
                version: f.need(raw.version, "version")?,
                rooms,
                token: raw.token,
                secret: raw.secret,
                resume: raw.resume.unwrap_or(false),
                last_seq: raw.last_seq,
                sessions: raw
                    .sessions
                    .unwrap_or_default()
                    .iter()
                    .map(|s| SessionName::new(s).map_err(|e| f.err(format!("`sessions`: {e}"))))
                    .collect::<Result<Vec<_>, _>>()?,
            })
        }
        "emit" => {
            let ack = raw.ack.unwrap_or(false);
            if ack && raw.req.is_none() {
                return Err(f.err("an `emit` with `ack: true` needs a `req` to answer to"));
            }
            ClientFrame::Emit(Emit {
                to: f.name(raw.to, "to", ClientId::new)?,
                event: f.name(raw.event, "event", EventName::new)?,
                payload: f.payload(raw.data, raw.bin)?,
                req: raw.req,
                ack,
                timeout_ms: raw.timeout_ms,
            })
        }
        "reply" => ClientFrame::Reply(Reply {
            ack_id: f.need(raw.ack_id, "ack_id")?,
            payload: f.payload(raw.data, raw.bin)?,
        }),
        "join" => ClientFrame::Join {
            room: f.name(raw.room, "room", RoomName::new)?,
            req: raw.req,
        },
        "leave" => ClientFrame::Leave {
            room: f.name(raw.room, "room", RoomName::new)?,
            req: raw.req,
        },
        "members" => ClientFrame::Members {
            room: f.name(raw.room, "room", RoomName::new)?,
            req: raw.req,
        },
        "emit_room" => ClientFrame::EmitRoom(EmitRoom {
            room: f.name(raw.room, "room", RoomName::new)?,
            event: f.name(raw.event, "event", EventName::new)?,
            payload: f.payload(raw.data, raw.bin)?,
            include_self: raw.include_self.unwrap_or(false),
            req: raw.req,
        }),
        "stream_open" => ClientFrame::StreamOpen(StreamOpen {
            req: f.need(raw.req, "req")?,
            to: f.name(raw.to, "to", ClientId::new)?,
            meta: raw.meta,
            window: raw.window.unwrap_or(0),
        }),
        "stream_accept" => ClientFrame::StreamAccept {
            stream: f.need(raw.stream, "stream")?,
            window: raw.window.unwrap_or(0),
        },
        "stream_reject" => ClientFrame::StreamReject {
            stream: f.need(raw.stream, "stream")?,
            reason: f.reason(raw.reason)?,
        },
        "stream_credit" => {
            let bytes = f.need(raw.bytes, "bytes")?;
            if bytes == 0 {
                return Err(f.err("`bytes` of `stream_credit` must be at least 1"));
            }
            ClientFrame::StreamCredit {
                stream: f.need(raw.stream, "stream")?,
                bytes,
            }
        }
        "stream_end" => ClientFrame::StreamEnd {
            stream: f.need(raw.stream, "stream")?,
        },
        "stream_reset" => ClientFrame::StreamReset {
            stream: f.need(raw.stream, "stream")?,
            reason: f.reason(raw.reason)?,
        },
        "provide" => {
            let names = f.need(raw.methods, "methods")?;
            if names.is_empty() || names.len() > MAX_METHODS {
                return Err(f.err(format!(
                    "`methods` must list 1 to {MAX_METHODS} methods, not {}",
                    names.len()
                )));
            }
            let mut methods: Vec<MethodName> = Vec::with_capacity(names.len());
            for n in &names {
                let m = MethodName::new(n).map_err(|e| f.err(format!("`methods`: {e}")))?;
                if methods.contains(&m) {
                    return Err(f.err(format!("`methods` lists {:?} twice", m.as_str())));
                }
                methods.push(m);
            }
            ClientFrame::Provide(Provide {
                service: f.name(raw.service, "service", ServiceName::new)?,
                methods,
                req: raw.req,
            })
        }
        "call" => ClientFrame::Call(Call {
            req: f.need(raw.req, "req")?,
            service: f.name(raw.service, "service", ServiceName::new)?,
            method: f.name(raw.method, "method", MethodName::new)?,
            payload: f.payload(raw.data, raw.bin)?,
            timeout_ms: raw.timeout_ms,
        }),
        "respond" => {
            let call = f.need(raw.call, "call")?;
            let outcome = match raw.error {
                Some(e) => {
                    if raw.data.is_some() || raw.bin.is_some() {
                        return Err(f.err("a `respond` carries `error` or a result, not both"));
                    }
                    if e.len() > MAX_SERVICE_ERROR_LEN {
                        return Err(f.err(format!(
                            "`error` has {} bytes; at most {MAX_SERVICE_ERROR_LEN} are allowed",
                            e.len()
                        )));
                    }
                    Err(e)
                }
                None => Ok(f.payload(raw.data, raw.bin)?),
            };
            ClientFrame::Respond(Respond { call, outcome })
        }
        "unprovide" => ClientFrame::Unprovide { req: raw.req },
        "create_topic" => ClientFrame::CreateTopic {
            topic: f.name(raw.topic, "topic", TopicName::new)?,
            req: raw.req,
        },
        "destroy_topic" => ClientFrame::DestroyTopic {
            topic: f.name(raw.topic, "topic", TopicName::new)?,
            req: raw.req,
        },
        "publish" => ClientFrame::Publish(Publish {
            topic: f.name(raw.topic, "topic", TopicName::new)?,
            payload: f.payload(raw.data, raw.bin)?,
            req: raw.req,
        }),
        "subscribe" => ClientFrame::Subscribe {
            service: f.name(raw.service, "service", ServiceName::new)?,
            topic: f.name(raw.topic, "topic", TopicName::new)?,
            req: raw.req,
        },
        "unsubscribe" => ClientFrame::Unsubscribe {
            service: f.name(raw.service, "service", ServiceName::new)?,
            topic: f.name(raw.topic, "topic", TopicName::new)?,
            req: raw.req,
        },
        "received" => ClientFrame::Received {
            seq: f.need(raw.seq, "seq")?,
        },
        "session_join" => ClientFrame::SessionJoin {
            session: match raw.session {
                Some(s) => {
                    Some(SessionName::new(&s).map_err(|e| f.err(format!("`session`: {e}")))?)
                }
                None => None,
            },
            mode: match raw.mode {
                Some(m) => Some(SessionMode::parse(&m).ok_or_else(|| {
                    f.err(format!(
                        "`mode` must be \"authoritative\" or \"relay\", not {m:?}"
                    ))
                })?),
                None => None,
            },
            req: raw.req,
        },
        "session_leave" => ClientFrame::SessionLeave {
            session: f.name(raw.session, "session", SessionName::new)?,
            req: raw.req,
        },
        "session_op" => {
            let session = f.name(raw.session, "session", SessionName::new)?;
            let object = f.name(raw.object, "object", ObjectName::new)?;
            let op = f.need(raw.op, "op")?;
            let op = match op.as_ref() {
                "create" => SessionOp::Create {
                    object,
                    payload: f.payload(raw.data, raw.bin)?,
                    owned: raw.owned.unwrap_or(true),
                    on_owner_leave: match raw.on_owner_leave {
                        None => OwnerLeave::Authority,
                        Some(p) => OwnerLeave::parse(&p).ok_or_else(|| {
                            f.err(format!(
                                "`on_owner_leave` must be \"authority\" or \"delete\", not {p:?}"
                            ))
                        })?,
                    },
                },
                "update" => SessionOp::Update {
                    object,
                    payload: f.payload(raw.data, raw.bin)?,
                },
                "patch" => SessionOp::Patch {
                    object,
                    patch: f.need(raw.data, "data")?,
                },
                "delete" => SessionOp::Delete { object },
                "transfer" => SessionOp::Transfer {
                    object,
                    to: match raw.to {
                        Some(t) => {
                            Some(ClientId::new(&t).map_err(|e| f.err(format!("`to`: {e}")))?)
                        }
                        None => None,
                    },
                },
                other => {
                    return Err(f.err(format!(
                        "`op` must be create, update, patch, delete or transfer, not {other:?}"
                    )))
                }
            };
            ClientFrame::SessionOp {
                session,
                op,
                req: raw.req,
            }
        }
        _ => ClientFrame::Ping { req: raw.req },
    })
}

/// Encodes one client → hub frame.
pub fn encode_client(enc: Encoding, frame: &ClientFrame) -> Bytes {
    encode_value(enc, frame)
}

fn encode_value<T: serde::Serialize>(enc: Encoding, v: &T) -> Bytes {
    // Serializing these frames cannot fail: every map key is a string and every value is a
    // JSON-compatible value or bytes; a failure would be a bug in this crate.
    let out = match enc {
        Encoding::Json => serde_json::to_vec(v).map_err(|e| e.to_string()),
        Encoding::MsgPack => rmp_serde::to_vec_named(v).map_err(|e| e.to_string()),
    };
    match out {
        Ok(v) => Bytes::from(v),
        Err(e) => panic!("frame serialization is infallible, but failed: {e}"),
    }
}

// ---------------------------------------------------------------------------------------------
// hub → client

/// A hub → client frame encoded once without its `seq`, ready to be shared across recipients.
///
/// It is either a map frame in the connection's encoding or a stream data frame
/// ([`EncodedBody::data`]), which is binary whatever the encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedBody {
    enc: Encoding,
    /// JSON: the object without its opening `{`. MessagePack: the map entries without header.
    /// Data frames: the stream's bytes.
    rest: Bytes,
    /// MessagePack: the number of entries in `rest`.
    entries: u32,
    /// Data frames: the stream id.
    stream: Option<u64>,
}

impl EncodedBody {
    /// Encodes a frame for the given encoding.
    pub fn encode(enc: Encoding, frame: &ServerFrame) -> Self {
        let full = encode_value(enc, frame);
        match enc {
            Encoding::Json => Self {
                enc,
                rest: full.slice(1..),
                entries: 0,
                stream: None,
            },
            Encoding::MsgPack => {
                let (entries, hdr) = match full.first() {
                    Some(b @ 0x80..=0x8f) => (u32::from(b & 0x0f), 1),
                    Some(0xde) => (u32::from(u16::from_be_bytes([full[1], full[2]])), 3),
                    Some(0xdf) => (u32::from_be_bytes([full[1], full[2], full[3], full[4]]), 5),
                    _ => unreachable!("server frames serialize as maps"),
                };
                Self {
                    enc,
                    rest: full.slice(hdr..),
                    entries,
                    stream: None,
                }
            }
        }
    }

    /// A stream data frame: `data` (shared, not copied) on stream `stream`. It is written as a
    /// binary message on connections of either encoding.
    pub fn data(stream: u64, data: Bytes) -> Self {
        Self {
            enc: Encoding::MsgPack,
            rest: data,
            entries: 0,
            stream: Some(stream),
        }
    }

    /// The stream id and the length of the data, for a data frame.
    pub fn data_stream(&self) -> Option<(u64, usize)> {
        self.stream.map(|s| (s, self.rest.len()))
    }

    /// The encoding of this body.
    pub fn encoding(&self) -> Encoding {
        self.enc
    }

    /// Upper bound of the complete frame's length.
    pub fn encoded_len(&self) -> usize {
        self.rest.len() + 32
    }

    /// Appends the complete frame, with `seq` as its first field, to `out`.
    pub fn write_with_seq(&self, seq: u64, out: &mut BytesMut) {
        out.reserve(self.encoded_len());
        if let Some(stream) = self.stream {
            crate::stream::DataFrame::put_header(out, seq, stream);
            out.put_slice(&self.rest);
            return;
        }
        match self.enc {
            Encoding::Json => {
                out.put_slice(b"{\"seq\":");
                out.put_slice(itoa::Buffer::new().format(seq).as_bytes());
                out.put_u8(b',');
            }
            Encoding::MsgPack => {
                let n = self.entries + 1;
                if n < 16 {
                    out.put_u8(0x80 | n as u8);
                } else if let Ok(n) = u16::try_from(n) {
                    out.put_u8(0xde);
                    out.put_u16(n);
                } else {
                    out.put_u8(0xdf);
                    out.put_u32(n);
                }
                out.put_slice(&[0xa3, b's', b'e', b'q']);
                write_msgpack_uint(seq, out);
            }
        }
        out.put_slice(&self.rest);
    }

    /// The complete frame with `seq`, in a fresh buffer.
    pub fn to_frame(&self, seq: u64) -> Bytes {
        let mut out = BytesMut::with_capacity(self.encoded_len());
        self.write_with_seq(seq, &mut out);
        out.freeze()
    }
}

fn write_msgpack_uint(v: u64, out: &mut BytesMut) {
    if v < 128 {
        out.put_u8(v as u8);
    } else if let Ok(v) = u8::try_from(v) {
        out.put_u8(0xcc);
        out.put_u8(v);
    } else if let Ok(v) = u16::try_from(v) {
        out.put_u8(0xcd);
        out.put_u16(v);
    } else if let Ok(v) = u32::try_from(v) {
        out.put_u8(0xce);
        out.put_u32(v);
    } else {
        out.put_u8(0xcf);
        out.put_u64(v);
    }
}

/// Encodes a complete hub → client frame with its `seq`.
pub fn encode_server(enc: Encoding, seq: u64, frame: &ServerFrame) -> Bytes {
    EncodedBody::encode(enc, frame).to_frame(seq)
}

/// The `type` values of hub frames.
pub const SERVER_TYPES: &[&str] = &[
    "welcome",
    "message",
    "ack",
    "ok",
    "members",
    "error",
    "member_joined",
    "member_left",
    "peer_left",
    "member_away",
    "member_back",
    "peer_away",
    "peer_back",
    "received",
    "resume_rejected",
    "session_state",
    "session_event",
    "pong",
    "stream_request",
    "stream_accepted",
    "stream_credit",
    "stream_end",
    "stream_reset",
    "invoke",
    "result",
    "publication",
    "topic_ended",
];

#[derive(Deserialize)]
struct RawServer<'a> {
    #[serde(rename = "type", borrow)]
    ty: Cow<'a, str>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    heartbeat_ms: Option<u64>,
    #[serde(default)]
    rooms: Option<Vec<Cow<'a, str>>>,
    #[serde(default)]
    limits: Option<Limits>,
    #[serde(default)]
    resumed: Option<bool>,
    #[serde(default)]
    received: Option<u64>,
    #[serde(default)]
    resume_grace_ms: Option<u64>,
    #[serde(default)]
    count: Option<u64>,
    #[serde(default, borrow)]
    session: Option<Cow<'a, str>>,
    #[serde(default)]
    rev: Option<u64>,
    #[serde(default, borrow)]
    mode: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    authority: Option<Cow<'a, str>>,
    #[serde(default)]
    epoch: Option<u64>,
    #[serde(default)]
    roster: Option<Vec<SessionMember>>,
    #[serde(default)]
    objects: Option<Vec<RawObject>>,
    #[serde(default)]
    more: Option<bool>,
    #[serde(default, borrow)]
    by: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    member: Option<Cow<'a, str>>,
    #[serde(default)]
    order: Option<u64>,
    #[serde(default)]
    rtt_ms: Option<u64>,
    #[serde(default, borrow)]
    object: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    owner: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    on_owner_leave: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    from: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    event: Option<Cow<'a, str>>,
    #[serde(default)]
    data: Option<Value>,
    #[serde(default)]
    bin: Option<BinField>,
    #[serde(default, borrow)]
    room: Option<Cow<'a, str>>,
    #[serde(default)]
    ack_id: Option<u64>,
    #[serde(default)]
    req: Option<u64>,
    #[serde(default)]
    members: Option<Vec<Cow<'a, str>>>,
    #[serde(default, borrow)]
    code: Option<Cow<'a, str>>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    stream: Option<u64>,
    #[serde(default)]
    window: Option<u64>,
    #[serde(default)]
    bytes: Option<u64>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    meta: Option<Value>,
    #[serde(default, borrow)]
    service: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    method: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    topic: Option<Cow<'a, str>>,
    #[serde(default)]
    call: Option<u64>,
}

/// An optional client id field.
fn opt_id(
    f: &Fields<'_>,
    v: Option<Cow<'_, str>>,
    name: &str,
) -> Result<Option<ClientId>, DecodeError> {
    v.map(|s| ClientId::new(&s).map_err(|e| f.err(format!("`{name}`: {e}"))))
        .transpose()
}

/// Decodes one hub → client frame, returning its `seq` and the frame.
pub fn decode_server(enc: Encoding, bytes: &[u8]) -> Result<(u64, ServerFrame), DecodeError> {
    check_container(enc, bytes)?;
    let raw: RawServer<'_> = match from_slice(enc, bytes) {
        Ok(r) => r,
        Err(msg) => return Err(explain(enc, bytes, SERVER_TYPES, msg)),
    };
    let Some(ty) = SERVER_TYPES.iter().copied().find(|t| *t == raw.ty) else {
        return Err(explain(enc, bytes, SERVER_TYPES, String::new()));
    };
    let f = Fields {
        ty,
        req: raw.req,
        _raw: std::marker::PhantomData,
    };
    let seq = f.need(raw.seq, "seq")?;
    let rooms = |v: Option<Vec<Cow<'_, str>>>| {
        v.unwrap_or_default()
            .iter()
            .map(|r| RoomName::new(r).map_err(|e| f.err(e.to_string())))
            .collect::<Result<Vec<_>, _>>()
    };
    let frame = match ty {
        "welcome" => ServerFrame::Welcome(Welcome {
            id: f.name(raw.id, "id", ClientId::new)?,
            secret: f.need(raw.secret, "secret")?,
            version: f.need(raw.version, "version")?,
            heartbeat_ms: f.need(raw.heartbeat_ms, "heartbeat_ms")?,
            rooms: rooms(raw.rooms)?,
            limits: f.need(raw.limits, "limits")?,
            resumed: raw.resumed.unwrap_or(false),
            received: raw.received.unwrap_or(0),
            resume_grace_ms: raw.resume_grace_ms.unwrap_or(0),
        }),
        "message" => ServerFrame::Message(Message {
            from: f.name(raw.from, "from", ClientId::new)?,
            event: f.name(raw.event, "event", EventName::new)?,
            payload: f.payload(raw.data, raw.bin)?,
            room: match raw.room {
                Some(r) => Some(RoomName::new(&r).map_err(|e| f.err(e.to_string()))?),
                None => None,
            },
            ack_id: raw.ack_id,
        }),
        "ack" => ServerFrame::Ack {
            req: f.need(raw.req, "req")?,
            payload: f.payload(raw.data, raw.bin)?,
        },
        "ok" => ServerFrame::Ok {
            req: f.need(raw.req, "req")?,
        },
        "members" => ServerFrame::Members {
            req: raw.req,
            room: f.name(raw.room, "room", RoomName::new)?,
            members: raw
                .members
                .unwrap_or_default()
                .iter()
                .map(|m| ClientId::new(m).map_err(|e| f.err(e.to_string())))
                .collect::<Result<Vec<_>, _>>()?,
        },
        "error" => {
            let raw_code = f.need(raw.code, "code")?;
            let code: ErrorCode = raw_code.parse().unwrap_or(ErrorCode::Unknown);
            let mut message = raw.message.unwrap_or_default();
            // Keep the unknown code's spelling for people, once: a frame re-encoded by this
            // build says `unknown` and already carries the prefix (found by fuzzing).
            if code == ErrorCode::Unknown && raw_code != ErrorCode::Unknown.as_str() {
                message = format!("[{raw_code}] {message}");
            }
            ServerFrame::Error(ErrorFrame {
                code,
                message,
                req: raw.req,
            })
        }
        "member_joined" => ServerFrame::MemberJoined {
            room: f.name(raw.room, "room", RoomName::new)?,
            id: f.name(raw.id, "id", ClientId::new)?,
        },
        "member_left" => ServerFrame::MemberLeft {
            room: f.name(raw.room, "room", RoomName::new)?,
            id: f.name(raw.id, "id", ClientId::new)?,
        },
        "peer_left" => ServerFrame::PeerLeft {
            id: f.name(raw.id, "id", ClientId::new)?,
        },
        "member_away" => ServerFrame::MemberAway {
            room: f.name(raw.room, "room", RoomName::new)?,
            id: f.name(raw.id, "id", ClientId::new)?,
        },
        "member_back" => ServerFrame::MemberBack {
            room: f.name(raw.room, "room", RoomName::new)?,
            id: f.name(raw.id, "id", ClientId::new)?,
        },
        "peer_away" => ServerFrame::PeerAway {
            id: f.name(raw.id, "id", ClientId::new)?,
        },
        "peer_back" => ServerFrame::PeerBack {
            id: f.name(raw.id, "id", ClientId::new)?,
        },
        "received" => ServerFrame::Received {
            seq: f.need(raw.count, "count")?,
        },
        "session_state" => ServerFrame::SessionState(SessionState {
            session: f.name(raw.session, "session", SessionName::new)?,
            req: raw.req,
            rev: f.need(raw.rev, "rev")?,
            mode: SessionMode::parse(&f.need(raw.mode, "mode")?)
                .ok_or_else(|| f.err("unknown `mode`"))?,
            authority: opt_id(&f, raw.authority, "authority")?,
            epoch: raw.epoch.unwrap_or(0),
            members: raw.roster.unwrap_or_default(),
            objects: raw
                .objects
                .unwrap_or_default()
                .into_iter()
                .map(|o| o.parse().map_err(|m| f.err(format!("`objects`: {m}"))))
                .collect::<Result<Vec<_>, _>>()?,
            more: raw.more.unwrap_or(false),
        }),
        "session_event" => {
            let object = |v: Option<Cow<'_, str>>| f.name(v, "object", ObjectName::new);
            let member = |v: Option<Cow<'_, str>>| f.name(v, "member", ClientId::new);
            let event = f.need(raw.event, "event")?;
            let change = match event.as_ref() {
                "member_joined" => SessionChange::MemberJoined {
                    member: member(raw.member)?,
                    order: raw.order.unwrap_or(0),
                    rtt_ms: raw.rtt_ms,
                },
                "member_left" => SessionChange::MemberLeft {
                    member: member(raw.member)?,
                },
                "member_away" => SessionChange::MemberAway {
                    member: member(raw.member)?,
                },
                "member_back" => SessionChange::MemberBack {
                    member: member(raw.member)?,
                },
                "authority" => SessionChange::Authority {
                    member: opt_id(&f, raw.member, "member")?,
                    epoch: f.need(raw.epoch, "epoch")?,
                },
                "created" => SessionChange::Created {
                    object: object(raw.object)?,
                    payload: f.payload(raw.data, raw.bin)?,
                    owner: opt_id(&f, raw.owner, "owner")?,
                    on_owner_leave: match raw.on_owner_leave {
                        None => OwnerLeave::Authority,
                        Some(p) => OwnerLeave::parse(&p)
                            .ok_or_else(|| f.err("unknown `on_owner_leave`"))?,
                    },
                },
                "updated" => SessionChange::Updated {
                    object: object(raw.object)?,
                    payload: f.payload(raw.data, raw.bin)?,
                },
                "deleted" => SessionChange::Deleted {
                    object: object(raw.object)?,
                },
                "transferred" => SessionChange::Transferred {
                    object: object(raw.object)?,
                    owner: opt_id(&f, raw.owner, "owner")?,
                },
                other => return Err(f.err(format!("unknown session `event` {other:?}"))),
            };
            ServerFrame::SessionEvent {
                session: f.name(raw.session, "session", SessionName::new)?,
                rev: f.need(raw.rev, "rev")?,
                by: f.name(raw.by, "by", ClientId::new)?,
                change,
            }
        }
        "resume_rejected" => ServerFrame::ResumeRejected {
            reason: ResumeRefusal::parse(&f.need(raw.reason, "reason")?),
            message: raw.message.unwrap_or_default(),
        },
        "stream_request" => ServerFrame::StreamRequest(StreamRequest {
            stream: f.need(raw.stream, "stream")?,
            from: f.name(raw.from, "from", ClientId::new)?,
            meta: raw.meta,
            window: raw.window.unwrap_or(0),
        }),
        "stream_accepted" => ServerFrame::StreamAccepted {
            req: f.need(raw.req, "req")?,
            stream: f.need(raw.stream, "stream")?,
            window: raw.window.unwrap_or(0),
        },
        "stream_credit" => ServerFrame::StreamCredit {
            stream: f.need(raw.stream, "stream")?,
            bytes: f.need(raw.bytes, "bytes")?,
        },
        "stream_end" => ServerFrame::StreamEnd {
            stream: f.need(raw.stream, "stream")?,
        },
        "stream_reset" => ServerFrame::StreamReset {
            stream: f.need(raw.stream, "stream")?,
            code: f
                .need(raw.code, "code")?
                .parse()
                .unwrap_or(ErrorCode::Unknown),
            reason: raw.reason.unwrap_or_default(),
        },
        "invoke" => ServerFrame::Invoke(Invoke {
            call: f.need(raw.call, "call")?,
            from: f.name(raw.from, "from", ClientId::new)?,
            service: f.name(raw.service, "service", ServiceName::new)?,
            method: f.name(raw.method, "method", MethodName::new)?,
            payload: f.payload(raw.data, raw.bin)?,
        }),
        "result" => ServerFrame::CallResult {
            req: f.need(raw.req, "req")?,
            payload: f.payload(raw.data, raw.bin)?,
        },
        "publication" => ServerFrame::Publication(Publication {
            service: f.name(raw.service, "service", ServiceName::new)?,
            topic: f.name(raw.topic, "topic", TopicName::new)?,
            payload: f.payload(raw.data, raw.bin)?,
        }),
        "topic_ended" => ServerFrame::TopicEnded {
            service: f.name(raw.service, "service", ServiceName::new)?,
            topic: f.name(raw.topic, "topic", TopicName::new)?,
            reason: TopicEnd::parse(&f.need(raw.reason, "reason")?),
        },
        _ => ServerFrame::Pong { req: raw.req },
    };
    Ok((seq, frame))
}
