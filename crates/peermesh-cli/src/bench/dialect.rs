//! The two wire dialects the load generator speaks: the peermesh hub protocol (JSON or
//! MessagePack) and Socket.IO 4 over Engine.IO v4 (WebSocket transport only).
//!
//! Setup frames (hello, join) go through the real codec of `peermesh-proto`. Hot-path frames are
//! templates encoded once per connection: only the 20-digit send timestamp at the start of the
//! payload string changes from one message to the next. Incoming deliveries are recognised by a
//! fast scan that extracts that timestamp; anything else falls back to the full decoder.
//!
//! | | peermesh (JSON) | Socket.IO |
//! |---|---|---|
//! | identify | `{"type":"hello","version":"1.0.0","id":"c1"}` | `40{"id":"c1"}` after the open packet |
//! | join | `{"type":"join","room":"r","req":1}` → `ok` | `421["join","r"]` → `431["ok"]` |
//! | direct | `{"type":"emit","to":"c2","event":"e","data":"…"}` | `42["emit","c2","e","…"]` |
//! | room | `{"type":"emit_room","room":"r","event":"e","data":"…"}` | `42["emit_room","r","e","…"]` |
//! | delivery | `{"seq":N,"type":"message","from":"c1","event":"e","data":"…"}` | `42["message","c1","e","…"]` |
//! | provide | `{"type":"provide","service":"s1","methods":["echo"],"req":1}` → `ok` | — (calls name the answering client) |
//! | call | `{"type":"call","service":"s1","method":"echo","req":1,"data":"…"}` | `421["call","c2","echo","…"]` (`emitWithAck`) |
//! | invoke | `{"seq":N,"type":"invoke","call":K,…,"data":"…"}` | `42K["invoke","c1","echo","…"]` |
//! | answer | `{"type":"respond","call":K,"data":"…"}` | `43K["…"]` (the ack) |
//! | result | `{"seq":N,"type":"result","req":1,"data":"…"}` | `431["…"]` |

use std::time::{Duration, Instant};

use peermesh_proto::{
    decode_server, encode_client, ClientFrame, ClientId, Encoding, Hello, MethodName, Payload,
    Provide, RoomName, ServerFrame, ServiceName, PROTOCOL_VERSION,
};

use super::ws::{find, Opcode, WsConn, WsError};

/// Digits of the timestamp at the start of every payload string.
pub(crate) const STAMP_DIGITS: usize = 20;

/// Digits of the message number that follows the timestamp in numbered payloads
/// ([`Template::queue_numbered`]).
pub(crate) const NUMBER_DIGITS: usize = 10;

/// Which protocol a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// The peermesh hub protocol in the given encoding.
    Peermesh(Encoding),
    /// Socket.IO 4 (Engine.IO v4, WebSocket transport).
    SocketIo,
}

/// What an incoming data message turned out to be.
#[derive(Debug, PartialEq)]
pub(crate) enum Incoming {
    /// A benchmark delivery (or call result) carrying its send timestamp (ns since the bench
    /// epoch).
    Message(u64),
    /// A call to answer: its timestamp and the id the answer must carry (peermesh `call`,
    /// Socket.IO ack id).
    Invoke {
        /// The caller's timestamp.
        stamp: u64,
        /// The call's id.
        id: u64,
    },
    /// An Engine.IO ping: answer with a pong.
    EnginePing,
    /// Anything else that needs no action (notifications, acks).
    Other,
    /// An error reported by the server; the text says which.
    Error(String),
}

/// Errors of the setup exchanges.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SetupError {
    /// The WebSocket layer failed.
    #[error(transparent)]
    Ws(#[from] WsError),
    /// The server refused the request.
    #[error("refused by the server: {0}")]
    Refused(String),
    /// The server answered something unexpected.
    #[error("unexpected answer: {0}")]
    Unexpected(String),
    /// The id or room name is not valid for the protocol.
    #[error("invalid name: {0}")]
    Name(String),
}

/// A frame encoded once; [`Template::queue`] only writes the timestamp.
#[derive(Debug, Clone)]
pub(crate) struct Template {
    op: Opcode,
    prefix: Vec<u8>,
    suffix: Vec<u8>,
}

