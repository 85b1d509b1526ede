//! A discrete-event simulator that runs the real [`Node`] core over an in-memory network.
//!
//! Every node listens at `ws://sim/N`; links have a fixed one-way latency per pair of nodes
//! (drawn once, uniform in `latency`), frames on a link arrive in order, and time is virtual,
//! so a run is a pure function of its [`SimConfig`] (seed included). Nodes join one after the
//! other, each bootstrapping from one random earlier node (as in peer-relay's own tests);
//! the network then settles, and messages are sent between random live nodes while, with
//! churn, nodes are replaced evenly over the sending phase.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::id::NodeId;
use crate::node::{LinkId, Node, NodeConfig, NodeEvent, Output};
use crate::wire::peer_relay::RawJson;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Nodes in the network (kept constant under churn).
    pub nodes: usize,
    /// Fraction of the nodes replaced, evenly over the sending phase.
    pub churn: f64,
    /// Messages sent, each from a random live node to another.
    pub messages: usize,
    /// Seed of everything random.
    pub seed: u64,
    /// The nodes' options (the connection rule among them).
    pub node: NodeConfig,
    /// Range of one-way link latency.
    pub latency: (Duration, Duration),
    /// Time between two joins.
    pub join_interval: Duration,
    /// Time between the last join and the first message.
    pub settle: Duration,
    /// Time between two messages.
    pub send_interval: Duration,
    /// Joining nodes whose reachability is measured (after the network has formed).
    pub join_probes: usize,
    /// Senders per join probe.
    pub probe_senders: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            nodes: 1000,
            churn: 0.0,
            messages: 10_000,
            seed: 1,
            node: NodeConfig::default(),
            latency: (Duration::from_millis(5), Duration::from_millis(40)),
            join_interval: Duration::from_millis(20),
            settle: Duration::from_secs(130),
            send_interval: Duration::from_millis(5),
            join_probes: 5,
            probe_senders: 100,
        }
    }
}

/// The results of a run.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SimReport {
    /// Nodes.
    pub nodes: usize,
    /// Connection rule, `buckets` or `closest`.
    pub rule: &'static str,
    /// Churn fraction.
    pub churn: f64,
    /// Messages counted (target alive from send until 5 s after).
    pub counted: usize,
    /// Of those, delivered.
    pub delivered: usize,
    /// `delivered / counted`.
    pub delivery: f64,
    /// Mean hops of delivered messages (links crossed).
    pub mean_hops: f64,
    /// 99th percentile of hops.
    pub p99_hops: u64,
    /// Copies of user messages dropped as duplicates, per delivered message (during the
    /// sending phase; control traffic is not counted).
    pub duplicates_per_delivery: f64,
    /// Messages handled per live node during the sending phase (mean).
    pub handled_per_node: f64,
    /// The most any node handled.
    pub handled_max: u64,
    /// Mean links per node at the start of the sending phase.
    pub mean_links: f64,
    /// Share of (node, non-empty k-bucket) pairs in which the node has a link, at the start
    /// of the sending phase: 1.0 means greedy routing always finds a closer hop.
    pub bucket_coverage: f64,
    /// Join probes run.
    pub join_probes: usize,
    /// Senders the probes were sent from, in total (under churn, those that stayed).
    pub join_senders: usize,
    /// Of those, heard by the joining node within 30 round trips of its first link.
    pub join_heard: usize,
    /// The slowest sender heard by a joining node, in round trips after its first link.
    pub join_round_trips_max: f64,
    /// The median sender, in round trips after the first link (over all probes).
    pub join_round_trips_p50: f64,
    /// The 90th percentile sender, in round trips after the first link (over all probes).
    pub join_round_trips_p90: f64,
    /// The bound `2 + 2 × mean_hops` the issue sets for it.
    pub join_round_trips_bound: f64,
    /// Mean one-way latency, ms.
    pub mean_latency_ms: f64,
    /// Virtual time simulated, s.
    pub virtual_secs: f64,
    /// Events processed.
    pub events: u64,
    /// Traffic per phase of the run (join, settle, send): what the network spends on itself.
    pub phases: Vec<PhaseTraffic>,
}

