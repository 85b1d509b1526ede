//! The authority: steps the world at a fixed tick with every client's actions, and sends each
//! client the state of every tick as changes against the last state it acknowledged.
//!
//! Sans-IO: feed it datagrams with [`Host::handle`] and time with [`Host::tick`]; take what
//! to send from [`Host::poll_transmit`] and what happened from [`Host::poll_event`]. `A` is
//! whatever the transport addresses peers with.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::bits::{BitWriter, WireError};
use crate::clock::Clock;
use crate::config::{ConfigError, SyncConfig};
use crate::delta;
use crate::packet::{RefuseCode, ToClient, ToHost, TransferAck, FRAGMENT_PAYLOAD, MAX_FRAGMENTS};
use crate::schema::Schema;
use crate::scope::{OwnerAwareScope, Scope};
use crate::snapshot::{PeerId, Snapshot};
use crate::world::{Action, PeerInput, World};

/// Ticks of world history the host keeps (for tests, digests and late acknowledgements).
pub const HISTORY: usize = 128;
/// States sent to a client kept until acknowledged or superseded.
pub const SENT_WINDOW: usize = 64;
/// How far ahead of the host a client's input may be, in ticks.
pub const INPUT_AHEAD: u64 = 128;
/// Delta bodies shared per tick (distinct baselines among the clients).
const DELTA_CACHE: usize = 16;
/// Kicked addresses remembered (to answer their stray datagrams with the kick).
const KICKED: usize = 64;

/// Why the host could not start.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HostError {
    /// A setting is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// What happened to the host's clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostEvent<A> {
    /// A new client joined (spawn its entities now).
    Joined {
        /// Its id.
        peer: PeerId,
        /// Where it is.
        addr: A,
    },
    /// A client fell silent; it may resume within the grace window.
    Lost {
        /// Its id.
        peer: PeerId,
    },
    /// A lost client came back within the grace window.
    Resumed {
        /// Its id.
        peer: PeerId,
        /// Where it is now.
        addr: A,
    },
    /// A lost client's grace window ended: its session is gone (remove its entities).
    Dropped {
        /// Its id.
        peer: PeerId,
    },
    /// A client left on its own.
    Left {
        /// Its id.
        peer: PeerId,
    },
    /// A client was refused.
    Refused {
        /// Where it is.
        addr: A,
        /// Why.
        code: RefuseCode,
    },
    /// A datagram could not be decoded (it was dropped).
    Malformed {
        /// Where it came from.
        addr: A,
        /// What was wrong.
        error: WireError,
    },
}

/// Counters for one client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerStats {
    /// Bytes sent to it.
    pub bytes_sent: u64,
    /// Datagrams sent to it.
    pub datagrams_sent: u64,
    /// Full snapshots begun (the initial sync, and each resync).
    pub full_snapshots: u64,
    /// Ticks simulated that had this client's input due.
    pub inputs_due: u64,
    /// Of those, ticks its input had not arrived for.
    pub input_misses: u64,
    /// Resumes of its session.
    pub resumes: u64,
    /// Entity updates sent (changed entities per state, summed).
    pub entity_updates: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Presence {
    Connected,
    Lost(Instant),
}

struct Transfer {
    snapshot: Arc<Snapshot>,
    fragments: Vec<Bytes>,
    acked: Vec<bool>,
    sent_at: Vec<Option<Instant>>,
}

struct Peer<A> {
    id: PeerId,
    token: u64,
    addr: A,
    presence: Presence,
    last_heard: Instant,
    inputs: BTreeMap<u64, Vec<Action>>,
    first_input: Option<u64>,
    newest_input: Option<u64>,
    counted_through: Option<u64>,
    depth_16: i32,
    baseline: Option<Arc<Snapshot>>,
    sent: VecDeque<Arc<Snapshot>>,
    transfer: Option<Transfer>,
    ping: Option<(u16, Instant)>,
    rtt: Duration,
    stats: PeerStats,
}

/// The authority of a session; see the [module docs](self).
pub struct Host<W, A> {
    config: SyncConfig,
    schema: Arc<Schema>,
    world: W,
    clock: Clock,
    peers: BTreeMap<PeerId, Peer<A>>,
    by_addr: HashMap<A, PeerId>,
    by_token: HashMap<u64, PeerId>,
    next_peer: u32,
    history: VecDeque<Arc<Snapshot>>,
    scope: Box<dyn Scope + Send>,
    kicked: VecDeque<(A, String)>,
    rng: StdRng,
    inputs: Vec<PeerInput>,
    out: VecDeque<(A, Bytes)>,
    events: VecDeque<HostEvent<A>>,
    scratch: Vec<u8>,
    /// This tick's delta bodies by (baseline, state): shared by clients with the same ones.
    delta_cache: Vec<((usize, usize), Bytes, delta::DeltaStats)>,
}

