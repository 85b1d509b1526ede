//! The mesh node, free of I/O: links, routing and the table, for peer-relay's wire.
//!
//! A [`Node`] is fed what happened on its links (`handle_*`, each with the current
//! `Instant`) and what the application wants ([`Node::send`], [`Node::connect`], …); it
//! answers with [`Output`]s to carry out (send a frame on a link, dial a URL, close a link)
//! and [`NodeEvent`]s for the application, and asks to be woken at [`Node::poll_timeout`]. The
//! tokio shell ([`crate::ws`]) and the simulator (`peermesh sim`) drive the same core.
//!
//! Links and candidates are kept by the [`PeerManager`] of [`crate::manager`], keyed by
//! [`NodeId`] and driven by the [`MeshPolicy`]; a manager "dial" is a handshake relayed over the
//! mesh (offer → answer with a listener URL → WebSocket connection).
//!
//! What peermesh does beyond peer-relay, on the same wire:
//! - links cover the k-buckets ([`ConnectionRule::Buckets`]), not only the closest ids;
//! - handshakes time out and are offered again, then the candidate is backed off;
//! - the way back to a sender is remembered per hop (peer-relay's memory breaks once a
//!   relayed message has been re-encoded), so answers reach newcomers;
//! - links are symmetric: a link is in the table on both sides or closed;
//! - the table is refreshed periodically and shortly after a link is lost;
//! - every memory is bounded: nonces, paths, candidates, the queue of unsent messages.

pub mod config;
mod memory;
pub mod policy;

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tracing::{debug, trace};

pub use config::{ConnectionRule, NodeConfig};
pub use policy::MeshPolicy;

use crate::id::{NodeId, BUCKETS};
use crate::manager::{Action, ConfigError, Direction, ManagerEvent, PeerManager, PeerState};
use crate::wire::peer_relay::{
    decode_envelope, decode_greeting, encode_envelope, encode_greeting, Envelope, Message, RawJson,
    WireError,
};
use crate::wire::Severity;
use memory::{Paths, Seen};

/// Candidates asked at once in an iterative lookup of the node's own id.
const LOOKUP_WIDTH: usize = 3;
/// Candidates remembered as already asked (so a lookup does not ask the same node twice).
const LOOKUP_MEMORY: usize = 64;

/// Most nodes remembered as about to dial us.
const EXPECTING: usize = 256;
/// Most nodes remembered as disconnected on request.
const REFUSED: usize = 1024;
/// How long a peer that closed our link is not dialled on our own.
const HOLD_AFTER_CLOSE: std::time::Duration = std::time::Duration::from_secs(5);
/// How long a node disconnected on request is refused.
const REFUSE_FOR: std::time::Duration = std::time::Duration::from_secs(60);

/// Most peer URLs remembered for rejoining.
const REJOIN_URLS: usize = 16;

/// Whether a message asks something of its target (a lookup or a handshake offer) rather than
/// answering it.
fn is_request(data: &RawJson) -> bool {
    let d = data.get();
    d.starts_with(r#"{"type":"findPeers""#) || d.starts_with(r#"{"type":"handshake-offer""#)
}

/// A link's number, unique within a node.
pub type LinkId = u64;

/// Something the shell must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Send one text message on the link.
    Transmit {
        /// The link.
        link: LinkId,
        /// The message (shared between the links a message fans out to).
        frame: Bytes,
    },
    /// Open a WebSocket to `url`, then report [`Node::handle_link_up`] or
    /// [`Node::handle_link_closed`] for `link`.
    Dial {
        /// The link number to report under.
        link: LinkId,
        /// Where to connect.
        url: String,
    },
    /// Close the link, then report [`Node::handle_link_closed`].
    Close {
        /// The link.
        link: LinkId,
        /// Why, for logs.
        reason: &'static str,
    },
}

/// Something that happened, for the application.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeEvent {
    /// A message addressed to this node.
    Message {
        /// The origin.
        from: NodeId,
        /// What it sent.
        data: RawJson,
        /// The nodes that carried it, origin first.
        path: Vec<NodeId>,
    },
    /// A direct link is up.
    PeerConnected(NodeId),
    /// A direct link is gone.
    PeerGone(NodeId),
}

/// Counters, for metrics and the simulator.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Frames received on links.
    pub frames_in: u64,
    /// Frames sent on links.
    pub frames_out: u64,
    /// Messages handled (received for the first time, delivered or relayed).
    pub handled: u64,
    /// User messages delivered to this node's application.
    pub delivered: u64,
    /// Messages sent on towards their target.
    pub relayed: u64,
    /// Copies of messages already seen, dropped.
    pub duplicates: u64,
    /// Of those, copies of user messages.
    pub user_duplicates: u64,
    /// Messages dropped at the hop limit.
    pub hop_limit: u64,
    /// Messages dropped because no link could take them on.
    pub no_route: u64,
    /// Frames dropped because they could not be decoded, by any reason.
    pub malformed: u64,
    /// Messages queued while the node had no link.
    pub queued: u64,
    /// Queued messages dropped because the queue was full.
    pub queue_dropped: u64,
    /// Handshake offers sent.
    pub offers: u64,
    /// Links refused or closed for bad greetings or for capacity.
    pub links_refused: u64,
    /// Second links to an already linked peer, kept as spares.
    pub duplicate_links: u64,
}

#[derive(Debug, Clone, PartialEq)]
enum LinkState {
    /// Dialled, not open yet.
    Dialing { expected: Option<NodeId> },
    /// Open, waiting for the peer's id.
    Greeting { expected: Option<NodeId> },
    /// In the table under this id.
    Up(NodeId),
    /// Closing; was in the table under this id if `Some`.
    Closing(Option<NodeId>),
}

#[derive(Debug)]
struct Link {
    state: LinkState,
    direction: Direction,
    since: Instant,
}

