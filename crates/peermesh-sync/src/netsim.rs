//! A deterministic in-memory datagram network for tests and demos.
//!
//! Time is virtual: every call takes the `Instant` the caller says it is, and a packet's fate
//! (lost, delayed, duplicated, held back) comes from one seeded generator drawn a fixed number
//! of times per send. Only differences between instants matter, so the same seed and the same
//! calls give the same deliveries, whatever base instant a run starts from.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use bytes::Bytes;
//! use peermesh_sync::{LinkConditions, SimNet};
//!
//! let t0 = Instant::now();
//! let link = LinkConditions::with_rtt(Duration::from_millis(100), Duration::ZERO, 0.0);
//! let mut net = SimNet::new(7, link);
//! let (a, b) = (net.add_node(), net.add_node());
//! net.send(t0, a, b, Bytes::from_static(b"hi"));
//! assert!(net.poll(t0 + Duration::from_millis(49)).is_none());
//! let d = net.poll(t0 + Duration::from_millis(50)).expect("due");
//! assert_eq!((d.from, d.to, &d.payload[..]), (a, b, &b"hi"[..]));
//! ```

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How one direction of a link treats packets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkConditions {
    /// One-way delay every packet takes.
    pub latency: Duration,
    /// Extra delay, uniform in `[0, jitter]`, drawn per packet.
    pub jitter: Duration,
    /// Chance a packet is lost, independently per packet, in `[0, 1]`.
    pub loss: f64,
    /// Chance a packet is delivered twice (the copy draws its own jitter), in `[0, 1]`.
    pub duplicate: f64,
    /// Chance a packet is held back by one extra one-way latency, in `[0, 1]`.
    pub reorder: f64,
}

impl Default for LinkConditions {
    /// A perfect link: no delay, no loss, nothing duplicated or held back.
    fn default() -> Self {
        Self {
            latency: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
        }
    }
}

impl LinkConditions {
    /// A link with a round-trip time of `rtt` (half of it each way), `jitter` and `loss`.
    pub fn with_rtt(rtt: Duration, jitter: Duration, loss: f64) -> Self {
        Self {
            latency: rtt / 2,
            jitter,
            loss,
            ..Self::default()
        }
    }

    /// Checks that every probability is a finite number in `[0, 1]`.
    pub fn validate(&self) -> Result<(), NetSimError> {
        for (field, value) in [
            ("loss", self.loss),
            ("duplicate", self.duplicate),
            ("reorder", self.reorder),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(NetSimError::BadProbability { field, value });
            }
        }
        Ok(())
    }
}

/// Link conditions that cannot work.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NetSimError {
    /// A probability is not a finite number in `[0, 1]`.
    #[error("link `{field}` is {value}: it must be a probability between 0 and 1")]
    BadProbability {
        /// The field's name.
        field: &'static str,
        /// The rejected value.
        value: f64,
    },
}

/// A node of a [`SimNet`], numbered from 0 in the order they were added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u32);

/// A packet handed to its receiver by [`SimNet::poll`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The sender.
    pub from: NodeId,
    /// The receiver.
    pub to: NodeId,
    /// The bytes sent.
    pub payload: Bytes,
    /// When the packet was due.
    pub at: Instant,
}

/// Packet counters, for the whole network or for one receiving node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Packets sent.
    pub sent: u64,
    /// Packets delivered (a duplicated packet counts twice).
    pub delivered: u64,
    /// Packets lost on the link, or dropped because too many were in flight.
    pub lost: u64,
    /// Extra copies put on the link.
    pub duplicated: u64,
    /// Packets held back by an extra latency.
    pub reordered: u64,
    /// Packets dropped because the sender or receiver was down (or unknown).
    pub cut: u64,
    /// Payload bytes sent.
    pub bytes_sent: u64,
    /// Payload bytes delivered.
    pub bytes_delivered: u64,
}

/// A packet on its way.
#[derive(Debug)]
struct InFlight {
    due: Instant,
    seq: u64,
    from: NodeId,
    to: NodeId,
    payload: Bytes,
}

