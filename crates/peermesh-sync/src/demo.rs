//! A complete session in one process, for tests, figures and `peermesh demo sync`: a host and
//! bot clients moving entities over the in-memory network ([`SimNet`]), in virtual time.
//!
//! The world: entities with a 3D position (±512 m at 1 mm: 3 lanes of 20 bits) and a rotation
//! (smallest three: the index of the dropped component and three lanes of 10 bits). Half of
//! the host's entities rest; the other half walk at random at up to 10 m/s, turning every
//! second. Each client owns one entity, moved by its bot's deterministic inputs.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::client::{Client, ClientEvent, ClientStats};
use crate::config::SyncConfig;
use crate::host::{Host, HostEvent, PeerStats};
use crate::netsim::{LinkConditions, NodeId, SimNet};
use crate::quantize::encode_rotation;
use crate::schema::{ActionId, ComponentId, Encoding, Schema};
use crate::scope::Scope;
use crate::snapshot::{EntityId, PeerId};
use crate::world::{Action, EntityStore, PeerInput, Simulated};

/// The position component: 3 lanes of 20 bits, 1 mm per unit, 0 at −512 m.
pub const POSITION: ComponentId = ComponentId(0);
/// The rotation component: smallest three, 4 lanes of 10 bits.
pub const ROTATION: ComponentId = ComponentId(1);
/// The move action: a velocity in mm per tick, three little-endian `i16`.
pub const MOVE: ActionId = ActionId(0);
/// Top speed, in mm per tick at 60 Hz (10 m/s).
pub const MAX_SPEED: i32 = 166;
/// The largest lane value of a position (2^20 − 1 mm, about 1,048 m).
const POS_MAX: i64 = (1 << 20) - 1;
/// Ticks between an entity's turns.
const TURN_EVERY: u64 = 60;

/// The demo's schema (host and clients register the same).
pub fn schema() -> Schema {
    let mut s = Schema::new();
    // The ids are fixed by this order; the constants above name them.
    let _ = s.component("position", Encoding::Lanes { count: 3, bits: 20 }, true);
    let _ = s.component("rotation", Encoding::Lanes { count: 4, bits: 10 }, false);
    let _ = s.action("move", Encoding::Fixed(6));
    s
}

