//! The cluster backplane: several hubs act as one through NATS.
//!
//! ```text
//!   conn task ──► Router ──► local Registry                         (same hub)
//!                   └──────► Backplane ──► publisher ──► NATS ──► inbound ──► Router (other hub)
//!   handshake ──► Backplane::acquire ──► id worker ──► Cluster (key-value compare-and-set)
//!   Cluster registry events ──► events task ──► peer_left / member_joined / member_left
//! ```
//!
//! - **Ids.** A client id is claimed in the cluster at the handshake (exactly one hub wins) and
//!   released when its session ends (after the resume window). Claims and releases of one id
//!   run in order on one of [`ID_WORKERS`] workers, which also count the local connections
//!   holding the id, so a quick reconnect on the same hub never loses its claim.
//! - **Direct messages and acks.** A message for an id held by another hub is published once
//!   to `peermesh.node.<name>`; an acknowledgement comes back the same way (the target's hub
//!   remembers which hub asked). A message that finds no client there fails its ack with
//!   `unknown_target`.
//! - **Rooms.** Each hub delivers a room emit to its own members and publishes it once on
//!   `peermesh.room.<hex name>`; every other hub delivers it to its members, so each member
//!   gets it exactly once. Membership is in the cluster's key-value registry: member lists
//!   are cluster-wide, and `member_joined` / `member_left` of other hubs' clients come from its
//!   changes (a dead hub's members leave when its entries are released).
//!
//! - **Streams.** Stream items between ends on different hubs go the direct way, hub to hub;
//!   see `streams`.
//!
//! Limits: [`OUT_QUEUE`] messages wait for NATS (a full queue fails the send with an error,
//! it never blocks a connection); [`MAX_RELAYED_ACKS`] acknowledgements of other hubs'
//! messages are awaited at once.

