//! Settings of a cluster node and its errors.

use std::time::Duration;

/// How a hub joins a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The NATS server, `nats://HOST:PORT`.
    pub url: String,
    /// This node's name, unique in the cluster (letters, digits, `-` and `_`, 1 to 64).
    pub node: String,
    /// Interval of this node's heartbeats. Defaults to 1 s.
    pub heartbeat: Duration,
    /// Silence after which a node counts as dead and its ids are released. Defaults to 5 s.
    pub dead_after: Duration,
    /// How long to keep trying to reach NATS at start (`None`: fail at once). Defaults to none.
    pub wait: Option<Duration>,
    /// The key-value bucket of client ids. Defaults to `peermesh-ids`.
    pub bucket: String,
    /// The key-value bucket of room members. Defaults to `peermesh-rooms`.
    pub rooms_bucket: String,
}

impl ClusterConfig {
    /// Defaults for `url` and `node`.
    pub fn new(url: impl Into<String>, node: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            node: node.into(),
            heartbeat: Duration::from_secs(1),
            dead_after: Duration::from_secs(5),
            wait: None,
            bucket: "peermesh-ids".into(),
            rooms_bucket: "peermesh-rooms".into(),
        }
    }

    /// Checks every setting.
    pub fn validate(&self) -> Result<(), ClusterError> {
        let bad = |setting: &'static str, reason: &str| {
            Err(ClusterError::Config {
                setting,
                reason: reason.to_owned(),
            })
        };
        if !self.url.starts_with("nats://") && !self.url.starts_with("tls://") {
            return bad("cluster", "give the NATS server as nats://HOST:PORT");
        }
        let ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if !ok(&self.node) {
            return bad(
                "node_name",
                "use 1 to 64 letters, digits, '-' or '_' (it names the node's NATS subjects)",
            );
        }
        if !ok(&self.bucket) || !ok(&self.rooms_bucket) {
            return bad("bucket", "use 1 to 64 letters, digits, '-' or '_'");
        }
        if self.heartbeat.is_zero() || self.dead_after < self.heartbeat * 3 {
            return bad(
                "dead_after",
                "must be at least three heartbeats, or a late heartbeat kills a live node",
            );
        }
        Ok(())
    }
}

/// What went wrong with the cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A setting is wrong.
    #[error("cluster setting `{setting}`: {reason}")]
    Config {
        /// The setting.
        setting: &'static str,
        /// What is wrong and the fix.
        reason: String,
    },
    /// NATS cannot be reached.
    #[error("cannot reach NATS at {url}: {reason}; start nats-server (with -js) there, or pass --cluster-wait to keep trying")]
    Unreachable {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// Another live node already uses this node name.
    #[error(
        "the node name {0:?} is already in use in the cluster; give each hub its own --node-name"
    )]
    NameTaken(String),
    /// The server has no JetStream (needed for the id registry).
    #[error("NATS at {url} has no JetStream ({reason}); start nats-server with -js")]
    NoJetStream {
        /// The URL.
        url: String,
        /// The server's answer.
        reason: String,
    },
    /// A NATS operation failed.
    #[error("NATS {op} failed: {reason}")]
    Nats {
        /// The operation.
        op: &'static str,
        /// Why.
        reason: String,
    },
}

impl ClusterError {
    pub(crate) fn nats(op: &'static str, e: impl std::fmt::Display) -> Self {
        ClusterError::Nats {
            op,
            reason: e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_name_themselves() {
        assert!(ClusterConfig::new("nats://127.0.0.1:4222", "hub-1")
            .validate()
            .is_ok());
        for (cfg, setting) in [
            (ClusterConfig::new("http://x", "a"), "cluster"),
            (ClusterConfig::new("nats://x:1", "a b"), "node_name"),
            (ClusterConfig::new("nats://x:1", ""), "node_name"),
            (
                ClusterConfig {
                    dead_after: std::time::Duration::from_secs(1),
                    ..ClusterConfig::new("nats://x:1", "a")
                },
                "dead_after",
            ),
        ] {
            match cfg.validate() {
                Err(ClusterError::Config { setting: s, .. }) => assert_eq!(s, setting),
                other => panic!("{setting}: {other:?}"),
            }
        }
    }
}
