//! The peer manager: a pool of known peers, a bounded set of active connections, and
//! selective sends to random peers that match a property (sans-IO).
//!
//! The manager never touches a socket. A shell feeds it what happened (`handle_*`, with the
//! current `Instant`) and drains what it wants done ([`PeerManager::poll_action`]: dial, close,
//! send) and what it has to report ([`PeerManager::poll_event`]); it asks to be woken at
//! [`PeerManager::poll_timeout`]. The same core serves every transport and wire format (p2p-node
//! framing over TCP, peer-relay JSON over WebSocket): peers are named by a [`PeerAddr`], commands
//! are strings and payloads bytes.
//!
//! Behaviour follows `p2p-manager@0.1.0` where it is sound, and fixes it where it is not:
//!
//! | | p2p-manager | here |
//! |---|---|---|
//! | `maxPeers` | only logged when exceeded | a hard limit: dials stop and inbound connections are refused |
//! | faulty peers | a cumulative "warning" of 10 minutes per fault | exponential back-off per peer (`backoff_base` × 2^(faults−1), capped) |
//! | property match | JavaScript `==` | equal JSON values; strings compared case-insensitively |
//! | answers | the caller's listener, never removed | bounded waits that end when every chosen peer answered or at the timeout, naming the missing peers |
//! | pool | unbounded array | at most `max_pool` addresses, oldest dropped first |

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::hash::Hash;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde_json::Value;

pub use crate::wire::Severity;

/// A peer's address: host and port. Its text form is `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerAddr {
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// A host in any of the forms p2p-manager accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostSpec {
    /// `"host"` (default port) or `"host:port"` (`"[v6]:port"` for IPv6).
    Text(String),
    /// `("host", port)`.
    Pair(String, u16),
    /// `{host, port?}`.
    Object {
        /// The host.
        host: String,
        /// The port; the default port when absent.
        port: Option<u16>,
    },
}

/// Why a host could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid host {input:?}: {reason}")]
pub struct HostError {
    /// The host as given.
    pub input: String,
    /// What is wrong.
    pub reason: &'static str,
}

impl HostSpec {
    /// Parses the spec into an address, using `default_port` when it names none.
    pub fn resolve(&self, default_port: u16) -> Result<PeerAddr, HostError> {
        let err = |input: &str, reason| HostError {
            input: input.chars().take(100).collect(),
            reason,
        };
        let (host, port) = match self {
            HostSpec::Pair(h, p) => (h.clone(), *p),
            HostSpec::Object { host, port } => (host.clone(), port.unwrap_or(default_port)),
            HostSpec::Text(t) => {
                let t = t.trim();
                if let Some(rest) = t.strip_prefix('[') {
                    let (h, after) = rest
                        .split_once(']')
                        .ok_or_else(|| err(t, "an IPv6 address needs a closing `]`"))?;
                    let port = match after.strip_prefix(':') {
                        Some(p) => p
                            .parse()
                            .map_err(|_| err(t, "the port is not a number 0-65535"))?,
                        None if after.is_empty() => default_port,
                        None => return Err(err(t, "expected `:port` after `]`")),
                    };
                    (h.to_string(), port)
                } else {
                    match t.rsplit_once(':') {
                        Some((h, p)) if !h.contains(':') => (
                            h.to_string(),
                            p.parse()
                                .map_err(|_| err(t, "the port is not a number 0-65535"))?,
                        ),
                        _ => (t.to_string(), default_port),
                    }
                }
            }
        };
        if host.is_empty() {
            return Err(err(&host, "the host is empty"));
        }
        if host.len() > 253 || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(err(&host, "not a host name or IP address"));
        }
        if port == 0 {
            return Err(err(&host, "port 0 cannot be dialled"));
        }
        Ok(PeerAddr { host, port })
    }
}

impl From<&str> for HostSpec {
    fn from(s: &str) -> Self {
        HostSpec::Text(s.to_string())
    }
}

impl From<(&str, u16)> for HostSpec {
    fn from((h, p): (&str, u16)) -> Self {
        HostSpec::Pair(h.to_string(), p)
    }
}

/// The state of a peer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PeerState {
    /// Known, not dialled yet.
    New,
    /// Dialled, waiting for the connection.
    Connecting,
    /// Connected.
    Connected,
    /// Being closed.
    Disconnecting,
    /// Closed.
    Closed,
    /// A state of the application's own (for example `"handshaked"`).
    Custom(String),
}

impl PeerState {
    /// The state's name, as matched by [`PeerManager::send`] on the `state` property.
    pub fn name(&self) -> &str {
        match self {
            PeerState::New => "new",
            PeerState::Connecting => "connecting",
            PeerState::Connected => "connected",
            PeerState::Disconnecting => "disconnecting",
            PeerState::Closed => "closed",
            PeerState::Custom(s) => s,
        }
    }
}

/// Which side opened a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// We dialled it.
    Outbound,
    /// It dialled us.
    Inbound,
}

