//! The envelope of hub-to-hub messages on NATS (sans-IO).
//!
//! ```text
//!   kind u8 │ fields                                        │ frame
//!   1 direct    origin: str, to: str                          MessagePack server frame
//!   2 ack reply ack_id: u64, from: str                        `ack` frame (req = ack_id)
//!   3 ack fail  ack_id: u64, to: str                          —
//!   4 room      seq: u64, origin: str, room: str              MessagePack server frame
//!   5 call      origin: str, timeout_ms: u64                  `invoke` frame (call = caller's id)
//!   6 call done —                                             `result` or `error` (req = call id)
//!   7 topic     seq: u64, origin: str                         `publication` or `topic_ended`
//!   8 stream    to: str, conn: u64, stream: u64,              one stream item (below)
//!               origin: str, from: str, from_conn: u64, from_stream: u64
//! ```
//!
//!   9 session   origin: str, client: str, conn: u64,          a member's request to the
//!     ask       rtt_ms: u64 (MAX: none), tag u8: 1 frame      session's home hub: its
//!               (the rest: `session_join` / `session_op` /    `session_*` frame, or away /
//!               `session_leave`), 2 away, 3 back,             back / moved with the session
//!               4 moved (session: str)
//!  10 session   origin: str, session: str, to: opt str,      a frame of the home hub for
//!     out       skip: opt str (u8 0 / 1 and str)              members on the receiving hub
//!  11 session   origin: str, session: str, client: str       the home hub had member
//!     left                                                    `client` leave: nothing more
//!                                                             of the session is for it
//!  12 session   origin: str, session: str, skip: opt str,    consecutive events of one
//!     burst     count: u32, then each frame: u32 length       action of the home hub (a
//!                                                             leave: one per object), for
//!                                                             members as `session out`
//!  13 batch     count: u32, then each message: u32 length     several messages of the
//!                                                             kinds above for one subject,
//!                                                             handled in order (`batch.rs`)
//!
//! A stream item is a tag and its fields: 1 open (window: u64, meta: u32 length and JSON
//! text, length 0 for none), 2 accepted (window: u64), 3 credit (bytes: u64), 4 data (the
//! rest of the message), 5 end, 6 reset (code: str, reason: str). `conn` and `stream` name the
//! receiving connection and its stream id, 0 when the sender does not know them yet (an open;
//! a reset by the opener before the target answered).
//!
//! A `str` is a big-endian `u16` length and UTF-8 bytes; a frame is the rest of the message,
//! written by the hub's own MessagePack codec (with `seq` 0), so every frame kind and payload
//! crosses hubs exactly as it crosses a socket. Everything is checked on decode: a message
//! from a broken or hostile publisher is an error, never a panic.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use peermesh_proto::{
    ClientFrame, ClientId, Encoding, ErrorCode, Payload, RoomName, ServerFrame, SessionName,
};

/// A message from one hub to another (or to every hub, for rooms).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Relay {
    /// A frame for client `to`, which the receiving hub holds.
    Direct {
        origin: String,
        to: ClientId,
        frame: ServerFrame,
    },
    /// Client `from` answered the acknowledged message `ack_id` of a client of the receiving hub.
    AckReply {
        ack_id: u64,
        from: ClientId,
        payload: Payload,
    },
    /// The acknowledged message `ack_id` could not be delivered to `to`.
    AckFailed { ack_id: u64, to: ClientId },
    /// A frame for the members of `room` on every other hub; `seq` numbers the room emits
    /// of `origin` (always bytes 1..9 of the message, see [`ROOM_SEQ_AT`]).
    Room {
        seq: u64,
        origin: String,
        room: RoomName,
        frame: ServerFrame,
    },
    /// A call for a provider of the receiving hub: an `invoke` whose `call` is the caller's id
    /// on hub `origin`.
    Call {
        origin: String,
        timeout_ms: u64,
        invoke: ServerFrame,
    },
    /// The outcome of a relayed call: a `result` or an `error`, whose `req` is the call's id.
    CallDone { outcome: ServerFrame },
    /// A `publication` to a topic of a provider of hub `origin`, or its `topic_ended`; `seq`
    /// numbers the topic messages of `origin`, apart from its room emits (always bytes 1..9
    /// of the message, see [`TOPIC_SEQ_AT`]).
    Topic {
        seq: u64,
        origin: String,
        frame: ServerFrame,
    },
    /// One end of a stream tells the other, on the receiving hub.
    Stream(Box<StreamMsg>),
    /// Client `client` (connection `conn`) of hub `origin` asks the session's home hub.
    SessionAsk {
        origin: String,
        client: ClientId,
        conn: u64,
        rtt_ms: Option<u64>,
        ask: Ask,
    },
    /// A frame of session `session`'s home hub for its members on the receiving hub: for
    /// `to` alone (a snapshot, an answer), or for all of them but `skip` (an event).
    SessionOut {
        origin: String,
        session: SessionName,
        to: Option<ClientId>,
        skip: Option<ClientId>,
        frame: ServerFrame,
    },
    /// Consecutive events of one action of session `session`'s home hub (a leave gives one
    /// per object the leaver owned), for all its members on the receiving hub but `skip`: one
    /// message for many events, which the receiving hub queues whole.
    SessionBurst {
        origin: String,
        session: SessionName,
        skip: Option<ClientId>,
        frames: Vec<ServerFrame>,
    },
    /// Member `client` of the receiving hub left session `session` at its home hub `origin`:
    /// sent under the session's lock right after the leave's events, so what follows on this
    /// subject is not for it.
    SessionLeft {
        origin: String,
        session: SessionName,
        client: ClientId,
    },
}

