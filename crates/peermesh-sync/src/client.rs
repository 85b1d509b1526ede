//! A client: predicts its own entities from its inputs, reconciles them against the host's
//! state, interpolates everyone else's, and resumes or resyncs after a drop.
//!
//! Sans-IO: feed it datagrams with [`Client::handle`] and time with [`Client::tick`]; take
//! what to send from [`Client::poll_transmit`], what happened from [`Client::poll_event`],
//! and what to draw from [`Client::render`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::bits::{BitReader, WireError};
use crate::clock::Clock;
use crate::config::SyncConfig;
use crate::delta;
use crate::dilation::TimeDilation;
use crate::host::HostError;
use crate::ladder::{LadderStep, ReconnectLadder};
use crate::packet::{RefuseCode, ToClient, ToHost, TransferAck, MAX_INPUT_TICKS};
use crate::render_delay::AdaptiveRenderDelay;
use crate::schema::{ComponentId, Encoding, Schema};
use crate::snapshot::{EntityId, PeerId, Snapshot, Value};
use crate::world::{Action, PeerInput, World};

/// Authoritative states a client keeps (baselines for the host's deltas, and the
/// interpolation buffer).
pub const STATES_KEPT: usize = 64;
/// Predicted ticks kept (the most a reconciliation replays).
pub const PREDICTED_KEPT: usize = 128;
/// States being reassembled at once.
const PARTIALS: usize = 8;
/// Time constant of the smoothing of corrections.
const SMOOTHING: Duration = Duration::from_millis(100);
/// Hello interval while joining.
const HELLO_EVERY: Duration = Duration::from_millis(250);
/// A join that gets no welcome is given up after this long.
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);

/// What happened to the client's connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// The host accepted the client.
    Connected {
        /// The client's id.
        peer: PeerId,
    },
    /// The first full state arrived: prediction runs.
    Synced {
        /// Its tick.
        tick: u64,
    },
    /// Nothing came from the host for `peer_timeout`: the reconnect ladder starts.
    ConnectionLost,
    /// A reconnect attempt (a hello with the session token).
    ReconnectAttempt {
        /// From 1.
        number: u32,
    },
    /// Back: `resumed` when the host still had the session (deltas continue), otherwise a
    /// new session with one full snapshot.
    Reconnected {
        /// Whether the session was resumed.
        resumed: bool,
    },
    /// The ladder gave up (or the join never got an answer).
    PermanentlyLost,
    /// The host refused the client.
    Refused {
        /// Why (stable code).
        code: RefuseCode,
        /// A sentence for a person.
        reason: String,
    },
    /// The host removed the client.
    Kicked {
        /// Why.
        reason: String,
    },
    /// A datagram could not be decoded (it was dropped).
    Malformed {
        /// What was wrong.
        error: WireError,
    },
}

/// Counters of a client.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ClientStats {
    /// Bytes received.
    pub bytes_received: u64,
    /// Bytes sent.
    pub bytes_sent: u64,
    /// Whole states applied.
    pub states: u64,
    /// Full snapshots applied (initial sync and resyncs).
    pub full_snapshots: u64,
    /// Authoritative states compared with a prediction.
    pub predictions_checked: u64,
    /// Of those, states that differed (each caused a rollback).
    pub mispredictions: u64,
    /// Rollbacks (restore and replay).
    pub rollbacks: u64,
    /// Ticks replayed by rollbacks.
    pub replayed_ticks: u64,
    /// Ticks predicted.
    pub predicted_ticks: u64,
    /// Sessions resumed.
    pub resumes: u64,
    /// Sessions replaced by a new one with a full snapshot.
    pub resyncs: u64,
    /// States whose baseline was missing (a full snapshot was asked for).
    pub missing_baselines: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Joining { since: Instant, next_hello: Instant },
    Live,
    Lost,
    Closed,
}

struct Partial {
    baseline: Option<u64>,
    parts: Vec<Option<Bytes>>,
    have: usize,
}

/// One row of [`Rendered`]: an entity's interpolatable component, blended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RenderRow {
    /// The entity.
    pub id: EntityId,
    /// The component.
    pub comp: ComponentId,
    /// Whether it is one of this client's predicted entities (else interpolated).
    pub predicted: bool,
    start: u32,
    len: u32,
}