impl PartialEq for InFlight {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for InFlight {}

impl PartialOrd for InFlight {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for InFlight {
    /// Reversed, so the max-heap pops the earliest due packet, then the earliest sent.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

/// The number of packets that may be in flight unless [`SimNet::set_max_in_flight`] says
/// otherwise.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1_000_000;

/// A deterministic network of nodes exchanging datagrams in virtual time.
#[derive(Debug)]
pub struct SimNet {
    rng: StdRng,
    default: LinkConditions,
    links: BTreeMap<(NodeId, NodeId), LinkConditions>,
    up: Vec<bool>,
    per_node: Vec<NetStats>,
    total: NetStats,
    queue: BinaryHeap<InFlight>,
    next_seq: u64,
    max_in_flight: usize,
}

/// `p` as a usable probability: non-finite values count as 0, the rest are clamped.
fn probability(p: f64) -> f64 {
    if p.is_finite() {
        p.clamp(0.0, 1.0)
    } else {
        0.0
    }
}

/// `d` scaled by `f` in `[0, 1)`, without the panic of `Duration::mul_f64` near the top of
/// the range.
fn scaled(d: Duration, f: f64) -> Duration {
    Duration::try_from_secs_f64(d.as_secs_f64() * f)
        .unwrap_or(d)
        .min(d)
}

impl SimNet {
    /// An empty network whose links all behave as `default` unless [`set_link`](Self::set_link)
    /// says otherwise. Probabilities outside `[0, 1]` are clamped and non-finite ones count as
    /// 0; use [`LinkConditions::validate`] to reject them instead.
    pub fn new(seed: u64, default: LinkConditions) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            default,
            links: BTreeMap::new(),
            up: Vec::new(),
            per_node: Vec::new(),
            total: NetStats::default(),
            queue: BinaryHeap::new(),
            next_seq: 0,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
        }
    }

    /// Adds a node, up.
    pub fn add_node(&mut self) -> NodeId {
        let id = NodeId(u32::try_from(self.up.len()).unwrap_or(u32::MAX));
        self.up.push(true);
        self.per_node.push(NetStats::default());
        id
    }

    /// Sets the conditions of the direction `from` → `to` (the other direction is unchanged).
    pub fn set_link(&mut self, from: NodeId, to: NodeId, c: LinkConditions) {
        self.links.insert((from, to), c);
    }

    /// The conditions of the direction `from` → `to`.
    pub fn link(&self, from: NodeId, to: NodeId) -> LinkConditions {
        self.links.get(&(from, to)).copied().unwrap_or(self.default)
    }

    /// Takes a node down or brings it back. A node that is down neither sends nor receives:
    /// packets from or to it are cut, including those already in flight when they fall due.
    pub fn set_up(&mut self, node: NodeId, up: bool) {
        if let Some(slot) = self.up.get_mut(node.0 as usize) {
            *slot = up;
        }
    }

    /// Whether `node` exists and is up.
    pub fn is_up(&self, node: NodeId) -> bool {
        self.up.get(node.0 as usize).copied().unwrap_or(false)
    }

    /// Sets how many packets may be in flight at once; later sends beyond it are lost.
    pub fn set_max_in_flight(&mut self, max: usize) {
        self.max_in_flight = max;
    }

    /// The number of packets in flight (including those that will be cut when due).
    pub fn in_flight(&self) -> usize {
        self.queue.len()
    }

    /// Puts `payload` on the link `from` → `to` at `now`.
    pub fn send(&mut self, now: Instant, from: NodeId, to: NodeId, payload: Bytes) {
        let len = payload.len() as u64;
        self.count(to, |s| {
            s.sent += 1;
            s.bytes_sent += len;
        });
        // Always the same draws per send, so one packet's fate does not shift the next's.
        let roll_loss = self.rng.random::<f64>();
        let roll_jitter = self.rng.random::<f64>();
        let roll_reorder = self.rng.random::<f64>();
        let roll_duplicate = self.rng.random::<f64>();
        let roll_copy_jitter = self.rng.random::<f64>();

        if !self.is_up(from) || !self.is_up(to) {
            self.count(to, |s| s.cut += 1);
            return;
        }
        let c = self.link(from, to);
        if roll_loss < probability(c.loss) || self.queue.len() >= self.max_in_flight {
            self.count(to, |s| s.lost += 1);
            return;
        }
        let mut delay = c.latency.saturating_add(scaled(c.jitter, roll_jitter));
        if roll_reorder < probability(c.reorder) {
            delay = delay.saturating_add(c.latency);
            self.count(to, |s| s.reordered += 1);
        }
        let Some(due) = now.checked_add(delay) else {
            self.count(to, |s| s.lost += 1);
            return;
        };
        let copy = if roll_duplicate < probability(c.duplicate) {
            let d = c.latency.saturating_add(scaled(c.jitter, roll_copy_jitter));
            now.checked_add(d)
        } else {
            None
        };
        self.enqueue(due, from, to, payload.clone());
        if let Some(due) = copy {
            if self.queue.len() < self.max_in_flight {
                self.enqueue(due, from, to, payload);
                self.count(to, |s| s.duplicated += 1);
            }
        }
    }