/// What a member on another hub asks of a session's home hub.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Ask {
    /// Its `session_join`, `session_op` or `session_leave`.
    Frame(ClientFrame),
    /// It dropped and may resume.
    Away(SessionName),
    /// It resumed on the same hub.
    Back(SessionName),
    /// Its session moved to the sending hub (it resumed there): events go there now, after a
    /// fresh snapshot.
    Moved(SessionName),
}

fn put_opt_str(out: &mut BytesMut, s: Option<&str>) {
    match s {
        Some(s) => {
            out.put_u8(1);
            put_str(out, s);
        }
        None => out.put_u8(0),
    }
}

fn get_opt_id(b: &mut &[u8], what: &str) -> Result<Option<ClientId>, RelayError> {
    if !b.has_remaining() {
        return Err(err(format!("truncated {what}")));
    }
    match b.get_u8() {
        0 => Ok(None),
        1 => get_id(b, what).map(Some),
        _ => Err(err(format!("bad flag of {what}"))),
    }
}

fn get_session(b: &mut &[u8]) -> Result<SessionName, RelayError> {
    let s = get_str(b, "session")?;
    SessionName::new(&s).map_err(|e| err(format!("session: {e}")))
}

/// A stream item between the two ends of a stream on different hubs.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StreamMsg {
    /// The receiving client.
    pub(crate) to: ClientId,
    /// Its connection number on the receiving hub; 0 when the sender does not know it yet.
    pub(crate) conn: u64,
    /// The stream's id on that connection; 0 when the sender does not know it yet.
    pub(crate) stream: u64,
    /// The sending hub.
    pub(crate) origin: String,
    /// The sending client, its connection number and its id of the stream.
    pub(crate) from: ClientId,
    pub(crate) from_conn: u64,
    pub(crate) from_stream: u64,
    pub(crate) item: StreamWire,
}

/// What one end of a stream says.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum StreamWire {
    /// The opener offers the stream and grants `window`.
    Open {
        window: u64,
        meta: Option<serde_json::Value>,
    },
    /// The target accepted and grants `window`.
    Accepted { window: u64 },
    /// The receiver grants `bytes` more.
    Credit { bytes: u64 },
    /// Bytes of the stream.
    Data(Bytes),
    /// The sender's direction is over.
    End,
    /// The stream is over, for `code`.
    Reset { code: ErrorCode, reason: String },
}

/// Longest `meta` of a relayed stream open, in bytes of JSON (a client's frame is smaller).
const MAX_META: usize = 16 << 20;

/// Why a relay message could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed cluster message: {0}")]
pub(crate) struct RelayError(pub(crate) String);

pub(crate) fn err(m: impl Into<String>) -> RelayError {
    RelayError(m.into())
}

pub(crate) fn put_str(out: &mut BytesMut, s: &str) {
    // Ids, room and node names are far shorter than 64 KiB (checked where they are made).
    let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
    out.put_u16(len);
    out.put_slice(&s.as_bytes()[..usize::from(len)]);
}

fn put_frame(out: &mut BytesMut, frame: &ServerFrame) {
    out.put_slice(&peermesh_proto::encode_server(Encoding::MsgPack, 0, frame));
}

/// Writes a [`Relay::SessionBurst`] one frame at a time, each encoded once.
pub(crate) struct BurstWriter {
    head: BytesMut,
    frames: BytesMut,
    count: u32,
}

