//! Who is connected, and who is in which room.
//!
//! ```text
//!   clients: ClientId ──► Arc<ConnShared>      (one live connection per id)
//!   conns:   conn no. ──► Arc<ConnShared>      (control notices; numbers only grow)
//!   slots:   slot     ──► Arc<ConnShared>      (ack replies; small numbers, reused)
//!   rooms:   RoomName ──► Arc<Room> ──► { ClientId ──► Arc<ConnShared> }
//! ```
//!
//! Maps are sharded ([`dashmap`]); a room's member map is behind its own `RwLock`, taken for
//! reading during a fan-out (which only `try_send`s, never waits) and for writing on join and
//! leave. A room is created by its first join and removed, under the same shard lock, by its
//! last leave, so a join never lands in a room that is being removed.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use dashmap::DashMap;
use parking_lot::{Mutex, RwLock};
use peermesh_proto::{
    ClientId, EncodedBody, Encoding, ErrorCode, Payload, ResumeRefusal, RoomName, ServiceName,
    SessionName, TopicName,
};
use tokio::sync::Notify;

use crate::config::DuplicateIdPolicy;
use crate::mailbox::{Mailbox, PushError};

/// A notice for a connection's own task (not a frame for its socket).
#[derive(Debug)]
pub(crate) enum Control {
    /// A target answered one of this connection's acknowledged emits.
    AckReply {
        ack_id: u64,
        from: ClientId,
        payload: Payload,
    },
    /// A client this connection sent to has gone (its connection `conn` ended).
    PeerGone { id: ClientId, conn: u64 },
    /// A provider (connection `provider`, or the hub: 0) answered the call `call`.
    CallDone {
        call: u64,
        provider: u64,
        outcome: Result<Payload, String>,
    },
    /// A provider this connection called has gone (its connection `conn` ended).
    ProviderGone { conn: u64 },
    /// A client this connection sent to dropped and may resume.
    PeerAway { id: ClientId, conn: u64 },
    /// A client this connection sent to resumed.
    PeerBack { id: ClientId, conn: u64 },
    /// Answer `req` with `ok` (a room join the cluster has recorded).
    Ok { req: Option<u64> },
    /// An acknowledged message to a client of another hub found no such client there.
    AckFailed { ack_id: u64, to: ClientId },
    /// A call relayed to another hub of the cluster failed there (`provider_left`,
    /// `unknown_service`, …).
    CallFailed {
        call: u64,
        code: ErrorCode,
        message: String,
    },
    /// A new socket resumes this connection's session.
    Resume(Box<Takeover>),
    /// The hub is shutting down in a cluster: close the socket with a hint to reconnect to
    /// another hub, and keep the session until it moves there.
    Drain,
    /// Another hub of the cluster resumes this session: hand it over.
    Migrate(Box<crate::cluster::Migration>),
    /// Client `id` of hub `node`, the other end of streams of this connection, is gone with
    /// its hub.
    StreamPeerGone { id: ClientId, node: String },
    /// Messages between this hub and the cluster may have been lost: streams with an end on
    /// another hub are reset.
    StreamsInterrupted,
}

/// A socket that resumes a session: handed from the handshake to the session's task.
pub(crate) struct Takeover {
    pub(crate) ws: crate::ws::WebSocket,
    /// The `seq` of the last frame the client received.
    pub(crate) last_seq: u64,
    pub(crate) addr: SocketAddr,
}

impl std::fmt::Debug for Takeover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Takeover")
            .field("last_seq", &self.last_seq)
            .field("addr", &self.addr)
            .finish()
    }
}

/// Why a connection is being closed.
#[derive(Debug, Clone)]
pub(crate) struct CloseReason {
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
}

/// Facts about a connection, fixed at its handshake.
#[derive(Debug, Clone)]
pub(crate) struct ConnInfo {
    pub(crate) addr: SocketAddr,
    pub(crate) ip: String,
    pub(crate) meta: Vec<(String, String)>,
    pub(crate) version: String,
    pub(crate) connected_at: SystemTime,
}

/// Byte and frame counts of one connection.
#[derive(Debug, Default)]
pub(crate) struct ConnStats {
    pub(crate) frames_in: AtomicU64,
    pub(crate) frames_out: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
}

