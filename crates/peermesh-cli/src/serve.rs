//! `peermesh serve`: run a hub.
//!
//! Configuration precedence: flag > `PEERMESH_*` environment variable > `--config` TOML file >
//! built-in default. The first stdout line is a JSON object naming the bound address, so a
//! script can start the hub on port 0 and read where it listens.

use std::path::PathBuf;

use anyhow::Context as _;
use peermesh_hub::{DuplicateIdPolicy, Hub, HubConfig};

/// The long help of `peermesh serve`.
pub(crate) const LONG_ABOUT: &str =
    "Run a hub. Clients connect over WebSocket at ws://ADDR/ws (add ?enc=msgpack \
    for MessagePack); the status page is at http://ADDR/ and Prometheus metrics at \
    http://ADDR/metrics. The first stdout line is {\"type\":\"listening\",\"addr\":…,\"ws\":…} (and \"node\" in a \
    cluster); \
    logs go to stderr (RUST_LOG=peermesh=debug for more). SIGINT/SIGTERM close every \
    connection with \"server shutting down\" and exit 0.\n\n\
    With --cluster nats://HOST:PORT several hubs act as one: ids are unique across them, and \
    direct messages, acknowledgements and rooms reach clients on any hub (see docs/cluster.md).\n\n\
    Every option can also come from a PEERMESH_* environment variable or a TOML file \
    (--config); a flag beats the environment, which beats the file.";

/// Arguments of `peermesh serve`.
#[derive(clap::Args, Debug)]
pub(crate) struct ServeArgs {
    /// TOML configuration file; every key is shown with its default in peermesh.example.toml.
    #[arg(long, env = "PEERMESH_CONFIG")]
    config: Option<PathBuf>,
    /// Worker threads of the hub's runtime [default: one per core]. Fewer than cores helps
    /// when several hubs (or a hub and its broker) share a small machine; 1 runs the whole hub
    /// on one thread (no worker pool to wake), the cheapest for a hub sharing two cores.
    #[arg(long, env = "PEERMESH_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub(crate) threads: Option<u16>,
    /// Address to listen on [default: 127.0.0.1:7070].
    #[arg(long, env = "PEERMESH_LISTEN")]
    listen: Option<std::net::SocketAddr>,
    /// Allow a non-loopback listen address without authentication.
    #[arg(long, env = "PEERMESH_INSECURE")]
    insecure: bool,
    /// Take the client address from X-Forwarded-For / Forwarded (only behind your own proxy).
    #[arg(long, env = "PEERMESH_TRUST_PROXY")]
    trust_proxy: bool,
    /// What a hello with an already connected id does: `reject` (id_taken) or `replace`.
    #[arg(long, env = "PEERMESH_DUPLICATE_ID")]
    duplicate_id: Option<DuplicateIdPolicy>,
    /// Client protocol versions accepted (semver requirement) [default: ^1.0].
    #[arg(long, env = "PEERMESH_SUPPORTED_VERSIONS")]
    supported_versions: Option<String>,
    /// Largest inbound frame in bytes [default: 1048576].
    #[arg(long, env = "PEERMESH_MAX_FRAME_BYTES")]
    max_frame_bytes: Option<usize>,
    /// Most connected clients [default: 100000].
    #[arg(long, env = "PEERMESH_MAX_CLIENTS")]
    max_clients: Option<usize>,
    /// Most rooms one client may be in [default: 256].
    #[arg(long, env = "PEERMESH_MAX_ROOMS_PER_CLIENT")]
    max_rooms_per_client: Option<usize>,
    /// Outbound queue per connection in frames [default: 4096].
    #[arg(long, env = "PEERMESH_OUTBOUND_QUEUE_FRAMES")]
    outbound_queue_frames: Option<usize>,
    /// Outbound queue per connection in bytes; overflow closes with slow_consumer [default: 8388608].
    #[arg(long, env = "PEERMESH_OUTBOUND_QUEUE_BYTES")]
    outbound_queue_bytes: Option<usize>,
    /// Sustained inbound frames per second per connection [default: 5000].
    #[arg(long, env = "PEERMESH_RATE_PER_SEC")]
    rate_per_sec: Option<u32>,
    /// Inbound burst per connection in frames [default: 10000].
    #[arg(long, env = "PEERMESH_RATE_BURST")]
    rate_burst: Option<u32>,
    /// Interval of WebSocket pings in ms [default: 5000].
    #[arg(long, env = "PEERMESH_HEARTBEAT_INTERVAL_MS")]
    heartbeat_interval_ms: Option<u64>,
    /// Silence after which a connection is dead, in ms [default: 20000].
    #[arg(long, env = "PEERMESH_HEARTBEAT_TIMEOUT_MS")]
    heartbeat_timeout_ms: Option<u64>,
    /// Acknowledgement timeout when an emit names none, in ms [default: 5000].
    #[arg(long, env = "PEERMESH_DEFAULT_ACK_TIMEOUT_MS")]
    default_ack_timeout_ms: Option<u64>,
    /// Most pending acknowledgements per connection [default: 1024].
    #[arg(long, env = "PEERMESH_MAX_PENDING_ACKS")]
    max_pending_acks: Option<usize>,
    /// Most bytes read from a socket per system call, into a per-thread buffer [default: 16384].
    #[arg(long, env = "PEERMESH_WS_READ_BUFFER_BYTES")]
    ws_read_buffer_bytes: Option<usize>,
    /// Framed bytes a connection queues before writing them out [default: 16384].
    #[arg(long, env = "PEERMESH_WS_WRITE_BUFFER_BYTES")]
    ws_write_buffer_bytes: Option<usize>,
    /// HS256 shared secret: clients must present a JWT whose `sub` is their id.
    #[arg(long, env = "PEERMESH_AUTH_JWT_SECRET", hide_env_values = true)]
    auth_jwt_secret: Option<String>,
    /// PEM file with an RSA or Ed25519 public key: clients must present an RS256/EdDSA JWT.
    #[arg(long, env = "PEERMESH_AUTH_JWT_PUBLIC_KEY")]
    auth_jwt_public_key: Option<PathBuf>,
    /// Require this `aud` claim in tokens (not checked when unset).
    #[arg(long, env = "PEERMESH_AUTH_JWT_AUDIENCE")]
    auth_jwt_audience: Option<String>,
    /// Require this `iss` claim in tokens (not checked when unset).
    #[arg(long, env = "PEERMESH_AUTH_JWT_ISSUER")]
    auth_jwt_issuer: Option<String>,
    /// Join a cluster of hubs through this NATS server (nats://HOST:PORT, started with -js):
    /// every hub then serves any client, with ids unique across the cluster.
    #[arg(long, env = "PEERMESH_CLUSTER", value_name = "NATS_URL")]
    cluster: Option<String>,
    /// This hub's name in the cluster, unique among live hubs [default: HOSTNAME-PORT].
    #[arg(long, env = "PEERMESH_NODE_NAME", requires = "cluster")]
    node_name: Option<String>,
    /// Keep trying to reach the cluster's NATS server this long at start (e.g. 30s) instead of
    /// failing at once.
    #[arg(long, env = "PEERMESH_CLUSTER_WAIT", requires = "cluster", value_parser = crate::bench::parse_duration)]
    cluster_wait: Option<std::time::Duration>,
}