impl BurstWriter {
    pub(crate) fn new(origin: &str, session: &SessionName, skip: Option<&ClientId>) -> Self {
        let mut head = BytesMut::new();
        head.put_u8(12);
        put_str(&mut head, origin);
        put_str(&mut head, session.as_str());
        put_opt_str(&mut head, skip.map(ClientId::as_str));
        BurstWriter {
            head,
            frames: BytesMut::new(),
            count: 0,
        }
    }

    /// Adds a frame after its length.
    pub(crate) fn push(&mut self, frame: &ServerFrame) {
        let body = peermesh_proto::encode_server(Encoding::MsgPack, 0, frame);
        self.frames
            .put_u32(u32::try_from(body.len()).unwrap_or(u32::MAX));
        self.frames.put_slice(&body);
        self.count += 1;
    }

    /// Frames added so far.
    pub(crate) fn count(&self) -> u32 {
        self.count
    }

    /// Bytes of the frames added so far.
    pub(crate) fn frame_bytes(&self) -> usize {
        self.frames.len()
    }

    /// The message.
    pub(crate) fn finish(self) -> Bytes {
        let mut out = self.head;
        out.put_u32(self.count);
        out.put_slice(&self.frames);
        out.freeze()
    }
}

/// Where a room message carries its `seq` (after the kind byte), so a hub can encode the
/// message first and number it at the moment it publishes it.
pub(crate) const ROOM_SEQ_AT: std::ops::Range<usize> = 1..9;

/// Writes `seq` into an encoded room message.
pub(crate) fn set_room_seq(msg: &mut [u8], seq: u64) {
    if let Some(at) = msg.get_mut(ROOM_SEQ_AT) {
        at.copy_from_slice(&seq.to_be_bytes());
    }
}

/// Where a topic message carries its `seq` (after the kind byte), as for rooms.
pub(crate) const TOPIC_SEQ_AT: std::ops::Range<usize> = 1..9;

/// Writes `seq` into an encoded topic message.
pub(crate) fn set_topic_seq(msg: &mut [u8], seq: u64) {
    if let Some(at) = msg.get_mut(TOPIC_SEQ_AT) {
        at.copy_from_slice(&seq.to_be_bytes());
    }
}

impl Relay {
    /// The message's bytes.
    pub(crate) fn encode(&self) -> Bytes {
        self.encode_mut().freeze()
    }

    /// The message's bytes, still writable.
    pub(crate) fn encode_mut(&self) -> BytesMut {
        let mut out = BytesMut::with_capacity(128);
        match self {
            Relay::Direct { origin, to, frame } => {
                out.put_u8(1);
                put_str(&mut out, origin);
                put_str(&mut out, to.as_str());
                put_frame(&mut out, frame);
            }
            Relay::AckReply {
                ack_id,
                from,
                payload,
            } => {
                out.put_u8(2);
                out.put_u64(*ack_id);
                put_str(&mut out, from.as_str());
                let frame = ServerFrame::Ack {
                    req: *ack_id,
                    payload: payload.clone(),
                };
                put_frame(&mut out, &frame);
            }
            Relay::AckFailed { ack_id, to } => {
                out.put_u8(3);
                out.put_u64(*ack_id);
                put_str(&mut out, to.as_str());
            }
            Relay::Room {
                seq,
                origin,
                room,
                frame,
            } => {
                out.put_u8(4);
                out.put_u64(*seq);
                put_str(&mut out, origin);
                put_str(&mut out, room.as_str());
                put_frame(&mut out, frame);
            }
            Relay::Call {
                origin,
                timeout_ms,
                invoke,
            } => {
                out.put_u8(5);
                put_str(&mut out, origin);
                out.put_u64(*timeout_ms);
                put_frame(&mut out, invoke);
            }
            Relay::CallDone { outcome } => {
                out.put_u8(6);
                put_frame(&mut out, outcome);
            }
            Relay::Topic { seq, origin, frame } => {
                out.put_u8(7);
                out.put_u64(*seq);
                put_str(&mut out, origin);
                put_frame(&mut out, frame);
            }
            Relay::Stream(m) => m.encode_into(&mut out),
            Relay::SessionAsk {
                origin,
                client,
                conn,
                rtt_ms,
                ask,
            } => {
                out.put_u8(9);
                put_str(&mut out, origin);
                put_str(&mut out, client.as_str());
                out.put_u64(*conn);
                out.put_u64(rtt_ms.unwrap_or(u64::MAX));
                match ask {
                    Ask::Frame(f) => {
                        out.put_u8(1);
                        out.put_slice(&peermesh_proto::encode_client(Encoding::MsgPack, f));
                    }
                    Ask::Away(s) | Ask::Back(s) | Ask::Moved(s) => {
                        out.put_u8(match ask {
                            Ask::Away(_) => 2,
                            Ask::Back(_) => 3,
                            _ => 4,
                        });
                        put_str(&mut out, s.as_str());
                    }
                }
            }
            Relay::SessionOut {
                origin,
                session,
                to,
                skip,
                frame,
            } => {
                out.put_u8(10);
                put_str(&mut out, origin);
                put_str(&mut out, session.as_str());
                put_opt_str(&mut out, to.as_ref().map(ClientId::as_str));
                put_opt_str(&mut out, skip.as_ref().map(ClientId::as_str));
                put_frame(&mut out, frame);
            }
            Relay::SessionBurst {
                origin,
                session,
                skip,
                frames,
            } => {
                let mut w = BurstWriter::new(origin, session, skip.as_ref());
                for f in frames {
                    w.push(f);
                }
                out.put_slice(&w.finish());
            }
            Relay::SessionLeft {
                origin,
                session,
                client,
            } => {
                out.put_u8(11);
                put_str(&mut out, origin);
                put_str(&mut out, session.as_str());
                put_str(&mut out, client.as_str());
            }
        }
        out
    }

