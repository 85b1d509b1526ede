//! The tokio shell that runs the sans-IO [`PeerManager`] over TCP with the `p2p-node` framing.
//!
//! ```text
//!  TcpManagerHandle ── commands (bounded) ──►┌──────── TcpManager actor ────────┐
//!                                            │ owns PeerManager; biased select: │── events (bounded,
//!  acceptor task ──── accepted sockets ─────►│ commands, reports, accepts,      │   dropped when full)
//!                                            │ sleep_until(poll_timeout)        │──► application
//!  connection tasks ── reports (bounded) ───►└──────────────────────────────────┘
//!        ▲                                         │ frames: try_send (bounded, dropped when full)
//!        └───────────── per-connection inbox ◄─────┘ close: CancellationToken
//! ```
//!
//! The actor never blocks on anything but its own inputs: frames for a connection go through a
//! bounded queue with `try_send` (a full queue drops the frame and reports a
//! [`ManagerEvent::Log`] warning), closes go through a [`CancellationToken`], and events go to the
//! application with `try_send` too. Messages are never lost to a slow application: the actor
//! reads connection reports only while the event channel has room for what they cause, so a
//! slow application slows the connection tasks, which stop reading their sockets, and TCP
//! flow control slows the peers. Events that timers cause (status, log, ends of answer waits)
//! are dropped when the channel is full, counted by [`TcpManagerHandle::dropped_events`];
//! commands and timers keep running either way.
//!
//! Each connection task owns its `TcpStream` (with `TCP_NODELAY`), decodes what it reads with a
//! [`Decoder`] and reports frames and decode errors to the actor, which hands them to the
//! manager (a decode error of severity [`Severity::Error`] disconnects the peer). A peer is
//! named by its remote address `ip:port`: `p2p-manager` has no handshake, so an inbound peer
//! appears under its ephemeral port.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, trace, warn, Instrument};

use crate::manager::{
    Action, AnswerSpec, ConfigError, HostSpec, ManagerConfig, ManagerEvent, PeerAddr, PeerInfo,
    PeerManager, PeerState, Selection, SendOutcome, Severity,
};
use crate::wire::p2p_node::{encode, Command, CommandError, DecodeEvent, Decoder, DecoderConfig};

/// Capacity of the actor's command inbox.
const COMMAND_CAPACITY: usize = 64;
/// Capacity of the event channel to the application.
const EVENT_CAPACITY: usize = 1024;
/// Free event slots needed before a connection report is handled (one report causes at most
/// a message, an answer, an end of wait and a log line).
const EVENT_ROOM: usize = 8;
/// Capacity of the channel of reports from the connection tasks.
const REPORT_CAPACITY: usize = 1024;
/// Capacity of the channel of accepted sockets.
const ACCEPT_CAPACITY: usize = 16;
/// Frames queued per connection before further ones are dropped.
const CONN_QUEUE: usize = 256;
/// Bytes read from a socket at a time.
const READ_CHUNK: usize = 16 * 1024;
/// Time allowed to write the frames still queued when a connection is closed.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause after a failed `accept` (for example out of file descriptors).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The shell's own options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpOptions {
    /// Where to accept connections; none when `None`. Defaults to `None`.
    pub listen: Option<SocketAddr>,
    /// The frame magic. Defaults to [`DEFAULT_MAGIC`](crate::wire::p2p_node::DEFAULT_MAGIC).
    pub magic: u32,
    /// Largest payload received or sent, in bytes. Defaults to
    /// [`DEFAULT_MAX_PAYLOAD`](crate::wire::p2p_node::DEFAULT_MAX_PAYLOAD) (10 MiB).
    pub max_payload: usize,
    /// Seed of the manager's random peer choice. Defaults to 0.
    pub seed: u64,
}

impl Default for TcpOptions {
    fn default() -> Self {
        Self {
            listen: None,
            magic: crate::wire::p2p_node::DEFAULT_MAGIC,
            max_payload: crate::wire::p2p_node::DEFAULT_MAX_PAYLOAD as usize,
            seed: 0,
        }
    }
}