/// What the manager knows about an active peer.
#[derive(Debug, Clone)]
pub struct PeerInfo<K = PeerAddr> {
    /// Its name: the address for the TCP manager, the node id for the mesh.
    pub addr: K,
    /// Its state.
    pub state: PeerState,
    /// Who dialled.
    pub direction: Direction,
    /// Properties set by the application.
    pub props: BTreeMap<String, Value>,
    /// When something was last heard from it (or it was dialled).
    pub last_seen: Instant,
    since: Instant,
}

impl<K> PeerInfo<K> {
    /// When the peer was dialled or connected.
    pub fn since(&self) -> Instant {
        self.since
    }
}

/// Configuration; every field documents its default.
#[derive(Debug, Clone, PartialEq)]
pub struct ManagerConfig {
    /// Below this many active peers, connect from the pool at once. Defaults to 3.
    pub min_peers: usize,
    /// Hard limit of active peers (dials and accepted connections). Defaults to 20.
    pub max_peers: usize,
    /// A peer silent this long is disconnected. Defaults to 30 minutes.
    pub idle_timeout: Duration,
    /// A dial not connected within this time is abandoned (and counts as a fault). Defaults
    /// to 5 s.
    pub connect_timeout: Duration,
    /// Interval of the periodic check (idle peers, top-up). Defaults to 60 s.
    pub check_interval: Duration,
    /// Interval of `status` events. Defaults to 10 s.
    pub status_interval: Duration,
    /// Back-off after a peer's first fault; doubled for each further one. Defaults to 30 s.
    pub backoff_base: Duration,
    /// Longest back-off. Defaults to 30 minutes.
    pub backoff_max: Duration,
    /// Most addresses kept in the pool (oldest dropped first). Defaults to 1,000.
    pub max_pool: usize,
    /// Most peers remembered as faulty. Defaults to 1,000.
    pub max_bad: usize,
    /// Most answer waits open at once. Defaults to 256.
    pub max_waits: usize,
    /// Port used for hosts that name none. Defaults to 8333 (p2p-manager's).
    pub default_port: u16,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        Self {
            min_peers: 3,
            max_peers: 20,
            idle_timeout: Duration::from_secs(30 * 60),
            connect_timeout: Duration::from_secs(5),
            check_interval: Duration::from_secs(60),
            status_interval: Duration::from_secs(10),
            backoff_base: Duration::from_secs(30),
            backoff_max: Duration::from_secs(30 * 60),
            max_pool: 1000,
            max_bad: 1000,
            max_waits: 256,
            default_port: 8333,
        }
    }
}

/// Why a configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("peer manager option `{key}`: {reason}")]
pub struct ConfigError {
    /// The option.
    pub key: &'static str,
    /// What is wrong.
    pub reason: String,
}

impl ManagerConfig {
    /// Checks the options.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key, reason: &str| {
            Err(ConfigError {
                key,
                reason: reason.to_string(),
            })
        };
        if self.max_peers == 0 {
            return bad("max_peers", "must be at least 1");
        }
        if self.min_peers > self.max_peers {
            return bad("min_peers", "must not exceed max_peers");
        }
        for (key, d) in [
            ("idle_timeout", self.idle_timeout),
            ("connect_timeout", self.connect_timeout),
            ("check_interval", self.check_interval),
            ("status_interval", self.status_interval),
            ("backoff_base", self.backoff_base),
        ] {
            if d.is_zero() {
                return bad(key, "must be longer than zero");
            }
            if d > Duration::from_secs(86_400 * 7) {
                return bad(key, "must be at most a week");
            }
        }
        if self.backoff_max < self.backoff_base {
            return bad("backoff_max", "must be at least backoff_base");
        }
        Ok(())
    }
}

/// Something the shell must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action<K = PeerAddr> {
    /// Open a connection to the peer, then call `handle_connected` or `handle_dial_failed`.
    Dial(K),
    /// Close the connection, then call `handle_closed`.
    Close {
        /// The peer.
        peer: K,
        /// Why (for logs).
        reason: String,
    },
    /// Send one message.
    Send {
        /// The peer.
        peer: K,
        /// The command.
        command: String,
        /// The payload.
        payload: Bytes,
    },
}

/// An answer wait's handle.
pub type WaitId = u64;

/// Something to report to the application.
#[derive(Debug, Clone, PartialEq)]
pub enum ManagerEvent<K = PeerAddr> {
    /// A peer connected (either direction).
    PeerConnect(K),
    /// A peer's connection ended.
    PeerEnd {
        /// The peer.
        peer: K,
        /// Why.
        reason: String,
    },
    /// A message arrived (also delivered per command by the shell).
    Message {
        /// From whom.
        peer: K,
        /// Its command.
        command: String,
        /// Its payload.
        payload: Bytes,
    },
    /// One chosen peer answered a selective send.
    Answer {
        /// The wait it belongs to.
        wait: WaitId,
        /// Who answered.
        peer: K,
        /// The answer's payload.
        payload: Bytes,
    },
    /// A selective send's wait ended: everyone answered, or the timeout passed.
    AnswersDone {
        /// The wait.
        wait: WaitId,
        /// The chosen peers that never answered, sorted.
        missing: Vec<K>,
    },
    /// Counts, every `status_interval`.
    Status {
        /// Active peers.
        active: usize,
        /// Addresses in the pool.
        pool: usize,
        /// Peers currently backed off.
        backed_off: usize,
    },
    /// A problem or a notable step, with its severity.
    Log {
        /// How severe.
        severity: Severity,
        /// For people.
        message: String,
        /// The peer concerned, if any.
        peer: Option<K>,
    },
}

