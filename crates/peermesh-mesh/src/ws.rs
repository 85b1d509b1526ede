//! The tokio shell that runs the sans-IO mesh [`Node`] over WebSocket, as peer-relay does.
//!
//! ```text
//!  MeshHandle ──── commands (bounded) ──►┌─────────── mesh actor ───────────┐── events (bounded,
//!                                        │ owns the Node; biased select:    │   dropped when full)
//!  acceptor ────── upgraded sockets ────►│ commands, link reports, accepts, │──► application
//!                                        │ sleep_until(poll_timeout)        │
//!  link tasks ──── reports (bounded) ───►└──────────────────────────────────┘
//!      ▲                                      │ frames: try_send (bounded per link, dropped
//!      └────────── per-link outbox ◄──────────┘ when full); close: CancellationToken
//! ```
//!
//! One task per link reads and writes its WebSocket, pings it every `ping_interval` (a pong
//! counts as activity for the idle timeout) and reports frames to the actor. The actor never
//! waits on a link or on the application: a full link outbox drops the frame (counted in
//! [`MeshHandle::dropped_frames`]), a full event channel drops the event (counted in
//! [`MeshHandle::dropped_events`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message as WsMessage, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, trace, warn};

use crate::id::NodeId;
use crate::manager::ConfigError;
use crate::node::{LinkId, Node, NodeConfig, NodeEvent, NodeStats, Output};
use crate::wire::peer_relay::RawJson;

/// Capacity of the actor's command inbox.
const COMMAND_CAPACITY: usize = 256;
/// Capacity of the event channel to the application.
const EVENT_CAPACITY: usize = 4096;
/// Capacity of the channel of link reports.
const REPORT_CAPACITY: usize = 4096;
/// Frames queued per link before further ones are dropped.
const LINK_QUEUE: usize = 512;
/// Time allowed to open a WebSocket (TCP and upgrade).
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for an inbound upgrade.
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(10);
/// Inbound upgrades in progress at once; more connections wait in the kernel's backlog.
const MAX_UPGRADING: usize = 64;
/// Pause after a failed `accept` (for example out of file descriptors).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The shell's own options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsOptions {
    /// Where to accept WebSocket connections; none when `None`. Defaults to `None`.
    pub listen: Option<SocketAddr>,
    /// The URL announced to peers; defaults to `ws://` + the bound address.
    pub advertise: Option<String>,
    /// URLs to bootstrap from.
    pub bootstrap: Vec<String>,
    /// Seed of the node's id and random choices; a random one when `None`.
    pub seed: Option<u64>,
    /// Interval of WebSocket pings on every link. Defaults to 15 s.
    pub ping_interval: Duration,
}

impl Default for WsOptions {
    fn default() -> Self {
        Self {
            listen: None,
            advertise: None,
            bootstrap: Vec::new(),
            seed: None,
            ping_interval: Duration::from_secs(15),
        }
    }
}

/// Why the mesh shell could not start or a request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MeshError {
    /// The node's options are invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The node has been destroyed.
    #[error("the mesh node has shut down")]
    Closed,
    /// A datagram is longer than peer-relay sockets accept.
    #[error("a datagram of {len} bytes is over the limit of {max}")]
    DatagramTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

enum Request {
    Send(NodeId, RawJson),
    Connect(NodeId),
    Disconnect(NodeId),
    Peers(oneshot::Sender<Vec<NodeId>>),
    Stats(oneshot::Sender<NodeStats>),
    Destroy(oneshot::Sender<()>),
}

enum Report {
    Up(LinkId),
    Frame(LinkId, Bytes),
    Alive(LinkId),
    Closed(LinkId),
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

struct LinkHandle {
    outbox: mpsc::Sender<Bytes>,
    cancel: CancellationToken,
}

/// A cheap, cloneable handle to a running mesh node.
#[derive(Clone)]
pub struct MeshHandle {
    id: NodeId,
    url: Option<String>,
    local_addr: Option<SocketAddr>,
    tx: mpsc::Sender<Request>,
    dropped_events: Arc<AtomicU64>,
    dropped_frames: Arc<AtomicU64>,
}

impl MeshHandle {
    /// The node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The URL peers are told to connect to (`None` without a listener).
    pub fn url(&self) -> Option<&str> {
        self.url.as_deref()
    }

    /// The bound listener address.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// Events the application did not read in time and that were dropped.
    pub fn dropped_events(&self) -> u64 {
        self.dropped_events.load(Ordering::Relaxed)
    }

