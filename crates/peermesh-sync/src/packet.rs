//! The datagrams between host and clients.
//!
//! Every datagram starts with a magic byte, a version and a kind. State larger than one
//! datagram is split into fragments of at most [`MTU`] bytes; a client acknowledges the
//! newest tick it holds whole, and, while it receives a full snapshot, which fragments of it
//! it has, so the host resends only the missing ones.

use bytes::Bytes;

use crate::bits::{BitReader, BitWriter, WireError};
use crate::schema::{ActionId, Encoding, Schema};
use crate::snapshot::PeerId;
use crate::world::Action;

/// First byte of every datagram.
pub const MAGIC: u8 = 0x5e;
/// Wire version.
pub const VERSION: u8 = 1;
/// Largest datagram sent.
pub const MTU: usize = 1200;
/// Room for a fragment's payload after the state header.
pub const FRAGMENT_PAYLOAD: usize = MTU - 64;
/// Most fragments of one state (about 1.1 MB).
pub const MAX_FRAGMENTS: usize = 1024;
/// Most actions of one peer in one tick.
pub const MAX_ACTIONS_PER_TICK: usize = 16;
/// Largest action payload.
pub const MAX_ACTION_BYTES: usize = 256;
/// Most ticks of input in one datagram.
pub const MAX_INPUT_TICKS: usize = 32;
/// Longest reason text.
pub const MAX_REASON: usize = 200;

const HELLO: u8 = 1;
const INPUT: u8 = 2;
const BYE: u8 = 3;
const WELCOME: u8 = 16;
const STATE: u8 = 17;
const REFUSE: u8 = 18;
const KICK: u8 = 19;

/// Why the host refuses a client, with a stable code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefuseCode {
    /// The peers registered different types.
    SchemaMismatch,
    /// The tick rates differ.
    TickRate,
    /// The host has its most clients.
    Full,
    /// The datagram belongs to no session here (send a hello).
    UnknownSession,
}

impl RefuseCode {
    /// The stable code.
    pub fn as_str(&self) -> &'static str {
        match self {
            RefuseCode::SchemaMismatch => "schema_mismatch",
            RefuseCode::TickRate => "tick_rate_mismatch",
            RefuseCode::Full => "session_full",
            RefuseCode::UnknownSession => "unknown_session",
        }
    }

    fn wire(&self) -> u64 {
        match self {
            RefuseCode::SchemaMismatch => 0,
            RefuseCode::TickRate => 1,
            RefuseCode::Full => 2,
            RefuseCode::UnknownSession => 3,
        }
    }

    fn from_wire(v: u64) -> Result<Self, WireError> {
        Ok(match v {
            0 => RefuseCode::SchemaMismatch,
            1 => RefuseCode::TickRate,
            2 => RefuseCode::Full,
            3 => RefuseCode::UnknownSession,
            _ => return Err(WireError::bad("refuse code", "unknown")),
        })
    }
}

/// Which fragments of a full snapshot a client holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferAck {
    /// The snapshot's tick.
    pub tick: u64,
    /// One bit per fragment, fragment 0 in the lowest bit of the first word.
    pub have: Vec<u64>,
}

/// A datagram from a client to the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToHost {
    /// Join (token 0) or resume a session.
    Hello {
        /// The client's schema hash.
        schema: u64,
        /// The client's tick rate.
        tick_rate: u32,
        /// The session token to resume, 0 for a new session.
        token: u64,
        /// Echoed in the welcome, for the round-trip time.
        ping: u16,
    },
    /// Inputs and acknowledgements, once a tick.
    Input {
        /// Echoed in the next state, for the round-trip time.
        ping: u16,
        /// The client's round-trip estimate, in milliseconds.
        rtt_ms: u16,
        /// The newest tick the client holds whole.
        ack: Option<u64>,
        /// The client cannot decode against its baseline: send a full snapshot.
        need_full: bool,
        /// Progress of a full snapshot being received.
        transfer: Option<TransferAck>,
        /// The tick of the first input.
        first_tick: u64,
        /// Actions of consecutive ticks from `first_tick`.
        inputs: Vec<Vec<Action>>,
    },
    /// Leave now, without a grace window.
    Bye,
}

