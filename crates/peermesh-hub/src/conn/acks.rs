//! Pending acknowledgements of one connection (sans-IO).
//!
//! The sender's connection owns its pending acks. An `ack_id` is the sender's connection slot
//! (below 2^21) times 2^32 plus a per-connection counter, so a reply can be routed back to the
//! sender's connection without any shared table, and every `ack_id` is below 2^53 (exact in a
//! JavaScript number). The counter starts at a random value: a slot reused by a later
//! connection does not accept replies meant for the earlier one.

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use peermesh_proto::ClientId;

/// Why an ack could not be registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AckInsertError {
    /// Too many acks are pending on this connection.
    Full,
    /// An ack with this `req` is already pending.
    DuplicateReq,
}

#[derive(Debug)]
struct Pending {
    req: u64,
    target: ClientId,
    deadline: Instant,
}

/// The acks one connection waits for.
#[derive(Debug)]
pub(crate) struct AckTracker {
    conn: u32,
    next: u32,
    limit: usize,
    /// Allocated at the first ack: most connections never ask for one.
    maps: Option<Box<Maps>>,
}

#[derive(Debug, Default)]
struct Maps {
    by_id: HashMap<u64, Pending>,
    by_req: HashMap<u64, u64>,
    deadlines: BTreeSet<(Instant, u64)>,
}

/// Extracts the connection slot from an `ack_id`.
pub(crate) fn conn_of(ack_id: u64) -> u32 {
    (ack_id >> 32) as u32
}

impl AckTracker {
    pub(crate) fn new(conn: u32, limit: usize, start: u32) -> Self {
        Self {
            conn,
            next: start,
            limit,
            maps: None,
        }
    }

    /// Registers a pending ack and returns its `ack_id`.
    pub(crate) fn insert(
        &mut self,
        req: u64,
        target: ClientId,
        deadline: Instant,
    ) -> Result<u64, AckInsertError> {
        let m = self.maps.get_or_insert_with(Box::default);
        if m.by_req.contains_key(&req) {
            return Err(AckInsertError::DuplicateReq);
        }
        if m.by_id.len() >= self.limit {
            return Err(AckInsertError::Full);
        }
        let ack_id = loop {
            self.next = self.next.wrapping_add(1);
            let id = (u64::from(self.conn) << 32) | u64::from(self.next);
            if !m.by_id.contains_key(&id) {
                break id;
            }
        };
        m.by_id.insert(
            ack_id,
            Pending {
                req,
                target,
                deadline,
            },
        );
        m.by_req.insert(req, ack_id);
        m.deadlines.insert((deadline, ack_id));
        Ok(ack_id)
    }

    fn remove(&mut self, ack_id: u64) -> Option<Pending> {
        let m = self.maps.as_mut()?;
        let p = m.by_id.remove(&ack_id)?;
        m.by_req.remove(&p.req);
        m.deadlines.remove(&(p.deadline, ack_id));
        Some(p)
    }

    /// A reply arrived from `from`: returns the `req` to answer, if the ack is pending and
    /// addressed to `from`.
    pub(crate) fn complete(&mut self, ack_id: u64, from: &ClientId) -> Option<u64> {
        match self.maps.as_ref().and_then(|m| m.by_id.get(&ack_id)) {
            Some(p) if &p.target == from => self.remove(ack_id).map(|p| p.req),
            _ => None,
        }
    }

    /// The target left: returns the `req`s of every ack waiting on it.
    pub(crate) fn fail_target(&mut self, target: &ClientId) -> Vec<u64> {
        let Some(m) = self.maps.as_ref() else {
            return Vec::new();
        };
        let ids: Vec<u64> = m
            .by_id
            .iter()
            .filter(|(_, p)| &p.target == target)
            .map(|(id, _)| *id)
            .collect();
        let mut reqs: Vec<u64> = ids
            .into_iter()
            .filter_map(|id| self.remove(id).map(|p| p.req))
            .collect();
        reqs.sort_unstable();
        reqs
    }