#[derive(Debug)]
struct Handshake {
    attempts: u32,
    next: Instant,
    dialing: bool,
    /// The answerer said it dials us; if its link has not come when the offer is due again,
    /// we dial this URL of its answer instead of offering again.
    fallback: Option<String>,
}

/// A message being sent on.
struct Routed<'a> {
    to: NodeId,
    from: NodeId,
    path: Vec<NodeId>,
    nonce: &'a str,
    data: &'a RawJson,
}

#[derive(Debug)]
struct Queued {
    to: NodeId,
    from: NodeId,
    path: Vec<NodeId>,
    nonce: String,
    data: RawJson,
}

/// The mesh node's state machine. See the module docs.
#[derive(Debug)]
pub struct Node {
    id: NodeId,
    url: Option<String>,
    cfg: NodeConfig,
    manager: PeerManager<NodeId, MeshPolicy>,
    links: HashMap<LinkId, Link>,
    by_peer: HashMap<NodeId, LinkId>,
    next_link: LinkId,
    handshakes: HashMap<NodeId, Handshake>,
    seen: Seen,
    paths: Paths,
    queue: VecDeque<Queued>,
    outputs: VecDeque<Output>,
    events: VecDeque<NodeEvent>,
    announced: std::collections::HashSet<NodeId>,
    /// Who told us about a candidate: a handshake offer goes through it, since it is linked
    /// to the candidate (or knows the way). Bounded: cleared when it outgrows the pool.
    introducers: HashMap<NodeId, NodeId>,
    /// URLs to rejoin through when the node has no link left: the bootstrap URLs, then the
    /// URLs of the last peers that answered a handshake (at most `REJOIN_URLS`).
    rejoin: VecDeque<String>,
    looked_up: VecDeque<NodeId>,
    /// Nodes whose offer we answered, until when: they dial us, so we do not offer to them
    /// (two crossing handshakes make two links). At most `EXPECTING` entries.
    expecting: HashMap<NodeId, Instant>,
    /// Nodes disconnected on request, until when they are refused (at most `REFUSED`).
    refused: HashMap<NodeId, Instant>,
    bootstraps: Vec<String>,
    rejoin_at: Option<Instant>,
    rejoin_backoff: std::time::Duration,
    next_refresh: Instant,
    repair_at: Option<Instant>,
    destroyed: bool,
    rng: StdRng,
    stats: NodeStats,
}

impl Node {
    /// A node with a random id drawn from `seed`, listening at `url` (or not listening).
    pub fn new(
        cfg: NodeConfig,
        url: Option<String>,
        now: Instant,
        seed: u64,
    ) -> Result<Self, ConfigError> {
        let mut rng = StdRng::seed_from_u64(seed);
        let id = NodeId::random(&mut rng);
        Self::with_id(id, cfg, url, now, seed)
    }

    /// A node with the given id.
    pub fn with_id(
        id: NodeId,
        cfg: NodeConfig,
        url: Option<String>,
        now: Instant,
        seed: u64,
    ) -> Result<Self, ConfigError> {
        let mcfg = cfg.manager_config()?;
        let policy = MeshPolicy::new(
            id,
            cfg.rule,
            cfg.target_peers,
            cfg.max_peers - cfg.reserve_inbound,
            cfg.links_per_bucket,
            cfg.near_links,
        );
        let mut manager = PeerManager::with_policy(mcfg, policy, now, seed ^ 0x6d65_7368)?;
        manager.launch_keys([], now);
        Ok(Self {
            id,
            url,
            seen: Seen::new(cfg.seen_capacity, cfg.seen_ttl),
            paths: Paths::new(cfg.path_capacity, cfg.path_ttl),
            next_refresh: now + cfg.refresh_interval,
            cfg,
            manager,
            links: HashMap::new(),
            by_peer: HashMap::new(),
            next_link: 1,
            handshakes: HashMap::new(),
            queue: VecDeque::new(),
            outputs: VecDeque::new(),
            events: VecDeque::new(),
            announced: Default::default(),
            introducers: HashMap::new(),
            rejoin: VecDeque::new(),
            looked_up: VecDeque::new(),
            expecting: HashMap::new(),
            refused: HashMap::new(),
            bootstraps: Vec::new(),
            rejoin_at: None,
            rejoin_backoff: std::time::Duration::ZERO,
            repair_at: None,
            destroyed: false,
            rng: StdRng::seed_from_u64(seed.rotate_left(17) ^ 0x7065_6572),
            stats: NodeStats::default(),
        })
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The WebSocket URL this node tells others to connect to.
    pub fn url(&self) -> Option<&str> {
        self.url.as_deref()
    }

    /// Sets the listener URL (once the shell knows its port).
    pub fn set_url(&mut self, url: Option<String>) {
        self.url = url;
    }

    /// The options.
    pub fn config(&self) -> &NodeConfig {
        &self.cfg
    }

    /// The counters.
    pub fn stats(&self) -> &NodeStats {
        &self.stats
    }

    /// The ids of the peers with a link up, sorted.
    pub fn peers(&self) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = self.by_peer.keys().copied().collect();
        v.sort();
        v
    }

    /// Number of links in the table.
    pub fn peer_count(&self) -> usize {
        self.by_peer.len()
    }

    /// Number of candidates known.
    pub fn candidate_count(&self) -> usize {
        self.manager.pool_len()
    }

    /// Sizes of the bounded memories: (nonces, paths, queue).
    pub fn memory_sizes(&self) -> (usize, usize, usize) {
        (self.seen.len(), self.paths.len(), self.queue.len())
    }

    /// Whether [`Node::destroy`] was called.
    pub fn is_destroyed(&self) -> bool {
        self.destroyed
    }

