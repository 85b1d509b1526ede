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
//! priority order: cancellation, the socket (reading frames from the hub while writing the
//! outgoing queue), stream pokes and turns, commands from handles, request deadlines, the ping
//! timer and the idle timer. Nothing waits for a write: frames go into an outgoing queue (at
//! most `OUT_CAP` bytes; commands and streams wait while it is full) that the socket branch
//! writes while it keeps reading, so the hub is never left unread while the client writes.
//! After `FAIR_READS` frames read in a row, the other branches get a turn. When the connection drops, pending requests fail with
//! [`ClientError::ConnectionLost`], and [`ClientActor::reconnect`] walks the [`Backoff`] ladder,
//! answering commands with [`ClientError::NotConnected`] meanwhile. Each attempt of the ladder
//! is a round over the hub URLs (one URL unless
//! [`ClientOptions::fallback_urls`] names more), starting with the hub that was lost (where
//! a short cut resumes), then the others in order. Each new connection presents the same id, the `secret` of the last `welcome` and the
//! rooms the client was in.

use std::collections::{BTreeSet, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use parking_lot::Mutex;
use peermesh_proto::stream::{is_data_frame, DataFrame, DATA_HEADER_LEN};
use peermesh_proto::{
    Call, ClientFrame, ClientId, Emit, EmitRoom, ErrorCode, ErrorFrame, Hello, Limits, MethodName,
    Provide, Publish, Reply, Respond, RoomName, ServerFrame, ServiceName, StreamOpen, TopicName,
    Welcome,
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
use crate::resend::{self, SentLog, SENT_CAP};
use crate::services::{self, Delivered, FeedEnd, Feeds, Invocation, InvocationSink};
use crate::session::{Assembled, SessionEnd, Sessions};
use crate::stream::{IncomingStream, Out, Streams, MAX_CHUNK};
use crate::tracker::RequestTracker;

/// Most bytes of frames queued for the socket before commands and streams wait.
const OUT_CAP: usize = 512 << 10;
/// Frames read in a row before the other branches get a turn.
const FAIR_READS: u32 = 32;
/// Data frames one stream sends per turn.
const STREAM_TURN_FRAMES: usize = 4;

/// State shared by the handles and the actor.
pub(crate) struct Shared {
    pub(crate) registry: SharedRegistry,
    /// Cancelled by [`Client::close`](crate::Client::close).
    pub(crate) cancel: CancellationToken,
    /// Cancelled by the actor when it has stopped.
    pub(crate) finished: CancellationToken,
    /// Where stream requests from other clients go.
    pub(crate) incoming: Arc<Mutex<Option<mpsc::Sender<IncomingStream>>>>,
    /// Where calls of this client's service go.
    pub(crate) invocations: InvocationSink,
    /// The hub URLs as given in the options, in the order they are tried.
    pub(crate) hub_urls: Box<[String]>,
    /// The index in `hub_urls` of the hub connected to (or last connected to).
    pub(crate) current: AtomicUsize,
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
            incoming: Arc::new(Mutex::new(None)),
            invocations: Arc::new(Mutex::new(None)),
            hub_urls: opts.hub_urls().map(str::to_owned).collect(),
            current: AtomicUsize::new(0),
        }
    }

    /// The hub URL in use, as given in the options.
    pub(crate) fn current_url(&self) -> &str {
        let i = self.current.load(Ordering::Relaxed);
        self.hub_urls.get(i).map_or("", String::as_str)
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
    /// A stream open to this client: answered by `stream_accepted`.
    OpenStream(ClientId),
    /// A call: answered by `result`.
    Call,
    /// A provide: on `ok` the service is remembered for reconnects.
    Provide(ServiceName, Vec<MethodName>),
    /// An unprovide: on `ok` the service is no longer provided after a reconnect.
    Unprovide,
    /// A subscribe: on `ok` the feed opens.
    Subscribe(ServiceName, TopicName),
    /// An unsubscribe: on `ok` the feed ends.
    Unsubscribe(ServiceName, TopicName),
    /// A session join: answered by the last `session_state` chunk.
    SessionJoin,
    /// A session leave: on `ok` the session ends.
    SessionLeave(peermesh_proto::SessionName),
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
            PendingKind::Call => ClientError::CallTimeout(self.timeout),
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
    /// Every hub URL with its `enc` and metadata, in the order of `Shared::hub_urls`.
    urls: Vec<String>,
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
    out: OutQueue,
    streams: Streams,
    /// The service this client provides, provided again after a reconnect.
    provided: Option<(ServiceName, Vec<MethodName>)>,
    feeds: Feeds,
    /// The hub keeps this session through drops (we asked, and it allows it).
    resumable: bool,
    /// Counted frames sent and not confirmed; receipts owed.
    sent: SentLog,
    sessions: Sessions,
}

/// Frames waiting for the socket.
#[derive(Default)]
struct OutQueue {
    msgs: VecDeque<WsMessage>,
    bytes: usize,
    unflushed: bool,
}

impl OutQueue {
    fn push(&mut self, msg: WsMessage) {
        self.bytes += connection::wire_len(&msg);
        self.msgs.push_back(msg);
    }

    fn clear(&mut self) {
        self.msgs.clear();
        self.bytes = 0;
        self.unflushed = false;
    }
}

/// What the socket branch saw.
enum Io {
    Read(Option<Result<WsMessage, connection::WsError>>),
    WriteFailed(String),
}

/// Writes the outgoing queue and reads the next message, whichever can make progress.
fn drive<'a>(
    ws: &'a mut BoxTransport,
    out: &'a mut OutQueue,
    skip_read: bool,
) -> impl Future<Output = Io> + 'a {
    let mut skip = skip_read;
    std::future::poll_fn(move |cx| {
        while !out.msgs.is_empty() {
            match ws.poll_ready_unpin(cx) {
                Poll::Ready(Ok(())) => {
                    let Some(m) = out.msgs.pop_front() else {
                        break;
                    };
                    out.bytes = out.bytes.saturating_sub(connection::wire_len(&m));
                    if let Err(e) = ws.start_send_unpin(m) {
                        return Poll::Ready(Io::WriteFailed(e.to_string()));
                    }
                    out.unflushed = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Io::WriteFailed(e.to_string())),
                Poll::Pending => break,
            }
        }
        if out.unflushed {
            match ws.poll_flush_unpin(cx) {
                Poll::Ready(Ok(())) => out.unflushed = false,
                Poll::Ready(Err(e)) => return Poll::Ready(Io::WriteFailed(e.to_string())),
                Poll::Pending => {}
            }
        }
        if skip {
            // Let the other branches run once; come back right after.
            skip = false;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        ws.poll_next_unpin(cx).map(Io::Read)
    })
}