    /// The earliest deadline, if any ack is pending.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.maps.as_ref()?.deadlines.first().map(|(d, _)| *d)
    }

    /// Removes every ack whose deadline is at or before `now`, returning their `req`s.
    pub(crate) fn handle_timeout(&mut self, now: Instant) -> Vec<u64> {
        let mut out = Vec::new();
        while let Some(&(d, id)) = self.maps.as_ref().and_then(|m| m.deadlines.first()) {
            if d > now {
                break;
            }
            if let Some(p) = self.remove(id) {
                out.push(p.req);
            }
        }
        out
    }

    /// Number of pending acks.
    pub(crate) fn len(&self) -> usize {
        self.maps.as_ref().map_or(0, |m| m.by_id.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    fn id(s: &str) -> ClientId {
        ClientId::new(s).unwrap()
    }

    #[test]
    fn complete_only_from_target() {
        let t0 = Instant::now();
        let mut t = AckTracker::new(7, 10, 0);
        let a = t.insert(1, id("bob"), t0).unwrap();
        assert_eq!(conn_of(a), 7);
        let max = AckTracker::new(
            super::super::super::registry::MAX_SLOTS - 1,
            1,
            u32::MAX - 1,
        )
        .insert(1, id("x"), t0)
        .unwrap();
        assert!(max < 1 << 53, "ack ids stay exact in JavaScript");
        assert_eq!(t.complete(a, &id("eve")), None);
        assert_eq!(t.complete(a, &id("bob")), Some(1));
        assert_eq!(t.complete(a, &id("bob")), None);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn limits_and_duplicates() {
        let t0 = Instant::now();
        let mut t = AckTracker::new(1, 2, u32::MAX);
        t.insert(1, id("a"), t0).unwrap();
        assert_eq!(t.insert(1, id("a"), t0), Err(AckInsertError::DuplicateReq));
        t.insert(2, id("a"), t0).unwrap();
        assert_eq!(t.insert(3, id("a"), t0), Err(AckInsertError::Full));
        assert_eq!(t.fail_target(&id("a")), vec![1, 2]);
        assert_eq!(t.len(), 0);
        assert_eq!(t.poll_timeout(), None);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64, u8, u64),
        Complete(usize, u8),
        Fail(u8),
        Advance(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u64..20, 0u8..3, 0u64..100).prop_map(|(r, t, d)| Op::Insert(r, t, d)),
            (0usize..30, 0u8..3).prop_map(|(i, t)| Op::Complete(i, t)),
            (0u8..3).prop_map(Op::Fail),
            (0u64..60).prop_map(Op::Advance),
        ]
    }

    proptest! {
        /// Every inserted ack ends exactly once (completed, failed or timed out), the indexes
        /// stay consistent, and nothing outlives its deadline.
        #[test]
        fn every_ack_ends_exactly_once(ops in prop::collection::vec(op(), 0..200)) {
            let t0 = Instant::now();
            let mut now = t0;
            let mut t = AckTracker::new(3, 8, 0);
            let mut issued: Vec<u64> = Vec::new();
            let mut live: HashMap<u64, (u64, Instant)> = HashMap::new();
            let mut ended = 0usize;
            let names = [id("a"), id("b"), id("c")];
            for op in ops {
                match op {
                    Op::Insert(req, tg, d) => {
                        let deadline = now + Duration::from_millis(d);
                        if let Ok(a) = t.insert(req, names[tg as usize].clone(), deadline) {
                            issued.push(a);
                            live.insert(req, (u64::from(tg), deadline));
                        }
                    }
                    Op::Complete(i, tg) => {
                        if let Some(a) = issued.get(i) {
                            if let Some(req) = t.complete(*a, &names[tg as usize]) {
                                let (target, _) = live.remove(&req).unwrap();
                                prop_assert_eq!(target, u64::from(tg));
                                ended += 1;
                            }
                        }
                    }
                    Op::Fail(tg) => {
                        for req in t.fail_target(&names[tg as usize]) {
                            prop_assert!(live.remove(&req).is_some());
                            ended += 1;
                        }
                    }
                    Op::Advance(ms) => {
                        now += Duration::from_millis(ms);
                        for req in t.handle_timeout(now) {
                            let (_, d) = live.remove(&req).unwrap();
                            prop_assert!(d <= now);
                            ended += 1;
                        }
                    }
                }
                prop_assert_eq!(t.len(), live.len());
                prop_assert!(t.len() <= 8);
                prop_assert!(live.values().all(|(_, d)| *d > now || t.poll_timeout() <= Some(*d)));
            }
            prop_assert_eq!(ended + live.len(), issued.len());
        }
    }
}