mod batch;
mod fanlog;
mod handoff;
pub(crate) mod relay;
mod rooms;
mod sessions;
mod streams;
mod topics;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use futures_util::StreamExt;
use parking_lot::Mutex;
use peermesh_cluster::{Claim, Cluster, ClusterError, Event};
use peermesh_proto::{
    ClientFrame, ClientId, ErrorCode, RoomName, ServerFrame, ServiceName, TopicName,
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

pub(crate) use handoff::{Handoff, Migration, MAX_HANDOFF_BYTES};
pub(crate) use relay::Relay;
pub(crate) use sessions::Joins;

use crate::conn::conn_of;
use crate::registry::Control;
use crate::router::Router;

/// Messages waiting to be published.
pub(crate) const OUT_QUEUE: usize = 65_536;
/// Workers that claim and release ids and record room members, in order per id.
pub(crate) const ID_WORKERS: usize = 16;
/// Operations waiting per worker.
const OPS_QUEUE: usize = 4096;
/// Acknowledgements of messages from other hubs awaited at once.
pub(crate) const MAX_RELAYED_ACKS: usize = 1 << 20;
/// How often the hub compares its clients and rooms with the cluster's registry and repairs
/// what a NATS outage left behind (releases that failed, claims lost with the server's store).
const RECONCILE_EVERY: Duration = Duration::from_secs(5);
/// Subjects every topic publication goes to.
const TOPIC_SUBJECTS: &str = "peermesh.topic.>";
/// Subjects every room emit goes to.
const ROOM_SUBJECTS: &str = "peermesh.room.>";

/// Counters of the traffic between hubs.
#[derive(Debug, Default)]
pub(crate) struct ClusterCounters {
    pub(crate) sent: AtomicU64,
    pub(crate) sent_bytes: AtomicU64,
    pub(crate) received: AtomicU64,
    pub(crate) received_bytes: AtomicU64,
    /// Messages not published because the queue to NATS was full.
    pub(crate) dropped: AtomicU64,
    /// NATS messages that were batches of several relay messages (counted in `sent` too).
    pub(crate) batches: AtomicU64,
    /// Relay messages that left in those batches.
    pub(crate) batched: AtomicU64,
    /// Messages from other hubs that could not be read.
    pub(crate) malformed: AtomicU64,
    /// Key-value operations that failed (a room member not recorded, an id not released).
    pub(crate) registry_errors: AtomicU64,
    /// Room emits replayed to sessions that moved here (handled here before they arrived,
    /// after their old hub's cut).
    pub(crate) room_replayed: AtomicU64,
    /// Room emits not delivered again to sessions that moved here (their old hub had).
    pub(crate) room_skipped: AtomicU64,
    /// Topic messages (`publication`, `topic_ended`) replayed to sessions that moved here.
    pub(crate) topic_replayed: AtomicU64,
    /// Topic messages not delivered again to sessions that moved here (their old hub had).
    pub(crate) topic_skipped: AtomicU64,
    /// Shared-state sessions this hub took over from its mirror when their home left.
    pub(crate) sessions_taken_over: AtomicU64,
    /// Shared-state sessions whose home left and that another hub took over: this hub's
    /// members follow it there.
    pub(crate) sessions_followed: AtomicU64,
    /// Shared-state sessions this hub held that another hub took over while this one was
    /// cut off: its members joined them there.
    pub(crate) sessions_handed_over: AtomicU64,
}

enum Op {
    Claim {
        id: ClientId,
        reply: oneshot::Sender<Result<Claim, ClusterError>>,
    },
    Release {
        id: ClientId,
    },
    Join {
        room: RoomName,
        id: ClientId,
        /// The connection and request to answer with `ok` once the membership is recorded.
        done: Option<(u64, Option<u64>)>,
    },
    Leave {
        room: RoomName,
        id: ClientId,
    },
    /// The registry does not show `id` as this hub's, but a local connection holds it.
    Reclaim {
        id: ClientId,
    },
    /// The registry shows `id` as this hub's, but no local connection holds it.
    Forget {
        id: ClientId,
    },
    /// Hand `id` to node `to` (its session moves there); answers whether it did.
    Transfer {
        id: ClientId,
        to: String,
        reply: oneshot::Sender<bool>,
    },
}

#[derive(Debug)]
struct RelayedCall {
    origin: String,
    /// The call's id on the caller's hub.
    call: u64,
    /// The provider answering it (its `calls_in_flight` counts the call).
    provider: Arc<crate::registry::ConnShared>,
    until: Instant,
}

/// Messages held for a client whose session is on its way here.
#[derive(Debug)]
struct Arriving {
    since: Instant,
    held: Vec<(String, ServerFrame)>,
}

/// How long messages are held for a session that does not arrive (its handshake failed).
const ARRIVING_FOR: Duration = Duration::from_secs(10);

/// Most clients whose sessions are on their way here at once.
const MAX_ARRIVING: usize = 4096;
/// Most messages held for one arriving client.
const MAX_HELD: usize = 1024;

/// Most calls from other hubs in flight at once on this hub's providers.
pub(crate) const MAX_RELAYED_CALLS: usize = 1 << 20;

#[derive(Debug)]
struct RelayedAck {
    origin: String,
    until: Instant,
}

/// Where a client id is.
#[derive(Debug)]
pub(crate) enum Remote {
    /// Held by this node, or by no node.
    Nowhere,
    /// Held by another node.
    On(String),
}

/// This hub's part of a cluster.
pub(crate) struct Backplane {
    cluster: Cluster,
    node: String,
    out: mpsc::Sender<(String, Bytes)>,
    /// Messages in `out` or being published by the publisher task.
    queued: Arc<AtomicU64>,
    /// Messages collected per subject until the flusher publishes them (see [`batch`]);
    /// every message for a subject with an open batch joins it, so order holds.
    batches: Mutex<batch::Batches>,
    /// How many batches are open (read without the lock on the way to publish).
    open_batches: std::sync::atomic::AtomicUsize,
    /// Wakes the flusher when a batch opens.
    flush: tokio::sync::Notify,
    ops: Vec<mpsc::Sender<Op>>,
    /// Local connections that sent to a client of another hub, told when its id is released.
    remote_watchers: DashMap<ClientId, HashSet<u64>>,
    /// Acks awaited by other hubs' clients from this hub's clients: (replier, ack_id).
    relayed_acks: Mutex<HashMap<(ClientId, u64), RelayedAck>>,
    ack_ttl: Duration,
    /// Calls from other hubs' clients to this hub's providers, by the id given to the provider.
    relayed_calls: Mutex<HashMap<u64, RelayedCall>>,
    next_relayed_call: std::sync::atomic::AtomicU32,
    /// Rotates calls over the hubs that offer a service.
    next_pick: AtomicU64,
    max_calls_per_provider: u32,
    /// Direct messages for clients whose session is on its way here from another hub, held
    /// until it arrives (at most [`MAX_ARRIVING`] clients, [`MAX_HELD`] messages each).
    arriving: Mutex<HashMap<ClientId, Arriving>>,
    /// This hub's subscribers to topics of other hubs' providers.
    remote_subs: DashMap<(ServiceName, TopicName), Arc<topics::RemoteTopic>>,
    /// Bumped by every move's step under topic locks: a topic message that found no
    /// subscribers here compares it before and after to know whether some may have appeared.
    topics_epoch: AtomicU64,
    /// The same, by connection (for its limit and its end).
    subs_of: DashMap<u64, HashSet<(ServiceName, TopicName)>>,
    /// Clients of other hubs that local connections hold streams with: the connections and
    /// how many streams each holds (an entry lives as long as such a stream).
    stream_peers: DashMap<ClientId, HashMap<u64, u32>>,
    /// Sessions held by other hubs that local clients are members of.
    held: DashMap<peermesh_proto::SessionName, sessions::Held>,
    /// Snapshot chunks of sessions held elsewhere, until the last one is in.
    partials: Mutex<crate::sessions::mirror::Partials>,
    /// Sessions whose home left the cluster that this hub is taking over or re-finding.
    resolving: DashMap<peermesh_proto::SessionName, sessions::Resolving>,
    /// Local clients that moved here and asked their sessions' homes for a snapshot.
    moving_in: DashMap<peermesh_proto::SessionName, sessions::MovingIn>,
    /// A resync of the members of sessions held elsewhere waits for NATS to be back.
    resyncing: std::sync::atomic::AtomicBool,
    /// `max_sessions_per_client`: pending joins count.
    max_sessions_per_client: usize,
    pub(crate) counters: ClusterCounters,
    /// This hub's room-emit numbering and recent history of every hub's room emits.
    room_log: fanlog::FanLog,
    /// The same for topic messages (`publication`, `topic_ended`), numbered apart.
    topic_log: fanlog::FanLog,
    pending: Mutex<Option<Pending>>,
}

struct Pending {
    out: mpsc::Receiver<(String, Bytes)>,
    ops: Vec<mpsc::Receiver<Op>>,
    events: Option<mpsc::Receiver<Event>>,
}

impl std::fmt::Debug for Backplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backplane")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

fn node_subject(node: &str) -> String {
    format!("peermesh.node.{node}")
}

fn migrate_subject(node: &str) -> String {
    format!("peermesh.migrate.{node}")
}

/// How long hub B waits for hub A to hand a session over.
const MIGRATE_TIMEOUT: Duration = Duration::from_secs(3);

fn push_hex(s: &mut String, text: &str) {
    use std::fmt::Write;
    for b in text.as_bytes() {
        let _ = write!(s, "{b:02x}");
    }
}

fn topic_subject(service: &ServiceName, topic: &TopicName) -> String {
    let mut s = String::from("peermesh.topic.");
    push_hex(&mut s, service.as_str());
    s.push('.');
    push_hex(&mut s, topic.as_str());
    s
}

fn room_subject(room: &RoomName) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(14 + room.as_str().len() * 2);
    s.push_str("peermesh.room.");
    for b in room.as_str().as_bytes() {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn worker_of(id: &ClientId) -> usize {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    let h = BuildHasherDefault::<DefaultHasher>::default().hash_one(id.as_str());
    (h % ID_WORKERS as u64) as usize
}

impl Backplane {
    /// A backplane over a joined cluster; its tasks start with [`Backplane::start`].
    pub(crate) fn new(
        cluster: Cluster,
        ack_ttl: Duration,
        max_calls_per_provider: u32,
        max_sessions_per_client: usize,
    ) -> Backplane {
        let (out, out_rx) = mpsc::channel(OUT_QUEUE);
        let (ops, ops_rx): (Vec<_>, Vec<_>) =
            (0..ID_WORKERS).map(|_| mpsc::channel(OPS_QUEUE)).unzip();
        let events = cluster.take_events();
        let room_log = fanlog::FanLog::new(cluster.node(), fanlog::FanLog::start_now());
        let topic_log = fanlog::FanLog::new(cluster.node(), fanlog::FanLog::start_now());
        Backplane {
            node: cluster.node().to_owned(),
            cluster,
            out,
            queued: Arc::new(AtomicU64::new(0)),
            batches: Mutex::new(batch::Batches::default()),
            open_batches: std::sync::atomic::AtomicUsize::new(0),
            flush: tokio::sync::Notify::new(),
            ops,
            remote_watchers: DashMap::new(),
            relayed_acks: Mutex::new(HashMap::new()),
            ack_ttl,
            relayed_calls: Mutex::new(HashMap::new()),
            next_relayed_call: std::sync::atomic::AtomicU32::new(rand::random()),
            next_pick: AtomicU64::new(0),
            max_calls_per_provider,
            arriving: Mutex::new(HashMap::new()),
            remote_subs: DashMap::new(),
            topics_epoch: AtomicU64::new(0),
            subs_of: DashMap::new(),
            stream_peers: DashMap::new(),
            held: DashMap::new(),
            partials: Mutex::new(Default::default()),
            resolving: DashMap::new(),
            resyncing: Default::default(),
            moving_in: DashMap::new(),
            max_sessions_per_client,
            counters: ClusterCounters::default(),
            room_log,
            topic_log,
            pending: Mutex::new(Some(Pending {
                out: out_rx,
                ops: ops_rx,
                events,
            })),
        }
    }

    /// This node's name.
    pub(crate) fn node(&self) -> &str {
        &self.node
    }

    /// The cluster membership.
    pub(crate) fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Starts the publisher, the inbound subscriptions, the id workers and the event task.
    pub(crate) async fn start(
        self: &Arc<Self>,
        router: Router,
        shutdown: CancellationToken,
    ) -> Result<(), ClusterError> {
        let Some(p) = self.pending.lock().take() else {
            return Ok(());
        };
        let nats = self.cluster.nats().clone();
        let direct = nats
            .subscribe(node_subject(&self.node))
            .await
            .map_err(|e| ClusterError::Nats {
                op: "subscribe",
                reason: e.to_string(),
            })?;
        let rooms = nats
            .subscribe(ROOM_SUBJECTS)
            .await
            .map_err(|e| ClusterError::Nats {
                op: "subscribe",
                reason: e.to_string(),
            })?;
        let topics = nats
            .subscribe(TOPIC_SUBJECTS)
            .await
            .map_err(|e| ClusterError::Nats {
                op: "subscribe",
                reason: e.to_string(),
            })?;
        let migrations = nats
            .subscribe(migrate_subject(&self.node))
            .await
            .map_err(|e| ClusterError::Nats {
                op: "subscribe",
                reason: e.to_string(),
            })?;
        let spawn = |f: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>| {
            let token = shutdown.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = token.cancelled() => {}
                    _ = f => {}
                }
            });
        };
        spawn(Box::pin(publish(self.clone(), nats, p.out)));
        spawn(Box::pin(flusher(self.clone())));
        spawn(Box::pin(inbound(self.clone(), router.clone(), direct)));
        spawn(Box::pin(inbound(self.clone(), router.clone(), rooms)));
        spawn(Box::pin(inbound(self.clone(), router.clone(), topics)));
        for rx in p.ops {
            spawn(Box::pin(id_worker(self.clone(), router.clone(), rx)));
        }
        if let Some(ev) = p.events {
            spawn(Box::pin(events(self.clone(), router.clone(), ev)));
        }
        spawn(Box::pin(serve_migrations(
            self.clone(),
            router.clone(),
            migrations,
        )));
        spawn(Box::pin(streams::watch_interruptions(
            self.clone(),
            router.clone(),
        )));
        spawn(Box::pin(reconcile(self.clone(), router)));
        Ok(())
    }

    /// Publishes a message: into the open batch of its subject if there is one (it must
    /// leave after what the batch holds), else at once ([`Backplane::publish_now`]).
    fn enqueue(&self, subject: String, msg: Bytes) -> bool {
        if self.open_batches.load(std::sync::atomic::Ordering::Acquire) > 0 {
            let mut batches = self.batches.lock();
            if batches.is_open(&subject) {
                return self.add_to_batch(&mut batches, subject, msg);
            }
        }
        self.publish_now(subject, msg)
    }

    /// Publishes a message with the others for its subject that this hub produces before its
    /// flusher runs, as one NATS message (see [`batch`]): for a stream of messages where
    /// one NATS message each costs more than the message itself (a busy session's events).
    fn enqueue_batched(&self, subject: String, msg: Bytes) -> bool {
        let mut batches = self.batches.lock();
        self.add_to_batch(&mut batches, subject, msg)
    }

    fn add_to_batch(&self, batches: &mut batch::Batches, subject: String, msg: Bytes) -> bool {
        let added = batches.add(&subject, msg);
        if added.opened {
            self.open_batches
                .store(batches.len(), std::sync::atomic::Ordering::Release);
            self.flush.notify_one();
        }
        match added.publish {
            // Under the lock: nothing else for the subject can go out before it.
            Some(full) => self.publish_sealed(subject, full),
            None => true,
        }
    }

    /// Publishes every open batch; run by the flusher task.
    fn flush_batches(&self) {
        let mut batches = self.batches.lock();
        for (subject, msg) in batches.take_all() {
            self.publish_sealed(subject, msg);
        }
        self.open_batches
            .store(0, std::sync::atomic::Ordering::Release);
    }

    /// Publishes what a batch collected (a batch, or its one message), counting batches.
    fn publish_sealed(&self, subject: String, msg: Bytes) -> bool {
        if let Some(n) = batch::count(&msg) {
            self.counters.batches.fetch_add(1, Relaxed);
            self.counters.batched.fetch_add(u64::from(n), Relaxed);
        }
        self.publish_now(subject, msg)
    }

    /// Publishes a message: straight into the NATS client when nothing of this hub waits in
    /// the queue (one task hop less), else behind what waits, so messages leave in order.
    fn publish_now(&self, subject: String, msg: Bytes) -> bool {
        use futures_util::FutureExt;
        let len = msg.len() as u64;
        if self.queued.load(std::sync::atomic::Ordering::Acquire) == 0 {
            let now = self
                .cluster
                .nats()
                .publish(subject.clone(), msg.clone())
                .now_or_never();
            if let Some(done) = now {
                if done.is_err() {
                    self.counters.dropped.fetch_add(1, Relaxed);
                    return false;
                }
                self.counters.sent.fetch_add(1, Relaxed);
                self.counters.sent_bytes.fetch_add(len, Relaxed);
                return true;
            }
        }
        self.queued
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        match self.out.try_send((subject, msg)) {
            Ok(()) => {
                self.counters.sent.fetch_add(1, Relaxed);
                self.counters.sent_bytes.fetch_add(len, Relaxed);
                true
            }
            Err(_) => {
                self.queued
                    .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
                self.counters.dropped.fetch_add(1, Relaxed);
                false
            }
        }
    }

    /// Claims `id` for a new local connection (every successful claim is matched by one
    /// [`Backplane::release`]).
    pub(crate) async fn acquire(&self, id: &ClientId) -> Result<Claim, ClusterError> {
        let (reply, rx) = oneshot::channel();
        let op = Op::Claim {
            id: id.clone(),
            reply,
        };
        let closed = || ClusterError::Nats {
            op: "claim an id",
            reason: "the hub is shutting down".into(),
        };
        self.ops[worker_of(id)]
            .send(op)
            .await
            .map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }

    /// A local connection holding `id` ended.
    pub(crate) async fn release(&self, id: &ClientId) {
        let _ = self.ops[worker_of(id)]
            .send(Op::Release { id: id.clone() })
            .await;
    }

    fn op(&self, id: &ClientId, op: Op) {
        let tx = &self.ops[worker_of(id)];
        if let Err(mpsc::error::TrySendError::Full(op)) = tx.try_send(op) {
            // Rare: keep the operation (a lost leave would leave a stale member behind).
            let tx = tx.clone();
            tokio::spawn(async move {
                let _ = tx.send(op).await;
            });
        }
    }

    /// Records that local client `id` joined `room`; `ok` goes to `(conn, req)` once the
    /// membership is visible to the cluster.
    pub(crate) fn joined(&self, room: &RoomName, id: &ClientId, done: Option<(u64, Option<u64>)>) {
        let op = Op::Join {
            room: room.clone(),
            id: id.clone(),
            done,
        };
        self.op(id, op);
    }

    /// Records that local client `id` left `room`.
    pub(crate) fn left(&self, room: &RoomName, id: &ClientId) {
        let op = Op::Leave {
            room: room.clone(),
            id: id.clone(),
        };
        self.op(id, op);
    }

    /// Where `id` is, when it is not on this hub.
    pub(crate) fn locate(&self, id: &ClientId) -> Remote {
        match self.cluster.owner(id.as_str()) {
            Some(node) if node != self.node => Remote::On(node),
            _ => Remote::Nowhere,
        }
    }

    /// Sends a frame to client `to` on hub `node`; false when the queue to NATS is full.
    pub(crate) fn direct(&self, node: &str, to: &ClientId, frame: &ServerFrame) -> bool {
        self.direct_for(&self.node, node, to, frame)
    }

    /// Sends a frame from a client of hub `origin` to client `to` on hub `node`.
    fn direct_for(&self, origin: &str, node: &str, to: &ClientId, frame: &ServerFrame) -> bool {
        let msg = Relay::Direct {
            origin: origin.to_owned(),
            to: to.clone(),
            frame: frame.clone(),
        }
        .encode();
        self.enqueue(node_subject(node), msg)
    }

    /// Local connection `conn` sent to `id` on another hub: tell it when `id` leaves.
    pub(crate) fn watch(&self, id: &ClientId, conn: u64) {
        self.remote_watchers
            .entry(id.clone())
            .or_default()
            .insert(conn);
    }

    /// Local connection `conn` ended or stopped caring about `id`.
    pub(crate) fn unwatch(&self, id: &ClientId, conn: u64) {
        self.remote_watchers.remove_if_mut(id, |_, set| {
            set.remove(&conn);
            set.is_empty()
        });
    }

    /// Whether another hub awaits the reply of local client `from` to `ack_id`.
    pub(crate) fn awaits(&self, from: &ClientId, ack_id: u64) -> bool {
        self.relayed_acks
            .lock()
            .contains_key(&(from.clone(), ack_id))
    }

    /// Routes a reply of local client `from` to the hub awaiting it; false when no other hub
    /// awaits `ack_id` from `from`.
    pub(crate) fn reply(
        &self,
        from: &ClientId,
        ack_id: u64,
        payload: peermesh_proto::Payload,
    ) -> bool {
        let Some(waiting) = self.relayed_acks.lock().remove(&(from.clone(), ack_id)) else {
            return false;
        };
        let msg = Relay::AckReply {
            ack_id,
            from: from.clone(),
            payload,
        }
        .encode();
        self.enqueue(node_subject(&waiting.origin), msg);
        true
    }

    fn await_ack(&self, to: &ClientId, ack_id: u64, origin: String) {
        let now = Instant::now();
        let mut acks = self.relayed_acks.lock();
        if acks.len() >= MAX_RELAYED_ACKS {
            acks.retain(|_, a| a.until > now);
            if acks.len() >= MAX_RELAYED_ACKS {
                // The sender's own timeout answers it.
                return;
            }
        }
        acks.insert(
            (to.clone(), ack_id),
            RelayedAck {
                origin,
                until: now + self.ack_ttl,
            },
        );
    }

    /// Drops remembered acks and calls whose caller has timed out.
    fn expire_acks(&self) {
        let now = Instant::now();
        self.relayed_acks.lock().retain(|_, a| a.until > now);
        self.arriving
            .lock()
            .retain(|_, a| now.saturating_duration_since(a.since) < ARRIVING_FOR);
        self.relayed_calls.lock().retain(|_, c| {
            let keep = c.until > now;
            if !keep {
                release_call(&c.provider);
            }
            keep
        });
    }

    /// Which hub answers a call of `service.method`: `None` for this one, else another hub
    /// that offers it. The hub's own handlers answer first; client providers share the calls
    /// with the other hubs that offer the method, in turn.
    pub(crate) fn pick(
        &self,
        service: &peermesh_proto::ServiceName,
        method: &peermesh_proto::MethodName,
        local: Option<bool>,
    ) -> Option<String> {
        if local == Some(true) {
            return None;
        }
        let nodes = self
            .cluster
            .nodes_offering(service.as_str(), method.as_str());
        if nodes.is_empty() {
            return None;
        }
        let slots = nodes.len() + usize::from(local.is_some());
        let i = (self.next_pick.fetch_add(1, Relaxed) % slots as u64) as usize;
        nodes.get(i).cloned()
    }

    /// Sends a call of a local client (call id `call`) to hub `node`.
    pub(crate) fn call(&self, node: &str, timeout_ms: u64, invoke: ServerFrame) -> bool {
        let msg = Relay::Call {
            origin: self.node.clone(),
            timeout_ms,
            invoke,
        }
        .encode();
        self.enqueue(node_subject(node), msg)
    }

    /// A local provider answered call `call`; true when it was a call from another hub (the
    /// answer then goes back there).
    pub(crate) fn respond(
        &self,
        provider: u64,
        call: u64,
        outcome: Result<peermesh_proto::Payload, String>,
    ) -> bool {
        let relayed = {
            let mut calls = self.relayed_calls.lock();
            match calls.get(&call) {
                Some(c) if c.provider.conn == provider => calls.remove(&call),
                _ => None,
            }
        };
        let Some(c) = relayed else {
            return false;
        };
        release_call(&c.provider);
        let outcome = match outcome {
            Ok(payload) => ServerFrame::CallResult {
                req: c.call,
                payload,
            },
            Err(m) => ServerFrame::Error(peermesh_proto::ErrorFrame::new(
                ErrorCode::ServiceError,
                m,
                Some(c.call),
            )),
        };
        self.enqueue(
            node_subject(&c.origin),
            Relay::CallDone { outcome }.encode(),
        );
        true
    }

    /// A local provider left: calls other hubs' clients made to it fail with `provider_left`.
    pub(crate) fn provider_gone(&self, provider: u64) {
        let gone: Vec<RelayedCall> = {
            let mut calls = self.relayed_calls.lock();
            let ids: Vec<u64> = calls
                .iter()
                .filter(|(_, c)| c.provider.conn == provider)
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter().filter_map(|id| calls.remove(&id)).collect()
        };
        for c in gone {
            self.fail_call(
                &c.origin,
                c.call,
                ErrorCode::ProviderLeft,
                "the provider disconnected before answering",
            );
        }
    }

    fn fail_call(&self, origin: &str, call: u64, code: ErrorCode, message: &str) {
        let outcome =
            ServerFrame::Error(peermesh_proto::ErrorFrame::new(code, message, Some(call)));
        self.enqueue(node_subject(origin), Relay::CallDone { outcome }.encode());
    }

    /// A call from another hub's client: routed to this hub's handler or a client provider.
    fn take_call(
        &self,
        router: &Router,
        origin: String,
        timeout_ms: u64,
        invoke: peermesh_proto::Invoke,
    ) {
        use crate::services::Route;
        let route =
            router
                .services
                .route(&invoke.service, &invoke.method, self.max_calls_per_provider);
        let call = invoke.call;
        match route {
            Err((code, m)) => self.fail_call(&origin, call, code, &m),
            Ok(Route::Hub(handler)) => {
                let inv = crate::services::api::Invocation {
                    from: invoke.from,
                    service: invoke.service,
                    method: invoke.method,
                    payload: invoke.payload,
                };
                let out = self.out.clone();
                let queued = self.queued.clone();
                let subject = node_subject(&origin);
                let wait = Duration::from_millis(timeout_ms);
                tokio::spawn(async move {
                    let Ok(done) = tokio::time::timeout(wait, handler(inv)).await else {
                        return;
                    };
                    let outcome = match done {
                        Ok(payload) => ServerFrame::CallResult { req: call, payload },
                        Err(e) => ServerFrame::Error(peermesh_proto::ErrorFrame::new(
                            ErrorCode::ServiceError,
                            e.message,
                            Some(call),
                        )),
                    };
                    queued.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                    if out
                        .try_send((subject, Relay::CallDone { outcome }.encode()))
                        .is_err()
                    {
                        queued.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
                    }
                });
            }
            Ok(Route::Client(provider)) => {
                let local = (u64::from(crate::registry::RELAY_SLOT) << 32)
                    | u64::from(self.next_relayed_call.fetch_add(1, Relaxed));
                {
                    let mut calls = self.relayed_calls.lock();
                    if calls.len() >= MAX_RELAYED_CALLS {
                        drop(calls);
                        release_call(&provider);
                        return self.fail_call(
                            &origin,
                            call,
                            ErrorCode::ServiceBusy,
                            "this hub has too many calls from other hubs in flight",
                        );
                    }
                    calls.insert(
                        local,
                        RelayedCall {
                            origin: origin.clone(),
                            call,
                            provider: provider.clone(),
                            until: Instant::now()
                                + Duration::from_millis(timeout_ms)
                                + Duration::from_secs(1),
                        },
                    );
                }
                let frame = ServerFrame::Invoke(peermesh_proto::Invoke {
                    call: local,
                    ..invoke
                });
                let body = peermesh_proto::EncodedBody::encode(provider.encoding, &frame);
                if router.to_conn(&provider, body).is_err()
                    && self.relayed_calls.lock().remove(&local).is_some()
                {
                    release_call(&provider);
                    self.fail_call(
                        &origin,
                        call,
                        ErrorCode::ProviderLeft,
                        "the provider is disconnecting",
                    );
                }
            }
        }
    }

    /// Asks hub `node`, which holds the session of `id`, to hand it over to this hub.
    pub(crate) async fn migrate(
        &self,
        node: &str,
        id: &ClientId,
        secret: &str,
        last_seq: u64,
        enc: peermesh_proto::Encoding,
    ) -> Result<Handoff, peermesh_proto::ResumeRefusal> {
        use peermesh_proto::ResumeRefusal;
        let req = handoff::MigrateRequest {
            id: id.as_str().to_owned(),
            secret: secret.to_owned(),
            last_seq,
            enc: enc.as_str().to_owned(),
            to: self.node.clone(),
        };
        let Ok(body) = serde_json::to_vec(&req) else {
            return Err(ResumeRefusal::Expired);
        };
        {
            let mut arriving = self.arriving.lock();
            if arriving.len() < MAX_ARRIVING {
                arriving.insert(
                    id.clone(),
                    Arriving {
                        since: Instant::now(),
                        held: Vec::new(),
                    },
                );
            }
        }
        // This hub's picture of the room emits before asking: for a hub the other one never
        // heard from, the emits handled here since are owed to the client.
        let mark = self.room_cut();
        let topic_mark = self.topic_cut();
        let answer = self.ask_handoff(node, body).await;
        if answer.is_err() {
            self.arriving.lock().remove(id);
        }
        answer.map(|mut h| {
            h.mark = mark;
            h.topic_mark = topic_mark;
            h
        })
    }

    async fn ask_handoff(
        &self,
        node: &str,
        body: Vec<u8>,
    ) -> Result<Handoff, peermesh_proto::ResumeRefusal> {
        use peermesh_proto::ResumeRefusal;
        let ask = self
            .cluster
            .nats()
            .request(migrate_subject(node), body.into());
        match tokio::time::timeout(MIGRATE_TIMEOUT, ask).await {
            Ok(Ok(msg)) => match handoff::decode_answer(&msg.payload) {
                Ok(answer) => answer,
                Err(e) => {
                    self.counters.malformed.fetch_add(1, Relaxed);
                    debug!(node, error = %e, "a session handoff could not be read");
                    Err(ResumeRefusal::Expired)
                }
            },
            Ok(Err(e)) => {
                debug!(node, error = %e, "no session handoff");
                Err(ResumeRefusal::Expired)
            }
            Err(_) => {
                debug!(node, "the session handoff timed out");
                Err(ResumeRefusal::Expired)
            }
        }
    }

    /// Holds a direct message for a client whose session is on its way here; false when no
    /// session of that id is expected.
    fn hold_arriving(&self, to: &ClientId, origin: &str, frame: &ServerFrame) -> bool {
        let mut arriving = self.arriving.lock();
        match arriving.get_mut(to) {
            Some(a) if a.held.len() < MAX_HELD => {
                a.held.push((origin.to_owned(), frame.clone()));
                true
            }
            _ => false,
        }
    }

    /// The session of `id` arrived (it is registered here): delivers what was held for it.
    pub(crate) fn arrived(self: &Arc<Self>, router: &Router, id: &ClientId) {
        let held = self
            .arriving
            .lock()
            .remove(id)
            .map(|a| a.held)
            .unwrap_or_default();
        for (origin, frame) in held {
            handle(
                self,
                router,
                Relay::Direct {
                    origin,
                    to: id.clone(),
                    frame,
                },
            );
        }
    }

    /// Hands `id` to node `to` in the registry (its session moves there).
    pub(crate) async fn transfer(&self, id: &ClientId, to: &str) -> bool {
        let (reply, rx) = oneshot::channel();
        let op = Op::Transfer {
            id: id.clone(),
            to: to.to_owned(),
            reply,
        };
        if self.ops[worker_of(id)].send(op).await.is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    /// Leaves the cluster: releases this hub's ids and room memberships at once (after
    /// publishing what waits in open batches: the last events and answers of its sessions).
    pub(crate) async fn leave(&self) {
        self.flush_batches();
        if let Err(e) = self.cluster.leave().await {
            warn!(error = %e, "leaving the cluster failed; the others release this hub's ids when its heartbeats stop");
        }
    }
}