    /// Reads a message (stream data is shared with `whole`, not copied).
    pub(crate) fn decode(whole: &Bytes) -> Result<Relay, RelayError> {
        let mut b: &[u8] = whole;
        if !b.has_remaining() {
            return Err(err("empty message"));
        }
        let kind = b.get_u8();
        match kind {
            1 => {
                let origin = get_str(&mut b, "origin")?;
                let to = get_id(&mut b, "to")?;
                let frame = get_frame(b)?;
                Ok(Relay::Direct { origin, to, frame })
            }
            2 => {
                let ack_id = get_u64(&mut b)?;
                let from = get_id(&mut b, "from")?;
                match get_frame(b)? {
                    ServerFrame::Ack { req, payload } if req == ack_id => Ok(Relay::AckReply {
                        ack_id,
                        from,
                        payload,
                    }),
                    _ => Err(err("an ack reply must carry an ack frame with its ack_id")),
                }
            }
            3 => {
                let ack_id = get_u64(&mut b)?;
                let to = get_id(&mut b, "to")?;
                if b.has_remaining() {
                    return Err(err("bytes after an ack failure"));
                }
                Ok(Relay::AckFailed { ack_id, to })
            }
            4 => {
                let seq = get_u64(&mut b)?;
                let origin = get_str(&mut b, "origin")?;
                let room = get_str(&mut b, "room")?;
                let room = RoomName::new(&room).map_err(|e| err(format!("room: {e}")))?;
                let frame = get_frame(b)?;
                Ok(Relay::Room {
                    seq,
                    origin,
                    room,
                    frame,
                })
            }
            5 => {
                let origin = get_str(&mut b, "origin")?;
                let timeout_ms = get_u64(&mut b)?;
                match get_frame(b)? {
                    invoke @ ServerFrame::Invoke(_) => Ok(Relay::Call {
                        origin,
                        timeout_ms,
                        invoke,
                    }),
                    _ => Err(err("a call must carry an invoke frame")),
                }
            }
            6 => match get_frame(b)? {
                outcome @ (ServerFrame::CallResult { .. }
                | ServerFrame::Error(peermesh_proto::ErrorFrame {
                    req: Some(_), ..
                })) => Ok(Relay::CallDone { outcome }),
                _ => Err(err(
                    "a call outcome must be a result or an error with its call id",
                )),
            },
            7 => {
                let seq = get_u64(&mut b)?;
                let origin = get_str(&mut b, "origin")?;
                match get_frame(b)? {
                    frame @ (ServerFrame::Publication(_) | ServerFrame::TopicEnded { .. }) => {
                        Ok(Relay::Topic { seq, origin, frame })
                    }
                    _ => Err(err("a topic message must be a publication or topic_ended")),
                }
            }
            8 => StreamMsg::decode(whole, b).map(|m| Relay::Stream(Box::new(m))),
            9 => {
                let origin = get_str(&mut b, "origin")?;
                let client = get_id(&mut b, "client")?;
                let conn = get_u64(&mut b)?;
                let rtt_ms = Some(get_u64(&mut b)?).filter(|r| *r != u64::MAX);
                if !b.has_remaining() {
                    return Err(err("a session request without its tag"));
                }
                let ask = match b.get_u8() {
                    1 => match peermesh_proto::decode_client(Encoding::MsgPack, b) {
                        Ok(
                            f @ (ClientFrame::SessionJoin {
                                session: Some(_), ..
                            }
                            | ClientFrame::SessionOp { .. }
                            | ClientFrame::SessionLeave { .. }),
                        ) => {
                            b = &[];
                            Ask::Frame(f)
                        }
                        Ok(_) => return Err(err("a session request must carry a session frame")),
                        Err(e) => return Err(err(format!("session frame: {e}"))),
                    },
                    t @ 2..=4 => {
                        let s = get_session(&mut b)?;
                        match t {
                            2 => Ask::Away(s),
                            3 => Ask::Back(s),
                            _ => Ask::Moved(s),
                        }
                    }
                    t => return Err(err(format!("unknown session request {t}"))),
                };
                if b.has_remaining() {
                    return Err(err("bytes after a session request"));
                }
                Ok(Relay::SessionAsk {
                    origin,
                    client,
                    conn,
                    rtt_ms,
                    ask,
                })
            }
            10 => {
                let origin = get_str(&mut b, "origin")?;
                let session = get_session(&mut b)?;
                let to = get_opt_id(&mut b, "to")?;
                let skip = get_opt_id(&mut b, "skip")?;
                let frame = get_frame(b)?;
                Ok(Relay::SessionOut {
                    origin,
                    session,
                    to,
                    skip,
                    frame,
                })
            }
            12 => {
                let origin = get_str(&mut b, "origin")?;
                let session = get_session(&mut b)?;
                let skip = get_opt_id(&mut b, "skip")?;
                if b.remaining() < 4 {
                    return Err(err("truncated frame count"));
                }
                let count = b.get_u32() as usize;
                // Each frame takes at least its length and one byte.
                if count == 0 || count > b.remaining() / 5 {
                    return Err(err(format!(
                        "a session burst of {count} frames in {} bytes",
                        b.remaining()
                    )));
                }
                let mut frames = Vec::with_capacity(count);
                for _ in 0..count {
                    frames.push(get_sized_frame(&mut b)?);
                }
                if b.has_remaining() {
                    return Err(err("bytes after a session burst"));
                }
                Ok(Relay::SessionBurst {
                    origin,
                    session,
                    skip,
                    frames,
                })
            }
            11 => {
                let origin = get_str(&mut b, "origin")?;
                let session = get_session(&mut b)?;
                let client = get_id(&mut b, "client")?;
                if b.has_remaining() {
                    return Err(err("bytes after a session leave"));
                }
                Ok(Relay::SessionLeft {
                    origin,
                    session,
                    client,
                })
            }
            k => Err(err(format!("unknown kind {k}"))),
        }
    }
}

