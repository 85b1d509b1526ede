//! The wire format of `peer-relay@0.0.2`: JSON text over WebSocket.
//!
//! A link starts with each side sending its id as its first message, the way peer-relay
//! does it — `JSON.stringify` of a Node `Buffer`: `{"type":"Buffer","data":[20 bytes]}`. A
//! 40-hex-digit JSON string is accepted too (peer-relay parses either). Every further message
//! is an [`Envelope`]:
//!
//! ```json
//! {"to":"<id>","from":"<id>","path":["<id>",…],"nonce":"123456789","data":{"type":"user","data":…}}
//! ```
//!
//! `path` lists the nodes that sent the envelope on, origin first. peer-relay writes `to` and
//! `from` as hex strings when it originates a message and, because it converts them to
//! `Buffer`s on receipt, as `{"type":"Buffer","data":[…]}` objects when it relays one: both
//! forms are read, hex strings are written. The `data` member is a [`Message`]: `user`,
//! `findPeers`, `foundPeers`, `handshake-offer` or `handshake-answer`.
//!
//! Decoding never panics and never trusts a length: a frame over the limit is refused before
//! it is parsed, ids must be exactly 160 bits, paths and peer lists are capped.

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::id::{NodeId, ID_LEN};

/// Default limit of one WebSocket message, in bytes (1 MiB).
pub const DEFAULT_MAX_FRAME: usize = 1 << 20;
/// Most ids read from a `path` (peer-relay drops messages at 20 hops).
pub const MAX_PATH: usize = 64;
/// Most ids read from a `foundPeers` list (peer-relay sends at most 20).
pub const MAX_FOUND: usize = 64;
/// Longest nonce accepted, in bytes (peer-relay's are at most 16 decimal digits).
pub const MAX_NONCE: usize = 64;
/// Longest WebSocket URL accepted in a handshake, in bytes.
pub const MAX_URL: usize = 2048;

/// Why a frame was dropped. Each has a stable [`WireError::code`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// Longer than the frame limit.
    #[error("a message of {len} bytes is over the limit of {max} bytes")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not JSON, or not the expected shape.
    #[error("not a peer-relay message: {0}")]
    Malformed(String),
    /// An id that is not 160 bits.
    #[error("`{field}` is not a node id (40 hex digits or a 20-byte Buffer)")]
    BadId {
        /// Which field.
        field: &'static str,
    },
    /// A message type this node does not know.
    #[error("unknown message type {0:?}")]
    UnknownType(String),
}

impl WireError {
    /// The stable `snake_case` code: `too_large`, `malformed`, `bad_id` or `unknown_type`.
    pub fn code(&self) -> &'static str {
        match self {
            WireError::TooLarge { .. } => "too_large",
            WireError::Malformed(_) => "malformed",
            WireError::BadId { .. } => "bad_id",
            WireError::UnknownType(_) => "unknown_type",
        }
    }
}