/// Why a frame could not be queued for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QueueError {
    /// The connection's outbound queue is full: it has been closed as a slow consumer.
    SlowConsumer,
    /// The connection is closing.
    Closed,
}

/// The part of a connection other tasks can reach.
#[derive(Debug)]
pub(crate) struct ConnShared {
    pub(crate) conn: u64,
    /// A small number, unique among live connections and reused after them, that `ack_id`s
    /// carry so they stay below 2^53 (exact in JavaScript numbers).
    pub(crate) slot: u32,
    pub(crate) client: ClientId,
    pub(crate) encoding: Encoding,
    pub(crate) secret: String,
    pub(crate) info: ConnInfo,
    pub(crate) rooms: Mutex<HashSet<RoomName>>,
    pub(crate) stats: ConnStats,
    /// Set once the connection is closing (see [`ConnShared::closing`]); `closed` wakes those
    /// waiting for it. A flag and a notifier instead of a `CancellationToken`, which would
    /// allocate a node per connection.
    closing: AtomicBool,
    closed: Notify,
    pub(crate) mailbox: Mailbox<Control>,
    /// The next stream id of this connection (ids start at 1 and are never reused).
    pub(crate) next_stream: AtomicU64,
    /// As a provider: calls routed to this connection and not yet ended.
    pub(crate) calls_in_flight: AtomicU32,
    /// Round-trip time to the client in µs, from WebSocket pings (0 until measured).
    pub(crate) rtt_us: AtomicU64,
    /// The client asked to resume after drops (`hello.resume`, and the hub allows it).
    pub(crate) resumable: bool,
    /// Dropped, inside its resume window.
    pub(crate) away: AtomicBool,
    /// The highest `seq` dropped from the resume buffer before the client confirmed it: a
    /// resume from an earlier `seq` is impossible.
    pub(crate) lost_upto: AtomicU64,
    /// What few connections use, allocated at first use: an idle connection has none of it.
    cold: OnceLock<Box<Cold>>,
    close: OnceLock<Box<CloseReason>>,
}

/// The parts of a connection's shared state that few connections use (see
/// [`ConnShared::cold`]).
#[derive(Debug, Default)]
pub(crate) struct Cold {
    /// Connections that sent to this one and want `peer_left` when it ends.
    pub(crate) watchers: Mutex<HashSet<u64>>,
    /// As a provider: connections that have called it (told with `ProviderGone` when it ends).
    pub(crate) call_watchers: Mutex<HashSet<u64>>,
    /// Topics this connection subscribed to.
    pub(crate) subscriptions: Mutex<HashMap<(ServiceName, TopicName), Arc<crate::services::Topic>>>,
    /// Sessions this connection is in.
    pub(crate) sessions: Mutex<HashSet<SessionName>>,
    /// In a cluster: its `session_join`s not resolved yet, and its frames waiting behind them.
    pub(crate) joins: Mutex<crate::cluster::Joins>,
    /// After a session moved here from another hub: per origin hub, the last room emit the
    /// old hub already delivered, not to be delivered again here (empty almost always).
    room_skip: SkipMarks,
    /// The same for topic messages (their own sequence space).
    topic_skip: SkipMarks,
}

/// Per origin hub, the last numbered message (of one kind) that reached a connection on the
/// hub its session came from, not to be delivered again here (empty almost always: one
/// atomic load per delivery then).
#[derive(Debug, Default)]
struct SkipMarks {
    marks: Mutex<Vec<(Arc<str>, u64)>>,
    any: AtomicBool,
}

impl SkipMarks {
    fn set(&self, skip: Vec<(Arc<str>, u64)>) {
        let any = !skip.is_empty();
        *self.marks.lock() = skip;
        self.any.store(any, Ordering::Release);
    }

    /// One hub's messages come in order, so an origin is forgotten at its first message past
    /// the mark.
    fn skips(&self, origin: &str, seq: u64) -> bool {
        if !self.any.load(Ordering::Acquire) {
            return false;
        }
        let mut skip = self.marks.lock();
        let Some(i) = skip.iter().position(|(o, _)| &**o == origin) else {
            return false;
        };
        if seq <= skip[i].1 {
            return true;
        }
        skip.swap_remove(i);
        if skip.is_empty() {
            self.any.store(false, Ordering::Release);
        }
        false
    }
}

