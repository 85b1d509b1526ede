//! Hub configuration: every limit with its default.
//!
//! [`HubConfig`] deserializes from TOML (`peermesh serve --config FILE`) with unknown keys
//! refused, so a typo names the key instead of being ignored. Durations are whole milliseconds.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::error::ConfigError;

/// What the hub does when a client says hello with an id another live connection holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DuplicateIdPolicy {
    /// Refuse the newcomer with `id_taken` (the default).
    #[default]
    Reject,
    /// Close the old connection with `replaced` and accept the newcomer.
    Replace,
}

impl std::str::FromStr for DuplicateIdPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "reject" => Ok(Self::Reject),
            "replace" => Ok(Self::Replace),
            other => Err(format!(
                "unknown duplicate-id policy {other:?}: use `reject` or `replace`"
            )),
        }
    }
}

/// Token authentication. With neither key set, clients are not authenticated.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Shared secret for HS256 tokens. Defaults to none.
    pub jwt_secret: Option<String>,
    /// PEM file with an RSA or Ed25519 public key for RS256/EdDSA tokens. Defaults to none.
    pub jwt_public_key: Option<PathBuf>,
    /// Required `aud` claim. Defaults to none: `aud` is not checked.
    pub jwt_audience: Option<String>,
    /// Required `iss` claim. Defaults to none: `iss` is not checked.
    pub jwt_issuer: Option<String>,
}

impl AuthConfig {
    /// Whether any authentication is configured.
    pub fn enabled(&self) -> bool {
        self.jwt_secret.is_some() || self.jwt_public_key.is_some()
    }
}