/// Why a request to the [`TcpManager`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TcpManagerError {
    /// The manager has shut down.
    #[error("the peer manager has shut down")]
    Closed,
    /// The command cannot be framed.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// The payload is longer than [`TcpOptions::max_payload`].
    #[error("a payload of {len} bytes is over the limit of {max}")]
    PayloadTooLarge {
        /// The payload length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// A request to the actor.
enum Request {
    Launch(Vec<HostSpec>),
    AddPool(Vec<HostSpec>),
    AddActive(Vec<HostSpec>),
    DelActive(PeerAddr, String),
    Send {
        selection: Selection,
        command: String,
        payload: Bytes,
        answer: Option<AnswerSpec>,
        reply: oneshot::Sender<SendOutcome>,
    },
    SendTo {
        peer: PeerAddr,
        command: String,
        payload: Bytes,
        reply: oneshot::Sender<bool>,
    },
    SetProperty {
        peer: PeerAddr,
        key: String,
        value: Value,
        reply: oneshot::Sender<bool>,
    },
    SetState {
        peer: PeerAddr,
        state: PeerState,
        reply: oneshot::Sender<bool>,
    },
    Shutdown(oneshot::Sender<()>),
    Peers(oneshot::Sender<Vec<PeerInfo>>),
}

/// A cheap, cloneable handle to a running [`TcpManager`].
#[derive(Debug, Clone)]
pub struct TcpManagerHandle {
    tx: mpsc::Sender<Request>,
    local_addr: Option<SocketAddr>,
    dropped: Arc<AtomicU64>,
    max_payload: usize,
}

impl TcpManagerHandle {
    /// The address it listens on, when [`TcpOptions::listen`] was given.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// Events dropped so far because the application's event receiver was full (or gone).
    pub fn dropped_events(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    async fn request(&self, req: Request) -> Result<(), TcpManagerError> {
        self.tx.send(req).await.map_err(|_| TcpManagerError::Closed)
    }

    fn check(&self, command: &str, payload: &Bytes) -> Result<(), TcpManagerError> {
        Command::new(command)?;
        if payload.len() > self.max_payload {
            return Err(TcpManagerError::PayloadTooLarge {
                len: payload.len(),
                max: self.max_payload,
            });
        }
        Ok(())
    }

    /// [`PeerManager::launch`]: adds the seeds to the pool and starts connecting.
    pub async fn launch(&self, seeds: Vec<HostSpec>) -> Result<(), TcpManagerError> {
        self.request(Request::Launch(seeds)).await
    }

    /// [`PeerManager::add_pool`].
    pub async fn add_pool(&self, hosts: Vec<HostSpec>) -> Result<(), TcpManagerError> {
        self.request(Request::AddPool(hosts)).await
    }

    /// [`PeerManager::add_active`]: dials the hosts now.
    pub async fn add_active(&self, hosts: Vec<HostSpec>) -> Result<(), TcpManagerError> {
        self.request(Request::AddActive(hosts)).await
    }

    /// [`PeerManager::del_active`]: disconnects the peer.
    pub async fn del_active(&self, peer: PeerAddr, reason: &str) -> Result<(), TcpManagerError> {
        self.request(Request::DelActive(peer, reason.to_string()))
            .await
    }

    /// [`PeerManager::send`]: sends to the selected peers, collecting answers when `answer` is
    /// given ([`ManagerEvent::Answer`], then [`ManagerEvent::AnswersDone`]).
    pub async fn send(
        &self,
        selection: Selection,
        command: &str,
        payload: Bytes,
        answer: Option<AnswerSpec>,
    ) -> Result<SendOutcome, TcpManagerError> {
        self.check(command, &payload)?;
        let (reply, rx) = oneshot::channel();
        self.request(Request::Send {
            selection,
            command: command.to_string(),
            payload,
            answer,
            reply,
        })
        .await?;
        rx.await.map_err(|_| TcpManagerError::Closed)
    }

    /// Sends one message to one active peer (a reply, say); `false` when it is not active.
    pub async fn send_to(
        &self,
        peer: PeerAddr,
        command: &str,
        payload: Bytes,
    ) -> Result<bool, TcpManagerError> {
        self.check(command, &payload)?;
        let (reply, rx) = oneshot::channel();
        self.request(Request::SendTo {
            peer,
            command: command.to_string(),
            payload,
            reply,
        })
        .await?;
        rx.await.map_err(|_| TcpManagerError::Closed)
    }

    /// [`PeerManager::set_property`]; `false` when the peer is not active.
    pub async fn set_property(
        &self,
        peer: PeerAddr,
        key: &str,
        value: Value,
    ) -> Result<bool, TcpManagerError> {
        let (reply, rx) = oneshot::channel();
        self.request(Request::SetProperty {
            peer,
            key: key.to_string(),
            value,
            reply,
        })
        .await?;
        rx.await.map_err(|_| TcpManagerError::Closed)
    }

    /// [`PeerManager::set_state`]; `false` when the peer is not active.
    pub async fn set_state(
        &self,
        peer: PeerAddr,
        state: PeerState,
    ) -> Result<bool, TcpManagerError> {
        let (reply, rx) = oneshot::channel();
        self.request(Request::SetState { peer, state, reply })
            .await?;
        rx.await.map_err(|_| TcpManagerError::Closed)
    }

    /// A snapshot of the active peers ([`PeerManager::peers`]), in no particular order.
    pub async fn peers(&self) -> Result<Vec<PeerInfo>, TcpManagerError> {
        let (reply, rx) = oneshot::channel();
        self.request(Request::Peers(reply)).await?;
        rx.await.map_err(|_| TcpManagerError::Closed)
    }

    /// Closes every connection and stops the manager; returns once the actor has ended.
    pub async fn shutdown(&self) -> Result<(), TcpManagerError> {
        let (reply, rx) = oneshot::channel();
        self.request(Request::Shutdown(reply)).await?;
        rx.await.map_err(|_| TcpManagerError::Closed)
    }
}

/// What a connection task reports to the actor.
#[derive(Debug)]
enum ConnEvent {
    /// The outbound dial connected.
    Connected,
    /// The outbound dial failed.
    Failed(String),
    /// A frame arrived.
    Frame { command: String, payload: Bytes },
    /// The decoder skipped something.
    DecodeError { severity: Severity, message: String },
    /// The connection ended; the task is gone.
    Closed(String),
}

#[derive(Debug)]
struct Report {
    id: u64,
    peer: PeerAddr,
    event: ConnEvent,
}

/// The actor's side of a connection task.
#[derive(Debug)]
struct Conn {
    id: u64,
    frames: mpsc::Sender<Bytes>,
    cancel: CancellationToken,
    /// Why we closed it, reported to the manager instead of the task's own reason.
    close_reason: Option<String>,
}

/// The actor that runs a [`PeerManager`] over TCP. Start it with [`TcpManager::spawn`].
#[derive(Debug)]
pub struct TcpManager {
    manager: PeerManager,
    cfg: ManagerConfig,
    opts: TcpOptions,
    requests: mpsc::Receiver<Request>,
    reports_tx: mpsc::Sender<Report>,
    reports: mpsc::Receiver<Report>,
    accepts: Option<mpsc::Receiver<(TcpStream, SocketAddr)>>,
    events: mpsc::Sender<ManagerEvent>,
    dropped: Arc<AtomicU64>,
    conns: HashMap<PeerAddr, Conn>,
    next_conn: u64,
    cancel: CancellationToken,
    shutting_down: Option<Vec<oneshot::Sender<()>>>,
}

impl TcpManager {
    /// Starts the actor (and the listener, when [`TcpOptions::listen`] is set) on the current
    /// tokio runtime. Returns its handle and the receiver of its events.
    ///
    /// Must be called inside a tokio runtime. Fails when the configuration is not valid or
    /// the listener cannot be bound.
    pub fn spawn(
        cfg: ManagerConfig,
        opts: TcpOptions,
    ) -> Result<(TcpManagerHandle, mpsc::Receiver<ManagerEvent>), io::Error> {
        let manager = PeerManager::new(cfg.clone(), Instant::now(), opts.seed)
            .map_err(|e: ConfigError| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let cancel = CancellationToken::new();
        let (accepts, local_addr) = match opts.listen {
            Some(addr) => {
                let std_listener = std::net::TcpListener::bind(addr)?;
                std_listener.set_nonblocking(true)?;
                let listener = TcpListener::from_std(std_listener)?;
                let local = listener.local_addr()?;
                let (tx, rx) = mpsc::channel(ACCEPT_CAPACITY);
                tokio::spawn(
                    accept_loop(listener, tx, cancel.child_token())
                        .instrument(tracing::debug_span!("accept", %local)),
                );
                (Some(rx), Some(local))
            }
            None => (None, None),
        };
        let (tx, requests) = mpsc::channel(COMMAND_CAPACITY);
        let (events, events_rx) = mpsc::channel(EVENT_CAPACITY);
        let (reports_tx, reports) = mpsc::channel(REPORT_CAPACITY);
        let dropped = Arc::new(AtomicU64::new(0));
        let handle = TcpManagerHandle {
            tx,
            local_addr,
            dropped: dropped.clone(),
            max_payload: opts.max_payload,
        };
        let actor = TcpManager {
            manager,
            cfg,
            opts,
            requests,
            reports_tx,
            reports,
            accepts,
            events,
            dropped,
            conns: HashMap::new(),
            next_conn: 0,
            cancel,
            shutting_down: None,
        };
        tokio::spawn(actor.run().instrument(tracing::debug_span!("tcp_manager")));
        Ok((handle, events_rx))
    }

    async fn run(mut self) {
        loop {
            if let Some(done) = &mut self.shutting_down {
                if self.conns.is_empty() {
                    for reply in done.drain(..) {
                        let _ = reply.send(());
                    }
                    break;
                }
            }
            let now = Instant::now();
            if self.manager.poll_timeout().is_some_and(|t| t <= now) {
                // Due already: do not let a busy input starve the timers.
                self.manager.handle_timeout(now);
                self.drain();
            }
            let deadline = self.manager.poll_timeout();
            tokio::select! {
                biased;
                req = self.requests.recv(), if self.shutting_down.is_none() => match req {
                    Some(req) => self.handle_request(req),
                    None => self.begin_shutdown(None),
                },
                // Room in the event channel frees up: look at the reports again.
                () = async { drop(self.events.reserve_many(EVENT_ROOM).await) },
                    if self.events.capacity() < EVENT_ROOM => {}
                // Reports are read only while the application has room for what they cause:
                // when it falls behind, the connection tasks wait to report, stop reading their
                // sockets, and TCP flow control slows the peers down. No message is dropped.
                Some(report) = self.reports.recv(), if self.events.capacity() >= EVENT_ROOM => {
                    self.handle_report(report)
                }
                Some((stream, addr)) = recv_accept(&mut self.accepts) => {
                    self.handle_accept(stream, addr)
                }
                () = sleep_until(deadline) => self.manager.handle_timeout(Instant::now()),
            }
            self.drain();
        }
        self.cancel.cancel();
        debug!("peer manager stopped");
    }

    fn handle_request(&mut self, req: Request) {
        let now = Instant::now();
        match req {
            Request::Launch(seeds) => self.manager.launch(seeds, now),
            Request::AddPool(hosts) => self.manager.add_pool(hosts, now),
            Request::AddActive(hosts) => self.manager.add_active(hosts, now),
            Request::DelActive(peer, reason) => self.manager.del_active(&peer, &reason, now),
            Request::Send {
                selection,
                command,
                payload,
                answer,
                reply,
            } => {
                let out = self
                    .manager
                    .send(&selection, &command, payload, answer, now);
                let _ = reply.send(out);
            }
            Request::SendTo {
                peer,
                command,
                payload,
                reply,
            } => {
                let active = self.manager.peer(&peer).is_some_and(|p| {
                    !matches!(p.state, PeerState::Disconnecting | PeerState::Closed)
                });
                if active {
                    self.send_frame(&peer, &command, &payload);
                }
                let _ = reply.send(active);
            }
            Request::SetProperty {
                peer,
                key,
                value,
                reply,
            } => {
                let _ = reply.send(self.manager.set_property(&peer, &key, value));
            }
            Request::SetState { peer, state, reply } => {
                let _ = reply.send(self.manager.set_state(&peer, state));
            }
            Request::Shutdown(reply) => self.begin_shutdown(Some(reply)),
            Request::Peers(reply) => {
                let _ = reply.send(self.manager.peers().cloned().collect());
            }
        }
    }

    fn begin_shutdown(&mut self, reply: Option<oneshot::Sender<()>>) {
        debug!("shutting down");
        self.manager.shutdown(Instant::now());
        // Stop accepting; connections still being dialled are closed too.
        self.accepts = None;
        for conn in self.conns.values_mut() {
            conn.close_reason
                .get_or_insert_with(|| "shutting down".into());
            conn.cancel.cancel();
        }
        self.shutting_down
            .get_or_insert_with(Vec::new)
            .extend(reply);
    }

    fn handle_report(&mut self, report: Report) {
        let Report { id, peer, event } = report;
        if self.conns.get(&peer).is_none_or(|c| c.id != id) {
            // A report of a connection that was replaced: the manager knows nothing of it.
            trace!(%peer, id, "report of a stale connection ignored");
            return;
        }
        let now = Instant::now();
        match event {
            ConnEvent::Connected => self.manager.handle_connected(&peer, now),
            ConnEvent::Failed(error) => {
                self.conns.remove(&peer);
                self.manager.handle_dial_failed(&peer, &error, now);
            }
            ConnEvent::Frame { command, payload } => {
                self.manager.handle_message(&peer, &command, payload, now)
            }
            ConnEvent::DecodeError { severity, message } => {
                let disconnect = severity >= Severity::Error;
                self.manager
                    .handle_peer_error(&peer, severity, &message, disconnect, now);
            }
            ConnEvent::Closed(reason) => {
                let reason = self
                    .conns
                    .remove(&peer)
                    .and_then(|c| c.close_reason)
                    .unwrap_or(reason);
                self.manager.handle_closed(&peer, &reason, now);
            }
        }
    }

    fn handle_accept(&mut self, stream: TcpStream, addr: SocketAddr) {
        let peer = PeerAddr {
            host: addr.ip().to_string(),
            port: addr.port(),
        };
        if !self.manager.handle_inbound(&peer, Instant::now()) {
            debug!(%peer, "inbound connection refused");
            return; // Dropping the stream closes it.
        }
        self.start_conn(peer, Some(stream));
    }

    /// Registers a connection task for `peer` (replacing a stale one) and starts it.
    fn start_conn(&mut self, peer: PeerAddr, stream: Option<TcpStream>) {
        self.next_conn += 1;
        let id = self.next_conn;
        let (frames, inbox) = mpsc::channel(CONN_QUEUE);
        let cancel = self.cancel.child_token();
        let task = ConnTask {
            id,
            peer: peer.clone(),
            reports: self.reports_tx.clone(),
            inbox,
            cancel: cancel.clone(),
            decoder: Decoder::new(DecoderConfig {
                magic: self.opts.magic,
                max_payload: u32::try_from(self.opts.max_payload).unwrap_or(u32::MAX),
            }),
        };
        let span = tracing::debug_span!("conn", %peer, id);
        let connect_timeout = self.cfg.connect_timeout;
        tokio::spawn(task.run(stream, connect_timeout).instrument(span));
        let old = self.conns.insert(
            peer,
            Conn {
                id,
                frames,
                cancel,
                close_reason: None,
            },
        );
        if let Some(old) = old {
            old.cancel.cancel();
        }
    }

    /// Carries out what the manager asked for and forwards what it reported.
    fn drain(&mut self) {
        while let Some(action) = self.manager.poll_action() {
            match action {
                Action::Dial(peer) => {
                    debug!(%peer, "dialling");
                    self.start_conn(peer, None);
                }
                Action::Send {
                    peer,
                    command,
                    payload,
                } => self.send_frame(&peer, &command, &payload),
                Action::Close { peer, reason } => {
                    if let Some(conn) = self.conns.get_mut(&peer) {
                        debug!(%peer, %reason, "closing");
                        conn.close_reason.get_or_insert(reason);
                        conn.cancel.cancel();
                    }
                }
            }
        }
        while let Some(event) = self.manager.poll_event() {
            self.emit(event);
        }
    }

    /// Frames one message and queues it on the peer's connection, never waiting.
    fn send_frame(&mut self, peer: &PeerAddr, command: &str, payload: &[u8]) {
        let mut buf = BytesMut::new();
        if let Err(e) = encode(self.opts.magic, command, payload, &mut buf) {
            let message = format!("cannot send `{command}` to {peer}: {e}");
            self.log(Severity::Warning, message, Some(peer.clone()));
            return;
        }
        let Some(conn) = self.conns.get(peer) else {
            trace!(%peer, command, "no connection; frame dropped");
            return;
        };
        match conn.frames.try_send(buf.freeze()) {
            Ok(()) => trace!(%peer, command, "frame queued"),
            Err(mpsc::error::TrySendError::Full(_)) => {
                let message = format!(
                    "send queue of {peer} is full ({CONN_QUEUE} frames); `{command}` dropped"
                );
                self.log(Severity::Warning, message, Some(peer.clone()));
            }
            // The task is ending; its `Closed` report is on the way.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    fn log(&mut self, severity: Severity, message: String, peer: Option<PeerAddr>) {
        self.emit(ManagerEvent::Log {
            severity,
            message,
            peer,
        });
    }

    /// Hands an event to the application without waiting; counts it when dropped.
    fn emit(&mut self, event: ManagerEvent) {
        if let ManagerEvent::Log {
            severity, message, ..
        } = &event
        {
            if *severity >= Severity::Warning {
                warn!("{message}");
            } else {
                debug!("{message}");
            }
        }
        if self.events.try_send(event).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn recv_accept(
    accepts: &mut Option<mpsc::Receiver<(TcpStream, SocketAddr)>>,
) -> Option<(TcpStream, SocketAddr)> {
    match accepts {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// Accepts connections and hands them to the actor until cancelled.
async fn accept_loop(
    listener: TcpListener,
    tx: mpsc::Sender<(TcpStream, SocketAddr)>,
    cancel: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok(conn) => {
                if tx.send(conn).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                // Usually out of file descriptors: pause rather than spin.
                warn!("accept failed: {e}");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
}

/// One connection: dials (when outbound), then reads and writes until closed.
struct ConnTask {
    id: u64,
    peer: PeerAddr,
    reports: mpsc::Sender<Report>,
    inbox: mpsc::Receiver<Bytes>,
    cancel: CancellationToken,
    decoder: Decoder,
}

impl ConnTask {
    async fn report(&self, event: ConnEvent) -> bool {
        let report = Report {
            id: self.id,
            peer: self.peer.clone(),
            event,
        };
        self.reports.send(report).await.is_ok()
    }

    async fn run(mut self, stream: Option<TcpStream>, connect_timeout: Duration) {
        let dialled = stream.is_none();
        let mut stream = match stream {
            Some(s) => s,
            None => {
                let host = self.peer.host.clone();
                let port = self.peer.port;
                let connect =
                    tokio::time::timeout(connect_timeout, TcpStream::connect((host, port)));
                let result = tokio::select! {
                    biased;
                    () = self.cancel.cancelled() => {
                        self.report(ConnEvent::Closed("closed while connecting".into())).await;
                        return;
                    }
                    r = connect => r,
                };
                match result {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        self.report(ConnEvent::Failed(e.to_string())).await;
                        return;
                    }
                    Err(_) => {
                        let m = format!("no connection within {connect_timeout:?}");
                        self.report(ConnEvent::Failed(m)).await;
                        return;
                    }
                }
            }
        };
        if let Err(e) = stream.set_nodelay(true) {
            debug!("cannot set TCP_NODELAY: {e}");
        }
        // Only a dial has news for the manager: `handle_inbound` already registered an
        // accepted connection (and reported its `PeerConnect`).
        if dialled && !self.report(ConnEvent::Connected).await {
            return;
        }
        debug!("connected");
        let reason = self.serve(&mut stream).await;
        debug!(%reason, "connection ended");
        self.report(ConnEvent::Closed(reason)).await;
    }

    /// Reads and writes until the peer hangs up, an I/O error, or cancellation; the reason.
    async fn serve(&mut self, stream: &mut TcpStream) -> String {
        let (mut rd, mut wr) = stream.split();
        let Self {
            id,
            peer,
            reports,
            inbox,
            cancel,
            decoder,
        } = self;
        // Reading and writing run side by side, so a peer that does not read cannot stop us
        // from reading (and the reverse).
        let write = async {
            while let Some(frame) = inbox.recv().await {
                if let Err(e) = wr.write_all(&frame).await {
                    return format!("write failed: {e}");
                }
            }
            "the manager dropped the connection".to_string()
        };
        let read = async {
            let mut buf = vec![0u8; READ_CHUNK];
            loop {
                let n = match rd.read(&mut buf).await {
                    Ok(0) => return "the peer closed the connection".to_string(),
                    Ok(n) => n,
                    Err(e) => return format!("read failed: {e}"),
                };
                let mut data = &buf[..n];
                loop {
                    let taken = decoder.push(data);
                    data = &data[taken..];
                    let mut polled = 0usize;
                    while let Some(ev) = decoder.poll() {
                        polled += 1;
                        let event = match ev {
                            DecodeEvent::Frame(f) => {
                                trace!(
                                    command = f.command.as_str(),
                                    len = f.payload.len(),
                                    "frame"
                                );
                                ConnEvent::Frame {
                                    command: f.command.as_str().to_string(),
                                    payload: f.payload,
                                }
                            }
                            DecodeEvent::Error(e) => ConnEvent::DecodeError {
                                severity: e.severity(),
                                message: format!("{}: {e}", e.code()),
                            },
                        };
                        let report = Report {
                            id: *id,
                            peer: peer.clone(),
                            event,
                        };
                        if reports.send(report).await.is_err() {
                            return "the manager stopped".to_string();
                        }
                    }
                    // The decoder's contract: a full buffer always decodes into an event, so
                    // no progress at all cannot happen; the check only guards against a loop.
                    if data.is_empty() || (taken == 0 && polled == 0) {
                        break;
                    }
                }
            }
        };
        let reason = tokio::select! {
            biased;
            () = cancel.cancelled() => None,
            r = write => Some(r),
            r = read => Some(r),
        };
        if let Some(reason) = reason {
            return reason;
        }
        // Closed by us: write what is still queued (briefly), then hang up.
        let flush = async {
            while let Ok(frame) = inbox.try_recv() {
                wr.write_all(&frame).await?;
            }
            wr.shutdown().await
        };
        let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, flush).await;
        "closed locally".to_string()
    }
}