/// Bounds of a connection's mailbox.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MailboxLimits {
    pub(crate) frames: usize,
    pub(crate) bytes: usize,
    pub(crate) notices: usize,
}

impl ConnShared {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        conn: u64,
        slot: u32,
        client: ClientId,
        encoding: Encoding,
        secret: String,
        info: ConnInfo,
        limits: MailboxLimits,
        resumable: bool,
    ) -> Self {
        Self {
            conn,
            slot,
            client,
            encoding,
            secret,
            info,
            rooms: Mutex::new(HashSet::new()),
            stats: ConnStats::default(),
            closing: AtomicBool::new(false),
            closed: Notify::new(),
            mailbox: Mailbox::new(limits.frames, limits.bytes, limits.notices),
            next_stream: AtomicU64::new(1),
            calls_in_flight: AtomicU32::new(0),
            rtt_us: AtomicU64::new(0),
            resumable,
            away: AtomicBool::new(false),
            lost_upto: AtomicU64::new(0),
            cold: OnceLock::new(),
            close: OnceLock::new(),
        }
    }

    /// The rarely used parts, allocated now if they were not: for changes.
    pub(crate) fn cold(&self) -> &Cold {
        self.cold.get_or_init(Box::default)
    }

    /// The rarely used parts if they were ever allocated: for reads, which must not allocate
    /// them (a status page would otherwise grow every connection).
    pub(crate) fn peek(&self) -> Option<&Cold> {
        self.cold.get().map(|c| &**c)
    }

    /// Sets the room emits this connection already received on another hub (see
    /// `room_skip`).
    pub(crate) fn skip_room_emits(&self, skip: Vec<(Arc<str>, u64)>) {
        self.cold().room_skip.set(skip);
    }

    /// Whether room emit `seq` of hub `origin` already reached this connection on another
    /// hub.
    pub(crate) fn skips_room_emit(&self, origin: &str, seq: u64) -> bool {
        self.peek().is_some_and(|c| c.room_skip.skips(origin, seq))
    }

    /// Sets the topic messages this connection already received on another hub.
    pub(crate) fn skip_topic_msgs(&self, skip: Vec<(Arc<str>, u64)>) {
        self.cold().topic_skip.set(skip);
    }

    /// Whether topic message `seq` of hub `origin` already reached this connection on
    /// another hub.
    pub(crate) fn skips_topic_msg(&self, origin: &str, seq: u64) -> bool {
        self.peek().is_some_and(|c| c.topic_skip.skips(origin, seq))
    }

    /// Takes a fresh stream id in this connection's id space.
    pub(crate) fn alloc_stream(&self) -> u64 {
        self.next_stream.fetch_add(1, Ordering::Relaxed)
    }

    /// Queues a frame for the socket. Never waits: a full queue closes the connection as a
    /// slow consumer, so one slow reader never holds up the sender or anyone else.
    pub(crate) fn send(&self, body: EncodedBody) -> Result<(), QueueError> {
        match self.mailbox.push_frame(body) {
            Ok(()) => Ok(()),
            Err(PushError::Closed) => Err(QueueError::Closed),
            Err(PushError::Full) => {
                self.close(
                    ErrorCode::SlowConsumer,
                    "the outbound queue overflowed: read faster, or raise outbound_queue_bytes",
                );
                Err(QueueError::SlowConsumer)
            }
        }
    }

    /// Queues a frame that belongs to a whole the connection must get entire (a session
    /// snapshot, the events of one session leave): beyond the queue's limits, which the
    /// session's own limits bound instead, and counted apart from them
    /// ([`Mailbox::push_frame_unbounded`](crate::mailbox::Mailbox::push_frame_unbounded)).
    pub(crate) fn send_whole(&self, body: EncodedBody) {
        let _ = self.mailbox.push_frame_unbounded(body);
    }

    /// Bytes waiting in the outbound queue or being written.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.mailbox.bytes_held()
    }

    /// Sends a notice to the connection's task; dropped if its notice queue is full.
    pub(crate) fn control(&self, c: Control) -> bool {
        self.mailbox.push_notice(c)
    }

    /// Closes the connection with a reason (the first reason wins).
    pub(crate) fn close(&self, code: ErrorCode, message: impl Into<String>) {
        let _ = self.close.set(Box::new(CloseReason {
            code,
            message: message.into(),
        }));
        self.cancel();
        self.mailbox.wake();
    }

    /// Marks the connection closing and wakes every task waiting in [`ConnShared::closed`].
    pub(crate) fn cancel(&self) {
        if !self.closing.swap(true, Ordering::AcqRel) {
            self.closed.notify_waiters();
        }
    }

    /// Whether the connection is closing.
    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Completes once the connection is closing (at once if it already is).
    pub(crate) async fn closed(&self) {
        let notified = self.closed.notified();
        tokio::pin!(notified);
        // Registered before the flag is read: a `cancel` in between still wakes this one.
        notified.as_mut().enable();
        if self.is_closing() {
            return;
        }
        notified.await;
    }

    /// The reason given to `close`, if any.
    pub(crate) fn close_reason(&self) -> Option<&CloseReason> {
        self.close.get().map(|c| &**c)
    }
}