/// Configuration of a hub.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HubConfig {
    /// Address to listen on. Defaults to `127.0.0.1:7070`.
    pub listen: SocketAddr,
    /// Allow listening on a non-loopback address without authentication. Defaults to `false`.
    pub insecure: bool,
    /// Trust `X-Forwarded-For` / `Forwarded` for the client address. Defaults to `false`.
    pub trust_proxy: bool,
    /// Policy for a hello with a client id that is already connected. Defaults to `reject`.
    pub duplicate_id: DuplicateIdPolicy,
    /// Client protocol versions accepted, as a semver requirement. Defaults to `^1.0`.
    pub supported_versions: String,
    /// Largest inbound frame in bytes; larger ones get `frame_too_large`. Defaults to 1 MiB.
    pub max_frame_bytes: usize,
    /// Most connected clients; further ones get `server_full`. Defaults to 100,000.
    pub max_clients: usize,
    /// Most rooms one client may be in. Defaults to 256.
    pub max_rooms_per_client: usize,
    /// Outbound queue per connection, in frames. Defaults to 4,096.
    pub outbound_queue_frames: usize,
    /// Outbound queue per connection, in bytes; overflow closes with `slow_consumer`.
    /// Defaults to 8 MiB.
    pub outbound_queue_bytes: usize,
    /// Sustained inbound frames per second per connection. Defaults to 5,000.
    pub rate_per_sec: u32,
    /// Inbound burst per connection, in frames. Defaults to 10,000.
    pub rate_burst: u32,
    /// Interval of the hub's WebSocket pings, in ms. Defaults to 5,000.
    pub heartbeat_interval_ms: u64,
    /// A connection that sends nothing (not even a pong) for this long is dead, in ms.
    /// Defaults to 20,000.
    pub heartbeat_timeout_ms: u64,
    /// Time allowed between the WebSocket upgrade and `hello`, in ms. Defaults to 10,000.
    pub hello_timeout_ms: u64,
    /// Acknowledgement timeout when the emit names none, in ms. Defaults to 5,000.
    pub default_ack_timeout_ms: u64,
    /// Longest acknowledgement timeout a client may ask for, in ms. Defaults to 60,000.
    pub max_ack_timeout_ms: u64,
    /// Most acknowledged emits one connection may have waiting. Defaults to 1,024.
    pub max_pending_acks: usize,
    /// Most recent targets remembered per client for `peer_left`. Defaults to 1,024.
    pub max_recent_targets: usize,
    /// How long a target counts as recent for `peer_left`, in ms. Defaults to 600,000 (10 min).
    pub recent_target_ttl_ms: u64,
    /// Most streams one connection may have at once: opening, being offered to it, or open.
    /// Defaults to 128.
    pub max_streams_per_client: usize,
    /// Largest credit one end of a stream may hold, in bytes: the most stream data the hub
    /// ever queues for one stream. Defaults to 4 MiB.
    pub max_stream_window_bytes: u64,
    /// Time a stream target has to accept or reject a `stream_open`, in ms. Defaults to 10,000.
    pub stream_open_timeout_ms: u64,
    /// Most service calls one connection may have waiting for an answer (`too_many_calls`).
    /// Defaults to 1,024.
    pub max_calls_per_client: usize,
    /// Most calls one client provider handles at once; when every provider of a service is
    /// at it, calls get `service_busy`. Defaults to 1,024.
    pub max_calls_per_provider: u32,
    /// Timeout of a call that names none, in ms. Defaults to 5,000.
    pub default_call_timeout_ms: u64,
    /// Longest call timeout a client may ask for, in ms. Defaults to 60,000.
    pub max_call_timeout_ms: u64,
    /// Most topics one client may be subscribed to at once. Defaults to 1,024.
    pub max_subscriptions_per_client: usize,
    /// Most topics one service may have at once. Defaults to 1,024.
    pub max_topics_per_service: usize,
    /// Most sessions one client may be in at once (`too_many_sessions`). Defaults to 16.
    pub max_sessions_per_client: usize,
    /// Most members of one session (`too_many_members`). Defaults to 1,024.
    pub max_session_members: usize,
    /// Most objects of one session (`too_many_objects`). Defaults to 1,000,000.
    pub max_session_objects: usize,
    /// Largest value of one session object, in bytes (`object_too_large`). Defaults to 256 KiB.
    pub max_object_bytes: usize,
    /// How long the hub keeps a client that can resume after its connection drops, in ms: its
    /// id, rooms, subscriptions and what the hub would have delivered to it. 0 turns resume
    /// off. Defaults to 30,000.
    pub resume_grace_ms: u64,
    /// Frames kept per resumable client until it confirms them (and while it is away), in
    /// bytes; beyond it the oldest unconfirmed frames are dropped (a later resume that needs
    /// them is rejected with `overflow`), and an away client that overflows it is gone.
    /// Defaults to 1 MiB.
    pub resume_buffer_bytes: usize,
    /// Provide the built-in `time` service (methods `now` and `echo`) from the hub.
    /// Defaults to `false`.
    pub builtin_time_service: bool,
    /// The most read from a socket per system call, in bytes, into a buffer of the worker
    /// thread (one per thread, not per connection: a connection keeps read bytes only while a
    /// frame is incomplete). 256 B to 1 MiB; defaults to 16 KiB.
    pub ws_read_buffer_bytes: usize,
    /// Framed bytes a connection queues before writing them out, in bytes (its write buffer is
    /// freed whenever it has nothing queued). Defaults to 16 KiB.
    pub ws_write_buffer_bytes: usize,
    /// Time given to connections to receive their close frame at shutdown, in ms.
    /// Defaults to 3,000.
    pub shutdown_grace_ms: u64,
    /// Token authentication. Defaults to none.
    pub auth: AuthConfig,
    /// The NATS server of a cluster of hubs, `nats://HOST:PORT` (with JetStream). Defaults to
    /// none: a single hub.
    pub cluster: Option<String>,
    /// This hub's name in the cluster: 1 to 64 letters, digits, `-` or `_`, unique among live
    /// hubs. Defaults to the host name and the listen port.
    pub node_name: Option<String>,
    /// How long to keep trying to reach the cluster's NATS server at start, in ms (0: fail at
    /// once with the error). Defaults to 0.
    pub cluster_wait_ms: u64,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            insecure: false,
            trust_proxy: false,
            duplicate_id: DuplicateIdPolicy::Reject,
            supported_versions: peermesh_proto::SUPPORTED_VERSIONS.to_string(),
            max_frame_bytes: 1 << 20,
            max_clients: 100_000,
            max_rooms_per_client: 256,
            outbound_queue_frames: 4096,
            outbound_queue_bytes: 8 << 20,
            rate_per_sec: 5_000,
            rate_burst: 10_000,
            heartbeat_interval_ms: 5_000,
            heartbeat_timeout_ms: 20_000,
            hello_timeout_ms: 10_000,
            default_ack_timeout_ms: 5_000,
            max_ack_timeout_ms: 60_000,
            max_pending_acks: 1024,
            max_recent_targets: 1024,
            recent_target_ttl_ms: 600_000,
            max_streams_per_client: 128,
            max_stream_window_bytes: 4 << 20,
            stream_open_timeout_ms: 10_000,
            max_calls_per_client: 1024,
            max_calls_per_provider: 1024,
            default_call_timeout_ms: 5_000,
            max_call_timeout_ms: 60_000,
            max_subscriptions_per_client: 1024,
            max_topics_per_service: 1024,
            max_sessions_per_client: 16,
            max_session_members: 1024,
            max_session_objects: 1_000_000,
            max_object_bytes: 256 << 10,
            resume_grace_ms: 30_000,
            resume_buffer_bytes: 1 << 20,
            builtin_time_service: false,
            ws_read_buffer_bytes: 16 << 10,
            ws_write_buffer_bytes: 16 << 10,
            shutdown_grace_ms: 3_000,
            auth: AuthConfig::default(),
            cluster: None,
            node_name: None,
            cluster_wait_ms: 0,
        }
    }
}

