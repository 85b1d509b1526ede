//! Pending service calls of one connection, as a caller (sans-IO).
//!
//! The caller's connection owns its pending calls, like its pending acks (`acks.rs`). A call id
//! is the caller's connection slot (below 2^21) times 2^32 plus a per-connection counter that
//! starts at a random value, so a provider's `respond` is routed straight back to the caller's
//! task without any shared table, every id is exact in a JavaScript number, and a slot reused by
//! a later connection does not accept answers meant for an earlier one.
//!
//! Each call remembers its provider: a number (the provider's connection number; 0 for the
//! hub itself) that an answer must come from, and a handle `P` that the caller releases when
//! the call ends (the hub decrements the provider's calls in flight with it).

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

/// The provider number of calls answered by the hub itself.
pub(crate) const HUB_PROVIDER: u64 = 0;
/// The "provider" of a call sent to another hub of the cluster (connection numbers never
/// reach it).
pub(crate) const REMOTE_PROVIDER: u64 = u64::MAX;

/// Why a call could not be registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallInsertError {
    /// Too many calls are pending on this connection.
    Full,
}

#[derive(Debug)]
struct Pending<P> {
    req: u64,
    provider: u64,
    handle: P,
    deadline: Instant,
}

/// A call that ended: the caller's `req` and the provider's handle.
#[derive(Debug, PartialEq)]
pub(crate) struct Ended<P> {
    pub(crate) req: u64,
    pub(crate) handle: P,
}

/// The calls one connection waits for.
#[derive(Debug)]
pub(crate) struct CallTracker<P> {
    slot: u32,
    next: u32,
    limit: usize,
    /// Allocated at the first call: most connections never make one.
    maps: Option<Box<Maps<P>>>,
}

#[derive(Debug)]
struct Maps<P> {
    by_id: HashMap<u64, Pending<P>>,
    deadlines: BTreeSet<(Instant, u64)>,
}

impl<P> CallTracker<P> {
    pub(crate) fn new(slot: u32, limit: usize, start: u32) -> Self {
        Self {
            slot,
            next: start,
            limit,
            maps: None,
        }
    }

    /// Registers a call to `provider` and returns its call id.
    pub(crate) fn insert(
        &mut self,
        req: u64,
        provider: u64,
        handle: P,
        deadline: Instant,
    ) -> Result<u64, CallInsertError> {
        let m = self.maps.get_or_insert_with(|| {
            Box::new(Maps {
                by_id: HashMap::new(),
                deadlines: BTreeSet::new(),
            })
        });
        if m.by_id.len() >= self.limit {
            return Err(CallInsertError::Full);
        }
        let id = loop {
            self.next = self.next.wrapping_add(1);
            let id = (u64::from(self.slot) << 32) | u64::from(self.next);
            if !m.by_id.contains_key(&id) {
                break id;
            }
        };
        m.by_id.insert(
            id,
            Pending {
                req,
                provider,
                handle,
                deadline,
            },
        );
        m.deadlines.insert((deadline, id));
        Ok(id)
    }

    fn remove(&mut self, id: u64) -> Option<Ended<P>> {
        let m = self.maps.as_mut()?;
        let p = m.by_id.remove(&id)?;
        m.deadlines.remove(&(p.deadline, id));
        Some(Ended {
            req: p.req,
            handle: p.handle,
        })
    }

    /// An answer arrived from `provider`: the call, if it is pending and was sent to it.
    pub(crate) fn complete(&mut self, id: u64, provider: u64) -> Option<Ended<P>> {
        match self.maps.as_ref().and_then(|m| m.by_id.get(&id)) {
            Some(p) if p.provider == provider => self.remove(id),
            _ => None,
        }
    }

    /// The provider left: every call waiting on it, in `req` order.
    pub(crate) fn fail_provider(&mut self, provider: u64) -> Vec<Ended<P>> {
        let Some(m) = self.maps.as_ref() else {
            return Vec::new();
        };
        let ids: Vec<u64> = m
            .by_id
            .iter()
            .filter(|(_, p)| p.provider == provider)
            .map(|(id, _)| *id)
            .collect();
        let mut out: Vec<Ended<P>> = ids.into_iter().filter_map(|id| self.remove(id)).collect();
        out.sort_by_key(|e| e.req);
        out
    }