/// A room: its members by client id.
#[derive(Debug, Default)]
pub(crate) struct Room {
    pub(crate) members: RwLock<HashMap<ClientId, Arc<ConnShared>>>,
    /// Set (under the members' write lock) when the room left the registry, empty: a holder
    /// of an old `Arc` must look the room up again.
    dead: AtomicBool,
}

impl Room {
    /// Whether the room left the registry (read it under the members' lock).
    pub(crate) fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }
}

/// Why a client could not be registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RegisterError {
    IdTaken,
    ServerFull,
}

/// Clients, connections and rooms of one hub.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    clients: DashMap<ClientId, Arc<ConnShared>>,
    conns: DashMap<u64, Arc<ConnShared>>,
    by_slot: DashMap<u32, Arc<ConnShared>>,
    slots: Mutex<SlotAllocator>,
    rooms: DashMap<RoomName, Arc<Room>>,
    /// Bumped by every [`Registry::with_rooms_locked`], before its step runs.
    rooms_epoch: AtomicU64,
    count: AtomicUsize,
    tombstones: Mutex<Tombstones>,
}

/// Sessions that ended while they could still have been resumed, so that a late resume learns
/// why it is refused (`resume_rejected`).
#[derive(Debug, Default)]
struct Tombstones {
    map: HashMap<ClientId, Tombstone>,
}

#[derive(Debug)]
struct Tombstone {
    secret: String,
    reason: ResumeRefusal,
    until: Instant,
}

/// How long a tombstone answers late resumes.
const TOMBSTONE_TTL: Duration = Duration::from_secs(300);
/// Most tombstones kept (the oldest go first).
const MAX_TOMBSTONES: usize = 65_536;

impl Registry {
    /// Registers a connection under its client id. Returns the connection it replaced, if the
    /// policy or the presented secret allowed replacing one.
    pub(crate) fn register(
        &self,
        conn: &Arc<ConnShared>,
        presented_secret: Option<&str>,
        policy: DuplicateIdPolicy,
        max_clients: usize,
    ) -> Result<Option<Arc<ConnShared>>, RegisterError> {
        use dashmap::mapref::entry::Entry;
        match self.clients.entry(conn.client.clone()) {
            Entry::Occupied(mut e) => {
                let secret_ok = presented_secret.is_some_and(|s| constant_eq(s, &e.get().secret));
                if !secret_ok && policy == DuplicateIdPolicy::Reject {
                    return Err(RegisterError::IdTaken);
                }
                let old = e.insert(conn.clone());
                self.conns.insert(conn.conn, conn.clone());
                self.by_slot.insert(conn.slot, conn.clone());
                Ok(Some(old))
            }
            Entry::Vacant(e) => {
                if self.count.fetch_add(1, Ordering::AcqRel) >= max_clients {
                    self.count.fetch_sub(1, Ordering::AcqRel);
                    return Err(RegisterError::ServerFull);
                }
                e.insert(conn.clone());
                self.conns.insert(conn.conn, conn.clone());
                self.by_slot.insert(conn.slot, conn.clone());
                Ok(None)
            }
        }
    }