    fn new_link(&mut self, state: LinkState, direction: Direction, now: Instant) -> LinkId {
        let link = self.next_link;
        self.next_link += 1;
        self.links.insert(
            link,
            Link {
                state,
                direction,
                since: now,
            },
        );
        link
    }

    /// Dials a bootstrap URL (its node is known once it greets).
    pub fn bootstrap(&mut self, url: &str, now: Instant) {
        if self.destroyed {
            return;
        }
        if !self.bootstraps.iter().any(|u| u == url) && self.bootstraps.len() < REJOIN_URLS {
            self.bootstraps.push(url.to_string());
        }
        self.dial_url(url.to_string(), None, now);
    }

    /// With no link left (and none opening), dial the bootstrap URLs and a few remembered
    /// peer URLs again, backing off from 1 s to 30 s between attempts.
    fn check_isolated(&mut self, now: Instant) {
        if self.destroyed || !self.by_peer.is_empty() {
            self.rejoin_at = None;
            self.rejoin_backoff = std::time::Duration::ZERO;
            return;
        }
        let opening = self.links.values().any(|l| {
            matches!(
                l.state,
                LinkState::Dialing { .. } | LinkState::Greeting { .. }
            )
        });
        if opening {
            // A link is being opened: the rejoin waits for its outcome. A rejoin time already
            // past would otherwise be reported by `poll_timeout` again and again without
            // anything to do (a busy loop in the shell, and a simulation stuck at one instant).
            if self.rejoin_at.is_some_and(|t| t <= now) {
                self.rejoin_at = Some(now + self.rejoin_backoff.max(self.cfg.repair_delay));
            }
            return;
        }
        match self.rejoin_at {
            None => {
                self.rejoin_backoff = self.cfg.repair_delay;
                self.rejoin_at = Some(now + self.rejoin_backoff);
            }
            Some(t) if t <= now => {
                let urls: Vec<String> = self
                    .bootstraps
                    .iter()
                    .chain(self.rejoin.iter().rev().take(3))
                    .cloned()
                    .collect();
                for u in urls {
                    self.dial_url(u, None, now);
                }
                self.rejoin_backoff =
                    (self.rejoin_backoff * 2).min(std::time::Duration::from_secs(30));
                self.rejoin_at = Some(now + self.rejoin_backoff);
            }
            Some(_) => {}
        }
    }

    fn dial_url(&mut self, url: String, expected: Option<NodeId>, now: Instant) {
        let link = self.new_link(LinkState::Dialing { expected }, Direction::Outbound, now);
        self.outputs.push_back(Output::Dial { link, url });
    }

    /// Someone connected to our listener: returns the link number to report its frames under.
    /// The greeting is sent at once.
    pub fn handle_inbound(&mut self, now: Instant) -> LinkId {
        let link = self.new_link(
            LinkState::Greeting { expected: None },
            Direction::Inbound,
            now,
        );
        if self.destroyed {
            self.close_link(link, "node destroyed");
        } else {
            self.transmit(link, encode_greeting(&self.id));
        }
        link
    }

    /// A dialled link opened: the greeting is sent.
    pub fn handle_link_up(&mut self, link: LinkId, _now: Instant) {
        let Some(l) = self.links.get_mut(&link) else {
            return;
        };
        let LinkState::Dialing { expected } = l.state else {
            return;
        };
        l.state = LinkState::Greeting { expected };
        if self.destroyed {
            self.close_link(link, "node destroyed");
        } else {
            self.transmit(link, encode_greeting(&self.id));
        }
    }

    /// A link closed or could not be opened.
    pub fn handle_link_closed(&mut self, link: LinkId, now: Instant) {
        let Some(l) = self.links.remove(&link) else {
            return;
        };
        match l.state {
            LinkState::Up(peer) | LinkState::Closing(Some(peer)) => {
                let current = self.by_peer.get(&peer) == Some(&link);
                if current || !self.by_peer.contains_key(&peer) {
                    let spare = self
                        .links
                        .iter()
                        .find(|(_, l)| l.state == LinkState::Up(peer))
                        .map(|(k, _)| *k);
                    if let Some(spare) = spare {
                        self.by_peer.insert(peer, spare);
                    } else {
                        self.by_peer.remove(&peer);
                        self.paths.forget_hop(&peer);
                        self.manager.handle_closed(&peer, "link closed", now);
                        if matches!(l.state, LinkState::Up(_)) {
                            // The other side closed it (a disconnect, an eviction, an exit):
                            // do not dial it again on our own for a while; it may dial us.
                            self.manager.hold(&peer, now + HOLD_AFTER_CLOSE);
                        }
                        self.schedule_repair(now);
                    }
                }
            }
            LinkState::Dialing {
                expected: Some(peer),
            }
            | LinkState::Greeting {
                expected: Some(peer),
            } if self.manager.peer(&peer).is_some() && !self.by_peer.contains_key(&peer) => {
                self.handshakes.remove(&peer);
                self.manager
                    .handle_dial_failed(&peer, "the WebSocket did not open", now);
            }
            _ => {}
        }
        self.drain_manager(now);
        self.check_isolated(now);
    }

    /// Something showed the link is alive (a WebSocket pong): its peer is not idle.
    pub fn handle_link_alive(&mut self, link: LinkId, now: Instant) {
        if let Some(Link {
            state: LinkState::Up(peer),
            ..
        }) = self.links.get(&link)
        {
            let peer = *peer;
            self.manager.touch(&peer, now);
        }
    }

    /// A text message arrived on a link.
    pub fn handle_frame(&mut self, link: LinkId, frame: &[u8], now: Instant) {
        self.stats.frames_in += 1;
        let Some(l) = self.links.get(&link) else {
            return;
        };
        match l.state.clone() {
            LinkState::Greeting { expected } => self.on_greeting(link, expected, frame, now),
            LinkState::Up(peer) => {
                match decode_envelope(frame, self.cfg.max_frame) {
                    Ok(env) => self.on_envelope(peer, env, now),
                    Err(e) => self.malformed(Some(peer), &e),
                }
                self.drain_manager(now);
            }
            LinkState::Dialing { .. } | LinkState::Closing(_) => {}
        }
    }