/// What to draw: every entity's interpolatable lanes components, blended for this frame.
#[derive(Debug, Clone, Default)]
pub struct Rendered {
    /// The host tick remote entities are drawn at (fractional).
    pub tick: f64,
    rows: Vec<RenderRow>,
    values: Vec<f64>,
}

impl Rendered {
    /// Every row with its lanes.
    pub fn rows(&self) -> impl Iterator<Item = (RenderRow, &[f64])> + '_ {
        self.rows.iter().map(move |r| {
            let (a, b) = (r.start as usize, (r.start + r.len) as usize);
            (*r, &self.values[a..b])
        })
    }

    /// An entity's blended component.
    pub fn get(&self, id: EntityId, comp: ComponentId) -> Option<&[f64]> {
        let i = self
            .rows
            .binary_search_by_key(&(id, comp), |r| (r.id, r.comp))
            .ok()?;
        let r = self.rows[i];
        Some(&self.values[r.start as usize..(r.start + r.len) as usize])
    }

    fn push(
        &mut self,
        id: EntityId,
        comp: ComponentId,
        predicted: bool,
        lanes: impl Iterator<Item = f64>,
    ) {
        let start = self.values.len() as u32;
        self.values.extend(lanes);
        self.rows.push(RenderRow {
            id,
            comp,
            predicted,
            start,
            len: self.values.len() as u32 - start,
        });
    }
}

type Sampler = Box<dyn FnMut(u64, &mut Vec<Action>) + Send>;

/// A client of a session; see the [module docs](self).
pub struct Client<W> {
    config: SyncConfig,
    schema: Arc<Schema>,
    world: W,
    clock: Clock,
    sampler: Option<Sampler>,
    phase: Phase,
    was_connected: bool,
    peer: Option<PeerId>,
    token: u64,
    ping_seq: u16,
    pings: VecDeque<(u16, Instant)>,
    rtt: Option<Duration>,
    last_heard: Instant,
    states: BTreeMap<u64, Arc<Snapshot>>,
    partials: BTreeMap<u64, Partial>,
    need_full: bool,
    predicting: bool,
    synced_once: bool,
    predicted: VecDeque<Snapshot>,
    recorded: VecDeque<(u64, Vec<Action>)>,
    first_sampled: u64,
    input_ack: Option<u64>,
    dilation: TimeDilation,
    render_delay: AdaptiveRenderDelay,
    ladder: ReconnectLadder,
    base: Instant,
    arrivals: VecDeque<i128>,
    offsets: HashMap<(EntityId, ComponentId), Vec<f64>>,
    last_render: Option<Instant>,
    rendered: Rendered,
    interp: Vec<(ComponentId, bool)>,
    events: VecDeque<ClientEvent>,
    out: VecDeque<Bytes>,
    stats: ClientStats,
    scratch: Snapshot,
}

impl<W: World> Client<W> {
    /// A client that has not connected yet; `seed` spreads its reconnect attempts.
    pub fn new(
        config: SyncConfig,
        mut schema: Schema,
        world: W,
        seed: u64,
        now: Instant,
    ) -> Result<Self, HostError> {
        config.validate()?;
        schema.freeze();
        let interp = (0..schema.component_count())
            .map(|i| {
                let c = ComponentId(i as u16);
                let lanes = matches!(schema.component_encoding(c), Some(Encoding::Lanes { .. }));
                (c, lanes && schema.interpolates(c))
            })
            .collect();
        let (lo, hi) = config.render_delay_ticks;
        Ok(Self {
            clock: Clock::new(&config),
            dilation: TimeDilation::new(
                f64::from(config.delay_ticks.max(1)),
                config.max_time_dilation,
            ),
            render_delay: AdaptiveRenderDelay::new(config.tick(), lo, hi),
            ladder: ReconnectLadder::new(
                Duration::from_millis(200),
                Duration::from_secs(5),
                Duration::from_secs(60),
                seed,
            ),
            config,
            schema: Arc::new(schema),
            world,
            sampler: None,
            phase: Phase::Idle,
            was_connected: false,
            peer: None,
            token: 0,
            ping_seq: 0,
            pings: VecDeque::new(),
            rtt: None,
            last_heard: now,
            states: BTreeMap::new(),
            partials: BTreeMap::new(),
            need_full: false,
            predicting: false,
            synced_once: false,
            predicted: VecDeque::new(),
            recorded: VecDeque::new(),
            first_sampled: 0,
            input_ack: None,
            base: now,
            arrivals: VecDeque::new(),
            offsets: HashMap::new(),
            last_render: None,
            rendered: Rendered::default(),
            interp,
            events: VecDeque::new(),
            out: VecDeque::new(),
            stats: ClientStats::default(),
            scratch: Snapshot::new(0),
        })
    }