    /// Frames dropped because a link's outbox was full (a slow peer).
    pub fn dropped_frames(&self) -> u64 {
        self.dropped_frames.load(Ordering::Relaxed)
    }

    async fn request(&self, r: Request) -> Result<(), MeshError> {
        self.tx.send(r).await.map_err(|_| MeshError::Closed)
    }

    /// [`Node::send`]: sends `data` to `to` through the mesh (no delivery guarantee).
    pub async fn send(&self, to: NodeId, data: RawJson) -> Result<(), MeshError> {
        self.request(Request::Send(to, data)).await
    }

    /// [`Node::connect`]: forms a direct link through a relayed handshake.
    pub async fn connect(&self, id: NodeId) -> Result<(), MeshError> {
        self.request(Request::Connect(id)).await
    }

    /// [`Node::disconnect`].
    pub async fn disconnect(&self, id: NodeId) -> Result<(), MeshError> {
        self.request(Request::Disconnect(id)).await
    }

    /// The ids of the directly linked peers, sorted.
    pub async fn peers(&self) -> Result<Vec<NodeId>, MeshError> {
        let (tx, rx) = oneshot::channel();
        self.request(Request::Peers(tx)).await?;
        rx.await.map_err(|_| MeshError::Closed)
    }

    /// The node's counters.
    pub async fn stats(&self) -> Result<NodeStats, MeshError> {
        let (tx, rx) = oneshot::channel();
        self.request(Request::Stats(tx)).await?;
        rx.await.map_err(|_| MeshError::Closed)
    }

    /// [`Node::destroy`]: closes every link and stops; returns once the actor ended.
    pub async fn destroy(&self) -> Result<(), MeshError> {
        let (tx, rx) = oneshot::channel();
        self.request(Request::Destroy(tx)).await?;
        let _ = rx.await;
        Ok(())
    }
}

fn ws_config(max_frame: usize) -> WebSocketConfig {
    // Messages up to four times the node's limit reach the node, which drops and counts the
    // ones over its limit; beyond that the WebSocket library refuses them and the link closes.
    let cap = max_frame.saturating_mul(4);
    WebSocketConfig::default()
        .max_message_size(Some(cap))
        .max_frame_size(Some(cap))
}

/// Starts a mesh node: binds the listener (if any), dials the bootstrap URLs, and returns its
/// handle and its event stream.
pub async fn spawn(
    cfg: NodeConfig,
    opts: WsOptions,
) -> Result<(MeshHandle, mpsc::Receiver<NodeEvent>), MeshError> {
    cfg.manager_config()?;
    let listener = match opts.listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| MeshError::Bind { addr, source })?,
        ),
        None => None,
    };
    let local_addr = listener.as_ref().and_then(|l| l.local_addr().ok());
    let url = opts
        .advertise
        .clone()
        .or_else(|| local_addr.map(|a| format!("ws://{a}")));
    let seed = opts.seed.unwrap_or_else(rand::random);
    let now = Instant::now();
    let max_frame = cfg.max_frame;
    let mut node = Node::new(cfg, url.clone(), now, seed)?;
    for b in &opts.bootstrap {
        node.bootstrap(b, now);
    }
    let (tx, rx) = mpsc::channel(COMMAND_CAPACITY);
    let (events_tx, events_rx) = mpsc::channel(EVENT_CAPACITY);
    let (reports_tx, reports_rx) = mpsc::channel(REPORT_CAPACITY);
    let (accept_tx, accept_rx) = mpsc::channel(16);
    let shutdown = CancellationToken::new();
    let handle = MeshHandle {
        id: node.id(),
        url,
        local_addr,
        tx,
        dropped_events: Arc::new(AtomicU64::new(0)),
        dropped_frames: Arc::new(AtomicU64::new(0)),
    };
    if let Some(listener) = listener {
        tokio::spawn(acceptor(listener, accept_tx, max_frame, shutdown.clone()));
    }
    let actor = Actor {
        node,
        links: HashMap::new(),
        requests: rx,
        reports_tx,
        reports: reports_rx,
        accepts: accept_rx,
        events: events_tx,
        dropped_events: handle.dropped_events.clone(),
        dropped_frames: handle.dropped_frames.clone(),
        ping_interval: opts.ping_interval,
        max_frame,
        shutdown,
    };
    tokio::spawn(actor.run());
    Ok((handle, events_rx))
}