    fn malformed(&mut self, peer: Option<NodeId>, e: &WireError) {
        self.stats.malformed += 1;
        debug!(
            node = %self.id.short(),
            peer = ?peer,
            code = e.code(),
            "dropped a frame: {e}"
        );
    }

    fn on_greeting(&mut self, link: LinkId, expected: Option<NodeId>, frame: &[u8], now: Instant) {
        let peer = match decode_greeting(frame) {
            Ok(p) => p,
            Err(e) => {
                self.malformed(None, &e);
                self.stats.links_refused += 1;
                self.close_link(link, "the first message was not a node id");
                return;
            }
        };
        if peer == self.id {
            self.stats.links_refused += 1;
            self.close_link(link, "connected to itself");
            return;
        }
        if let Some(want) = expected {
            if want != peer {
                self.stats.links_refused += 1;
                self.close_link(link, "the node at that URL has another id");
                self.handshakes.remove(&want);
                self.manager
                    .fault(&want, "its URL led to another node", now);
                self.manager.handle_dial_failed(&want, "wrong id", now);
                self.drain_manager(now);
                return;
            }
        }
        if self.is_refused(&peer, now) {
            self.stats.links_refused += 1;
            self.close_link(link, "disconnected on request");
            return;
        }
        let direction = self
            .links
            .get(&link)
            .map_or(Direction::Inbound, |l| l.direction);
        if self.by_peer.contains_key(&peer) {
            // A second link to a peer (two dials crossed). It is kept open as a spare: frames
            // are accepted on every link to the peer, and the first one stays the one sent on.
            // Closing either is what breaks peer-relay: it keeps the first link in its table,
            // ignores the second, and on the close of either removes the peer by id, which
            // closes the first as well — or, if we closed the first, leaves a link that only
            // we use. A spare replaces the first link if that one closes.
            self.stats.duplicate_links += 1;
            if let Some(l) = self.links.get_mut(&link) {
                l.state = LinkState::Up(peer);
            }
            return;
        }
        let accepted = match self.manager.peer(&peer).map(|p| p.state.clone()) {
            Some(PeerState::Connecting) => {
                self.manager.handle_connected(&peer, now);
                true
            }
            Some(_) => false,
            None => self.manager.handle_accepted(&peer, direction, now),
        };
        self.handshakes.remove(&peer);
        self.expecting.remove(&peer);
        if !accepted {
            self.stats.links_refused += 1;
            self.close_link(link, "no room for another link");
            self.drain_manager(now);
            return;
        }
        if let Some(l) = self.links.get_mut(&link) {
            l.state = LinkState::Up(peer);
        }
        self.by_peer.insert(peer, link);
        self.drain_manager(now);
    }

    fn close_link(&mut self, link: LinkId, reason: &'static str) {
        if let Some(l) = self.links.get_mut(&link) {
            let mut was = None;
            match l.state {
                LinkState::Closing(_) => return,
                LinkState::Up(peer) if self.by_peer.get(&peer) == Some(&link) => {
                    self.by_peer.remove(&peer);
                    was = Some(peer);
                }
                _ => {}
            }
            l.state = LinkState::Closing(was);
            self.outputs.push_back(Output::Close { link, reason });
        }
    }

    fn transmit(&mut self, link: LinkId, frame: Bytes) {
        self.stats.frames_out += 1;
        self.outputs.push_back(Output::Transmit { link, frame });
    }

    fn on_envelope(&mut self, peer: NodeId, env: Envelope, now: Instant) {
        if !self.seen.insert(&env.from, &env.nonce, now) {
            self.stats.duplicates += 1;
            if env.data.get().starts_with(r#"{"type":"user""#) {
                self.stats.user_duplicates += 1;
            }
            return;
        }
        self.stats.handled += 1;
        self.manager.touch(&peer, now);
        if env.from != self.id {
            self.paths.record(env.from, peer, now);
            self.learn(env.from, peer, now);
        }
        if env.to != self.id {
            if env.to == env.from && !self.has_closer_peer(&env.to, &env.path) {
                // A node's lookup of its own id, carried toward that id (see `on_peer_up`):
                // greedy routing ends here, at the closest node to it we can reach, which
                // answers, as in Kademlia's recursive lookups.
                if let Ok(Message::FindPeers(target)) = Message::decode(&env.data) {
                    self.on_find_peers(env.from, target, now);
                    return;
                }
            }
            self.stats.relayed += 1;
            let routed = Routed {
                to: env.to,
                from: env.from,
                path: env.path,
                nonce: &env.nonce,
                data: &env.data,
            };
            self.route(routed, None, now);
            return;
        }
        match Message::decode(&env.data) {
            Ok(Message::User(data)) => {
                self.stats.delivered += 1;
                self.events.push_back(NodeEvent::Message {
                    from: env.from,
                    data,
                    path: env.path,
                });
            }
            Ok(Message::FindPeers(target)) => self.on_find_peers(env.from, target, now),
            Ok(Message::FoundPeers(ids)) => self.on_found_peers(env.from, ids, now),
            Ok(Message::HandshakeOffer { ws }) => self.on_offer(env.from, ws, now),
            Ok(Message::HandshakeAnswer { ws, dialing, .. }) => {
                self.on_answer(env.from, ws, dialing, now)
            }
            Err(e) => self.malformed(Some(peer), &e),
        }
    }

