//! The peermesh hub: a WebSocket server where clients reach each other by id and by room.
//!
//! Clients connect to `/ws`, say `hello`, and then send direct messages (optionally
//! acknowledged), join rooms, emit to rooms and see who comes and goes. The wire protocol is
//! in `peermesh-proto` and `docs/protocol.md`. The hub also serves an HTML status page at `/`,
//! the same figures as JSON at `/status.json`, and Prometheus metrics at `/metrics`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), peermesh_hub::HubError> {
//! let config = peermesh_hub::HubConfig {
//!     listen: "127.0.0.1:0".parse().unwrap(),
//!     ..Default::default()
//! };
//! let hub = peermesh_hub::Hub::bind(config).await?;
//! println!("ws://{}/ws", hub.local_addr());
//! let handle = hub.handle();
//! let server = tokio::spawn(hub.run());
//! // ... later: close every connection with "server shutting down" and stop.
//! handle.shutdown();
//! server.await.expect("hub task")?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! - `config`: [`HubConfig`], every limit with its default; TOML loading and validation.
//! - `http`: the axum routes: WebSocket upgrade, status page, metrics.
//! - [`ws`]: the hub's WebSocket layer: the upgrade, the sans-IO RFC 6455 codec, and a socket
//!   that holds no buffer while it waits.
//! - `conn`: one connection, one task: handshake, then the session loop that reads, handles
//!   and writes; its sans-IO parts (`acks`, `contacts`, `rate`) and `writer` (seq framing).
//! - `mailbox`: a connection's bounded queue of frames and notices.
//! - `router`: the one path every delivery takes (a cluster backplane plugs in here).
//! - `registry`: clients, connections and rooms.
//! - `streams`: byte streams between two clients: each connection's table, the items the two
//!   ends exchange, credit-based flow control.
//! - `services`: services (RPC) and topics: providers, the choice of a provider, topic
//!   subscribers; `services::api` is the Rust API for services the hub provides itself
//!   ([`HubHandle::provide`]), `services::builtin` the optional `time` service.
//! - `cluster`: the backplane that makes several hubs one through NATS (`--cluster`): ids
//!   claimed cluster-wide, direct messages, acks and room emits relayed between hubs.
//! - `auth`: JWT verification.
//! - `metrics`: counters and rates.
#![deny(missing_docs)]

mod auth;
mod cluster;
mod config;
mod conn;
mod error;
mod http;
mod mailbox;
mod metrics;
mod registry;
mod router;
mod services;
mod sessions;
mod streams;
pub mod ws;

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

pub use config::{AuthConfig, DuplicateIdPolicy, HubConfig};
pub use error::{ConfigError, HubError};
pub use metrics::{Metrics, Rates};
pub use services::api::{Invocation, ServiceApiError, ServiceError, ServiceHandle, ServiceSpec};
pub use services::ServiceStats;
pub use sessions::SessionStats;

use registry::Registry;

/// Entry points for the fuzz targets (`fuzz/`); not a stable API.
#[doc(hidden)]
pub mod fuzzing {
    /// Fuzz target `cluster_message`: byte 0's low bit chooses the hub-to-hub envelope (even)
    /// or a session handoff answer (odd) for the rest. Never panics on bad input; what decodes
    /// must survive encode → decode (panics if not). Returns whether it decoded.
    pub fn check_cluster_message(data: &[u8]) -> bool {
        crate::cluster::check_message(data)
    }

    /// Seed inputs: one of each message kind.
    pub fn cluster_seeds() -> Vec<Vec<u8>> {
        crate::cluster::seeds()
    }

    /// Fuzz target `ws_frame`: byte 0 is the chunk size the stream is fed in, byte 1 × 64 the
    /// message limit, the rest the byte stream a client sends. The decoder never claims more
    /// bytes than it was given and returns only UTF-8 text, and every message it returns
    /// decodes to the same message again once encoded as a client frame (panics if not).
    /// Returns how many messages decoded before the stream ended or failed.
    pub fn check_ws_frame(data: &[u8]) -> usize {
        use crate::ws::codec::{client_frame, Decoder, Message};
        let [chunk, limit, rest @ ..] = data else {
            return 0;
        };
        let chunk = usize::from(*chunk).max(1);
        let mut d = Decoder::new(usize::from(*limit) * 64);
        let mut pending: Vec<u8> = Vec::new();
        let mut decoded = 0;
        for piece in rest.chunks(chunk) {
            pending.extend_from_slice(piece);
            loop {
                let Ok(r) = d.decode(&pending) else {
                    return decoded;
                };
                assert!(
                    r.consumed <= pending.len(),
                    "claimed more than it was given"
                );
                if r.consumed == 0 {
                    break;
                }
                pending.drain(..r.consumed);
                let Some(m) = r.message else {
                    continue;
                };
                decoded += 1;
                let (op, payload) = match &m {
                    Message::Text(t) => {
                        assert!(std::str::from_utf8(t).is_ok(), "text must be UTF-8");
                        (0x1, t.to_vec())
                    }
                    Message::Binary(b) => (0x2, b.to_vec()),
                    Message::Ping(b) => (0x9, b.to_vec()),
                    Message::Pong(b) => (0xA, b.to_vec()),
                    Message::Close(None) => (0x8, Vec::new()),
                    Message::Close(Some(c)) => {
                        let mut p = c.code.to_be_bytes().to_vec();
                        p.extend_from_slice(c.reason.as_bytes());
                        (0x8, p)
                    }
                };
                let frame = client_frame(true, op, [9, 8, 7, 6], &payload);
                let again = Decoder::new(usize::MAX >> 1)
                    .decode(&frame)
                    .expect("a message the decoder returned must decode again");
                assert_eq!(again.consumed, frame.len());
                assert_eq!(again.message.as_ref(), Some(&m));
            }
        }
        decoded
    }
}
use router::Router;