    /// When the earliest packet in flight falls due, if any.
    pub fn next_due(&self) -> Option<Instant> {
        self.queue.peek().map(|p| p.due)
    }

    /// The earliest packet due at or before `now` (packets due at the same instant come in
    /// the order they were sent); packets from or to a node that is down are cut on the way.
    pub fn poll(&mut self, now: Instant) -> Option<Delivery> {
        while self.queue.peek().is_some_and(|p| p.due <= now) {
            let p = self.queue.pop()?;
            if !self.is_up(p.from) || !self.is_up(p.to) {
                self.count(p.to, |s| s.cut += 1);
                continue;
            }
            let len = p.payload.len() as u64;
            self.count(p.to, |s| {
                s.delivered += 1;
                s.bytes_delivered += len;
            });
            return Some(Delivery {
                from: p.from,
                to: p.to,
                payload: p.payload,
                at: p.due,
            });
        }
        None
    }

    /// Counters for the whole network.
    pub fn stats(&self) -> NetStats {
        self.total
    }

    /// Counters for the packets addressed to `node`.
    pub fn stats_for(&self, node: NodeId) -> NetStats {
        self.per_node
            .get(node.0 as usize)
            .copied()
            .unwrap_or_default()
    }

    fn enqueue(&mut self, due: Instant, from: NodeId, to: NodeId, payload: Bytes) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queue.push(InFlight {
            due,
            seq,
            from,
            to,
            payload,
        });
    }

