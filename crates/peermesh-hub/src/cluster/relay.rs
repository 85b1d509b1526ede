//! The envelope of hub-to-hub messages on NATS (sans-IO).
//!
//! ```text
//!   kind u8 │ fields                                        │ frame
//!   1 direct    origin: str, to: str                          MessagePack server frame
//!   2 ack reply ack_id: u64, from: str                        `ack` frame (req = ack_id)
//!   3 ack fail  ack_id: u64, to: str                          —
//!   4 room      origin: str, room: str                        MessagePack server frame
//!   5 call      origin: str, timeout_ms: u64                  `invoke` frame (call = caller's id)
//!   6 call done —                                             `result` or `error` (req = call id)
//!   7 topic     origin: str                                   `publication` or `topic_ended`
//! ```
//!
//! A `str` is a big-endian `u16` length and UTF-8 bytes; a frame is the rest of the message,
//! written by the hub's own MessagePack codec (with `seq` 0), so every frame kind and payload
//! crosses hubs exactly as it crosses a socket. Everything is checked on decode: a message
//! from a broken or hostile publisher is an error, never a panic.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use peermesh_proto::{ClientId, Encoding, Payload, RoomName, ServerFrame};

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
    /// A frame for the members of `room` on every other hub.
    Room {
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
    /// A `publication` to a topic of a provider of hub `origin`, or its `topic_ended`.
    Topic { origin: String, frame: ServerFrame },
}

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

impl Relay {
    /// The message's bytes.
    pub(crate) fn encode(&self) -> Bytes {
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
                origin,
                room,
                frame,
            } => {
                out.put_u8(4);
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
            Relay::Topic { origin, frame } => {
                out.put_u8(7);
                put_str(&mut out, origin);
                put_frame(&mut out, frame);
            }
        }
        out.freeze()
    }

    /// Reads a message.
    pub(crate) fn decode(mut b: &[u8]) -> Result<Relay, RelayError> {
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
                let origin = get_str(&mut b, "origin")?;
                let room = get_str(&mut b, "room")?;
                let room = RoomName::new(&room).map_err(|e| err(format!("room: {e}")))?;
                let frame = get_frame(b)?;
                Ok(Relay::Room {
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
                let origin = get_str(&mut b, "origin")?;
                match get_frame(b)? {
                    frame @ (ServerFrame::Publication(_) | ServerFrame::TopicEnded { .. }) => {
                        Ok(Relay::Topic { origin, frame })
                    }
                    _ => Err(err("a topic message must be a publication or topic_ended")),
                }
            }
            k => Err(err(format!("unknown kind {k}"))),
        }
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
        for r in all {
            assert_eq!(Relay::decode(&r.encode()), Ok(r));
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
            assert!(Relay::decode(&good[..cut]).is_err(), "cut at {cut}");
        }
        assert!(Relay::decode(&[9]).is_err());
        let mut extra = Relay::AckFailed {
            ack_id: 1,
            to: id("x"),
        }
        .encode()
        .to_vec();
        extra.push(0);
        assert!(Relay::decode(&extra).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = Relay::decode(&bytes);
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