impl Template {
    /// Queues the frame with `stamp` (ns since the bench epoch) as its timestamp.
    pub(crate) fn queue(&self, conn: &mut WsConn, stamp: u64) {
        let digits = stamp_digits(stamp);
        conn.queue(self.op, &[&self.prefix, &digits, &self.suffix]);
    }

    /// Queues the frame with `stamp` as its timestamp followed by `number` as 10 digits (its
    /// low 10 digits), in place of the first 10 padding bytes. The template's payload must be
    /// at least `STAMP_DIGITS + NUMBER_DIGITS` bytes long.
    pub(crate) fn queue_numbered(&self, conn: &mut WsConn, stamp: u64, number: u64) {
        debug_assert!(
            self.suffix.len() >= NUMBER_DIGITS,
            "payload too short for a number"
        );
        let digits = stamp_digits(stamp);
        let number = stamp_digits(number);
        let rest = self.suffix.get(NUMBER_DIGITS..).unwrap_or_default();
        conn.queue(
            self.op,
            &[
                &self.prefix,
                &digits,
                &number[STAMP_DIGITS - NUMBER_DIGITS..],
                rest,
            ],
        );
    }

    /// Length of the complete frame payload.
    #[cfg(test)]
    fn payload_len(&self) -> usize {
        self.prefix.len() + STAMP_DIGITS + self.suffix.len()
    }
}

fn stamp_digits(mut v: u64) -> [u8; STAMP_DIGITS] {
    let mut out = [b'0'; STAMP_DIGITS];
    for slot in out.iter_mut().rev() {
        *slot = b'0' + (v % 10) as u8;
        v /= 10;
    }
    out
}

fn parse_stamp(b: &[u8]) -> Option<u64> {
    let digits = b.get(..STAMP_DIGITS)?;
    let mut v: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    Some(v)
}

/// The timestamp and the message number at the start of a numbered payload string.
pub(crate) fn parse_numbered(b: &[u8]) -> Option<(u64, u64)> {
    let stamp = parse_stamp(b)?;
    let digits = b.get(STAMP_DIGITS..STAMP_DIGITS + NUMBER_DIGITS)?;
    let mut n: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u64::from(d - b'0');
    }
    Some((stamp, n))
}

/// A string as a JSON string literal (quoted and escaped).
pub(crate) fn json_str(s: &str) -> String {
    // serde_json's escaping of a plain string cannot fail.
    serde_json::to_string(s).unwrap_or_else(|_| String::from("\"\""))
}

fn mp_str(out: &mut Vec<u8>, s: &[u8]) {
    let n = s.len();
    if n < 32 {
        out.push(0xa0 | n as u8);
    } else if let Ok(n) = u8::try_from(n) {
        out.extend_from_slice(&[0xd9, n]);
    } else if let Ok(n) = u16::try_from(n) {
        out.push(0xda);
        out.extend_from_slice(&n.to_be_bytes());
    } else {
        out.push(0xdb);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    }
    out.extend_from_slice(s);
}