    /// Sets the input sampler, called once per predicted tick with an empty list to fill.
    pub fn set_sampler(&mut self, sampler: impl FnMut(u64, &mut Vec<Action>) + Send + 'static) {
        self.sampler = Some(Box::new(sampler));
    }

    /// The world (own entities predicted; the rest as last restored).
    pub fn world(&self) -> &W {
        &self.world
    }

    /// This client's id, once welcomed.
    pub fn peer(&self) -> Option<PeerId> {
        self.peer
    }

    /// Counters.
    pub fn stats(&self) -> ClientStats {
        self.stats
    }

    /// The round-trip estimate.
    pub fn rtt(&self) -> Option<Duration> {
        self.rtt
    }

    /// The clock's dilation now.
    pub fn dilation(&self) -> f64 {
        self.clock.dilation()
    }

    /// The render delay now, in ticks.
    pub fn render_delay_ticks(&self) -> f64 {
        self.render_delay.delay_ticks()
    }

    /// The newest authoritative state.
    pub fn latest(&self) -> Option<&Arc<Snapshot>> {
        self.states.values().next_back()
    }

    /// The next tick to predict.
    pub fn predicted_tick(&self) -> u64 {
        self.clock.next_tick()
    }

    /// Whether the client is connected and synchronised.
    pub fn is_live(&self) -> bool {
        self.phase == Phase::Live && self.predicting
    }