async fn acceptor(
    listener: TcpListener,
    tx: mpsc::Sender<WebSocketStream<MaybeTlsStream<TcpStream>>>,
    max_frame: usize,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_UPGRADING));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let tx = tx.clone();
        tokio::spawn(async move {
            let upgrade = tokio_tungstenite::accept_async_with_config(
                MaybeTlsStream::Plain(stream),
                Some(ws_config(max_frame)),
            );
            match tokio::time::timeout(UPGRADE_TIMEOUT, upgrade).await {
                Ok(Ok(ws)) => {
                    let _ = tx.send(ws).await;
                }
                Ok(Err(e)) => debug!(%peer, error = %e, "WebSocket upgrade failed"),
                Err(_) => debug!(%peer, "WebSocket upgrade timed out"),
            }
            drop(permit);
        });
    }
}

struct Actor {
    node: Node,
    links: HashMap<LinkId, LinkHandle>,
    requests: mpsc::Receiver<Request>,
    reports_tx: mpsc::Sender<Report>,
    reports: mpsc::Receiver<Report>,
    accepts: mpsc::Receiver<Ws>,
    events: mpsc::Sender<NodeEvent>,
    dropped_events: Arc<AtomicU64>,
    dropped_frames: Arc<AtomicU64>,
    ping_interval: Duration,
    max_frame: usize,
    shutdown: CancellationToken,
}