/// Smallest `ws_read_buffer_bytes`: below it, reads of a busy socket become system calls of a
/// few bytes.
pub(crate) const MIN_WS_READ_BUFFER: usize = 256;
/// Largest `ws_read_buffer_bytes` (one buffer per worker thread).
pub(crate) const MAX_WS_READ_BUFFER: usize = 1 << 20;

impl HubConfig {
    /// Parses a TOML document; unknown keys are errors that name the key.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        toml_from_str(text)
    }

    /// Checks every value, returning the first problem with the key and the fix.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &'static str, reason: String| Err(ConfigError::Invalid { key, reason });
        if semver::VersionReq::parse(&self.supported_versions).is_err() {
            return bad(
                "supported_versions",
                format!(
                    "{:?} is not a semver requirement (try \"^1.0\")",
                    self.supported_versions
                ),
            );
        }
        let positive: [(&'static str, u64); 25] = [
            (
                "max_sessions_per_client",
                self.max_sessions_per_client as u64,
            ),
            ("max_session_members", self.max_session_members as u64),
            ("max_session_objects", self.max_session_objects as u64),
            ("max_object_bytes", self.max_object_bytes as u64),
            ("max_calls_per_client", self.max_calls_per_client as u64),
            (
                "max_calls_per_provider",
                u64::from(self.max_calls_per_provider),
            ),
            ("default_call_timeout_ms", self.default_call_timeout_ms),
            ("max_call_timeout_ms", self.max_call_timeout_ms),
            (
                "max_subscriptions_per_client",
                self.max_subscriptions_per_client as u64,
            ),
            ("max_topics_per_service", self.max_topics_per_service as u64),
            ("max_streams_per_client", self.max_streams_per_client as u64),
            ("max_stream_window_bytes", self.max_stream_window_bytes),
            ("stream_open_timeout_ms", self.stream_open_timeout_ms),
            ("max_frame_bytes", self.max_frame_bytes as u64),
            ("max_clients", self.max_clients as u64),
            ("outbound_queue_frames", self.outbound_queue_frames as u64),
            ("outbound_queue_bytes", self.outbound_queue_bytes as u64),
            ("rate_per_sec", u64::from(self.rate_per_sec)),
            ("rate_burst", u64::from(self.rate_burst)),
            ("heartbeat_interval_ms", self.heartbeat_interval_ms),
            ("heartbeat_timeout_ms", self.heartbeat_timeout_ms),
            ("hello_timeout_ms", self.hello_timeout_ms),
            ("default_ack_timeout_ms", self.default_ack_timeout_ms),
            ("max_ack_timeout_ms", self.max_ack_timeout_ms),
            ("ws_read_buffer_bytes", self.ws_read_buffer_bytes as u64),
        ];
        for (key, v) in positive {
            if v == 0 {
                return bad(key, "must be greater than 0".into());
            }
        }
        if self.max_clients > crate::registry::MAX_SLOTS as usize - 1024 {
            return bad(
                "max_clients",
                format!(
                    "must be at most {} (ack ids must stay exact in JavaScript numbers)",
                    crate::registry::MAX_SLOTS as usize - 1024
                ),
            );
        }
        // Deadlines are `Instant + duration`: keep every duration far from overflow.
        const DAY_MS: u64 = 86_400_000;
        let durations: [(&'static str, u64); 11] = [
            ("default_call_timeout_ms", self.default_call_timeout_ms),
            ("max_call_timeout_ms", self.max_call_timeout_ms),
            ("stream_open_timeout_ms", self.stream_open_timeout_ms),
            ("heartbeat_interval_ms", self.heartbeat_interval_ms),
            ("heartbeat_timeout_ms", self.heartbeat_timeout_ms),
            ("hello_timeout_ms", self.hello_timeout_ms),
            ("default_ack_timeout_ms", self.default_ack_timeout_ms),
            ("max_ack_timeout_ms", self.max_ack_timeout_ms),
            ("recent_target_ttl_ms", self.recent_target_ttl_ms),
            ("shutdown_grace_ms", self.shutdown_grace_ms),
            ("resume_grace_ms", self.resume_grace_ms),
        ];
        for (key, v) in durations {
            if v > DAY_MS {
                return bad(key, format!("{v} ms is longer than a day ({DAY_MS} ms)"));
            }
        }
        if self.heartbeat_timeout_ms <= self.heartbeat_interval_ms {
            return bad(
                "heartbeat_timeout_ms",
                format!(
                    "must be longer than heartbeat_interval_ms ({} ms), or live connections \
                     would be dropped between two pings",
                    self.heartbeat_interval_ms
                ),
            );
        }
        if self.default_ack_timeout_ms > self.max_ack_timeout_ms {
            return bad(
                "default_ack_timeout_ms",
                "must not exceed max_ack_timeout_ms".into(),
            );
        }
        if self.default_call_timeout_ms > self.max_call_timeout_ms {
            return bad(
                "default_call_timeout_ms",
                "must not exceed max_call_timeout_ms".into(),
            );
        }
        if self.resume_grace_ms > 0 && self.resume_buffer_bytes < self.max_frame_bytes {
            return bad(
                "resume_buffer_bytes",
                format!(
                    "must be at least max_frame_bytes ({}) so one full frame can be kept for a \
                     resume (or set resume_grace_ms = 0 to turn resume off)",
                    self.max_frame_bytes
                ),
            );
        }
        if !(MIN_WS_READ_BUFFER..=MAX_WS_READ_BUFFER).contains(&self.ws_read_buffer_bytes) {
            return bad(
                "ws_read_buffer_bytes",
                format!(
                    "is {}; it must be between {MIN_WS_READ_BUFFER} and {MAX_WS_READ_BUFFER} \
                     bytes (one buffer per worker thread; 16384 suits almost every load)",
                    self.ws_read_buffer_bytes
                ),
            );
        }
        if self.outbound_queue_bytes < self.max_frame_bytes {
            return bad(
                "outbound_queue_bytes",
                format!(
                    "must be at least max_frame_bytes ({}) so one full frame fits",
                    self.max_frame_bytes
                ),
            );
        }
        if self.auth.jwt_secret.is_some() && self.auth.jwt_public_key.is_some() {
            return bad(
                "auth",
                "set either jwt_secret or jwt_public_key, not both".into(),
            );
        }
        if !self.listen.ip().is_loopback() && !self.auth.enabled() && !self.insecure {
            return Err(ConfigError::InsecureListen(self.listen));
        }
        Ok(())
    }

    pub(crate) fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }
    pub(crate) fn heartbeat_timeout(&self) -> Duration {
        Duration::from_millis(self.heartbeat_timeout_ms)
    }
    pub(crate) fn hello_timeout(&self) -> Duration {
        Duration::from_millis(self.hello_timeout_ms)
    }
    pub(crate) fn resume_grace(&self) -> Duration {
        Duration::from_millis(self.resume_grace_ms)
    }
    pub(crate) fn stream_open_timeout(&self) -> Duration {
        Duration::from_millis(self.stream_open_timeout_ms)
    }
    /// The hard cap handed to the WebSocket layer: frames between `max_frame_bytes` and this
    /// get an error and the connection carries on; beyond it the connection is closed.
    pub(crate) fn hard_frame_cap(&self) -> usize {
        self.max_frame_bytes.saturating_mul(2).max(64 << 10)
    }
}