impl ServeArgs {
    /// The effective configuration: defaults, then the file, then env/flags.
    fn config(&self) -> anyhow::Result<HubConfig> {
        let mut c = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?;
                HubConfig::from_toml(&text).with_context(|| format!("in {}", path.display()))?
            }
            None => HubConfig::default(),
        };
        macro_rules! set {
            ($($f:ident),*) => {$( if let Some(v) = &self.$f { c.$f = v.clone(); } )*};
        }
        set!(
            listen,
            duplicate_id,
            supported_versions,
            max_frame_bytes,
            max_clients,
            max_rooms_per_client,
            outbound_queue_frames,
            outbound_queue_bytes,
            rate_per_sec,
            rate_burst,
            heartbeat_interval_ms,
            heartbeat_timeout_ms,
            default_ack_timeout_ms,
            max_pending_acks,
            ws_read_buffer_bytes,
            ws_write_buffer_bytes
        );
        c.insecure |= self.insecure;
        c.trust_proxy |= self.trust_proxy;
        if let Some(s) = &self.auth_jwt_secret {
            c.auth.jwt_secret = Some(s.clone());
        }
        if let Some(p) = &self.auth_jwt_public_key {
            c.auth.jwt_public_key = Some(p.clone());
        }
        if let Some(a) = &self.auth_jwt_audience {
            c.auth.jwt_audience = Some(a.clone());
        }
        if let Some(i) = &self.auth_jwt_issuer {
            c.auth.jwt_issuer = Some(i.clone());
        }
        if let Some(u) = &self.cluster {
            c.cluster = Some(u.clone());
        }
        if let Some(n) = &self.node_name {
            c.node_name = Some(n.clone());
        }
        if let Some(w) = self.cluster_wait {
            c.cluster_wait_ms = u64::try_from(w.as_millis()).unwrap_or(u64::MAX);
        }
        Ok(c)
    }
}

pub(crate) async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    let hub = Hub::bind(config).await?;
    let addr = hub.local_addr();
    let handle = hub.handle();
    let mut line = serde_json::json!({"type": "listening", "addr": addr.to_string(), "ws": format!("ws://{addr}/ws")});
    if let Some(node) = handle.node_name() {
        line["node"] = serde_json::Value::from(node);
    }
    println!("{line}");
    let mut server = tokio::spawn(hub.run());
    tokio::select! {
        r = shutdown_signal() => {
            r?;
            tracing::info!("signal received: shutting down");
            handle.shutdown();
            server.await.context("the hub task panicked")??;
        }
        r = &mut server => {
            r.context("the hub task panicked")??;
        }
    }
    Ok(())
}

async fn shutdown_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("cannot listen for SIGINT")?,
        _ = term.recv() => {}
    }
    Ok(())
}
