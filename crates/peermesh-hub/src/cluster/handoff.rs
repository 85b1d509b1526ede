//! Moving a resumable session from one hub to another (sans-IO codec).
//!
//! A client that resumes on hub B while its session lives on hub A: B asks A (request on
//! `peermesh.migrate.<A>`) with the client's id, secret, last `seq` and encoding; A checks them,
//! hands the id to B in the registry (a compare-and-set from A to B, never free in between)
//! and answers with what B needs to carry on without loss or duplicates: the frames the client
//! has not confirmed (exactly as A numbered them), the last `seq` A used, the count of client
//! frames A handled, the secret and the rooms.
//!
//! ```text
//!   request  JSON {"id", "secret", "last_seq", "enc", "to"}
//!   answer   0, refusal: str                                  (a `resume_rejected` reason)
//!            1, last_written u64, in_count u64, secret: str, rooms: u16 × str,
//!               frames: u32 × (kind u8: 0 text / 1 binary, len u32, bytes),
//!               sessions: u16 × str (the hub sessions it is a member of),
//!               cut: u16 × (origin: str, seq: u64) (the last room emit of each hub that A
//!               handled when it closed the client's queue: see `fanlog`),
//!               topics: u16 × (service: str, topic: str) (its subscriptions),
//!               topic cut: u16 × (origin: str, seq: u64) (the same for the topic messages,
//!               numbered apart from the room emits)
//! ```

use crate::ws::Message;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use peermesh_proto::{
    ClientId, Encoding, ResumeRefusal, RoomName, ServiceName, SessionName, TopicName,
};
use serde::{Deserialize, Serialize};

use super::relay::{err, get_str, get_u64, put_str, RelayError};

/// Most bytes of frames a handoff carries (NATS refuses messages over 1 MiB by default);
/// a session with more unconfirmed frames is refused with `overflow`.
pub(crate) const MAX_HANDOFF_BYTES: usize = 900 << 10;

/// B's request to A.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MigrateRequest {
    pub(crate) id: String,
    pub(crate) secret: String,
    pub(crate) last_seq: u64,
    pub(crate) enc: String,
    /// The node the session moves to.
    pub(crate) to: String,
}

impl MigrateRequest {
    pub(crate) fn encoding(&self) -> Option<Encoding> {
        Encoding::from_param(&self.enc)
    }
}

/// What a session needs to carry on on another hub.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Handoff {
    /// The `seq` of the last frame numbered for the client.
    pub(crate) last_written: u64,
    /// Counted client frames handled.
    pub(crate) in_count: u64,
    pub(crate) secret: String,
    pub(crate) rooms: Vec<RoomName>,
    /// The frames after the client's `last_seq`, oldest first (`last_seq + 1 ..= last_written`).
    pub(crate) frames: Vec<Message>,
    /// The hub sessions (shared state) it is a member of.
    pub(crate) sessions: Vec<SessionName>,
    /// A's cut of the room emits: what reached the client there.
    pub(crate) cut: super::fanlog::Cut,
    /// B's own picture of the room emits when it asked (not sent: B fills it in).
    pub(crate) mark: super::fanlog::Cut,
    /// The topics it subscribed to (on any hub's providers).
    pub(crate) topics: Vec<(ServiceName, TopicName)>,
    /// A's cut of the topic messages (`publication`, `topic_ended`): what reached the client
    /// there.
    pub(crate) topic_cut: super::fanlog::Cut,
    /// B's own picture of the topic messages when it asked (not sent: B fills it in).
    pub(crate) topic_mark: super::fanlog::Cut,
}

/// Encodes A's answer.
pub(crate) fn encode_answer(answer: &Result<Handoff, ResumeRefusal>) -> Bytes {
    let mut out = BytesMut::new();
    match answer {
        Err(r) => {
            out.put_u8(0);
            put_str(&mut out, r.as_str());
        }
        Ok(h) => {
            out.put_u8(1);
            out.put_u64(h.last_written);
            out.put_u64(h.in_count);
            put_str(&mut out, &h.secret);
            out.put_u16(u16::try_from(h.rooms.len()).unwrap_or(u16::MAX));
            for r in h.rooms.iter().take(usize::from(u16::MAX)) {
                put_str(&mut out, r.as_str());
            }
            out.put_u32(u32::try_from(h.frames.len()).unwrap_or(u32::MAX));
            for m in &h.frames {
                let (kind, bytes): (u8, &[u8]) = match m {
                    Message::Text(t) => (0, t),
                    Message::Binary(b) => (1, b),
                    _ => (1, &[]),
                };
                out.put_u8(kind);
                out.put_u32(u32::try_from(bytes.len()).unwrap_or(u32::MAX));
                out.put_slice(bytes);
            }
            out.put_u16(u16::try_from(h.sessions.len()).unwrap_or(u16::MAX));
            for s in h.sessions.iter().take(usize::from(u16::MAX)) {
                put_str(&mut out, s.as_str());
            }
            put_cut(&mut out, &h.cut);
            out.put_u16(u16::try_from(h.topics.len()).unwrap_or(u16::MAX));
            for (service, topic) in h.topics.iter().take(usize::from(u16::MAX)) {
                put_str(&mut out, service.as_str());
                put_str(&mut out, topic.as_str());
            }
            put_cut(&mut out, &h.topic_cut);
        }
    }
    out.freeze()
}

fn put_cut(out: &mut BytesMut, cut: &super::fanlog::Cut) {
    out.put_u16(u16::try_from(cut.len()).unwrap_or(u16::MAX));
    for (origin, seq) in cut.iter().take(usize::from(u16::MAX)) {
        put_str(out, origin);
        out.put_u64(*seq);
    }
}