async fn publish(
    bp: Arc<Backplane>,
    nats: peermesh_cluster::async_nats::Client,
    mut rx: mpsc::Receiver<(String, Bytes)>,
) {
    while let Some((subject, msg)) = rx.recv().await {
        if let Err(e) = nats.publish(subject, msg).await {
            bp.counters.dropped.fetch_add(1, Relaxed);
            debug!(error = %e, "a cluster message was not published");
        }
        bp.queued.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Publishes the open batches whenever one opens: after the task that opened it yields.
async fn flusher(bp: Arc<Backplane>) {
    loop {
        bp.flush.notified().await;
        bp.flush_batches();
    }
}

async fn inbound(
    bp: Arc<Backplane>,
    router: Router,
    mut sub: peermesh_cluster::async_nats::Subscriber,
) {
    let mut last_expiry = Instant::now();
    while let Some(msg) = sub.next().await {
        bp.counters.received.fetch_add(1, Relaxed);
        bp.counters
            .received_bytes
            .fetch_add(msg.payload.len() as u64, Relaxed);
        if msg.payload.first() == Some(&batch::BATCH_KIND) {
            match batch::split(&msg.payload) {
                Ok(msgs) => {
                    for m in &msgs {
                        received(&bp, &router, &msg.subject, m);
                    }
                }
                Err(e) => {
                    bp.counters.malformed.fetch_add(1, Relaxed);
                    debug!(subject = %msg.subject, error = %e, "a cluster batch was dropped");
                }
            }
        } else {
            received(&bp, &router, &msg.subject, &msg.payload);
        }
        if last_expiry.elapsed() > Duration::from_secs(1) {
            last_expiry = Instant::now();
            bp.expire_acks();
        }
    }
}

/// One relay message from another hub (alone or out of a batch).
fn received(bp: &Arc<Backplane>, router: &Router, subject: &str, payload: &Bytes) {
    match Relay::decode(payload) {
        Ok(Relay::Room {
            seq,
            origin,
            room,
            frame,
        }) => {
            if origin != bp.node {
                bp.room_in(router, &origin, seq, &room, &frame, payload);
            }
        }
        Ok(Relay::Topic { seq, origin, frame }) => {
            if origin != bp.node {
                bp.topic_in(router, &frame, Some((&origin, seq, payload)));
            }
        }
        Ok(r) => handle(bp, router, r),
        Err(e) => {
            bp.counters.malformed.fetch_add(1, Relaxed);
            debug!(subject, error = %e, "a cluster message was dropped");
        }
    }
}

fn handle(bp: &Arc<Backplane>, router: &Router, r: Relay) {
    match r {
        Relay::Direct { origin, to, frame } => {
            let ack_id = match &frame {
                ServerFrame::Message(m) => m.ack_id,
                _ => None,
            };
            let delivered = match router.to_local_client(&to, &frame) {
                Ok(_) => true,
                // Its session is on its way here from another hub: held until it arrives.
                Err(_) if bp.hold_arriving(&to, &origin, &frame) => return,
                // The client is gone from here or closing because its session just moved to
                // another hub (the sender's hub did not know yet): pass the frame on, once,
                // with its origin.
                Err(_) => match bp.locate(&to) {
                    Remote::On(node) if node != origin => {
                        if bp.direct_for(&origin, &node, &to, &frame) {
                            return;
                        }
                        false
                    }
                    _ => false,
                },
            };
            match (ack_id, delivered) {
                (Some(ack_id), true) => bp.await_ack(&to, ack_id, origin),
                (Some(ack_id), false) => {
                    let msg = Relay::AckFailed { ack_id, to }.encode();
                    bp.enqueue(node_subject(&origin), msg);
                }
                (None, _) => {}
            }
        }
        Relay::AckReply {
            ack_id,
            from,
            payload,
        } => {
            let ctrl = Control::AckReply {
                ack_id,
                from,
                payload,
            };
            router.control_slot(conn_of(ack_id), ctrl);
        }
        Relay::AckFailed { ack_id, to } => {
            router.control_slot(conn_of(ack_id), Control::AckFailed { ack_id, to });
        }
        // Handled by `inbound`, which has the message's bytes.
        Relay::Room { .. } => {}
        Relay::Call {
            origin,
            timeout_ms,
            invoke: ServerFrame::Invoke(invoke),
        } => bp.take_call(router, origin, timeout_ms, invoke),
        Relay::Call { .. } => {}
        // Handled by `inbound`, which has the message's bytes.
        Relay::Topic { .. } => {}
        Relay::Stream(m) => bp.stream_in(router, *m),
        Relay::SessionAsk {
            origin,
            client,
            conn,
            rtt_ms,
            ask,
        } => bp.session_ask(router, origin, client, conn, rtt_ms, ask),
        Relay::SessionOut {
            origin,
            session,
            to,
            skip,
            frame,
        } => bp.session_in(router, origin, session, to, skip, frame),
        Relay::SessionBurst {
            origin,
            session,
            skip,
            frames,
        } => bp.session_events_in(&origin, &session, skip.as_ref(), frames, true),
        Relay::SessionLeft {
            origin,
            session,
            client,
        } => bp.session_left_in(origin, session, client),
        Relay::CallDone { outcome } => {
            let (call, ctrl) = match outcome {
                ServerFrame::CallResult { req, payload } => (
                    req,
                    Control::CallDone {
                        call: req,
                        provider: crate::conn::REMOTE_PROVIDER,
                        outcome: Ok(payload),
                    },
                ),
                ServerFrame::Error(peermesh_proto::ErrorFrame {
                    code: ErrorCode::ServiceError,
                    message,
                    req: Some(req),
                }) => (
                    req,
                    Control::CallDone {
                        call: req,
                        provider: crate::conn::REMOTE_PROVIDER,
                        outcome: Err(message),
                    },
                ),
                ServerFrame::Error(peermesh_proto::ErrorFrame {
                    code,
                    message,
                    req: Some(req),
                }) => (
                    req,
                    Control::CallFailed {
                        call: req,
                        code,
                        message,
                    },
                ),
                _ => return,
            };
            router.control_slot(conn_of(call), ctrl);
        }
    }
}

/// A call counted in a provider's `calls_in_flight` ended.
fn release_call(provider: &crate::registry::ConnShared) {
    let _ = provider.calls_in_flight.fetch_update(
        std::sync::atomic::Ordering::AcqRel,
        std::sync::atomic::Ordering::Relaxed,
        |n| n.checked_sub(1),
    );
}

async fn id_worker(bp: Arc<Backplane>, router: Router, mut rx: mpsc::Receiver<Op>) {
    let mut held: HashMap<ClientId, u32> = HashMap::new();
    while let Some(op) = rx.recv().await {
        match op {
            Op::Claim { id, reply } => {
                let out = match held.get_mut(&id) {
                    Some(n) => {
                        *n += 1;
                        Ok(Claim::Won)
                    }
                    None => {
                        let r = bp.cluster.claim(id.as_str()).await;
                        if let Ok(Claim::Won) = r {
                            held.insert(id, 1);
                        }
                        r
                    }
                };
                let _ = reply.send(out);
            }
            Op::Release { id } => {
                let last = match held.get_mut(&id) {
                    Some(n) if *n > 1 => {
                        *n -= 1;
                        false
                    }
                    Some(_) => true,
                    None => false,
                };
                if last {
                    held.remove(&id);
                    if let Err(e) = bp.cluster.release(id.as_str()).await {
                        bp.counters.registry_errors.fetch_add(1, Relaxed);
                        warn!(id = %id, error = %e, "an id was not released; the cluster frees it if this hub dies");
                    }
                }
            }
            Op::Join { room, id, done } => {
                if let Err(e) = bp.cluster.join_room(room.as_str(), id.as_str()).await {
                    bp.counters.registry_errors.fetch_add(1, Relaxed);
                    warn!(room = %room, id = %id, error = %e, "a room member was not recorded in the cluster");
                }
                if let Some((conn, req)) = done {
                    router.control(conn, Control::Ok { req });
                }
            }
            Op::Leave { room, id } => {
                if let Err(e) = bp.cluster.leave_room(room.as_str(), id.as_str()).await {
                    bp.counters.registry_errors.fetch_add(1, Relaxed);
                    warn!(room = %room, id = %id, error = %e, "a room leave was not recorded in the cluster");
                }
            }
            Op::Reclaim { id } => {
                if !held.contains_key(&id) {
                    continue;
                }
                match bp.cluster.claim(id.as_str()).await {
                    Ok(Claim::Won) => debug!(id = %id, "an id claimed again after a registry loss"),
                    Ok(Claim::Taken { node }) => {
                        // Another hub registered it while this one was cut off: it keeps it.
                        warn!(id = %id, node, "an id this hub held was taken by another hub meanwhile");
                        if let Some(c) = router.registry.client(&id) {
                            c.close(
                                ErrorCode::IdTaken,
                                format!(
                                    "while this hub was cut off from its cluster, hub {node:?} \
                                     accepted a client with your id; reconnect with another id"
                                ),
                            );
                        }
                    }
                    Err(e) => debug!(id = %id, error = %e, "reclaim failed; trying again later"),
                }
            }
            Op::Transfer { id, to, reply } => {
                let done = matches!(bp.cluster.transfer(id.as_str(), &to).await, Ok(true));
                if done {
                    held.remove(&id);
                }
                let _ = reply.send(done);
            }
            Op::Forget { id } => {
                if held.contains_key(&id) {
                    continue;
                }
                if let Err(e) = bp.cluster.release(id.as_str()).await {
                    debug!(id = %id, error = %e, "a stale id was not released; trying again later");
                }
            }
        }
    }
}

async fn events(bp: Arc<Backplane>, router: Router, mut rx: mpsc::Receiver<Event>) {
    // A dead hub's ids come released one by one: sweep its topics and sessions once.
    let mut swept: Option<(String, Instant)> = None;
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::IdReleased { id, node } if node != bp.node => {
                let Ok(id) = ClientId::new(&id) else { continue };
                bp.stream_peer_released(&router, &id, &node);
                if !bp.cluster.is_member(&node) {
                    // Its hub died: it leaves the sessions held here.
                    router.sessions.remote_gone(&id, &node);
                    let fresh = swept
                        .as_ref()
                        .is_some_and(|(n, at)| *n == node && at.elapsed() < Duration::from_secs(1));
                    if !fresh {
                        bp.end_orphaned_topics(&router);
                        bp.resolve_orphaned_sessions(&router);
                        swept = Some((node.clone(), Instant::now()));
                    }
                }
                if let Some((_, conns)) = bp.remote_watchers.remove(&id) {
                    for conn in conns {
                        router.control(
                            conn,
                            Control::PeerGone {
                                id: id.clone(),
                                conn: 0,
                            },
                        );
                    }
                }
            }
            Event::NodeGone { node } if node != bp.node => {
                // Sessions it held are taken over (or re-found) at once, not at the reconcile.
                debug!(%node, "a hub left the cluster");
                bp.resolve_orphaned_sessions(&router);
            }
            Event::Joined { room, id, node } if node != bp.node => {
                let (Ok(room), Ok(id)) = (RoomName::new(&room), ClientId::new(&id)) else {
                    continue;
                };
                let f = ServerFrame::MemberJoined {
                    room: room.clone(),
                    id,
                };
                router.to_room(&room, &f, None);
            }
            Event::Left { room, id, node } if node != bp.node => {
                let (Ok(room), Ok(id)) = (RoomName::new(&room), ClientId::new(&id)) else {
                    continue;
                };
                let f = ServerFrame::MemberLeft {
                    room: room.clone(),
                    id,
                };
                router.to_room(&room, &f, None);
            }
            _ => {}
        }
    }
}

