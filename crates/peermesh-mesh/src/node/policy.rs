//! Which candidates a mesh node connects to: the [`DialPolicy`] of its peer manager.

use crate::id::{NodeId, BUCKETS};
use crate::manager::{DialPolicy, PoolView};
use crate::node::config::ConnectionRule;

/// The mesh's dial policy (see [`ConnectionRule`]).
#[derive(Debug, Clone)]
pub struct MeshPolicy {
    me: NodeId,
    rule: ConnectionRule,
    target: usize,
    dial_limit: usize,
    links_per_bucket: usize,
    near_links: usize,
}

/// Links per bucket and which quarters of each bucket they cover.
struct Coverage {
    count: [u16; BUCKETS],
    quarters: [u8; BUCKETS],
}

impl MeshPolicy {
    /// The policy of node `me`.
    pub fn new(
        me: NodeId,
        rule: ConnectionRule,
        target: usize,
        dial_limit: usize,
        links_per_bucket: usize,
        near_links: usize,
    ) -> Self {
        Self {
            me,
            rule,
            target,
            dial_limit,
            links_per_bucket,
            near_links,
        }
    }

    /// The closest candidate that is among the `near_links` closest known nodes (linked or
    /// not), if it is not linked yet.
    fn near_gap(&self, view: &PoolView<'_, NodeId>) -> Option<NodeId> {
        if self.near_links == 0 {
            return None;
        }
        let mut near: Vec<([u8; 20], NodeId, bool)> = view
            .active()
            .map(|p| (self.me.distance(&p.addr), p.addr, true))
            .chain(
                view.pool()
                    .filter(|k| !view.is_active(k) && !view.is_backed_off(k))
                    .map(|k| (self.me.distance(k), *k, false)),
            )
            .collect();
        let n = self.near_links.min(near.len());
        if n == 0 {
            return None;
        }
        near.select_nth_unstable_by(n - 1, |a, b| a.0.cmp(&b.0));
        near.truncate(n);
        near.iter()
            .filter(|(_, _, linked)| !linked)
            .min_by_key(|(d, _, _)| *d)
            .map(|(_, k, _)| *k)
    }

    fn coverage(&self, view: &PoolView<'_, NodeId>) -> Coverage {
        let mut c = Coverage {
            count: [0; BUCKETS],
            quarters: [0; BUCKETS],
        };
        for p in view.active() {
            if let Some(b) = self.me.bucket_of(&p.addr) {
                c.count[b] = c.count[b].saturating_add(1);
                c.quarters[b] |= 1 << self.me.quarter_in_bucket(&p.addr, b);
            }
        }
        c
    }

    fn closest(&self, view: &PoolView<'_, NodeId>) -> Option<NodeId> {
        view.pool()
            .filter(|k| !view.is_active(k) && !view.is_backed_off(k))
            .min_by_key(|k| self.me.distance(k))
            .copied()
    }
}

impl DialPolicy<NodeId> for MeshPolicy {
    fn next_dial(&mut self, view: &PoolView<'_, NodeId>) -> Option<NodeId> {
        match self.rule {
            ConnectionRule::Closest => {
                if view.active_len() >= self.target {
                    return None;
                }
                self.closest(view)
            }
            ConnectionRule::Buckets => {
                let cov = self.coverage(view);
                // A candidate in the thinnest bucket below `links_per_bucket`, preferring one
                // in a quarter of that bucket no link covers yet, then the farther buckets
                // (they hold more nodes, so more of the routes).
                let mut best: Option<(u16, bool, usize, NodeId)> = None;
                for k in view.pool() {
                    if view.is_active(k) || view.is_backed_off(k) {
                        continue;
                    }
                    let Some(b) = self.me.bucket_of(k) else {
                        continue;
                    };
                    let n = cov.count[b];
                    if usize::from(n) >= self.links_per_bucket {
                        continue;
                    }
                    let covered = cov.quarters[b] & (1 << self.me.quarter_in_bucket(k, b)) != 0;
                    let key = (n, covered, usize::MAX - b, *k);
                    if best.as_ref().is_none_or(|cur| key < *cur) {
                        best = Some(key);
                    }
                }
                // Empty buckets first, then the nearest neighbours, then thin buckets. The
                // first two are dialled even past the dial limit (up to the manager's
                // maximum): greedy routing toward a node ends at its nearest neighbours, so
                // a node that stopped dialling at the limit while its nearest neighbour did
                // too would leave both unreachable through each other.
                if let Some((0, _, _, k)) = best {
                    return Some(k);
                }
                if let Some(k) = self.near_gap(view) {
                    return Some(k);
                }
                if view.active_len() >= self.dial_limit {
                    return None;
                }
                if let Some((_, _, _, k)) = best {
                    return Some(k);
                }
                if view.active_len() < self.target {
                    return self.closest(view);
                }
                None
            }
        }
    }

    fn evict_for(&mut self, newcomer: &NodeId, view: &PoolView<'_, NodeId>) -> Option<NodeId> {
        if self.rule != ConnectionRule::Buckets {
            return None;
        }
        self.me.bucket_of(newcomer)?;
        let cov = self.coverage(view);
        // Trade a link from the most crowded bucket for the newcomer, when that bucket has
        // more links than it needs. The far buckets fill up with the links newcomers make
        // when they bootstrap; without this, a popular node stays full, refuses newcomers
        // (which then have no link at all) and cannot be reached by those that need a link
        // in its part of the id space. The peer let go keeps plenty of choice: a crowded
        // bucket of ours is a crowded bucket of theirs, since buckets are symmetric.
        let (crowded, n) = cov
            .count
            .iter()
            .enumerate()
            .max_by_key(|(i, n)| (**n, *i))?;
        if usize::from(*n) <= self.links_per_bucket {
            return None;
        }
        // The oldest link there: its other end is established and has choices; a newcomer,
        // whose first link this may be, is never the one let go.
        view.active()
            .filter(|p| self.me.bucket_of(&p.addr) == Some(crowded))
            .filter(|p| p.state == crate::manager::PeerState::Connected)
            .min_by_key(|p| (p.since(), p.addr))
            .map(|p| p.addr)
    }
}