    fn count(&mut self, to: NodeId, f: impl Fn(&mut NetStats)) {
        f(&mut self.total);
        if let Some(s) = self.per_node.get_mut(to.0 as usize) {
            f(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn index(p: &Bytes) -> u32 {
        u32::from_le_bytes([p[0], p[1], p[2], p[3]])
    }

    fn numbered(i: u32) -> Bytes {
        Bytes::copy_from_slice(&i.to_le_bytes())
    }

    /// Every delivery due by `until`, in order.
    fn drain(net: &mut SimNet, until: Instant) -> Vec<Delivery> {
        std::iter::from_fn(|| net.poll(until)).collect()
    }

    #[test]
    fn a_perfect_link_delivers_everything_in_order_after_exactly_the_latency() {
        let t0 = Instant::now();
        let link = LinkConditions {
            latency: ms(40),
            ..Default::default()
        };
        let mut net = SimNet::new(1, link);
        let (a, b) = (net.add_node(), net.add_node());
        for i in 0..100u32 {
            net.send(t0 + ms(u64::from(i)), a, b, numbered(i));
        }
        assert_eq!(net.next_due(), Some(t0 + ms(40)));
        assert!(net.poll(t0 + ms(39)).is_none());
        let got = drain(&mut net, t0 + ms(1000));
        assert_eq!(got.len(), 100);
        for (i, d) in got.iter().enumerate() {
            assert_eq!(index(&d.payload), i as u32);
            assert_eq!(d.at, t0 + ms(i as u64 + 40));
            assert_eq!((d.from, d.to), (a, b));
        }
        let s = net.stats();
        assert_eq!((s.sent, s.delivered, s.lost, s.cut), (100, 100, 0, 0));
        assert_eq!((s.bytes_sent, s.bytes_delivered), (400, 400));
        assert_eq!(net.next_due(), None);
    }

    #[test]
    fn packets_due_together_come_in_send_order_and_poll_respects_now() {
        let t0 = Instant::now();
        let mut net = SimNet::new(1, LinkConditions::default());
        let (a, b, c) = (net.add_node(), net.add_node(), net.add_node());
        net.send(t0, a, c, numbered(0));
        net.send(t0, b, c, numbered(1));
        net.send(t0, a, b, numbered(2));
        let order: Vec<u32> = drain(&mut net, t0)
            .iter()
            .map(|d| index(&d.payload))
            .collect();
        assert_eq!(order, [0, 1, 2]);
        // Nothing is delivered before its time.
        net.send(t0 + ms(5), a, b, numbered(3));
        assert!(net.poll(t0).is_none());
        assert_eq!(net.in_flight(), 1);
    }

    #[test]
    fn two_percent_loss_loses_about_two_percent() {
        let t0 = Instant::now();
        let mut net = SimNet::new(42, LinkConditions::with_rtt(ms(20), ms(0), 0.02));
        let (a, b) = (net.add_node(), net.add_node());
        let n = 100_000u64;
        for i in 0..n {
            net.send(
                t0 + Duration::from_micros(i),
                a,
                b,
                Bytes::from_static(b"x"),
            );
        }
        let delivered = drain(&mut net, t0 + ms(1000)).len() as u64;
        let s = net.stats();
        assert_eq!(s.delivered, delivered);
        assert_eq!(s.lost + s.delivered, n);
        let rate = s.lost as f64 / n as f64;
        assert!((0.016..=0.024).contains(&rate), "loss rate {rate}");
    }

    #[test]
    fn jitter_stays_within_its_bounds_and_reorders() {
        let t0 = Instant::now();
        let link = LinkConditions {
            latency: ms(30),
            jitter: ms(15),
            ..Default::default()
        };
        let mut net = SimNet::new(3, link);
        let (a, b) = (net.add_node(), net.add_node());
        for i in 0..2000u32 {
            net.send(t0 + ms(u64::from(i)), a, b, numbered(i));
        }
        let got = drain(&mut net, t0 + ms(10_000));
        assert_eq!(got.len(), 2000);
        let mut out_of_order = 0;
        let mut highest = 0;
        let (mut lo, mut hi) = (ms(1000), Duration::ZERO);
        for d in &got {
            let i = index(&d.payload);
            let delay = d.at - (t0 + ms(u64::from(i)));
            assert!(delay >= ms(30) && delay <= ms(45), "delay {delay:?}");
            lo = lo.min(delay);
            hi = hi.max(delay);
            if i < highest {
                out_of_order += 1;
            }
            highest = highest.max(i);
        }
        assert!(out_of_order > 100, "only {out_of_order} reordered");
        // The draws cover the range.
        assert!(lo < ms(31) && hi > ms(44), "{lo:?}..{hi:?}");
        // Deliveries are in due order.
        assert!(got.windows(2).all(|w| w[0].at <= w[1].at));
    }

    #[test]
    fn duplicates_arrive_twice_and_are_counted() {
        let t0 = Instant::now();
        let link = LinkConditions {
            latency: ms(10),
            jitter: ms(5),
            duplicate: 1.0,
            ..Default::default()
        };
        let mut net = SimNet::new(5, link);
        let (a, b) = (net.add_node(), net.add_node());
        for i in 0..50u32 {
            net.send(t0, a, b, numbered(i));
        }
        let got = drain(&mut net, t0 + ms(100));
        assert_eq!(got.len(), 100);
        for i in 0..50u32 {
            assert_eq!(got.iter().filter(|d| index(&d.payload) == i).count(), 2);
        }
        let s = net.stats_for(b);
        assert_eq!((s.sent, s.duplicated, s.delivered), (50, 50, 100));
        assert_eq!(s.bytes_delivered, 400);

        // At 30 %, about 30 % are duplicated.
        let mut net = SimNet::new(
            6,
            LinkConditions {
                duplicate: 0.3,
                ..Default::default()
            },
        );
        let (a, b) = (net.add_node(), net.add_node());
        for _ in 0..10_000 {
            net.send(t0, a, b, Bytes::new());
        }
        let got = drain(&mut net, t0).len() as u64;
        let dup = net.stats().duplicated;
        assert_eq!(got, 10_000 + dup);
        assert!((2_700..=3_300).contains(&dup), "{dup}");
    }

    #[test]
    fn held_back_packets_take_an_extra_latency() {
        let t0 = Instant::now();
        let link = LinkConditions {
            latency: ms(20),
            reorder: 0.25,
            ..Default::default()
        };
        let mut net = SimNet::new(9, link);
        let (a, b) = (net.add_node(), net.add_node());
        for i in 0..4000u32 {
            net.send(t0 + ms(u64::from(i)), a, b, numbered(i));
        }
        let got = drain(&mut net, t0 + ms(10_000));
        let late = got
            .iter()
            .filter(|d| d.at - (t0 + ms(u64::from(index(&d.payload)))) == ms(40))
            .count() as u64;
        assert!(got
            .iter()
            .all(|d| [ms(20), ms(40)].contains(&(d.at - (t0 + ms(u64::from(index(&d.payload))))))));
        assert_eq!(late, net.stats().reordered);
        assert!((850..=1150).contains(&late), "{late}");
    }

    #[test]
    fn links_are_set_per_direction() {
        let t0 = Instant::now();
        let mut net = SimNet::new(1, LinkConditions::default());
        let (a, b) = (net.add_node(), net.add_node());
        let slow = LinkConditions {
            latency: ms(100),
            ..Default::default()
        };
        net.set_link(a, b, slow);
        assert_eq!(net.link(a, b), slow);
        assert_eq!(net.link(b, a), LinkConditions::default());
        net.send(t0, a, b, numbered(0));
        net.send(t0, b, a, numbered(1));
        let d = net.poll(t0 + ms(1)).expect("the fast direction");
        assert_eq!(index(&d.payload), 1);
        assert!(net.poll(t0 + ms(99)).is_none());
        assert_eq!(net.poll(t0 + ms(100)).map(|d| d.to), Some(b));
    }

    #[test]
    fn down_nodes_neither_send_nor_receive_and_in_flight_packets_are_cut() {
        let t0 = Instant::now();
        let link = LinkConditions {
            latency: ms(50),
            ..Default::default()
        };
        let mut net = SimNet::new(1, link);
        let (a, b, c) = (net.add_node(), net.add_node(), net.add_node());
        net.send(t0, a, b, numbered(0)); // in flight when b goes down
        net.send(t0, c, a, numbered(1)); // in flight when c (the sender) goes down
        net.set_up(b, false);
        net.set_up(c, false);
        assert!(!net.is_up(b));
        net.send(t0, a, b, numbered(2)); // to a down node
        net.send(t0, b, a, numbered(3)); // from a down node
        assert!(drain(&mut net, t0 + ms(100)).is_empty());
        assert_eq!(net.stats().cut, 4);
        assert_eq!(net.stats_for(b).cut, 2);
        assert_eq!(net.stats_for(a).cut, 2);

        // Back up: traffic flows again.
        net.send(t0 + ms(100), a, b, numbered(4));
        net.set_up(b, true);
        net.send(t0 + ms(100), a, b, numbered(5));
        let got: Vec<u32> = drain(&mut net, t0 + ms(200))
            .iter()
            .map(|d| index(&d.payload))
            .collect();
        assert_eq!(got, [5]);
        // A packet in flight across an outage that ends before it falls due is delivered.
        net.send(t0 + ms(200), b, a, numbered(6));
        net.set_up(b, false);
        net.set_up(b, true);
        assert_eq!(drain(&mut net, t0 + ms(300)).len(), 1);
        let s = net.stats();
        assert_eq!((s.sent, s.delivered, s.cut), (7, 2, 5));

        // An unknown node is treated as down.
        net.send(t0, a, NodeId(99), numbered(7));
        assert_eq!(net.stats().cut, 6);
        assert_eq!(net.stats_for(NodeId(99)), NetStats::default());
    }

    #[test]
    fn sends_beyond_the_in_flight_bound_are_lost() {
        let t0 = Instant::now();
        let mut net = SimNet::new(1, LinkConditions::default());
        let (a, b) = (net.add_node(), net.add_node());
        net.set_max_in_flight(10);
        for i in 0..15u32 {
            net.send(t0, a, b, numbered(i));
        }
        assert_eq!(net.in_flight(), 10);
        assert_eq!(net.stats().lost, 5);
        assert_eq!(drain(&mut net, t0).len(), 10);
        net.send(t0, a, b, numbered(15));
        assert_eq!(net.in_flight(), 1);
    }

    fn scenario(seed: u64, t0: Instant) -> Vec<(NodeId, NodeId, u32, Duration)> {
        let link = LinkConditions {
            latency: ms(25),
            jitter: ms(20),
            loss: 0.1,
            duplicate: 0.05,
            reorder: 0.05,
        };
        let mut net = SimNet::new(seed, link);
        let nodes: Vec<NodeId> = (0..4).map(|_| net.add_node()).collect();
        let mut out = Vec::new();
        for i in 0..1000u32 {
            let now = t0 + ms(u64::from(i));
            let from = nodes[i as usize % 4];
            let to = nodes[(i as usize * 7 + 1) % 4];
            net.send(now, from, to, numbered(i));
            while let Some(d) = net.poll(now) {
                out.push((d.from, d.to, index(&d.payload), d.at - t0));
            }
        }
        while let Some(d) = net.poll(t0 + ms(5000)) {
            out.push((d.from, d.to, index(&d.payload), d.at - t0));
        }
        out
    }

    #[test]
    fn the_same_seed_gives_the_same_deliveries_from_any_base_instant() {
        let t0 = Instant::now();
        let a = scenario(11, t0);
        let b = scenario(11, t0 + Duration::from_secs(3600));
        assert_eq!(a, b);
        assert!(a.len() > 800);
        assert_ne!(a, scenario(12, t0));
    }

    #[test]
    fn validate_rejects_impossible_probabilities() {
        assert_eq!(LinkConditions::default().validate(), Ok(()));
        assert_eq!(
            LinkConditions::with_rtt(ms(100), ms(10), 1.0).validate(),
            Ok(())
        );
        assert_eq!(
            LinkConditions::with_rtt(ms(100), ms(10), 0.0).latency,
            ms(50)
        );
        let bad = |c: LinkConditions, field| match c.validate() {
            Err(NetSimError::BadProbability { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{c:?} gave {other:?}"),
        };
        bad(LinkConditions::with_rtt(ms(1), ms(0), 1.5), "loss");
        bad(LinkConditions::with_rtt(ms(1), ms(0), f64::NAN), "loss");
        bad(
            LinkConditions {
                duplicate: -0.1,
                ..Default::default()
            },
            "duplicate",
        );
        bad(
            LinkConditions {
                reorder: f64::INFINITY,
                ..Default::default()
            },
            "reorder",
        );
        let e = LinkConditions::with_rtt(ms(1), ms(0), 1.5)
            .validate()
            .expect_err("bad");
        assert!(e.to_string().contains("loss"), "{e}");
    }

    #[test]
    fn invalid_conditions_do_not_panic() {
        let t0 = Instant::now();
        let link = LinkConditions {
            latency: Duration::MAX,
            jitter: Duration::MAX,
            loss: f64::NAN,
            duplicate: 7.0,
            reorder: -1.0,
        };
        let mut net = SimNet::new(1, link);
        let (a, b) = (net.add_node(), net.add_node());
        net.send(t0, a, b, numbered(0));
        assert_eq!(net.stats().lost, 1, "an unrepresentable due time is a loss");
        assert!(net.poll(t0 + ms(1)).is_none());
    }

    proptest! {
        /// Every packet is accounted for: each send, plus each copy, ends delivered, lost or
        /// cut once the network has drained.
        #[test]
        fn every_packet_is_accounted_for(
            seed in any::<u64>(),
            loss in 0.0f64..=1.0,
            duplicate in 0.0f64..=1.0,
            reorder in 0.0f64..=1.0,
            ops in prop::collection::vec((0u32..4, 0u32..4, 0u64..30, any::<bool>()), 1..300),
        ) {
            let t0 = Instant::now();
            let link = LinkConditions { latency: ms(10), jitter: ms(10), loss, duplicate, reorder };
            let mut net = SimNet::new(seed, link);
            for _ in 0..4 {
                net.add_node();
            }
            net.set_max_in_flight(100);
            let mut now = t0;
            let mut last_at = t0;
            for (from, to, dt, flip) in ops {
                now += ms(dt);
                if flip {
                    let n = NodeId(to);
                    let up = net.is_up(n);
                    net.set_up(n, !up);
                }
                net.send(now, NodeId(from), NodeId(to), numbered(0));
                while let Some(d) = net.poll(now) {
                    prop_assert!(d.at <= now && d.at >= last_at);
                    last_at = d.at;
                }
                prop_assert!(net.in_flight() <= 100);
            }
            while net.poll(now + ms(1000)).is_some() {}
            let s = net.stats();
            prop_assert_eq!(s.sent + s.duplicated, s.delivered + s.lost + s.cut);
            let per: u64 = (0..4).map(|n| net.stats_for(NodeId(n)).delivered).sum();
            prop_assert_eq!(per, s.delivered);
        }
    }
}