/// What the network did during one phase of a run, per live node and second of virtual time.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PhaseTraffic {
    /// `join`, `settle` or `send`.
    pub phase: &'static str,
    /// Virtual seconds the phase lasted.
    pub secs: f64,
    /// Frames delivered over links, per node per second.
    pub frames: f64,
    /// Links opened (inbound connections accepted), per node per second.
    pub links_opened: f64,
    /// Link ends closed, per node per second.
    pub links_closed: f64,
    /// Handshake offers sent, per node per second.
    pub offers: f64,
}

/// Running counts of what the simulator carried.
#[derive(Debug, Clone, Copy, Default)]
struct Tally {
    frames: u64,
    accepts: u64,
    closes: u64,
}

#[derive(Debug)]
enum Ev {
    Join(usize),
    Kill(usize),
    Send(usize),
    Timer(usize),
    Accept {
        from: usize,
        link: LinkId,
        to: usize,
    },
    Up {
        node: usize,
        link: LinkId,
    },
    Deliver {
        node: usize,
        link: LinkId,
        frame: Bytes,
    },
    Closed {
        node: usize,
        link: LinkId,
    },
    ProbeSend {
        probe: usize,
        sender: usize,
    },
}

struct Slot {
    node: Option<Node>,
    /// When the node wants to be woken (its `poll_timeout` after its last pump).
    timer: Option<Instant>,
    /// The earliest wake-up event queued for it that has not fired yet. A wake-up is queued
    /// only when the wanted time is earlier than this one; a later wanted time is queued when
    /// the earlier event fires. Re-arming a timer to a later time (the common case) thus adds
    /// nothing to the queue.
    armed: Option<Instant>,
    born: Instant,
    died: Option<Instant>,
    joined: bool,
}

struct MsgRec {
    to: usize,
    sent: Instant,
    hops: Option<u64>,
}

struct Probe {
    node: usize,
    first_link: Option<Instant>,
    senders: Vec<usize>,
    heard: HashMap<usize, Instant>,
    /// Senders that left the network (churn) before they were heard: not counted.
    gone: HashSet<usize>,
}

/// Progress of a run: (phase, done, total).
pub type Progress<'a> = &'a mut dyn FnMut(&'static str, u64, u64);

/// An event in the queue, ordered by time, then by scheduling order (which keeps a run a pure
/// function of its configuration).
struct Queued {
    when: Instant,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.when, self.seq) == (other.when, other.seq)
    }
}

impl Eq for Queued {}

impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Queued {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.when, self.seq).cmp(&(other.when, other.seq))
    }
}

/// The simulator. Build it with [`Sim::new`] and [`Sim::run`] it.
pub struct Sim {
    cfg: SimConfig,
    t0: Instant,
    now: Instant,
    /// Pending events, earliest first (ties in scheduling order); each holds its event, so
    /// no side table is looked up per event.
    queue: BinaryHeap<Reverse<Queued>>,
    seq: u64,
    slots: Vec<Slot>,
    pairs: HashMap<(usize, LinkId), (usize, LinkId)>,
    rng: StdRng,
    msgs: Vec<MsgRec>,
    by_id: HashMap<NodeId, usize>,
    probes: Vec<Probe>,
    events: u64,
    latency_seed: u64,
    tally: Tally,
    phases: Vec<PhaseTraffic>,
}

impl Sim {
    /// A simulator for `cfg`; fails when the node options are invalid.
    pub fn new(cfg: SimConfig) -> Result<Self, crate::manager::ConfigError> {
        cfg.node.manager_config()?;
        let t0 = Instant::now();
        Ok(Self {
            rng: StdRng::seed_from_u64(cfg.seed),
            latency_seed: cfg.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            cfg,
            t0,
            now: t0,
            queue: BinaryHeap::new(),
            seq: 0,
            slots: Vec::new(),
            pairs: HashMap::new(),
            msgs: Vec::new(),
            by_id: HashMap::new(),
            probes: Vec::new(),
            events: 0,
            tally: Tally::default(),
            phases: Vec::new(),
        })
    }