    /// Every message names a live node (its origin): when that node would fill a k-bucket in
    /// which we have no link, it becomes a candidate at once (introduced by the neighbour the
    /// message came through), as Kademlia updates its table from every contact. This is how
    /// the nodes around a newcomer learn of it while it looks for them.
    fn learn(&mut self, origin: NodeId, via: NodeId, now: Instant) {
        if self.cfg.rule != ConnectionRule::Buckets || self.by_peer.contains_key(&origin) {
            return;
        }
        let Some(b) = self.id.bucket_of(&origin) else {
            return;
        };
        if self.by_peer.keys().any(|p| self.id.bucket_of(p) == Some(b))
            || self.manager.peer(&origin).is_some()
            || self.manager.is_backed_off(&origin, now)
            || self.manager.pool().any(|k| *k == origin)
        {
            return;
        }
        self.introducers.insert(origin, via);
        self.manager.add_pool_keys([origin], now);
    }

    fn on_find_peers(&mut self, from: NodeId, target: NodeId, now: Instant) {
        // The 20 closest of the linked peers and the candidates, as in Kademlia.
        let mut ids: Vec<NodeId> = self
            .by_peer
            .keys()
            .chain(
                self.manager
                    .pool()
                    .filter(|k| !self.by_peer.contains_key(k)),
            )
            .filter(|k| **k != from)
            .copied()
            .collect();
        ids.sort_by_key(|k| target.distance(k));
        ids.truncate(20);
        self.originate(from, &Message::FoundPeers(ids), now);
    }

    fn on_found_peers(&mut self, from: NodeId, ids: Vec<NodeId>, now: Instant) {
        if self.introducers.len() > 2 * self.cfg.max_candidates {
            let pool: std::collections::HashSet<NodeId> = self.manager.pool().copied().collect();
            self.introducers.retain(|k, _| pool.contains(k));
        }
        let mut per_bucket = [0u16; BUCKETS];
        for k in self.manager.pool() {
            if let Some(b) = self.id.bucket_of(k) {
                per_bucket[b] = per_bucket[b].saturating_add(1);
            }
        }
        let cap = u16::try_from(self.cfg.candidates_per_bucket).unwrap_or(u16::MAX);
        let mut fresh = Vec::new();
        for k in ids {
            let Some(b) = self.id.bucket_of(&k) else {
                continue;
            };
            if per_bucket[b] >= cap || self.by_peer.contains_key(&k) {
                continue;
            }
            if self.manager.pool().any(|p| *p == k) {
                continue;
            }
            per_bucket[b] += 1;
            fresh.push(k);
            self.introducers.insert(k, from);
        }
        // An iterative lookup of our own id, as in Kademlia: ask the new candidates closer to
        // us than every link for their closest nodes at once (through the peer that named
        // them), rather than after a handshake with each. A newcomer finds its neighbours in
        // a few round trips this way.
        let me = self.id;
        let closest_link = self.by_peer.keys().map(|p| me.distance(p)).min();
        let mut closer: Vec<NodeId> = fresh
            .iter()
            .filter(|k| closest_link.is_none_or(|d| me.distance(k) < d))
            .filter(|k| !self.looked_up.contains(k))
            .copied()
            .collect();
        closer.sort_by_key(|k| me.distance(k));
        for k in closer.into_iter().take(LOOKUP_WIDTH) {
            if self.looked_up.len() >= LOOKUP_MEMORY {
                self.looked_up.pop_front();
            }
            self.looked_up.push_back(k);
            self.originate_via(k, &Message::FindPeers(me), Some(from), now);
        }
        self.manager.add_pool_keys(fresh, now);
    }

    fn is_refused(&self, id: &NodeId, now: Instant) -> bool {
        self.refused.get(id).is_some_and(|until| *until > now)
    }

    fn on_offer(&mut self, from: NodeId, ws: Option<String>, now: Instant) {
        if self.by_peer.contains_key(&from) || from == self.id {
            return;
        }
        if self.is_refused(&from, now) {
            debug!(node = %self.id.short(), peer = %from.short(), "offer ignored: disconnected on request");
            return;
        }
        // An offer shows the node is alive and wants the link: earlier faults (a handshake
        // that timed out) no longer count against it.
        self.manager.forgive(&from);
        // Both offered at once: the smaller id's offer is the one answered.
        if self.handshakes.contains_key(&from) && from > self.id {
            return;
        }
        let full =
            self.manager.active_len() >= self.cfg.max_peers && self.manager.peer(&from).is_none();
        if full && self.manager.eviction_candidate(&from, now).is_none() {
            debug!(node = %self.id.short(), peer = %from.short(), "offer ignored: no room");
            return;
        }
        // Only peermesh nodes put their URL in an offer: dial it at once, which saves the
        // answer's trip back before the link exists, and say so in the answer.
        let dialing = ws.is_some();
        let answer = Message::HandshakeAnswer {
            ws: self.url.clone(),
            wrtc: false,
            dialing,
        };
        self.originate(from, &answer, now);
        if let Some(url) = ws {
            self.dial_url(url, Some(from), now);
            return;
        }
        if self.url.is_some() {
            if self.expecting.len() >= EXPECTING {
                self.expecting.retain(|_, until| *until > now);
            }
            if self.expecting.len() < EXPECTING {
                self.expecting.insert(from, now + self.cfg.greeting_timeout);
            }
        }
    }

    fn on_answer(&mut self, from: NodeId, ws: Option<String>, dialing: bool, now: Instant) {
        if self.by_peer.contains_key(&from) {
            return;
        }
        let Some(h) = self.handshakes.get_mut(&from) else {
            return;
        };
        if h.dialing {
            return;
        }
        if dialing {
            // The answerer is dialling us; keep its URL in case that link does not come.
            h.fallback = ws;
            return;
        }
        if let Some(url) = ws {
            h.dialing = true;
            if !self.rejoin.contains(&url) {
                if self.rejoin.len() >= REJOIN_URLS {
                    self.rejoin.pop_front();
                }
                self.rejoin.push_back(url.clone());
            }
            self.dial_url(url, Some(from), now);
        }
        // Without a URL the answerer cannot be dialled; a peermesh answerer dials the URL of
        // our offer. Otherwise the handshake times out.
    }