impl Dialect {
    /// Short name for reports.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Dialect::Peermesh(Encoding::Json) => "peermesh/json",
            Dialect::Peermesh(Encoding::MsgPack) => "peermesh/msgpack",
            Dialect::SocketIo => "socket.io",
        }
    }

    /// The template of a direct message to `to` whose payload string is `payload_len` bytes.
    pub(crate) fn direct_template(self, to: &str, payload_len: usize) -> Template {
        self.template("emit", "to", to, payload_len)
    }

    /// The template of a call of `echo` whose argument string is `payload_len` bytes: of the
    /// service `target` (peermesh) or to the client `target` (Socket.IO `emitWithAck`).
    pub(crate) fn call_template(self, target: &str, payload_len: usize) -> Template {
        let payload_len = payload_len.max(STAMP_DIGITS);
        let pad = vec![b'x'; payload_len - STAMP_DIGITS];
        match self {
            Dialect::Peermesh(Encoding::Json) => {
                let prefix = format!(
                    "{{\"type\":\"call\",\"service\":{},\"method\":\"echo\",\"req\":1,\"data\":\"",
                    json_str(target)
                );
                let mut suffix = pad;
                suffix.extend_from_slice(b"\"}");
                Template {
                    op: Opcode::Text,
                    prefix: prefix.into_bytes(),
                    suffix,
                }
            }
            Dialect::Peermesh(Encoding::MsgPack) => {
                let mut prefix = vec![0x85];
                mp_str(&mut prefix, b"type");
                mp_str(&mut prefix, b"call");
                mp_str(&mut prefix, b"service");
                mp_str(&mut prefix, target.as_bytes());
                mp_str(&mut prefix, b"method");
                mp_str(&mut prefix, b"echo");
                mp_str(&mut prefix, b"req");
                prefix.push(0x01);
                mp_str(&mut prefix, b"data");
                let mut hdr = Vec::new();
                mp_str(&mut hdr, &vec![b'x'; payload_len]);
                prefix.extend_from_slice(&hdr[..hdr.len() - payload_len]);
                Template {
                    op: Opcode::Binary,
                    prefix,
                    suffix: pad,
                }
            }
            Dialect::SocketIo => {
                let prefix = format!("421[\"call\",{},\"echo\",\"", json_str(target));
                let mut suffix = pad;
                suffix.extend_from_slice(b"\"]");
                Template {
                    op: Opcode::Text,
                    prefix: prefix.into_bytes(),
                    suffix,
                }
            }
        }
    }

    /// Queues the answer to the call `id`: its timestamp back, padded to `payload_len`.
    pub(crate) fn queue_respond(self, conn: &mut WsConn, id: u64, stamp: u64, payload_len: usize) {
        let digits = stamp_digits(stamp);
        let pad = vec![b'x'; payload_len.max(STAMP_DIGITS) - STAMP_DIGITS];
        let mut id_buf = itoa_u64(id);
        match self {
            Dialect::Peermesh(Encoding::Json) => {
                let head = [
                    b"{\"type\":\"respond\",\"call\":".as_slice(),
                    id_buf.as_slice(),
                ]
                .concat();
                conn.queue(
                    Opcode::Text,
                    &[&head, b",\"data\":\"", &digits, &pad, b"\"}"],
                );
            }
            Dialect::Peermesh(Encoding::MsgPack) => {
                let mut head = vec![0x83];
                mp_str(&mut head, b"type");
                mp_str(&mut head, b"respond");
                mp_str(&mut head, b"call");
                head.push(0xcf);
                head.extend_from_slice(&id.to_be_bytes());
                mp_str(&mut head, b"data");
                let n = digits.len() + pad.len();
                let mut hdr = Vec::new();
                mp_str(&mut hdr, &vec![b'x'; n]);
                head.extend_from_slice(&hdr[..hdr.len() - n]);
                conn.queue(Opcode::Binary, &[&head, &digits, &pad]);
            }
            Dialect::SocketIo => {
                id_buf.splice(0..0, *b"43");
                conn.queue(Opcode::Text, &[&id_buf, b"[\"", &digits, &pad, b"\"]"]);
            }
        }
    }

    /// Provides the service `service` (method `echo`) on a peermesh connection; nothing to do
    /// for Socket.IO, whose calls name the answering client.
    pub(crate) async fn provide(
        self,
        conn: &mut WsConn,
        service: &str,
        timeout: Duration,
    ) -> Result<(), SetupError> {
        let Dialect::Peermesh(enc) = self else {
            return Ok(());
        };
        let deadline = Instant::now() + timeout;
        let frame = ClientFrame::Provide(Provide {
            service: ServiceName::new(service).map_err(|e| SetupError::Name(e.to_string()))?,
            methods: vec![MethodName::new("echo").map_err(|e| SetupError::Name(e.to_string()))?],
            req: Some(1),
        });
        queue_client(conn, enc, &frame);
        conn.flush().await?;
        wait_for(conn, deadline, timeout, |conn, op, payload| {
            peermesh_reply(conn, enc, op, payload, |frame| match frame {
                ServerFrame::Ok { req: 1 } => Some(Ok(())),
                _ => None,
            })
        })
        .await
    }

    /// The template of a room message to `room` whose payload string is `payload_len` bytes.
    pub(crate) fn room_template(self, room: &str, payload_len: usize) -> Template {
        self.template("emit_room", "room", room, payload_len)
    }

    fn template(self, ty: &str, key: &str, target: &str, payload_len: usize) -> Template {
        let payload_len = payload_len.max(STAMP_DIGITS);
        let pad = vec![b'x'; payload_len - STAMP_DIGITS];
        match self {
            Dialect::Peermesh(Encoding::Json) => {
                let prefix = format!(
                    "{{\"type\":\"{ty}\",\"{key}\":{},\"event\":\"e\",\"data\":\"",
                    json_str(target)
                );
                let mut suffix = pad;
                suffix.extend_from_slice(b"\"}");
                Template {
                    op: Opcode::Text,
                    prefix: prefix.into_bytes(),
                    suffix,
                }
            }
            Dialect::Peermesh(Encoding::MsgPack) => {
                let mut prefix = vec![0x84];
                mp_str(&mut prefix, b"type");
                mp_str(&mut prefix, ty.as_bytes());
                mp_str(&mut prefix, key.as_bytes());
                mp_str(&mut prefix, target.as_bytes());
                mp_str(&mut prefix, b"event");
                mp_str(&mut prefix, b"e");
                mp_str(&mut prefix, b"data");
                // The string header, then the payload itself is written by `queue`.
                let mut hdr = Vec::new();
                mp_str(&mut hdr, &vec![b'x'; payload_len]);
                prefix.extend_from_slice(&hdr[..hdr.len() - payload_len]);
                Template {
                    op: Opcode::Binary,
                    prefix,
                    suffix: pad,
                }
            }
            Dialect::SocketIo => {
                let prefix = format!("42[\"{ty}\",{},\"e\",\"", json_str(target));
                let mut suffix = pad;
                suffix.extend_from_slice(b"\"]");
                Template {
                    op: Opcode::Text,
                    prefix: prefix.into_bytes(),
                    suffix,
                }
            }
        }
    }

    /// Classifies one incoming data message.
    pub(crate) fn parse(self, op: Opcode, payload: &[u8]) -> Incoming {
        match self {
            Dialect::Peermesh(enc) => {
                let fast = match enc {
                    Encoding::Json => {
                        if find(payload, b"\"type\":\"message\"").is_some()
                            || find(payload, b"\"type\":\"result\"").is_some()
                        {
                            find(payload, b"\"data\":\"")
                                .and_then(|i| parse_stamp(&payload[i + 8..]))
                        } else if find(payload, b"\"type\":\"invoke\"").is_some() {
                            let stamp = find(payload, b"\"data\":\"")
                                .and_then(|i| parse_stamp(&payload[i + 8..]));
                            let id = find(payload, b"\"call\":")
                                .and_then(|i| parse_uint(&payload[i + 7..]));
                            if let (Some(stamp), Some(id)) = (stamp, id) {
                                return Incoming::Invoke { stamp, id };
                            }
                            None
                        } else {
                            None
                        }
                    }
                    Encoding::MsgPack => {
                        if find(payload, b"\xa4type\xa7message").is_some() {
                            find(payload, b"\xa4data").and_then(|i| {
                                let rest = &payload[i + 5..];
                                let skip = match rest.first()? {
                                    0xa0..=0xbf => 1,
                                    0xd9 => 2,
                                    0xda => 3,
                                    0xdb => 5,
                                    _ => return None,
                                };
                                parse_stamp(rest.get(skip..)?)
                            })
                        } else {
                            None
                        }
                    }
                };
                if let Some(t) = fast {
                    return Incoming::Message(t);
                }
                let wanted = match enc {
                    Encoding::Json => Opcode::Text,
                    Encoding::MsgPack => Opcode::Binary,
                };
                if op != wanted {
                    return Incoming::Error(format!("unexpected {op:?} frame"));
                }
                match decode_server(enc, payload) {
                    Ok((_, ServerFrame::Error(e))) => {
                        Incoming::Error(format!("{}: {}", e.code, e.message))
                    }
                    Ok((_, ServerFrame::Message(_))) => {
                        Incoming::Error("a message without a benchmark timestamp".into())
                    }
                    Ok((_, ServerFrame::CallResult { payload, .. })) => match stamp_of(&payload) {
                        Some(t) => Incoming::Message(t),
                        None => Incoming::Error("a result without a benchmark timestamp".into()),
                    },
                    Ok((_, ServerFrame::Invoke(i))) => match stamp_of(&i.payload) {
                        Some(stamp) => Incoming::Invoke { stamp, id: i.call },
                        None => Incoming::Error("a call without a benchmark timestamp".into()),
                    },
                    Ok(_) => Incoming::Other,
                    Err(e) => Incoming::Error(format!("undecodable frame: {e}")),
                }
            }
            Dialect::SocketIo => {
                if op != Opcode::Text {
                    return Incoming::Error("unexpected binary frame".into());
                }
                if let Some(rest) = payload.strip_prefix(b"42[\"message\",") {
                    return match sio_stamp(rest) {
                        Some(t) => Incoming::Message(t),
                        None => Incoming::Error("a message without a benchmark timestamp".into()),
                    };
                }
                // `43<id>["<stamp>…"]`: the answer to an emitWithAck.
                if let Some(rest) = payload.strip_prefix(b"43") {
                    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
                    if let Some(t) = rest[digits..].strip_prefix(b"[\"").and_then(parse_stamp) {
                        return Incoming::Message(t);
                    }
                }
                // `42<id>["invoke","from","echo","<stamp>…"]`: a call to answer with that id.
                if let Some(rest) = payload.strip_prefix(b"42") {
                    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
                    if digits > 0 {
                        if let Some(body) = rest[digits..].strip_prefix(b"[\"invoke\",") {
                            let id = parse_uint(rest);
                            if let (Some(stamp), Some(id)) = (sio_stamp(body), id) {
                                return Incoming::Invoke { stamp, id };
                            }
                        }
                    }
                }
                match payload {
                    b"2" => Incoming::EnginePing,
                    b"1" => Incoming::Error("engine.io close packet".into()),
                    b"41" => Incoming::Error("socket.io disconnect packet".into()),
                    p if p.starts_with(b"44") => Incoming::Error(format!(
                        "socket.io connect error: {}",
                        String::from_utf8_lossy(&p[2..p.len().min(200)])
                    )),
                    _ => Incoming::Other,
                }
            }
        }
    }

    /// Reacts to an [`Incoming::EnginePing`].
    pub(crate) fn pong(self, conn: &mut WsConn) {
        if self == Dialect::SocketIo {
            conn.queue(Opcode::Text, &[b"3"]);
        }
    }

    /// Identifies the connection as client `id` and waits for the server's acceptance.
    pub(crate) async fn handshake(
        self,
        conn: &mut WsConn,
        id: &str,
        timeout: Duration,
    ) -> Result<(), SetupError> {
        let deadline = Instant::now() + timeout;
        match self {
            Dialect::Peermesh(enc) => {
                let id = ClientId::new(id).map_err(|e| SetupError::Name(e.to_string()))?;
                let hello = ClientFrame::Hello(Hello {
                    id: Some(id.clone()),
                    version: PROTOCOL_VERSION.to_owned(),
                    ..Hello::default()
                });
                queue_client(conn, enc, &hello);
                conn.flush().await?;
                wait_for(conn, deadline, timeout, |conn, op, payload| {
                    peermesh_reply(conn, enc, op, payload, |frame| match frame {
                        ServerFrame::Welcome(w) if w.id == id => Some(Ok(())),
                        ServerFrame::Welcome(w) => Some(Err(SetupError::Unexpected(format!(
                            "welcome for {:?}, asked for {:?}",
                            w.id.as_str(),
                            id.as_str()
                        )))),
                        _ => None,
                    })
                })
                .await
            }
            Dialect::SocketIo => {
                let auth = format!("40{{\"id\":{}}}", json_str(id));
                let mut sent = false;
                wait_for(conn, deadline, timeout, |conn, op, payload| {
                    if op != Opcode::Text {
                        return Some(Err(SetupError::Unexpected("a binary frame".into())));
                    }
                    if payload.first() == Some(&b'0') && !sent {
                        conn.queue(Opcode::Text, &[auth.as_bytes()]);
                        sent = true;
                        None
                    } else if payload.starts_with(b"40") && sent {
                        Some(Ok(()))
                    } else if payload.starts_with(b"44") {
                        Some(Err(SetupError::Refused(
                            String::from_utf8_lossy(&payload[2..]).into_owned(),
                        )))
                    } else if payload == b"2" {
                        conn.queue(Opcode::Text, &[b"3"]);
                        None
                    } else {
                        None
                    }
                })
                .await
            }
        }
    }

    /// Joins `room` and waits for the confirmation.
    pub(crate) async fn join(
        self,
        conn: &mut WsConn,
        room: &str,
        req: u64,
        timeout: Duration,
    ) -> Result<(), SetupError> {
        let deadline = Instant::now() + timeout;
        match self {
            Dialect::Peermesh(enc) => {
                let room = RoomName::new(room).map_err(|e| SetupError::Name(e.to_string()))?;
                queue_client(
                    conn,
                    enc,
                    &ClientFrame::Join {
                        room,
                        req: Some(req),
                    },
                );
                conn.flush().await?;
                wait_for(conn, deadline, timeout, |conn, op, payload| {
                    peermesh_reply(conn, enc, op, payload, |frame| match frame {
                        ServerFrame::Ok { req: r } if r == req => Some(Ok(())),
                        _ => None,
                    })
                })
                .await
            }
            Dialect::SocketIo => {
                let frame = format!("42{req}[\"join\",{}]", json_str(room));
                conn.queue(Opcode::Text, &[frame.as_bytes()]);
                conn.flush().await?;
                let ack = format!("43{req}[");
                wait_for(conn, deadline, timeout, |conn, op, payload| {
                    if op != Opcode::Text {
                        return Some(Err(SetupError::Unexpected("a binary frame".into())));
                    }
                    if payload.starts_with(ack.as_bytes()) {
                        return if payload.starts_with(format!("{ack}\"ok\"").as_bytes()) {
                            Some(Ok(()))
                        } else {
                            Some(Err(SetupError::Refused(
                                String::from_utf8_lossy(payload).into_owned(),
                            )))
                        };
                    }
                    match Dialect::SocketIo.parse(op, payload) {
                        Incoming::EnginePing => {
                            conn.queue(Opcode::Text, &[b"3"]);
                            None
                        }
                        Incoming::Error(e) => Some(Err(SetupError::Refused(e))),
                        _ => None,
                    }
                })
                .await
            }
        }
    }
}