/// A datagram from the host to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToClient {
    /// The session is open (or resumed).
    Welcome {
        /// The client's peer id.
        peer: PeerId,
        /// The token to resume with.
        token: u64,
        /// The host's current tick.
        tick: u64,
        /// Whether an earlier session was resumed.
        resumed: bool,
        /// The hello's ping.
        pong: u16,
    },
    /// A fragment of the state of one tick.
    State {
        /// The newest ping received and how long it waited here, in microseconds.
        pong: Option<(u16, u32)>,
        /// The newest input tick received from this client.
        input_ack: Option<u64>,
        /// How many ticks early this client's newest input arrived, in 1/16 ticks.
        depth_16: i32,
        /// The host's current tick when it sent this (later than `tick` for a resent
        /// fragment of a full snapshot): the client's clock follows it.
        host_tick: u64,
        /// The tick of the state.
        tick: u64,
        /// The tick it is a delta against (none: a full snapshot).
        baseline: Option<u64>,
        /// This fragment's index.
        index: u16,
        /// How many fragments the state has.
        count: u16,
        /// The fragment.
        payload: Bytes,
    },
    /// The host refuses this client.
    Refuse {
        /// Why.
        code: RefuseCode,
        /// A sentence for a person.
        reason: String,
    },
    /// The host removed this client.
    Kick {
        /// Why.
        reason: String,
    },
}

fn header(kind: u8) -> BitWriter {
    let mut w = BitWriter::new();
    w.bits(u64::from(MAGIC), 8);
    w.bits(u64::from(VERSION), 8);
    w.bits(u64::from(kind), 8);
    w
}

fn read_header(data: &[u8]) -> Result<(u8, BitReader<'_>), WireError> {
    let mut r = BitReader::new(data);
    if r.bits(8)? != u64::from(MAGIC) {
        return Err(WireError::bad("magic", "not a peermesh-sync datagram"));
    }
    if r.bits(8)? != u64::from(VERSION) {
        return Err(WireError::bad(
            "version",
            "another wire version; update both sides",
        ));
    }
    Ok((r.bits(8)? as u8, r))
}

fn write_text(w: &mut BitWriter, s: &str) {
    let mut end = s.len().min(MAX_REASON);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    w.uvar(end as u64);
    w.bytes(&s.as_bytes()[..end]);
}

fn read_text(r: &mut BitReader<'_>) -> Result<String, WireError> {
    let n = r.uvar_max(MAX_REASON as u64, "reason length")? as usize;
    let b = r.bytes(n)?;
    String::from_utf8(b.to_vec()).map_err(|_| WireError::bad("reason", "not UTF-8 text"))
}

fn opt(w: &mut BitWriter, v: Option<u64>) {
    match v {
        None => w.bit(false),
        Some(v) => {
            w.bit(true);
            w.uvar(v);
        }
    }
}

fn read_opt(r: &mut BitReader<'_>) -> Result<Option<u64>, WireError> {
    Ok(if r.bit()? { Some(r.uvar()?) } else { None })
}

/// Checks an action against the schema (type registered, payload size as registered).
pub fn check_action(schema: &Schema, a: &Action) -> Result<(), WireError> {
    match schema.action_encoding(a.id) {
        None => Err(WireError::bad(
            "action",
            "type not registered in the schema",
        )),
        Some(Encoding::Fixed(n)) if usize::from(n) != a.payload.len() => Err(WireError::bad(
            "action",
            "payload size differs from its registration",
        )),
        Some(_) if a.payload.len() > MAX_ACTION_BYTES => {
            Err(WireError::bad("action", "payload larger than 256 bytes"))
        }
        Some(Encoding::Lanes { .. }) => Err(WireError::bad("action", "actions are bytes")),
        Some(_) => Ok(()),
    }
}