    /// Next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.out.pop_front()
    }

    /// Next event.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    fn send(&mut self, msg: &ToHost) {
        match msg.encode(&self.schema) {
            Ok(b) => {
                self.stats.bytes_sent += b.len() as u64;
                self.out.push_back(Bytes::from(b));
            }
            Err(e) => tracing::warn!(error = %e, "datagram not sent"),
        }
    }

    fn next_ping(&mut self, now: Instant) -> u16 {
        self.ping_seq = self.ping_seq.wrapping_add(1);
        if self.pings.len() >= 64 {
            self.pings.pop_front();
        }
        self.pings.push_back((self.ping_seq, now));
        self.ping_seq
    }

    fn hello(&mut self, now: Instant) {
        let ping = self.next_ping(now);
        let msg = ToHost::Hello {
            schema: self.schema.hash(),
            tick_rate: self.config.tick_rate_hz,
            token: self.token,
            ping,
        };
        self.send(&msg);
    }

    /// Starts joining the host (hellos until it answers).
    pub fn connect(&mut self, now: Instant) {
        self.hello(now);
        self.phase = Phase::Joining {
            since: now,
            next_hello: now + HELLO_EVERY,
        };
    }

    /// Leaves at once: the host ends the session without a grace window.
    pub fn disconnect(&mut self) {
        if matches!(self.phase, Phase::Live | Phase::Lost) {
            self.send(&ToHost::Bye);
            self.send(&ToHost::Bye);
        }
        self.phase = Phase::Closed;
    }

    fn rtt_sample(&mut self, now: Instant, pong: u16, hold: Duration) {
        let Some(&(_, sent)) = self.pings.iter().find(|(s, _)| *s == pong) else {
            return;
        };
        let sample = now.saturating_duration_since(sent).saturating_sub(hold);
        self.rtt = Some(match self.rtt {
            None => sample,
            Some(r) => r.mul_f64(0.875) + sample.mul_f64(0.125),
        });
    }

    /// Advances real time by `dt`: predicts the ticks that are due (sampling inputs), sends
    /// them, and runs the reconnect ladder. Returns the ticks predicted.
    pub fn tick(&mut self, now: Instant, dt: Duration) -> u32 {
        match self.phase {
            Phase::Idle | Phase::Closed => 0,
            Phase::Joining { since, next_hello } => {
                if now.saturating_duration_since(since) > JOIN_TIMEOUT {
                    self.phase = Phase::Closed;
                    self.events.push_back(ClientEvent::PermanentlyLost);
                } else if now >= next_hello {
                    self.hello(now);
                    self.phase = Phase::Joining {
                        since,
                        next_hello: now + HELLO_EVERY,
                    };
                }
                0
            }
            Phase::Lost => {
                match self.ladder.poll(now) {
                    LadderStep::Attempt { number } => {
                        self.events
                            .push_back(ClientEvent::ReconnectAttempt { number });
                        self.hello(now);
                    }
                    LadderStep::GiveUp => {
                        self.phase = Phase::Closed;
                        self.events.push_back(ClientEvent::PermanentlyLost);
                    }
                    LadderStep::Idle | LadderStep::Wait(_) => {}
                }
                0
            }
            Phase::Live => {
                if now.saturating_duration_since(self.last_heard) > self.config.peer_timeout {
                    self.phase = Phase::Lost;
                    self.predicting = false;
                    self.ladder.on_lost(now);
                    self.events.push_back(ClientEvent::ConnectionLost);
                    return 0;
                }
                if self.predicting {
                    self.clock.set_dilation(self.dilation.factor());
                }
                let frame = self.clock.advance(dt);
                if self.predicting {
                    for i in 0..frame.steps {
                        self.predict(frame.first_tick + u64::from(i));
                    }
                }
                if frame.steps > 0 {
                    self.send_input(now);
                }
                if self.predicting {
                    frame.steps
                } else {
                    0
                }
            }
        }
    }

    fn capture_owned(&mut self, tick: u64) -> Snapshot {
        self.scratch.clear(tick);
        self.world.capture(&mut self.scratch);
        self.scratch.seal();
        let me = self.peer;
        self.scratch
            .filtered(|e| e.owner().is_some() && e.owner() == me)
    }

    fn remember(&mut self, snap: Snapshot) {
        if self.predicted.len() >= PREDICTED_KEPT {
            self.predicted.pop_front();
        }
        self.predicted.push_back(snap);
    }

    fn predict(&mut self, tick: u64) {
        let mut actions = Vec::new();
        if let Some(s) = self.sampler.as_mut() {
            s(tick, &mut actions);
        }
        actions.truncate(crate::packet::MAX_ACTIONS_PER_TICK);
        let actions: Vec<Action> = actions
            .into_iter()
            .filter(|a| crate::packet::check_action(&self.schema, a).is_ok())
            .collect();
        let peer = self.peer.unwrap_or(PeerId::HOST);
        self.world.step(
            tick,
            &[PeerInput {
                peer,
                actions: actions.clone(),
            }],
        );
        if self.recorded.len() >= PREDICTED_KEPT {
            self.recorded.pop_front();
        }
        self.recorded.push_back((tick, actions));
        let snap = self.capture_owned(tick);
        self.remember(snap);
        self.stats.predicted_ticks += 1;
    }

    fn send_input(&mut self, now: Instant) {
        let newest = self.recorded.back().map(|(t, _)| *t);
        let (first_tick, inputs) = match newest {
            Some(newest) if self.predicting && newest >= self.first_sampled => {
                // Everything not acknowledged yet, and at least the last `input_redundancy`
                // ticks, at most 32.
                let redundancy = u64::from(self.config.input_redundancy);
                let unacked_from = self.input_ack.map_or(self.first_sampled, |a| a + 1);
                let from = unacked_from
                    .min(newest + 1 - redundancy.min(newest + 1))
                    .max(self.first_sampled)
                    .max((newest + 1).saturating_sub(MAX_INPUT_TICKS as u64));
                let inputs: Vec<Vec<Action>> = self
                    .recorded
                    .iter()
                    .filter(|(t, _)| *t >= from)
                    .map(|(_, a)| a.clone())
                    .collect();
                (from, inputs)
            }
            _ => (0, Vec::new()),
        };
        let transfer = self.transfer_progress();
        let ping = self.next_ping(now);
        let msg = ToHost::Input {
            ping,
            rtt_ms: self
                .rtt
                .map_or(0, |r| r.as_millis().min(u128::from(u16::MAX)) as u16),
            ack: self.states.keys().next_back().copied(),
            need_full: self.need_full,
            transfer,
            first_tick,
            inputs,
        };
        self.send(&msg);
    }

    fn transfer_progress(&self) -> Option<TransferAck> {
        let (tick, p) = self
            .partials
            .iter()
            .rev()
            .find(|(_, p)| p.baseline.is_none())?;
        let mut have = vec![0u64; p.parts.len().div_ceil(64)];
        for (i, part) in p.parts.iter().enumerate() {
            if part.is_some() {
                have[i / 64] |= 1 << (i % 64);
            }
        }
        Some(TransferAck { tick: *tick, have })
    }

    /// Handles a datagram from the host.
    pub fn handle(&mut self, now: Instant, datagram: &[u8]) {
        self.stats.bytes_received += datagram.len() as u64;
        let msg = match ToClient::decode(datagram) {
            Ok(m) => m,
            Err(error) => {
                self.events.push_back(ClientEvent::Malformed { error });
                return;
            }
        };
        match msg {
            ToClient::Welcome {
                peer,
                token,
                tick: _,
                resumed,
                pong,
            } => {
                self.rtt_sample(now, pong, Duration::ZERO);
                if !matches!(self.phase, Phase::Joining { .. } | Phase::Lost) {
                    return;
                }
                self.last_heard = now;
                self.ladder.on_connected();
                self.phase = Phase::Live;
                if resumed && self.peer == Some(peer) {
                    // Deltas continue against the states held; prediction restarts from the
                    // next one.
                    self.stats.resumes += 1;
                    self.predicting = false;
                    self.dilation.reset();
                    self.events
                        .push_back(ClientEvent::Reconnected { resumed: true });
                    return;
                }
                self.peer = Some(peer);
                self.token = token;
                self.states.clear();
                self.partials.clear();
                self.predicted.clear();
                self.recorded.clear();
                self.offsets.clear();
                self.arrivals.clear();
                self.predicting = false;
                self.need_full = false;
                self.input_ack = None;
                self.dilation.reset();
                if self.was_connected {
                    self.stats.resyncs += 1;
                    self.events
                        .push_back(ClientEvent::Reconnected { resumed: false });
                } else {
                    self.events.push_back(ClientEvent::Connected { peer });
                }
                self.was_connected = true;
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
                if self.phase != Phase::Live {
                    return;
                }
                self.last_heard = now;
                self.on_host_tick(now, host_tick);
                if let Some((p, hold)) = pong {
                    self.rtt_sample(now, p, Duration::from_micros(u64::from(hold)));
                }
                if let Some(a) = input_ack {
                    if self.input_ack.is_none_or(|x| a > x) {
                        self.input_ack = Some(a);
                    }
                }
                if self.predicting && input_ack.is_some() {
                    self.dilation.observe(f64::from(depth_16) / 16.0);
                }
                self.on_fragment(now, tick, baseline, index, count, payload);
            }
            ToClient::Refuse { code, reason } => {
                if code == RefuseCode::UnknownSession {
                    // The host no longer knows this client: ask again with the token (which
                    // resumes, or starts a new session with a full snapshot).
                    if self.phase == Phase::Live {
                        self.phase = Phase::Lost;
                        self.predicting = false;
                        self.ladder.on_lost(now);
                        self.events.push_back(ClientEvent::ConnectionLost);
                    }
                    return;
                }
                self.phase = Phase::Closed;
                self.events.push_back(ClientEvent::Refused { code, reason });
            }
            ToClient::Kick { reason } => {
                if self.phase != Phase::Closed {
                    self.phase = Phase::Closed;
                    self.events.push_back(ClientEvent::Kicked { reason });
                }
            }
        }
    }

    fn on_fragment(
        &mut self,
        now: Instant,
        tick: u64,
        baseline: Option<u64>,
        index: u16,
        count: u16,
        payload: Bytes,
    ) {
        let newest = self.states.keys().next_back().copied();
        if self.states.contains_key(&tick)
            || newest.is_some_and(|n| tick.saturating_add(STATES_KEPT as u64) <= n)
        {
            return;
        }
        if count == 1 {
            self.apply(now, tick, baseline, &payload);
            return;
        }
        if !self.partials.contains_key(&tick) && self.partials.len() >= PARTIALS {
            // Forget the oldest delta being assembled (a full snapshot is kept if possible).
            let victim = self
                .partials
                .iter()
                .find(|(_, p)| p.baseline.is_some())
                .or_else(|| self.partials.iter().next())
                .map(|(t, _)| *t);
            if let Some(v) = victim {
                self.partials.remove(&v);
            }
        }
        let p = self.partials.entry(tick).or_insert_with(|| Partial {
            baseline,
            parts: vec![None; usize::from(count)],
            have: 0,
        });
        if p.parts.len() != usize::from(count) || p.baseline != baseline {
            return;
        }
        let slot = &mut p.parts[usize::from(index)];
        if slot.is_none() {
            *slot = Some(payload);
            p.have += 1;
        }
        if p.have == p.parts.len() {
            let Some(p) = self.partials.remove(&tick) else {
                return;
            };
            let mut body = Vec::new();
            for part in p.parts.into_iter().flatten() {
                body.extend_from_slice(&part);
            }
            self.apply(now, tick, baseline, &body);
        }
    }

    fn apply(&mut self, now: Instant, tick: u64, baseline: Option<u64>, body: &[u8]) {
        let base = match baseline {
            None => None,
            Some(b) => match self.states.get(&b) {
                Some(s) => Some(s.clone()),
                None => {
                    self.stats.missing_baselines += 1;
                    self.need_full = true;
                    return;
                }
            },
        };
        let snap = match delta::decode(
            &self.schema,
            base.as_deref(),
            tick,
            &mut BitReader::new(body),
        ) {
            Ok(s) => s,
            Err(error) => {
                self.events.push_back(ClientEvent::Malformed { error });
                return;
            }
        };
        if baseline.is_none() {
            self.stats.full_snapshots += 1;
            self.need_full = false;
        }
        self.stats.states += 1;
        // Partials older than a whole state are of no use any more.
        self.partials.retain(|t, _| *t > tick);
        self.states.insert(tick, Arc::new(snap));
        while self.states.len() > STATES_KEPT {
            self.states.pop_first();
        }
        if self.states.keys().next_back() == Some(&tick) {
            self.reconcile(now, tick);
        }
    }

    fn on_host_tick(&mut self, now: Instant, host_tick: u64) {
        self.render_delay.on_state(now, host_tick);
        let offset = now.saturating_duration_since(self.base).as_nanos() as i128
            - i128::from(host_tick) * self.config.tick().as_nanos() as i128;
        if self.arrivals.len() >= 128 {
            self.arrivals.pop_front();
        }
        self.arrivals.push_back(offset);
    }

    fn lead_ticks(&self) -> u64 {
        let tick = self.config.tick().as_secs_f64();
        let rtt = self.rtt.map_or(0.1, |r| r.as_secs_f64());
        (rtt / tick).ceil() as u64 + u64::from(self.config.delay_ticks) + 1
    }

    fn reconcile(&mut self, now: Instant, tick: u64) {
        let Some(auth) = self.states.get(&tick).cloned() else {
            return;
        };
        let start_over = !self.predicting
            || self.predicted.front().is_none_or(|p| p.tick() > tick)
            || tick >= self.clock.next_tick();
        if start_over {
            // (Re)start prediction from this state: a lead of a round trip plus the input
            // delay, stepped without inputs (the host has none for those ticks either).
            self.world.restore(&auth);
            self.predicted.clear();
            self.recorded.clear();
            self.offsets.clear();
            // The lead counts from the host's tick now (a full snapshot may be older).
            let host_now = self
                .host_tick_now(now)
                .map_or(tick, |h| h.max(0.0).ceil() as u64);
            // At most the predicted ticks kept: a host tick claimed far ahead (a broken or
            // hostile datagram) must not make the client step, record and allocate without end.
            let target = host_now
                .max(tick)
                .saturating_add(self.lead_ticks())
                .min(tick.saturating_add(PREDICTED_KEPT as u64));
            let peer = self.peer.unwrap_or(PeerId::HOST);
            for t in tick.saturating_add(1)..target {
                self.world.step(t, &[]);
                self.recorded.push_back((t, Vec::new()));
                let _ = peer;
                let snap = self.capture_owned(t);
                self.remember(snap);
            }
            self.clock.jump_to(target);
            self.first_sampled = target;
            self.predicting = true;
            if !self.synced_once {
                self.synced_once = true;
                self.events.push_back(ClientEvent::Synced { tick });
            }
            return;
        }
        let Some(i) = self.predicted.iter().position(|p| p.tick() == tick) else {
            return;
        };
        self.stats.predictions_checked += 1;
        let me = self.peer;
        // An owned entity whose state differs is a misprediction; one the host spawned or
        // removed meanwhile (which no prediction can know of) only needs the rollback.
        let (differs, reshaped) = {
            let pred = &self.predicted[i];
            let mut n = 0;
            let mut differs = false;
            let mut reshaped = false;
            for e in auth
                .iter()
                .filter(|e| e.owner().is_some() && e.owner() == me)
            {
                match pred.get(e.id()) {
                    Some(p) => {
                        n += 1;
                        differs |= p != e;
                    }
                    None => reshaped = true,
                }
            }
            (differs, reshaped || n != pred.len())
        };
        // Older predictions are no longer needed.
        self.predicted.drain(..i);
        if !differs && !reshaped {
            return;
        }
        if differs {
            self.stats.mispredictions += 1;
        }
        self.stats.rollbacks += 1;
        tracing::debug!(
            peer = ?self.peer,
            tick,
            next = self.clock.next_tick(),
            input_ack = ?self.input_ack,
            differs,
            "rolling back"
        );
        let before = self.predicted.back().cloned();
        self.world.restore(&auth);
        let peer = me.unwrap_or(PeerId::HOST);
        let replay: Vec<(u64, Vec<Action>)> = self
            .recorded
            .iter()
            .filter(|(t, _)| *t > tick)
            .cloned()
            .collect();
        let mut redone = VecDeque::with_capacity(replay.len() + 1);
        redone.push_back(auth.filtered(|e| e.owner().is_some() && e.owner() == me));
        for (t, actions) in replay {
            let inputs = [PeerInput { peer, actions }];
            let inputs: &[PeerInput] = if t < self.first_sampled { &[] } else { &inputs };
            self.world.step(t, inputs);
            redone.push_back(self.capture_owned(t));
            self.stats.replayed_ticks += 1;
        }
        self.predicted = redone;
        // Smooth the correction: what was drawn stays, and the difference fades.
        if let (Some(before), Some(after)) = (before, self.predicted.back()) {
            for e in after.iter() {
                let Some(old) = before.get(e.id()) else {
                    continue;
                };
                for (c, v) in e.components() {
                    let (Value::Lanes(new), Some(Value::Lanes(was))) = (v, old.get(c)) else {
                        continue;
                    };
                    if !self.interp.get(usize::from(c.0)).is_some_and(|x| x.1)
                        || new.len() != was.len()
                    {
                        continue;
                    }
                    let off = self
                        .offsets
                        .entry((e.id(), c))
                        .or_insert_with(|| vec![0.0; new.len()]);
                    for (k, o) in off.iter_mut().enumerate() {
                        *o += f64::from(was[k]) - f64::from(new[k]);
                    }
                }
            }
        }
    }

    /// The host tick that the newest state would have now, by the fastest arrival seen.
    fn host_tick_now(&self, now: Instant) -> Option<f64> {
        let min = self.arrivals.iter().min()?;
        let t = now.saturating_duration_since(self.base).as_nanos() as i128 - min;
        Some(t as f64 / self.config.tick().as_nanos() as f64)
    }

    /// Blends every entity for a frame drawn at `now`: this client's entities between its
    /// last two predicted ticks (plus the fading correction), the others between the two
    /// authoritative states around the render time (host time minus the adaptive delay).
    pub fn render(&mut self, now: Instant) -> &Rendered {
        let dt = self
            .last_render
            .map_or(Duration::ZERO, |l| now.saturating_duration_since(l));
        self.last_render = Some(now);
        let decay = (-dt.as_secs_f64() / SMOOTHING.as_secs_f64()).exp();
        self.offsets.retain(|_, o| {
            o.iter_mut().for_each(|x| *x *= decay);
            o.iter().any(|x| x.abs() > 0.01)
        });
        let mut r = std::mem::take(&mut self.rendered);
        r.rows.clear();
        r.values.clear();
        let me = self.peer;
        let host_now = self.host_tick_now(now);
        let rt = host_now.map_or(0.0, |h| h - self.render_delay.delay_ticks());
        r.tick = rt;
        let s0 = self
            .states
            .range(..=rt.max(0.0).floor() as u64)
            .next_back()
            .map(|(_, s)| s.clone());
        let s0 = s0.or_else(|| self.states.values().next().cloned());
        let s1 = s0.as_ref().and_then(|s| {
            self.states
                .range(s.tick() + 1..)
                .next()
                .map(|(_, s)| s.clone())
        });
        if let Some(s0) = &s0 {
            let t = match &s1 {
                // Across a gap longer than the largest render delay (a cut, a resync) there
                // is nothing to blend: show the newer state at once.
                Some(s1) if s1.tick() - s0.tick() > u64::from(self.config.render_delay_ticks.1) => {
                    1.0
                }
                Some(s1) if rt > s0.tick() as f64 => {
                    ((rt - s0.tick() as f64) / (s1.tick() - s0.tick()) as f64).clamp(0.0, 1.0)
                }
                _ => 0.0,
            };
            for e in s0.iter() {
                if e.owner().is_some() && e.owner() == me && self.predicting {
                    continue;
                }
                let next = s1.as_ref().and_then(|s| s.get(e.id()));
                for (c, v) in e.components() {
                    let Value::Lanes(a) = v else { continue };
                    if !self.interp.get(usize::from(c.0)).is_some_and(|x| x.1) {
                        continue;
                    }
                    let b = next.and_then(|n| n.lanes(c)).filter(|b| b.len() == a.len());
                    let lanes = a.iter().enumerate().map(|(k, x)| {
                        let x = f64::from(*x);
                        b.map_or(x, |b| x + (f64::from(b[k]) - x) * t)
                    });
                    r.push(e.id(), c, false, lanes);
                }
            }
        }
        if self.predicting {
            let n = self.predicted.len();
            if let Some(cur) = self.predicted.back() {
                let prev = (n >= 2).then(|| &self.predicted[n - 2]);
                let alpha = self.clock_alpha();
                for e in cur.iter() {
                    let old = prev.and_then(|p| p.get(e.id()));
                    for (c, v) in e.components() {
                        let Value::Lanes(b) = v else { continue };
                        if !self.interp.get(usize::from(c.0)).is_some_and(|x| x.1) {
                            continue;
                        }
                        let a = old.and_then(|o| o.lanes(c)).filter(|a| a.len() == b.len());
                        let off = self.offsets.get(&(e.id(), c));
                        let lanes = b.iter().enumerate().map(|(k, y)| {
                            let y = f64::from(*y);
                            let v =
                                a.map_or(y, |a| f64::from(a[k]) + (y - f64::from(a[k])) * alpha);
                            v + off.and_then(|o| o.get(k)).copied().unwrap_or(0.0)
                        });
                        r.push(e.id(), c, true, lanes);
                    }
                }
            }
        }
        r.rows.sort_by_key(|row| (row.id, row.comp));
        self.rendered = r;
        &self.rendered
    }

    fn clock_alpha(&self) -> f64 {
        // The clock keeps the remainder; a zero-length advance reads it.
        let mut c = self.clock.clone();
        c.advance(Duration::ZERO).alpha
    }
}