/// Parses the unsigned decimal number at the start of `b`.
fn parse_uint(b: &[u8]) -> Option<u64> {
    let n = b.iter().take_while(|d| d.is_ascii_digit()).count();
    if n == 0 {
        return None;
    }
    std::str::from_utf8(&b[..n]).ok()?.parse().ok()
}

fn itoa_u64(v: u64) -> Vec<u8> {
    v.to_string().into_bytes()
}

/// The timestamp at the start of a payload string.
fn stamp_of(p: &Payload) -> Option<u64> {
    p.as_json()
        .and_then(|v| v.as_str())
        .and_then(|s| parse_stamp(s.as_bytes()))
}

/// Skips `"from","event",` and parses the timestamp at the start of the data string.
fn sio_stamp(rest: &[u8]) -> Option<u64> {
    let rest = skip_json_string(rest)?;
    let rest = rest.strip_prefix(b",")?;
    let rest = skip_json_string(rest)?;
    let rest = rest.strip_prefix(b",\"")?;
    parse_stamp(rest)
}

/// Skips one JSON string at the start of `b`, returning what follows it.
fn skip_json_string(b: &[u8]) -> Option<&[u8]> {
    let mut i = 1;
    if b.first() != Some(&b'"') {
        return None;
    }
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return b.get(i + 1..),
            _ => i += 1,
        }
    }
    None
}