    /// Removes a connection. Returns whether it still owned its client id (false when a newer
    /// connection replaced it).
    pub(crate) fn unregister(&self, conn: &ConnShared) -> bool {
        self.conns.remove(&conn.conn);
        self.by_slot
            .remove_if(&conn.slot, |_, c| c.conn == conn.conn);
        self.free_slot(conn.slot);
        let owned = self
            .clients
            .remove_if(&conn.client, |_, c| c.conn == conn.conn)
            .is_some();
        if owned {
            self.count.fetch_sub(1, Ordering::AcqRel);
        }
        owned
    }

    /// Remembers why a resumable session ended, for a late resume.
    pub(crate) fn bury(&self, conn: &ConnShared, reason: ResumeRefusal) {
        let now = Instant::now();
        let mut t = self.tombstones.lock();
        if t.map.len() >= MAX_TOMBSTONES {
            t.map.retain(|_, v| v.until > now);
            if t.map.len() >= MAX_TOMBSTONES {
                let oldest = t
                    .map
                    .iter()
                    .min_by_key(|(_, v)| v.until)
                    .map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    t.map.remove(&k);
                }
            }
        }
        t.map.insert(
            conn.client.clone(),
            Tombstone {
                secret: conn.secret.clone(),
                reason,
                until: now + TOMBSTONE_TTL,
            },
        );
    }

    /// Why a resume of `id` with `secret` cannot happen, when there is no live session.
    pub(crate) fn why_not_resumable(&self, id: &ClientId, secret: &str) -> ResumeRefusal {
        let t = self.tombstones.lock();
        match t.map.get(id) {
            Some(b) if b.until > Instant::now() => {
                if constant_eq(secret, &b.secret) {
                    b.reason
                } else {
                    ResumeRefusal::BadSecret
                }
            }
            _ => ResumeRefusal::Expired,
        }
    }

    /// Takes a free slot for a new connection; `None` when all [`MAX_SLOTS`] are in use.
    pub(crate) fn alloc_slot(&self) -> Option<u32> {
        self.slots.lock().alloc()
    }

    /// Returns a slot taken by [`Registry::alloc_slot`].
    pub(crate) fn free_slot(&self, slot: u32) {
        self.slots.lock().free(slot);
    }

    /// The live connection holding a slot.
    pub(crate) fn by_slot(&self, slot: u32) -> Option<Arc<ConnShared>> {
        self.by_slot.get(&slot).map(|c| c.value().clone())
    }

    /// The live connection of a client id.
    pub(crate) fn client(&self, id: &ClientId) -> Option<Arc<ConnShared>> {
        self.clients.get(id).map(|c| c.value().clone())
    }

    /// The connection with this number, if it is still live.
    pub(crate) fn conn(&self, conn: u64) -> Option<Arc<ConnShared>> {
        self.conns.get(&conn).map(|c| c.value().clone())
    }

    /// Adds a connection to a room. Returns the connection it displaced under the same client
    /// id (a replaced connection), or `Ok(None)`; `Err(())` if it was already a member.
    pub(crate) fn join(
        &self,
        room: &RoomName,
        conn: &Arc<ConnShared>,
    ) -> Result<Option<Arc<ConnShared>>, ()> {
        let entry = self.rooms.entry(room.clone()).or_default();
        let mut members = entry.members.write();
        match members.insert(conn.client.clone(), conn.clone()) {
            Some(prev) if prev.conn == conn.conn => Err(()),
            prev => Ok(prev),
        }
    }

    /// Removes a connection from a room (only if that connection is the member); deletes the
    /// room when it becomes empty. Returns whether it was a member.
    pub(crate) fn leave(&self, room: &RoomName, conn: &ConnShared) -> bool {
        let mut removed = false;
        self.rooms.remove_if(room, |_, r| {
            let mut members = r.members.write();
            if members
                .get(&conn.client)
                .is_some_and(|c| c.conn == conn.conn)
            {
                members.remove(&conn.client);
                removed = true;
            }
            let empty = members.is_empty();
            if empty {
                r.dead.store(true, Ordering::Release);
            }
            empty
        });
        removed
    }

    /// Runs `f` while holding the write locks of `rooms` (with `conn`: created when missing
    /// and `conn` added to each first; without: those that exist): no emit to those rooms is half delivered while `f`
    /// runs, and none is delivered to `conn` before `f` has run.
    pub(crate) fn with_rooms_locked<R>(
        &self,
        rooms: &[RoomName],
        conn: Option<&Arc<ConnShared>>,
        f: impl FnOnce() -> R,
    ) -> R {
        let mut names: Vec<&RoomName> = rooms.iter().collect();
        names.sort();
        names.dedup();
        loop {
            // Never hold a map shard while waiting for a room's lock (`leave` does the
            // opposite): take the rooms first, then their locks, and retry if one died.
            let held: Vec<Arc<Room>> = names
                .iter()
                .filter_map(|n| match conn {
                    Some(_) => Some(self.rooms.entry((*n).clone()).or_default().value().clone()),
                    None => self.room(n),
                })
                .collect();
            let mut guards: Vec<_> = held.iter().map(|r| r.members.write()).collect();
            if held.iter().any(|r| r.is_dead()) {
                continue;
            }
            self.rooms_epoch.fetch_add(1, Ordering::AcqRel);
            if let Some(conn) = conn {
                for g in guards.iter_mut() {
                    g.insert(conn.client.clone(), conn.clone());
                }
            }
            return f();
        }
    }

    /// Changes whenever [`Registry::with_rooms_locked`] runs: a step that found no room by
    /// some name compares it before and after to know whether one may have appeared.
    pub(crate) fn rooms_created(&self) -> u64 {
        self.rooms_epoch.load(Ordering::Acquire)
    }

    /// A room, if it exists.
    pub(crate) fn room(&self, room: &RoomName) -> Option<Arc<Room>> {
        self.rooms.get(room).map(|r| r.value().clone())
    }

    /// Number of registered clients.
    pub(crate) fn client_count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Number of rooms.
    pub(crate) fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// Every live connection (for shutdown and the status page).
    pub(crate) fn all_conns(&self) -> Vec<Arc<ConnShared>> {
        self.conns.iter().map(|c| c.value().clone()).collect()
    }

    /// Up to `limit` rooms with their member counts, largest first.
    pub(crate) fn room_sizes(&self, limit: usize) -> Vec<(RoomName, usize)> {
        let mut v: Vec<_> = self
            .rooms
            .iter()
            .map(|r| (r.key().clone(), r.value().members.read().len()))
            .collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v.truncate(limit);
        v
    }
}