fn malformed(e: impl fmt::Display) -> WireError {
    let mut s = e.to_string();
    if s.len() > 200 {
        let mut cut = 200;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    WireError::Malformed(s)
}

fn check_len(frame: &[u8], max: usize) -> Result<(), WireError> {
    if frame.len() > max {
        return Err(WireError::TooLarge {
            len: frame.len(),
            max,
        });
    }
    Ok(())
}

/// An id as peer-relay writes it: a hex string or a serialised `Buffer`.
struct WireId(Option<NodeId>);

impl<'de> Deserialize<'de> for WireId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = WireId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a hex string or a Buffer object")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<WireId, E> {
                Ok(WireId(NodeId::from_hex(s).ok()))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<WireId, E> {
                Ok(WireId(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<WireId, E> {
                Ok(WireId(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<WireId, E> {
                Ok(WireId(None))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<WireId, E> {
                Ok(WireId(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<WireId, E> {
                Ok(WireId(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<WireId, A::Error> {
                let mut ty_ok = false;
                let mut bytes: Option<Option<NodeId>> = None;
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    match &*key {
                        "type" => ty_ok = map.next_value::<Cow<'de, str>>()? == "Buffer",
                        "data" => bytes = Some(map.next_value::<BufferBytes>()?.0),
                        _ => {
                            map.next_value::<de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(WireId(if ty_ok { bytes.flatten() } else { None }))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<WireId, A::Error> {
                // A bare byte array, as some encoders write a Buffer.
                BufferBytes::from_seq(seq).map(|b| WireId(b.0))
            }
        }
        d.deserialize_any(V)
    }
}

/// The `data` array of a serialised `Buffer`, read without allocating: exactly 20 bytes or
/// nothing.
struct BufferBytes(Option<NodeId>);

impl BufferBytes {
    fn from_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<Self, A::Error> {
        let mut out = [0u8; ID_LEN];
        let mut n = 0usize;
        let mut ok = true;
        while let Some(v) = seq.next_element::<i64>()? {
            match u8::try_from(v) {
                Ok(b) if n < ID_LEN => out[n] = b,
                _ => ok = false,
            }
            n += 1;
        }
        Ok(BufferBytes((ok && n == ID_LEN).then_some(NodeId(out))))
    }
}

impl<'de> Deserialize<'de> for BufferBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = BufferBytes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of bytes")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<BufferBytes, A::Error> {
                BufferBytes::from_seq(seq)
            }
        }
        d.deserialize_seq(V)
    }
}

/// The greeting: `{"type":"Buffer","data":[…]}`, as peer-relay sends it.
pub fn encode_greeting(id: &NodeId) -> Bytes {
    let mut out = Vec::with_capacity(32 + ID_LEN * 4);
    out.extend_from_slice(br#"{"type":"Buffer","data":["#);
    for (i, b) in id.0.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b.to_string().as_bytes());
    }
    out.extend_from_slice(b"]}");
    Bytes::from(out)
}

/// Reads a greeting: a serialised `Buffer` of 20 bytes or a 40-hex-digit JSON string.
pub fn decode_greeting(frame: &[u8]) -> Result<NodeId, WireError> {
    check_len(frame, 4096)?;
    let id: WireId = serde_json::from_slice(frame).map_err(malformed)?;
    id.0.ok_or(WireError::BadId { field: "greeting" })
}

/// Encoded JSON kept as text (a message's `data`, passed on without being parsed).
#[derive(Debug, Clone)]
pub struct RawJson(Box<RawValue>);

impl RawJson {
    /// Checks that `text` is one JSON value and keeps it.
    pub fn from_string(text: String) -> Result<Self, WireError> {
        RawValue::from_string(text).map(RawJson).map_err(malformed)
    }

    /// Encodes a value.
    pub fn from_value(value: &serde_json::Value) -> Self {
        serde_json::value::to_raw_value(value).map_or_else(|_| null_raw(), RawJson)
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// Parses the text into a value.
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::from_str(self.0.get()).unwrap_or(serde_json::Value::Null)
    }
}

impl PartialEq for RawJson {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

/// A decoded envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// The final recipient.
    pub to: NodeId,
    /// The origin.
    pub from: NodeId,
    /// The nodes that sent it on, origin first.
    pub path: Vec<NodeId>,
    /// The origin's random nonce, for deduplication.
    pub nonce: String,
    /// The [`Message`], still encoded.
    pub data: RawJson,
}

#[derive(Deserialize)]
struct RawEnvelope<'a> {
    to: WireId,
    from: WireId,
    #[serde(default)]
    path: Vec<WireId>,
    #[serde(borrow)]
    nonce: NonceField<'a>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

/// peer-relay's nonce is a string; accept a number too and keep its text.
struct NonceField<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for NonceField<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = NonceField<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a number")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(NonceField(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(NonceField(Cow::Owned(s.to_string())))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
                Ok(NonceField(Cow::Owned(n.to_string())))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
                Ok(NonceField(Cow::Owned(n.to_string())))
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<Self::Value, E> {
                Ok(NonceField(Cow::Owned(n.to_string())))
            }
        }
        d.deserialize_any(V)
    }
}

/// Decodes an envelope, refusing frames over `max_frame` bytes before parsing them.
pub fn decode_envelope(frame: &[u8], max_frame: usize) -> Result<Envelope, WireError> {
    check_len(frame, max_frame)?;
    let raw: RawEnvelope<'_> = serde_json::from_slice(frame).map_err(malformed)?;
    let to = raw.to.0.ok_or(WireError::BadId { field: "to" })?;
    let from = raw.from.0.ok_or(WireError::BadId { field: "from" })?;
    if raw.path.len() > MAX_PATH {
        return Err(malformed(format_args!(
            "a path of {} hops is over the limit of {MAX_PATH}",
            raw.path.len()
        )));
    }
    let mut path = Vec::with_capacity(raw.path.len() + 1);
    for p in raw.path {
        path.push(p.0.ok_or(WireError::BadId { field: "path" })?);
    }
    let nonce = raw.nonce.0;
    if nonce.is_empty() || nonce.len() > MAX_NONCE {
        return Err(malformed(format_args!(
            "a nonce is 1 to {MAX_NONCE} bytes long"
        )));
    }
    let data = match raw.data {
        Some(d) => RawJson(d.to_owned()),
        None => return Err(malformed("missing field `data`")),
    };
    Ok(Envelope {
        to,
        from,
        path,
        nonce: nonce.into_owned(),
        data,
    })
}

/// Encodes an envelope; `data` must be valid JSON (an encoded [`Message`]).
pub fn encode_envelope(
    to: &NodeId,
    from: &NodeId,
    path: &[NodeId],
    nonce: &str,
    data: &RawJson,
) -> Bytes {
    let data = data.get();
    let mut out = Vec::with_capacity(96 + path.len() * 43 + nonce.len() + data.len());
    out.extend_from_slice(br#"{"to":""#);
    to.write_hex(&mut out);
    out.extend_from_slice(br#"","from":""#);
    from.write_hex(&mut out);
    out.extend_from_slice(br#"","path":["#);
    for (i, p) in path.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'"');
        p.write_hex(&mut out);
        out.push(b'"');
    }
    out.extend_from_slice(br#"],"nonce":"#);
    // serde_json escapes whatever the nonce holds; writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, nonce);
    out.extend_from_slice(br#","data":"#);
    out.extend_from_slice(data.as_bytes());
    out.push(b'}');
    Bytes::from(out)
}

/// The `data` of an envelope.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// An application message; its JSON value, still encoded.
    User(RawJson),
    /// "Which peers do you know near this id?"
    FindPeers(NodeId),
    /// The answer: ids the sender knows (entries that are not ids are skipped).
    FoundPeers(Vec<NodeId>),
    /// "Let us connect directly." peermesh adds its listener URL (`data.ws`) so a peer without
    /// a listener can dial back; peer-relay sends no data and ignores it.
    HandshakeOffer {
        /// The offerer's WebSocket URL, when it listens.
        ws: Option<String>,
    },
    /// The answer to an offer: where to connect.
    HandshakeAnswer {
        /// The answerer's WebSocket URL, when it listens.
        ws: Option<String>,
        /// Whether it speaks WebRTC (peermesh never does).
        wrtc: bool,
        /// A peermesh extension: the answerer is dialling the URL of the offer itself, so the
        /// offerer waits for that link and dials `ws` only if it does not come.
        dialing: bool,
    },
}

#[derive(Deserialize)]
struct RawMessage<'a> {
    #[serde(rename = "type", borrow)]
    ty: Cow<'a, str>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize, Default)]
struct RawHandshake {
    #[serde(default)]
    ws: Option<String>,
    #[serde(default)]
    wrtc: Option<bool>,
    #[serde(default)]
    dialing: Option<bool>,
}

fn url_field(ws: Option<String>) -> Result<Option<String>, WireError> {
    match ws {
        Some(u) if u.len() > MAX_URL => Err(malformed("a handshake URL is over 2048 bytes")),
        Some(u) if !(u.starts_with("ws://") || u.starts_with("wss://")) => Err(malformed(
            format_args!("a handshake URL must start with ws:// or wss://, got {u:.60}"),
        )),
        other => Ok(other),
    }
}

impl Message {
    /// Decodes an envelope's `data`.
    pub fn decode(data: &RawJson) -> Result<Message, WireError> {
        let raw: RawMessage<'_> = serde_json::from_str(data.get()).map_err(malformed)?;
        let field = |name: &str| -> Result<&RawValue, WireError> {
            raw.data
                .ok_or_else(|| malformed(format_args!("a {name} message needs `data`")))
        };
        match &*raw.ty {
            "user" => Ok(Message::User(match raw.data {
                Some(d) => RawJson(d.to_owned()),
                // `undefined` in JavaScript: no `data` member at all. Deliver `null`.
                None => null_raw(),
            })),
            "findPeers" => {
                let id: WireId =
                    serde_json::from_str(field("findPeers")?.get()).map_err(malformed)?;
                Ok(Message::FindPeers(
                    id.0.ok_or(WireError::BadId { field: "data" })?,
                ))
            }
            "foundPeers" => {
                let ids: Vec<WireId> =
                    serde_json::from_str(field("foundPeers")?.get()).map_err(malformed)?;
                Ok(Message::FoundPeers(
                    ids.into_iter()
                        .take(MAX_FOUND)
                        .filter_map(|w| w.0)
                        .collect(),
                ))
            }
            "handshake-offer" => {
                let h: RawHandshake = match raw.data {
                    Some(d) if d.get() != "null" => {
                        serde_json::from_str(d.get()).unwrap_or_default()
                    }
                    _ => RawHandshake::default(),
                };
                // An offer's URL is a peermesh extension: a bad one is ignored, not an error.
                Ok(Message::HandshakeOffer {
                    ws: url_field(h.ws).ok().flatten(),
                })
            }
            "handshake-answer" => {
                let h: RawHandshake = match raw.data {
                    Some(d) if d.get() != "null" => {
                        serde_json::from_str(d.get()).map_err(malformed)?
                    }
                    _ => RawHandshake::default(),
                };
                Ok(Message::HandshakeAnswer {
                    ws: url_field(h.ws)?,
                    wrtc: h.wrtc.unwrap_or(false),
                    dialing: h.dialing.unwrap_or(false),
                })
            }
            other => Err(WireError::UnknownType(other.chars().take(40).collect())),
        }
    }

    /// Encodes the message as an envelope's `data`.
    pub fn encode(&self) -> RawJson {
        let mut out = Vec::with_capacity(64);
        match self {
            Message::User(d) => {
                out.extend_from_slice(br#"{"type":"user","data":"#);
                out.extend_from_slice(d.get().as_bytes());
                out.push(b'}');
            }
            Message::FindPeers(id) => {
                out.extend_from_slice(br#"{"type":"findPeers","data":""#);
                id.write_hex(&mut out);
                out.extend_from_slice(b"\"}");
            }
            Message::FoundPeers(ids) => {
                out.extend_from_slice(br#"{"type":"foundPeers","data":["#);
                for (i, id) in ids.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.push(b'"');
                    id.write_hex(&mut out);
                    out.push(b'"');
                }
                out.extend_from_slice(b"]}");
            }
            Message::HandshakeOffer { ws } => {
                out.extend_from_slice(br#"{"type":"handshake-offer""#);
                if let Some(ws) = ws {
                    out.extend_from_slice(br#","data":{"ws":"#);
                    let _ = serde_json::to_writer(&mut out, ws);
                    out.push(b'}');
                }
                out.push(b'}');
            }
            Message::HandshakeAnswer { ws, wrtc, dialing } => {
                out.extend_from_slice(br#"{"type":"handshake-answer","data":{"ws":"#);
                let _ = serde_json::to_writer(&mut out, ws);
                out.extend_from_slice(br#","wrtc":"#);
                out.extend_from_slice(if *wrtc { b"true" } else { b"false" });
                if *dialing {
                    out.extend_from_slice(br#","dialing":true"#);
                }
                out.extend_from_slice(b"}}");
            }
        }
        raw_from_vec(out)
    }
}

fn null_raw() -> RawJson {
    RawJson(RawValue::NULL.to_owned())
}

/// Wraps JSON this module wrote itself.
fn raw_from_vec(v: Vec<u8>) -> RawJson {
    // Everything passed here is built above from valid JSON pieces; if that were ever wrong,
    // `null` is sent rather than invalid JSON.
    String::from_utf8(v)
        .ok()
        .and_then(|s| RawValue::from_string(s).ok())
        .map_or_else(null_raw, RawJson)
}

#[cfg(test)]
mod tests;

/// A datagram of peer-relay's `Socket` (its dgram-like API): the user message
/// `{"buffer":<Buffer>,"address":<sender id hex>,"port":<number>}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    /// The bytes.
    pub buffer: Vec<u8>,
    /// The sender's id as it wrote it (peer-relay writes its own id, or an address when
    /// sending to itself on localhost); the envelope's `from` is authoritative.
    pub address: String,
    /// The sender's pretend port.
    pub port: u16,
}

/// Most bytes accepted in one datagram (a JSON-encoded `Buffer` takes up to 4 bytes a byte).
pub const MAX_DATAGRAM: usize = 256 * 1024;

impl Datagram {
    /// Encodes the datagram as a user message's data.
    pub fn encode(&self) -> RawJson {
        let mut out = Vec::with_capacity(48 + self.buffer.len() * 4 + self.address.len());
        out.extend_from_slice(br#"{"buffer":{"type":"Buffer","data":["#);
        for (i, b) in self.buffer.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b.to_string().as_bytes());
        }
        out.extend_from_slice(br#"]},"address":"#);
        let _ = serde_json::to_writer(&mut out, &self.address);
        out.extend_from_slice(br#","port":"#);
        out.extend_from_slice(self.port.to_string().as_bytes());
        out.push(b'}');
        raw_from_vec(out)
    }

    /// Reads a user message's data as a datagram; `None` when it is not one.
    pub fn decode(data: &RawJson) -> Option<Datagram> {
        #[derive(Deserialize)]
        struct Raw {
            buffer: RawBuffer,
            #[serde(default)]
            address: String,
            #[serde(default)]
            port: u16,
        }
        #[derive(Deserialize)]
        struct RawBuffer {
            #[serde(rename = "type")]
            ty: String,
            data: Vec<u8>,
        }
        if data.get().len() > MAX_DATAGRAM * 4 + 256 {
            return None;
        }
        let raw: Raw = serde_json::from_str(data.get()).ok()?;
        if raw.buffer.ty != "Buffer" || raw.address.len() > 256 {
            return None;
        }
        Some(Datagram {
            buffer: raw.buffer.data,
            address: raw.address,
            port: raw.port,
        })
    }
}