fn mix(mut x: u64) -> u64 {
    // splitmix64: a stateless, platform-independent hash.
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The velocity of a walking entity during the second that holds `tick` (none if it rests).
fn npc_velocity(seed: u64, id: EntityId, tick: u64) -> Option<[i32; 3]> {
    if id.0 % 2 == 0 {
        return None;
    }
    let h = mix(seed ^ mix(u64::from(id.0)) ^ mix(tick / TURN_EVERY + 1));
    let speed = (h % (MAX_SPEED as u64 + 1)) as f64;
    let yaw = ((h >> 16) % 3600) as f64 / 3600.0 * std::f64::consts::TAU;
    let pitch = (((h >> 32) % 1000) as f64 / 1000.0 - 0.5) * 0.5;
    Some([
        (speed * yaw.cos() * pitch.cos()).round() as i32,
        (speed * yaw.sin() * pitch.cos()).round() as i32,
        (speed * pitch.sin()).round() as i32,
    ])
}

fn rotation_lanes(v: [i32; 3]) -> [u32; 4] {
    let yaw = f64::from(v[1]).atan2(f64::from(v[0])) as f32;
    let q = [0.0, 0.0, (yaw / 2.0).sin(), (yaw / 2.0).cos()];
    let s = encode_rotation(q, 10);
    [u32::from(s.largest), s.rest[0], s.rest[1], s.rest[2]]
}

fn advance(store: &mut EntityStore, id: EntityId, v: [i32; 3]) {
    if let Some(p) = store.lanes_mut(id, POSITION) {
        for k in 0..3 {
            p[k] = (i64::from(p[k]) + i64::from(v[k])).clamp(0, POS_MAX) as u32;
        }
    }
}

/// The velocity a move action carries (clamped to top speed).
pub fn move_velocity(a: &Action) -> Option<[i32; 3]> {
    if a.id != MOVE || a.payload.len() != 6 {
        return None;
    }
    let c = |i: usize| {
        i32::from(i16::from_le_bytes([a.payload[i], a.payload[i + 1]])).clamp(-MAX_SPEED, MAX_SPEED)
    };
    Some([c(0), c(2), c(4)])
}

/// A move action.
pub fn move_action(v: [i32; 3]) -> Action {
    let mut payload = Vec::with_capacity(6);
    for x in v {
        payload.extend_from_slice(&(x.clamp(-MAX_SPEED, MAX_SPEED) as i16).to_le_bytes());
    }
    Action { id: MOVE, payload }
}

/// The demo world's step function.
pub type StepFn = Box<dyn FnMut(&mut EntityStore, u64, &[PeerInput]) + Send>;
/// The demo world.
pub type DemoWorld = Simulated<StepFn>;

/// A world with `entities` host entities (the host's) or none (a client's); on a client only
/// owned entities move (remote ones are interpolated, not simulated).
pub fn world(seed: u64, entities: u32, host: bool) -> DemoWorld {
    let mut store = EntityStore::new();
    let mut rng = StdRng::seed_from_u64(seed);
    for _ in 0..entities {
        let id = store.spawn(None);
        let pos = [0, 1, 2].map(|_| rng.random_range(100_000..(POS_MAX as u32 - 100_000)));
        store.set_lanes(id, POSITION, &pos);
        store.set_lanes(id, ROTATION, &rotation_lanes([1, 0, 0]));
    }
    let step: StepFn = Box::new(
        move |s: &mut EntityStore, tick: u64, inputs: &[PeerInput]| {
            if host {
                let walkers: Vec<EntityId> = s.ids().filter(|id| s.owner(*id).is_none()).collect();
                for id in walkers {
                    if let Some(v) = npc_velocity(seed, id, tick) {
                        advance(s, id, v);
                        if tick % TURN_EVERY == 0 {
                            s.set_lanes(id, ROTATION, &rotation_lanes(v));
                        }
                    }
                }
            }
            for input in inputs {
                let mine: Vec<EntityId> = s.owned_by(input.peer).collect();
                for a in &input.actions {
                    if let Some(v) = move_velocity(a) {
                        for id in &mine {
                            advance(s, *id, v);
                        }
                    }
                }
            }
        },
    );
    Simulated::new(store, step)
}

/// A bot's input for a tick: a circle of about 40 m at 9 m/s, phase by peer.
pub fn bot_input(peer: PeerId, tick: u64) -> Action {
    let a = (tick as f64 / 280.0 + f64::from(peer.0)) * std::f64::consts::TAU;
    move_action([(150.0 * a.cos()) as i32, (150.0 * a.sin()) as i32, 0])
}

/// A client cut off from the network for a while.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cut {
    /// Which client (from 0).
    pub client: usize,
    /// When, from the start.
    pub at: Duration,
    /// For how long.
    pub length: Duration,
}

/// A demo run's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoConfig {
    /// Bot clients.
    pub clients: usize,
    /// Host entities (plus one per client).
    pub entities: u32,
    /// Round-trip time between host and each client.
    pub rtt: Duration,
    /// Extra one-way delay, uniform in 0 to this.
    pub jitter: Duration,
    /// Loss per datagram, each way.
    pub loss: f64,
    /// Chance a datagram is delivered twice.
    pub duplicate: f64,
    /// Chance a datagram is held back by an extra one-way latency (reordering it).
    pub reorder: f64,
    /// Seed of everything random.
    pub seed: u64,
    /// Simulated time.
    pub duration: Duration,
    /// An optional cut.
    pub cut: Option<Cut>,
    /// Interest radius in mm: each client sees its own entity and those within it (none:
    /// everything).
    pub scope_radius: Option<u32>,
    /// The session settings.
    pub sync: SyncConfig,
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self {
            clients: 8,
            entities: 1000,
            rtt: Duration::from_millis(100),
            jitter: Duration::from_millis(20),
            loss: 0.02,
            duplicate: 0.0,
            reorder: 0.0,
            seed: 1,
            duration: Duration::from_secs(20),
            cut: None,
            scope_radius: None,
            sync: SyncConfig::default(),
        }
    }
}

