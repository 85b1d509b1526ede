//! The table of requests waiting for the hub's answer, free of I/O.
//!
//! The actor assigns each request a correlation number (`req`) and a deadline here, completes
//! it when the `ok`/`ack`/`members`/`error` carrying that `req` arrives, asks
//! [`poll_timeout`](RequestTracker::poll_timeout) when to wake up next, and expires what is due
//! with [`expire`](RequestTracker::expire). Every entry leaves the table exactly once: answered,
//! expired, or drained when the connection drops.

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

/// Pending requests keyed by `req`, with their deadlines.
#[derive(Debug)]
pub(crate) struct RequestTracker<T> {
    next_req: u64,
    pending: HashMap<u64, (Instant, T)>,
    deadlines: BTreeSet<(Instant, u64)>,
}

impl<T> RequestTracker<T> {
    pub(crate) fn new() -> Self {
        Self {
            next_req: 1,
            pending: HashMap::new(),
            deadlines: BTreeSet::new(),
        }
    }

    /// Registers a request due at `deadline`; returns its `req`. Numbers are never reused
    /// within a client's life, so a late answer from an earlier connection matches nothing.
    pub(crate) fn insert(&mut self, deadline: Instant, entry: T) -> u64 {
        let req = self.next_req;
        self.next_req += 1;
        self.pending.insert(req, (deadline, entry));
        self.deadlines.insert((deadline, req));
        req
    }

    /// Takes the request answered by `req`, if it is still pending.
    pub(crate) fn complete(&mut self, req: u64) -> Option<T> {
        let (deadline, entry) = self.pending.remove(&req)?;
        self.deadlines.remove(&(deadline, req));
        Some(entry)
    }

    /// The earliest deadline, if any request is pending.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.first().map(|(d, _)| *d)
    }

    /// Takes every request whose deadline is at or before `now`, earliest first.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<T> {
        let mut out = Vec::new();
        while let Some(&(deadline, req)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_first();
            if let Some((_, entry)) = self.pending.remove(&req) {
                out.push(entry);
            }
        }
        out
    }

    /// Takes every pending request (the connection dropped).
    pub(crate) fn drain(&mut self) -> Vec<T> {
        self.deadlines.clear();
        let mut all: Vec<(u64, T)> = self.pending.drain().map(|(r, (_, e))| (r, e)).collect();
        all.sort_unstable_by_key(|(r, _)| *r);
        all.into_iter().map(|(_, e)| e).collect()
    }

    /// How many requests are pending.
    pub(crate) fn len(&self) -> usize {
        debug_assert_eq!(self.pending.len(), self.deadlines.len());
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    #[test]
    fn answered_expired_and_drained_entries_leave_once() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut t = RequestTracker::new();
        let a = t.insert(t0 + ms(100), "a");
        let b = t.insert(t0 + ms(50), "b");
        let c = t.insert(t0 + ms(200), "c");
        assert_eq!((a, b, c), (1, 2, 3));
        assert_eq!(t.poll_timeout(), Some(t0 + ms(50)));
        assert_eq!(t.complete(b), Some("b"));
        assert_eq!(t.complete(b), None);
        assert_eq!(t.poll_timeout(), Some(t0 + ms(100)));
        assert!(t.expire(t0 + ms(99)).is_empty());
        assert_eq!(t.expire(t0 + ms(100)), ["a"]);
        assert_eq!(t.complete(a), None, "an expired request cannot be answered");
        let d = t.insert(t0 + ms(10), "d");
        assert_eq!(d, 4, "numbers are not reused");
        assert_eq!(t.drain(), ["c", "d"]);
        assert_eq!(t.len(), 0);
        assert_eq!(t.poll_timeout(), None);
    }

    proptest! {
        #[test]
        fn every_entry_leaves_exactly_once(
            ops in proptest::collection::vec((0u8..3, 0u64..50, 0u64..20), 0..200)
        ) {
            let t0 = Instant::now();
            let mut t = RequestTracker::new();
            let mut out = 0usize;
            let mut inserted = 0usize;
            let mut now = t0;
            for (kind, ms, pick) in ops {
                match kind {
                    0 => { t.insert(now + Duration::from_millis(ms), ()); inserted += 1; }
                    1 => out += usize::from(t.complete(pick + 1).is_some()),
                    _ => {
                        now += Duration::from_millis(ms);
                        out += t.expire(now).len();
                        prop_assert!(t.poll_timeout().is_none_or(|d| d > now));
                    }
                }
                prop_assert_eq!(inserted, out + t.len());
            }
            out += t.drain().len();
            prop_assert_eq!(inserted, out);
        }
    }
}
