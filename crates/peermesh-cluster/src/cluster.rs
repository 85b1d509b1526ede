//! The cluster node: heartbeats, the member table, the id registry and the reaper.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::config::{ClusterConfig, ClusterError};

/// The subject every node's heartbeat goes to.
pub const HEARTBEAT_SUBJECT: &str = "peermesh.cluster.heartbeat";

/// The outcome of a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The id is this node's now (or already was).
    Won,
    /// Another node holds it.
    Taken {
        /// That node.
        node: String,
    },
}

/// A node of the cluster, as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its name.
    pub name: String,
    /// The clients it reported in its last heartbeat.
    pub clients: u64,
    /// How long ago its last heartbeat came (zero for this node).
    pub silent_for: Duration,
    /// Whether this is the local node.
    pub local: bool,
    /// The services it offers (from its last heartbeat).
    pub services: Services,
}

#[derive(Debug, Serialize, Deserialize)]
struct Heartbeat {
    node: String,
    instance: u64,
    clients: u64,
    #[serde(default)]
    leaving: bool,
    #[serde(default)]
    services: Services,
    #[serde(default)]
    topics: Services,
}

#[derive(Debug)]
struct Seen {
    instance: u64,
    clients: u64,
    at: Instant,
    services: Services,
    topics: Services,
}

/// Services a node offers: service name to its methods (sorted).
pub type Services = BTreeMap<String, Vec<String>>;

/// Most services a heartbeat advertises (the rest are not offered to other nodes).
pub const MAX_ADVERTISED_SERVICES: usize = 1024;

/// A change in the cluster that a hub acts on, in the order the registry reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `id` is free again: its client left `node`, or `node` died and its ids were released.
    IdReleased {
        /// The client id.
        id: String,
        /// The node that held it.
        node: String,
    },
    /// Client `id`, on `node`, is now a member of `room`.
    Joined {
        /// The room.
        room: String,
        /// The client id.
        id: String,
        /// Its node.
        node: String,
    },
    /// Client `id`, on `node`, is no longer a member of `room` (it left, or its node died).
    Left {
        /// The room.
        room: String,
        /// The client id.
        id: String,
        /// Its node.
        node: String,
    },
    /// `node` left the cluster: it said so (a graceful leave), or it fell silent for
    /// `dead_after` while this node was connected. Its ids may not be released yet.
    NodeGone {
        /// The node.
        node: String,
    },
}

/// How long after a node is counted gone its session keys stay its own, for the nodes with
/// the sessions' state to take them over; then the reaper frees what is left.
pub const SESSION_KEY_GRACE: Duration = Duration::from_secs(5);

/// Most events waiting for the hub; the registry watches wait (and JetStream holds the rest)
/// while the queue is full, so nothing is lost.
const EVENT_QUEUE: usize = 4096;

#[derive(Debug, Default)]
struct State {
    members: BTreeMap<String, Seen>,
    /// When nodes were counted gone (dead or left), for the grace of their session keys.
    gone_at: HashMap<String, Instant>,
    /// Every claimed id (hex key) and its node, as the registry's watch reports them.
    owners: HashMap<String, String>,
    /// Room memberships: room key (`r.<hex room>.<hex id>`) to node.
    memberships: HashMap<String, String>,
    /// Members by room (decoded), for member lists: room to (id to node).
    rooms: HashMap<String, HashMap<String, String>>,
}

#[derive(Debug)]
struct Shared {
    cfg: ClusterConfig,
    instance: u64,
    client: async_nats::Client,
    kv: kv::Store,
    rooms_kv: kv::Store,
    state: Mutex<State>,
    events: Mutex<Option<mpsc::Sender<Event>>>,
    clients: AtomicU64,
    released: AtomicU64,
    started: Instant,
    /// The services (with their methods) and the topics (by service) this node offers, sent
    /// with its heartbeats.
    services: Mutex<(Services, Services)>,
    /// Set by [`Cluster::leave`]: no more heartbeats.
    left: std::sync::atomic::AtomicBool,
    /// Counts the moments messages to or from NATS may have been lost.
    interruptions: Arc<watch::Sender<u64>>,
}