/// Repairs the registry after NATS outages: ids and memberships the cluster shows for this hub
/// without a local client are released, local ones the cluster lost are recorded again. Each
/// repair runs on the id's worker, after any claim or release already queued for it.
async fn reconcile(bp: Arc<Backplane>, router: Router) {
    let mut t = tokio::time::interval(RECONCILE_EVERY);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    t.tick().await;
    loop {
        t.tick().await;
        if !bp.cluster.connected() {
            continue;
        }
        bp.resolve_orphaned_sessions(&router);
        bp.check_sessions_held_here(&router);
        bp.expire_moving_in();
        bp.end_orphaned_topics(&router);
        let owned: HashSet<String> = bp.cluster.owned_ids().into_iter().collect();
        let recorded: HashSet<(String, String)> =
            bp.cluster.owned_memberships().into_iter().collect();
        let conns = router.registry.all_conns();
        let mut local_rooms: HashSet<(String, String)> = HashSet::new();
        for c in &conns {
            bp.drop_orphaned_joins(&router, c);
            if !owned.contains(c.client.as_str()) {
                bp.op(
                    &c.client,
                    Op::Reclaim {
                        id: c.client.clone(),
                    },
                );
            }
            for room in c.rooms.lock().iter() {
                let key = (room.as_str().to_owned(), c.client.as_str().to_owned());
                if !recorded.contains(&key) {
                    bp.joined(room, &c.client, None);
                }
                local_rooms.insert(key);
            }
        }
        for id in owned {
            let Ok(id) = ClientId::new(&id) else { continue };
            if router.registry.client(&id).is_none() {
                bp.op(&id, Op::Forget { id: id.clone() });
            }
        }
        for (room, id) in recorded {
            if local_rooms.contains(&(room.clone(), id.clone())) {
                continue;
            }
            if let (Ok(room), Ok(id)) = (RoomName::new(&room), ClientId::new(&id)) {
                bp.left(&room, &id);
            }
        }
    }
}