    /// The earliest deadline, if any call is pending.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.maps.as_ref()?.deadlines.first().map(|(d, _)| *d)
    }

    /// Removes every call whose deadline is at or before `now`.
    pub(crate) fn handle_timeout(&mut self, now: Instant) -> Vec<Ended<P>> {
        let mut out = Vec::new();
        while let Some(&(d, id)) = self.maps.as_ref().and_then(|m| m.deadlines.first()) {
            if d > now {
                break;
            }
            match self.remove(id) {
                Some(e) => out.push(e),
                None => {
                    if let Some(m) = self.maps.as_mut() {
                        m.deadlines.pop_first();
                    }
                }
            }
        }
        out
    }

    /// Removes every call (the connection ends).
    pub(crate) fn drain(&mut self) -> Vec<Ended<P>> {
        let Some(m) = self.maps.take() else {
            return Vec::new();
        };
        m.by_id
            .into_values()
            .map(|p| Ended {
                req: p.req,
                handle: p.handle,
            })
            .collect()
    }

    /// Number of pending calls.
    pub(crate) fn len(&self) -> usize {
        self.maps.as_ref().map_or(0, |m| m.by_id.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    #[test]
    fn answers_only_from_the_provider_and_once() {
        let t0 = Instant::now();
        let mut t: CallTracker<&str> = CallTracker::new(5, 4, u32::MAX);
        let a = t.insert(7, 11, "p11", t0).unwrap();
        assert_eq!(super::super::acks::conn_of(a), 5);
        assert_eq!(t.complete(a, 12), None);
        assert_eq!(
            t.complete(a, 11),
            Some(Ended {
                req: 7,
                handle: "p11"
            })
        );
        assert_eq!(t.complete(a, 11), None);
        let max = CallTracker::<()>::new(crate::registry::MAX_SLOTS - 1, 1, u32::MAX - 1)
            .insert(1, 1, (), t0)
            .unwrap();
        assert!(max < 1 << 53, "call ids stay exact in JavaScript");
    }

    #[test]
    fn bound_timeouts_and_provider_loss() {
        let t0 = Instant::now();
        let mut t: CallTracker<u8> = CallTracker::new(1, 3, 0);
        t.insert(1, 9, 0, t0 + Duration::from_millis(10)).unwrap();
        t.insert(2, 8, 1, t0 + Duration::from_millis(5)).unwrap();
        t.insert(3, 9, 2, t0 + Duration::from_millis(20)).unwrap();
        assert_eq!(t.insert(4, 9, 3, t0), Err(CallInsertError::Full));
        assert_eq!(t.poll_timeout(), Some(t0 + Duration::from_millis(5)));
        let gone: Vec<u64> = t.fail_provider(9).iter().map(|e| e.req).collect();
        assert_eq!(gone, [1, 3]);
        let late = t.handle_timeout(t0 + Duration::from_millis(5));
        assert_eq!(late, [Ended { req: 2, handle: 1 }]);
        assert_eq!((t.len(), t.poll_timeout()), (0, None));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64, u64, u64),
        Complete(usize, u64),
        Fail(u64),
        Advance(u64),
        Drain,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u64..50, 1u64..4, 0u64..100).prop_map(|(r, p, d)| Op::Insert(r, p, d)),
            (0usize..40, 1u64..4).prop_map(|(i, p)| Op::Complete(i, p)),
            (1u64..4).prop_map(Op::Fail),
            (0u64..60).prop_map(Op::Advance),
            Just(Op::Drain),
        ]
    }

    proptest! {
        /// Every call ends exactly once — answered by its own provider, failed with it, timed
        /// out, or drained — its handle comes back then, and the table never exceeds its bound.
        #[test]
        fn every_call_ends_exactly_once(ops in prop::collection::vec(op(), 0..200)) {
            let t0 = Instant::now();
            let mut now = t0;
            let mut t: CallTracker<u64> = CallTracker::new(3, 6, 0);
            let mut issued: Vec<u64> = Vec::new();
            let mut live: HashMap<u64, (u64, Instant)> = HashMap::new();
            let mut ended = 0usize;
            for op in ops {
                match op {
                    Op::Insert(req, p, d) => {
                        let deadline = now + Duration::from_millis(d);
                        if let Ok(id) = t.insert(req, p, id_handle(issued.len()), deadline) {
                            live.insert(id_handle(issued.len()), (p, deadline));
                            issued.push(id);
                        }
                    }
                    Op::Complete(i, p) => {
                        if let Some(id) = issued.get(i) {
                            if let Some(e) = t.complete(*id, p) {
                                let (provider, _) = live.remove(&e.handle).unwrap();
                                prop_assert_eq!(provider, p);
                                ended += 1;
                            }
                        }
                    }
                    Op::Fail(p) => {
                        for e in t.fail_provider(p) {
                            let (provider, _) = live.remove(&e.handle).unwrap();
                            prop_assert_eq!(provider, p);
                            ended += 1;
                        }
                    }
                    Op::Advance(ms) => {
                        now += Duration::from_millis(ms);
                        for e in t.handle_timeout(now) {
                            let (_, d) = live.remove(&e.handle).unwrap();
                            prop_assert!(d <= now);
                            ended += 1;
                        }
                    }
                    Op::Drain => {
                        for e in t.drain() {
                            prop_assert!(live.remove(&e.handle).is_some());
                            ended += 1;
                        }
                    }
                }
                prop_assert_eq!(t.len(), live.len());
                prop_assert!(t.len() <= 6);
            }
            prop_assert_eq!(ended + live.len(), issued.len());
        }
    }

    fn id_handle(n: usize) -> u64 {
        n as u64
    }
}