    /// Sends `data` to the node `to`, through the mesh.
    pub fn send(&mut self, to: NodeId, data: RawJson, now: Instant) {
        if self.destroyed {
            return;
        }
        self.originate(to, &Message::User(data), now);
    }

    /// Starts a direct connection to `id` (a handshake relayed over the mesh).
    pub fn connect(&mut self, id: NodeId, now: Instant) {
        if self.destroyed || id == self.id {
            return;
        }
        // An explicit connect overrides an earlier disconnect.
        self.manager.forgive(&id);
        self.refused.remove(&id);
        self.manager.add_active_keys([id], now);
        self.drain_manager(now);
    }

    /// Closes the direct link to `id`, if any, and keeps the node from linking it again on
    /// its own: for 60 s, or until [`Node::connect`], this node neither dials it, nor accepts
    /// its links, nor answers its offers.
    pub fn disconnect(&mut self, id: NodeId, now: Instant) {
        self.manager.del_active(&id, "disconnect requested", now);
        self.manager.fault(&id, "disconnected on request", now);
        if self.refused.len() >= REFUSED {
            self.refused.retain(|_, until| *until > now);
        }
        if self.refused.len() < REFUSED {
            self.refused.insert(id, now + REFUSE_FOR);
        }
        self.drain_manager(now);
    }

    /// Closes every link and stops.
    pub fn destroy(&mut self, now: Instant) {
        if self.destroyed {
            return;
        }
        self.manager.shutdown(now);
        self.drain_manager(now);
        self.destroyed = true;
        let links: Vec<LinkId> = self.links.keys().copied().collect();
        for l in links {
            self.close_link(l, "node destroyed");
        }
        self.handshakes.clear();
        self.queue.clear();
    }

    fn nonce(&mut self) -> String {
        // peer-relay's nonces are decimal numbers below 10^15; ours are too.
        self.rng
            .random_range(0..1_000_000_000_000_000u64)
            .to_string()
    }

    fn originate(&mut self, to: NodeId, msg: &Message, now: Instant) {
        self.originate_via(to, msg, None, now);
    }

    /// Like `originate`, with the first hop chosen: `via` when it is linked.
    fn originate_via(&mut self, to: NodeId, msg: &Message, via: Option<NodeId>, now: Instant) {
        let nonce = self.nonce();
        self.seen.insert(&self.id.clone(), &nonce, now);
        let data = msg.encode();
        let routed = Routed {
            to,
            from: self.id,
            path: Vec::new(),
            nonce: &nonce,
            data: &data,
        };
        self.route(routed, via, now);
    }