/// The lifecycle of the manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManagerState {
    /// Created.
    New,
    /// `launch` was called; no peer connected yet.
    Launching,
    /// At least one peer connected.
    Running,
    /// `shutdown` was called.
    Shutdown,
}

/// What [`PeerManager::send`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct SendOutcome<K = PeerAddr> {
    /// The peers sent to, sorted.
    pub peers: Vec<K>,
    /// The answer wait, when an answer command was given and someone was sent to.
    pub wait: Option<WaitId>,
}

/// Which peers a [`PeerManager::send`] goes to: `number` random active peers whose `property`
/// equals one of `values` (all matching peers when `number` ≤ 0).
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    /// How many peers; all matching ones when ≤ 0.
    pub number: i64,
    /// The property: `state`, `host`, `port`, `direction`, or one set with
    /// [`PeerManager::set_property`].
    pub property: String,
    /// Accepted values (strings compare case-insensitively).
    pub values: Vec<Value>,
}

impl Selection {
    /// `number` peers whose `property` is one of `values`.
    pub fn new(number: i64, property: &str, values: Vec<Value>) -> Self {
        Self {
            number,
            property: property.to_string(),
            values,
        }
    }
}

/// What [`PeerManager::send`] needs to collect answers.
#[derive(Debug, Clone, PartialEq)]
pub struct AnswerSpec {
    /// The command the answers carry.
    pub command: String,
    /// How long to wait for them.
    pub timeout: Duration,
}

#[derive(Debug)]
struct Wait<K> {
    command: String,
    pending: HashSet<K>,
    deadline: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Fault {
    count: u32,
    until: Instant,
}

/// How a peer is named: a [`PeerAddr`] for the TCP manager, a node id for the mesh.
pub trait PeerKey: Clone + Eq + Hash + Ord + fmt::Display + fmt::Debug {
    /// A property the name itself carries (for example `host` and `port`), matched by
    /// [`PeerManager::send`] beside `state`, `direction` and the application's properties.
    fn builtin_property(&self, name: &str) -> Option<Value>;
}

impl PeerKey for PeerAddr {
    fn builtin_property(&self, name: &str) -> Option<Value> {
        match name {
            "host" => Some(Value::String(self.host.clone())),
            "port" => Some(Value::from(self.port)),
            _ => None,
        }
    }
}

/// What a [`DialPolicy`] sees of the manager when it chooses.
#[derive(Debug)]
pub struct PoolView<'a, K> {
    active: &'a HashMap<K, PeerInfo<K>>,
    pool: &'a VecDeque<K>,
    bad: &'a HashMap<K, Fault>,
    held: &'a HashMap<K, Instant>,
    cfg: &'a ManagerConfig,
    launching: bool,
    now: Instant,
}

impl<K: PeerKey> PoolView<'_, K> {
    /// The active peers (connecting, connected, or in a state of the application's own).
    pub fn active(&self) -> impl Iterator<Item = &PeerInfo<K>> {
        self.active.values()
    }

    /// How many peers are active.
    pub fn active_len(&self) -> usize {
        self.active.len()
    }

    /// Whether a peer is active.
    pub fn is_active(&self, key: &K) -> bool {
        self.active.contains_key(key)
    }

    /// The candidates, oldest first.
    pub fn pool(&self) -> impl Iterator<Item = &K> {
        self.pool.iter()
    }

    /// Whether a peer is backed off after faults, or held (it closed our link), and must not
    /// be dialled now.
    pub fn is_backed_off(&self, key: &K) -> bool {
        self.bad.get(key).is_some_and(|f| f.until > self.now)
            || self.held.get(key).is_some_and(|until| *until > self.now)
    }

    /// Whether the manager is launching (no peer connected yet).
    pub fn launching(&self) -> bool {
        self.launching
    }

    /// The manager's options.
    pub fn config(&self) -> &ManagerConfig {
        self.cfg
    }
}