/// One client's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientReport {
    /// Its id.
    pub peer: u32,
    /// Bytes per second from the host.
    pub bytes_per_s_down: f64,
    /// Bytes per second to the host.
    pub bytes_per_s_up: f64,
    /// Entity updates the host sent it (changed entities per state, summed).
    pub entity_updates: u64,
    /// Bytes per entity update (after the initial sync).
    pub bytes_per_entity_update: f64,
    /// The client's counters.
    pub stats: ClientStats,
    /// The host's counters for it.
    pub host: PeerStats,
    /// Interpolation error of remote walking entities, median and 99th percentile, in mm.
    pub interp_error_mm: (f64, f64),
    /// Samples behind the interpolation error.
    pub interp_samples: usize,
    /// Frames drawn more than the largest render delay past the newest state received (an
    /// outage not yet detected), left out of the interpolation error.
    pub stale_frames: u64,
    /// Whether its newest state equals the host's state of that tick (digest).
    pub matches_host: bool,
    /// What happened to its connection, in order.
    pub events: Vec<String>,
}

/// A demo run's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoReport {
    /// The host's last tick.
    pub host_tick: u64,
    /// Per client.
    pub clients: Vec<ClientReport>,
    /// Datagrams lost by the network.
    pub lost: u64,
    /// Datagrams sent through the network.
    pub sent: u64,
    /// What one client's stream would cost without peermesh's encoding, measured on the same
    /// states: every entity every tick as 32 raw bytes (a 4-byte id, a position of three
    /// `f32` and a rotation of four), and every entity every tick quantised (a full
    /// snapshot), in bytes per second.
    pub reference_bytes_per_s: (f64, f64),
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn lerp_pos(host: &Host<DemoWorld, NodeId>, id: EntityId, tick: f64) -> Option<[f64; 3]> {
    let t0 = tick.floor() as u64;
    let a = host.state_at(t0)?.get(id)?.lanes(POSITION)?;
    let b = host
        .state_at(t0 + 1)
        .and_then(|s| s.get(id)?.lanes(POSITION))
        .unwrap_or(a);
    let f = tick - t0 as f64;
    Some([0, 1, 2].map(|k| f64::from(a[k]) + (f64::from(b[k]) - f64::from(a[k])) * f))
}