/// Answers other hubs' requests for sessions of this hub's clients.
async fn serve_migrations(
    bp: Arc<Backplane>,
    router: Router,
    mut sub: peermesh_cluster::async_nats::Subscriber,
) {
    use peermesh_proto::ResumeRefusal;
    while let Some(msg) = sub.next().await {
        let Some(reply_to) = msg.reply.clone() else {
            continue;
        };
        let nats = bp.cluster.nats().clone();
        let router = router.clone();
        tokio::spawn(async move {
            let answer = match serde_json::from_slice::<handoff::MigrateRequest>(&msg.payload) {
                Ok(req) => hand_over(&router, req).await,
                Err(e) => {
                    debug!(error = %e, "a session handoff request could not be read");
                    Err(ResumeRefusal::Expired)
                }
            };
            let body = handoff::encode_answer(&answer);
            if let Err(e) = nats.publish(reply_to, body).await {
                debug!(error = %e, "a session handoff answer was not sent");
            }
        });
    }
}

async fn hand_over(
    router: &Router,
    req: handoff::MigrateRequest,
) -> Result<Handoff, peermesh_proto::ResumeRefusal> {
    use peermesh_proto::ResumeRefusal;
    let id = handoff::request_id(&req).ok_or(ResumeRefusal::Expired)?;
    let Some(conn) = router.registry.client(&id) else {
        return Err(router.registry.why_not_resumable(&id, &req.secret));
    };
    if !conn.resumable {
        return Err(ResumeRefusal::Expired);
    }
    if !crate::registry::constant_eq(&req.secret, &conn.secret) {
        return Err(ResumeRefusal::BadSecret);
    }
    if req.encoding() != Some(conn.encoding) {
        return Err(ResumeRefusal::Encoding);
    }
    let (reply, rx) = oneshot::channel();
    let m = Migration {
        last_seq: req.last_seq,
        to: req.to,
        reply,
    };
    if !conn.control(Control::Migrate(Box::new(m))) {
        return Err(ResumeRefusal::Expired);
    }
    match tokio::time::timeout(MIGRATE_TIMEOUT, rx).await {
        Ok(Ok(answer)) => answer,
        _ => Err(ResumeRefusal::Expired),
    }
}