pub(crate) struct ActorParts {
    pub(crate) opts: ClientOptions,
    /// Every hub URL to open, never empty; `shared.current` indexes the one connected to.
    pub(crate) urls: Vec<String>,
    pub(crate) connector: Connector,
    pub(crate) inbox: mpsc::Receiver<Command>,
    pub(crate) weak_tx: mpsc::WeakSender<Command>,
    pub(crate) shared: Arc<Shared>,
}

impl ClientActor {
    pub(crate) fn new(parts: ActorParts, welcome: Welcome) -> Self {
        let backoff = parts.opts.reconnect.clone().map(Backoff::from_policy);
        let streams = Streams::new(
            parts.opts.stream_window,
            parts.opts.stream_send_buffer,
            parts.shared.incoming.clone(),
        );
        let feeds = Feeds::new(parts.opts.topic_capacity);
        let sessions = Sessions::new(parts.opts.session_capacity);
        let mut actor = Self {
            opts: parts.opts,
            urls: parts.urls,
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
            out: OutQueue::default(),
            streams,
            provided: None,
            feeds,
            resumable: false,
            sent: SentLog::default(),
            sessions,
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
                    self.streams.fail_all("the client was closed");
                    let out = &mut self.out;
                    let bye = tokio::time::timeout(Duration::from_secs(1), async {
                        while let Some(m) = out.msgs.pop_front() {
                            ws.feed(m).await?;
                        }
                        ws.close().await
                    })
                    .await;
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
        self.feeds.end_all(FeedEnd::Closed);
        self.sessions.end_all(SessionEnd::Closed);
        *self.shared.invocations.lock() = None;
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
        let mut reads_in_row = 0u32;
        loop {
            let deadline = self.requests.poll_timeout().map(Instant::from_std);
            let room = self.out.bytes < OUT_CAP && self.sent.bytes() < SENT_CAP;
            let receipt_due = self.sent.receipt_due();
            let skip_read = reads_in_row >= FAIR_READS;
            if skip_read {
                reads_in_row = 0;
            }
            tokio::select! {
                biased;
                _ = self.shared.cancel.cancelled() => return Disconnect::Close,
                io = drive(ws, &mut self.out, skip_read) => match io {
                    Io::Read(frame) => {
                        last_heard = Instant::now();
                        reads_in_row += 1;
                        match frame {
                            Some(Ok(msg)) => {
                                if let Some(end) = self.on_ws_message(msg) {
                                    return end;
                                }
                            }
                            Some(Err(e)) => {
                                return Disconnect::Dropped(format!("read failed: {e}"))
                            }
                            None => return Disconnect::Dropped(connection::close_reason(None)),
                        }
                    }
                    Io::WriteFailed(e) => return Disconnect::Dropped(format!("write failed: {e}")),
                },
                Some(s) = self.streams.pokes_rx.recv() => self.streams.ready.push_back(s),
                _ = std::future::ready(()), if room && !self.streams.ready.is_empty() => {
                    self.stream_turn();
                }
                cmd = self.inbox.recv(), if room && self.requests.len() < max_pending => match cmd {
                    Some(cmd) => self.on_command(cmd),
                    None => return Disconnect::Close,
                },
                _ = sleep_until(deadline) => {
                    for entry in self.requests.expire(Instant::now().into_std()) {
                        entry.timed_out();
                    }
                }
                _ = tick(&mut ping) => {
                    self.out.push(WsMessage::Ping(Bytes::new()));
                    for session in self.sessions.overdue() {
                        self.ask_snapshot(session);
                    }
                }
                _ = sleep_until(receipt_due) => self.receipt(),
                _ = tokio::time::sleep_until(last_heard + idle) => {
                    return Disconnect::Dropped(format!("nothing heard from the hub for {idle:?}"));
                }
            }
        }
    }

    /// Gives one ready stream its turn: data within its credit, then its end, credit, accept
    /// or reset.
    fn stream_turn(&mut self) {
        let Some(s) = self.streams.ready.pop_front() else {
            return;
        };
        let max_frame = usize::try_from(self.limits.max_frame_bytes).unwrap_or(usize::MAX);
        let max_chunk = if max_frame > DATA_HEADER_LEN {
            MAX_CHUNK.min(max_frame - DATA_HEADER_LEN)
        } else {
            MAX_CHUNK
        };
        let enc = self.opts.encoding;
        let out = &mut self.out;
        let more = self
            .streams
            .process(&s, max_chunk, STREAM_TURN_FRAMES, &mut |o| match o {
                Out::Frame(f) => out.push(connection::encode(enc, &f)),
                Out::Data(b) => out.push(WsMessage::Binary(b)),
            });
        if more {
            self.streams.ready.push_back(s);
        }
    }

    /// Checks a hub frame's `seq`; `false` for a frame already seen (replayed after a
    /// resume), which is dropped.
    fn check_seq(&mut self, seq: u64) -> bool {
        if let Some(last) = self.last_seq {
            if seq <= last {
                tracing::trace!(seq, last, "frame already seen: dropped");
                return false;
            }
            if seq != last.wrapping_add(1) {
                tracing::warn!(seq, last, "the hub's sequence numbers skipped");
            }
        }
        self.last_seq = Some(seq);
        if self.resumable && self.sent.seen(Instant::now()) {
            self.receipt();
        }
        true
    }

    /// Confirms to the hub every frame received so far.
    fn receipt(&mut self) {
        self.sent.receipted();
        if let Some(seq) = self.last_seq {
            let msg = connection::encode(self.opts.encoding, &ClientFrame::Received { seq });
            self.out.push(msg);
        }
    }

    /// Handles one WebSocket message; `Some` ends the connection.
    fn on_ws_message(&mut self, msg: WsMessage) -> Option<Disconnect> {
        if let WsMessage::Close(frame) = &msg {
            return Some(Disconnect::Dropped(connection::close_reason(
                frame.as_ref(),
            )));
        }
        if let WsMessage::Binary(b) = &msg {
            if is_data_frame(b) {
                match DataFrame::decode(b.clone()) {
                    Ok(frame) => {
                        self.check_seq(frame.seq);
                        self.streams.on_data(frame);
                    }
                    Err(e) => tracing::warn!(error = %e, "undecodable data frame, ignored"),
                }
                return None;
            }
        }
        let (seq, frame) = match connection::decode(&msg)? {
            Ok(decoded) => decoded,
            Err(e) => {
                tracing::warn!(error = %e, "undecodable frame from the hub, ignored");
                return None;
            }
        };
        if !self.check_seq(seq) {
            return None;
        }
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
                        PendingKind::Provide(service, methods) => {
                            self.provided = Some((service.clone(), methods.clone()));
                        }
                        PendingKind::Unprovide => self.provided = None,
                        PendingKind::SessionLeave(name) => {
                            self.sessions.end(name, SessionEnd::Left);
                        }
                        PendingKind::Subscribe(service, topic) => {
                            let feed = self.feeds.open(service.clone(), topic.clone());
                            // If the caller is gone, the feed is dropped and unsubscribes.
                            entry.answer(Ok(Answer::Feed(feed)));
                            return None;
                        }
                        PendingKind::Unsubscribe(service, topic) => {
                            self.feeds.end(service, topic, FeedEnd::Unsubscribed);
                        }
                        PendingKind::Ack
                        | PendingKind::SessionJoin
                        | PendingKind::Plain
                        | PendingKind::Call
                        | PendingKind::OpenStream(_) => {}
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
            ServerFrame::MemberAway { room, id } => {
                self.emit(ClientEvent::MemberAway { room, id });
            }
            ServerFrame::MemberBack { room, id } => {
                self.emit(ClientEvent::MemberBack { room, id });
            }
            ServerFrame::PeerAway { id } => self.emit(ClientEvent::PeerAway { id }),
            ServerFrame::PeerBack { id } => self.emit(ClientEvent::PeerBack { id }),
            ServerFrame::Received { seq } => self.sent.confirmed(seq),
            ServerFrame::SessionState(st) => {
                let req = st.req;
                if let Assembled::Joined(name, view) = self.sessions.chunk(st, req.is_some()) {
                    let entry = req.and_then(|r| self.requests.complete(r));
                    match (entry, self.weak_tx.upgrade()) {
                        (Some(entry), Some(tx)) => {
                            let s = self.sessions.open(name, self.id.clone(), *view, tx);
                            entry.answer(Ok(Answer::Session(Box::new(s))));
                        }
                        _ => tracing::debug!(session = %name, "a snapshot nobody waits for"),
                    }
                }
            }
            ServerFrame::SessionEvent {
                session,
                rev,
                by,
                change,
            } => {
                if self.sessions.event(&session, rev, by, change) {
                    self.ask_snapshot(session);
                }
            }
            ServerFrame::ResumeRejected { reason, message } => {
                tracing::info!(%reason, "the hub could not resume the session: {message}");
                self.emit(ClientEvent::Resynced { reason, message });
            }
            ServerFrame::CallResult { req, payload } => {
                if let Some(entry) = self.requests.complete(req) {
                    entry.answer(Ok(Answer::Result(payload)));
                } else {
                    tracing::debug!(req, "result for a call that is no longer pending");
                }
            }
            ServerFrame::Invoke(i) => {
                let call = i.call;
                let inv = Invocation {
                    call,
                    from: i.from,
                    service: i.service,
                    method: i.method,
                    payload: i.payload,
                    replier: Replier {
                        tx: self.weak_tx.clone(),
                        generation: self.generation,
                    },
                };
                if let Err(why) = services::offer(&self.shared.invocations, inv) {
                    tracing::warn!(call, "{why}");
                    self.queue(&ClientFrame::Respond(Respond {
                        call,
                        outcome: Err(why),
                    }));
                }
            }
            ServerFrame::Publication(p) => {
                if let Delivered::Unsubscribe(service, topic) = self.feeds.deliver(p) {
                    self.queue(&ClientFrame::Unsubscribe {
                        service,
                        topic,
                        req: None,
                    });
                }
            }
            ServerFrame::TopicEnded {
                service,
                topic,
                reason,
            } => self.feeds.end(&service, &topic, FeedEnd::Topic(reason)),
            ServerFrame::StreamRequest(r) => {
                if let Some(reject) = self.streams.offered(r) {
                    self.queue(&reject);
                }
            }
            ServerFrame::StreamAccepted {
                req,
                stream,
                window,
            } => match self.requests.complete(req) {
                Some(entry) => {
                    let PendingKind::OpenStream(peer) = &entry.kind else {
                        tracing::warn!(req, "stream_accepted answers a request that is no open");
                        return None;
                    };
                    let s = self.streams.opened(stream, peer.clone(), window);
                    // If the caller is gone, the stream is dropped here and resets itself.
                    entry.answer(Ok(Answer::Stream(s)));
                }
                None => self.queue(&ClientFrame::StreamReset {
                    stream,
                    reason: "the open request was cancelled".into(),
                }),
            },
            ServerFrame::StreamCredit { stream, bytes } => self.streams.on_credit(stream, bytes),
            ServerFrame::StreamEnd { stream } => self.streams.on_end(stream),
            ServerFrame::StreamReset {
                stream,
                code,
                reason,
            } => self.streams.on_reset(stream, code, reason),
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

    /// Asks the hub for a fresh snapshot of a session this client is in: a join of a member
    /// is answered with one (no `req`: a resync for the live session) and the events after it.
    fn ask_snapshot(&mut self, session: peermesh_proto::SessionName) {
        self.queue(&ClientFrame::SessionJoin {
            session: Some(session),
            mode: None,
            req: None,
        });
    }

    /// Queues a frame for the socket.
    fn queue(&mut self, frame: &ClientFrame) {
        let msg = connection::encode(self.opts.encoding, frame);
        self.push(frame, msg);
    }

    /// Queues an encoded frame, remembering it until the hub confirms it if it counts.
    fn push(&mut self, frame: &ClientFrame, msg: WsMessage) {
        if self.resumable && resend::counts(frame) {
            self.sent.sent(&msg);
        }
        self.out.push(msg);
    }

    /// Queues what a command asks for.
    fn on_command(&mut self, cmd: Command) {
        let (op, reply) = match cmd {
            Command::PendingCount(tx) => {
                let _ = tx.send(self.requests.len());
                return;
            }
            Command::StreamCount(tx) => {
                let _ = tx.send(self.streams.len());
                return;
            }
            Command::Request { op, reply } => (op, reply),
        };
        let unanswered = match op {
            Op::Reply {
                ack_id,
                payload,
                generation,
            } => Some((
                generation,
                ClientFrame::Reply(Reply { ack_id, payload }),
                "the message arrived on an earlier connection; its acknowledgement is gone",
            )),
            Op::Respond {
                call,
                outcome,
                generation,
            } => Some((
                generation,
                ClientFrame::Respond(Respond { call, outcome }),
                "the call arrived on an earlier connection; the hub forgot it",
            )),
            Op::Emit {
                to,
                event,
                payload,
                ack: None,
                answer: false,
            } => Some((
                None,
                build_frame(
                    Op::Emit {
                        to,
                        event,
                        payload,
                        ack: None,
                        answer: false,
                    },
                    0,
                ),
                "",
            )),
            other => {
                return self.on_request(other, reply);
            }
        };
        if let Some((generation, frame, stale)) = unanswered {
            if generation.is_some_and(|g| g != self.generation) {
                let _ = reply.send(Err(ClientError::ConnectionLost(stale.into())));
                return;
            }
            let msg = connection::encode(self.opts.encoding, &frame);
            if let Err(e) = self.check_size(&msg) {
                let _ = reply.send(Err(e));
                return;
            }
            self.push(&frame, msg);
            let _ = reply.send(Ok(Answer::Done));
        }
    }

    /// Queues an operation that waits for the hub's answer.
    fn on_request(&mut self, op: Op, reply: oneshot::Sender<Result<Answer, ClientError>>) {
        let now = Instant::now();
        let request_timeout = self.opts.request_timeout;
        let (kind, timeout) = match &op {
            Op::Emit { ack: Some(t), .. } => (PendingKind::Ack, *t),
            Op::Join(room) => (PendingKind::Join(room.clone()), request_timeout),
            Op::Leave(room) => (PendingKind::Leave(room.clone()), request_timeout),
            Op::OpenStream { to, .. } => {
                // The target has the hub's open timeout to answer; wait a little longer.
                let hub = Duration::from_millis(self.limits.stream_open_timeout_ms);
                let t = request_timeout.max(hub + Duration::from_secs(2));
                (PendingKind::OpenStream(to.clone()), t)
            }
            Op::Call { timeout, .. } => (PendingKind::Call, *timeout),
            Op::Provide { service, methods } => (
                PendingKind::Provide(service.clone(), methods.clone()),
                request_timeout,
            ),
            Op::Unprovide => (PendingKind::Unprovide, request_timeout),
            Op::SessionJoin { .. } => (PendingKind::SessionJoin, request_timeout),
            Op::SessionLeave(name) => (PendingKind::SessionLeave(name.clone()), request_timeout),
            Op::Subscribe { service, topic } => (
                PendingKind::Subscribe(service.clone(), topic.clone()),
                request_timeout,
            ),
            Op::Unsubscribe { service, topic } => (
                PendingKind::Unsubscribe(service.clone(), topic.clone()),
                request_timeout,
            ),
            _ => (PendingKind::Plain, request_timeout),
        };
        let entry = PendingEntry {
            kind,
            timeout,
            reply,
        };
        let req = self.requests.insert((now + timeout).into_std(), entry);
        let op = match op {
            // The window this connection grants (the option, within the hub's limit).
            Op::OpenStream { to, meta, .. } => Op::OpenStream {
                to,
                meta,
                window: self.streams.window,
            },
            other => other,
        };
        let frame = build_frame(op, req);
        let msg = connection::encode(self.opts.encoding, &frame);
        if let Err(e) = self.check_size(&msg) {
            if let Some(entry) = self.requests.complete(req) {
                entry.answer(Err(e));
            }
            return;
        }
        // If the write fails, the frame is sent again after a resume, or the entry fails with
        // the other pending requests when the session is lost.
        self.push(&frame, msg);
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
        // A window beyond the hub's largest would be refused: grant at most that.
        self.streams.window = match w.limits.max_stream_window {
            0 => self.opts.stream_window,
            max => self.opts.stream_window.min(max),
        };
        self.limits = w.limits;
        if !w.resumed {
            self.last_seq = None;
        }
        self.resumable = self.opts.resume && w.resume_grace_ms > 0;
        self.shared
            .registry
            .lock()
            .set_connected(Some(self.id.clone()));
        tracing::debug!(id = %self.id, rooms = self.rooms.len(), "welcome");
    }

    /// Provides this client's service again on a new connection (nobody waits for the `ok`;
    /// a refusal is logged).
    fn provide_again(&mut self) {
        let Some((service, methods)) = self.provided.clone() else {
            return;
        };
        let (reply, rx) = oneshot::channel();
        drop(rx);
        let entry = PendingEntry {
            kind: PendingKind::Plain,
            timeout: self.opts.request_timeout,
            reply,
        };
        let deadline = (Instant::now() + self.opts.request_timeout).into_std();
        let req = self.requests.insert(deadline, entry);
        self.queue(&ClientFrame::Provide(Provide {
            service,
            methods,
            req: Some(req),
        }));
    }

    fn on_drop(&mut self, reason: &str) {
        tracing::info!(reason, "connection to the hub lost");
        self.out.clear();
        self.streams
            .fail_all(&format!("the connection to the hub was lost: {reason}"));
        // A resumable session keeps its requests, feeds and acknowledgements: they carry on
        // after a resume, or fail if the hub resyncs (`session_lost`).
        if !self.resumable {
            self.session_lost(reason);
        }
        self.shared.registry.lock().set_connected(None);
        self.emit(ClientEvent::ConnectionLost {
            reason: reason.to_owned(),
        });
    }

    /// The hub session is gone: what depended on it fails.
    fn session_lost(&mut self, reason: &str) {
        self.generation += 1;
        self.sent.reset();
        self.feeds.end_all(FeedEnd::ConnectionLost);
        self.fail_pending(|| ClientError::ConnectionLost(reason.to_owned()));
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
            resume: self.opts.resume,
            last_seq: self.resumable.then(|| self.last_seq.unwrap_or(0)),
            // A resume ignores them; a fresh session joins them again (a resync).
            sessions: self.sessions.names(),
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
        let count = self.urls.len().max(1);
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
            // One round: every URL once, starting with the hub that was lost (a short cut to a
            // live hub resumes there, with nothing lost), then the others in order.
            let lost = self.shared.current.load(Ordering::Relaxed);
            for step in 0..count {
                let index = (lost + step) % count;
                match self.try_hub(index, attempt).await? {
                    Ok(ws) => return Some(ws),
                    Err(e) if !e.is_retryable() => {
                        self.emit(ClientEvent::Lost {
                            reason: format!("the hub refused to reconnect: {e}"),
                        });
                        return None;
                    }
                    Err(e) => {
                        let url = self.shared.hub_urls.get(index).map_or("", String::as_str);
                        tracing::debug!(attempt, url, error = %e, "reconnect attempt failed");
                        last_error = if count > 1 {
                            format!("{url}: {e}")
                        } else {
                            e.to_string()
                        };
                    }
                }
            }
        }
    }

    /// Opens a connection to the hub at `urls[index]` and takes it up; `None` when the client
    /// stops meanwhile.
    async fn try_hub(
        &mut self,
        index: usize,
        attempt: u32,
    ) -> Option<Result<BoxTransport, ClientError>> {
        let Some(url) = self.urls.get(index).cloned() else {
            return Some(Err(ClientError::InvalidUrl(
                "no hub URL to connect to".into(),
            )));
        };
        let open = connection::open(
            self.connector.clone(),
            url,
            self.opts.encoding,
            self.hello(),
            self.opts.connect_timeout,
        );
        let (ws, welcome) = match self.while_disconnected(open).await? {
            Ok(opened) => opened,
            Err(e) => return Some(Err(e)),
        };
        self.shared.current.store(index, Ordering::Relaxed);
        let was_resumable = self.resumable;
        let resumed = welcome.resumed.then_some(welcome.received);
        self.on_welcome(welcome);
        if resumed.is_none() {
            if was_resumable {
                self.session_lost("the hub could not resume the session");
            }
            self.provide_again();
        }
        let url = self.shared.current_url().to_owned();
        tracing::info!(attempt, url, resumed = resumed.is_some(), "reconnected");
        self.emit(ClientEvent::Reconnected {
            id: self.id.clone(),
            attempt,
            rooms: self.rooms.iter().cloned().collect(),
            url,
        });
        if let Some(received) = resumed {
            let again = self.sent.resend(received);
            let resent = again.len() as u64;
            for m in again {
                self.out.push(m);
            }
            self.emit(ClientEvent::Resumed { resent });
        }
        Some(Ok(ws))
    }

    /// Drives `fut` while answering commands with `NotConnected` (or, for a resumable session,
    /// leaving them queued); `None` when the client stops meanwhile.
    async fn while_disconnected<F: std::future::Future>(&mut self, fut: F) -> Option<F::Output> {
        tokio::pin!(fut);
        loop {
            tokio::select! {
                biased;
                _ = self.shared.cancel.cancelled() => return None,
                out = &mut fut => return Some(out),
                // A resumable session waits: commands stay queued (their senders wait when
                // the queue is full) and go out once the session is back.
                cmd = self.inbox.recv(), if !self.resumable => match cmd {
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
        Command::StreamCount(tx) => {
            let _ = tx.send(0);
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
            answer,
        } => ClientFrame::Emit(Emit {
            to,
            event,
            payload,
            req: answer.then_some(req),
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
        Op::OpenStream { to, meta, window } => ClientFrame::StreamOpen(StreamOpen {
            to,
            meta,
            window,
            req,
        }),
        Op::Provide { service, methods } => ClientFrame::Provide(Provide {
            service,
            methods,
            req: Some(req),
        }),
        Op::Unprovide => ClientFrame::Unprovide { req: Some(req) },
        Op::SessionJoin { session, mode } => ClientFrame::SessionJoin {
            session,
            mode,
            req: Some(req),
        },
        Op::SessionLeave(session) => ClientFrame::SessionLeave {
            session,
            req: Some(req),
        },
        Op::SessionChange { session, op } => ClientFrame::SessionOp {
            session,
            op,
            req: Some(req),
        },
        Op::Call {
            service,
            method,
            payload,
            timeout,
        } => ClientFrame::Call(Call {
            service,
            method,
            payload,
            req,
            timeout_ms: Some(
                u64::try_from(timeout.as_millis())
                    .unwrap_or(u64::MAX)
                    .max(1),
            ),
        }),
        Op::CreateTopic(topic) => ClientFrame::CreateTopic {
            topic,
            req: Some(req),
        },
        Op::DestroyTopic(topic) => ClientFrame::DestroyTopic {
            topic,
            req: Some(req),
        },
        Op::Publish { topic, payload } => ClientFrame::Publish(Publish {
            topic,
            payload,
            req: Some(req),
        }),
        Op::Subscribe { service, topic } => ClientFrame::Subscribe {
            service,
            topic,
            req: Some(req),
        },
        Op::Unsubscribe { service, topic } => ClientFrame::Unsubscribe {
            service,
            topic,
            req: Some(req),
        },
        // Replies and responds are sent without a `req` by `on_command`; a `ping` keeps the
        // frame valid.
        Op::Reply { .. } | Op::Respond { .. } => ClientFrame::Ping { req: Some(req) },
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