/// Runs a session; `progress` is called with the fraction done.
pub fn run(
    cfg: &DemoConfig,
    mut progress: impl FnMut(f64),
) -> Result<DemoReport, crate::host::HostError> {
    let start = Instant::now();
    let link = LinkConditions {
        latency: cfg.rtt / 2,
        jitter: cfg.jitter,
        loss: cfg.loss,
        duplicate: cfg.duplicate,
        reorder: cfg.reorder,
    };
    let mut net = SimNet::new(cfg.seed, link);
    let host_addr = net.add_node();
    let mut host = Host::new(
        cfg.sync.clone(),
        schema(),
        world(cfg.seed, cfg.entities, true),
        cfg.seed,
    )?;
    if let Some(r) = cfg.scope_radius {
        host.set_scope(Box::new(crate::scope::OwnerAwareScope {
            nearby: Some((POSITION, r)),
        }));
    }
    let mut clients = Vec::new();
    let mut addrs = Vec::new();
    let mut events: Vec<Vec<String>> = vec![Vec::new(); cfg.clients];
    for i in 0..cfg.clients {
        let addr = net.add_node();
        let mut c = Client::new(
            cfg.sync.clone(),
            schema(),
            world(cfg.seed, 0, false),
            cfg.seed + 1 + i as u64,
            start,
        )?;
        // Stagger the joins a little, as real clients would.
        let _ = i;
        c.connect(start);
        let peer_cell = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let cell = peer_cell.clone();
        c.set_sampler(move |tick, out| out.push(bot_input(PeerId(cell.load(Relaxed)), tick)));
        clients.push((c, peer_cell));
        addrs.push(addr);
    }
    let step = Duration::from_millis(2);
    let frame = Duration::from_nanos(16_666_667);
    let mut now = start;
    let end = start + cfg.duration;
    let mut next_frame = vec![start; cfg.clients];
    let mut errors: Vec<Vec<f64>> = vec![Vec::new(); cfg.clients];
    let mut stale = vec![0u64; cfg.clients];
    let warmup = start + Duration::from_secs(2);
    let mut last_progress = start;
    let mut host_last = start;
    let (mut raw_bytes, mut quantised_bytes) = (0u64, 0u64);
    let mut scratch = Vec::new();
    let mut client_last = vec![start; cfg.clients];
    while now < end {
        now += step;
        if let Some(cut) = cfg.cut {
            let (a, b) = (start + cut.at, start + cut.at + cut.length);
            if let Some(addr) = addrs.get(cut.client) {
                net.set_up(*addr, !(now >= a && now < b));
            }
        }
        // Deliver what is due.
        while let Some(d) = net.poll(now) {
            if d.to == host_addr {
                host.handle(d.at, d.from, &d.payload);
            } else if let Some(i) = addrs.iter().position(|a| *a == d.to) {
                clients[i].0.handle(d.at, &d.payload);
            }
        }
        let stepped = host.tick(now, now - host_last);
        host_last = now;
        if stepped > 0 {
            if let Some(s) = host.latest() {
                raw_bytes += s.len() as u64 * 32;
                let mut w = crate::bits::BitWriter::with_buffer(std::mem::take(&mut scratch));
                let _ = crate::delta::encode(host.schema(), None, s, &mut w);
                scratch = w.finish();
                quantised_bytes += scratch.len() as u64;
            }
        }
        while let Some(ev) = host.poll_event() {
            match ev {
                HostEvent::Joined { peer, .. } => {
                    let store = &mut host.world_mut().store;
                    let id = store.spawn(Some(peer));
                    store.set_lanes(id, POSITION, &[524_288, 524_288 + peer.0 * 1000, 524_288]);
                    store.set_lanes(id, ROTATION, &rotation_lanes([1, 0, 0]));
                }
                HostEvent::Dropped { peer } | HostEvent::Left { peer } => {
                    let store = &mut host.world_mut().store;
                    let mine: Vec<EntityId> = store.owned_by(peer).collect();
                    for id in mine {
                        store.despawn(id);
                    }
                }
                _ => {}
            }
        }
        while let Some((to, bytes)) = host.poll_transmit() {
            net.send(now, host_addr, to, bytes);
        }
        for i in 0..cfg.clients {
            if now < next_frame[i] {
                continue;
            }
            next_frame[i] += frame;
            let (c, cell) = &mut clients[i];
            c.tick(now, now - client_last[i]);
            client_last[i] = now;
            while let Some(ev) = c.poll_event() {
                if let ClientEvent::Connected { peer } = ev {
                    cell.store(peer.0, Relaxed);
                }
                events[i].push(format!("{:.2}s {ev:?}", (now - start).as_secs_f64()));
            }
            if let Some(p) = c.peer() {
                cell.store(p.0, Relaxed);
            }
            while let Some(bytes) = c.poll_transmit() {
                net.send(now, addrs[i], host_addr, bytes);
            }
            if now >= warmup && c.is_live() {
                let newest = c.latest().map_or(0, |s| s.tick());
                let r = c.render(now);
                let rt = r.tick;
                if rt > (newest + u64::from(cfg.sync.render_delay_ticks.1)) as f64 {
                    // Nothing has arrived for longer than the largest render delay (an outage
                    // not yet detected): counted apart, not as interpolation error.
                    stale[i] += 1;
                    continue;
                }
                for (row, lanes) in r.rows() {
                    if row.predicted
                        || row.comp != POSITION
                        || row.id.0 % 2 == 0
                        || row.id.0 % 7 != 1
                    {
                        continue;
                    }
                    if let Some(truth) = lerp_pos(&host, row.id, rt) {
                        let d: f64 = (0..3)
                            .map(|k| (lanes[k] - truth[k]).powi(2))
                            .sum::<f64>()
                            .sqrt();
                        errors[i].push(d);
                    }
                }
            }
        }
        if now - last_progress >= Duration::from_secs(1) {
            last_progress = now;
            progress((now - start).as_secs_f64() / cfg.duration.as_secs_f64());
        }
    }
    progress(1.0);
    let secs = cfg.duration.as_secs_f64();
    let mut reports = Vec::new();
    for (i, (c, _)) in clients.iter().enumerate() {
        let stats = c.stats();
        let peer = c.peer().unwrap_or(PeerId::HOST);
        let hs = host.stats(peer).unwrap_or_default();
        let matches_host = c
            .latest()
            .and_then(|s| {
                let h = host.state_at(s.tick())?;
                // What this client may see of the host's state.
                let seen = match cfg.scope_radius {
                    Some(r) => crate::scope::OwnerAwareScope {
                        nearby: Some((POSITION, r)),
                    }
                    .filter(peer, h)?,
                    None => (**h).clone(),
                };
                Some(seen.digest() == s.digest())
            })
            .unwrap_or(false);
        let mut e = std::mem::take(&mut errors[i]);
        e.sort_by(f64::total_cmp);
        reports.push(ClientReport {
            peer: peer.0,
            bytes_per_s_down: stats.bytes_received as f64 / secs,
            bytes_per_s_up: stats.bytes_sent as f64 / secs,
            entity_updates: hs.entity_updates,
            bytes_per_entity_update: if hs.entity_updates > 0 {
                stats.bytes_received as f64 / hs.entity_updates as f64
            } else {
                0.0
            },
            stats,
            host: hs,
            interp_error_mm: (percentile(&e, 0.5), percentile(&e, 0.99)),
            interp_samples: e.len(),
            stale_frames: stale[i],
            matches_host,
            events: std::mem::take(&mut events[i]),
        });
    }
    let ns = net.stats();
    Ok(DemoReport {
        host_tick: host.current_tick(),
        clients: reports,
        lost: ns.lost,
        sent: ns.sent,
        reference_bytes_per_s: (raw_bytes as f64 / secs, quantised_bytes as f64 / secs),
    })
}