impl StreamMsg {
    fn encode_into(&self, out: &mut BytesMut) {
        out.put_u8(8);
        put_str(out, self.to.as_str());
        out.put_u64(self.conn);
        out.put_u64(self.stream);
        put_str(out, &self.origin);
        put_str(out, self.from.as_str());
        out.put_u64(self.from_conn);
        out.put_u64(self.from_stream);
        match &self.item {
            StreamWire::Open { window, meta } => {
                out.put_u8(1);
                out.put_u64(*window);
                let text = meta
                    .as_ref()
                    .map(|m| m.to_string().into_bytes())
                    .unwrap_or_default();
                out.put_u32(u32::try_from(text.len()).unwrap_or(u32::MAX));
                out.put_slice(&text);
            }
            StreamWire::Accepted { window } => {
                out.put_u8(2);
                out.put_u64(*window);
            }
            StreamWire::Credit { bytes } => {
                out.put_u8(3);
                out.put_u64(*bytes);
            }
            StreamWire::Data(data) => {
                out.put_u8(4);
                out.put_slice(data);
            }
            StreamWire::End => out.put_u8(5),
            StreamWire::Reset { code, reason } => {
                out.put_u8(6);
                put_str(out, code.as_str());
                put_str(out, reason);
            }
        }
    }