/// State shared by every task of one hub.
#[derive(Debug)]
pub(crate) struct HubInner {
    pub(crate) config: HubConfig,
    pub(crate) router: Router,
    pub(crate) auth: Option<auth::Authenticator>,
    pub(crate) version_req: semver::VersionReq,
    pub(crate) next_conn: AtomicU64,
    pub(crate) shutdown: CancellationToken,
    /// Stops the cluster backplane: after the shutdown has drained the sessions.
    pub(crate) cluster_stop: CancellationToken,
    pub(crate) tasks: TaskTracker,
    pub(crate) started: Instant,
}

impl HubInner {
    pub(crate) fn registry(&self) -> &Registry {
        &self.router.registry
    }
}

/// A bound, not yet running hub.
#[derive(Debug)]
pub struct Hub {
    inner: Arc<HubInner>,
    listener: TcpListener,
    local_addr: SocketAddr,
    /// The built-in `time` service, when configured; withdrawn when the hub stops.
    builtin: Option<ServiceHandle>,
}

/// A cheap, cloneable handle to a running hub.
#[derive(Debug, Clone)]
pub struct HubHandle {
    inner: Arc<HubInner>,
}

impl Hub {
    /// Validates the configuration and binds the listener.
    pub async fn bind(config: HubConfig) -> Result<Hub, HubError> {
        config.validate()?;
        let auth = auth::Authenticator::from_config(&config.auth)?;
        let version_req = semver::VersionReq::parse(&config.supported_versions).map_err(|e| {
            ConfigError::Invalid {
                key: "supported_versions",
                reason: e.to_string(),
            }
        })?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| HubError::Bind {
                addr: config.listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(HubError::Serve)?;
        let backplane = match &config.cluster {
            Some(url) => {
                let node = config
                    .node_name
                    .clone()
                    .unwrap_or_else(|| default_node_name(local_addr));
                let mut cc = peermesh_cluster::ClusterConfig::new(url.clone(), node);
                if config.cluster_wait_ms > 0 {
                    cc.wait = Some(Duration::from_millis(config.cluster_wait_ms));
                }
                let cluster = peermesh_cluster::Cluster::join(cc).await?;
                let ttl = Duration::from_millis(config.max_ack_timeout_ms.saturating_add(1_000));
                Some(Arc::new(cluster::Backplane::new(
                    cluster,
                    ttl,
                    config.max_calls_per_provider,
                    config.max_sessions_per_client,
                )))
            }
            None => None,
        };
        let inner = Arc::new(HubInner {
            router: Router {
                cluster: backplane.clone(),
                registry: Arc::new(Registry::default()),
                metrics: Arc::new(metrics::Metrics::default()),
                services: Arc::new(services::Services::default()),
                sessions: Arc::new(sessions::Sessions::new(
                    config.max_session_members,
                    config.max_session_objects,
                    config.max_object_bytes,
                    backplane.clone(),
                )),
            },
            auth,
            version_req,
            next_conn: AtomicU64::new(1),
            shutdown: CancellationToken::new(),
            cluster_stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
            started: Instant::now(),
            config,
        });
        if let Some(bp) = &backplane {
            bp.start(inner.router.clone(), inner.cluster_stop.clone())
                .await?;
            info!(node = bp.node(), "hub joined the cluster");
        }
        let builtin = if inner.config.builtin_time_service {
            let spec = services::builtin::time_service().map_err(|e| ConfigError::Invalid {
                key: "builtin_time_service",
                reason: e.to_string(),
            })?;
            let handle =
                ServiceHandle::provide(inner.clone(), spec).map_err(|e| ConfigError::Invalid {
                    key: "builtin_time_service",
                    reason: e.to_string(),
                })?;
            Some(handle)
        } else {
            None
        };
        Ok(Hub {
            inner,
            listener,
            local_addr,
            builtin,
        })
    }

    /// The address the hub listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Provides a service from the hub process; see [`HubHandle::provide`].
    pub fn provide(&self, spec: ServiceSpec) -> Result<ServiceHandle, ServiceApiError> {
        ServiceHandle::provide(self.inner.clone(), spec)
    }

    /// A handle to shut the hub down and read its figures.
    pub fn handle(&self) -> HubHandle {
        HubHandle {
            inner: self.inner.clone(),
        }
    }

    /// Serves until [`HubHandle::shutdown`], then closes every connection with the reason
    /// "server shutting down" and waits (up to `shutdown_grace_ms`) for them to finish.
    pub async fn run(self) -> Result<(), HubError> {
        let builtin = self.builtin;
        let inner = self.inner;
        info!(addr = %self.local_addr, "hub listening");
        let sampler = {
            let inner = inner.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                let mut last = Instant::now();
                loop {
                    tokio::select! {
                        _ = inner.shutdown.cancelled() => break,
                        // A service or topic came or went: tell the cluster now (sends
                        // nothing when the offer is the same).
                        _ = inner.router.services.offer_changed.notified(),
                            if inner.router.cluster.is_some() =>
                        {
                            if let Some(bp) = &inner.router.cluster {
                                let services = &inner.router.services;
                                bp.cluster()
                                    .set_offer(services.offered(), services.topics_offered())
                                    .await;
                            }
                        }
                        _ = tick.tick() => {
                            let now = Instant::now();
                            inner.router.metrics.sample(now - last);
                            last = now;
                            if let Some(bp) = &inner.router.cluster {
                                bp.cluster().set_clients(inner.registry().client_count() as u64);
                                let services = &inner.router.services;
                                bp.cluster()
                                    .set_offer(services.offered(), services.topics_offered())
                                    .await;
                            }
                        }
                    }
                }
            })
        };
        let app = http::routes(inner.clone());
        let token = inner.shutdown.clone();
        // Frames are small and latency matters: no Nagle delay on any accepted socket.
        let listener = axum::serve::ListenerExt::tap_io(self.listener, |tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
        });
        let served = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move { token.cancelled().await })
        .await;
        let conns = inner.registry().all_conns();
        // In a cluster with other live hubs, resumable sessions are drained, not ended: their
        // sockets close with a hint to reconnect to another hub, and the sessions wait here
        // (until `shutdown_grace_ms`) to move there with nothing lost.
        let drain = inner
            .router
            .cluster
            .as_ref()
            .is_some_and(|bp| bp.cluster().members().len() > 1);
        info!(
            clients = conns.len(),
            drain, "shutting down: closing every connection"
        );
        let close_all = |conns: &[Arc<registry::ConnShared>]| {
            for c in conns {
                c.close(
                    peermesh_proto::ErrorCode::ShuttingDown,
                    "server shutting down",
                );
            }
        };
        for c in &conns {
            if !(drain && c.resumable && c.control(registry::Control::Drain)) {
                close_all(std::slice::from_ref(c));
            }
        }
        inner.tasks.close();
        let grace = Duration::from_millis(inner.config.shutdown_grace_ms);
        if tokio::time::timeout(grace, inner.tasks.wait())
            .await
            .is_err()
        {
            // Sessions no client took to another hub end now.
            close_all(&inner.registry().all_conns());
            if tokio::time::timeout(Duration::from_secs(1), inner.tasks.wait())
                .await
                .is_err()
            {
                tracing::warn!("some connections did not finish within the shutdown grace time");
            }
        }
        sampler.abort();
        if let Some(bp) = &inner.router.cluster {
            bp.leave().await;
        }
        inner.cluster_stop.cancel();
        drop(builtin);
        served.map_err(HubError::Serve)
    }
}