/// What an initial sync costs the host.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InitialSyncFigures {
    /// Entities.
    pub entities: u32,
    /// Bytes of the full snapshot (all fragments, headers included).
    pub bytes: usize,
    /// Datagrams.
    pub datagrams: usize,
    /// Host CPU time to capture and encode it (best of `rounds`).
    pub host_time: Duration,
}

/// Measures the initial sync of a world of `entities` (all moving ones mid-walk).
pub fn initial_sync_figures(entities: u32, rounds: u32) -> InitialSyncFigures {
    use crate::bits::BitWriter;
    use crate::packet::FRAGMENT_PAYLOAD;
    use crate::world::World;
    let mut w = world(7, entities, true);
    for t in 1..=30 {
        w.step(t, &[]);
    }
    let sc = {
        let mut s = schema();
        s.freeze();
        s
    };
    let mut best = Duration::MAX;
    let mut bytes = 0;
    let mut datagrams = 0;
    for _ in 0..rounds.max(1) {
        let t0 = Instant::now();
        let mut snap = crate::Snapshot::new(30);
        w.capture(&mut snap);
        snap.seal();
        let mut out = BitWriter::new();
        let _ = crate::delta::encode(&sc, None, &snap, &mut out);
        let body = out.finish();
        let mut total = 0;
        let mut n = 0;
        for chunk in body.chunks(FRAGMENT_PAYLOAD) {
            let d = crate::packet::ToClient::State {
                pong: None,
                input_ack: None,
                depth_16: 0,
                host_tick: 30,
                tick: 30,
                baseline: None,
                index: n as u16,
                count: body.len().div_ceil(FRAGMENT_PAYLOAD) as u16,
                payload: bytes::Bytes::copy_from_slice(chunk),
            }
            .encode();
            total += d.len();
            n += 1;
        }
        best = best.min(t0.elapsed());
        bytes = total;
        datagrams = n;
    }
    InitialSyncFigures {
        entities,
        bytes,
        datagrams,
        host_time: best,
    }
}

/// Measures a client's rollback: restore the host's state and replay `ticks` ticks of
/// inputs for `entities` predicted entities (best of `rounds`).
pub fn replay_figures(entities: u32, ticks: u64, rounds: u32) -> Duration {
    use crate::world::World;
    let me = PeerId(1);
    let mut host = world(3, 0, true);
    for _ in 0..entities {
        let id = host.store.spawn(Some(me));
        host.store
            .set_lanes(id, POSITION, &[500_000, 500_000, 500_000]);
        host.store
            .set_lanes(id, ROTATION, &rotation_lanes([1, 0, 0]));
    }
    let mut auth = crate::Snapshot::new(0);
    host.capture(&mut auth);
    auth.seal();
    let mut client = world(3, 0, false);
    let mut best = Duration::MAX;
    for _ in 0..rounds.max(1) {
        let t0 = Instant::now();
        client.restore(&auth);
        let mut out = crate::Snapshot::new(0);
        for t in 1..=ticks {
            client.step(
                t,
                &[PeerInput {
                    peer: me,
                    actions: vec![bot_input(me, t)],
                }],
            );
            out.clear(t);
            client.capture(&mut out);
            out.seal();
        }
        best = best.min(t0.elapsed());
        std::hint::black_box(&out);
    }
    best
}