    /// Reads the fields after the kind byte; `b` is the rest of `whole`.
    fn decode(whole: &Bytes, mut b: &[u8]) -> Result<StreamMsg, RelayError> {
        let to = get_id(&mut b, "to")?;
        let conn = get_u64(&mut b)?;
        let stream = get_u64(&mut b)?;
        let origin = get_str(&mut b, "origin")?;
        let from = get_id(&mut b, "from")?;
        let from_conn = get_u64(&mut b)?;
        let from_stream = get_u64(&mut b)?;
        if from_conn == 0 || from_stream == 0 {
            return Err(err(
                "a stream item must name its sender's connection and stream",
            ));
        }
        if !b.has_remaining() {
            return Err(err("a stream item without its tag"));
        }
        let item = match b.get_u8() {
            1 => {
                let window = get_u64(&mut b)?;
                if b.remaining() < 4 {
                    return Err(err("truncated meta length"));
                }
                let len = b.get_u32() as usize;
                if len > MAX_META || b.remaining() < len {
                    return Err(err("truncated or oversized meta"));
                }
                let meta = if len == 0 {
                    None
                } else {
                    let v: serde_json::Value =
                        serde_json::from_slice(&b[..len]).map_err(|e| err(format!("meta: {e}")))?;
                    Some(v)
                };
                b.advance(len);
                StreamWire::Open { window, meta }
            }
            2 => StreamWire::Accepted {
                window: get_u64(&mut b)?,
            },
            3 => StreamWire::Credit {
                bytes: get_u64(&mut b)?,
            },
            4 => {
                if !b.has_remaining() {
                    return Err(err("stream data without bytes"));
                }
                let at = whole.len() - b.len();
                let data = whole.slice(at..);
                b = &[];
                StreamWire::Data(data)
            }
            5 => StreamWire::End,
            6 => {
                let code = get_str(&mut b, "code")?;
                let code = code.parse().unwrap_or(ErrorCode::Unknown);
                let reason = get_str(&mut b, "reason")?;
                StreamWire::Reset { code, reason }
            }
            t => return Err(err(format!("unknown stream item {t}"))),
        };
        if b.has_remaining() {
            return Err(err("bytes after a stream item"));
        }
        if stream == 0 && !matches!(item, StreamWire::Open { .. } | StreamWire::Reset { .. }) {
            return Err(err("only an open or a reset may leave the stream unnamed"));
        }
        Ok(StreamMsg {
            to,
            conn,
            stream,
            origin,
            from,
            from_conn,
            from_stream,
            item,
        })
    }
}

pub(crate) fn get_u64(b: &mut &[u8]) -> Result<u64, RelayError> {
    if b.remaining() < 8 {
        return Err(err("truncated number"));
    }
    Ok(b.get_u64())
}

pub(crate) fn get_str(b: &mut &[u8], what: &str) -> Result<String, RelayError> {
    if b.remaining() < 2 {
        return Err(err(format!("truncated {what}")));
    }
    let len = usize::from(b.get_u16());
    if b.remaining() < len {
        return Err(err(format!("truncated {what}")));
    }
    let s = std::str::from_utf8(&b[..len])
        .map_err(|_| err(format!("{what} is not UTF-8")))?
        .to_owned();
    b.advance(len);
    Ok(s)
}

fn get_id(b: &mut &[u8], what: &str) -> Result<ClientId, RelayError> {
    let s = get_str(b, what)?;
    ClientId::new(&s).map_err(|e| err(format!("{what}: {e}")))
}

fn get_sized_frame(b: &mut &[u8]) -> Result<ServerFrame, RelayError> {
    if b.remaining() < 4 {
        return Err(err("truncated frame length"));
    }
    let len = b.get_u32() as usize;
    if b.remaining() < len {
        return Err(err(format!(
            "a frame of {len} bytes, {} left in the message",
            b.remaining()
        )));
    }
    let (frame, rest) = b.split_at(len);
    *b = rest;
    get_frame(frame)
}