impl ToHost {
    /// Encodes the datagram.
    pub fn encode(&self, schema: &Schema) -> Result<Vec<u8>, WireError> {
        let w = match self {
            ToHost::Hello {
                schema: hash,
                tick_rate,
                token,
                ping,
            } => {
                let mut w = header(HELLO);
                w.bits(*hash, 64);
                w.uvar(u64::from(*tick_rate));
                w.bits(*token, 64);
                w.bits(u64::from(*ping), 16);
                w
            }
            ToHost::Input {
                ping,
                rtt_ms,
                ack,
                need_full,
                transfer,
                first_tick,
                inputs,
            } => {
                let mut w = header(INPUT);
                w.bits(u64::from(*ping), 16);
                w.uvar(u64::from(*rtt_ms));
                opt(&mut w, *ack);
                w.bit(*need_full);
                match transfer {
                    None => w.bit(false),
                    Some(t) => {
                        w.bit(true);
                        w.uvar(t.tick);
                        w.uvar(t.have.len() as u64);
                        for word in &t.have {
                            w.bits(*word, 64);
                        }
                    }
                }
                w.uvar(*first_tick);
                if inputs.len() > MAX_INPUT_TICKS {
                    return Err(WireError::bad(
                        "inputs",
                        "more than 32 ticks in one datagram",
                    ));
                }
                w.uvar(inputs.len() as u64);
                for tick in inputs {
                    if tick.len() > MAX_ACTIONS_PER_TICK {
                        return Err(WireError::bad("inputs", "more than 16 actions in one tick"));
                    }
                    w.uvar(tick.len() as u64);
                    for a in tick {
                        check_action(schema, a)?;
                        w.uvar(u64::from(a.id.0));
                        if schema.action_encoding(a.id) == Some(Encoding::Var) {
                            w.uvar(a.payload.len() as u64);
                        }
                        for b in &a.payload {
                            w.bits(u64::from(*b), 8);
                        }
                    }
                }
                w
            }
            ToHost::Bye => header(BYE),
        };
        Ok(w.finish())
    }

    /// Decodes a datagram; actions are checked against `schema`.
    pub fn decode(schema: &Schema, data: &[u8]) -> Result<ToHost, WireError> {
        let (kind, mut r) = read_header(data)?;
        Ok(match kind {
            HELLO => ToHost::Hello {
                schema: r.bits(64)?,
                tick_rate: r.uvar_max(u64::from(u32::MAX), "tick rate")? as u32,
                token: r.bits(64)?,
                ping: r.bits(16)? as u16,
            },
            INPUT => {
                let ping = r.bits(16)? as u16;
                let rtt_ms = r.uvar_max(u64::from(u16::MAX), "rtt")? as u16;
                let ack = read_opt(&mut r)?;
                let need_full = r.bit()?;
                let transfer = if r.bit()? {
                    let tick = r.uvar()?;
                    let n = r.uvar_max((MAX_FRAGMENTS / 64) as u64, "transfer words")?;
                    let mut have = Vec::with_capacity(n as usize);
                    for _ in 0..n {
                        have.push(r.bits(64)?);
                    }
                    Some(TransferAck { tick, have })
                } else {
                    None
                };
                let first_tick = r.uvar()?;
                let n = r.uvar_max(MAX_INPUT_TICKS as u64, "input ticks")?;
                let mut inputs = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    let k = r.uvar_max(MAX_ACTIONS_PER_TICK as u64, "actions")?;
                    let mut tick = Vec::with_capacity(k as usize);
                    for _ in 0..k {
                        let id = r.uvar_max(u64::from(u16::MAX), "action")?;
                        let id = ActionId(id as u16);
                        let len = match schema.action_encoding(id) {
                            Some(Encoding::Fixed(n)) => usize::from(n),
                            Some(Encoding::Var) => {
                                r.uvar_max(MAX_ACTION_BYTES as u64, "action length")? as usize
                            }
                            _ => {
                                return Err(WireError::bad(
                                    "action",
                                    "type not registered in the schema",
                                ))
                            }
                        };
                        if len > MAX_ACTION_BYTES {
                            return Err(WireError::bad("action", "payload larger than 256 bytes"));
                        }
                        let mut payload = Vec::with_capacity(len);
                        for _ in 0..len {
                            payload.push(r.bits(8)? as u8);
                        }
                        tick.push(Action { id, payload });
                    }
                    inputs.push(tick);
                }
                ToHost::Input {
                    ping,
                    rtt_ms,
                    ack,
                    need_full,
                    transfer,
                    first_tick,
                    inputs,
                }
            }
            BYE => ToHost::Bye,
            _ => return Err(WireError::bad("kind", "not a client datagram")),
        })
    }
}