fn toml_from_str(text: &str) -> Result<HubConfig, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Toml(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        HubConfig::default().validate().expect("defaults validate");
    }

    #[test]
    fn example_file_is_valid_and_matches_the_defaults() {
        let text = include_str!("../../../peermesh.example.toml");
        let parsed = HubConfig::from_toml(text).unwrap();
        assert_eq!(parsed, HubConfig::default());
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = HubConfig::from_toml("max_clientz = 3")
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_clientz"), "{e}");
    }

    #[test]
    fn toml_overrides() {
        let c = HubConfig::from_toml(
            "listen = \"127.0.0.1:9000\"\nmax_clients = 3\nduplicate_id = \"replace\"\n\
             [auth]\njwt_secret = \"s\"\n",
        )
        .unwrap();
        assert_eq!(c.max_clients, 3);
        assert_eq!(c.duplicate_id, DuplicateIdPolicy::Replace);
        assert_eq!(c.auth.jwt_secret.as_deref(), Some("s"));
        assert_eq!(c.rate_per_sec, HubConfig::default().rate_per_sec);
    }

    #[test]
    fn refuses_public_listen_without_auth() {
        let c = HubConfig {
            listen: "0.0.0.0:7070".parse().unwrap(),
            ..Default::default()
        };
        assert!(matches!(c.validate(), Err(ConfigError::InsecureListen(_))));
        let c = HubConfig {
            insecure: true,
            ..c
        };
        assert!(c.validate().is_ok());
    }

    #[test]
    fn bad_values_name_the_key() {
        let c = HubConfig {
            rate_per_sec: 0,
            ..Default::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("rate_per_sec"));
        let c = HubConfig {
            max_ack_timeout_ms: u64::MAX,
            ..Default::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("max_ack_timeout_ms"));
        let c = HubConfig {
            heartbeat_timeout_ms: 1000,
            ..Default::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("heartbeat_timeout_ms"));
        for v in [0, 255, (1 << 20) + 1] {
            let c = HubConfig {
                ws_read_buffer_bytes: v,
                ..Default::default()
            };
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("ws_read_buffer_bytes"), "{v}: {e}");
        }
        for v in [256, 1 << 20] {
            let c = HubConfig {
                ws_read_buffer_bytes: v,
                ..Default::default()
            };
            assert!(c.validate().is_ok(), "{v}");
        }
    }
}