impl<W: World, A: Clone + Eq + Hash + Debug> Host<W, A> {
    /// A host at tick 0. The schema is frozen; `seed` makes session tokens reproducible
    /// (use a random one in production).
    pub fn new(
        config: SyncConfig,
        mut schema: Schema,
        world: W,
        seed: u64,
    ) -> Result<Self, HostError> {
        config.validate()?;
        schema.freeze();
        let mut host = Self {
            clock: Clock::new(&config),
            config,
            schema: Arc::new(schema),
            world,
            peers: BTreeMap::new(),
            by_addr: HashMap::new(),
            by_token: HashMap::new(),
            next_peer: 1,
            history: VecDeque::with_capacity(HISTORY),
            scope: Box::new(OwnerAwareScope::default()),
            kicked: VecDeque::new(),
            rng: StdRng::seed_from_u64(seed),
            inputs: Vec::new(),
            out: VecDeque::new(),
            events: VecDeque::new(),
            scratch: Vec::new(),
            delta_cache: Vec::new(),
        };
        host.capture(0);
        Ok(host)
    }

    /// Replaces the scope filter (the default, [`OwnerAwareScope`], shows everything).
    pub fn set_scope(&mut self, scope: Box<dyn Scope + Send>) {
        self.scope = scope;
    }

    /// The world.
    pub fn world(&self) -> &W {
        &self.world
    }

    /// The world, to change between ticks (spawn a joining client's entities, …).
    pub fn world_mut(&mut self) -> &mut W {
        &mut self.world
    }

    /// The schema.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// The last tick simulated.
    pub fn current_tick(&self) -> u64 {
        self.clock.next_tick().saturating_sub(1)
    }

    /// The state of a recent tick (the last [`HISTORY`] ticks).
    pub fn state_at(&self, tick: u64) -> Option<&Arc<Snapshot>> {
        let newest = self.history.back()?.tick();
        let back = newest.checked_sub(tick)? as usize;
        let i = self.history.len().checked_sub(1 + back)?;
        self.history.get(i)
    }

    /// The newest state.
    pub fn latest(&self) -> Option<&Arc<Snapshot>> {
        self.history.back()
    }

    /// Connected and lost clients.
    pub fn peers(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.peers.keys().copied()
    }

    /// A client's counters.
    pub fn stats(&self, peer: PeerId) -> Option<PeerStats> {
        self.peers.get(&peer).map(|p| p.stats)
    }

    /// Whether a client is in its grace window.
    pub fn is_lost(&self, peer: PeerId) -> bool {
        self.peers
            .get(&peer)
            .is_some_and(|p| matches!(p.presence, Presence::Lost(_)))
    }