impl Actor {
    async fn run(mut self) {
        let mut destroyed: Option<oneshot::Sender<()>> = None;
        self.flush();
        loop {
            let deadline = self
                .node
                .poll_timeout()
                .map(tokio::time::Instant::from_std)
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                biased;
                r = self.requests.recv() => match r {
                    Some(r) => {
                        if let Some(done) = self.on_request(r) {
                            destroyed = Some(done);
                            break;
                        }
                    }
                    None => break,
                },
                Some(r) = self.reports.recv() => self.on_report(r),
                Some(ws) = self.accepts.recv() => {
                    let link = self.node.handle_inbound(Instant::now());
                    self.start_link(link, LinkStart::Open(Box::new(ws)));
                }
                _ = tokio::time::sleep_until(deadline) => self.node.handle_timeout(Instant::now()),
            }
            self.flush();
        }
        self.node.destroy(Instant::now());
        self.flush();
        self.shutdown.cancel();
        // Links get a moment to send what is queued and close cleanly.
        for (_, l) in self.links.drain() {
            l.cancel.cancel();
        }
        if let Some(done) = destroyed {
            let _ = done.send(());
        }
    }

    fn on_request(&mut self, r: Request) -> Option<oneshot::Sender<()>> {
        let now = Instant::now();
        match r {
            Request::Send(to, data) => self.node.send(to, data, now),
            Request::Connect(id) => self.node.connect(id, now),
            Request::Disconnect(id) => self.node.disconnect(id, now),
            Request::Peers(tx) => {
                let _ = tx.send(self.node.peers());
            }
            Request::Stats(tx) => {
                let _ = tx.send(self.node.stats().clone());
            }
            Request::Destroy(tx) => return Some(tx),
        }
        None
    }

    fn on_report(&mut self, r: Report) {
        let now = Instant::now();
        match r {
            Report::Up(link) => self.node.handle_link_up(link, now),
            Report::Frame(link, frame) => self.node.handle_frame(link, &frame, now),
            Report::Alive(link) => self.node.handle_link_alive(link, now),
            Report::Closed(link) => {
                self.links.remove(&link);
                self.node.handle_link_closed(link, now);
            }
        }
    }

    /// Carries out the node's outputs and hands its events to the application.
    fn flush(&mut self) {
        while let Some(o) = self.node.poll_output() {
            match o {
                Output::Transmit { link, frame } => {
                    if let Some(l) = self.links.get(&link) {
                        if l.outbox.try_send(frame).is_err() {
                            self.dropped_frames.fetch_add(1, Ordering::Relaxed);
                            trace!(link, "link outbox full: frame dropped");
                        }
                    }
                }
                Output::Dial { link, url } => self.start_link(link, LinkStart::Dial(url)),
                Output::Close { link, reason } => {
                    trace!(link, reason, "closing link");
                    if let Some(l) = self.links.get(&link) {
                        l.cancel.cancel();
                    } else {
                        // Never started: report it closed at once.
                        let _ = self.reports_tx.try_send(Report::Closed(link));
                    }
                }
            }
        }
        while let Some(e) = self.node.poll_event() {
            if self.events.try_send(e).is_err() {
                self.dropped_events.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn start_link(&mut self, link: LinkId, start: LinkStart) {
        let (outbox, inbox) = mpsc::channel(LINK_QUEUE);
        let cancel = self.shutdown.child_token();
        self.links.insert(
            link,
            LinkHandle {
                outbox,
                cancel: cancel.clone(),
            },
        );
        let task = LinkTask {
            link,
            reports: self.reports_tx.clone(),
            inbox,
            cancel,
            ping_interval: self.ping_interval,
            max_frame: self.max_frame,
        };
        tokio::spawn(task.run(start));
    }
}

enum LinkStart {
    Dial(String),
    Open(Box<Ws>),
}

struct LinkTask {
    link: LinkId,
    reports: mpsc::Sender<Report>,
    inbox: mpsc::Receiver<Bytes>,
    cancel: CancellationToken,
    ping_interval: Duration,
    max_frame: usize,
}

impl LinkTask {
    async fn run(mut self, start: LinkStart) {
        let ws = match start {
            LinkStart::Open(ws) => Some(*ws),
            LinkStart::Dial(url) => {
                let dial = tokio_tungstenite::connect_async_with_config(
                    url.as_str(),
                    Some(ws_config(self.max_frame)),
                    true,
                );
                let res = tokio::select! {
                    _ = self.cancel.cancelled() => None,
                    r = tokio::time::timeout(DIAL_TIMEOUT, dial) => Some(r),
                };
                match res {
                    Some(Ok(Ok((ws, _)))) => {
                        if self.reports.send(Report::Up(self.link)).await.is_err() {
                            return;
                        }
                        Some(ws)
                    }
                    Some(Ok(Err(e))) => {
                        debug!(%url, error = %e, "dial failed");
                        None
                    }
                    Some(Err(_)) => {
                        debug!(%url, "dial timed out");
                        None
                    }
                    None => None,
                }
            }
        };
        if let Some(ws) = ws {
            self.pump(ws).await;
        }
        let _ = self.reports.send(Report::Closed(self.link)).await;
    }

    async fn pump(&mut self, ws: Ws) {
        let (mut sink, mut stream) = ws.split();
        let mut ping = tokio::time::interval(self.ping_interval);
        ping.tick().await;
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => {
                    // Send what is already queued, then close.
                    while let Ok(frame) = self.inbox.try_recv() {
                        if let Ok(text) = Utf8Bytes::try_from(frame) {
                            if sink.feed(WsMessage::Text(text)).await.is_err() {
                                break;
                            }
                        }
                    }
                    let _ = tokio::time::timeout(Duration::from_secs(1), async {
                        let _ = sink.flush().await;
                        let _ = sink.close().await;
                    })
                    .await;
                    return;
                }
                frame = self.inbox.recv() => {
                    let Some(frame) = frame else { return };
                    let Ok(text) = Utf8Bytes::try_from(frame) else { continue };
                    if sink.feed(WsMessage::Text(text)).await.is_err() {
                        return;
                    }
                    // Batch what else is queued into the same flush.
                    while let Ok(more) = self.inbox.try_recv() {
                        if let Ok(text) = Utf8Bytes::try_from(more) {
                            if sink.feed(WsMessage::Text(text)).await.is_err() {
                                return;
                            }
                        }
                    }
                    if sink.flush().await.is_err() {
                        return;
                    }
                }
                msg = stream.next() => match msg {
                    Some(Ok(WsMessage::Text(t))) => {
                        let bytes = Bytes::from(t);
                        if self.reports.send(Report::Frame(self.link, bytes)).await.is_err() {
                            return;
                        }
                    }
                    Some(Ok(WsMessage::Binary(b))) => {
                        if self.reports.send(Report::Frame(self.link, b)).await.is_err() {
                            return;
                        }
                    }
                    Some(Ok(WsMessage::Pong(_))) | Some(Ok(WsMessage::Ping(_))) => {
                        let _ = self.reports.try_send(Report::Alive(self.link));
                    }
                    Some(Ok(WsMessage::Close(_))) | None => return,
                    Some(Ok(WsMessage::Frame(_))) => {}
                    Some(Err(e)) => {
                        debug!(link = self.link, error = %e, "link failed");
                        return;
                    }
                },
                _ = ping.tick() => {
                    if sink.send(WsMessage::Ping(Bytes::new())).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}