    fn at(&mut self, when: Instant, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse(Queued {
            when,
            seq: self.seq,
            ev,
        }));
    }

    fn latency(&self, a: usize, b: usize) -> Duration {
        let (lo, hi) = (a.min(b) as u64, a.max(b) as u64);
        let mut x = lo
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .wrapping_add(hi)
            .wrapping_mul(0xbf58_476d_1ce4_e5b9)
            ^ self.latency_seed;
        x ^= x >> 31;
        x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^= x >> 29;
        let (min, max) = self.cfg.latency;
        let span = max.saturating_sub(min).as_nanos() as u64;
        min + Duration::from_nanos(if span == 0 { 0 } else { x % span })
    }

    /// Alive and joined (so reachable and known to someone).
    fn alive(&self, i: usize) -> bool {
        self.slots
            .get(i)
            .is_some_and(|s| s.node.is_some() && s.joined)
    }

    fn random_alive(&mut self, except: Option<usize>) -> Option<usize> {
        let n = self.slots.len();
        for _ in 0..64 {
            let i = self.rng.random_range(0..n.max(1));
            if self.alive(i) && Some(i) != except {
                return Some(i);
            }
        }
        (0..n).find(|&i| self.alive(i) && Some(i) != except)
    }

    fn spawn(&mut self) -> usize {
        let i = self.slots.len();
        let seed = self.rng.random();
        let node = Node::new(
            self.cfg.node.clone(),
            Some(format!("ws://sim/{i}")),
            self.now,
            seed,
        );
        let node = match node {
            Ok(n) => n,
            // `Sim::new` validated the options.
            Err(e) => unreachable!("node options checked in Sim::new: {e}"),
        };
        self.by_id.insert(node.id(), i);
        self.slots.push(Slot {
            node: Some(node),
            timer: None,
            armed: None,
            born: self.now,
            died: None,
            joined: false,
        });
        i
    }

    fn join(&mut self, i: usize) {
        let boot = self.random_alive(Some(i));
        self.slots[i].joined = true;
        self.slots[i].born = self.now;
        if let (Some(b), Some(node)) = (boot, self.slots[i].node.as_mut()) {
            node.bootstrap(&format!("ws://sim/{b}"), self.now);
        }
        self.pump(i);
    }

    /// Carries out a node's outputs and collects its events, then re-arms its timer.
    fn pump(&mut self, i: usize) {
        let now = self.now;
        loop {
            let Some(node) = self.slots[i].node.as_mut() else {
                return;
            };
            let mut outs = Vec::new();
            while let Some(o) = node.poll_output() {
                outs.push(o);
            }
            let mut evs = Vec::new();
            while let Some(e) = node.poll_event() {
                evs.push(e);
            }
            if outs.is_empty() && evs.is_empty() {
                break;
            }
            for o in outs {
                match o {
                    Output::Transmit { link, frame } => {
                        if let Some(&(peer, plink)) = self.pairs.get(&(i, link)) {
                            let t = now + self.latency(i, peer);
                            self.at(
                                t,
                                Ev::Deliver {
                                    node: peer,
                                    link: plink,
                                    frame,
                                },
                            );
                        }
                    }
                    Output::Dial { link, url } => {
                        let target = url
                            .strip_prefix("ws://sim/")
                            .and_then(|s| s.parse::<usize>().ok());
                        match target {
                            Some(t) if self.alive(t) && t != i => {
                                let when = now + self.latency(i, t);
                                self.at(
                                    when,
                                    Ev::Accept {
                                        from: i,
                                        link,
                                        to: t,
                                    },
                                );
                            }
                            _ => {
                                let when = now + Duration::from_millis(1);
                                self.at(when, Ev::Closed { node: i, link });
                            }
                        }
                    }
                    Output::Close { link, .. } => {
                        if let Some((peer, plink)) = self.pairs.remove(&(i, link)) {
                            self.pairs.remove(&(peer, plink));
                            let when = now + self.latency(i, peer);
                            self.at(
                                when,
                                Ev::Closed {
                                    node: peer,
                                    link: plink,
                                },
                            );
                        }
                        self.at(now, Ev::Closed { node: i, link });
                    }
                }
            }
            for e in evs {
                self.on_event(i, e);
            }
        }
        let next = self.slots[i].node.as_ref().and_then(|n| n.poll_timeout());
        let next = next.map(|t| t.max(now));
        self.slots[i].timer = next;
        if let Some(t) = next {
            if self.slots[i].armed.is_none_or(|a| t < a) {
                self.slots[i].armed = Some(t);
                self.at(t, Ev::Timer(i));
            }
        }
    }

    fn on_event(&mut self, i: usize, e: NodeEvent) {
        match e {
            NodeEvent::Message { data, path, from } => {
                let v = data.to_value();
                if let Some(m) = v.get("m").and_then(|m| m.as_u64()) {
                    if let Some(rec) = self.msgs.get_mut(m as usize) {
                        if rec.to == i && rec.hops.is_none() {
                            rec.hops = Some(path.len() as u64);
                        }
                    }
                } else if let Some(p) = v.get("probe").and_then(|p| p.as_u64()) {
                    let sender = self.by_id.get(&from).copied();
                    let now = self.now;
                    if let (Some(probe), Some(s)) = (self.probes.get_mut(p as usize), sender) {
                        if probe.node == i {
                            probe.heard.entry(s).or_insert(now);
                        }
                    }
                }
            }
            NodeEvent::PeerConnected(_) => {
                let now = self.now;
                let rtt = self.rtt();
                let mut to_schedule = Vec::new();
                for (pi, p) in self.probes.iter_mut().enumerate() {
                    if p.node == i && p.first_link.is_none() {
                        p.first_link = Some(now);
                        to_schedule.push(pi);
                    }
                }
                for pi in to_schedule {
                    let senders = self.probes[pi].senders.clone();
                    for s in senders {
                        self.at(
                            now + rtt / 2,
                            Ev::ProbeSend {
                                probe: pi,
                                sender: s,
                            },
                        );
                    }
                }
            }
            NodeEvent::PeerGone(_) => {}
        }
    }

    fn rtt(&self) -> Duration {
        // Twice the mean one-way latency.
        self.cfg.latency.0 + self.cfg.latency.1
    }

    fn step(&mut self, ev: Ev) {
        self.events += 1;
        let now = self.now;
        match ev {
            Ev::Join(i) => self.join(i),
            Ev::Kill(i) => {
                if let Some(node) = self.slots[i].node.as_mut() {
                    node.destroy(now);
                }
                self.pump(i);
                self.slots[i].node = None;
                self.slots[i].died = Some(now);
                // The links it had are cut; its peers see them close.
                let cut: Vec<((usize, LinkId), (usize, LinkId))> = self
                    .pairs
                    .iter()
                    .filter(|(k, _)| k.0 == i)
                    .map(|(k, v)| (*k, *v))
                    .collect();
                for (k, (peer, plink)) in cut {
                    self.pairs.remove(&k);
                    self.pairs.remove(&(peer, plink));
                    let when = now + self.latency(i, peer);
                    self.at(
                        when,
                        Ev::Closed {
                            node: peer,
                            link: plink,
                        },
                    );
                }
            }
            Ev::Send(m) => {
                let Some(to) = self.random_alive(None) else {
                    return;
                };
                let Some(from) = self.random_alive(Some(to)) else {
                    return;
                };
                let Some(target_id) = self.slots[to].node.as_ref().map(|n| n.id()) else {
                    return;
                };
                if let Some(rec) = self.msgs.get_mut(m) {
                    rec.to = to;
                    rec.sent = now;
                }
                let data = RawJson::from_value(&serde_json::json!({ "m": m }));
                if let Some(node) = self.slots[from].node.as_mut() {
                    node.send(target_id, data, now);
                }
                self.pump(from);
            }
            Ev::ProbeSend { probe, sender } => {
                if !self.alive(sender) {
                    let p = &mut self.probes[probe];
                    if !p.heard.contains_key(&sender) {
                        p.gone.insert(sender);
                    }
                    return;
                }
                let p = &self.probes[probe];
                if p.heard.contains_key(&sender) {
                    return;
                }
                let first = p.first_link.unwrap_or(now);
                let target = p.node;
                let bound = Duration::from_secs_f64(self.rtt().as_secs_f64() * 30.0);
                if now > first + bound {
                    return;
                }
                let Some(target_id) = self.slots[target].node.as_ref().map(|n| n.id()) else {
                    return;
                };
                let data = RawJson::from_value(&serde_json::json!({ "probe": probe }));
                if let Some(node) = self.slots[sender].node.as_mut() {
                    node.send(target_id, data, now);
                    self.pump(sender);
                }
                let again = now + self.rtt() / 2;
                self.at(again, Ev::ProbeSend { probe, sender });
            }
            Ev::Timer(i) => {
                if self.slots[i].armed == Some(now) {
                    self.slots[i].armed = None;
                }
                match self.slots[i].timer {
                    Some(t) if t <= now => {}
                    Some(t) => {
                        // Wanted later than this event: queue that time unless an earlier
                        // wake-up is still queued.
                        if self.slots[i].armed.is_none_or(|a| t < a) {
                            self.slots[i].armed = Some(t);
                            self.at(t, Ev::Timer(i));
                        }
                        return;
                    }
                    None => return,
                }
                self.slots[i].timer = None;
                if let Some(node) = self.slots[i].node.as_mut() {
                    node.handle_timeout(now);
                }
                self.pump(i);
            }
            Ev::Accept { from, link, to } => {
                if !self.alive(from) {
                    return;
                }
                let Some(node) = self.slots[to].node.as_mut() else {
                    let when = now + self.latency(from, to);
                    self.at(when, Ev::Closed { node: from, link });
                    return;
                };
                self.tally.accepts += 1;
                let inbound = node.handle_inbound(now);
                self.pairs.insert((to, inbound), (from, link));
                self.pairs.insert((from, link), (to, inbound));
                let when = now + self.latency(from, to);
                self.at(when, Ev::Up { node: from, link });
                self.pump(to);
            }
            Ev::Up { node: i, link } => {
                if !self.pairs.contains_key(&(i, link)) {
                    return;
                }
                if let Some(node) = self.slots[i].node.as_mut() {
                    node.handle_link_up(link, now);
                }
                self.pump(i);
            }
            Ev::Deliver {
                node: i,
                link,
                frame,
            } => {
                self.tally.frames += 1;
                if let Some(node) = self.slots[i].node.as_mut() {
                    node.handle_frame(link, &frame, now);
                }
                self.pump(i);
            }
            Ev::Closed { node: i, link } => {
                self.tally.closes += 1;
                if let Some(node) = self.slots[i].node.as_mut() {
                    node.handle_link_closed(link, now);
                }
                self.pump(i);
            }
        }
    }

    /// Runs events until `until`.
    fn run_until(&mut self, until: Instant, progress: Progress<'_>, phase: &'static str) {
        let start = self.now;
        let tally0 = self.tally;
        let offers0 = self.offers_sum();
        let total = until.saturating_duration_since(start).as_millis() as u64;
        let mut last = 0u64;
        while self.queue.peek().is_some_and(|Reverse(q)| q.when <= until) {
            let Some(Reverse(q)) = self.queue.pop() else {
                break;
            };
            let t = q.when;
            self.now = t;
            self.step(q.ev);
            let done = t.saturating_duration_since(start).as_millis() as u64;
            if done >= last + 250 {
                last = done;
                progress(phase, done, total);
            }
        }
        self.now = until.max(self.now);
        progress(phase, total, total);
        let secs = self.now.saturating_duration_since(start).as_secs_f64();
        let live = self.slots.iter().filter(|s| s.node.is_some()).count();
        let per = |x: u64| x as f64 / (secs.max(1e-9) * live.max(1) as f64);
        self.phases.push(PhaseTraffic {
            phase,
            secs,
            frames: per(self.tally.frames - tally0.frames),
            links_opened: per(self.tally.accepts - tally0.accepts),
            links_closed: per(self.tally.closes - tally0.closes),
            offers: per(self.offers_sum().saturating_sub(offers0)),
        });
    }

    /// Handshake offers sent by the live nodes so far.
    fn offers_sum(&self) -> u64 {
        self.slots
            .iter()
            .filter_map(|s| s.node.as_ref())
            .map(|n| n.stats().offers)
            .sum()
    }

    fn stats_sum(&self) -> (u64, u64, HashMap<usize, u64>) {
        let mut dup = 0;
        let mut handled = 0;
        let mut per = HashMap::new();
        for (i, s) in self.slots.iter().enumerate() {
            if let Some(n) = &s.node {
                dup += n.stats().user_duplicates;
                handled += n.stats().handled;
                per.insert(i, n.stats().handled);
            }
        }
        (dup, handled, per)
    }

    /// The share of (node, non-empty bucket) pairs with a link in the bucket.
    fn bucket_coverage(&self) -> f64 {
        let ids: Vec<NodeId> = self
            .slots
            .iter()
            .filter_map(|s| s.node.as_ref().map(|n| n.id()))
            .collect();
        let mut have = 0u64;
        let mut want = 0u64;
        for s in &self.slots {
            let Some(n) = &s.node else { continue };
            let me = n.id();
            let mut nonempty = [false; crate::id::BUCKETS];
            for o in &ids {
                if let Some(b) = me.bucket_of(o) {
                    nonempty[b] = true;
                }
            }
            let mut linked = [false; crate::id::BUCKETS];
            for p in n.peers() {
                if let Some(b) = me.bucket_of(&p) {
                    linked[b] = true;
                }
            }
            for b in 0..crate::id::BUCKETS {
                if nonempty[b] {
                    want += 1;
                    if linked[b] {
                        have += 1;
                    }
                }
            }
        }
        if want == 0 {
            1.0
        } else {
            have as f64 / want as f64
        }
    }

    /// A node that joins at `when`, and the senders that will send to it from its first link.
    fn add_probe(&mut self, when: Instant) {
        let i = self.spawn();
        // Distinct senders, drawn without replacement.
        let mut senders: Vec<usize> = (0..self.slots.len()).filter(|&s| self.alive(s)).collect();
        let k = self.cfg.probe_senders.min(senders.len());
        for j in 0..k {
            let pick = self.rng.random_range(j..senders.len());
            senders.swap(j, pick);
        }
        senders.truncate(k);
        senders.sort_unstable();
        self.probes.push(Probe {
            node: i,
            first_link: None,
            senders,
            heard: HashMap::new(),
            gone: HashSet::new(),
        });
        self.at(when, Ev::Join(i));
    }

    /// Runs the whole scenario.
    pub fn run(mut self, progress: Progress<'_>) -> SimReport {
        let n = self.cfg.nodes.max(2);
        // Join phase.
        for k in 0..n {
            let i = self.spawn();
            let when = self.t0 + self.cfg.join_interval * k as u32;
            self.at(when, Ev::Join(i));
        }
        let joined = self.t0 + self.cfg.join_interval * n as u32;
        self.run_until(joined, progress, "join");
        // Join probes: newcomers after the network formed (under churn: while it churns).
        if self.cfg.churn <= 0.0 {
            for p in 0..self.cfg.join_probes {
                let when = joined + self.cfg.settle / 2 + Duration::from_secs(2) * p as u32;
                self.add_probe(when);
            }
        }
        let start = joined + self.cfg.settle;
        self.run_until(start, progress, "settle");
        let links: usize = self
            .slots
            .iter()
            .filter_map(|s| s.node.as_ref())
            .map(|n| n.peer_count())
            .sum();
        let live = self.slots.iter().filter(|s| s.node.is_some()).count();
        let bucket_coverage = self.bucket_coverage();
        let (dup0, handled0, per0) = self.stats_sum();
        // Sending phase, with churn spread evenly over it.
        let m = self.cfg.messages;
        let send_span = self.cfg.send_interval * m as u32;
        let kills = ((self.cfg.churn * n as f64).round() as usize).min(n);
        let mut victims: Vec<usize> = (0..n).collect();
        for k in 0..kills {
            let j = self.rng.random_range(k..victims.len());
            victims.swap(k, j);
        }
        for (k, &v) in victims.iter().take(kills).enumerate() {
            let t = start + send_span.mul_f64((k as f64 + 0.5) / kills as f64);
            self.at(t, Ev::Kill(v));
            let newcomer = self.spawn();
            self.at(t + Duration::from_millis(1), Ev::Join(newcomer));
        }
        if self.cfg.churn > 0.0 {
            let probes = self.cfg.join_probes;
            for p in 0..probes {
                let when = start + send_span.mul_f64((p as f64 + 1.0) / (probes as f64 + 1.0));
                self.add_probe(when);
            }
        }
        for k in 0..m {
            self.msgs.push(MsgRec {
                to: usize::MAX,
                sent: start,
                hops: None,
            });
            let t = start + self.cfg.send_interval * k as u32;
            self.at(t, Ev::Send(k));
        }
        let end = start + send_span + Duration::from_secs(10);
        self.run_until(end, progress, "send");
        let (dup1, handled1, per1) = self.stats_sum();

        // Count the messages whose target was alive from send until 5 s after.
        let mut counted = 0;
        let mut delivered = 0;
        let mut hops = Vec::new();
        let mut seen_targets = HashSet::new();
        for rec in &self.msgs {
            let Some(s) = self.slots.get(rec.to) else {
                continue;
            };
            let alive_at_send = s.born <= rec.sent;
            let alive_after = s
                .died
                .is_none_or(|d| d >= rec.sent + Duration::from_secs(5));
            if !(alive_at_send && alive_after) {
                continue;
            }
            seen_targets.insert(rec.to);
            counted += 1;
            if let Some(h) = rec.hops {
                delivered += 1;
                hops.push(h);
            }
        }
        hops.sort_unstable();
        let mean_hops = if hops.is_empty() {
            0.0
        } else {
            hops.iter().sum::<u64>() as f64 / hops.len() as f64
        };
        let p99 = hops
            .get(((hops.len() as f64) * 0.99).ceil() as usize)
            .or(hops.last())
            .copied()
            .unwrap_or(0);
        let rtt = self.rtt().as_secs_f64();
        let mut heard = 0;
        let mut senders = 0;
        let mut times: Vec<f64> = Vec::new();
        for p in &self.probes {
            heard += p.heard.len();
            senders += p.senders.len() - p.gone.len();
            if let Some(first) = p.first_link {
                for t in p.heard.values() {
                    times.push(t.saturating_duration_since(first).as_secs_f64() / rtt);
                }
            }
        }
        times.sort_by(f64::total_cmp);
        let worst = times.last().copied().unwrap_or(0.0);
        let quantile = |q: f64| {
            times
                .get(((times.len() as f64 * q) as usize).min(times.len().saturating_sub(1)))
                .copied()
                .unwrap_or(0.0)
        };
        let alive_end = per1.len().max(1);
        SimReport {
            nodes: n,
            rule: match self.cfg.node.rule {
                crate::node::ConnectionRule::Buckets => "buckets",
                crate::node::ConnectionRule::Closest => "closest",
            },
            churn: self.cfg.churn,
            counted,
            delivered,
            delivery: if counted == 0 {
                0.0
            } else {
                delivered as f64 / counted as f64
            },
            mean_hops,
            p99_hops: p99,
            duplicates_per_delivery: if delivered == 0 {
                0.0
            } else {
                dup1.saturating_sub(dup0) as f64 / delivered as f64
            },
            handled_per_node: handled1.saturating_sub(handled0) as f64 / alive_end as f64,
            handled_max: per1
                .iter()
                .map(|(i, h)| h.saturating_sub(per0.get(i).copied().unwrap_or(0)))
                .max()
                .unwrap_or(0),
            mean_links: links as f64 / live.max(1) as f64,
            bucket_coverage,
            join_probes: self.probes.len(),
            join_senders: senders,
            join_heard: heard,
            join_round_trips_max: worst,
            join_round_trips_p50: quantile(0.5),
            join_round_trips_p90: quantile(0.9),
            join_round_trips_bound: 2.0 + 2.0 * mean_hops,
            mean_latency_ms: rtt * 1000.0 / 2.0,
            virtual_secs: self.now.saturating_duration_since(self.t0).as_secs_f64(),
            events: self.events,
            phases: std::mem::take(&mut self.phases),
        }
    }
}