    /// Next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<(A, Bytes)> {
        self.out.pop_front()
    }

    /// Next event.
    pub fn poll_event(&mut self) -> Option<HostEvent<A>> {
        self.events.pop_front()
    }

    fn capture(&mut self, tick: u64) {
        let mut snap = if self.history.len() >= HISTORY {
            // Reuse the oldest state's allocations when nobody else holds it.
            match self.history.pop_front().map(Arc::try_unwrap) {
                Some(Ok(s)) => s,
                _ => Snapshot::new(tick),
            }
        } else {
            Snapshot::new(tick)
        };
        snap.clear(tick);
        self.world.capture(&mut snap);
        snap.seal();
        self.history.push_back(Arc::new(snap));
    }

    /// Advances real time by `dt`: steps the world as many whole ticks as are due (at most
    /// `max_steps_per_advance`), checks for silent clients and sends the newest state.
    pub fn tick(&mut self, now: Instant, dt: Duration) -> u32 {
        let frame = self.clock.advance(dt);
        for i in 0..frame.steps {
            self.step(frame.first_tick + u64::from(i));
        }
        self.check_presence(now);
        if frame.steps > 0 {
            self.send_states(now);
        }
        frame.steps
    }

    fn step(&mut self, tick: u64) {
        let mut inputs = std::mem::take(&mut self.inputs);
        inputs.clear();
        for p in self.peers.values_mut() {
            // Inputs for ticks already simulated are of no use any more.
            while p.inputs.first_key_value().is_some_and(|(t, _)| *t < tick) {
                p.inputs.pop_first();
            }
            let due = p.presence == Presence::Connected && p.first_input.is_some_and(|f| f <= tick);
            if due || p.inputs.contains_key(&tick) {
                p.counted_through = Some(tick);
            }
            match p.inputs.remove(&tick) {
                Some(actions) => {
                    p.stats.inputs_due += 1;
                    inputs.push(PeerInput {
                        peer: p.id,
                        actions,
                    });
                }
                None if due => {
                    p.stats.inputs_due += 1;
                    p.stats.input_misses += 1;
                }
                None => {}
            }
        }
        self.world.step(tick, &inputs);
        self.inputs = inputs;
        self.capture(tick);
    }

    fn check_presence(&mut self, now: Instant) {
        let mut dropped = Vec::new();
        for p in self.peers.values_mut() {
            match p.presence {
                Presence::Connected
                    if now.saturating_duration_since(p.last_heard) > self.config.peer_timeout =>
                {
                    p.presence = Presence::Lost(now);
                    self.events.push_back(HostEvent::Lost { peer: p.id });
                }
                Presence::Lost(since)
                    if now.saturating_duration_since(since) > self.config.resume_grace =>
                {
                    dropped.push(p.id);
                }
                _ => {}
            }
        }
        for id in dropped {
            self.remove(id);
            self.events.push_back(HostEvent::Dropped { peer: id });
        }
    }

    fn remove(&mut self, id: PeerId) -> Option<Peer<A>> {
        let p = self.peers.remove(&id)?;
        if self.by_addr.get(&p.addr) == Some(&id) {
            self.by_addr.remove(&p.addr);
        }
        self.by_token.remove(&p.token);
        Some(p)
    }

    fn send(&mut self, addr: &A, bytes: Vec<u8>) {
        self.out.push_back((addr.clone(), Bytes::from(bytes)));
    }

    fn send_states(&mut self, now: Instant) {
        let Some(state) = self.history.back().cloned() else {
            return;
        };
        let ids: Vec<PeerId> = self.peers.keys().copied().collect();
        self.delta_cache.clear();
        for id in ids {
            if let Err(e) = self.send_state(id, &state, now) {
                // A value the world wrote does not fit its registration: a game bug, reported
                // once per tick and peer rather than sent broken.
                tracing::warn!(peer = id.0, error = %e, "state not sent");
            }
        }
    }

    fn send_state(
        &mut self,
        id: PeerId,
        state: &Arc<Snapshot>,
        now: Instant,
    ) -> Result<(), WireError> {
        let Some(p) = self.peers.get(&id) else {
            return Ok(());
        };
        if p.presence != Presence::Connected {
            return Ok(());
        }
        let scoped = match self.scope.filter(id, state) {
            Some(s) => Arc::new(s),
            None => state.clone(),
        };
        let schema = self.schema.clone();
        let Some(p) = self.peers.get_mut(&id) else {
            return Ok(());
        };
        let pong = p.ping.map(|(seq, at)| {
            (
                seq,
                now.saturating_duration_since(at)
                    .as_micros()
                    .min(u128::from(u32::MAX)) as u32,
            )
        });
        let host_tick = state.tick();
        let header = |tick, baseline, index, count, payload: Bytes| ToClient::State {
            pong,
            input_ack: p.newest_input,
            depth_16: p.depth_16,
            host_tick,
            tick,
            baseline,
            index,
            count,
            payload,
        };
        let mut datagrams: Vec<Vec<u8>> = Vec::new();
        match (&p.baseline, &mut p.transfer) {
            (None, None) => {
                // Initial sync (or resync): one full snapshot, resent until every fragment is
                // acknowledged.
                let mut w = BitWriter::with_buffer(std::mem::take(&mut self.scratch));
                delta::encode(&schema, None, &scoped, &mut w)?;
                let body = w.finish();
                let chunks: Vec<Bytes> = body
                    .chunks(FRAGMENT_PAYLOAD)
                    .map(Bytes::copy_from_slice)
                    .collect();
                self.scratch = body;
                let chunks = if chunks.is_empty() {
                    vec![Bytes::new()]
                } else {
                    chunks
                };
                if chunks.len() > MAX_FRAGMENTS {
                    return Err(WireError::bad(
                        "state",
                        "a full snapshot needs more than 1024 fragments",
                    ));
                }
                let n = chunks.len();
                p.stats.full_snapshots += 1;
                p.stats.entity_updates += scoped.len() as u64;
                p.transfer = Some(Transfer {
                    snapshot: scoped.clone(),
                    fragments: chunks,
                    acked: vec![false; n],
                    sent_at: vec![None; n],
                });
                let t = p.transfer.as_mut().expect("just set");
                for i in 0..n {
                    t.sent_at[i] = Some(now);
                    datagrams.push(
                        header(
                            scoped.tick(),
                            None,
                            i as u16,
                            n as u16,
                            t.fragments[i].clone(),
                        )
                        .encode(),
                    );
                }
            }
            (None, Some(t)) => {
                // Resend what was not acknowledged after about a round trip.
                let wait = (p.rtt + p.rtt / 2).max(Duration::from_millis(30));
                let n = t.fragments.len();
                for i in 0..n {
                    let due = !t.acked[i]
                        && t.sent_at[i].is_none_or(|at| now.saturating_duration_since(at) >= wait);
                    if due {
                        t.sent_at[i] = Some(now);
                        datagrams.push(
                            header(
                                t.snapshot.tick(),
                                None,
                                i as u16,
                                n as u16,
                                t.fragments[i].clone(),
                            )
                            .encode(),
                        );
                    }
                }
            }
            (Some(base), _) => {
                // Clients with the same baseline and the same (unscoped) state get the same
                // body: encode it once per tick.
                // Only the shared state is cached: a scoped copy is freed after this client,
                // and its address could come back for the next one. Every baseline is held by
                // its client for the whole round.
                let shared = Arc::ptr_eq(&scoped, state);
                let key = (Arc::as_ptr(base) as usize, Arc::as_ptr(&scoped) as usize);
                let cached = self
                    .delta_cache
                    .iter()
                    .find(|(k, _, _)| shared && *k == key);
                let (body, stats) = match cached {
                    Some((_, body, stats)) => (body.clone(), *stats),
                    None => {
                        let mut w = BitWriter::with_buffer(std::mem::take(&mut self.scratch));
                        let stats = delta::encode(&schema, Some(base), &scoped, &mut w)?;
                        let body = Bytes::from(w.finish());
                        if shared && self.delta_cache.len() < DELTA_CACHE {
                            self.delta_cache.push((key, body.clone(), stats));
                        }
                        (body, stats)
                    }
                };
                p.stats.entity_updates += u64::from(stats.updated + stats.full + stats.despawned);
                let chunks: Vec<&[u8]> = body.chunks(FRAGMENT_PAYLOAD).collect();
                let n = chunks.len().max(1);
                if n > MAX_FRAGMENTS {
                    return Err(WireError::bad(
                        "state",
                        "a delta needs more than 1024 fragments",
                    ));
                }
                let btick = Some(base.tick());
                if chunks.is_empty() {
                    datagrams.push(header(scoped.tick(), btick, 0, 1, Bytes::new()).encode());
                }
                for (i, c) in chunks.iter().enumerate() {
                    datagrams.push(
                        header(
                            scoped.tick(),
                            btick,
                            i as u16,
                            n as u16,
                            Bytes::copy_from_slice(c),
                        )
                        .encode(),
                    );
                }
                // (the body stays in the cache for this tick)
                if p.sent.len() >= SENT_WINDOW {
                    p.sent.pop_front();
                }
                p.sent.push_back(scoped);
            }
        }
        for d in datagrams {
            p.stats.bytes_sent += d.len() as u64;
            p.stats.datagrams_sent += 1;
            self.out.push_back((p.addr.clone(), Bytes::from(d)));
        }
        Ok(())
    }

    /// Removes a client now, telling it why; it cannot resume.
    pub fn kick(&mut self, peer: PeerId, reason: &str) {
        let Some(p) = self.remove(peer) else {
            return;
        };
        let msg = ToClient::Kick {
            reason: reason.to_owned(),
        }
        .encode();
        // Three copies: a lost datagram should not leave the client guessing.
        for _ in 0..3 {
            self.send(&p.addr, msg.clone());
        }
        if self.kicked.len() >= KICKED {
            self.kicked.pop_front();
        }
        self.kicked.push_back((p.addr, reason.to_owned()));
    }

    /// Handles a datagram from `from`.
    pub fn handle(&mut self, now: Instant, from: A, datagram: &[u8]) {
        let msg = match ToHost::decode(&self.schema, datagram) {
            Ok(m) => m,
            Err(error) => {
                self.events
                    .push_back(HostEvent::Malformed { addr: from, error });
                return;
            }
        };
        match msg {
            ToHost::Hello {
                schema,
                tick_rate,
                token,
                ping,
            } => self.on_hello(now, from, schema, tick_rate, token, ping),
            ToHost::Bye => {
                if let Some(id) = self.by_addr.get(&from).copied() {
                    self.remove(id);
                    self.events.push_back(HostEvent::Left { peer: id });
                }
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
                let Some(id) = self.by_addr.get(&from).copied() else {
                    self.answer_stranger(from);
                    return;
                };
                let next = self.clock.next_tick();
                let Some(p) = self.peers.get_mut(&id) else {
                    return;
                };
                p.last_heard = now;
                if let Presence::Lost(_) = p.presence {
                    // Its datagrams got through again before it said hello: carry on.
                    p.presence = Presence::Connected;
                    p.stats.resumes += 1;
                    self.events.push_back(HostEvent::Resumed {
                        peer: id,
                        addr: from.clone(),
                    });
                }
                if p.ping.is_none_or(|(seq, _)| seq != ping) {
                    p.ping = Some((ping, now));
                }
                p.rtt = Duration::from_millis(u64::from(rtt_ms));
                on_acks(p, ack, need_full, transfer);
                // The newest tick this datagram carries: acknowledged, and how early it came is
                // the depth the client's time dilation steers by (late ones count too).
                let newest = (!inputs.is_empty())
                    .then(|| first_tick.saturating_add(inputs.len() as u64 - 1));
                if !inputs.is_empty() {
                    p.first_input = Some(p.first_input.map_or(first_tick, |f| f.min(first_tick)));
                }
                for (i, actions) in inputs.into_iter().enumerate() {
                    let t = first_tick.saturating_add(i as u64);
                    if t >= next + INPUT_AHEAD {
                        continue;
                    }
                    if t < next {
                        // Too late: that tick ran without it. Count it once (a tick already
                        // counted when it ran is not counted again).
                        if p.counted_through.is_none_or(|c| t > c)
                            && p.first_input.is_some_and(|f| t >= f)
                        {
                            p.counted_through = Some(t);
                            p.stats.inputs_due += 1;
                            p.stats.input_misses += 1;
                        }
                        continue;
                    }
                    p.inputs.entry(t).or_insert(actions);
                }
                if let Some(newest) = newest {
                    if p.newest_input.is_none_or(|n| newest > n) {
                        p.newest_input = Some(newest);
                    }
                    let depth = i128::from(newest) - i128::from(next);
                    p.depth_16 = (depth * 16).clamp(-(1 << 20), 1 << 20) as i32;
                }
            }
        }
    }

    fn answer_stranger(&mut self, from: A) {
        if let Some((_, reason)) = self.kicked.iter().find(|(a, _)| *a == from) {
            let msg = ToClient::Kick {
                reason: reason.clone(),
            }
            .encode();
            self.send(&from, msg);
            return;
        }
        let msg = ToClient::Refuse {
            code: RefuseCode::UnknownSession,
            reason: "no session for this address: say hello first".into(),
        }
        .encode();
        self.send(&from, msg);
    }

    fn refuse(&mut self, to: A, code: RefuseCode, reason: String) {
        let msg = ToClient::Refuse { code, reason }.encode();
        self.send(&to, msg);
        self.events.push_back(HostEvent::Refused { addr: to, code });
    }

    fn on_hello(
        &mut self,
        now: Instant,
        from: A,
        schema: u64,
        tick_rate: u32,
        token: u64,
        ping: u16,
    ) {
        if let Err(e) = self.schema.check_peer(schema) {
            self.refuse(from, RefuseCode::SchemaMismatch, e.to_string());
            return;
        }
        if tick_rate != self.config.tick_rate_hz {
            let reason = format!(
                "the host runs at {} ticks per second and this client at {tick_rate}: use the same tick rate",
                self.config.tick_rate_hz
            );
            self.refuse(from, RefuseCode::TickRate, reason);
            return;
        }
        self.kicked.retain(|(a, _)| *a != from);
        let tick = self.current_tick();
        // Resume: the token names a session still in its grace window.
        if let Some(id) = (token != 0)
            .then(|| self.by_token.get(&token).copied())
            .flatten()
        {
            let Some(p) = self.peers.get_mut(&id) else {
                return;
            };
            let was_lost = matches!(p.presence, Presence::Lost(_));
            if p.addr != from {
                if self.by_addr.get(&p.addr) == Some(&id) {
                    self.by_addr.remove(&p.addr);
                }
                p.addr = from.clone();
            }
            p.presence = Presence::Connected;
            p.last_heard = now;
            p.inputs.clear();
            p.first_input = None;
            p.newest_input = None;
            if was_lost {
                p.stats.resumes += 1;
                self.events.push_back(HostEvent::Resumed {
                    peer: id,
                    addr: from.clone(),
                });
            }
            let msg = ToClient::Welcome {
                peer: id,
                token,
                tick,
                resumed: true,
                pong: ping,
            }
            .encode();
            self.by_addr.insert(from.clone(), id);
            self.send(&from, msg);
            return;
        }
        // A repeated hello from an address that already has a new session: welcome again.
        if let Some(id) = self.by_addr.get(&from).copied() {
            if let Some(p) = self.peers.get(&id) {
                if token == 0 || token == p.token {
                    let msg = ToClient::Welcome {
                        peer: id,
                        token: p.token,
                        tick,
                        resumed: false,
                        pong: ping,
                    }
                    .encode();
                    self.send(&from, msg);
                    return;
                }
            }
        }
        if self.peers.len() >= self.config.max_clients {
            let reason = format!(
                "the host serves its most clients ({})",
                self.config.max_clients
            );
            self.refuse(from, RefuseCode::Full, reason);
            return;
        }
        let id = PeerId(self.next_peer);
        self.next_peer = self.next_peer.wrapping_add(1).max(1);
        let mut token = self.rng.random::<u64>();
        while token == 0 || self.by_token.contains_key(&token) {
            token = self.rng.random::<u64>();
        }
        self.peers.insert(
            id,
            Peer {
                id,
                token,
                addr: from.clone(),
                presence: Presence::Connected,
                last_heard: now,
                inputs: BTreeMap::new(),
                first_input: None,
                newest_input: None,
                counted_through: None,
                depth_16: 0,
                baseline: None,
                sent: VecDeque::new(),
                transfer: None,
                ping: None,
                rtt: Duration::from_millis(100),
                stats: PeerStats::default(),
            },
        );
        if let Some(old) = self.by_addr.insert(from.clone(), id) {
            // The address had an older session that did not resume: it ends.
            if old != id && self.remove(old).is_some() {
                self.by_addr.insert(from.clone(), id);
                self.events.push_back(HostEvent::Dropped { peer: old });
            }
        }
        self.by_token.insert(token, id);
        let msg = ToClient::Welcome {
            peer: id,
            token,
            tick,
            resumed: false,
            pong: ping,
        }
        .encode();
        self.send(&from, msg);
        self.events.push_back(HostEvent::Joined {
            peer: id,
            addr: from,
        });
    }
}