    /// Sends a message on towards `to`: to `to` itself when linked, else to the `fanout`
    /// linked peers closest to it that are not on its path yet, plus the peer the target's
    /// own messages last came through.
    fn route(&mut self, env: Routed<'_>, via: Option<NodeId>, now: Instant) {
        let Routed {
            to,
            from,
            mut path,
            nonce,
            data,
        } = env;
        if path.len() >= self.cfg.max_hops {
            self.stats.hop_limit += 1;
            trace!(node = %self.id.short(), "dropped a message at the hop limit");
            return;
        }
        if self.by_peer.is_empty() {
            if self.queue.len() >= self.cfg.queue_capacity {
                self.queue.pop_front();
                self.stats.queue_dropped += 1;
            }
            self.stats.queued += 1;
            self.queue.push_back(Queued {
                to,
                from,
                path,
                nonce: nonce.to_string(),
                data: data.clone(),
            });
            return;
        }
        let fanout = if path.is_empty() {
            self.cfg.fanout
        } else {
            self.cfg.relay_fanout
        };
        path.push(self.id);
        let mut next: Vec<(NodeId, LinkId)> = Vec::with_capacity(fanout + 1);
        let via_link = via.and_then(|v| self.by_peer.get(&v).map(|l| (v, *l)));
        // A lookup of its origin's own id goes toward that id, not to it.
        let own_lookup = to == from;
        if let (false, Some(&link)) = (own_lookup, self.by_peer.get(&to)) {
            next.push((to, link));
        } else if let Some(hop) = via_link {
            next.push(hop);
        } else {
            // The `fanout` (`relay_fanout` when relaying) linked peers closest to the target among those closer to it than
            // this node (so every copy makes progress and none loops); when no peer is closer,
            // the single closest one not on the path (the table may be incomplete).
            let mine = if to == self.id {
                // Our own lookup: every peer is a way toward our id.
                [0xff; 20]
            } else {
                to.distance(&self.id)
            };
            let mut best: Vec<([u8; 20], NodeId, LinkId)> = Vec::with_capacity(fanout);
            let mut fallback: Option<([u8; 20], NodeId, LinkId)> = None;
            for (p, &l) in &self.by_peer {
                if path.contains(p) {
                    continue;
                }
                let d = to.distance(p);
                if d >= mine {
                    if fallback.as_ref().is_none_or(|f| d < f.0) {
                        fallback = Some((d, *p, l));
                    }
                    continue;
                }
                if best.len() < fanout {
                    best.push((d, *p, l));
                    best.sort_unstable_by_key(|a| a.0);
                } else if best.last().is_some_and(|w| d < w.0) {
                    best.pop();
                    let at = best.partition_point(|x| x.0 < d);
                    best.insert(at, (d, *p, l));
                }
            }
            // The way back: the neighbour the target's own messages last came through. Answers
            // (handshake answers, peer lists) take it as well as the greedy hop, since they
            // mostly answer a newcomer that greedy routing cannot reach yet; user messages and
            // requests (lookups, handshake offers) take it only where greedy routing has no
            // closer peer, or once such a place sent them back, so that they do not spread
            // beyond their greedy paths. (A relay's way back to an established node is the
            // reverse of whichever message of it came last, often a long detour: requests
            // relayed that way took 6 hops where greedy routing takes 3-4.)
            let back = self
                .paths
                .get(&to, now)
                .and_then(|hop| self.by_peer.get(&hop).map(|l| (hop, *l)))
                .filter(|(hop, _)| !path.contains(hop) && !best.iter().any(|b| b.1 == *hop))
                .filter(|_| !own_lookup);
            let user = data.get().starts_with(r#"{"type":"user""#);
            let relaying = path.len() > 1;
            // Answers: control messages other than requests being relayed (the origin of a
            // request sends it the way back as well as greedily: its target may be a
            // newcomer).
            // (Both rules below are peermesh's, for tables that cover the k-buckets; the
            // closest-only rule of `peermesh sim --rule closest` keeps routing every control
            // message the way back, as peer-relay prefers its remembered paths: its tables
            // have no links into the far halves of the id space, so greedy requests dead-end.)
            let buckets = self.cfg.rule == ConnectionRule::Buckets;
            let request = buckets && relaying && is_request(data);
            let answer = !(user || request);
            // The previous hop is closer to the target than we are: a node where greedy
            // routing ended sent the message back (along the way back, or around). Greedy
            // routing would take it back there; the way back, where we know it, goes on.
            let returning =
                buckets && relaying && to.distance(&path[path.len() - 2]) < to.distance(&self.id);
            match back {
                // A relay sends an answer only the way back: one copy more per hop would
                // spread it over the region around a newcomer.
                Some(hop) if (answer && relaying) || returning => {
                    next.push(hop);
                    best.clear();
                }
                Some(hop) if answer || best.is_empty() => next.push(hop),
                _ => {}
            }
            if next.is_empty() && best.is_empty() {
                best.extend(fallback);
            }
            next.extend(best.into_iter().map(|(_, p, l)| (p, l)));
        }
        if next.is_empty() {
            self.stats.no_route += 1;
            return;
        }
        let frame = encode_envelope(&to, &from, &path, nonce, data);
        if frame.len() > self.cfg.max_frame {
            self.malformed(
                None,
                &WireError::TooLarge {
                    len: frame.len(),
                    max: self.cfg.max_frame,
                },
            );
            return;
        }
        for (_, link) in next {
            self.transmit(link, frame.clone());
        }
    }

    fn schedule_repair(&mut self, now: Instant) {
        if self.repair_at.is_none() {
            self.repair_at = Some(now + self.cfg.repair_delay);
        }
    }

    /// Asks peers for candidates: for our own id (the closest nodes) and for a random id in
    /// each of a few buckets that have fewer links than wanted.
    fn refresh(&mut self, now: Instant) {
        if self.by_peer.is_empty() {
            return;
        }
        let me = self.id;
        let mut near: Vec<NodeId> = self.by_peer.keys().copied().collect();
        near.sort_by_key(|p| me.distance(p));
        for p in near.into_iter().take(3) {
            self.originate(p, &Message::FindPeers(me), now);
        }
        if self.cfg.rule != ConnectionRule::Buckets {
            return;
        }
        let mut count = [0usize; BUCKETS];
        for p in self.by_peer.keys() {
            if let Some(b) = me.bucket_of(p) {
                count[b] += 1;
            }
        }
        // The far buckets always hold nodes; the near ones only in large networks. Look up the
        // thin buckets from the farthest down to the first one our closest peer lives in.
        let deepest = self
            .closest_peer(&me)
            .and_then(|p| me.bucket_of(&p))
            .unwrap_or(BUCKETS - 1);
        let mut lookups = 0;
        for b in (deepest..BUCKETS).rev() {
            if count[b] >= self.cfg.links_per_bucket {
                continue;
            }
            let target = me.random_in_bucket(b, &mut self.rng);
            if let Some(p) = self.closest_peer(&target) {
                self.originate(p, &Message::FindPeers(target), now);
                lookups += 1;
            }
            if lookups >= 16 {
                break;
            }
        }
    }

    /// Whether a linked peer not on `path` is closer to `target` than this node.
    fn has_closer_peer(&self, target: &NodeId, path: &[NodeId]) -> bool {
        let mine = target.distance(&self.id);
        self.by_peer
            .keys()
            .any(|p| !path.contains(p) && target.distance(p) < mine)
    }

    fn closest_peer(&self, target: &NodeId) -> Option<NodeId> {
        self.by_peer
            .keys()
            .min_by_key(|p| target.distance(p))
            .copied()
    }

    /// Carries out what the manager decided and reports what it saw.
    fn drain_manager(&mut self, now: Instant) {
        loop {
            let mut progressed = false;
            while let Some(action) = self.manager.poll_action() {
                progressed = true;
                match action {
                    Action::Dial(id) => self.start_handshake(id, now),
                    Action::Close { peer, .. } => {
                        self.handshakes.remove(&peer);
                        match self.by_peer.get(&peer).copied() {
                            Some(link) => {
                                let spares: Vec<LinkId> = self
                                    .links
                                    .iter()
                                    .filter(|(k, l)| **k != link && l.state == LinkState::Up(peer))
                                    .map(|(k, _)| *k)
                                    .collect();
                                for l in spares {
                                    self.close_link(l, "closed by the peer manager");
                                }
                                self.close_link(link, "closed by the peer manager");
                            }
                            None => {
                                let dialing: Vec<LinkId> = self
                                    .links
                                    .iter()
                                    .filter(|(_, l)| {
                                        matches!(
                                            l.state,
                                            LinkState::Dialing { expected: Some(e) }
                                                | LinkState::Greeting { expected: Some(e) }
                                                if e == peer
                                        )
                                    })
                                    .map(|(k, _)| *k)
                                    .collect();
                                for l in dialing {
                                    self.close_link(l, "handshake abandoned");
                                }
                                self.manager.handle_closed(&peer, "no link", now);
                            }
                        }
                    }
                    Action::Send { .. } => {}
                }
            }
            while let Some(ev) = self.manager.poll_event() {
                progressed = true;
                match ev {
                    ManagerEvent::PeerConnect(id) => self.on_peer_up(id, now),
                    ManagerEvent::PeerEnd { peer, .. } if self.announced.remove(&peer) => {
                        self.events.push_back(NodeEvent::PeerGone(peer));
                    }
                    ManagerEvent::Log {
                        severity, message, ..
                    } => {
                        if severity >= Severity::Warning {
                            debug!(node = %self.id.short(), "{message}");
                        } else {
                            trace!(node = %self.id.short(), "{message}");
                        }
                    }
                    _ => {}
                }
            }
            if !progressed {
                break;
            }
        }
    }

    fn on_peer_up(&mut self, id: NodeId, now: Instant) {
        let first = self.by_peer.len() == 1;
        if first {
            // The first link: fill the table right away rather than at the next refresh.
            self.schedule_repair(now);
        }
        self.announced.insert(id);
        self.events.push_back(NodeEvent::PeerConnected(id));
        // peer-relay asks every new peer for the peers near our id.
        let me = self.id;
        self.originate(id, &Message::FindPeers(me), now);
        if first && self.cfg.rule == ConnectionRule::Buckets {
            // And a lookup addressed to our own id (`to` = `from`), which peermesh relays
            // carry greedily toward that id: the node where it ends, the closest to us that
            // greedy routing reaches and so where everyone's messages to us end as well,
            // answers it, learns the way back to us and links to us, one trip after our first
            // link rather than after several rounds of lookups. A peer-relay relay forwards it
            // like any message, to its closest links not on the path (so never back to us),
            // until a peermesh node answers it or the hop limit or its nonce memory drops it.
            self.originate(me, &Message::FindPeers(me), now);
        }
        let queued: Vec<Queued> = self.queue.drain(..).collect();
        for q in queued {
            let routed = Routed {
                to: q.to,
                from: q.from,
                path: q.path,
                nonce: &q.nonce,
                data: &q.data,
            };
            self.route(routed, None, now);
        }
    }

    fn start_handshake(&mut self, id: NodeId, now: Instant) {
        if self.expecting.get(&id).is_some_and(|until| *until > now) {
            // It is dialling us after our answer to its offer: wait for that link (the
            // manager's connect timeout covers it not coming).
            self.handshakes.insert(
                id,
                Handshake {
                    attempts: self.cfg.handshake_attempts,
                    next: now,
                    dialing: true,
                    fallback: None,
                },
            );
            return;
        }
        self.handshakes.insert(
            id,
            Handshake {
                attempts: 1,
                next: now + self.cfg.handshake_timeout,
                dialing: false,
                fallback: None,
            },
        );
        self.stats.offers += 1;
        let offer = Message::HandshakeOffer {
            ws: self.url.clone(),
        };
        let via = self.introducers.get(&id).copied();
        self.originate_via(id, &offer, via, now);
    }

    /// The next instant the node must be woken at.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.destroyed {
            return None;
        }
        let mut t = self.next_refresh;
        if let Some(m) = self.manager.poll_timeout() {
            t = t.min(m);
        }
        if let Some(r) = self.repair_at {
            t = t.min(r);
        }
        if let Some(r) = self.rejoin_at {
            t = t.min(r);
        }
        for h in self.handshakes.values() {
            if !h.dialing && h.attempts < self.cfg.handshake_attempts {
                t = t.min(h.next);
            }
        }
        for l in self.links.values() {
            if matches!(
                l.state,
                LinkState::Greeting { .. } | LinkState::Dialing { .. }
            ) {
                t = t.min(l.since + self.cfg.greeting_timeout);
            }
        }
        Some(t)
    }

    /// Handles every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.destroyed {
            return;
        }
        self.manager.handle_timeout(now);
        let resend: Vec<NodeId> = self
            .handshakes
            .iter()
            .filter(|(_, h)| {
                !h.dialing && h.attempts < self.cfg.handshake_attempts && h.next <= now
            })
            .map(|(k, _)| *k)
            .collect();
        for id in resend {
            let mut fallback = None;
            if let Some(h) = self.handshakes.get_mut(&id) {
                h.attempts += 1;
                h.next = now + self.cfg.handshake_timeout;
                fallback = h.fallback.take();
                h.dialing = fallback.is_some();
            }
            if let Some(url) = fallback {
                self.dial_url(url, Some(id), now);
                continue;
            }
            self.stats.offers += 1;
            let offer = Message::HandshakeOffer {
                ws: self.url.clone(),
            };
            self.originate(id, &offer, now);
        }
        let stale: Vec<LinkId> = self
            .links
            .iter()
            .filter(|(_, l)| {
                matches!(
                    l.state,
                    LinkState::Greeting { .. } | LinkState::Dialing { .. }
                ) && now >= l.since + self.cfg.greeting_timeout
            })
            .map(|(k, _)| *k)
            .collect();
        for l in stale {
            self.close_link(l, "no greeting in time");
        }
        let repair = self.repair_at.is_some_and(|r| r <= now);
        if now >= self.next_refresh || repair {
            self.next_refresh = now + self.cfg.refresh_interval;
            self.repair_at = None;
            self.refresh(now);
            self.manager.top_up(now);
        }
        self.drain_manager(now);
        self.check_isolated(now);
    }

    /// The next thing the shell must do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The next thing to tell the application.
    pub fn poll_event(&mut self) -> Option<NodeEvent> {
        self.events.pop_front()
    }
}

#[cfg(test)]
mod tests;