/// Which candidates the manager dials, and whom it lets go to make room: the part of the
/// manager that differs between the p2p-manager pool ([`Fifo`]) and the Kademlia mesh.
///
/// The manager asks [`DialPolicy::next_dial`] repeatedly after every change; each answer must
/// be a pool entry that is neither active nor backed off, or `None` to stop. The manager never
/// dials beyond `max_peers`, whatever the policy says.
pub trait DialPolicy<K: PeerKey>: fmt::Debug {
    /// The next candidate to dial, or `None` when no more dials are wanted now.
    fn next_dial(&mut self, view: &PoolView<'_, K>) -> Option<K>;

    /// At `max_peers`, an active peer to disconnect to make room for `newcomer`, or `None`
    /// to refuse the newcomer. Defaults to refusing.
    fn evict_for(&mut self, newcomer: &K, view: &PoolView<'_, K>) -> Option<K> {
        let _ = (newcomer, view);
        None
    }
}

/// p2p-manager's rule: while below `min_peers` ((min + max) / 2 while launching), dial the
/// oldest candidate that is not backed off.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fifo;

impl<K: PeerKey> DialPolicy<K> for Fifo {
    fn next_dial(&mut self, view: &PoolView<'_, K>) -> Option<K> {
        let cfg = view.config();
        let target = if view.launching() {
            (cfg.min_peers + cfg.max_peers) / 2
        } else {
            cfg.min_peers
        };
        if view.active_len() >= target {
            return None;
        }
        view.pool()
            .find(|k| !view.is_active(k) && !view.is_backed_off(k))
            .cloned()
    }
}

/// The peer manager's state machine. See the module docs for the contract.
#[derive(Debug)]
pub struct PeerManager<K: PeerKey = PeerAddr, P: DialPolicy<K> = Fifo> {
    cfg: ManagerConfig,
    policy: P,
    state: ManagerState,
    active: HashMap<K, PeerInfo<K>>,
    pool: VecDeque<K>,
    bad: HashMap<K, Fault>,
    /// Peers not to dial on our own until then (they closed a link to us); unlike faults,
    /// their links and offers are still accepted. At most `max_bad`.
    held: HashMap<K, Instant>,
    waits: BTreeMap<WaitId, Wait<K>>,
    next_wait: WaitId,
    actions: VecDeque<Action<K>>,
    events: VecDeque<ManagerEvent<K>>,
    next_check: Instant,
    next_status: Instant,
    rng: StdRng,
}

impl PeerManager<PeerAddr, Fifo> {
    /// A manager with the given options and random seed (for reproducible peer choice), with
    /// p2p-manager's [`Fifo`] dial policy.
    pub fn new(cfg: ManagerConfig, now: Instant, seed: u64) -> Result<Self, ConfigError> {
        Self::with_policy(cfg, Fifo, now, seed)
    }
}

impl<P: DialPolicy<PeerAddr>> PeerManager<PeerAddr, P> {
    fn resolve_all(&mut self, hosts: Vec<HostSpec>) -> Vec<PeerAddr> {
        let mut out = Vec::new();
        for h in hosts {
            match h.resolve(self.cfg.default_port) {
                Ok(a) => out.push(a),
                Err(e) => self.log(Severity::Warning, e.to_string(), None),
            }
        }
        out
    }

    /// Starts: adds the seeds to the pool (dialling up to (min + max) / 2 of them at once) and
    /// schedules the first check. Hosts that cannot be parsed are reported as warnings.
    pub fn launch(&mut self, seeds: Vec<HostSpec>, now: Instant) {
        let keys = self.resolve_all(seeds);
        self.launch_keys(keys, now);
    }

    /// Adds hosts to the pool; while below the target (min peers, or (min + max) / 2 while
    /// launching), dials them at once.
    pub fn add_pool(&mut self, hosts: Vec<HostSpec>, now: Instant) {
        let keys = self.resolve_all(hosts);
        self.add_pool_keys(keys, now);
    }

    /// Dials the hosts now (up to `max_peers`), unless connected or backed off.
    pub fn add_active(&mut self, hosts: Vec<HostSpec>, now: Instant) {
        let keys = self.resolve_all(hosts);
        self.add_active_keys(keys, now);
    }
}

impl<K: PeerKey, P: DialPolicy<K>> PeerManager<K, P> {
    /// A manager with the given options, dial policy and random seed.
    pub fn with_policy(
        cfg: ManagerConfig,
        policy: P,
        now: Instant,
        seed: u64,
    ) -> Result<Self, ConfigError> {
        cfg.validate()?;
        Ok(Self {
            next_check: now + cfg.check_interval,
            next_status: now + cfg.status_interval,
            cfg,
            policy,
            state: ManagerState::New,
            active: HashMap::new(),
            pool: VecDeque::new(),
            bad: HashMap::new(),
            held: HashMap::new(),
            waits: BTreeMap::new(),
            next_wait: 1,
            actions: VecDeque::new(),
            events: VecDeque::new(),
            rng: StdRng::seed_from_u64(seed),
        })
    }

    /// The manager's state.
    pub fn state(&self) -> ManagerState {
        self.state
    }

    /// The manager's options.
    pub fn config(&self) -> &ManagerConfig {
        &self.cfg
    }

    /// The dial policy.
    pub fn policy(&self) -> &P {
        &self.policy
    }

    /// The dial policy, to change its settings.
    pub fn policy_mut(&mut self) -> &mut P {
        &mut self.policy
    }

    /// The active peers.
    pub fn peers(&self) -> impl Iterator<Item = &PeerInfo<K>> {
        self.active.values()
    }

    /// One active peer.
    pub fn peer(&self, addr: &K) -> Option<&PeerInfo<K>> {
        self.active.get(addr)
    }

    /// Number of active peers.
    pub fn active_len(&self) -> usize {
        self.active.len()
    }