/// The checks of the fuzz target `cluster_message` (`peermesh_hub::fuzzing`).
pub(crate) fn check_message(data: &[u8]) -> bool {
    let Some((first, rest)) = data.split_first() else {
        return false;
    };
    if first & 1 == 0 {
        let rest = Bytes::copy_from_slice(rest);
        if rest.first() == Some(&batch::BATCH_KIND) {
            // A batch: what splits seals back to the same bytes, and each message in it is
            // checked as if it came alone.
            let Ok(msgs) = batch::split(&rest) else {
                return false;
            };
            assert_eq!(
                batch::seal(msgs.clone()),
                rest,
                "a batch must survive split → seal"
            );
            for m in msgs {
                let mut alone = vec![0u8];
                alone.extend_from_slice(&m);
                check_message(&alone);
            }
            return true;
        }
        let Ok(r) = Relay::decode(&rest) else {
            return false;
        };
        let again = Relay::decode(&r.encode());
        assert_eq!(
            again.as_ref(),
            Ok(&r),
            "a cluster message must survive encode → decode"
        );
        match &r {
            // What a member hub's mirror makes of any session frame: never a panic.
            Relay::SessionOut { frame, .. } => crate::sessions::mirror::check_frame(frame),
            Relay::SessionBurst { frames, .. } => {
                frames.iter().for_each(crate::sessions::mirror::check_frame)
            }
            _ => {}
        }
        true
    } else {
        let Ok(answer) = handoff::decode_answer(rest) else {
            return false;
        };
        let again = handoff::decode_answer(&handoff::encode_answer(&answer));
        assert_eq!(
            again.as_ref(),
            Ok(&answer),
            "a handoff must survive encode → decode"
        );
        true
    }
}