fn get_cut(b: &mut &[u8], truncated: &str) -> Result<super::fanlog::Cut, RelayError> {
    if b.remaining() < 2 {
        return Err(err(truncated));
    }
    let n = b.get_u16();
    let mut cut = Vec::with_capacity(usize::from(n).min(1024));
    for _ in 0..n {
        let origin = get_str(b, "origin")?;
        cut.push((origin, get_u64(b)?));
    }
    Ok(cut)
}

/// Reads A's answer.
pub(crate) fn decode_answer(mut b: &[u8]) -> Result<Result<Handoff, ResumeRefusal>, RelayError> {
    if !b.has_remaining() {
        return Err(err("empty handoff"));
    }
    match b.get_u8() {
        0 => Ok(Err(ResumeRefusal::parse(&get_str(&mut b, "refusal")?))),
        1 => {
            let last_written = get_u64(&mut b)?;
            let in_count = get_u64(&mut b)?;
            let secret = get_str(&mut b, "secret")?;
            if b.remaining() < 2 {
                return Err(err("truncated rooms"));
            }
            let n = b.get_u16();
            let mut rooms = Vec::with_capacity(usize::from(n).min(1024));
            for _ in 0..n {
                let r = get_str(&mut b, "room")?;
                rooms.push(RoomName::new(&r).map_err(|e| err(format!("room: {e}")))?);
            }
            if b.remaining() < 4 {
                return Err(err("truncated frames"));
            }
            let n = b.get_u32();
            let mut frames = Vec::with_capacity((n as usize).min(4096));
            for _ in 0..n {
                if b.remaining() < 5 {
                    return Err(err("truncated frame"));
                }
                let kind = b.get_u8();
                let len = b.get_u32() as usize;
                if b.remaining() < len {
                    return Err(err("truncated frame"));
                }
                let bytes = Bytes::copy_from_slice(&b[..len]);
                b.advance(len);
                frames.push(match kind {
                    0 => {
                        std::str::from_utf8(&bytes)
                            .map_err(|_| err("a text frame that is not UTF-8"))?;
                        Message::Text(bytes)
                    }
                    1 => Message::Binary(bytes),
                    k => return Err(err(format!("unknown frame kind {k}"))),
                });
            }
            if b.remaining() < 2 {
                return Err(err("truncated sessions"));
            }
            let n = b.get_u16();
            let mut sessions = Vec::with_capacity(usize::from(n).min(1024));
            for _ in 0..n {
                let s = get_str(&mut b, "session")?;
                sessions.push(SessionName::new(&s).map_err(|e| err(format!("session: {e}")))?);
            }
            let cut = get_cut(&mut b, "truncated cut")?;
            if b.remaining() < 2 {
                return Err(err("truncated topics"));
            }
            let n = b.get_u16();
            let mut topics = Vec::with_capacity(usize::from(n).min(1024));
            for _ in 0..n {
                let service = get_str(&mut b, "service")?;
                let service =
                    ServiceName::new(&service).map_err(|e| err(format!("service: {e}")))?;
                let topic = get_str(&mut b, "topic")?;
                let topic = TopicName::new(&topic).map_err(|e| err(format!("topic: {e}")))?;
                topics.push((service, topic));
            }
            let topic_cut = get_cut(&mut b, "truncated topic cut")?;
            if b.has_remaining() {
                return Err(err("bytes after the topic cut"));
            }
            if frames.len() as u64 > last_written {
                return Err(err("more frames than were ever written"));
            }
            Ok(Ok(Handoff {
                last_written,
                in_count,
                secret,
                rooms,
                frames,
                sessions,
                cut,
                mark: Vec::new(),
                topics,
                topic_cut,
                topic_mark: Vec::new(),
            }))
        }
        k => Err(err(format!("unknown answer kind {k}"))),
    }
}

/// The request's client id, checked.
pub(crate) fn request_id(req: &MigrateRequest) -> Option<ClientId> {
    ClientId::new(&req.id).ok()
}

/// A request to hand a session over, for the session's own task on hub A.
pub(crate) struct Migration {
    /// The client's last `seq`.
    pub(crate) last_seq: u64,
    /// The node the session moves to.
    pub(crate) to: String,
    /// Where the answer goes.
    pub(crate) reply: tokio::sync::oneshot::Sender<Result<Handoff, ResumeRefusal>>,
}

impl std::fmt::Debug for Migration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Migration")
            .field("last_seq", &self.last_seq)
            .field("to", &self.to)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn answers_round_trip_and_damage_is_an_error() {
        let h = Handoff {
            last_written: 42,
            in_count: 7,
            secret: "s3cr3t".into(),
            rooms: vec![RoomName::new("lobby ü").expect("room")],
            frames: vec![
                Message::Text("{\"seq\":41}".into()),
                Message::Binary(Bytes::from_static(&[0x81, 1, 2])),
            ],
            sessions: vec![SessionName::new("game-7").expect("session")],
            cut: vec![("hub-a".into(), 1 << 60), ("hub-c".into(), 0)],
            mark: Vec::new(),
            topics: vec![(
                ServiceName::new("sport").expect("service"),
                TopicName::new("scores").expect("topic"),
            )],
            topic_cut: vec![("hub-b".into(), 9), ("hub-a".into(), u64::MAX)],
            topic_mark: Vec::new(),
        };
        let ok = encode_answer(&Ok(h.clone()));
        assert_eq!(decode_answer(&ok), Ok(Ok(h)));
        for cut in 0..ok.len() {
            assert!(decode_answer(&ok[..cut]).is_err(), "cut at {cut}");
        }
        let refused = encode_answer(&Err(ResumeRefusal::BadSecret));
        assert_eq!(decode_answer(&refused), Ok(Err(ResumeRefusal::BadSecret)));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_answer(&bytes);
        }
    }
}
