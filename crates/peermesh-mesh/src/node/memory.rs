//! The router's bounded memories: nonces seen (deduplication) and the last hop of each sender
//! (the way back). Both expire entries after a time and cap their size.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::time::{Duration, Instant};

use crate::id::NodeId;

/// Nonces seen recently, at most `capacity`, each for at most `ttl`.
#[derive(Debug)]
pub(crate) struct Seen {
    set: HashMap<u64, Instant>,
    order: VecDeque<(u64, Instant)>,
    capacity: usize,
    ttl: Duration,
    hasher: RandomState,
}

impl Seen {
    pub(crate) fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            set: HashMap::new(),
            order: VecDeque::new(),
            capacity,
            ttl,
            hasher: RandomState::new(),
        }
    }

    /// Records `(from, nonce)`; `false` when it was already seen.
    pub(crate) fn insert(&mut self, from: &NodeId, nonce: &str, now: Instant) -> bool {
        let key = self.hasher.hash_one((from, nonce));
        self.expire(now);
        if self.set.contains_key(&key) {
            return false;
        }
        while self.set.len() >= self.capacity {
            match self.order.pop_front() {
                Some((k, _)) => {
                    self.set.remove(&k);
                }
                None => break,
            }
        }
        self.set.insert(key, now);
        self.order.push_back((key, now));
        true
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(k, t)) = self.order.front() {
            if t + self.ttl > now {
                break;
            }
            self.order.pop_front();
            self.set.remove(&k);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.set.len()
    }
}

/// The neighbour each sender's messages last arrived through.
#[derive(Debug)]
pub(crate) struct Paths {
    map: HashMap<NodeId, (NodeId, Instant)>,
    order: VecDeque<(NodeId, Instant)>,
    capacity: usize,
    ttl: Duration,
}

impl Paths {
    pub(crate) fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
            capacity,
            ttl,
        }
    }

    pub(crate) fn record(&mut self, from: NodeId, hop: NodeId, now: Instant) {
        self.map.insert(from, (hop, now));
        self.order.push_back((from, now));
        self.trim(now);
    }

    pub(crate) fn get(&self, from: &NodeId, now: Instant) -> Option<NodeId> {
        self.map
            .get(from)
            .filter(|(_, t)| *t + self.ttl > now)
            .map(|(hop, _)| *hop)
    }

    /// Forgets every route through `hop` (its link is gone).
    pub(crate) fn forget_hop(&mut self, hop: &NodeId) {
        self.map.retain(|_, (h, _)| h != hop);
    }

    fn trim(&mut self, now: Instant) {
        while let Some(&(k, t)) = self.order.front() {
            let expired = t + self.ttl <= now;
            let over = self.order.len() > 2 * self.capacity || self.map.len() > self.capacity;
            if !expired && !over {
                break;
            }
            self.order.pop_front();
            if self.map.get(&k).is_some_and(|(_, t2)| *t2 == t) {
                self.map.remove(&k);
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> NodeId {
        NodeId([n; 20])
    }

    #[test]
    fn seen_dedupes_expires_and_caps() {
        let t0 = Instant::now();
        let mut s = Seen::new(3, Duration::from_secs(10));
        assert!(s.insert(&id(1), "a", t0));
        assert!(!s.insert(&id(1), "a", t0));
        assert!(s.insert(&id(2), "a", t0), "the nonce is per sender");
        assert!(s.insert(&id(1), "b", t0));
        assert!(s.insert(&id(1), "c", t0));
        assert_eq!(s.len(), 3);
        assert!(
            s.insert(&id(1), "a", t0),
            "the oldest was dropped at the cap"
        );
        assert!(s.insert(&id(9), "z", t0 + Duration::from_secs(11)));
        assert_eq!(s.len(), 1, "everything older than the ttl expired");
    }

    #[test]
    fn paths_remember_the_latest_hop_within_bounds() {
        let t0 = Instant::now();
        let mut p = Paths::new(2, Duration::from_secs(10));
        p.record(id(1), id(10), t0);
        p.record(id(1), id(11), t0);
        assert_eq!(p.get(&id(1), t0), Some(id(11)));
        p.record(id(2), id(10), t0);
        p.record(id(3), id(10), t0);
        assert!(p.len() <= 2);
        assert_eq!(p.get(&id(3), t0 + Duration::from_secs(10)), None, "expired");
        p.forget_hop(&id(10));
        assert_eq!(p.get(&id(3), t0), None);
        for i in 0..100u8 {
            p.record(id(4), id(i), t0);
        }
        assert!(p.order.len() <= 5);
    }
}