fn on_acks<A>(p: &mut Peer<A>, ack: Option<u64>, need_full: bool, transfer: Option<TransferAck>) {
    if need_full {
        if p.baseline.is_some() || p.transfer.is_none() {
            p.baseline = None;
            p.sent.clear();
            p.transfer = None;
        }
        return;
    }
    if let (Some(t), Some(tr)) = (&mut p.transfer, transfer) {
        if tr.tick == t.snapshot.tick() {
            for (i, a) in t.acked.iter_mut().enumerate() {
                if tr.have.get(i / 64).is_some_and(|w| w >> (i % 64) & 1 == 1) {
                    *a = true;
                }
            }
        }
    }
    let Some(ack) = ack else {
        return;
    };
    if let Some(t) = &p.transfer {
        if t.snapshot.tick() == ack {
            p.baseline = Some(t.snapshot.clone());
            p.transfer = None;
            p.sent.clear();
            return;
        }
    }
    if p.baseline.as_ref().is_some_and(|b| b.tick() >= ack) {
        return;
    }
    while let Some(s) = p.sent.front() {
        if s.tick() < ack {
            p.sent.pop_front();
        } else {
            break;
        }
    }
    if p.sent.front().is_some_and(|s| s.tick() == ack) {
        p.baseline = p.sent.pop_front();
    }
}