    /// Number of candidates in the pool.
    pub fn pool_len(&self) -> usize {
        self.pool.len()
    }

    /// The candidates in the pool, oldest first.
    pub fn pool(&self) -> impl Iterator<Item = &K> {
        self.pool.iter()
    }

    /// Whether the peer is backed off after faults at `now`.
    pub fn is_backed_off(&self, addr: &K, now: Instant) -> bool {
        self.bad.get(addr).is_some_and(|f| f.until > now)
    }

    fn log(&mut self, severity: Severity, message: String, peer: Option<K>) {
        self.events.push_back(ManagerEvent::Log {
            severity,
            message,
            peer,
        });
    }

    /// Starts: adds the seeds to the pool, connects as the policy wants, and schedules the
    /// first check.
    pub fn launch_keys(&mut self, seeds: impl IntoIterator<Item = K>, now: Instant) {
        if self.state == ManagerState::Shutdown {
            return;
        }
        self.state = ManagerState::Launching;
        self.add_pool_keys(seeds, now);
        self.check(now);
    }

    /// Adds candidates to the pool (the oldest ones leave when it is full at `max_pool`;
    /// active and backed-off peers are skipped), then dials as the policy wants.
    pub fn add_pool_keys(&mut self, keys: impl IntoIterator<Item = K>, now: Instant) {
        for k in keys {
            if self.active.contains_key(&k) || self.is_backed_off(&k, now) {
                continue;
            }
            if !self.pool.contains(&k) {
                if self.pool.len() >= self.cfg.max_pool {
                    self.pool.pop_front();
                }
                self.pool.push_back(k);
            }
        }
        self.top_up(now);
    }

    /// Removes a candidate from the pool (for example a node known to be gone).
    pub fn forget(&mut self, key: &K) {
        self.pool.retain(|k| k != key);
    }

    /// Dials the peers now (up to `max_peers`), unless active or backed off.
    pub fn add_active_keys(&mut self, keys: impl IntoIterator<Item = K>, now: Instant) {
        for addr in keys {
            if self.active.contains_key(&addr) {
                continue;
            }
            if self.is_backed_off(&addr, now) {
                let m = format!("{addr} is backed off after faults; not dialling it yet");
                self.log(Severity::Notice, m, Some(addr));
                continue;
            }
            self.dial(addr, now);
        }
    }

    fn dial(&mut self, addr: K, now: Instant) {
        if self.state == ManagerState::Shutdown {
            return;
        }
        if self.active.len() >= self.cfg.max_peers {
            let m = format!(
                "not dialling {addr}: already {} active peers (max_peers)",
                self.active.len()
            );
            self.log(Severity::Notice, m, Some(addr));
            return;
        }
        self.pool.retain(|a| a != &addr);
        self.active.insert(
            addr.clone(),
            PeerInfo {
                addr: addr.clone(),
                state: PeerState::Connecting,
                direction: Direction::Outbound,
                props: BTreeMap::new(),
                last_seen: now,
                since: now,
            },
        );
        self.log(
            Severity::Info,
            format!("connecting to {addr}"),
            Some(addr.clone()),
        );
        self.actions.push_back(Action::Dial(addr));
    }

    /// Starts closing a peer's connection.
    pub fn del_active(&mut self, addr: &K, reason: &str, _now: Instant) {
        let Some(p) = self.active.get_mut(addr) else {
            return;
        };
        if matches!(p.state, PeerState::Disconnecting | PeerState::Closed) {
            return;
        }
        p.state = PeerState::Disconnecting;
        let m = format!("disconnecting from {addr}: {reason}");
        self.log(Severity::Info, m, Some(addr.clone()));
        self.actions.push_back(Action::Close {
            peer: addr.clone(),
            reason: reason.to_string(),
        });
    }

    /// Closes every connection and stops dialling.
    pub fn shutdown(&mut self, now: Instant) {
        let peers: Vec<K> = self.active.keys().cloned().collect();
        self.state = ManagerState::Shutdown;
        for p in peers {
            self.del_active(&p, "shutting down", now);
        }
        let waits: Vec<WaitId> = self.waits.keys().copied().collect();
        for w in waits {
            self.finish_wait(w);
        }
    }

    /// An outbound dial connected.
    pub fn handle_connected(&mut self, addr: &K, now: Instant) {
        let Some(p) = self.active.get_mut(addr) else {
            // Not ours any more (timed out, or closed meanwhile): hang up.
            self.actions.push_back(Action::Close {
                peer: addr.clone(),
                reason: "connected after the manager gave up on it".into(),
            });
            return;
        };
        p.state = PeerState::Connected;
        p.last_seen = now;
        p.since = now;
        self.became_running();
        self.events
            .push_back(ManagerEvent::PeerConnect(addr.clone()));
    }

    fn became_running(&mut self) {
        if self.state == ManagerState::Launching || self.state == ManagerState::New {
            self.state = ManagerState::Running;
        }
    }

