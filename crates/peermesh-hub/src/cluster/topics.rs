//! Topic messages across hubs, numbered so a subscriber whose session moves between hubs gets
//! each `publication` and `topic_ended` exactly once (the rules are in [`super::fanlog`];
//! topic messages have a log and a sequence of their own, apart from room emits).
//!
//! The provider's hub numbers a message, publishes it and delivers it to its own subscribers
//! as one step under the topic's lock (`Router::to_topic`, `Topic::end`); another hub
//! delivers it to its subscribers and records it in its log as one step under the lock of its
//! set of subscribers to that topic ([`RemoteTopic`]). A move takes the cut (old hub) and
//! subscribes the client and computes its catch-up (new hub) under the write locks of the
//! client's topics, so no message is half delivered meanwhile. A topic this hub has no
//! subscribers to has no lock to hold: the count of installs tells whether one appeared
//! meanwhile, and the step is retried.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::{RwLock, RwLockWriteGuard};
use peermesh_proto::{ErrorCode, ServerFrame, ServiceName, TopicEnd, TopicName};

use super::fanlog::{Cut, Gap};
use super::relay::{set_topic_seq, Relay};
use super::{topic_subject, Backplane, Handoff};
use crate::registry::ConnShared;
use crate::router::{Router, Shared};
use crate::services::{subscribe_locked, Refusal, Topic, TopicSubs};

/// A topic: its service and name.
pub(crate) type TopicKey = (ServiceName, TopicName);

/// This hub's subscribers to a topic of another hub's provider.
#[derive(Debug, Default)]
pub(crate) struct RemoteTopic {
    pub(crate) subs: RwLock<HashMap<u64, Arc<ConnShared>>>,
    /// Set under the write lock when the set emptied or the topic ended, before the entry
    /// leaves the map: a holder of an old `Arc` must look it up again.
    dead: AtomicBool,
}

impl RemoteTopic {
    fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }
}

/// The topic a `publication` or `topic_ended` is for.
fn names(frame: &ServerFrame) -> Option<(&ServiceName, &TopicName)> {
    match frame {
        ServerFrame::Publication(p) => Some((&p.service, &p.topic)),
        ServerFrame::TopicEnded { service, topic, .. } => Some((service, topic)),
        _ => None,
    }
}

/// A topic's lock taken for a move: of this hub's provider's topic, or of this hub's
/// subscribers to another hub's.
enum Held {
    Local(Arc<Topic>),
    Remote(Arc<RemoteTopic>),
}

enum Guard<'a> {
    Local(&'a Arc<Topic>, RwLockWriteGuard<'a, TopicSubs>),
    Remote(RwLockWriteGuard<'a, HashMap<u64, Arc<ConnShared>>>),
}

impl Held {
    fn write(&self) -> Guard<'_> {
        match self {
            Held::Local(t) => Guard::Local(t, t.subs.write()),
            Held::Remote(t) => Guard::Remote(t.subs.write()),
        }
    }

    fn is_dead(&self) -> bool {
        matches!(self, Held::Remote(t) if t.is_dead())
    }

    /// One fixed order over every lock a move takes: by topic, then this hub's own first.
    fn rank(&self) -> u8 {
        match self {
            Held::Local(_) => 0,
            Held::Remote(_) => 1,
        }
    }
}

fn sort_held(held: &mut [(TopicKey, Held)]) {
    held.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.rank().cmp(&b.1.rank())));
}

/// How a topic a session had on its old hub ended for it when it moved here.
fn ended_reason(code: ErrorCode) -> TopicEnd {
    match code {
        ErrorCode::UnknownService => TopicEnd::ServiceGone,
        _ => TopicEnd::Destroyed,
    }
}

fn too_many(max: usize) -> Refusal {
    (
        ErrorCode::TooManySubscriptions,
        format!("already subscribed to {max} topics (max_subscriptions_per_client)"),
    )
}

/// What [`Backplane::install_topics`] did.
#[derive(Debug, Default)]
pub(crate) struct Installed {
    /// Topic messages queued for the client (handled here after its old hub's cut).
    pub(crate) replayed: usize,
    /// Topics it could not subscribe to again, with the reason to report (`topic_ended`);
    /// none whose `topic_ended` was replayed.
    pub(crate) ended: Vec<(TopicKey, TopicEnd)>,
    /// Topics it subscribed to again whose `topic_ended` was replayed: to drop.
    pub(crate) ended_meanwhile: Vec<TopicKey>,
}