/// A node of a cluster; see the [crate docs](crate). Dropping it stops its heartbeats (the
/// others then release its ids, as for a crash); [`Cluster::leave`] releases them at once.
#[derive(Debug)]
pub struct Cluster {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn push_hex(k: &mut String, s: &str) {
    use std::fmt::Write;
    for b in s.as_bytes() {
        let _ = write!(k, "{b:02x}");
    }
}

fn key_of(id: &str) -> String {
    // KV keys allow only [-/_=.a-zA-Z0-9]; client ids allow more. Hex keeps every id apart.
    let mut k = String::with_capacity(id.len() * 2 + 3);
    k.push_str("id.");
    push_hex(&mut k, id);
    k
}

fn is_session_key(key: &str) -> bool {
    key.starts_with("s.")
}

/// The key of the hub that holds session `name`: `s.<hex name>` (in the ids bucket, so a dead
/// node's sessions are released with its ids).
fn session_key(name: &str) -> String {
    let mut k = String::with_capacity(name.len() * 2 + 2);
    k.push_str("s.");
    push_hex(&mut k, name);
    k
}

/// The key of `id`'s membership of `room`: `r.<hex room>.<hex id>`.
fn room_key(room: &str, id: &str) -> String {
    let mut k = String::with_capacity(room.len() * 2 + id.len() * 2 + 3);
    k.push_str("r.");
    push_hex(&mut k, room);
    k.push('.');
    push_hex(&mut k, id);
    k
}

fn unhex(h: &str) -> Option<String> {
    if !h.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(h.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

/// The id of a key made by [`key_of`].
fn id_of_key(key: &str) -> Option<String> {
    unhex(key.strip_prefix("id.")?)
}

/// The room and id of a key made by [`room_key`].
fn room_of_key(key: &str) -> Option<(String, String)> {
    let (room, id) = key.strip_prefix("r.")?.split_once('.')?;
    Some((unhex(room)?, unhex(id)?))
}

fn instance_nonce() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ (u64::from(std::process::id()) << 32) ^ (&t as *const u64 as u64)
}

async fn open_bucket(
    js: &async_nats::jetstream::Context,
    cfg: &ClusterConfig,
    bucket: &str,
    description: &str,
) -> Result<kv::Store, ClusterError> {
    if let Ok(kv) = js.get_key_value(bucket).await {
        return Ok(kv);
    }
    let created = js
        .create_key_value(kv::Config {
            bucket: bucket.to_owned(),
            history: 1,
            description: description.to_owned(),
            ..Default::default()
        })
        .await;
    match created {
        Ok(kv) => Ok(kv),
        // Several nodes starting at once: another one created the bucket first.
        Err(e) => js
            .get_key_value(bucket)
            .await
            .map_err(|_| ClusterError::NoJetStream {
                url: cfg.url.clone(),
                reason: e.to_string(),
            }),
    }
}

async fn connect(
    cfg: &ClusterConfig,
    interruptions: &Arc<watch::Sender<u64>>,
) -> Result<async_nats::Client, ClusterError> {
    let deadline = cfg.wait.map(|w| Instant::now() + w);
    loop {
        // No echo: a hub never needs its own messages back (room emits and publications go to
        // subjects it subscribes to as well; registry watches are deliveries of the server).
        let counter = interruptions.clone();
        let opts = async_nats::ConnectOptions::new()
            .name(format!("peermesh {}", cfg.node))
            .no_echo()
            .connection_timeout(Duration::from_secs(2))
            .event_callback(move |event| {
                // Messages may have been lost on the way: a lost connection drops what was
                // buffered, a slow consumer drops what did not fit.
                if matches!(
                    event,
                    async_nats::Event::Disconnected | async_nats::Event::SlowConsumer(_)
                ) {
                    counter.send_modify(|n| *n += 1);
                }
                async {}
            });
        match opts.connect(cfg.url.as_str()).await {
            Ok(c) => return Ok(c),
            Err(e) => {
                let again = deadline.is_some_and(|d| Instant::now() < d);
                if !again {
                    return Err(ClusterError::Unreachable {
                        url: cfg.url.clone(),
                        reason: e.to_string(),
                    });
                }
                debug!(url = %cfg.url, error = %e, "NATS not reachable yet; retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

impl Cluster {
    /// Connects to NATS, opens the id registry, checks that no live node has this name, and
    /// starts the heartbeats, the member table and the reaper.
    pub async fn join(cfg: ClusterConfig) -> Result<Cluster, ClusterError> {
        cfg.validate()?;
        let interruptions = Arc::new(watch::Sender::new(0));
        let client = connect(&cfg, &interruptions).await?;
        let js = async_nats::jetstream::new(client.clone());
        let kv = open_bucket(
            &js,
            &cfg,
            &cfg.bucket,
            "peermesh client ids: key id.<hex of the id>, value the node",
        )
        .await?;
        let rooms_kv = open_bucket(
            &js,
            &cfg,
            &cfg.rooms_bucket,
            "peermesh room members: key r.<hex room>.<hex id>, value the node",
        )
        .await?;
        let shared = Arc::new(Shared {
            instance: instance_nonce(),
            cfg,
            client,
            kv,
            rooms_kv,
            state: Mutex::new(State::default()),
            events: Mutex::new(None),
            clients: AtomicU64::new(0),
            released: AtomicU64::new(0),
            started: Instant::now(),
            left: std::sync::atomic::AtomicBool::new(false),
            services: Mutex::new((Services::new(), Services::new())),
            interruptions,
        });
        let mut tasks = Vec::new();
        // Listen to heartbeats before sending ours, and long enough to hear every live node.
        let sub = shared
            .client
            .subscribe(HEARTBEAT_SUBJECT)
            .await
            .map_err(|e| ClusterError::nats("subscribe", e))?;
        tasks.push(tokio::spawn(listen(shared.clone(), sub)));
        tasks.push(tokio::spawn(watch(shared.clone(), Registry::Ids)));
        tasks.push(tokio::spawn(watch(shared.clone(), Registry::Rooms)));
        tokio::time::sleep(shared.cfg.heartbeat + shared.cfg.heartbeat / 2).await;
        let clash = {
            let st = shared
                .state
                .lock()
                .map_err(|_| ClusterError::nats("join", "poisoned"))?;
            st.members
                .get(&shared.cfg.node)
                .is_some_and(|s| s.instance != shared.instance)
        };
        if clash {
            for t in &tasks {
                t.abort();
            }
            return Err(ClusterError::NameTaken(shared.cfg.node.clone()));
        }
        tasks.push(tokio::spawn(beat(shared.clone())));
        tasks.push(tokio::spawn(reap(shared.clone())));
        info!(node = %shared.cfg.node, url = %shared.cfg.url, "joined the cluster");
        Ok(Cluster { shared, tasks })
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.shared.cfg.node
    }

    /// Reports this node's client count (sent with the next heartbeats).
    pub fn set_clients(&self, n: u64) {
        self.shared.clients.store(n, Relaxed);
    }

    /// Counts the moments when messages between this node and NATS may have been lost (the
    /// connection dropped, or a subscription overflowed): whoever relies on every message
    /// arriving (a stream across nodes) learns it here.
    pub fn interruptions(&self) -> watch::Receiver<u64> {
        self.shared.interruptions.subscribe()
    }

    /// Whether `node` is a live member of the cluster (this node included).
    pub fn is_member(&self, node: &str) -> bool {
        node == self.shared.cfg.node
            || self
                .shared
                .state
                .lock()
                .is_ok_and(|st| st.members.contains_key(node))
    }

    /// Ids of dead nodes this node released so far.
    pub fn released(&self) -> u64 {
        self.shared.released.load(Relaxed)
    }

    /// The live nodes, this one included, by name.
    pub fn members(&self) -> Vec<Member> {
        let now = Instant::now();
        let mut out = vec![Member {
            name: self.shared.cfg.node.clone(),
            clients: self.shared.clients.load(Relaxed),
            silent_for: Duration::ZERO,
            local: true,
            services: self
                .shared
                .services
                .lock()
                .map(|s| s.0.clone())
                .unwrap_or_default(),
        }];
        if let Ok(st) = self.shared.state.lock() {
            for (name, s) in &st.members {
                if *name == self.shared.cfg.node {
                    continue;
                }
                out.push(Member {
                    name: name.clone(),
                    clients: s.clients,
                    silent_for: now.saturating_duration_since(s.at),
                    local: false,
                    services: s.services.clone(),
                });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// The node that holds `id`, as far as this node has heard.
    pub fn owner(&self, id: &str) -> Option<String> {
        let st = self.shared.state.lock().ok()?;
        st.owners.get(&key_of(id)).cloned()
    }

    /// Claims `id` for this node: exactly one of several nodes claiming it at once wins.
    ///
    /// A claim is a compare-and-set on the id's key (the stream's expected last sequence of
    /// the key's subject), from "free" (no key, a delete marker or an empty value) to this
    /// node's name; of several at once, the server accepts exactly one.
    pub async fn claim(&self, id: &str) -> Result<Claim, ClusterError> {
        self.claim_key(key_of(id)).await
    }

    /// Claims session `name` for this node, the same way as an id: of several nodes creating
    /// it at once exactly one holds it; the others learn which ([`Claim::Taken`]).
    pub async fn claim_session(&self, name: &str) -> Result<Claim, ClusterError> {
        self.claim_key(session_key(name)).await
    }

    /// The node that holds session `name`, as far as this node has heard.
    pub fn session_home(&self, name: &str) -> Option<String> {
        let st = self.shared.state.lock().ok()?;
        st.owners.get(&session_key(name)).cloned()
    }

    /// Releases session `name` if this node holds it (its last member left).
    pub async fn release_session(&self, name: &str) -> Result<(), ClusterError> {
        self.check_connected("release a session")?;
        release_key(&self.shared, &session_key(name), &self.shared.cfg.node)
            .await
            .map(|_| ())
    }

    /// Takes session `name` over from node `gone`, which left the cluster: of several nodes
    /// taking it over at once (or creating it anew, once its key is released) exactly one
    /// wins; the others learn which ([`Claim::Taken`]).
    pub async fn take_over_session(&self, name: &str, gone: &str) -> Result<Claim, ClusterError> {
        if self.is_member(gone) {
            return Ok(Claim::Taken {
                node: gone.to_owned(),
            });
        }
        self.claim_key_from(session_key(name), Some(gone)).await
    }

    /// The node that holds session `name`, read from the registry now (not as heard).
    pub async fn session_home_now(&self, name: &str) -> Result<Option<String>, ClusterError> {
        self.check_connected("read a session's home")?;
        let entry = self
            .shared
            .kv
            .entry(session_key(name).as_str())
            .await
            .map_err(|e| ClusterError::nats("read a session's home", e))?;
        Ok(entry
            .filter(|e| e.operation == kv::Operation::Put && !e.value.is_empty())
            .map(|e| String::from_utf8_lossy(&e.value).into_owned()))
    }

    async fn claim_key(&self, key: String) -> Result<Claim, ClusterError> {
        self.claim_key_from(key, None).await
    }

    /// Claims `key` from "free", or from node `gone` when given.
    async fn claim_key_from(&self, key: String, gone: Option<&str>) -> Result<Claim, ClusterError> {
        self.check_connected("claim an id")?;
        let me = self.shared.cfg.node.clone();
        for _ in 0..5 {
            let entry = self
                .shared
                .kv
                .entry(key.as_str())
                .await
                .map_err(|e| ClusterError::nats("read a claim", e))?;
            let expected = match &entry {
                None => 0,
                Some(e) if e.operation != kv::Operation::Put || e.value.is_empty() => e.revision,
                Some(e) if gone.is_some_and(|g| e.value.as_ref() == g.as_bytes()) => e.revision,
                Some(e) => {
                    let node = String::from_utf8_lossy(&e.value).into_owned();
                    return Ok(if node == me {
                        Claim::Won
                    } else {
                        Claim::Taken { node }
                    });
                }
            };
            match self
                .shared
                .kv
                .update(key.as_str(), Bytes::from(me.clone()), expected)
                .await
            {
                Ok(_) => {
                    if let Ok(mut st) = self.shared.state.lock() {
                        st.owners.insert(key.clone(), me.clone());
                    }
                    return Ok(Claim::Won);
                }
                // Someone else changed the key first: read who, and answer from that.
                Err(e) => debug!(key, error = %e, "claim lost a race; reading again"),
            }
        }
        Err(ClusterError::nats(
            "claim an id",
            "the id changed hands five times in a row",
        ))
    }

    /// The NATS connection, for the hub's own subjects (`peermesh.node.<name>`, rooms).
    pub fn nats(&self) -> &async_nats::Client {
        &self.shared.client
    }

    /// The changes of the registries from now on (ids released, room members joining and
    /// leaving on any node, this one included). Only the first call gets the receiver; the
    /// queue holds [`EVENT_QUEUE`] events, and the watches wait while it is full.
    pub fn take_events(&self) -> Option<mpsc::Receiver<Event>> {
        let mut slot = self.shared.events.lock().ok()?;
        if slot.is_some() {
            return None;
        }
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        *slot = Some(tx);
        Some(rx)
    }

    /// Fails fast, instead of waiting for a request timeout, while NATS is unreachable.
    fn check_connected(&self, op: &'static str) -> Result<(), ClusterError> {
        if self.connected() {
            Ok(())
        } else {
            Err(ClusterError::nats(
                op,
                "not connected to NATS (it is down or restarting)",
            ))
        }
    }

    /// The ids this node holds, as the registry reports them.
    pub fn owned_ids(&self) -> Vec<String> {
        let Ok(st) = self.shared.state.lock() else {
            return Vec::new();
        };
        st.owners
            .iter()
            .filter(|(_, n)| **n == self.shared.cfg.node)
            .filter_map(|(k, _)| id_of_key(k))
            .collect()
    }

    /// The room memberships (room, id) of this node's clients, as the registry reports them.
    pub fn owned_memberships(&self) -> Vec<(String, String)> {
        let Ok(st) = self.shared.state.lock() else {
            return Vec::new();
        };
        st.memberships
            .iter()
            .filter(|(_, n)| **n == self.shared.cfg.node)
            .filter_map(|(k, _)| room_of_key(k))
            .collect()
    }

    /// Sets the services (service to methods) and topics (service to topic names) this node
    /// offers to the others, sent with the next heartbeat (at once when they changed); at most
    /// [`MAX_ADVERTISED_SERVICES`] of each.
    pub async fn set_offer(&self, mut services: Services, mut topics: Services) {
        while services.len() > MAX_ADVERTISED_SERVICES {
            services.pop_last();
        }
        while topics.len() > MAX_ADVERTISED_SERVICES {
            topics.pop_last();
        }
        let changed = match self.shared.services.lock() {
            Ok(mut s) if s.0 != services || s.1 != topics => {
                *s = (services, topics);
                true
            }
            _ => false,
        };
        if changed && !self.shared.left.load(Relaxed) {
            send_heartbeat(&self.shared, false).await;
        }
    }

    /// Whether another live node offers topic `topic` of `service`.
    pub fn topic_offered(&self, service: &str, topic: &str) -> bool {
        let Ok(st) = self.shared.state.lock() else {
            return false;
        };
        st.members.iter().any(|(n, s)| {
            *n != self.shared.cfg.node
                && s.topics
                    .get(service)
                    .is_some_and(|t| t.binary_search_by(|x| x.as_str().cmp(topic)).is_ok())
        })
    }

    /// The other live nodes that offer `method` of `service`, by name.
    pub fn nodes_offering(&self, service: &str, method: &str) -> Vec<String> {
        let Ok(st) = self.shared.state.lock() else {
            return Vec::new();
        };
        st.members
            .iter()
            .filter(|(n, _)| **n != self.shared.cfg.node)
            .filter(|(_, s)| {
                s.services
                    .get(service)
                    .is_some_and(|m| m.binary_search_by(|x| x.as_str().cmp(method)).is_ok())
            })
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Whether the node is connected to NATS now.
    pub fn connected(&self) -> bool {
        self.shared.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Records that client `id` of this node is a member of `room`.
    pub async fn join_room(&self, room: &str, id: &str) -> Result<(), ClusterError> {
        self.check_connected("record a room member")?;
        let key = room_key(room, id);
        self.shared
            .rooms_kv
            .put(key.as_str(), Bytes::from(self.shared.cfg.node.clone()))
            .await
            .map_err(|e| ClusterError::nats("record a room member", e))?;
        Ok(())
    }

    /// Records that client `id` of this node left `room` (unless another node holds the entry
    /// now).
    pub async fn leave_room(&self, room: &str, id: &str) -> Result<(), ClusterError> {
        self.check_connected("record a room leave")?;
        free_key(
            &self.shared,
            Registry::Rooms,
            &room_key(room, id),
            &self.shared.cfg.node,
        )
        .await
        .map(|_| ())
    }

    /// The members of `room` on every node, as this node has heard: (id, node), by id.
    pub fn room_members(&self, room: &str) -> Vec<(String, String)> {
        let Ok(st) = self.shared.state.lock() else {
            return Vec::new();
        };
        let mut out: Vec<(String, String)> = st
            .rooms
            .get(room)
            .map(|m| m.iter().map(|(i, n)| (i.clone(), n.clone())).collect())
            .unwrap_or_default();
        out.sort();
        out
    }

    /// Hands `id` from this node to node `to` (a session moving there): a compare-and-set
    /// from this node's name to `to`, so the id is never free in between. False when this node
    /// does not hold it.
    pub async fn transfer(&self, id: &str, to: &str) -> Result<bool, ClusterError> {
        self.check_connected("hand an id over")?;
        let key = key_of(id);
        let entry = self
            .shared
            .kv
            .entry(key.as_str())
            .await
            .map_err(|e| ClusterError::nats("read a claim", e))?;
        let Some(entry) = entry else {
            return Ok(false);
        };
        if entry.operation != kv::Operation::Put
            || entry.value.as_ref() != self.shared.cfg.node.as_bytes()
        {
            return Ok(false);
        }
        match self
            .shared
            .kv
            .update(key.as_str(), Bytes::from(to.to_owned()), entry.revision)
            .await
        {
            Ok(_) => {
                if let Ok(mut st) = self.shared.state.lock() {
                    st.owners.insert(key, to.to_owned());
                }
                Ok(true)
            }
            Err(e) => {
                debug!(key, error = %e, "transfer skipped: the claim changed");
                Ok(false)
            }
        }
    }

    /// Releases `id` if this node holds it.
    pub async fn release(&self, id: &str) -> Result<(), ClusterError> {
        self.check_connected("release an id")?;
        release_key(&self.shared, &key_of(id), &self.shared.cfg.node)
            .await
            .map(|_| ())
    }

    /// Leaves the cluster now: releases every id of this node and tells the others, who drop
    /// it from their tables at once.
    pub async fn leave(&self) -> Result<(), ClusterError> {
        self.shared.left.store(true, Relaxed);
        // Session keys stay: another node with the session's state takes each over from
        // this one (compare-and-set from this node's name); the reaper frees the rest later.
        let mine: Vec<String> = match self.shared.state.lock() {
            Ok(st) => st
                .owners
                .iter()
                .filter(|(k, n)| **n == self.shared.cfg.node && !is_session_key(k))
                .map(|(k, _)| k.clone())
                .collect(),
            Err(_) => Vec::new(),
        };
        let rooms: Vec<String> = match self.shared.state.lock() {
            Ok(st) => st
                .memberships
                .iter()
                .filter(|(_, n)| **n == self.shared.cfg.node)
                .map(|(k, _)| k.clone())
                .collect(),
            Err(_) => Vec::new(),
        };
        for k in mine {
            release_key(&self.shared, &k, &self.shared.cfg.node).await?;
        }
        for k in rooms {
            free_key(&self.shared, Registry::Rooms, &k, &self.shared.cfg.node).await?;
        }
        send_heartbeat(&self.shared, true).await;
        let _ = self.shared.client.flush().await;
        Ok(())
    }
}

/// Frees `key` if `node` holds it: a compare-and-set to an empty value, so a newer claim by
/// another node is never removed. Whether it freed it.
async fn release_key(shared: &Shared, key: &str, node: &str) -> Result<bool, ClusterError> {
    free_key(shared, Registry::Ids, key, node).await
}

/// Frees `key` of a registry if `node` holds it (compare-and-set to an empty value).
async fn free_key(
    shared: &Shared,
    which: Registry,
    key: &str,
    node: &str,
) -> Result<bool, ClusterError> {
    let store = match which {
        Registry::Ids => &shared.kv,
        Registry::Rooms => &shared.rooms_kv,
    };
    let entry = store
        .entry(key)
        .await
        .map_err(|e| ClusterError::nats("read a claim", e))?;
    let Some(entry) = entry else {
        return Ok(false);
    };
    if entry.operation != kv::Operation::Put || entry.value.as_ref() != node.as_bytes() {
        return Ok(false);
    }
    match store.update(key, Bytes::new(), entry.revision).await {
        Ok(_) => Ok(true),
        Err(e) => {
            debug!(key, error = %e, "release skipped: the claim changed");
            Ok(false)
        }
    }
}

async fn send_heartbeat(shared: &Shared, leaving: bool) {
    let hb = Heartbeat {
        node: shared.cfg.node.clone(),
        instance: shared.instance,
        clients: shared.clients.load(Relaxed),
        leaving,
        services: shared
            .services
            .lock()
            .map(|s| s.0.clone())
            .unwrap_or_default(),
        topics: shared
            .services
            .lock()
            .map(|s| s.1.clone())
            .unwrap_or_default(),
    };
    if let Ok(body) = serde_json::to_vec(&hb) {
        if let Err(e) = shared.client.publish(HEARTBEAT_SUBJECT, body.into()).await {
            warn!(error = %e, "heartbeat not sent");
        }
    }
}

async fn beat(shared: Arc<Shared>) {
    let mut t = tokio::time::interval(shared.cfg.heartbeat);
    loop {
        t.tick().await;
        if shared.left.load(Relaxed) {
            return;
        }
        send_heartbeat(&shared, false).await;
    }
}

async fn listen(shared: Arc<Shared>, mut sub: async_nats::Subscriber) {
    while let Some(msg) = sub.next().await {
        let Ok(hb) = serde_json::from_slice::<Heartbeat>(&msg.payload) else {
            debug!("a heartbeat that is not JSON was ignored");
            continue;
        };
        let Ok(mut st) = shared.state.lock() else {
            return;
        };
        if hb.leaving {
            if st
                .members
                .get(&hb.node)
                .is_some_and(|s| s.instance == hb.instance)
            {
                st.members.remove(&hb.node);
                st.gone_at.insert(hb.node.clone(), Instant::now());
                drop(st);
                notify(&shared, Event::NodeGone { node: hb.node });
            }
            continue;
        }
        st.members.insert(
            hb.node,
            Seen {
                instance: hb.instance,
                clients: hb.clients,
                at: Instant::now(),
                services: hb.services,
                topics: hb.topics,
            },
        );
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Registry {
    Ids,
    Rooms,
}

/// Follows one key-value bucket into the local state, and reports what changed. The watch
/// starts again (from the bucket's whole content) when it ends, as after a NATS restart;
/// entries already known are not reported twice.
async fn watch(shared: Arc<Shared>, which: Registry) {
    let store = match which {
        Registry::Ids => &shared.kv,
        Registry::Rooms => &shared.rooms_kv,
    };
    loop {
        let mut watch = match store.watch_with_history(">").await {
            Ok(w) => w,
            Err(e) => {
                debug!(error = %e, ?which, "cannot watch a registry yet; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let mut failures = 0u32;
        while let Some(entry) = watch.next().await {
            let entry = match entry {
                Ok(entry) => {
                    failures = 0;
                    entry
                }
                Err(e) => {
                    // The watch's consumer is being recreated (NATS restarting, a missed
                    // heartbeat): it yields an error at once on every poll until that works,
                    // so wait before asking again instead of spinning on a worker thread.
                    failures = failures.saturating_add(1);
                    debug!(error = %e, ?which, failures, "a registry watch failed; retrying");
                    tokio::time::sleep(watch_backoff(failures)).await;
                    continue;
                }
            };
            let value = (entry.operation == kv::Operation::Put && !entry.value.is_empty())
                .then(|| String::from_utf8_lossy(&entry.value).into_owned());
            let event = {
                let Ok(mut st) = shared.state.lock() else {
                    return;
                };
                match which {
                    Registry::Ids => apply_id(&mut st, entry.key, value),
                    Registry::Rooms => apply_room(&mut st, entry.key, value),
                }
            };
            if let Some(ev) = event {
                let tx = shared.events.lock().ok().and_then(|t| t.clone());
                if let Some(tx) = tx {
                    let _ = tx.send(ev).await;
                }
            }
        }
        debug!(?which, "a registry watch ended; watching again");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The wait after the `failures`-th error in a row of a registry watch: 50 ms, doubling, at
/// most 2 s.
fn watch_backoff(failures: u32) -> Duration {
    let ms = 50u64.saturating_mul(1 << failures.saturating_sub(1).min(6));
    Duration::from_millis(ms.min(2_000))
}

fn apply_id(st: &mut State, key: String, value: Option<String>) -> Option<Event> {
    match value {
        Some(node) => {
            st.owners.insert(key, node);
            None
        }
        None => {
            let node = st.owners.remove(&key)?;
            Some(Event::IdReleased {
                id: id_of_key(&key)?,
                node,
            })
        }
    }
}

fn apply_room(st: &mut State, key: String, value: Option<String>) -> Option<Event> {
    let (room, id) = room_of_key(&key)?;
    match value {
        Some(node) => {
            // A member whose session moved to another node is no news: only its node changes.
            let known = st.memberships.insert(key, node.clone()).is_some();
            st.rooms
                .entry(room.clone())
                .or_default()
                .insert(id.clone(), node.clone());
            (!known).then_some(Event::Joined { room, id, node })
        }
        None => {
            let node = st.memberships.remove(&key)?;
            if let Some(members) = st.rooms.get_mut(&room) {
                members.remove(&id);
                if members.is_empty() {
                    st.rooms.remove(&room);
                }
            }
            Some(Event::Left { room, id, node })
        }
    }
}

/// Reports `ev` to the hub without waiting; when its queue is full the hub's periodic
/// reconcile finds the same change.
fn notify(shared: &Shared, ev: Event) {
    let tx = shared.events.lock().ok().and_then(|t| t.clone());
    if let Some(tx) = tx {
        let _ = tx.try_send(ev);
    }
}

/// Declares silent nodes dead; the first live node in name order releases their ids.
///
/// Silence heard while this node is cut off from NATS says nothing about the others: while
/// disconnected nobody is declared dead, and once connected again every node has
/// `dead_after` to be heard before it is.
async fn reap(shared: Arc<Shared>) {
    let mut t = tokio::time::interval(shared.cfg.heartbeat);
    let mut listening_since = shared.started;
    loop {
        t.tick().await;
        let now = Instant::now();
        if shared.client.connection_state() != async_nats::connection::State::Connected {
            listening_since = now;
            if let Ok(mut st) = shared.state.lock() {
                for seen in st.members.values_mut() {
                    seen.at = now;
                }
            }
            continue;
        }
        let (dead, reaper, keys) = {
            let Ok(mut st) = shared.state.lock() else {
                return;
            };
            let dead: Vec<String> = st
                .members
                .iter()
                .filter(|(n, s)| {
                    **n != shared.cfg.node
                        && now.saturating_duration_since(s.at) > shared.cfg.dead_after
                })
                .map(|(n, _)| n.clone())
                .collect();
            for d in &dead {
                st.members.remove(d);
                st.gone_at.insert(d.clone(), now);
            }
            st.gone_at
                .retain(|_, at| now.saturating_duration_since(*at) < SESSION_KEY_GRACE * 4);
            // Nodes that own ids but were never heard (dead before this node joined) are
            // dead too, once this node has listened for `dead_after`.
            let live: Vec<&String> = st.members.keys().collect();
            let first = live
                .iter()
                .map(|s| s.as_str())
                .chain(std::iter::once(shared.cfg.node.as_str()))
                .min()
                .map(str::to_owned);
            let reaper = first.as_deref() == Some(shared.cfg.node.as_str());
            let listened = now.saturating_duration_since(listening_since) > shared.cfg.dead_after;
            let orphan = |n: &String| {
                *n != shared.cfg.node
                    && !st.members.contains_key(n)
                    && (listened || dead.contains(n))
            };
            // A gone node's session keys wait a little longer: the nodes that hold the
            // session's state take it over from the gone node first.
            let settled = |k: &str, n: &String| {
                !is_session_key(k)
                    || st
                        .gone_at
                        .get(n)
                        .is_none_or(|at| now.saturating_duration_since(*at) > SESSION_KEY_GRACE)
            };
            let keys: Vec<(Registry, String, String)> = st
                .owners
                .iter()
                .map(|(k, n)| (Registry::Ids, k, n))
                .chain(st.memberships.iter().map(|(k, n)| (Registry::Rooms, k, n)))
                .filter(|(_, k, n)| orphan(n) && settled(k, n))
                .map(|(r, k, n)| (r, k.clone(), n.clone()))
                .collect();
            (dead, reaper, keys)
        };
        for d in dead.iter() {
            info!(node = %d, "a cluster node fell silent: counted as dead");
            notify(&shared, Event::NodeGone { node: d.clone() });
        }
        if reaper && !keys.is_empty() {
            for (which, k, n) in keys {
                if let Ok(true) = free_key(&shared, which, &k, &n).await {
                    if which == Registry::Ids {
                        shared.released.fetch_add(1, Relaxed);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_watch_waits_longer_each_time_up_to_two_seconds() {
        let waits: Vec<u64> = (1..=10)
            .map(|n| watch_backoff(n).as_millis() as u64)
            .collect();
        assert_eq!(
            waits,
            [50, 100, 200, 400, 800, 1600, 2000, 2000, 2000, 2000]
        );
        assert!(watch_backoff(u32::MAX) <= Duration::from_secs(2));
        assert!(
            watch_backoff(0) >= Duration::from_millis(50),
            "never a busy loop"
        );
    }
}