/// Most live connections (slots): `ack_id` = slot × 2^32 + counter stays below 2^53.
pub(crate) const MAX_SLOTS: u32 = 1 << 21;

/// Hands out the smallest free slots first, so slot numbers stay small.
/// A slot no connection gets: the ids of calls relayed from other hubs of a cluster carry it,
/// so a provider's answer to one is told apart from answers to local callers.
pub(crate) const RELAY_SLOT: u32 = MAX_SLOTS - 1;

#[derive(Debug, Default)]
struct SlotAllocator {
    free: Vec<u32>,
    next: u32,
}

impl SlotAllocator {
    fn alloc(&mut self) -> Option<u32> {
        if let Some(s) = self.free.pop() {
            return Some(s);
        }
        if self.next >= RELAY_SLOT {
            return None;
        }
        self.next += 1;
        Some(self.next - 1)
    }

    fn free(&mut self, slot: u32) {
        if slot < self.next && !self.free.contains(&slot) {
            self.free.push(slot);
        }
    }
}

/// Compares secrets without an early exit on the first differing byte.
pub(crate) fn constant_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(no: u64, id: &str) -> Arc<ConnShared> {
        let info = ConnInfo {
            addr: SocketAddr::from(([127, 0, 0, 1], 1)),
            ip: "127.0.0.1".into(),
            meta: Vec::new(),
            version: "1.0.0".into(),
            connected_at: SystemTime::now(),
        };
        let limits = MailboxLimits {
            frames: 16,
            bytes: 1 << 20,
            notices: 16,
        };
        let id = ClientId::new(id).unwrap_or_else(|_| unreachable!());
        Arc::new(ConnShared::new(
            no,
            no as u32,
            id,
            Encoding::Json,
            String::new(),
            info,
            limits,
            false,
        ))
    }

    #[tokio::test]
    async fn closed_wakes_every_waiter_and_completes_at_once_after_a_close() {
        let c = conn(1, "a");
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let c = c.clone();
                tokio::spawn(async move { c.closed().await })
            })
            .collect();
        // Let the waiters register before the close.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(waiters.iter().all(|w| !w.is_finished()));
        assert!(!c.is_closing());
        c.close(ErrorCode::SlowConsumer, "test");
        for w in waiters {
            tokio::time::timeout(Duration::from_secs(5), w)
                .await
                .expect("a waiter was not woken by the close")
                .expect("the waiter task");
        }
        assert!(c.is_closing());
        // After the close, waiting ends at once; the first reason stays.
        tokio::time::timeout(Duration::from_secs(5), c.closed())
            .await
            .expect("closed() must complete once closing");
        c.close(ErrorCode::Malformed, "later");
        assert_eq!(
            c.close_reason().map(|r| r.code),
            Some(ErrorCode::SlowConsumer)
        );
    }

    #[test]
    fn room_emits_already_delivered_elsewhere_are_skipped_once_per_origin() {
        let c = conn(1, "alice");
        assert!(!c.skips_room_emit("a", 1));
        c.skip_room_emits(vec![(Arc::from("a"), 10), (Arc::from("b"), 3)]);
        assert!(c.skips_room_emit("a", 9));
        assert!(c.skips_room_emit("a", 10));
        assert!(!c.skips_room_emit("c", 1), "another origin is not affected");
        assert!(!c.skips_room_emit("a", 11), "past the mark");
        assert!(!c.skips_room_emit("a", 5), "forgotten after the mark");
        assert!(c.skips_room_emit("b", 3));
        assert!(!c.skips_room_emit("b", 4));
        assert!(
            !c.cold().room_skip.any.load(Ordering::Acquire),
            "nothing left to check"
        );
    }

    #[test]
    fn topic_skip_marks_are_apart_from_room_skip_marks() {
        let c = conn(1, "alice");
        c.skip_topic_msgs(vec![(Arc::from("a"), 10)]);
        assert!(
            !c.skips_room_emit("a", 5),
            "room emits have their own numbers"
        );
        assert!(c.skips_topic_msg("a", 5));
        c.skip_room_emits(vec![(Arc::from("a"), 2)]);
        assert!(c.skips_topic_msg("a", 10));
        assert!(!c.skips_topic_msg("a", 11));
        assert!(c.skips_room_emit("a", 2));
    }

    #[test]
    fn rooms_locked_for_a_move_get_the_member_and_dead_rooms_are_not_reused() {
        let reg = Registry::default();
        let bob = conn(2, "bob");
        let lobby = RoomName::new("lobby").unwrap_or_else(|_| unreachable!());
        assert!(reg.join(&lobby, &bob).is_ok());
        let old = reg.room(&lobby).unwrap_or_else(|| unreachable!());
        assert!(reg.leave(&lobby, &bob));
        assert!(old.is_dead() && reg.room(&lobby).is_none());
        let alice = conn(1, "alice");
        let before = reg.rooms_created();
        let n = reg.with_rooms_locked(&[lobby.clone(), lobby.clone()], Some(&alice), || 7);
        assert_eq!(n, 7);
        assert!(reg.rooms_created() > before);
        let room = reg.room(&lobby).unwrap_or_else(|| unreachable!());
        assert!(!room.is_dead());
        assert!(room.members.read().contains_key(&alice.client));
        // Without a member to add, missing rooms are not created.
        let other = RoomName::new("other").unwrap_or_else(|_| unreachable!());
        reg.with_rooms_locked(std::slice::from_ref(&other), None, || ());
        assert!(reg.room(&other).is_none());
    }
}