    /// Someone connected to us. Returns `false` (and the shell must close the socket) when
    /// the peer is already active, backed off, or `max_peers` is reached and the policy
    /// evicts no one for it.
    pub fn handle_inbound(&mut self, addr: &K, now: Instant) -> bool {
        self.handle_accepted(addr, Direction::Inbound, now)
    }

    /// A connection the manager did not dial is up, in either direction (an inbound one, or
    /// one the application opened itself, such as a bootstrap URL whose peer is only known
    /// once connected). Returns `false` (and the shell must close it) when the peer is
    /// already active, backed off, or `max_peers` is reached and the policy evicts no one.
    pub fn handle_accepted(&mut self, addr: &K, direction: Direction, now: Instant) -> bool {
        let refuse = if self.state == ManagerState::Shutdown {
            Some("shutting down".to_string())
        } else if self.active.contains_key(addr) {
            Some("already connected to that peer".to_string())
        } else if self.is_backed_off(addr, now) {
            Some("backed off after faults".to_string())
        } else if self.active.len() >= self.cfg.max_peers {
            let view = PoolView {
                active: &self.active,
                pool: &self.pool,
                bad: &self.bad,
                held: &self.held,
                cfg: &self.cfg,
                launching: self.state == ManagerState::Launching,
                now,
            };
            match self.policy.evict_for(addr, &view) {
                Some(victim) if self.active.contains_key(&victim) && &victim != addr => {
                    self.evict(&victim, addr);
                    None
                }
                _ => Some(format!(
                    "already {} active peers (max_peers)",
                    self.active.len()
                )),
            }
        } else {
            None
        };
        if let Some(why) = refuse {
            let m = format!("refusing connection with {addr}: {why}");
            self.log(Severity::Notice, m, Some(addr.clone()));
            return false;
        }
        self.pool.retain(|a| a != addr);
        self.active.insert(
            addr.clone(),
            PeerInfo {
                addr: addr.clone(),
                state: PeerState::Connected,
                direction,
                props: BTreeMap::new(),
                last_seen: now,
                since: now,
            },
        );
        self.became_running();
        self.events
            .push_back(ManagerEvent::PeerConnect(addr.clone()));
        true
    }

    /// At `max_peers`, the peer the policy would disconnect to make room for `newcomer`
    /// (nothing is changed).
    pub fn eviction_candidate(&mut self, newcomer: &K, now: Instant) -> Option<K> {
        let view = PoolView {
            active: &self.active,
            pool: &self.pool,
            bad: &self.bad,
            held: &self.held,
            cfg: &self.cfg,
            launching: self.state == ManagerState::Launching,
            now,
        };
        self.policy.evict_for(newcomer, &view)
    }

    /// Removes `victim` from the active set at once (its close is asked for) to make room.
    fn evict(&mut self, victim: &K, newcomer: &K) {
        self.active.remove(victim);
        let reason = format!("evicted to make room for {newcomer}");
        self.log(
            Severity::Info,
            format!("{victim}: {reason}"),
            Some(victim.clone()),
        );
        self.actions.push_back(Action::Close {
            peer: victim.clone(),
            reason: reason.clone(),
        });
        self.events.push_back(ManagerEvent::PeerEnd {
            peer: victim.clone(),
            reason,
        });
        self.end_waits_held_by(victim);
    }

    /// A dial failed: the peer is backed off.
    pub fn handle_dial_failed(&mut self, addr: &K, error: &str, now: Instant) {
        if self.active.remove(addr).is_none() {
            return;
        }
        self.fault(addr, &format!("could not connect: {error}"), now);
        self.events.push_back(ManagerEvent::PeerEnd {
            peer: addr.clone(),
            reason: format!("dial failed: {error}"),
        });
        self.top_up(now);
    }

    /// The peer's connection closed (for whatever reason).
    pub fn handle_closed(&mut self, addr: &K, reason: &str, now: Instant) {
        if self.active.remove(addr).is_none() {
            return;
        }
        self.events.push_back(ManagerEvent::PeerEnd {
            peer: addr.clone(),
            reason: reason.to_string(),
        });
        self.end_waits_held_by(addr);
        self.top_up(now);
    }

    /// A peer that left will not answer: ends the waits that only it held open.
    fn end_waits_held_by(&mut self, addr: &K) {
        let waits: Vec<WaitId> = self
            .waits
            .iter()
            .filter(|(_, w)| w.pending.len() == 1 && w.pending.contains(addr))
            .map(|(id, _)| *id)
            .collect();
        for id in waits {
            self.finish_wait(id);
        }
    }

    /// The peer misbehaved (bad checksum, oversized frame, garbage): reported, backed off, and
    /// disconnected when `disconnect` is set.
    pub fn handle_peer_error(
        &mut self,
        addr: &K,
        severity: Severity,
        message: &str,
        disconnect: bool,
        now: Instant,
    ) {
        self.log(severity, format!("{addr}: {message}"), Some(addr.clone()));
        if severity >= Severity::Warning {
            self.fault(addr, message, now);
        }
        if disconnect {
            self.del_active(addr, message, now);
        }
    }

