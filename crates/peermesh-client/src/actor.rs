//! The client actor: the one task that owns the WebSocket.
//!
//! ```text
//!   Client handles ──Command (bounded inbox)──▶ ┌─────────────┐ ◀──ServerFrame── hub
//!   Message::reply ──────────────────────────▶  │ ClientActor │ ───ClientFrame──▶ hub
//!   close() ─────────CancellationToken───────▶  └─────────────┘
//!                                                 │   │    │
//!          oneshot answers ◀── RequestTracker ────┘   │    └── Backoff (reconnect ladder)
//!          Subscription / Once / EventStream ◀── Registry::dispatch / emit (try_send, never waits)
//! ```
//!
//! While connected, [`ClientActor::serve`] runs one `tokio::select! { biased; … }` over, in
//! priority order: cancellation, frames from the hub, commands from handles, request deadlines,
//! the ping timer and the idle timer. When the connection drops, pending requests fail with
//! [`ClientError::ConnectionLost`], and [`ClientActor::reconnect`] walks the [`Backoff`] ladder,
//! answering commands with [`ClientError::NotConnected`] meanwhile. Each new connection presents
//! the same id, the `secret` of the last `welcome` and the rooms the client was in.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use parking_lot::Mutex;
use peermesh_proto::{
    ClientFrame, ClientId, Emit, EmitRoom, ErrorCode, ErrorFrame, Hello, Limits, Reply, RoomName,
    ServerFrame, Welcome,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::connection::{self, BoxTransport, Connector, WsMessage};
use crate::error::ClientError;
use crate::event::ClientEvent;
use crate::listeners::{Message, Registry, Replier, SharedRegistry};
use crate::options::ClientOptions;
use crate::request::{Answer, Command, Op};
use crate::tracker::RequestTracker;

/// State shared by the handles and the actor.
pub(crate) struct Shared {
    pub(crate) registry: SharedRegistry,
    /// Cancelled by [`Client::close`](crate::Client::close).
    pub(crate) cancel: CancellationToken,
    /// Cancelled by the actor when it has stopped.
    pub(crate) finished: CancellationToken,
}

impl Shared {
    pub(crate) fn new(opts: &ClientOptions) -> Self {
        Self {
            registry: Arc::new(Mutex::new(Registry::new(
                opts.listener_capacity,
                opts.event_capacity,
            ))),
            cancel: CancellationToken::new(),
            finished: CancellationToken::new(),
        }
    }
}

/// What waits for an answer.
struct PendingEntry {
    kind: PendingKind,
    timeout: Duration,
    reply: oneshot::Sender<Result<Answer, ClientError>>,
}

enum PendingKind {
    /// An acknowledged emit.
    Ack,
    /// A join: on `ok` the room is remembered for reconnects.
    Join(RoomName),
    /// A leave: on `ok` the room is forgotten.
    Leave(RoomName),
    /// Anything else.
    Plain,
}

impl PendingEntry {
    fn answer(self, a: Result<Answer, ClientError>) {
        // The caller may have dropped its future: nobody to tell.
        let _ = self.reply.send(a);
    }

    fn timed_out(self) {
        let err = match self.kind {
            PendingKind::Ack => ClientError::AckTimeout(self.timeout),
            _ => ClientError::RequestTimeout(self.timeout),
        };
        self.answer(Err(err));
    }
}

/// Why [`ClientActor::serve`] returned.
#[derive(Debug)]
enum Disconnect {
    /// `close()` was called or every handle was dropped.
    Close,
    /// The connection dropped; reconnecting may help.
    Dropped(String),
    /// The hub ended the session for good (e.g. `replaced`).
    Fatal(String),
}

/// The actor; see the [module docs](self).
pub(crate) struct ClientActor {
    opts: ClientOptions,
    url: String,
    connector: Connector,
    inbox: mpsc::Receiver<Command>,
    weak_tx: mpsc::WeakSender<Command>,
    shared: Arc<Shared>,
    requests: RequestTracker<PendingEntry>,
    backoff: Option<Backoff>,
    id: ClientId,
    secret: String,
    rooms: BTreeSet<RoomName>,
    limits: Limits,
    heartbeat: Duration,
    /// Counts connections; a reply to a message from an earlier one is refused locally.
    generation: u64,
    last_seq: Option<u64>,
}

pub(crate) struct ActorParts {
    pub(crate) opts: ClientOptions,
    pub(crate) url: String,
    pub(crate) connector: Connector,
    pub(crate) inbox: mpsc::Receiver<Command>,
    pub(crate) weak_tx: mpsc::WeakSender<Command>,
    pub(crate) shared: Arc<Shared>,
}

impl ClientActor {
    pub(crate) fn new(parts: ActorParts, welcome: Welcome) -> Self {
        let backoff = parts.opts.reconnect.clone().map(Backoff::from_policy);
        let mut actor = Self {
            opts: parts.opts,
            url: parts.url,
            connector: parts.connector,
            inbox: parts.inbox,
            weak_tx: parts.weak_tx,
            shared: parts.shared,
            requests: RequestTracker::new(),
            backoff,
            id: welcome.id.clone(),
            secret: String::new(),
            rooms: BTreeSet::new(),
            limits: welcome.limits.clone(),
            heartbeat: Duration::ZERO,
            generation: 0,
            last_seq: None,
        };
        actor.on_welcome(welcome);
        actor
    }

    /// Runs until closed or permanently lost.
    pub(crate) async fn run(mut self, mut ws: BoxTransport) {
        let finished = self.shared.finished.clone().drop_guard();
        loop {
            match self.serve(&mut ws).await {
                Disconnect::Close => {
                    tracing::debug!("closing");
                    let bye = tokio::time::timeout(Duration::from_secs(1), ws.close()).await;
                    if !matches!(bye, Ok(Ok(()))) {
                        tracing::debug!("the close handshake did not complete");
                    }
                    self.fail_pending(|| ClientError::Closed);
                    break;
                }
                Disconnect::Dropped(reason) => {
                    self.on_drop(&reason);
                    match self.reconnect(reason).await {
                        Some(new_ws) => ws = new_ws,
                        None => break,
                    }
                }
                Disconnect::Fatal(reason) => {
                    self.on_drop(&reason);
                    self.emit(ClientEvent::Lost { reason });
                    break;
                }
            }
        }
        self.fail_pending(|| ClientError::Closed);
        self.shared.registry.lock().close();
        // Refuse what is still queued rather than leave callers waiting for `send`.
        self.inbox.close();
        while let Ok(cmd) = self.inbox.try_recv() {
            refuse(cmd, ClientError::Closed, 0);
        }
        drop(finished);
    }

    /// Serves one live connection.
    async fn serve(&mut self, ws: &mut BoxTransport) -> Disconnect {
        let ping_every = self.opts.ping_interval.unwrap_or(self.heartbeat);
        let mut ping = (!ping_every.is_zero()).then(|| {
            let mut i = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
            i.set_missed_tick_behavior(MissedTickBehavior::Delay);
            i
        });
        let idle = self.opts.idle_timeout.max(self.heartbeat.saturating_mul(2));
        let max_pending = self.opts.max_pending_requests.max(1);
        let mut last_heard = Instant::now();
        loop {
            let deadline = self.requests.poll_timeout().map(Instant::from_std);
            tokio::select! {
                biased;
                _ = self.shared.cancel.cancelled() => return Disconnect::Close,
                frame = ws.next() => {
                    last_heard = Instant::now();
                    match frame {
                        Some(Ok(msg)) => {
                            if let Some(end) = self.on_ws_message(msg) {
                                return end;
                            }
                        }
                        Some(Err(e)) => return Disconnect::Dropped(format!("read failed: {e}")),
                        None => return Disconnect::Dropped(connection::close_reason(None)),
                    }
                }
                cmd = self.inbox.recv(), if self.requests.len() < max_pending => match cmd {
                    Some(cmd) => {
                        if let Err(reason) = self.on_command(ws, cmd).await {
                            return Disconnect::Dropped(reason);
                        }
                    }
                    None => return Disconnect::Close,
                },
                _ = sleep_until(deadline) => {
                    for entry in self.requests.expire(Instant::now().into_std()) {
                        entry.timed_out();
                    }
                }
                _ = tick(&mut ping) => {
                    if let Err(e) = ws.send(WsMessage::Ping(Bytes::new())).await {
                        return Disconnect::Dropped(format!("ping failed: {e}"));
                    }
                }
                _ = tokio::time::sleep_until(last_heard + idle) => {
                    return Disconnect::Dropped(format!("nothing heard from the hub for {idle:?}"));
                }
            }
        }
    }

    /// Handles one WebSocket message; `Some` ends the connection.
    fn on_ws_message(&mut self, msg: WsMessage) -> Option<Disconnect> {
        if let WsMessage::Close(frame) = &msg {
            return Some(Disconnect::Dropped(connection::close_reason(
                frame.as_ref(),
            )));
        }
        let (seq, frame) = match connection::decode(&msg)? {
            Ok(decoded) => decoded,
            Err(e) => {
                tracing::warn!(error = %e, "undecodable frame from the hub, ignored");
                return None;
            }
        };
        if let Some(last) = self.last_seq {
            if seq != last.wrapping_add(1) {
                tracing::warn!(seq, last, "the hub's sequence numbers skipped");
            }
        }
        self.last_seq = Some(seq);
        tracing::trace!(seq, frame = frame.type_name(), "frame from the hub");
        match frame {
            ServerFrame::Message(m) => {
                let replier = Replier {
                    tx: self.weak_tx.clone(),
                    generation: self.generation,
                };
                let msg = Message::new(m, replier);
                let delivered = self.shared.registry.lock().dispatch(&msg);
                if delivered == 0 {
                    tracing::debug!(from = %msg.from, event = %msg.event, "no listener for message");
                }
            }
            ServerFrame::Ack { req, payload } => {
                if let Some(entry) = self.requests.complete(req) {
                    entry.answer(Ok(Answer::Ack(payload)));
                } else {
                    tracing::debug!(req, "ack for a request that is no longer pending");
                }
            }
            ServerFrame::Ok { req } => {
                if let Some(entry) = self.requests.complete(req) {
                    match &entry.kind {
                        PendingKind::Join(room) => {
                            self.rooms.insert(room.clone());
                        }
                        PendingKind::Leave(room) => {
                            self.rooms.remove(room);
                        }
                        PendingKind::Ack | PendingKind::Plain => {}
                    }
                    entry.answer(Ok(Answer::Done));
                }
            }
            ServerFrame::Members {
                req: Some(req),
                members,
                ..
            } => {
                if let Some(entry) = self.requests.complete(req) {
                    entry.answer(Ok(Answer::Members(members)));
                }
            }
            ServerFrame::Error(e) => return self.on_error_frame(e),
            ServerFrame::MemberJoined { room, id } => {
                self.emit(ClientEvent::MemberJoined { room, id });
            }
            ServerFrame::MemberLeft { room, id } => {
                self.emit(ClientEvent::MemberLeft { room, id });
            }
            ServerFrame::PeerLeft { id } => self.emit(ClientEvent::PeerLeft { id }),
            other => tracing::debug!(frame = other.type_name(), "frame ignored"),
        }
        None
    }

    fn on_error_frame(&mut self, e: ErrorFrame) -> Option<Disconnect> {
        if let Some(req) = e.req {
            match self.requests.complete(req) {
                Some(entry) => entry.answer(Err(ClientError::Hub {
                    code: e.code,
                    message: e.message,
                })),
                // Already answered locally (e.g. our own ack timer fired first): every
                // request gets exactly one outcome, so the late one is dropped.
                None => {
                    tracing::debug!(req, code = %e.code, "error for a request no longer pending")
                }
            }
            return None;
        }
        let fatal = e.code.is_fatal();
        let reason = format!("{}: {}", e.code, e.message);
        self.emit(ClientEvent::Error {
            code: e.code,
            message: e.message,
        });
        if !fatal {
            return None;
        }
        // The hub closes the connection after a fatal error; do not wait for it.
        Some(match e.code {
            ErrorCode::Replaced
            | ErrorCode::Unauthorized
            | ErrorCode::InvalidId
            | ErrorCode::VersionUnsupported => Disconnect::Fatal(reason),
            _ => Disconnect::Dropped(reason),
        })
    }

    /// Sends what a command asks for; `Err` when the socket failed.
    async fn on_command(&mut self, ws: &mut BoxTransport, cmd: Command) -> Result<(), String> {
        let (op, reply) = match cmd {
            Command::PendingCount(tx) => {
                let _ = tx.send(self.requests.len());
                return Ok(());
            }
            Command::Request { op, reply } => (op, reply),
        };
        if let Op::Reply {
            ack_id,
            payload,
            generation,
        } = op
        {
            if generation.is_some_and(|g| g != self.generation) {
                let _ = reply.send(Err(ClientError::ConnectionLost(
                    "the message arrived on an earlier connection; its acknowledgement is gone"
                        .into(),
                )));
                return Ok(());
            }
            let frame = ClientFrame::Reply(Reply { ack_id, payload });
            let msg = connection::encode(self.opts.encoding, &frame);
            if let Err(e) = self.check_size(&msg) {
                let _ = reply.send(Err(e));
                return Ok(());
            }
            ws.send(msg)
                .await
                .map_err(|e| format!("write failed: {e}"))?;
            let _ = reply.send(Ok(Answer::Done));
            return Ok(());
        }

        let now = Instant::now();
        let request_timeout = self.opts.request_timeout;
        let (kind, timeout) = match &op {
            Op::Emit { ack: Some(t), .. } => (PendingKind::Ack, *t),
            Op::Join(room) => (PendingKind::Join(room.clone()), request_timeout),
            Op::Leave(room) => (PendingKind::Leave(room.clone()), request_timeout),
            _ => (PendingKind::Plain, request_timeout),
        };
        let entry = PendingEntry {
            kind,
            timeout,
            reply,
        };
        let req = self.requests.insert((now + timeout).into_std(), entry);
        let frame = build_frame(op, req);
        let msg = connection::encode(self.opts.encoding, &frame);
        if let Err(e) = self.check_size(&msg) {
            if let Some(entry) = self.requests.complete(req) {
                entry.answer(Err(e));
            }
            return Ok(());
        }
        // On failure the entry stays and fails with the other pending requests in `on_drop`.
        ws.send(msg).await.map_err(|e| format!("write failed: {e}"))
    }

    /// Refuses locally a frame the hub would refuse as too large.
    fn check_size(&self, msg: &WsMessage) -> Result<(), ClientError> {
        let len = connection::wire_len(msg);
        let max = self.limits.max_frame_bytes;
        if max > 0 && u64::try_from(len).unwrap_or(u64::MAX) > max {
            return Err(ClientError::Hub {
                code: ErrorCode::FrameTooLarge,
                message: format!("the frame is {len} bytes; the hub accepts at most {max}"),
            });
        }
        Ok(())
    }

    fn on_welcome(&mut self, w: Welcome) {
        if !self.secret.is_empty() && w.id != self.id {
            tracing::warn!(old = %self.id, new = %w.id, "the hub assigned a different id");
        }
        self.id = w.id;
        self.secret = w.secret;
        self.rooms = w.rooms.into_iter().collect();
        self.heartbeat = Duration::from_millis(w.heartbeat_ms);
        self.limits = w.limits;
        self.last_seq = None;
        self.shared
            .registry
            .lock()
            .set_connected(Some(self.id.clone()));
        tracing::debug!(id = %self.id, rooms = self.rooms.len(), "welcome");
    }

    fn on_drop(&mut self, reason: &str) {
        tracing::info!(reason, "connection to the hub lost");
        self.generation += 1;
        self.fail_pending(|| ClientError::ConnectionLost(reason.to_owned()));
        self.shared.registry.lock().set_connected(None);
        self.emit(ClientEvent::ConnectionLost {
            reason: reason.to_owned(),
        });
    }

    fn fail_pending(&mut self, err: impl Fn() -> ClientError) {
        for entry in self.requests.drain() {
            entry.answer(Err(err()));
        }
    }

    fn emit(&self, event: ClientEvent) {
        self.shared.registry.lock().emit(event);
    }

    fn hello(&self) -> Hello {
        Hello {
            id: Some(self.id.clone()),
            version: self.opts.version.clone(),
            rooms: self.rooms.iter().cloned().collect(),
            token: self.opts.token.clone(),
            secret: Some(self.secret.clone()),
        }
    }

    /// Walks the reconnect ladder; `Some` with the new connection, `None` when the client
    /// stops (closed, or lost: the `Lost` event is emitted here).
    async fn reconnect(&mut self, reason: String) -> Option<BoxTransport> {
        let Some(mut backoff) = self.backoff.take() else {
            self.emit(ClientEvent::Lost {
                reason: format!("reconnection is disabled; {reason}"),
            });
            return None;
        };
        let out = self.climb(&mut backoff, reason).await;
        backoff.reset();
        self.backoff = Some(backoff);
        out
    }

    async fn climb(&mut self, backoff: &mut Backoff, reason: String) -> Option<BoxTransport> {
        backoff.reset();
        let mut last_error = reason;
        loop {
            let Some(delay) = backoff.next_delay(Instant::now().into_std()) else {
                let attempts = backoff.attempt();
                self.emit(ClientEvent::Lost {
                    reason: format!("gave up after {attempts} reconnect attempts: {last_error}"),
                });
                return None;
            };
            let attempt = backoff.attempt();
            tracing::debug!(attempt, ?delay, "reconnecting");
            self.emit(ClientEvent::Reconnecting { attempt, delay });
            self.while_disconnected(tokio::time::sleep(delay)).await?;
            let open = connection::open(
                self.connector.clone(),
                self.url.clone(),
                self.opts.encoding,
                self.hello(),
                self.opts.connect_timeout,
            );
            match self.while_disconnected(open).await? {
                Ok((ws, welcome)) => {
                    self.on_welcome(welcome);
                    tracing::info!(attempt, "reconnected");
                    self.emit(ClientEvent::Reconnected {
                        id: self.id.clone(),
                        attempt,
                        rooms: self.rooms.iter().cloned().collect(),
                    });
                    return Some(ws);
                }
                Err(e) if !e.is_retryable() => {
                    self.emit(ClientEvent::Lost {
                        reason: format!("the hub refused to reconnect: {e}"),
                    });
                    return None;
                }
                Err(e) => {
                    tracing::debug!(attempt, error = %e, "reconnect attempt failed");
                    last_error = e.to_string();
                }
            }
        }
    }

    /// Drives `fut` while answering commands with `NotConnected`; `None` when the client
    /// stops meanwhile.
    async fn while_disconnected<F: std::future::Future>(&mut self, fut: F) -> Option<F::Output> {
        tokio::pin!(fut);
        loop {
            tokio::select! {
                biased;
                _ = self.shared.cancel.cancelled() => return None,
                out = &mut fut => return Some(out),
                cmd = self.inbox.recv() => match cmd {
                    Some(cmd) => refuse(cmd, ClientError::NotConnected, self.requests.len()),
                    None => return None,
                },
            }
        }
    }
}

/// Answers a command that cannot be carried out.
fn refuse(cmd: Command, err: ClientError, pending: usize) {
    match cmd {
        Command::Request { reply, .. } => {
            let _ = reply.send(Err(err));
        }
        Command::PendingCount(tx) => {
            let _ = tx.send(pending);
        }
    }
}

fn build_frame(op: Op, req: u64) -> ClientFrame {
    match op {
        Op::Emit {
            to,
            event,
            payload,
            ack,
        } => ClientFrame::Emit(Emit {
            to,
            event,
            payload,
            req: Some(req),
            ack: ack.is_some(),
            timeout_ms: ack.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1)),
        }),
        Op::EmitRoom {
            room,
            event,
            payload,
            include_self,
        } => ClientFrame::EmitRoom(EmitRoom {
            room,
            event,
            payload,
            include_self,
            req: Some(req),
        }),
        Op::Join(room) => ClientFrame::Join {
            room,
            req: Some(req),
        },
        Op::Leave(room) => ClientFrame::Leave {
            room,
            req: Some(req),
        },
        Op::Members(room) => ClientFrame::Members {
            room,
            req: Some(req),
        },
        // Replies are sent without a `req` by `on_command`; a `ping` keeps the frame valid.
        Op::Reply { .. } => ClientFrame::Ping { req: Some(req) },
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn tick(interval: &mut Option<Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}