impl Backplane {
    /// A local `publication` or `topic_ended`: numbered and published once for the other
    /// hubs' subscribers. The caller holds the topic's lock and delivers to this hub's
    /// subscribers in the same step.
    pub(crate) fn topic(&self, frame: &ServerFrame) {
        let Some((service, topic)) = names(frame) else {
            return;
        };
        let subject = topic_subject(service, topic);
        let mut msg = Relay::Topic {
            seq: 0,
            origin: self.node.clone(),
            frame: frame.clone(),
        }
        .encode_mut();
        self.topic_log.local(
            || false,
            |seq| {
                set_topic_seq(&mut msg, seq);
                let m = msg.freeze();
                self.enqueue(subject, m.clone()).then_some(m)
            },
        );
    }

    /// Another hub's topic message `seq` (`num`: origin, seq and the message; `None` for an
    /// end this hub decided, its provider's hub being gone): delivered to this hub's
    /// subscribers (but not to one that already got it on the hub it came from) and kept in
    /// the recent history, as one step.
    pub(crate) fn topic_in(
        &self,
        router: &Router,
        frame: &ServerFrame,
        num: Option<(&str, u64, &Bytes)>,
    ) {
        let Some((service, topic)) = names(frame) else {
            return;
        };
        let ended = matches!(frame, ServerFrame::TopicEnded { .. });
        let key = (service.clone(), topic.clone());
        loop {
            let epoch = self.topics_epoch.load(Ordering::Acquire);
            let Some(t) = self.remote_subs.get(&key).map(|e| e.value().clone()) else {
                let Some((origin, seq, raw)) = num else {
                    return;
                };
                let stale = || self.topics_epoch.load(Ordering::Acquire) != epoch;
                if self.topic_log.remote(origin, seq, raw, stale) {
                    return;
                }
                continue;
            };
            if ended {
                let mut subs = t.subs.write();
                if t.is_dead() {
                    drop(subs);
                    self.forget_remote(&key, &t);
                    continue;
                }
                t.dead.store(true, Ordering::Release);
                let gone: Vec<Arc<ConnShared>> = subs.drain().map(|(_, c)| c).collect();
                self.deliver_topic(router, gone.iter(), frame, num);
                for c in &gone {
                    if let Some(mut s) = self.subs_of.get_mut(&c.conn) {
                        s.remove(&key);
                    }
                }
                if let Some((origin, seq, raw)) = num {
                    self.topic_log.remote(origin, seq, raw, || false);
                }
                drop(subs);
                self.forget_remote(&key, &t);
            } else {
                let subs = t.subs.read();
                if t.is_dead() {
                    drop(subs);
                    self.forget_remote(&key, &t);
                    continue;
                }
                self.deliver_topic(router, subs.values(), frame, num);
                if let Some((origin, seq, raw)) = num {
                    self.topic_log.remote(origin, seq, raw, || false);
                }
            }
            return;
        }
    }