    /// Counts a fault against a peer (which need not be active): it is backed off, longer
    /// for each further fault.
    pub fn fault(&mut self, addr: &K, why: &str, now: Instant) {
        if !self.bad.contains_key(addr) && self.bad.len() >= self.cfg.max_bad {
            // Forget the fault that ends first.
            if let Some(k) = self
                .bad
                .iter()
                .min_by_key(|(_, f)| f.until)
                .map(|(k, _)| k.clone())
            {
                self.bad.remove(&k);
            }
        }
        let count = self.bad.get(addr).map_or(0, |f| f.count).saturating_add(1);
        let factor = 1u32 << (count - 1).min(16);
        let wait = self
            .cfg
            .backoff_base
            .saturating_mul(factor)
            .min(self.cfg.backoff_max);
        self.bad.insert(
            addr.clone(),
            Fault {
                count,
                until: now + wait,
            },
        );
        self.pool.retain(|a| a != addr);
        let m = format!(
            "{addr} backed off for {} s after fault {count}: {why}",
            wait.as_secs()
        );
        self.log(Severity::Warning, m, Some(addr.clone()));
    }

    /// Forgets the faults counted against a peer, and its hold (an explicit request to link
    /// it again).
    pub fn forgive(&mut self, addr: &K) {
        self.bad.remove(addr);
        self.held.remove(addr);
    }

    /// Keeps the policy from dialling `addr` until `until` (its links and offers are still
    /// accepted): for a peer that closed a link to us.
    pub fn hold(&mut self, addr: &K, until: Instant) {
        if !self.held.contains_key(addr) && self.held.len() >= self.cfg.max_bad {
            // Forget the hold that ends first.
            if let Some(k) = self
                .held
                .iter()
                .min_by_key(|(_, u)| **u)
                .map(|(k, _)| k.clone())
            {
                self.held.remove(&k);
            }
        }
        self.held.insert(addr.clone(), until);
    }

    /// Something was heard from the peer (a message, a keep-alive): it is not idle.
    pub fn touch(&mut self, addr: &K, now: Instant) {
        if let Some(p) = self.active.get_mut(addr) {
            p.last_seen = now;
        }
    }

    /// A message arrived from a peer.
    pub fn handle_message(&mut self, addr: &K, command: &str, payload: Bytes, now: Instant) {
        let Some(p) = self.active.get_mut(addr) else {
            return;
        };
        p.last_seen = now;
        let answered: Vec<WaitId> = self
            .waits
            .iter_mut()
            .filter(|(_, w)| w.command == command && w.pending.contains(addr))
            .map(|(id, w)| {
                w.pending.remove(addr);
                *id
            })
            .collect();
        for id in answered {
            self.events.push_back(ManagerEvent::Answer {
                wait: id,
                peer: addr.clone(),
                payload: payload.clone(),
            });
            if self.waits.get(&id).is_some_and(|w| w.pending.is_empty()) {
                self.finish_wait(id);
            }
        }
        self.events.push_back(ManagerEvent::Message {
            peer: addr.clone(),
            command: command.to_string(),
            payload,
        });
    }

    fn finish_wait(&mut self, id: WaitId) {
        if let Some(w) = self.waits.remove(&id) {
            let mut missing: Vec<K> = w.pending.into_iter().collect();
            missing.sort();
            self.events
                .push_back(ManagerEvent::AnswersDone { wait: id, missing });
        }
    }

    /// Sets a peer's state (a built-in one or the application's own).
    pub fn set_state(&mut self, addr: &K, state: PeerState) -> bool {
        self.active.get_mut(addr).map(|p| p.state = state).is_some()
    }

    /// Sets a property of a peer, matched by [`PeerManager::send`].
    pub fn set_property(&mut self, addr: &K, key: &str, value: Value) -> bool {
        self.active
            .get_mut(addr)
            .map(|p| p.props.insert(key.to_string(), value))
            .is_some()
    }

    fn property(p: &PeerInfo<K>, key: &str) -> Option<Value> {
        match key {
            "state" => Some(Value::String(p.state.name().to_string())),
            "direction" => Some(Value::String(
                match p.direction {
                    Direction::Outbound => "outbound",
                    Direction::Inbound => "inbound",
                }
                .into(),
            )),
            _ => p
                .props
                .get(key)
                .cloned()
                .or_else(|| p.addr.builtin_property(key)),
        }
    }

    fn matches(have: &Value, want: &Value) -> bool {
        match (have, want) {
            (Value::String(a), Value::String(b)) => a.eq_ignore_ascii_case(b),
            (a, b) => a == b,
        }
    }