impl ToClient {
    /// Encodes the datagram.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            ToClient::Welcome {
                peer,
                token,
                tick,
                resumed,
                pong,
            } => {
                let mut w = header(WELCOME);
                w.uvar(u64::from(peer.0));
                w.bits(*token, 64);
                w.uvar(*tick);
                w.bit(*resumed);
                w.bits(u64::from(*pong), 16);
                w.finish()
            }
            ToClient::State {
                pong,
                input_ack,
                depth_16,
                host_tick,
                tick,
                baseline,
                index,
                count,
                payload,
            } => {
                let mut w = header(STATE);
                match pong {
                    None => w.bit(false),
                    Some((p, hold)) => {
                        w.bit(true);
                        w.bits(u64::from(*p), 16);
                        w.uvar(u64::from(*hold));
                    }
                }
                opt(&mut w, *input_ack);
                w.svar(i64::from(*depth_16));
                w.uvar(*tick);
                w.uvar(host_tick.saturating_sub(*tick));
                // The baseline as a distance back from the tick.
                opt(&mut w, baseline.map(|b| tick.saturating_sub(b)));
                w.uvar(u64::from(*index));
                w.uvar(u64::from(*count));
                w.bytes(payload);
                w.finish()
            }
            ToClient::Refuse { code, reason } => {
                let mut w = header(REFUSE);
                w.uvar(code.wire());
                write_text(&mut w, reason);
                w.finish()
            }
            ToClient::Kick { reason } => {
                let mut w = header(KICK);
                write_text(&mut w, reason);
                w.finish()
            }
        }
    }

    /// Decodes a datagram.
    pub fn decode(data: &[u8]) -> Result<ToClient, WireError> {
        let (kind, mut r) = read_header(data)?;
        Ok(match kind {
            WELCOME => ToClient::Welcome {
                peer: PeerId(r.uvar_max(u64::from(u32::MAX), "peer")? as u32),
                token: r.bits(64)?,
                tick: r.uvar()?,
                resumed: r.bit()?,
                pong: r.bits(16)? as u16,
            },
            STATE => {
                let pong = if r.bit()? {
                    let p = r.bits(16)? as u16;
                    Some((p, r.uvar_max(u64::from(u32::MAX), "hold")? as u32))
                } else {
                    None
                };
                let input_ack = read_opt(&mut r)?;
                let depth = r.svar()?;
                let depth_16 =
                    i32::try_from(depth).map_err(|_| WireError::bad("depth", "out of range"))?;
                let tick = r.uvar()?;
                let host_tick = tick
                    .checked_add(r.uvar()?)
                    .ok_or_else(|| WireError::bad("host tick", "out of range"))?;
                let back = read_opt(&mut r)?;
                let baseline = match back {
                    Some(b) if b > tick || b == 0 => {
                        return Err(WireError::bad("baseline", "not before the tick"))
                    }
                    Some(b) => Some(tick - b),
                    None => None,
                };
                let index = r.uvar_max(MAX_FRAGMENTS as u64 - 1, "fragment index")? as u16;
                let count = r.uvar_max(MAX_FRAGMENTS as u64, "fragment count")? as u16;
                if index >= count {
                    return Err(WireError::bad("fragment index", "not below the count"));
                }
                let payload = Bytes::copy_from_slice(r.rest());
                ToClient::State {
                    pong,
                    input_ack,
                    depth_16,
                    host_tick,
                    tick,
                    baseline,
                    index,
                    count,
                    payload,
                }
            }
            REFUSE => ToClient::Refuse {
                code: RefuseCode::from_wire(r.uvar()?)?,
                reason: read_text(&mut r)?,
            },
            KICK => ToClient::Kick {
                reason: read_text(&mut r)?,
            },
            _ => return Err(WireError::bad("kind", "not a host datagram")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn schema() -> Schema {
        let mut s = Schema::new();
        s.action("move", Encoding::Fixed(6)).expect("move");
        s.action("say", Encoding::Var).expect("say");
        s.freeze();
        s
    }

    #[test]
    fn every_datagram_round_trips() {
        let sc = schema();
        let to_host = [
            ToHost::Hello {
                schema: 0xdead_beef,
                tick_rate: 60,
                token: 42,
                ping: 7,
            },
            ToHost::Input {
                ping: 9,
                rtt_ms: 100,
                ack: Some(1234),
                need_full: false,
                transfer: Some(TransferAck {
                    tick: 1200,
                    have: vec![u64::MAX, 5],
                }),
                first_tick: 1300,
                inputs: vec![
                    vec![Action {
                        id: ActionId(0),
                        payload: vec![1, 2, 3, 4, 5, 6],
                    }],
                    vec![],
                    vec![Action {
                        id: ActionId(1),
                        payload: b"hello".to_vec(),
                    }],
                ],
            },
            ToHost::Bye,
        ];
        for m in to_host {
            let bytes = m.encode(&sc).expect("encode");
            assert!(bytes.len() <= MTU);
            assert_eq!(ToHost::decode(&sc, &bytes), Ok(m));
        }
        let to_client = [
            ToClient::Welcome {
                peer: PeerId(3),
                token: u64::MAX,
                tick: 99,
                resumed: true,
                pong: 1,
            },
            ToClient::State {
                pong: Some((3, 250)),
                input_ack: Some(77),
                depth_16: -40,
                host_tick: 90,
                tick: 80,
                baseline: Some(72),
                index: 1,
                count: 3,
                payload: Bytes::from_static(b"abc"),
            },
            ToClient::Refuse {
                code: RefuseCode::SchemaMismatch,
                reason: "different types".into(),
            },
            ToClient::Kick {
                reason: "cheating".into(),
            },
        ];
        for m in to_client {
            assert_eq!(ToClient::decode(&m.encode()), Ok(m));
        }
    }

    #[test]
    fn actions_must_match_the_schema() {
        let sc = schema();
        let bad = ToHost::Input {
            ping: 0,
            rtt_ms: 0,
            ack: None,
            need_full: false,
            transfer: None,
            first_tick: 0,
            inputs: vec![vec![Action {
                id: ActionId(0),
                payload: vec![1],
            }]],
        };
        assert!(bad.encode(&sc).is_err());
        assert!(ToHost::decode(&sc, &[MAGIC, VERSION + 1, HELLO]).is_err());
        assert!(ToClient::decode(b"GET / HTTP/1.1").is_err());
    }

    proptest! {
        #[test]
        fn any_bytes_decode_or_fail_cleanly(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let sc = schema();
            let mut with_header = vec![MAGIC, VERSION];
            with_header.extend_from_slice(&data);
            let _ = ToHost::decode(&sc, &with_header);
            let _ = ToClient::decode(&with_header);
            let _ = ToHost::decode(&sc, &data);
        }
    }
}
