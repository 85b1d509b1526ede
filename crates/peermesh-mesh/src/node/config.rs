//! The mesh node's options.

use std::time::Duration;

use crate::manager::{ConfigError, ManagerConfig};

/// Which peers a node chooses to connect to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConnectionRule {
    /// peermesh's rule: a few links in every non-empty k-bucket, spread over each bucket's
    /// id range, then the closest candidates up to the target.
    #[default]
    Buckets,
    /// peer-relay's rule: only the candidates closest to the node's own id, up to the target.
    /// Kept for comparison in `peermesh sim`.
    Closest,
}

/// A mesh node's options; every field documents its default.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeConfig {
    /// How the node picks its links. Defaults to [`ConnectionRule::Buckets`].
    pub rule: ConnectionRule,
    /// Links the node dials up to (beyond this, only to cover empty k-buckets). Defaults to
    /// 15, peer-relay's figure.
    pub target_peers: usize,
    /// Hard limit of links, inbound ones included. Defaults to 40.
    pub max_peers: usize,
    /// Links kept free for inbound connections: the node dials on its own only up to
    /// `max_peers - reserve_inbound`. Defaults to 8.
    pub reserve_inbound: usize,
    /// Links wanted in every non-empty k-bucket. Defaults to 2.
    pub links_per_bucket: usize,
    /// The closest known nodes are always linked, this many of them: greedy routing ends at
    /// a target's nearest neighbours, so they must link to it. Defaults to 8.
    pub near_links: usize,
    /// Candidates kept per k-bucket. Defaults to 20 (k).
    pub candidates_per_bucket: usize,
    /// Most candidates kept in all. Defaults to 1,000.
    pub max_candidates: usize,
    /// Copies a message starts with: the origin sends it to this many peers. Defaults to 2,
    /// peer-relay's figure.
    pub fanout: usize,
    /// Peers a relay sends a message on to. Defaults to 1: the origin's copies take
    /// independent greedy paths, rather than doubling at every hop as in peer-relay (which
    /// uses 2 here, and floods a region of the network with every message).
    pub relay_fanout: usize,
    /// A message that has been sent on this many times is dropped. Defaults to 20.
    pub max_hops: usize,
    /// Largest WebSocket message accepted or sent, in bytes. Defaults to 1 MiB.
    pub max_frame: usize,
    /// Nonces remembered for deduplication. Defaults to 65,536.
    pub seen_capacity: usize,
    /// How long a nonce is remembered. Defaults to 2 minutes.
    pub seen_ttl: Duration,
    /// Senders whose last hop is remembered for the way back. Defaults to 4,096.
    pub path_capacity: usize,
    /// How long a remembered last hop stays valid. Defaults to 10 minutes.
    pub path_ttl: Duration,
    /// Messages queued while the node has no link yet (the oldest go first). Defaults to 1,024.
    pub queue_capacity: usize,
    /// Wait for a handshake answer before offering again. Defaults to 2 s.
    pub handshake_timeout: Duration,
    /// Offers sent per handshake before giving up. Defaults to 3.
    pub handshake_attempts: u32,
    /// Time a new link has to send its id. Defaults to 10 s.
    pub greeting_timeout: Duration,
    /// Interval of table refreshes (peer lookups for the own id and for thin buckets).
    /// Defaults to 60 s.
    pub refresh_interval: Duration,
    /// Delay of the refresh that follows the loss of a link. Defaults to 1 s.
    pub repair_delay: Duration,
    /// A link silent this long is closed (the shell counts WebSocket pongs as activity).
    /// Defaults to 30 minutes.
    pub idle_timeout: Duration,
    /// First back-off of a candidate whose handshake failed; doubled for each further fault.
    /// Defaults to 30 s.
    pub backoff_base: Duration,
    /// Longest back-off. Defaults to 30 minutes.
    pub backoff_max: Duration,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            rule: ConnectionRule::Buckets,
            target_peers: 15,
            max_peers: 40,
            reserve_inbound: 8,
            links_per_bucket: 2,
            near_links: 8,
            candidates_per_bucket: 20,
            max_candidates: 1000,
            fanout: 2,
            relay_fanout: 1,
            max_hops: 20,
            max_frame: crate::wire::peer_relay::DEFAULT_MAX_FRAME,
            seen_capacity: 65_536,
            seen_ttl: Duration::from_secs(120),
            path_capacity: 4096,
            path_ttl: Duration::from_secs(600),
            queue_capacity: 1024,
            handshake_timeout: Duration::from_secs(2),
            handshake_attempts: 3,
            greeting_timeout: Duration::from_secs(10),
            refresh_interval: Duration::from_secs(60),
            repair_delay: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(30 * 60),
            backoff_base: Duration::from_secs(30),
            backoff_max: Duration::from_secs(30 * 60),
        }
    }
}

impl NodeConfig {
    /// peer-relay's behaviour, for comparison: closest-only links and a fan-out of 2 at every
    /// hop; the rest (timeouts, repair, bounds) unchanged.
    pub fn peer_relay_rule() -> Self {
        Self {
            rule: ConnectionRule::Closest,
            relay_fanout: 2,
            ..Self::default()
        }
    }

    /// Checks the options and derives the peer manager's.
    pub fn manager_config(&self) -> Result<ManagerConfig, ConfigError> {
        let bad = |key, reason: &str| {
            Err(ConfigError {
                key,
                reason: reason.to_string(),
            })
        };
        if self.fanout == 0 || self.fanout > 8 {
            return bad("fanout", "must be between 1 and 8");
        }
        if self.relay_fanout == 0 || self.relay_fanout > 8 {
            return bad("relay_fanout", "must be between 1 and 8");
        }
        if self.max_hops == 0 || self.max_hops > crate::wire::peer_relay::MAX_PATH {
            return bad("max_hops", "must be between 1 and 64");
        }
        if self.reserve_inbound >= self.max_peers {
            return bad("reserve_inbound", "must be below max_peers");
        }
        if self.handshake_attempts == 0 {
            return bad("handshake_attempts", "must be at least 1");
        }
        for (key, n) in [
            ("seen_capacity", self.seen_capacity),
            ("path_capacity", self.path_capacity),
            ("queue_capacity", self.queue_capacity),
            ("max_candidates", self.max_candidates),
            ("candidates_per_bucket", self.candidates_per_bucket),
            ("max_frame", self.max_frame),
        ] {
            if n == 0 {
                return bad(key, "must be at least 1");
            }
        }
        for (key, d) in [
            ("seen_ttl", self.seen_ttl),
            ("path_ttl", self.path_ttl),
            ("handshake_timeout", self.handshake_timeout),
            ("greeting_timeout", self.greeting_timeout),
            ("refresh_interval", self.refresh_interval),
            ("repair_delay", self.repair_delay),
        ] {
            if d.is_zero() {
                return bad(key, "must be longer than zero");
            }
        }
        let connect_timeout = self
            .handshake_timeout
            .saturating_mul(self.handshake_attempts)
            .saturating_add(self.greeting_timeout.min(std::time::Duration::from_secs(5)));
        let cfg = ManagerConfig {
            min_peers: self.target_peers.min(self.max_peers),
            max_peers: self.max_peers,
            idle_timeout: self.idle_timeout,
            connect_timeout,
            check_interval: self
                .refresh_interval
                .min(std::time::Duration::from_secs(10)),
            status_interval: std::time::Duration::from_secs(60),
            backoff_base: self.backoff_base,
            backoff_max: self.backoff_max,
            max_pool: self.max_candidates,
            max_bad: self.max_candidates,
            max_waits: 16,
            default_port: 0,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}