fn get_frame(b: &[u8]) -> Result<ServerFrame, RelayError> {
    peermesh_proto::decode_server(Encoding::MsgPack, b)
        .map(|(_, f)| f)
        .map_err(|e| err(format!("frame: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use peermesh_proto::{EventName, Message as MessageFrame};
    use proptest::prelude::*;

    fn id(s: &str) -> ClientId {
        ClientId::new(s).expect("valid id")
    }

    fn message(
        from: &str,
        room: Option<&str>,
        ack_id: Option<u64>,
        payload: Payload,
    ) -> ServerFrame {
        ServerFrame::Message(MessageFrame {
            from: id(from),
            event: EventName::new("chat").expect("event"),
            payload,
            room: room.map(|r| RoomName::new(r).expect("room")),
            ack_id,
        })
    }

    #[test]
    fn every_kind_round_trips() {
        let all = [
            Relay::Direct {
                origin: "hub-a".into(),
                to: id("bob@x.y"),
                frame: message(
                    "alice",
                    None,
                    Some(7 << 32 | 9),
                    Payload::Json(serde_json::json!({"x": [1, 2.5, "é"]})),
                ),
            },
            Relay::AckReply {
                ack_id: 1 << 40,
                from: id("bob"),
                payload: Payload::Bin(Bytes::from_static(&[0, 1, 2, 255])),
            },
            Relay::AckFailed {
                ack_id: 3,
                to: id("carol"),
            },
            Relay::Room {
                seq: 1 << 50 | 3,
                origin: "hub-b".into(),
                room: RoomName::new("lobby").expect("room"),
                frame: message("dave", Some("lobby"), None, Payload::NULL),
            },
            Relay::Call {
                origin: "hub-c".into(),
                timeout_ms: 5_000,
                invoke: ServerFrame::Invoke(peermesh_proto::Invoke {
                    call: 3 << 32 | 1,
                    from: id("erin"),
                    service: peermesh_proto::ServiceName::new("math").expect("service"),
                    method: peermesh_proto::MethodName::new("add").expect("method"),
                    payload: Payload::Json(serde_json::json!([1, 2])),
                }),
            },
            Relay::CallDone {
                outcome: ServerFrame::CallResult {
                    req: 3 << 32 | 1,
                    payload: Payload::Json(serde_json::json!(3)),
                },
            },
            Relay::Topic {
                seq: 1 << 45 | 17,
                origin: "hub-a".into(),
                frame: ServerFrame::Publication(peermesh_proto::Publication {
                    service: peermesh_proto::ServiceName::new("news").expect("service"),
                    topic: peermesh_proto::TopicName::new("sport").expect("topic"),
                    payload: Payload::Json(serde_json::json!({"goal": 1})),
                }),
            },
            Relay::CallDone {
                outcome: ServerFrame::Error(peermesh_proto::ErrorFrame::new(
                    peermesh_proto::ErrorCode::ProviderLeft,
                    "gone",
                    Some(9),
                )),
            },
        ];
        for r in all
            .into_iter()
            .chain(stream_samples())
            .chain(session_samples())
        {
            assert_eq!(Relay::decode(&r.encode()), Ok(r));
        }
    }

    #[test]
    fn a_topic_message_is_numbered_after_it_is_encoded() {
        let ended = ServerFrame::TopicEnded {
            service: peermesh_proto::ServiceName::new("news").expect("service"),
            topic: peermesh_proto::TopicName::new("sport").expect("topic"),
            reason: peermesh_proto::TopicEnd::Destroyed,
        };
        let mut m = Relay::Topic {
            seq: 0,
            origin: "hub-a".into(),
            frame: ended.clone(),
        }
        .encode_mut();
        set_topic_seq(&mut m, 1 << 60 | 5);
        let want = Relay::Topic {
            seq: 1 << 60 | 5,
            origin: "hub-a".into(),
            frame: ended,
        };
        let m = m.freeze();
        assert_eq!(Relay::decode(&m), Ok(want));
        for cut in 0..m.len() {
            assert!(Relay::decode(&m.slice(..cut)).is_err(), "cut at {cut}");
        }
        let mut short = [7u8, 0, 0];
        set_topic_seq(&mut short, 9);
        assert_eq!(short, [7, 0, 0], "too short to hold a seq: left alone");
    }

    fn stream_samples() -> Vec<Relay> {
        let items = [
            StreamWire::Open {
                window: 65_536,
                meta: Some(serde_json::json!({"file": "x.bin", "n": [1, 2.5]})),
            },
            StreamWire::Open {
                window: 0,
                meta: None,
            },
            StreamWire::Accepted { window: 10 },
            StreamWire::Credit { bytes: 1 << 20 },
            StreamWire::Data(Bytes::from_static(&[0, 1, 255])),
            StreamWire::End,
            StreamWire::Reset {
                code: peermesh_proto::ErrorCode::PeerLeft,
                reason: "bob disconnected".into(),
            },
        ];
        items
            .into_iter()
            .map(|item| {
                Relay::Stream(Box::new(StreamMsg {
                    to: id("bob"),
                    conn: 3,
                    stream: 7,
                    origin: "hub-a".into(),
                    from: id("alice"),
                    from_conn: 9,
                    from_stream: 2,
                    item,
                }))
            })
            .collect()
    }

    fn session_samples() -> Vec<Relay> {
        let name = SessionName::new("game-1").expect("session");
        let asks = [
            Ask::Frame(ClientFrame::SessionJoin {
                session: Some(name.clone()),
                mode: Some(peermesh_proto::SessionMode::Relay),
                req: Some(4),
            }),
            Ask::Frame(ClientFrame::SessionLeave {
                session: name.clone(),
                req: None,
            }),
            Ask::Away(name.clone()),
            Ask::Back(name.clone()),
            Ask::Moved(name.clone()),
        ];
        let mut out: Vec<Relay> = asks
            .into_iter()
            .map(|ask| Relay::SessionAsk {
                origin: "hub-b".into(),
                client: id("bob"),
                conn: 12,
                rtt_ms: Some(30),
                ask,
            })
            .collect();
        out.push(Relay::SessionOut {
            origin: "hub-a".into(),
            session: name.clone(),
            to: None,
            skip: Some(id("carol")),
            frame: ServerFrame::Ok { req: 3 },
        });
        out.push(Relay::SessionOut {
            origin: "hub-a".into(),
            session: name.clone(),
            to: Some(id("bob")),
            skip: None,
            frame: ServerFrame::Pong { req: Some(1) },
        });
        out.push(Relay::SessionLeft {
            origin: "hub-a".into(),
            session: name.clone(),
            client: id("bob"),
        });
        for skip in [None, Some(id("carol"))] {
            out.push(Relay::SessionBurst {
                origin: "hub-a".into(),
                session: name.clone(),
                skip,
                frames: vec![
                    ServerFrame::Ok { req: 3 },
                    ServerFrame::Pong { req: Some(1) },
                    ServerFrame::Pong { req: None },
                ],
            });
        }
        out
    }

    #[test]
    fn damaged_session_messages_are_errors() {
        for r in session_samples() {
            let good = r.encode();
            for cut in 0..good.len() {
                assert!(
                    Relay::decode(&good.slice(..cut)).is_err(),
                    "cut at {cut}: {r:?}"
                );
            }
        }
        // A session request must carry a session frame, not any client frame.
        let mut bad = BytesMut::new();
        bad.put_u8(9);
        put_str(&mut bad, "hub-b");
        put_str(&mut bad, "bob");
        bad.put_u64(1);
        bad.put_u64(u64::MAX);
        bad.put_u8(1);
        bad.put_slice(&peermesh_proto::encode_client(
            Encoding::MsgPack,
            &ClientFrame::Ping { req: Some(1) },
        ));
        assert!(Relay::decode(&bad.freeze()).is_err());
    }

    #[test]
    fn damaged_stream_items_are_errors() {
        for r in stream_samples() {
            let good = r.encode();
            for cut in 0..good.len() - 1 {
                // A data item's bytes are the rest of the message: any cut after its tag and
                // first byte is still a valid (shorter) item.
                if let Ok(Relay::Stream(m)) = Relay::decode(&good.slice(..cut)) {
                    assert!(matches!(m.item, StreamWire::Data(_)), "cut at {cut}: {m:?}");
                }
            }
        }
        // Only an open or a reset may leave the receiving stream unnamed.
        let unnamed = Relay::Stream(Box::new(StreamMsg {
            to: id("bob"),
            conn: 0,
            stream: 0,
            origin: "hub-a".into(),
            from: id("alice"),
            from_conn: 1,
            from_stream: 1,
            item: StreamWire::End,
        }));
        assert!(Relay::decode(&unnamed.encode()).is_err());
        // An unknown reset code is kept as `unknown`, not refused.
        let mut odd = BytesMut::new();
        odd.put_u8(8);
        put_str(&mut odd, "bob");
        odd.put_u64(1);
        odd.put_u64(1);
        put_str(&mut odd, "hub-a");
        put_str(&mut odd, "alice");
        odd.put_u64(1);
        odd.put_u64(1);
        odd.put_u8(6);
        put_str(&mut odd, "from_the_future");
        put_str(&mut odd, "?");
        match Relay::decode(&odd.freeze()) {
            Ok(Relay::Stream(m)) => assert_eq!(
                m.item,
                StreamWire::Reset {
                    code: peermesh_proto::ErrorCode::Unknown,
                    reason: "?".into()
                }
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn damaged_messages_are_errors() {
        let good = Relay::Direct {
            origin: "hub-a".into(),
            to: id("bob"),
            frame: message("alice", None, None, Payload::NULL),
        }
        .encode();
        for cut in 0..good.len() {
            assert!(Relay::decode(&good.slice(..cut)).is_err(), "cut at {cut}");
        }
        assert!(Relay::decode(&Bytes::from_static(&[9])).is_err());
        let mut extra = Relay::AckFailed {
            ack_id: 1,
            to: id("x"),
        }
        .encode()
        .to_vec();
        extra.push(0);
        assert!(Relay::decode(&Bytes::from(extra)).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = Relay::decode(&Bytes::from(bytes));
        }

        #[test]
        fn any_text_message_round_trips(from in "[a-z]{1,12}", to in "[a-zA-Z0-9@.:_-]{1,20}", text in ".{0,64}", ack in proptest::option::of(0u64..(1 << 53))) {
            let r = Relay::Direct {
                origin: "n".into(),
                to: id(&to),
                frame: message(&from, None, ack, Payload::Json(serde_json::Value::String(text))),
            };
            prop_assert_eq!(Relay::decode(&r.encode()), Ok(r));
        }
    }
}