    /// Sends `command` to the peers the [`Selection`] picks (at random among the matching
    /// ones). With an answer spec, answers from the chosen peers arrive as
    /// [`ManagerEvent::Answer`] until all answered or the timeout passed
    /// ([`ManagerEvent::AnswersDone`] names who did not).
    pub fn send(
        &mut self,
        sel: &Selection,
        command: &str,
        payload: Bytes,
        answer: Option<AnswerSpec>,
        now: Instant,
    ) -> SendOutcome<K> {
        let (number, property, values) = (sel.number, sel.property.as_str(), &sel.values);
        let mut chosen: Vec<K> = self
            .active
            .values()
            .filter(|p| p.state != PeerState::Disconnecting && p.state != PeerState::Closed)
            .filter(|p| {
                Self::property(p, property)
                    .is_some_and(|have| values.iter().any(|v| Self::matches(&have, v)))
            })
            .map(|p| p.addr.clone())
            .collect();
        chosen.sort();
        chosen.shuffle(&mut self.rng);
        if number > 0 {
            chosen.truncate(usize::try_from(number).unwrap_or(usize::MAX));
        }
        chosen.sort();
        for peer in &chosen {
            self.actions.push_back(Action::Send {
                peer: peer.clone(),
                command: command.to_string(),
                payload: payload.clone(),
            });
        }
        let wait = match answer {
            Some(spec) if !chosen.is_empty() => {
                if self.waits.len() >= self.cfg.max_waits {
                    if let Some((&oldest, _)) = self.waits.iter().next() {
                        self.finish_wait(oldest);
                    }
                }
                let id = self.next_wait;
                self.next_wait += 1;
                self.waits.insert(
                    id,
                    Wait {
                        command: spec.command,
                        pending: chosen.iter().cloned().collect(),
                        deadline: now + spec.timeout,
                    },
                );
                Some(id)
            }
            _ => None,
        };
        SendOutcome {
            peers: chosen,
            wait,
        }
    }

    /// Dials what the policy picks, up to `max_peers`.
    pub fn top_up(&mut self, now: Instant) {
        if self.state == ManagerState::Shutdown {
            return;
        }
        while self.active.len() < self.cfg.max_peers {
            let view = PoolView {
                active: &self.active,
                pool: &self.pool,
                bad: &self.bad,
                held: &self.held,
                cfg: &self.cfg,
                launching: self.state == ManagerState::Launching,
                now,
            };
            let Some(k) = self.policy.next_dial(&view) else {
                break;
            };
            if self.active.contains_key(&k) || self.is_backed_off(&k, now) {
                // A policy that answers what it must not would loop forever: stop here.
                break;
            }
            self.dial(k, now);
        }
    }

    /// The periodic check: drop idle peers and connecting peers past their timeout, forget
    /// expired faults, top up from the pool.
    fn check(&mut self, now: Instant) {
        let mut idle = Vec::new();
        let mut stuck = Vec::new();
        for p in self.active.values() {
            match p.state {
                PeerState::Connecting if now >= p.since + self.cfg.connect_timeout => {
                    stuck.push(p.addr.clone())
                }
                PeerState::Disconnecting | PeerState::Closed | PeerState::Connecting => {}
                _ if now >= p.last_seen + self.cfg.idle_timeout => idle.push(p.addr.clone()),
                _ => {}
            }
        }
        for addr in stuck {
            self.active.remove(&addr);
            self.actions.push_back(Action::Close {
                peer: addr.clone(),
                reason: "did not connect in time".into(),
            });
            self.fault(&addr, "did not answer the connection attempt in time", now);
            self.events.push_back(ManagerEvent::PeerEnd {
                peer: addr,
                reason: "connect timeout".into(),
            });
        }
        for addr in idle {
            self.del_active(&addr, "quiet for longer than idle_timeout", now);
        }
        self.bad.retain(|_, f| f.until > now);
        if self.active.len() < self.cfg.min_peers && self.pool.is_empty() {
            let m = format!(
                "only {} active peers (min_peers {}) and no more in the pool",
                self.active.len(),
                self.cfg.min_peers
            );
            self.log(Severity::Info, m, None);
        }
        self.top_up(now);
    }

    /// The next instant the manager must be woken at.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state == ManagerState::New {
            return None;
        }
        let mut t = self.next_check.min(self.next_status);
        for p in self.active.values() {
            if p.state == PeerState::Connecting {
                t = t.min(p.since + self.cfg.connect_timeout);
            }
        }
        if let Some(w) = self.waits.values().map(|w| w.deadline).min() {
            t = t.min(w);
        }
        Some(t)
    }

    /// Handles every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<WaitId> = self
            .waits
            .iter()
            .filter(|(_, w)| w.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.finish_wait(id);
        }
        let connect_due = self
            .active
            .values()
            .any(|p| p.state == PeerState::Connecting && now >= p.since + self.cfg.connect_timeout);
        if now >= self.next_check || connect_due {
            if now >= self.next_check {
                self.next_check = now + self.cfg.check_interval;
            }
            self.check(now);
        }
        if now >= self.next_status {
            self.next_status = now + self.cfg.status_interval;
            let backed_off = self.bad.values().filter(|f| f.until > now).count();
            self.events.push_back(ManagerEvent::Status {
                active: self.active.len(),
                pool: self.pool.len(),
                backed_off,
            });
        }
    }

    /// The next thing the shell must do.
    pub fn poll_action(&mut self) -> Option<Action<K>> {
        self.actions.pop_front()
    }

    /// The next thing to report.
    pub fn poll_event(&mut self) -> Option<ManagerEvent<K>> {
        self.events.pop_front()
    }
}

#[cfg(test)]
mod tests;