fn queue_client(conn: &mut WsConn, enc: Encoding, frame: &ClientFrame) {
    let bytes = encode_client(enc, frame);
    let op = match enc {
        Encoding::Json => Opcode::Text,
        Encoding::MsgPack => Opcode::Binary,
    };
    conn.queue(op, &[&bytes]);
}

/// Decodes a hub frame during setup: errors end the wait, `pick` decides on the rest.
fn peermesh_reply(
    _conn: &mut WsConn,
    enc: Encoding,
    _op: Opcode,
    payload: &[u8],
    pick: impl FnOnce(ServerFrame) -> Option<Result<(), SetupError>>,
) -> Option<Result<(), SetupError>> {
    match decode_server(enc, payload) {
        Ok((_, ServerFrame::Error(e))) => Some(Err(SetupError::Refused(format!(
            "{}: {}",
            e.code, e.message
        )))),
        Ok((_, frame)) => pick(frame),
        Err(e) => Some(Err(SetupError::Unexpected(format!(
            "undecodable frame: {e}"
        )))),
    }
}

/// Reads messages until `on_message` decides, answering pings on the way.
async fn wait_for(
    conn: &mut WsConn,
    deadline: Instant,
    timeout: Duration,
    mut on_message: impl FnMut(&mut WsConn, Opcode, &[u8]) -> Option<Result<(), SetupError>>,
) -> Result<(), SetupError> {
    let mut scratch = Vec::new();
    loop {
        while let Some((op, payload)) = conn.next_message()? {
            // The payload borrows the connection's buffer; copy it so the handler may queue.
            scratch.clear();
            scratch.extend_from_slice(payload);
            if let Some(result) = on_message(conn, op, &scratch) {
                conn.flush().await?;
                return result;
            }
        }
        conn.flush().await?;
        match tokio::time::timeout_at(deadline.into(), conn.read_some()).await {
            Ok(r) => {
                r?;
            }
            Err(_) => return Err(WsError::Timeout(timeout).into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_roundtrip() {
        for v in [0, 1, 42, 1_234_567_890_123, u64::MAX] {
            assert_eq!(parse_stamp(&stamp_digits(v)), Some(v));
        }
        assert_eq!(parse_stamp(b"12"), None);
        assert_eq!(parse_stamp(b"0000000000000000000x"), None);
        assert_eq!(parse_stamp(b"99999999999999999999"), None);
    }

    #[test]
    fn peermesh_json_delivery_is_recognised() {
        let d = Dialect::Peermesh(Encoding::Json);
        let body = format!(
            "{{\"seq\":7,\"type\":\"message\",\"from\":\"a1\",\"event\":\"e\",\"data\":\"{}xxxx\"}}",
            std::str::from_utf8(&stamp_digits(123_456)).expect("ascii")
        );
        assert_eq!(
            d.parse(Opcode::Text, body.as_bytes()),
            Incoming::Message(123_456)
        );
        let err = br#"{"seq":1,"type":"error","code":"rate_limited","message":"slow down"}"#;
        assert!(
            matches!(d.parse(Opcode::Text, err), Incoming::Error(e) if e.contains("rate_limited"))
        );
        let joined = br#"{"seq":2,"type":"member_joined","room":"r","id":"x"}"#;
        assert_eq!(d.parse(Opcode::Text, joined), Incoming::Other);
        assert!(matches!(
            d.parse(Opcode::Text, b"garbage"),
            Incoming::Error(_)
        ));
    }

    #[test]
    fn peermesh_msgpack_delivery_is_recognised() {
        use peermesh_proto::{EncodedBody, EventName, Message, Payload};
        let d = Dialect::Peermesh(Encoding::MsgPack);
        let data = format!(
            "{}{}",
            std::str::from_utf8(&stamp_digits(99)).expect("ascii"),
            "x".repeat(40)
        );
        let frame = ServerFrame::Message(Message {
            from: ClientId::new("a1").expect("valid id"),
            event: EventName::new("e").expect("valid event"),
            payload: Payload::Json(serde_json::Value::String(data)),
            room: Some(RoomName::new("r").expect("valid room")),
            ack_id: None,
        });
        let bytes = EncodedBody::encode(Encoding::MsgPack, &frame).to_frame(300);
        assert_eq!(d.parse(Opcode::Binary, &bytes), Incoming::Message(99));
    }

    #[test]
    fn templates_decode_with_the_real_codec() {
        for enc in [Encoding::Json, Encoding::MsgPack] {
            let d = Dialect::Peermesh(enc);
            for t in [d.direct_template("b7", 64), d.room_template("bench", 64)] {
                let payload = [&t.prefix[..], &stamp_digits(5), &t.suffix[..]].concat();
                assert_eq!(payload.len(), t.payload_len());
                let frame = peermesh_proto::decode_client(enc, &payload).expect("decodes");
                let data = match frame {
                    ClientFrame::Emit(e) => e.payload,
                    ClientFrame::EmitRoom(e) => e.payload,
                    other => panic!("unexpected {other:?}"),
                };
                let s = data.as_json().and_then(|v| v.as_str()).expect("a string");
                assert_eq!(s.len(), 64);
                assert_eq!(parse_stamp(s.as_bytes()), Some(5));
            }
        }
    }

    #[test]
    fn rpc_frames_are_recognised_and_answered() {
        let d = Dialect::Peermesh(Encoding::Json);
        let inv = br#"{"seq":3,"type":"invoke","call":8589934593,"from":"a","service":"s","method":"echo","data":"00000000000000000042xx"}"#;
        assert_eq!(
            d.parse(Opcode::Text, inv),
            Incoming::Invoke {
                stamp: 42,
                id: 8589934593
            }
        );
        let res = br#"{"seq":4,"type":"result","req":1,"data":"00000000000000000043xx"}"#;
        assert_eq!(d.parse(Opcode::Text, res), Incoming::Message(43));
        let sio = Dialect::SocketIo;
        assert_eq!(
            sio.parse(
                Opcode::Text,
                br#"4217["invoke","a","echo","00000000000000000044x"]"#
            ),
            Incoming::Invoke { stamp: 44, id: 17 }
        );
        assert_eq!(
            sio.parse(Opcode::Text, br#"431["00000000000000000045x"]"#),
            Incoming::Message(45)
        );
        // The call template decodes with the real codec, in both encodings.
        for enc in [Encoding::Json, Encoding::MsgPack] {
            let t = Dialect::Peermesh(enc).call_template("svc", 32);
            let mut frame = t.prefix.clone();
            frame.extend_from_slice(&stamp_digits(7));
            frame.extend_from_slice(&t.suffix);
            match peermesh_proto::decode_client(enc, &frame) {
                Ok(ClientFrame::Call(c)) => {
                    assert_eq!((c.service.as_str(), c.method.as_str()), ("svc", "echo"));
                    assert_eq!(stamp_of(&c.payload), Some(7));
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn numbered_payloads_roundtrip() {
        for enc in [Encoding::Json, Encoding::MsgPack] {
            let t = Dialect::Peermesh(enc).direct_template("c1", 32);
            let payload = [
                &t.prefix[..],
                &stamp_digits(123),
                &stamp_digits(45)[STAMP_DIGITS - NUMBER_DIGITS..],
                &t.suffix[NUMBER_DIGITS..],
            ]
            .concat();
            let frame = peermesh_proto::decode_client(enc, &payload).expect("decodes");
            let ClientFrame::Emit(e) = frame else {
                panic!("not an emit: {frame:?}");
            };
            let s = e
                .payload
                .as_json()
                .and_then(|v| v.as_str())
                .expect("a string");
            assert_eq!(s.len(), 32);
            assert_eq!(parse_numbered(s.as_bytes()), Some((123, 45)));
        }
        assert_eq!(parse_numbered(&stamp_digits(1)), None);
        assert_eq!(parse_numbered(b"000000000000000000010000000x07"), None);
    }

    #[test]
    fn socketio_frames() {
        let d = Dialect::SocketIo;
        let t = d.direct_template("b\"7", 32);
        let payload = [&t.prefix[..], &stamp_digits(77), &t.suffix[..]].concat();
        let v: serde_json::Value =
            serde_json::from_slice(&payload[2..]).expect("socket.io event is JSON after 42");
        assert_eq!(v[0], "emit");
        assert_eq!(v[1], "b\"7");
        let delivery = format!(
            "42[\"message\",\"a\\\"1\",\"e\",\"{}xx\",\"room\"]",
            std::str::from_utf8(&stamp_digits(77)).expect("ascii")
        );
        assert_eq!(
            d.parse(Opcode::Text, delivery.as_bytes()),
            Incoming::Message(77)
        );
        assert_eq!(d.parse(Opcode::Text, b"2"), Incoming::EnginePing);
        assert!(matches!(d.parse(Opcode::Text, b"41"), Incoming::Error(_)));
        assert!(matches!(
            d.parse(Opcode::Text, b"42[\"message\",\"a\""),
            Incoming::Error(_)
        ));
    }
}