    fn deliver_topic<'a>(
        &self,
        router: &Router,
        subs: impl Iterator<Item = &'a Arc<ConnShared>>,
        frame: &ServerFrame,
        num: Option<(&str, u64, &Bytes)>,
    ) {
        let mut shared = Shared::new(frame);
        for c in subs {
            if let Some((origin, seq, _)) = num {
                if c.skips_topic_msg(origin, seq) {
                    self.counters.topic_skipped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            }
            let _ = router.to_conn(c, shared.body(c.encoding));
        }
    }

    /// Removes a dead entry from the map (if it is still there).
    fn forget_remote(&self, key: &TopicKey, t: &Arc<RemoteTopic>) {
        self.remote_subs.remove_if(key, |_, v| Arc::ptr_eq(v, t));
    }

    /// Subscribes local connection `conn` to a topic of another hub's provider; `None` when
    /// no other hub offers that topic (the local refusal stands).
    pub(crate) fn subscribe_remote(
        &self,
        service: &ServiceName,
        topic: &TopicName,
        conn: &Arc<ConnShared>,
        max: usize,
    ) -> Option<Result<(), Refusal>> {
        if !self.cluster.topic_offered(service.as_str(), topic.as_str()) {
            return None;
        }
        let key = (service.clone(), topic.clone());
        {
            let mut mine = self.subs_of.entry(conn.conn).or_default();
            if mine.contains(&key) {
                return Some(Ok(()));
            }
            if mine.len() + conn.peek().map_or(0, |k| k.subscriptions.lock().len()) >= max {
                return Some(Err(too_many(max)));
            }
            mine.insert(key.clone());
        }
        loop {
            // Never hold a map shard while waiting for a lock: take the entry, then its lock.
            let t = self
                .remote_subs
                .entry(key.clone())
                .or_default()
                .value()
                .clone();
            let mut subs = t.subs.write();
            if t.is_dead() {
                drop(subs);
                self.forget_remote(&key, &t);
                continue;
            }
            subs.insert(conn.conn, conn.clone());
            return Some(Ok(()));
        }
    }

    /// The topics of other hubs' providers that local connection `conn` subscribed to.
    pub(crate) fn remote_topics_of(&self, conn: u64) -> Vec<TopicKey> {
        self.subs_of
            .get(&conn)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Ends a subscription made by [`Backplane::subscribe_remote`]; false if there was none.
    pub(crate) fn unsubscribe_remote(
        &self,
        service: &ServiceName,
        topic: &TopicName,
        conn: u64,
    ) -> bool {
        let key = (service.clone(), topic.clone());
        let had = self
            .subs_of
            .get_mut(&conn)
            .is_some_and(|mut s| s.remove(&key));
        if had {
            self.drop_remote_sub(&key, conn);
        }
        had
    }

    /// Ends every remote subscription of a connection that is going away.
    pub(crate) fn unsubscribe_all(&self, conn: u64) {
        if let Some((_, keys)) = self.subs_of.remove(&conn) {
            for key in keys {
                self.drop_remote_sub(&key, conn);
            }
        }
    }

    fn drop_remote_sub(&self, key: &TopicKey, conn: u64) {
        let Some(t) = self.remote_subs.get(key).map(|e| e.value().clone()) else {
            return;
        };
        let empty = {
            let mut subs = t.subs.write();
            subs.remove(&conn);
            if subs.is_empty() {
                t.dead.store(true, Ordering::Release);
            }
            subs.is_empty()
        };
        if empty {
            self.forget_remote(key, &t);
        }
    }

    /// Topics of other hubs' providers that no live hub offers any more (their hub died
    /// without a word): their subscribers here get `topic_ended` (`service_gone`).
    pub(crate) fn end_orphaned_topics(&self, router: &Router) {
        let orphaned: Vec<TopicKey> = self
            .remote_subs
            .iter()
            .map(|e| e.key().clone())
            .filter(|(svc, topic)| !self.cluster.topic_offered(svc.as_str(), topic.as_str()))
            .collect();
        for (service, topic) in orphaned {
            let ended = ServerFrame::TopicEnded {
                service,
                topic,
                reason: TopicEnd::ServiceGone,
            };
            self.topic_in(router, &ended, None);
        }
    }

    /// The last topic message of every hub handled here.
    pub(crate) fn topic_cut(&self) -> Cut {
        self.topic_log.cut()
    }

    /// Whether the topic messages a session arriving with `h` is owed are still in the
    /// history.
    pub(crate) fn can_catch_up_topics(&self, h: &Handoff) -> bool {
        self.topic_log.catch_up(&h.topic_cut, &h.topic_mark).is_ok()
    }

    /// Runs `f` while holding the write locks of every topic `conn` subscribed to here (in
    /// the order of [`sort_held`]; the caller may hold room locks, never topic locks): no
    /// message to those topics is half delivered while `f` runs. Also returns `conn`'s topics
    /// as they were then.
    pub(crate) fn with_topics_of_locked<R>(
        &self,
        conn: &ConnShared,
        f: impl FnOnce() -> R,
    ) -> (R, Vec<TopicKey>) {
        loop {
            // The locks' owners first (never holding a map shard while waiting for a lock).
            let mut held: Vec<(TopicKey, Held)> = conn
                .cold()
                .subscriptions
                .lock()
                .iter()
                .map(|(k, t)| (k.clone(), Held::Local(t.clone())))
                .collect();
            for k in self.remote_topics_of(conn.conn) {
                if let Some(t) = self.remote_subs.get(&k).map(|e| e.value().clone()) {
                    held.push((k, Held::Remote(t)));
                }
            }
            sort_held(&mut held);
            let guards: Vec<Guard<'_>> = held.iter().map(|(_, h)| h.write()).collect();
            if held.iter().any(|(_, h)| h.is_dead()) {
                drop(guards);
                self.forget_dead(&held);
                continue;
            }
            self.topics_epoch.fetch_add(1, Ordering::AcqRel);
            let r = f();
            let mut topics: Vec<TopicKey> = conn
                .peek()
                .map(|k| k.subscriptions.lock().keys().cloned().collect())
                .unwrap_or_default();
            topics.extend(self.remote_topics_of(conn.conn));
            drop(guards);
            return (r, topics);
        }
    }

    fn forget_dead(&self, held: &[(TopicKey, Held)]) {
        for (k, h) in held {
            if let Held::Remote(t) = h {
                if t.is_dead() {
                    self.forget_remote(k, t);
                }
            }
        }
    }

    /// Subscribes the arriving `conn` to `topics` (this hub's provider's, or another hub's)
    /// and, in the same step under their write locks, queues the topic messages it missed
    /// between the two hubs and marks those it already got.
    pub(crate) fn install_topics(
        &self,
        router: &Router,
        conn: &Arc<ConnShared>,
        topics: &[TopicKey],
        max: usize,
        h: &Handoff,
    ) -> Result<Installed, Gap> {
        let mut keys: Vec<&TopicKey> = topics.iter().collect();
        keys.sort();
        keys.dedup();
        loop {
            let mut out = Installed::default();
            let mut held: Vec<(TopicKey, Held)> = Vec::with_capacity(keys.len());
            for k in &keys {
                match router.services.topic(&k.0, &k.1) {
                    Ok(t) => held.push(((*k).clone(), Held::Local(t))),
                    Err(_) if self.cluster.topic_offered(k.0.as_str(), k.1.as_str()) => {
                        let t = self
                            .remote_subs
                            .entry((*k).clone())
                            .or_default()
                            .value()
                            .clone();
                        held.push(((*k).clone(), Held::Remote(t)));
                    }
                    Err((code, _)) => out.ended.push(((*k).clone(), ended_reason(code))),
                }
            }
            sort_held(&mut held);
            let mut guards: Vec<Guard<'_>> = held.iter().map(|(_, h)| h.write()).collect();
            if held.iter().any(|(_, h)| h.is_dead()) {
                drop(guards);
                self.forget_dead(&held);
                continue;
            }
            self.topics_epoch.fetch_add(1, Ordering::AcqRel);
            let owed = self.topic_log.catch_up(&h.topic_cut, &h.topic_mark)?;
            let mut live: Vec<&TopicKey> = Vec::with_capacity(held.len());
            for ((k, _), g) in held.iter().zip(guards.iter_mut()) {
                let r = match g {
                    Guard::Local(t, subs) => subscribe_locked(t, subs, conn, max),
                    Guard::Remote(subs) => {
                        let mut mine = self.subs_of.entry(conn.conn).or_default();
                        if !mine.contains(k)
                            && mine.len() + conn.peek().map_or(0, |k| k.subscriptions.lock().len())
                                >= max
                        {
                            Err(too_many(max))
                        } else {
                            mine.insert(k.clone());
                            drop(mine);
                            subs.insert(conn.conn, conn.clone());
                            Ok(())
                        }
                    }
                };
                match r {
                    Ok(()) => live.push(k),
                    Err((code, _)) => out.ended.push((k.clone(), ended_reason(code))),
                }
            }
            conn.skip_topic_msgs(owed.skip);
            for raw in &owed.replay {
                // The history only holds messages that were decoded once already.
                let Ok(Relay::Topic { frame, .. }) = Relay::decode(raw) else {
                    continue;
                };
                let Some((service, topic)) = names(&frame) else {
                    continue;
                };
                let Some(k) = keys
                    .iter()
                    .find(|k| &k.0 == service && &k.1 == topic)
                    .copied()
                else {
                    continue;
                };
                let body = peermesh_proto::EncodedBody::encode(conn.encoding, &frame);
                if conn.send(body).is_ok() {
                    out.replayed += 1;
                }
                if matches!(frame, ServerFrame::TopicEnded { .. }) {
                    out.ended.retain(|(e, _)| e != k);
                    if live.contains(&k) {
                        out.ended_meanwhile.push(k.clone());
                    }
                }
            }
            self.counters
                .topic_replayed
                .fetch_add(out.replayed as u64, Ordering::Relaxed);
            drop(guards);
            return Ok(out);
        }
    }
}
