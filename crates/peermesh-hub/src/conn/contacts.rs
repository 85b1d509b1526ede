//! The targets a client sent to recently, for `peer_left` notices (sans-IO).
//!
//! Bounded by count (least recently used evicted first) and by age (entries older than the TTL
//! are ignored and pruned).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use peermesh_proto::ClientId;

/// Re-touching a target more often than this does not refresh it.
const REFRESH: Duration = Duration::from_secs(1);

/// What touching a target changed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Touch {
    /// The target (on connection `conn`) is new here or on a new connection: start watching it.
    pub(crate) watch: bool,
    /// An entry was evicted (or replaced a different connection): stop watching it.
    pub(crate) unwatch: Option<(ClientId, u64)>,
}

#[derive(Debug)]
struct Entry {
    conn: u64,
    last: Instant,
    tick: u64,
}

/// Recently contacted targets, keyed by client id, remembering the target's connection.
#[derive(Debug)]
pub(crate) struct RecentTargets {
    cap: usize,
    ttl: Duration,
    tick: u64,
    /// Allocated at the first send: many connections never send to anyone.
    maps: Option<Box<Maps>>,
}

#[derive(Debug, Default)]
struct Maps {
    entries: HashMap<ClientId, Entry>,
    order: BTreeMap<u64, ClientId>,
}

impl RecentTargets {
    pub(crate) fn new(cap: usize, ttl: Duration) -> Self {
        Self {
            cap,
            ttl,
            tick: 0,
            maps: None,
        }
    }

    /// Records a send to `target` on connection `conn` at `now`.
    pub(crate) fn touch(&mut self, target: &ClientId, conn: u64, now: Instant) -> Touch {
        if self.cap == 0 {
            return Touch {
                watch: false,
                unwatch: None,
            };
        }
        let m = self.maps.get_or_insert_with(Box::default);
        if let Some(e) = m.entries.get_mut(target) {
            // A burst to the same target: its age and rank barely move, so skip the reorder
            // (the TTL is minutes; a second of staleness cannot matter).
            if e.conn == conn && now.saturating_duration_since(e.last) < REFRESH {
                return Touch {
                    watch: false,
                    unwatch: None,
                };
            }
        }
        self.tick += 1;
        let tick = self.tick;
        if let Some(e) = m.entries.get_mut(target) {
            m.order.remove(&e.tick);
            m.order.insert(tick, target.clone());
            e.tick = tick;
            e.last = now;
            if e.conn == conn {
                return Touch {
                    watch: false,
                    unwatch: None,
                };
            }
            let old = std::mem::replace(&mut e.conn, conn);
            return Touch {
                watch: true,
                unwatch: Some((target.clone(), old)),
            };
        }
        let mut unwatch = None;
        if m.entries.len() >= self.cap {
            if let Some((_, oldest)) = m.order.pop_first() {
                if let Some(e) = m.entries.remove(&oldest) {
                    unwatch = Some((oldest, e.conn));
                }
            }
        }
        m.entries.insert(
            target.clone(),
            Entry {
                conn,
                last: now,
                tick,
            },
        );
        m.order.insert(tick, target.clone());
        Touch {
            watch: true,
            unwatch,
        }
    }

    /// The target's connection `conn` ended: forgets it and says whether it was contacted
    /// within the TTL (so a `peer_left` is due). Connection numbers only grow, so a notice about
    /// a connection older than the one remembered is stale and ignored, while a newer one (a
    /// connection that replaced the remembered one) counts.
    pub(crate) fn gone(&mut self, target: &ClientId, conn: u64, now: Instant) -> bool {
        let Some(m) = self.maps.as_mut() else {
            return false;
        };
        match m.entries.get(target) {
            Some(e) if e.conn <= conn => {
                let recent = now.saturating_duration_since(e.last) <= self.ttl;
                let tick = e.tick;
                m.entries.remove(target);
                m.order.remove(&tick);
                recent
            }
            _ => false,
        }
    }

    /// Whether the target's connection `conn` was contacted within the TTL (it stays
    /// remembered): a `peer_away` or `peer_back` about it is due.
    pub(crate) fn is_recent(&self, target: &ClientId, conn: u64, now: Instant) -> bool {
        self.maps
            .as_ref()
            .and_then(|m| m.entries.get(target))
            .is_some_and(|e| e.conn <= conn && now.saturating_duration_since(e.last) <= self.ttl)
    }

    /// Every remembered target and its connection (to stop watching them all at the end).
    pub(crate) fn drain(&mut self) -> Vec<(ClientId, u64)> {
        let Some(m) = self.maps.take() else {
            return Vec::new();
        };
        m.entries.into_iter().map(|(id, e)| (id, e.conn)).collect()
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.maps.as_ref().map_or(0, |m| m.entries.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(n: u32) -> ClientId {
        ClientId::new(&format!("c{n}")).unwrap()
    }

    #[test]
    fn evicts_least_recent_and_expires() {
        let t0 = Instant::now();
        let mut r = RecentTargets::new(2, Duration::from_secs(600));
        assert!(r.touch(&id(1), 1, t0).watch);
        assert!(r.touch(&id(2), 2, t0).watch);
        // Within a second a re-touch changes nothing; later it makes c1 the most recent.
        assert!(!r.touch(&id(1), 1, t0).watch);
        assert!(!r.touch(&id(1), 1, t0 + Duration::from_secs(2)).watch);
        let t = r.touch(&id(3), 3, t0);
        assert_eq!(t.unwatch, Some((id(2), 2)));
        assert!(!r.gone(&id(2), 2, t0));
        assert!(
            r.touch(&id(1), 5, t0).watch,
            "c1 reconnected as connection 5"
        );
        assert!(!r.gone(&id(1), 1, t0), "an older connection of c1 left");
        assert!(r.gone(&id(1), 5, t0 + Duration::from_secs(600)));
        assert!(!r.gone(&id(3), 3, t0 + Duration::from_secs(601)), "too old");
        assert_eq!(r.len(), 0);
    }

    proptest! {
        #[test]
        fn bounded_and_consistent(ops in prop::collection::vec((0u32..20, 0u64..3, any::<bool>()), 0..300)) {
            let t0 = Instant::now();
            let mut r = RecentTargets::new(5, Duration::from_secs(10));
            let mut watching: std::collections::HashSet<(ClientId, u64)> = Default::default();
            for (n, conn, leave) in ops {
                if leave {
                    if r.gone(&id(n), conn, t0) {
                        let w: Vec<_> = watching.iter().filter(|(i, _)| *i == id(n)).cloned().collect();
                        prop_assert_eq!(w.len(), 1);
                        prop_assert!(w[0].1 <= conn);
                        watching.remove(&w[0]);
                    }
                } else {
                    let t = r.touch(&id(n), conn, t0);
                    if let Some(u) = t.unwatch { prop_assert!(watching.remove(&u)); }
                    if t.watch { prop_assert!(watching.insert((id(n), conn))); }
                }
                prop_assert!(r.len() <= 5);
                prop_assert_eq!(r.len(), r.maps.as_ref().map_or(0, |m| m.order.len()));
                prop_assert_eq!(r.len(), watching.len());
            }
        }
    }
}