/// Seed inputs of the fuzz target: one of each message kind.
pub(crate) fn seeds() -> Vec<Vec<u8>> {
    use peermesh_proto::{Message as MessageFrame, Payload};
    let id = |s: &str| ClientId::new(s).ok();
    let (Some(alice), Some(bob)) = (id("alice"), id("bob")) else {
        return Vec::new();
    };
    let Ok(event) = peermesh_proto::EventName::new("chat") else {
        return Vec::new();
    };
    let Ok(room) = RoomName::new("lobby") else {
        return Vec::new();
    };
    let msg = ServerFrame::Message(MessageFrame {
        from: alice.clone(),
        event,
        payload: Payload::Json(serde_json::json!({"text": "hi", "n": [1, 2.5]})),
        room: None,
        ack_id: Some(7 << 32 | 1),
    });
    let relays = [
        Relay::Direct {
            origin: "hub-a".into(),
            to: bob.clone(),
            frame: msg.clone(),
        },
        Relay::AckReply {
            ack_id: 7 << 32 | 1,
            from: bob.clone(),
            payload: Payload::Bin(Bytes::from_static(b"ok")),
        },
        Relay::AckFailed {
            ack_id: 3,
            to: bob.clone(),
        },
        Relay::Room {
            seq: 42,
            origin: "hub-b".into(),
            room,
            frame: msg,
        },
        Relay::Topic {
            seq: 43,
            origin: "hub-a".into(),
            frame: ServerFrame::Publication(peermesh_proto::Publication {
                service: match ServiceName::new("news") {
                    Ok(s) => s,
                    Err(_) => return Vec::new(),
                },
                topic: match TopicName::new("sport") {
                    Ok(t) => t,
                    Err(_) => return Vec::new(),
                },
                payload: Payload::Json(serde_json::json!({"goal": 1})),
            }),
        },
        Relay::Stream(Box::new(relay::StreamMsg {
            to: bob.clone(),
            conn: 0,
            stream: 0,
            origin: "hub-a".into(),
            from: alice.clone(),
            from_conn: 4,
            from_stream: 1,
            item: relay::StreamWire::Open {
                window: 65_536,
                meta: Some(serde_json::json!({"file": "x.bin"})),
            },
        })),
        Relay::SessionAsk {
            origin: "hub-b".into(),
            client: alice.clone(),
            conn: 3,
            rtt_ms: Some(20),
            ask: relay::Ask::Frame(ClientFrame::SessionJoin {
                session: peermesh_proto::SessionName::new("game").ok(),
                mode: None,
                req: Some(1),
            }),
        },
        Relay::SessionOut {
            origin: "hub-a".into(),
            session: match peermesh_proto::SessionName::new("game") {
                Ok(s) => s,
                Err(_) => return Vec::new(),
            },
            to: None,
            skip: Some(alice.clone()),
            frame: ServerFrame::Ok { req: 1 },
        },
        Relay::SessionOut {
            origin: "hub-a".into(),
            session: match peermesh_proto::SessionName::new("game") {
                Ok(s) => s,
                Err(_) => return Vec::new(),
            },
            to: None,
            skip: None,
            frame: ServerFrame::SessionEvent {
                session: match peermesh_proto::SessionName::new("game") {
                    Ok(s) => s,
                    Err(_) => return Vec::new(),
                },
                rev: 2,
                by: alice.clone(),
                change: peermesh_proto::SessionChange::Created {
                    object: match peermesh_proto::ObjectName::new("o") {
                        Ok(o) => o,
                        Err(_) => return Vec::new(),
                    },
                    payload: Payload::Json(serde_json::json!({"x": 1})),
                    owner: Some(alice.clone()),
                    on_owner_leave: peermesh_proto::OwnerLeave::Authority,
                },
            },
        },
        Relay::SessionOut {
            origin: "hub-a".into(),
            session: match peermesh_proto::SessionName::new("game") {
                Ok(s) => s,
                Err(_) => return Vec::new(),
            },
            to: Some(bob.clone()),
            skip: None,
            frame: ServerFrame::SessionState(peermesh_proto::SessionState {
                session: match peermesh_proto::SessionName::new("game") {
                    Ok(s) => s,
                    Err(_) => return Vec::new(),
                },
                req: None,
                rev: 3,
                mode: peermesh_proto::SessionMode::Authoritative,
                authority: Some(alice.clone()),
                epoch: 1,
                members: vec![peermesh_proto::SessionMember {
                    id: alice.clone(),
                    order: 1,
                    rtt_ms: Some(2),
                    away: false,
                }],
                objects: Vec::new(),
                more: false,
            }),
        },
        Relay::SessionBurst {
            origin: "hub-a".into(),
            session: match peermesh_proto::SessionName::new("game") {
                Ok(s) => s,
                Err(_) => return Vec::new(),
            },
            skip: Some(alice.clone()),
            frames: vec![
                ServerFrame::SessionEvent {
                    session: match peermesh_proto::SessionName::new("game") {
                        Ok(s) => s,
                        Err(_) => return Vec::new(),
                    },
                    rev: 4,
                    by: alice.clone(),
                    change: peermesh_proto::SessionChange::Transferred {
                        object: match peermesh_proto::ObjectName::new("o") {
                            Ok(o) => o,
                            Err(_) => return Vec::new(),
                        },
                        owner: Some(bob.clone()),
                    },
                },
                ServerFrame::SessionEvent {
                    session: match peermesh_proto::SessionName::new("game") {
                        Ok(s) => s,
                        Err(_) => return Vec::new(),
                    },
                    rev: 5,
                    by: alice.clone(),
                    change: peermesh_proto::SessionChange::MemberLeft {
                        member: alice.clone(),
                    },
                },
            ],
        },
        Relay::SessionLeft {
            origin: "hub-a".into(),
            session: match peermesh_proto::SessionName::new("game") {
                Ok(s) => s,
                Err(_) => return Vec::new(),
            },
            client: alice.clone(),
        },
        Relay::Stream(Box::new(relay::StreamMsg {
            to: bob,
            conn: 2,
            stream: 3,
            origin: "hub-a".into(),
            from: alice.clone(),
            from_conn: 4,
            from_stream: 1,
            item: relay::StreamWire::Data(Bytes::from_static(b"hello")),
        })),
    ];
    let mut out: Vec<Vec<u8>> = relays
        .iter()
        .map(|r| {
            let mut v = vec![0u8];
            v.extend_from_slice(&r.encode());
            v
        })
        .collect();
    // A batch of the session messages, as a busy session's home publishes them.
    let mut v = vec![0u8];
    v.extend_from_slice(&batch::seal(
        relays
            .iter()
            .filter(|r| matches!(r, Relay::SessionOut { .. } | Relay::SessionBurst { .. }))
            .map(Relay::encode)
            .collect(),
    ));
    out.push(v);
    let handoff = Ok(Handoff {
        last_written: 9,
        in_count: 4,
        secret: "0123".into(),
        rooms: RoomName::new("lobby").into_iter().collect(),
        frames: vec![crate::ws::Message::Text("{\"seq\":9}".into())],
        sessions: peermesh_proto::SessionName::new("game-1")
            .into_iter()
            .collect(),
        cut: vec![("hub-a".into(), 77)],
        mark: Vec::new(),
        topics: ServiceName::new("sport")
            .into_iter()
            .zip(TopicName::new("scores"))
            .collect(),
        topic_cut: vec![("hub-b".into(), 12)],
        topic_mark: Vec::new(),
    });
    let mut v = vec![1u8];
    v.extend_from_slice(&handoff::encode_answer(&handoff));
    out.push(v);
    out
}