/// A node name from the host name and the port: `host-7070`.
fn default_node_name(addr: SocketAddr) -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let mut name: String = host
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(50)
        .collect();
    if name.is_empty() {
        name.push_str("hub");
    }
    format!("{name}-{}", addr.port())
}

impl HubHandle {
    /// Starts a graceful shutdown; [`Hub::run`] returns when it is done.
    pub fn shutdown(&self) {
        self.inner.shutdown.cancel();
    }

    /// Number of connected clients.
    pub fn client_count(&self) -> usize {
        self.inner.registry().client_count()
    }

    /// Number of rooms.
    pub fn room_count(&self) -> usize {
        self.inner.registry().room_count()
    }

    /// Stream ends held by connections now (two per open stream; 0 when no stream is
    /// opening, offered or open).
    pub fn stream_ends(&self) -> i64 {
        self.inner.router.metrics.stream_ends()
    }

    /// The hub's counters.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.router.metrics
    }

    /// Provides a service from the hub process itself; see [`ServiceSpec`]. Clients call it
    /// like any other service; for the methods it has, the hub answers before any client
    /// provider of the same service. Fails when the hub already provides a service of that
    /// name.
    pub fn provide(&self, spec: ServiceSpec) -> Result<ServiceHandle, ServiceApiError> {
        ServiceHandle::provide(self.inner.clone(), spec)
    }

    /// This hub's name in its cluster, if it is in one.
    pub fn node_name(&self) -> Option<&str> {
        self.inner.router.cluster.as_ref().map(|b| b.node())
    }

    /// Sessions, their members and objects now.
    pub fn session_stats(&self) -> SessionStats {
        self.inner.router.sessions.stats()
    }

    /// Services, providers, topics, subscriptions and calls in flight now (all 0 on a hub
    /// whose clients left and which provides nothing itself).
    pub fn service_stats(&self) -> ServiceStats {
        self.inner.router.services.stats()
    }
}
