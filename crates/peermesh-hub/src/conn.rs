//! One client connection: the handshake, then one task that owns the socket.
//!
//! ```text
//!            ┌──────────────────── connection task ─────────────────────┐
//!  socket ──►│ read: decode → limits → handle frame → Router ───────────┼──► other mailboxes
//!            │ mailbox (frames + notices) ◄── Router, other connections │
//!  socket ◄──│ write: take mailbox → seq → one flush per batch; pings   │
//!            └──────────────────────────────────────────────────────────┘
//! ```
//!
//! The task owns the connection's private state (pending acks, recent targets, rate limit) and
//! is the only one that changes it; other tasks reach it through its bounded mailbox. One task
//! per connection (not a reader and a writer) keeps an idle connection small and spares every
//! frame a lock on a split socket. When it ends, it unregisters the client, leaves its rooms
//! (telling the other members), tells the clients that sent to it (`peer_left`) and writes the
//! close reason.

mod acks;
mod calls;
mod contacts;
mod rate;
mod resume;
pub(crate) mod writer;

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use peermesh_proto::{
    decode_client, Call, ClientFrame, ClientId, EncodedBody, Encoding, ErrorCode, ErrorFrame,
    Hello, Invoke, Limits, Message as MessageFrame, ResumeRefusal, RoomName, ServerFrame,
    SessionMode, SessionName, Welcome,
};
use tracing::{debug, info, warn};

pub(crate) use self::acks::conn_of;
use self::acks::{AckInsertError, AckTracker};
pub(crate) use self::calls::REMOTE_PROVIDER;
use self::calls::{CallTracker, Ended, HUB_PROVIDER};
use self::contacts::RecentTargets;
use self::rate::TokenBucket;
use self::resume::ResumeBuffer;
use crate::auth::Grant;
use crate::mailbox::{Outbound, Written};
use crate::registry::{
    constant_eq, ConnInfo, ConnShared, Control, MailboxLimits, RegisterError, Takeover,
};
use crate::router::{RouteError, Target};
use crate::services::api::Invocation;
use crate::services::{Route, Service, Services};
use crate::streams::{Outcome, StreamItem, Streams};
use crate::ws::{Message, WebSocket, WsError};
use crate::HubInner;

/// What the HTTP upgrade learned about the connection.
#[derive(Debug, Clone)]
pub(crate) struct Accept {
    pub(crate) addr: SocketAddr,
    pub(crate) ip: String,
    pub(crate) meta: Vec<(String, String)>,
    pub(crate) encoding: Encoding,
    pub(crate) bearer: Option<String>,
    /// Sessions named by the `session` query parameter or the `x-peermesh-session` header.
    pub(crate) sessions: Vec<String>,
}

/// Capacity of a connection's notice queue: enough for every pending ack and every watched
/// target to report at once, plus slack.
/// The close reason of a session drained by a hub shutting down in a cluster (at most 123
/// bytes, the limit of a close frame).
pub(crate) const DRAIN_HINT: &str =
    "server shutting down: reconnect to another hub of the cluster and resume there";

/// The connection number recorded for a contact on another hub of the cluster (real
/// connection numbers start at 1).
const REMOTE: u64 = 0;

fn notice_capacity(hub: &HubInner) -> usize {
    hub.config.max_pending_acks
        + hub.config.max_recent_targets
        + hub.config.max_calls_per_client
        + 64
}

/// Who answers a pending call, and what to release when it ends.
#[derive(Debug)]
enum CallTarget {
    /// The hub's own handler.
    Hub,
    /// Another hub of the cluster.
    Remote,
    /// A client provider: its calls in flight count this call.
    Client(Arc<ConnShared>),
}

impl CallTarget {
    fn release(self) {
        if let CallTarget::Client(p) = self {
            // Only calls that were counted are released, so this never goes below 0.
            let _ = p.calls_in_flight.fetch_update(
                std::sync::atomic::Ordering::AcqRel,
                std::sync::atomic::Ordering::Relaxed,
                |n| n.checked_sub(1),
            );
        }
    }
}

/// Most frames written per flush.
const BATCH: usize = 256;
/// Time allowed to write the final error and close frames.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Runs a WebSocket connection's handshake, then spawns its session as a task of its own.
///
/// The session's task holds the session's future and nothing else: the handshake's state (and
/// the upgrade's) is freed with this task, so an idle connection's memory is mostly that one
/// future.
pub(crate) async fn serve_socket(ws: WebSocket, accept: Accept, hub: Arc<HubInner>) {
    let tasks = hub.tasks.clone();
    if let Some(session) = Box::pin(handshake(ws, accept, hub)).await {
        tasks.spawn(Box::new(session).run());
    }
}

/// Waits for `hello`, checks it, registers the client: the session to run, or `None` if the
/// connection was refused or ended.
async fn handshake(ws: WebSocket, accept: Accept, hub: Arc<HubInner>) -> Option<Session> {
    let mut pre = PreHello {
        ws,
        seq: 0,
        enc: accept.encoding,
        hub,
        bearer: accept.bearer.clone(),
    };
    let (hello, grant) = pre.await_hello().await?;
    pre.establish(hello, grant, accept).await
}

/// The next message of the socket; never ready without one.
async fn next_message(ws: &mut Option<WebSocket>) -> Option<Result<Message, WsError>> {
    match ws {
        Some(ws) => ws.recv().await,
        None => std::future::pending().await,
    }
}

/// Stream frames that belong to a stream already opened: exempt from the rate limit.
fn is_stream_followup(frame: &ClientFrame) -> bool {
    matches!(
        frame,
        ClientFrame::StreamAccept { .. }
            | ClientFrame::StreamReject { .. }
            | ClientFrame::StreamCredit { .. }
            | ClientFrame::StreamEnd { .. }
            | ClientFrame::StreamReset { .. }
    )
}

fn too_large_message(len: usize, max: usize) -> String {
    format!("the frame has {len} bytes; this hub accepts at most {max} (max_frame_bytes)")
}

/// A connection before its handshake finished: writes go straight to the socket.
struct PreHello {
    ws: WebSocket,
    seq: u64,
    enc: Encoding,
    hub: Arc<HubInner>,
    bearer: Option<String>,
}

impl PreHello {
    async fn send(&mut self, frame: &ServerFrame) -> bool {
        self.seq += 1;
        let bytes = EncodedBody::encode(self.enc, frame).to_frame(self.seq);
        let msg = match self.enc {
            Encoding::Json => Message::Text(bytes),
            Encoding::MsgPack => Message::Binary(bytes),
        };
        self.ws.send(msg).await.is_ok()
    }

    async fn error(&mut self, code: ErrorCode, message: String, req: Option<u64>) -> bool {
        self.hub.router.metrics.inc_error(code);
        self.send(&ServerFrame::Error(ErrorFrame::new(code, message, req)))
            .await
    }

    /// Refuses the handshake: an error frame, then a close frame with the same reason.
    async fn refuse(&mut self, code: ErrorCode, message: String) {
        debug!(%code, %message, "handshake refused");
        let fut = async {
            if self.error(code, message.clone(), None).await {
                let _ = self.ws.send(writer::close_frame(code, &message)).await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), fut).await;
    }

    /// Waits for `hello`, answering anything else with `hello_required`, then checks the
    /// version and the token. `None` when the connection ended or was refused.
    async fn await_hello(&mut self) -> Option<(Hello, Option<Grant>)> {
        let deadline = tokio::time::Instant::now() + self.hub.config.hello_timeout();
        let hello = loop {
            let msg = tokio::select! {
                biased;
                _ = self.hub.shutdown.cancelled() => {
                    self.refuse(ErrorCode::ShuttingDown, "server shutting down".into()).await;
                    return None;
                }
                _ = tokio::time::sleep_until(deadline) => {
                    let secs = self.hub.config.hello_timeout().as_secs_f64();
                    let m = format!("no `hello` within {secs} s of connecting");
                    self.refuse(ErrorCode::HelloRequired, m).await;
                    return None;
                }
                m = self.ws.recv() => m,
            };
            let (enc, bytes): (Encoding, bytes::Bytes) = match msg {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return None,
                Some(Ok(Message::Text(t))) => (Encoding::Json, t),
                Some(Ok(Message::Binary(b))) => (Encoding::MsgPack, b),
                Some(Ok(_)) => continue,
            };
            self.hub.router.metrics.inc_frames_in(1);
            self.hub.router.metrics.inc_bytes_in(bytes.len() as u64);
            if bytes.len() > self.hub.config.max_frame_bytes {
                let m = too_large_message(bytes.len(), self.hub.config.max_frame_bytes);
                self.error(ErrorCode::FrameTooLarge, m, None).await;
                continue;
            }
            match decode_client(enc, &bytes) {
                Ok(ClientFrame::Hello(h)) => break h,
                Ok(other) => {
                    let m = format!(
                        "the first frame must be `hello`, not `{}`",
                        other.type_name()
                    );
                    self.error(ErrorCode::HelloRequired, m, other.req()).await;
                }
                Err(e) if e.code == ErrorCode::InvalidId => {
                    self.refuse(e.code, e.message).await;
                    return None;
                }
                Err(e) => {
                    self.error(e.code, e.message, e.req).await;
                }
            }
        };
        let version_ok = semver::Version::parse(&hello.version)
            .map(|v| self.hub.version_req.matches(&v))
            .unwrap_or(false);
        if !version_ok {
            let m = format!(
                "client protocol version {:?} is not supported: this hub accepts {} \
                 (it speaks {})",
                hello.version,
                self.hub.config.supported_versions,
                peermesh_proto::PROTOCOL_VERSION
            );
            self.refuse(ErrorCode::VersionUnsupported, m).await;
            return None;
        }
        let hub = self.hub.clone();
        let grant = match &hub.auth {
            None => None,
            Some(auth) => {
                let Some(token) = hello.token.clone().or_else(|| self.bearer.clone()) else {
                    let m = "this hub requires a token: put a JWT in hello's `token` field or \
                             an `Authorization: Bearer` header";
                    self.refuse(ErrorCode::Unauthorized, m.into()).await;
                    return None;
                };
                match auth.verify(&token) {
                    Ok(g) => Some(g),
                    Err(m) => {
                        self.refuse(ErrorCode::Unauthorized, m).await;
                        return None;
                    }
                }
            }
        };
        Some((hello, grant))
    }

    /// Picks the id, registers the client, queues `welcome`, joins the hello's rooms and
    /// starts the writer.
    async fn establish(
        mut self,
        hello: Hello,
        grant: Option<Grant>,
        accept: Accept,
    ) -> Option<Session> {
        let hub = self.hub.clone();
        let cfg = &hub.config;
        let id = match (&grant, hello.id) {
            (Some(g), Some(id)) if g.sub != id => {
                let m = format!(
                    "the token was issued to {:?}, not to {:?}",
                    g.sub.as_str(),
                    id.as_str()
                );
                self.refuse(ErrorCode::Unauthorized, m).await;
                return None;
            }
            (_, Some(id)) => id,
            (Some(g), None) => g.sub.clone(),
            (None, None) => match ClientId::new(&uuid::Uuid::new_v4().to_string()) {
                Ok(id) => id,
                Err(e) => {
                    self.refuse(ErrorCode::Internal, e.to_string()).await;
                    return None;
                }
            },
        };
        let mut rooms: Vec<RoomName> = Vec::new();
        for room in hello.rooms {
            if !rooms.contains(&room) {
                rooms.push(room);
            }
        }
        if rooms.len() > cfg.max_rooms_per_client {
            let m = format!(
                "hello asks for {} rooms; a client may be in at most {} (max_rooms_per_client)",
                rooms.len(),
                cfg.max_rooms_per_client
            );
            self.refuse(ErrorCode::TooManyRooms, m).await;
            return None;
        }
        if let Some(g) = &grant {
            if let Some(r) = rooms.iter().find(|r| !g.may_join(r)) {
                let m = format!("the token does not allow joining room {:?}", r.as_str());
                self.refuse(ErrorCode::Forbidden, m).await;
                return None;
            }
        }

        let mut sessions: Vec<SessionName> = Vec::new();
        for s in &accept.sessions {
            match SessionName::new(s) {
                Ok(name) => sessions.push(name),
                Err(e) => {
                    self.refuse(ErrorCode::InvalidField, format!("`session`: {e}"))
                        .await;
                    return None;
                }
            }
        }
        sessions.extend(hello.sessions.iter().cloned());
        sessions.dedup();
        let mut seen = HashSet::new();
        sessions.retain(|s| seen.insert(s.clone()));
        if sessions.len() > cfg.max_sessions_per_client {
            let m = format!(
                "the handshake asks for {} sessions; a client may be in at most {} \
                 (max_sessions_per_client)",
                sessions.len(),
                cfg.max_sessions_per_client
            );
            self.refuse(ErrorCode::TooManySessions, m).await;
            return None;
        }
        // A resume: hand the socket to the session's task, or learn why it cannot be.
        let mut refusal = None;
        // A session handed over by another hub of the cluster.
        let mut handoff: Option<crate::cluster::Handoff> = None;
        if let (Some(secret), Some(last_seq)) = (hello.secret.as_deref(), hello.last_seq) {
            match hub.registry().client(&id) {
                Some(old) if old.resumable && constant_eq(secret, &old.secret) => {
                    if old.encoding != self.enc {
                        refusal = Some(ResumeRefusal::Encoding);
                    } else if last_seq < old.lost_upto.load(std::sync::atomic::Ordering::Acquire) {
                        refusal = Some(ResumeRefusal::Overflow);
                    } else {
                        let takeover = Takeover {
                            ws: self.ws,
                            last_seq,
                            addr: accept.addr,
                        };
                        debug!(id = %id, last_seq, "resume: handing the socket to the session");
                        if !old.control(Control::Resume(Box::new(takeover))) {
                            // The session is ending: the client's next attempt learns why.
                            debug!(id = %id, "resume notice refused: the session is ending");
                        }
                        return None;
                    }
                }
                // Not resumable with this secret: the usual rules (replace, or `id_taken`).
                Some(old) if constant_eq(secret, &old.secret) => {
                    refusal = Some(ResumeRefusal::Expired);
                }
                Some(_) => {}
                None => {
                    let elsewhere =
                        hub.router
                            .cluster
                            .as_ref()
                            .and_then(|bp| match bp.locate(&id) {
                                crate::cluster::Remote::On(node) => Some((bp.clone(), node)),
                                crate::cluster::Remote::Nowhere => None,
                            });
                    match elsewhere {
                        // The session lives on another hub: ask it to hand the session over.
                        Some((bp, node)) => {
                            match bp.migrate(&node, &id, secret, last_seq, self.enc).await {
                                Ok(h) if bp.can_catch_up(&h) => handoff = Some(h),
                                // More room emits passed than this hub keeps while the
                                // session moved: a fresh session, never a silent gap.
                                Ok(_) => refusal = Some(ResumeRefusal::Overflow),
                                Err(r) => refusal = Some(r),
                            }
                        }
                        None => refusal = Some(hub.registry().why_not_resumable(&id, secret)),
                    }
                }
            }
        }
        let resumable = (hello.resume || handoff.is_some()) && cfg.resume_grace_ms > 0;

        let conn_no = hub
            .next_conn
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Some(slot) = hub.registry().alloc_slot() else {
            let m = "the hub has no free connection slot (at most 2,097,152 connections)";
            self.refuse(ErrorCode::ServerFull, m.into()).await;
            return None;
        };
        let secret = match &handoff {
            Some(h) => h.secret.clone(),
            None => format!("{:032x}", rand::random::<u128>()),
        };
        if let Some(h) = &handoff {
            rooms = h.rooms.clone();
        }
        let info = ConnInfo {
            addr: accept.addr,
            ip: accept.ip,
            meta: accept.meta,
            version: hello.version,
            connected_at: std::time::SystemTime::now(),
        };
        let conn = Arc::new(ConnShared::new(
            conn_no,
            slot,
            id.clone(),
            self.enc,
            secret.clone(),
            info,
            MailboxLimits {
                frames: cfg.outbound_queue_frames,
                bytes: cfg.outbound_queue_bytes,
                notices: notice_capacity(&hub),
            },
            resumable,
        ));
        // Welcome goes into the queue before the client is reachable, so it is always first
        // (a session handed over by another hub writes its resumed welcome and replay below).
        let welcome = welcome_frame(&hub, &conn, rooms.clone(), None);
        if handoff.is_none() && conn.send(EncodedBody::encode(self.enc, &welcome)).is_err() {
            hub.registry().free_slot(slot);
            return None;
        }
        if let Some(reason) = refusal {
            let message = match reason {
                ResumeRefusal::Overflow => {
                    "the frames you missed outgrew the hub's resume \
                     buffer (resume_buffer_bytes); this is a fresh session: resync your state"
                }
                ResumeRefusal::BadSecret => {
                    "the secret does not match that session; this is \
                     a fresh session"
                }
                ResumeRefusal::Encoding => {
                    "the session used another encoding; this is a \
                     fresh session: resume with the same encoding"
                }
                _ => {
                    "the resume window ended (or the hub restarted); this is a fresh session: \
                     resync your state"
                }
            };
            let f = ServerFrame::ResumeRejected {
                reason,
                message: message.into(),
            };
            let _ = conn.send(EncodedBody::encode(self.enc, &f));
        }
        if let Some(bp) = &hub.router.cluster {
            match bp.acquire(&id).await {
                Ok(peermesh_cluster::Claim::Won) => {}
                Ok(peermesh_cluster::Claim::Taken { node }) => {
                    hub.registry().free_slot(slot);
                    let m = format!(
                        "client id {:?} is connected to hub {node:?} of this cluster; pick \
                         another id, or close that connection first",
                        id.as_str()
                    );
                    self.refuse(ErrorCode::IdTaken, m).await;
                    return None;
                }
                Err(e) => {
                    hub.registry().free_slot(slot);
                    warn!(id = %id, error = %e, "cannot claim a client id in the cluster");
                    let m = format!(
                        "the hub cannot reach its cluster to register your id ({e}); try again \
                         shortly, or connect to another hub"
                    );
                    self.refuse(ErrorCode::ClusterUnavailable, m).await;
                    return None;
                }
            }
        }
        let registered = hub.registry().register(
            &conn,
            hello.secret.as_deref(),
            cfg.duplicate_id,
            cfg.max_clients,
        );
        if registered.is_err() {
            if let Some(bp) = &hub.router.cluster {
                bp.release(&id).await;
            }
        }
        let replaced = match registered {
            Ok(r) => r,
            Err(RegisterError::IdTaken) => {
                hub.registry().free_slot(slot);
                let m = format!(
                    "client id {:?} is already connected; pick another id, or present the \
                     secret from its welcome to replace that connection",
                    id.as_str()
                );
                self.refuse(ErrorCode::IdTaken, m).await;
                return None;
            }
            Err(RegisterError::ServerFull) => {
                hub.registry().free_slot(slot);
                let m = format!(
                    "the hub has {} clients, its limit (max_clients)",
                    cfg.max_clients
                );
                self.refuse(ErrorCode::ServerFull, m).await;
                return None;
            }
        };
        if let Some(old) = &replaced {
            info!(id = %id, "a new connection replaces the old one");
            old.close(
                ErrorCode::Replaced,
                "a newer connection with the same client id replaced this one",
            );
        }
        hub.router.metrics.inc_connections();
        debug!(id = %id, conn = conn_no, enc = self.enc.as_str(), "client connected");

        let now = Instant::now();
        let mut session = Session {
            acks: AckTracker::new(slot, cfg.max_pending_acks, rand::random()),
            calls: CallTracker::new(slot, cfg.max_calls_per_client, rand::random()),
            watched: None,
            provided: None,
            contacts: RecentTargets::new(
                cfg.max_recent_targets,
                Duration::from_millis(cfg.recent_target_ttl_ms),
            ),
            rate: TokenBucket::new(cfg.rate_per_sec, cfg.rate_burst, now),
            streams: Streams::new(
                cfg.max_streams_per_client,
                cfg.max_stream_window_bytes,
                cfg.stream_open_timeout(),
                hub.router.metrics.clone(),
                hub.router
                    .cluster
                    .clone()
                    .map(|bp| crate::streams::Relayer {
                        bp,
                        client: id.clone(),
                        conn: conn_no,
                    }),
            ),
            last_seen: now,
            rate_notice: None,
            grant: grant.map(Box::new),
            resume: resumable.then(|| Box::new(ResumeBuffer::new(cfg.resume_buffer_bytes))),
            takeover: None,
            migration: None,
            migrated: false,
            migrated_to: None,
            draining: false,
            rtt: RttProbe::default(),
            pending_joins: sessions,
            ws: Some(self.ws),
            framer: writer::Framer::new(self.seq),
            ping_every: cfg.heartbeat_interval(),
            conn,
            hub: hub.clone(),
        };
        if let Some(h) = handoff {
            // A session handed over by another hub: carry on its numbering and its kept
            // frames, say `welcome` (resumed) and replay what the client missed; its rooms
            // are its rooms still (no one is told it joined).
            let first = h.last_written + 1 - h.frames.len() as u64;
            session.framer = writer::Framer::new(h.last_written);
            if let Some(r) = session.resume.as_mut() {
                r.in_count = h.in_count;
                for (i, f) in h.frames.iter().enumerate() {
                    r.keep(first + i as u64, f.clone());
                }
            }
            session.conn.rooms.lock().extend(rooms.iter().cloned());
            if let Some(bp) = &hub.router.cluster {
                // Members of its rooms here, with the room emits it missed between the two
                // hubs queued first (after the replay below, which goes out directly).
                match bp.install_rooms(&hub.router, &session.conn, &rooms, &h) {
                    Ok(n) if n > 0 => debug!(id = %id, n, "room emits replayed after a move"),
                    Ok(_) => {}
                    Err(gap) => {
                        // Evicted between the check above and now: the client cannot have
                        // them, so its session cannot be resumed again without saying so.
                        warn!(id = %id, origin = %gap.origin, "room emits lost in a move; the next resume of this session is refused");
                        session
                            .conn
                            .lost_upto
                            .store(u64::MAX, std::sync::atomic::Ordering::Release);
                        session.conn.close(
                            ErrorCode::SlowConsumer,
                            "room traffic outran the hub's history while your session moved; \
                             reconnect for a fresh session and resync",
                        );
                    }
                }
                for room in &rooms {
                    bp.joined(room, &session.conn.client, None);
                }
                session.resubscribe(bp, &h);
            }
            let welcome = welcome_frame(&hub, &session.conn, rooms, Some(h.in_count));
            let replayed = h.frames.len();
            if let Some(ws) = session.ws.as_mut() {
                if let Err(e) = send_resumed(ws, self.enc, &welcome, h.frames).await {
                    debug!(id = %id, error = %e, "resume from another hub: writing the replay failed");
                }
            }
            info!(id = %id, replayed, "resumed a session handed over by another hub");
            if let Some(bp) = &hub.router.cluster {
                // Messages that came for the client while its session was on its way.
                bp.arrived(&hub.router, &id);
                bp.sessions_arrived(&hub.router, &session.conn, &h.sessions);
            }
            return Some(session);
        }
        for room in rooms {
            // No request to answer: the welcome already listed the rooms.
            session.join_room(room, None);
        }
        Some(session)
    }
}

/// Bytes of WebSocket messages.
fn kept_bytes<'a>(frames: impl Iterator<Item = &'a Message>) -> usize {
    frames
        .map(|f| match f {
            Message::Text(t) => t.len(),
            Message::Binary(b) => b.len(),
            _ => 0,
        })
        .sum()
}

/// Writes a resumed `welcome` (outside the sequence: `seq` 0) and then the frames the client
/// missed, as they were numbered.
async fn send_resumed(
    ws: &mut WebSocket,
    enc: Encoding,
    welcome: &ServerFrame,
    replay: Vec<Message>,
) -> Result<(), WsError> {
    let body = EncodedBody::encode(enc, welcome).to_frame(0);
    let first = match enc {
        Encoding::Json => Message::Text(body),
        Encoding::MsgPack => Message::Binary(body),
    };
    for m in std::iter::once(first).chain(replay) {
        ws.feed(m).await?;
    }
    ws.flush().await
}

/// The `welcome` of a connection: a fresh one, or (with `received`) a resumed one.
fn welcome_frame(
    hub: &HubInner,
    conn: &ConnShared,
    rooms: Vec<RoomName>,
    received: Option<u64>,
) -> ServerFrame {
    let cfg = &hub.config;
    ServerFrame::Welcome(Welcome {
        id: conn.client.clone(),
        secret: conn.secret.clone(),
        version: peermesh_proto::PROTOCOL_VERSION.to_string(),
        heartbeat_ms: cfg.heartbeat_interval_ms,
        rooms,
        limits: Limits {
            max_frame_bytes: cfg.max_frame_bytes as u64,
            max_rooms_per_client: cfg.max_rooms_per_client as u64,
            rate_per_sec: u64::from(cfg.rate_per_sec),
            rate_burst: u64::from(cfg.rate_burst),
            max_pending_acks: cfg.max_pending_acks as u64,
            max_ack_timeout_ms: cfg.max_ack_timeout_ms,
            max_streams: cfg.max_streams_per_client as u64,
            max_stream_window: cfg.max_stream_window_bytes,
            stream_open_timeout_ms: cfg.stream_open_timeout_ms,
            max_calls: cfg.max_calls_per_client as u64,
            max_call_timeout_ms: cfg.max_call_timeout_ms,
            max_subscriptions: cfg.max_subscriptions_per_client as u64,
        },
        resumed: received.is_some(),
        received: received.unwrap_or(0),
        resume_grace_ms: if conn.resumable {
            cfg.resume_grace_ms
        } else {
            0
        },
    })
}

/// Pings sent at connect (then on every heartbeat) to measure the round-trip time.
#[derive(Debug, Default)]
struct RttProbe {
    /// When the ping in flight was sent.
    sent: Option<Instant>,
    /// Samples taken so far.
    samples: u32,
    /// A quick ping is due (the handshake's first few).
    due: bool,
}

/// Pings of the join handshake before the RTT counts as measured.
const RTT_SAMPLES: u32 = 3;
/// Longest wait for those pings before handshake sessions are joined anyway.
const RTT_WAIT: Duration = Duration::from_secs(1);

/// How a connected phase ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The socket dropped: a resumable client is now away.
    Dropped,
    /// The client left, or the connection was closed for good.
    Gone,
}

/// What became of a resume.
enum Resumed {
    /// The new socket carries the session.
    Yes,
    /// The frames it needs are gone: the session ends (the client learns why on its next try).
    Refused,
}

/// A connection after its handshake.
struct Session {
    hub: Arc<HubInner>,
    conn: Arc<ConnShared>,
    /// Boxed, as the resume buffer: most connections have neither, and the session stays
    /// small.
    grant: Option<Box<Grant>>,
    /// The socket; `None` while the client is away.
    ws: Option<WebSocket>,
    /// For a resumable client: the frames kept and the receipts owed.
    resume: Option<Box<ResumeBuffer>>,
    /// A socket waiting to resume this session.
    takeover: Option<Box<Takeover>>,
    /// Another hub of the cluster asks for this session (the client resumed there).
    migration: Option<Box<crate::cluster::Migration>>,
    /// The session moved to another hub: it ends here without telling anyone it left.
    migrated: bool,
    /// The hub the session moved to.
    migrated_to: Option<String>,
    /// The hub is shutting down in a cluster: the session waits to move to another hub.
    draining: bool,
    /// Round-trip measurement by WebSocket pings.
    rtt: RttProbe,
    /// Sessions of the handshake, joined once the round-trip time is measured.
    pending_joins: Vec<SessionName>,
    framer: writer::Framer,
    ping_every: Duration,
    acks: AckTracker,
    /// Calls this connection made and waits for.
    calls: CallTracker<CallTarget>,
    /// Providers this connection is registered with as a call watcher (`call_watchers`).
    /// Boxed at the first call: most connections never call a service, and an empty
    /// `HashSet` inline costs 48 bytes of every session against 8.
    #[allow(clippy::box_collection)]
    watched: Option<Box<HashSet<u64>>>,
    /// The service this connection provides (at most one).
    provided: Option<Arc<Service>>,
    contacts: RecentTargets,
    rate: TokenBucket,
    streams: Streams,
    last_seen: Instant,
    rate_notice: Option<Instant>,
}

impl Session {
    /// Runs the session to its end: serves the socket, and waits out the resume window after
    /// each drop. Boxed: an `async fn` taking the session by value would keep two copies of it
    /// in its future (the argument and the binding). One loop here, not a nested `async fn`:
    /// every level of nesting adds its own bytes to the future an idle connection holds.
    async fn run(self: Box<Self>) {
        let mut this = self;
        loop {
            let end = this.connected().await;
            if end == End::Gone || this.resume.is_none() || this.conn.is_closing() {
                break;
            }
            if !this.away().await {
                break;
            }
        }
        Box::pin(this.cleanup()).await;
    }

    /// Serves the socket until it drops or the connection ends.
    async fn connected(&mut self) -> End {
        let conn = self.conn.clone();
        // One timer serves the pings, the heartbeat check, receipts and the earliest ack, call
        // or stream deadline: an idle connection's future stays small, and the timer is
        // re-armed only when one of those deadlines moves, never per frame.
        let now = Instant::now();
        self.last_seen = now;
        let mut next_ping = now + self.ping_every;
        let mut hb_check = now + self.hub.config.heartbeat_timeout();
        let timer =
            tokio::time::sleep_until(tokio::time::Instant::from_std(next_ping.min(hb_check)));
        tokio::pin!(timer);
        // `welcome` (and anything routed since registration) is already in the mailbox.
        let mut alive = Box::pin(self.drain()).await;
        let mut end = End::Dropped;
        // Measure the round trip now: a few quick pings, then one per heartbeat.
        let joins_by = now + RTT_WAIT;
        if alive {
            alive = Box::pin(self.ping()).await;
        }
        while alive {
            tokio::select! {
                biased;
                // A close request also wakes the mailbox. Draining is boxed: one small
                // allocation per batch keeps the writing state out of the resident future.
                _ = conn.mailbox.ready() => {
                    alive = !conn.is_closing() && Box::pin(self.drain()).await;
                    if alive {
                        if let Some(t) = self.takeover.take() {
                            match Box::pin(self.take_over(*t)).await {
                                Resumed::Yes => {
                                    // The new socket starts its own heartbeat.
                                    let now = Instant::now();
                                    self.last_seen = now;
                                    hb_check = now + self.hub.config.heartbeat_timeout();
                                }
                                Resumed::Refused => return End::Gone,
                            }
                        }
                        if self.migration.is_some() {
                            // The client resumed on another hub: this socket is stale.
                            break;
                        }
                        if self.draining {
                            Box::pin(self.close_for_drain()).await;
                            break;
                        }
                    }
                }
                msg = next_message(&mut self.ws) => match msg {
                    Some(Ok(Message::Close(_))) => {
                        // A close frame: the client left on purpose, no resume.
                        end = End::Gone;
                        break;
                    }
                    None => break,
                    Some(Ok(m)) => {
                        self.last_seen = Instant::now();
                        self.handle_ws(m);
                        if self.rtt.due {
                            self.rtt.due = false;
                            alive = Box::pin(self.ping()).await;
                        }
                        if !alive {
                            break;
                        }
                    }
                    Some(Err(e)) => {
                        self.read_failed(e);
                        break;
                    }
                },
                _ = &mut timer => {
                    let now = Instant::now();
                    self.handle_timeouts(now);
                    if now >= joins_by {
                        self.join_pending();
                    }
                    if now >= hb_check {
                        let timeout = self.hub.config.heartbeat_timeout();
                        hb_check = self.last_seen + timeout;
                        if now >= hb_check {
                            let m = format!("nothing received for {} s", timeout.as_secs_f64());
                            if self.resume.is_none() {
                                self.conn.close(ErrorCode::HeartbeatTimeout, m);
                            } else {
                                debug!(id = %self.conn.client, "{m}: away");
                            }
                            break;
                        }
                    }
                    if now >= next_ping {
                        next_ping = now + self.ping_every;
                        alive = Box::pin(self.ping()).await;
                    }
                }
            }
            let mut due = next_ping.min(hb_check);
            if let Some(t) = self.next_deadline() {
                due = due.min(t);
            }
            if !self.pending_joins.is_empty() {
                due = due.min(joins_by);
            }
            let due = tokio::time::Instant::from_std(due);
            if due != timer.deadline() {
                timer.as_mut().reset(due);
            }
        }
        if self.conn.is_closing() {
            End::Gone
        } else {
            end
        }
    }

    /// The earliest ack, call, stream-open or receipt deadline.
    fn next_deadline(&self) -> Option<Instant> {
        [
            self.acks.poll_timeout(),
            self.streams.poll_timeout(),
            self.calls.poll_timeout(),
            self.resume.as_ref().and_then(|r| r.poll_timeout()),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn handle_timeouts(&mut self, now: Instant) {
        for req in self.acks.handle_timeout(now) {
            self.error(
                ErrorCode::AckTimeout,
                "the target did not answer in time",
                Some(req),
            );
        }
        for frame in self.streams.handle_timeout(now, &self.conn.client) {
            self.send(&frame);
        }
        for e in self.calls.handle_timeout(now) {
            e.handle.release();
            self.error(
                ErrorCode::CallTimeout,
                "the provider did not answer in time",
                Some(e.req),
            );
        }
        self.receipt(now);
    }

    /// Sends a `received` receipt if one is due.
    fn receipt(&mut self, now: Instant) {
        if let Some(count) = self.resume.as_mut().and_then(|r| r.receipt(now)) {
            self.send(&ServerFrame::Received { seq: count });
        }
    }

    /// The client is away: its socket is gone, its session stays for the resume window.
    /// Frames meant for it are kept; its streams are reset. `true` when a new socket resumed
    /// the session, `false` when the session is over.
    async fn away(&mut self) -> bool {
        let grace = self.hub.config.resume_grace();
        let until = Instant::now() + grace;
        self.ws = None;
        self.framer.release();
        self.conn
            .away
            .store(true, std::sync::atomic::Ordering::Release);
        debug!(id = %self.conn.client, grace_ms = grace.as_millis() as u64, "away");
        // Streams do not survive a drop: the other ends learn it now.
        self.streams.close(&self.conn.client, std::iter::empty());
        // A session about to move to another hub is not away for anyone.
        if self.migration.is_none() && !self.draining {
            self.announce(true);
            self.hub.router.sessions.set_away(&self.conn, true);
            if let Some(bp) = &self.hub.router.cluster {
                bp.session_member_away(&self.conn, true);
            }
        }
        let conn = self.conn.clone();
        loop {
            if !self.keep_away() {
                info!(id = %self.conn.client, "away too long: the resume buffer overflowed");
                self.hub
                    .registry()
                    .bury(&self.conn, ResumeRefusal::Overflow);
                return false;
            }
            if let Some(t) = self.takeover.take() {
                return match Box::pin(self.take_over(*t)).await {
                    Resumed::Yes => true,
                    Resumed::Refused => false,
                };
            }
            if let Some(m) = self.migration.take() {
                if Box::pin(self.hand_off(*m)).await {
                    return false;
                }
            }
            let due = self.next_deadline().map_or(until, |t| t.min(until));
            tokio::select! {
                biased;
                _ = conn.closed() => return false,
                _ = conn.mailbox.ready() => {}
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(due)) => {
                    let now = Instant::now();
                    self.handle_timeouts(now);
                    if now >= until {
                        debug!(id = %self.conn.client, "the resume window ended");
                        self.hub.registry().bury(&self.conn, ResumeRefusal::Expired);
                        return false;
                    }
                }
            }
        }
    }

    /// Closes the socket of a draining session with the reconnect hint (a close frame carries
    /// no `seq`, so the session's numbering stays whole for the move).
    async fn close_for_drain(&mut self) {
        let Some(mut ws) = self.ws.take() else {
            return;
        };
        let close = Message::Close(Some(crate::ws::CloseFrame {
            code: writer::close_code(ErrorCode::ShuttingDown),
            reason: DRAIN_HINT.into(),
        }));
        let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, ws.send(close)).await;
    }

    /// Hands this session to another hub of the cluster, where the client resumed: the id
    /// moves there in the registry first, then the frames the client has not confirmed, the
    /// counts, the secret and the rooms go in the answer. True when the session moved (it then
    /// ends here quietly); false when it stays (the other hub answers `resume_rejected`).
    async fn hand_off(&mut self, m: crate::cluster::Migration) -> bool {
        use crate::cluster::{Handoff, MAX_HANDOFF_BYTES};
        let refuse = |m: crate::cluster::Migration, r: ResumeRefusal| {
            let _ = m.reply.send(Err(r));
            false
        };
        let lost = self
            .conn
            .lost_upto
            .load(std::sync::atomic::Ordering::Acquire);
        let Some(r) = self.resume.as_ref() else {
            return refuse(m, ResumeRefusal::Expired);
        };
        if m.last_seq < lost || m.last_seq > self.framer.seq() {
            return refuse(m, ResumeRefusal::Overflow);
        }
        if kept_bytes(r.after(m.last_seq)) > MAX_HANDOFF_BYTES {
            return refuse(m, ResumeRefusal::Overflow);
        }
        let Some(bp) = self.hub.router.cluster.clone() else {
            return refuse(m, ResumeRefusal::Expired);
        };
        if !bp.transfer(&self.conn.client, &m.to).await {
            return refuse(m, ResumeRefusal::Expired);
        }
        // The id is the other hub's now: no frame may stay behind here. Closing the mailbox
        // makes later deliveries fail here and go to the other hub; what it holds joins the
        // handoff, numbered on.
        self.migrated = true;
        self.migrated_to = Some(m.to.clone());
        // Closed under the write locks of its rooms and then of its topics, with the cuts of
        // the room emits and of the topic messages taken in the same step: each emit or
        // publication for it reached the client here, or will on the other hub.
        let rooms: Vec<RoomName> = self.conn.rooms.lock().iter().cloned().collect();
        let ((left, cut, topic_cut), topics) =
            self.hub.registry().with_rooms_locked(&rooms, None, || {
                bp.with_topics_of_locked(&self.conn, || {
                    (self.conn.mailbox.close(), bp.room_cut(), bp.topic_cut())
                })
            });
        for out in left {
            if let Outbound::Frame(body) | Outbound::Whole(body) = out {
                let msg = self.framer.message(&body);
                if let Some(r) = self.resume.as_mut() {
                    r.hold(self.framer.seq(), msg);
                }
            }
        }
        self.conn.close(
            ErrorCode::Replaced,
            format!("the session resumed on hub {:?}", m.to),
        );
        let last_written = self.framer.seq();
        let Some(r) = self.resume.as_ref() else {
            refuse(m, ResumeRefusal::Expired);
            return true;
        };
        let frames: Vec<Message> = r.after(m.last_seq).cloned().collect();
        if kept_bytes(frames.iter()) > MAX_HANDOFF_BYTES
            || frames.len() as u64 != last_written - m.last_seq
        {
            // Too much arrived meanwhile: the other hub starts a fresh session (the id is
            // already there) and tells the client `resume_rejected`.
            refuse(m, ResumeRefusal::Overflow);
            return true;
        }
        let handoff = Handoff {
            last_written,
            in_count: r.in_count,
            secret: self.conn.secret.clone(),
            rooms: self.conn.rooms.lock().iter().cloned().collect(),
            frames,
            sessions: self
                .conn
                .peek()
                .map(|k| k.sessions.lock().iter().cloned().collect())
                .unwrap_or_default(),
            cut,
            mark: Vec::new(),
            topics,
            topic_cut,
            topic_mark: Vec::new(),
        };
        info!(id = %self.conn.client, to = %m.to, last_seq = m.last_seq, last_written, "session handed to another hub");
        let _ = m.reply.send(Ok(handoff));
        true
    }

    /// Subscribes again, on this hub, to the topics a session that moved here had on its
    /// old hub, with the publications it missed between the two hubs queued first; one that
    /// no provider offers any more is reported ended (`topic_ended`).
    fn resubscribe(&mut self, bp: &Arc<crate::cluster::Backplane>, h: &crate::cluster::Handoff) {
        let max = self.hub.config.max_subscriptions_per_client;
        let router = self.hub.router.clone();
        match bp.install_topics(&router, &self.conn, &h.topics, max, h) {
            Ok(done) => {
                if done.replayed > 0 {
                    debug!(id = %self.conn.client, n = done.replayed, "topic messages replayed after a move");
                }
                for (service, topic) in done.ended_meanwhile {
                    if self
                        .services()
                        .unsubscribe(&service, &topic, &self.conn)
                        .is_err()
                    {
                        bp.unsubscribe_remote(&service, &topic, self.conn.conn);
                    }
                }
                for ((service, topic), reason) in done.ended {
                    debug!(id = %self.conn.client, service = %service.as_str(), topic = %topic.as_str(), "a subscription did not survive a move");
                    self.send(&ServerFrame::TopicEnded {
                        service,
                        topic,
                        reason,
                    });
                }
            }
            Err(gap) => {
                // Evicted between the check and now: the client cannot have them, so its
                // session cannot be resumed again without saying so.
                warn!(id = %self.conn.client, origin = %gap.origin, "topic messages lost in a move; the next resume of this session is refused");
                self.conn
                    .lost_upto
                    .store(u64::MAX, std::sync::atomic::Ordering::Release);
                self.conn.close(
                    ErrorCode::SlowConsumer,
                    "topic traffic outran the hub's history while your session moved; \
                     reconnect for a fresh session and resync",
                );
            }
        }
    }

    /// Tells rooms and recent contacts that this client is away, or back.
    fn announce(&self, away: bool) {
        let hub = &self.hub;
        let id = self.conn.client.clone();
        let rooms: Vec<RoomName> = self.conn.rooms.lock().iter().cloned().collect();
        for room in rooms {
            let f = if away {
                ServerFrame::MemberAway {
                    room: room.clone(),
                    id: id.clone(),
                }
            } else {
                ServerFrame::MemberBack {
                    room: room.clone(),
                    id: id.clone(),
                }
            };
            hub.router.to_room(&room, &f, Some(self.conn.conn));
        }
        let watchers: Vec<u64> = self
            .conn
            .peek()
            .map(|k| k.watchers.lock().iter().copied().collect())
            .unwrap_or_default();
        for w in watchers {
            let (id, conn) = (id.clone(), self.conn.conn);
            let c = if away {
                Control::PeerAway { id, conn }
            } else {
                Control::PeerBack { id, conn }
            };
            hub.router.control(w, c);
        }
    }

    /// While away: handles notices and moves every queued frame into the resume buffer (with
    /// its `seq`). `false` when the buffer overflowed.
    fn keep_away(&mut self) -> bool {
        let taken = self.conn.mailbox.take(VecDeque::new());
        for n in taken.notices {
            self.handle_control(n);
        }
        let mut done = Written::default();
        let mut ok = true;
        for out in taken.frames {
            done.add(&out);
            match out {
                Outbound::Frame(body) | Outbound::Whole(body) => {
                    let msg = self.framer.message(&body);
                    if let Some(r) = self.resume.as_mut() {
                        ok &= r.hold(self.framer.seq(), msg);
                    }
                }
                // A stream offered to an away client is refused at once; other stream items
                // belong to streams reset at the drop.
                Outbound::Stream(StreamItem::Incoming(inc)) => {
                    let reason = format!("{} is away", self.conn.client).into();
                    self.streams.refuse(*inc, ErrorCode::PeerLeft, reason);
                }
                Outbound::Stream(_) => {}
            }
        }
        self.framer.release();
        self.conn.mailbox.written(done);
        ok
    }

    /// Moves the session to a new socket: the resumed `welcome` (outside the sequence: `seq`
    /// 0), the kept frames the client missed, then whatever comes next.
    async fn take_over(&mut self, t: Takeover) -> Resumed {
        let lost = self
            .conn
            .lost_upto
            .load(std::sync::atomic::Ordering::Acquire);
        if t.last_seq < lost {
            // Frames were dropped after the handshake checked: the client retries, and its
            // next attempt is told `overflow`.
            debug!(id = %self.conn.client, "resume refused: the frames it needs are gone");
            self.hub
                .registry()
                .bury(&self.conn, ResumeRefusal::Overflow);
            return Resumed::Refused;
        }
        if let Some(mut old) = self.ws.take() {
            // A half-open connection the hub still believed alive.
            let m = "the session resumed on a newer connection";
            let _ = tokio::time::timeout(
                CLOSE_WRITE_TIMEOUT,
                old.send(writer::close_frame(ErrorCode::Replaced, m)),
            )
            .await;
        }
        let was_away = self
            .conn
            .away
            .swap(false, std::sync::atomic::Ordering::AcqRel);
        let Some(r) = self.resume.as_mut() else {
            return Resumed::Refused;
        };
        r.confirm(t.last_seq);
        let rooms: Vec<RoomName> = self.conn.rooms.lock().iter().cloned().collect();
        let welcome = welcome_frame(&self.hub, &self.conn, rooms, Some(r.in_count));
        let mut ws = t.ws;
        let replay: Vec<Message> = r.after(t.last_seq).cloned().collect();
        let replayed = replay.len();
        if let Err(e) = send_resumed(&mut ws, self.conn.encoding, &welcome, replay).await {
            debug!(id = %self.conn.client, error = %e, "resume: writing the replay failed");
        }
        self.ws = Some(ws);
        info!(id = %self.conn.client, from = %t.addr, last_seq = t.last_seq, replayed, "resumed");
        if was_away {
            self.announce(false);
            self.hub.router.sessions.set_away(&self.conn, false);
            if let Some(bp) = &self.hub.router.cluster {
                bp.session_member_away(&self.conn, false);
            }
        }
        Resumed::Yes
    }

    async fn ping(&mut self) -> bool {
        let conn = self.conn.clone();
        let Some(ws) = self.ws.as_mut() else {
            return false;
        };
        self.rtt.sent = Some(Instant::now());
        tokio::select! {
            biased;
            _ = conn.closed() => false,
            r = ws.send(Message::Ping(bytes::Bytes::new())) => r.is_ok(),
        }
    }

    /// Handles every queued notice and writes every queued frame (one flush per batch of
    /// `BATCH`). Returns `false` when the socket failed or the connection is closing.
    async fn drain(&mut self) -> bool {
        // The deque of one batch is reused for the next within a burst.
        let mut spare = VecDeque::new();
        loop {
            let taken = self.conn.mailbox.take(std::mem::take(&mut spare));
            for n in taken.notices {
                self.handle_control(n);
            }
            let mut frames = taken.frames;
            if frames.is_empty() {
                // Idle: give the write chunk and the socket's buffers back (the deque goes
                // with this future: one allocation per burst, none held between bursts).
                self.framer.release();
                if let Some(ws) = self.ws.as_mut() {
                    ws.release();
                }
                return true;
            }
            let conn = self.conn.clone();
            let ok = tokio::select! {
                biased;
                _ = conn.closed() => false,
                ok = self.write_frames(&mut frames) => ok,
            };
            frames.clear();
            spare = frames;
            if !ok {
                return false;
            }
        }
    }

    /// Writes `frames` (all of them are numbered and, for a resumable client, kept, even
    /// after the socket failed, so a resume replays them). `false` when the socket failed.
    async fn write_frames(&mut self, frames: &mut VecDeque<Outbound>) -> bool {
        let metrics = self.hub.router.metrics.clone();
        let mut ok = self.ws.is_some();
        while !frames.is_empty() {
            let n = frames.len().min(BATCH);
            let mut done = Written::default();
            let mut wire_bytes = 0u64;
            let mut written = 0u64;
            for out in frames.drain(..n) {
                done.add(&out);
                // Stream items update this connection's end of the stream as they are
                // written, so what the client sees follows the FIFO order.
                let (body, keep) = match out {
                    Outbound::Frame(body) | Outbound::Whole(body) => (body, true),
                    Outbound::Stream(StreamItem::Data(body)) => match body.data_stream() {
                        Some((stream, _)) if self.streams.deliverable(stream) => (body, false),
                        _ => continue,
                    },
                    Outbound::Stream(item) => match self.streams.on_item(item) {
                        Some(frame) => (EncodedBody::encode(self.conn.encoding, &frame), false),
                        None => continue,
                    },
                };
                written += 1;
                let msg = self.framer.message(&body);
                wire_bytes += match &msg {
                    Message::Text(t) => t.len() as u64,
                    Message::Binary(b) => b.len() as u64,
                    _ => 0,
                };
                if keep {
                    if let Some(r) = self.resume.as_mut() {
                        if let Some(lost) = r.keep(self.framer.seq(), msg.clone()) {
                            self.conn
                                .lost_upto
                                .fetch_max(lost, std::sync::atomic::Ordering::AcqRel);
                        }
                    }
                }
                if ok {
                    if let Some(ws) = self.ws.as_mut() {
                        ok = ws.feed(msg).await.is_ok();
                    }
                }
            }
            if ok {
                if let Some(ws) = self.ws.as_mut() {
                    ok = ws.flush().await.is_ok();
                }
            }
            self.conn.mailbox.written(done);
            metrics.inc_frames_out(written);
            metrics.inc_bytes_out(wire_bytes);
            let stats = &self.conn.stats;
            stats
                .frames_out
                .fetch_add(written, std::sync::atomic::Ordering::Relaxed);
            stats
                .bytes_out
                .fetch_add(wire_bytes, std::sync::atomic::Ordering::Relaxed);
            if !ok && self.resume.is_none() {
                return false;
            }
        }
        ok
    }

    fn read_failed(&mut self, e: WsError) {
        use crate::ws::codec::ProtocolError;
        match e {
            WsError::Protocol(ProtocolError::TooLarge { size, max }) => {
                let m = format!(
                    "the frame has at least {size} bytes, over the hard limit of {max}; the \
                     connection cannot continue (max_frame_bytes is {})",
                    self.hub.config.max_frame_bytes
                );
                self.conn.close(ErrorCode::FrameTooLarge, m);
            }
            WsError::Protocol(p) => {
                // The close frame carries the WebSocket code (1002 or 1007); the error frame
                // says what was wrong.
                let m = format!("{p}; the connection cannot continue");
                self.conn.close(ErrorCode::Malformed, m);
            }
            e => debug!(error = %e, "read failed"),
        }
    }

    fn send(&self, frame: &ServerFrame) {
        let body = EncodedBody::encode(self.conn.encoding, frame);
        let _ = self.hub.router.to_conn(&self.conn, body);
    }

    fn error(&self, code: ErrorCode, message: impl Into<String>, req: Option<u64>) {
        self.hub.router.metrics.inc_error(code);
        self.send(&ServerFrame::Error(ErrorFrame::new(code, message, req)));
    }

    fn ok(&self, req: Option<u64>) {
        if let Some(req) = req {
            self.send(&ServerFrame::Ok { req });
        }
    }

    fn handle_ws(&mut self, msg: Message) {
        let (enc, bytes): (Encoding, bytes::Bytes) = match msg {
            Message::Text(t) => (Encoding::Json, t),
            Message::Binary(b) => (Encoding::MsgPack, b),
            Message::Pong(_) => return self.on_pong(),
            _ => return,
        };
        let metrics = &self.hub.router.metrics;
        metrics.inc_frames_in(1);
        metrics.inc_bytes_in(bytes.len() as u64);
        let stats = &self.conn.stats;
        stats
            .frames_in
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        stats
            .bytes_in
            .fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let now = self.last_seen;
        if enc == Encoding::MsgPack && peermesh_proto::stream::is_data_frame(&bytes) {
            return self.handle_data(bytes);
        }
        if bytes.len() > self.hub.config.max_frame_bytes {
            self.count_in(now);
            let m = too_large_message(bytes.len(), self.hub.config.max_frame_bytes);
            self.error(ErrorCode::FrameTooLarge, m, None);
            return;
        }
        let decoded = decode_client(enc, &bytes);
        if decoded.as_ref().map_or(true, resume::counts) {
            self.count_in(now);
        }
        match decoded {
            // A stream's frames after its open are never dropped by the rate limit: losing
            // one would break the stream, and flow control already bounds them.
            Ok(frame) if is_stream_followup(&frame) => self.handle_frame(frame, now),
            Ok(frame) => {
                if !self.rate.try_take(now) {
                    return self.rate_limited(frame.req(), now);
                }
                self.handle_frame(frame, now)
            }
            Err(e) => {
                if !self.rate.try_take(now) {
                    return self.rate_limited(e.req, now);
                }
                warn!(id = %self.conn.client, code = %e.code, "bad frame: {}", e.message);
                self.error(e.code, e.message, e.req);
            }
        }
    }

    /// A pong: one round-trip sample. The first few are taken back to back (the join
    /// handshake), then one per heartbeat, smoothed.
    fn on_pong(&mut self) {
        let Some(sent) = self.rtt.sent.take() else {
            return;
        };
        let sample = sent.elapsed().as_micros().max(1) as u64;
        let rtt = &self.conn.rtt_us;
        let old = rtt.load(std::sync::atomic::Ordering::Relaxed);
        let new = match self.rtt.samples {
            0 => sample,
            n if n < RTT_SAMPLES => old.min(sample),
            _ => (old * 7 + sample) / 8,
        };
        rtt.store(new, std::sync::atomic::Ordering::Relaxed);
        self.rtt.samples += 1;
        if self.rtt.samples < RTT_SAMPLES {
            self.rtt.due = true;
        } else {
            self.join_pending();
        }
    }

    /// The round-trip time, once measured.
    fn rtt(&self) -> Option<Duration> {
        match self.conn.rtt_us.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    /// Joins the sessions named at the handshake.
    fn join_pending(&mut self) {
        for name in std::mem::take(&mut self.pending_joins) {
            self.join_session(name, SessionMode::default(), None);
        }
    }

    fn join_session(&mut self, name: SessionName, mode: SessionMode, req: Option<u64>) {
        if let Some(bp) = &self.hub.router.cluster {
            // Created here once claimed in the cluster, or joined at its home hub; the answer
            // (snapshot or error) may come later, and this connection's later frames for the
            // session wait for it.
            let frame = ClientFrame::SessionJoin {
                session: Some(name),
                mode: Some(mode),
                req,
            };
            return bp.session_frame(&self.hub.router, &self.conn, frame);
        }
        let held = self.conn.peek().map_or(0, |k| k.sessions.lock().len());
        let max = self.hub.config.max_sessions_per_client;
        if held >= max
            && !self
                .conn
                .peek()
                .is_some_and(|k| k.sessions.lock().contains(&name))
        {
            let m = format!("already in {held} sessions (max_sessions_per_client is {max})");
            return self.error(ErrorCode::TooManySessions, m, req);
        }
        let rtt = self.rtt();
        if let Err((code, m)) = self
            .hub
            .router
            .sessions
            .join(&name, mode, &self.conn, rtt, req)
        {
            self.error(code, m, req);
        }
    }

    /// A counted client frame arrived (handled, or refused with an error).
    fn count_in(&mut self, now: Instant) {
        if let Some(r) = self.resume.as_mut() {
            r.counted(now);
            if let Some(count) = r.receipt(now) {
                self.send(&ServerFrame::Received { seq: count });
            }
        }
    }

    /// A binary data frame: checked against its stream's credit and queued for the other end
    /// without copying its bytes.
    fn handle_data(&mut self, bytes: bytes::Bytes) {
        let frame = match peermesh_proto::stream::DataFrame::decode(bytes) {
            Ok(f) => f,
            Err(e) => return self.error(e.code, e.message, None),
        };
        let max = self.hub.config.max_frame_bytes;
        let total = frame.data.len() + peermesh_proto::stream::DATA_HEADER_LEN;
        let outcome = if total > max {
            let m = too_large_message(total, max);
            self.streams
                .reset_for(frame.stream, ErrorCode::FrameTooLarge, m)
        } else {
            self.streams.data(&self.conn, frame.stream, frame.data)
        };
        self.stream_outcome(frame.stream, outcome);
    }

    fn stream_outcome(&mut self, stream: u64, outcome: Outcome) {
        match outcome {
            Outcome::Done => {}
            Outcome::Reply(frame) => self.send(&frame),
            Outcome::Unknown => {
                let m = format!("no stream {stream} was ever opened on this connection");
                self.error(ErrorCode::UnknownStream, m, None);
            }
        }
    }

    /// A frame over the rate limit is dropped. A frame with `req` still gets its one answer
    /// (an error); other drops are reported at most once a second.
    fn rate_limited(&mut self, req: Option<u64>, now: Instant) {
        let notice_due = self
            .rate_notice
            .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1));
        if req.is_some() || notice_due {
            if req.is_none() {
                self.rate_notice = Some(now);
            }
            let m = format!(
                "over the inbound rate limit of {} frames/s (burst {}); the frame was dropped",
                self.hub.config.rate_per_sec, self.hub.config.rate_burst
            );
            self.error(ErrorCode::RateLimited, m, req);
        }
    }

    fn handle_frame(&mut self, frame: ClientFrame, now: Instant) {
        match frame {
            ClientFrame::Hello(_) => self.error(
                ErrorCode::AlreadyGreeted,
                "this connection already said hello; open a new connection to change identity",
                None,
            ),
            ClientFrame::Emit(e) => {
                let ack_id = if e.ack {
                    let Some(req) = e.req else { return };
                    let max = self.hub.config.max_ack_timeout_ms;
                    let ms = e
                        .timeout_ms
                        .unwrap_or(self.hub.config.default_ack_timeout_ms);
                    if ms == 0 || ms > max {
                        let m = format!("`timeout_ms` must be between 1 and {max}");
                        return self.error(ErrorCode::InvalidField, m, Some(req));
                    }
                    let deadline = now + Duration::from_millis(ms);
                    match self.acks.insert(req, e.to.clone(), deadline) {
                        Ok(id) => Some(id),
                        Err(AckInsertError::Full) => {
                            let m = format!(
                                "{} acknowledgements are already pending (max_pending_acks)",
                                self.acks.len()
                            );
                            return self.error(ErrorCode::TooManyPendingAcks, m, Some(req));
                        }
                        Err(AckInsertError::DuplicateReq) => {
                            let m = format!("an acknowledgement with req {req} is already pending");
                            return self.error(ErrorCode::InvalidField, m, Some(req));
                        }
                    }
                } else {
                    None
                };
                let frame = ServerFrame::Message(MessageFrame {
                    from: self.conn.client.clone(),
                    event: e.event,
                    payload: e.payload,
                    room: None,
                    ack_id,
                });
                self.hub.router.metrics.inc_direct(1);
                match self.hub.router.to_client(&e.to, &frame) {
                    Ok(target) => {
                        let conn = match target {
                            Target::Local(c) => c.conn,
                            Target::Remote => REMOTE,
                        };
                        self.touch_contact(&e.to, conn, now);
                        if ack_id.is_none() {
                            self.ok(e.req);
                        }
                    }
                    Err(err) => {
                        if let Some(id) = ack_id {
                            self.acks.complete(id, &e.to);
                        }
                        let m = match err {
                            RouteError::UnknownTarget => {
                                format!("no client with id {:?} is connected", e.to.as_str())
                            }
                            RouteError::TargetUnavailable => {
                                format!("client {:?} is disconnecting", e.to.as_str())
                            }
                        };
                        self.error(ErrorCode::UnknownTarget, m, e.req);
                    }
                }
            }
            ClientFrame::Reply(r) => {
                if let Some(bp) = &self.hub.router.cluster {
                    if bp.awaits(&self.conn.client, r.ack_id) {
                        bp.reply(&self.conn.client, r.ack_id, r.payload);
                        self.hub.router.metrics.inc_acks(1);
                        return;
                    }
                }
                let ctrl = Control::AckReply {
                    ack_id: r.ack_id,
                    from: self.conn.client.clone(),
                    payload: r.payload,
                };
                if self.hub.router.control_slot(conn_of(r.ack_id), ctrl) {
                    self.hub.router.metrics.inc_acks(1);
                } else {
                    let m = format!("no pending acknowledgement has ack_id {}", r.ack_id);
                    self.error(ErrorCode::UnknownAck, m, None);
                }
            }
            ClientFrame::Join { room, req } => {
                if self.conn.rooms.lock().contains(&room) {
                    return self.ok(req);
                }
                if let Some(g) = &self.grant {
                    if !g.may_join(&room) {
                        let m =
                            format!("the token does not allow joining room {:?}", room.as_str());
                        return self.error(ErrorCode::Forbidden, m, req);
                    }
                }
                let max = self.hub.config.max_rooms_per_client;
                if self.conn.rooms.lock().len() >= max {
                    let m = format!("already in {max} rooms (max_rooms_per_client)");
                    return self.error(ErrorCode::TooManyRooms, m, req);
                }
                if !self.join_room(room, req) {
                    self.ok(req);
                }
            }
            ClientFrame::Leave { room, req } => {
                if !self.conn.rooms.lock().remove(&room) {
                    return self.not_in_room(&room, req);
                }
                if self.hub.registry().leave(&room, &self.conn) {
                    let left = ServerFrame::MemberLeft {
                        room: room.clone(),
                        id: self.conn.client.clone(),
                    };
                    self.hub.router.to_room(&room, &left, None);
                    if let Some(bp) = &self.hub.router.cluster {
                        bp.left(&room, &self.conn.client);
                    }
                }
                self.ok(req);
            }
            ClientFrame::EmitRoom(e) => {
                if !self.conn.rooms.lock().contains(&e.room) {
                    return self.not_in_room(&e.room, e.req);
                }
                let frame = ServerFrame::Message(MessageFrame {
                    from: self.conn.client.clone(),
                    event: e.event,
                    payload: e.payload,
                    room: Some(e.room.clone()),
                    ack_id: None,
                });
                self.hub.router.metrics.inc_room(1);
                let except = (!e.include_self).then_some(self.conn.conn);
                self.hub.router.emit_room(&e.room, &frame, except);
                self.ok(e.req);
            }
            ClientFrame::Members { room, req } => {
                if !self.conn.rooms.lock().contains(&room) {
                    return self.not_in_room(&room, req);
                }
                let mut members: Vec<ClientId> = self
                    .hub
                    .registry()
                    .room(&room)
                    .map(|r| r.members.read().keys().cloned().collect())
                    .unwrap_or_default();
                if let Some(bp) = &self.hub.router.cluster {
                    let remote = bp.cluster().room_members(room.as_str());
                    members.extend(
                        remote
                            .into_iter()
                            .filter(|(_, node)| node != bp.node())
                            .filter_map(|(id, _)| ClientId::new(&id).ok()),
                    );
                }
                members.sort();
                members.dedup();
                self.send(&ServerFrame::Members { req, room, members });
            }
            ClientFrame::Ping { req } => self.send(&ServerFrame::Pong { req }),
            ClientFrame::Received { seq } => {
                if let Some(r) = self.resume.as_mut() {
                    r.confirm(seq);
                }
            }
            ClientFrame::SessionJoin { session, mode, req } => {
                let name = match session {
                    Some(n) => n,
                    None => match SessionName::new(&uuid::Uuid::new_v4().to_string()) {
                        Ok(n) => n,
                        Err(e) => return self.error(ErrorCode::Internal, e.to_string(), req),
                    },
                };
                self.join_session(name, mode.unwrap_or_default(), req);
            }
            ClientFrame::SessionLeave { session, req } => {
                if let Some(bp) = &self.hub.router.cluster {
                    let frame = ClientFrame::SessionLeave { session, req };
                    return bp.session_frame(&self.hub.router, &self.conn, frame);
                }
                match self.hub.router.sessions.leave(&session, &self.conn) {
                    Ok(()) => self.ok(req),
                    Err((code, m)) => self.error(code, m, req),
                }
            }
            ClientFrame::SessionOp { session, op, req } => {
                if let Some(bp) = &self.hub.router.cluster {
                    let frame = ClientFrame::SessionOp { session, op, req };
                    return bp.session_frame(&self.hub.router, &self.conn, frame);
                }
                match self.hub.router.sessions.apply(&session, &self.conn, op) {
                    Ok(_) => self.ok(req),
                    Err((code, m)) => self.error(code, m, req),
                }
            }
            ClientFrame::StreamOpen(open) => {
                use crate::streams::Target;
                let target = match self.hub.registry().client(&open.to) {
                    Some(c) => Target::Local(c),
                    None => match self
                        .hub
                        .router
                        .cluster
                        .as_ref()
                        .map(|bp| bp.locate(&open.to))
                    {
                        Some(crate::cluster::Remote::On(node)) => Target::Remote(node),
                        _ => Target::Nowhere,
                    },
                };
                let outcome = self.streams.open(&self.conn, target, open, now);
                self.stream_outcome(0, outcome);
            }
            ClientFrame::StreamAccept { stream, window } => {
                let outcome = self.streams.accept(&self.conn, stream, window);
                self.stream_outcome(stream, outcome);
            }
            ClientFrame::StreamReject { stream, reason } => {
                let outcome = self.streams.reset(&self.conn, stream, reason, true);
                self.stream_outcome(stream, outcome);
            }
            ClientFrame::StreamReset { stream, reason } => {
                let outcome = self.streams.reset(&self.conn, stream, reason, false);
                self.stream_outcome(stream, outcome);
            }
            ClientFrame::StreamCredit { stream, bytes } => {
                let outcome = self.streams.credit(&self.conn, stream, bytes);
                self.stream_outcome(stream, outcome);
            }
            ClientFrame::StreamEnd { stream } => {
                let outcome = self.streams.end(&self.conn, stream);
                self.stream_outcome(stream, outcome);
            }
            ClientFrame::Provide(p) => {
                if let Some(s) = &self.provided {
                    let m = format!(
                        "this connection already provides service {:?}; a connection provides \
                         one service (open another connection for another)",
                        s.name.as_str()
                    );
                    return self.error(ErrorCode::AlreadyProviding, m, p.req);
                }
                let svc = self.services().provide(&p.service, &p.methods, &self.conn);
                debug!(id = %self.conn.client, service = %p.service, "provides");
                self.provided = Some(svc);
                self.ok(p.req);
            }
            ClientFrame::Unprovide { req } => {
                let Some(svc) = self.provided.take() else {
                    return self.not_provider(req);
                };
                // Calls already sent here may still be answered: only routing stops.
                let closed = self.services().unprovide(&svc, self.conn.conn);
                self.hub.router.topics_ended(closed);
                debug!(id = %self.conn.client, service = %svc.name, "no longer provides");
                self.ok(req);
            }
            ClientFrame::Call(c) => self.call(c, now),
            ClientFrame::Respond(r) => {
                let call = r.call;
                if conn_of(call) == crate::registry::RELAY_SLOT {
                    let relayed = self
                        .hub
                        .router
                        .cluster
                        .as_ref()
                        .is_some_and(|bp| bp.respond(self.conn.conn, call, r.outcome));
                    if !relayed {
                        let m = format!("no pending call has id {call} (its caller is gone)");
                        self.error(ErrorCode::UnknownCall, m, None);
                    }
                    return;
                }
                let ctrl = Control::CallDone {
                    call,
                    provider: self.conn.conn,
                    outcome: r.outcome,
                };
                if !self.hub.router.control_slot(conn_of(call), ctrl) {
                    let m = format!("no pending call has id {call} (its caller is gone)");
                    self.error(ErrorCode::UnknownCall, m, None);
                }
            }
            ClientFrame::CreateTopic { topic, req } => {
                let Some(svc) = self.provided.clone() else {
                    return self.not_provider(req);
                };
                let max = self.hub.config.max_topics_per_service;
                match self.services().create_topic(&svc, &topic, max) {
                    Ok(()) => self.ok(req),
                    Err((code, m)) => self.error(code, m, req),
                }
            }
            ClientFrame::DestroyTopic { topic, req } => {
                let Some(svc) = self.provided.clone() else {
                    return self.not_provider(req);
                };
                match self.services().destroy_topic(&svc, &topic) {
                    Ok(closed) => {
                        self.hub.router.topics_ended(vec![closed]);
                        self.ok(req);
                    }
                    Err((code, m)) => self.error(code, m, req),
                }
            }
            ClientFrame::Publish(p) => {
                let Some(svc) = self.provided.clone() else {
                    return self.not_provider(p.req);
                };
                let sent = Services::own_topic(&svc, &p.topic)
                    .and_then(|t| self.hub.router.to_topic(&t, p.payload));
                match sent {
                    Ok(_) => self.ok(p.req),
                    Err((code, m)) => self.error(code, m, p.req),
                }
            }
            ClientFrame::Subscribe {
                service,
                topic,
                req,
            } => {
                let max = self.hub.config.max_subscriptions_per_client;
                let mut out = self.services().subscribe(&service, &topic, &self.conn, max);
                if let (Err((ErrorCode::UnknownService | ErrorCode::UnknownTopic, _)), Some(bp)) =
                    (&out, &self.hub.router.cluster)
                {
                    // A topic of a provider on another hub of the cluster.
                    if let Some(r) = bp.subscribe_remote(&service, &topic, &self.conn, max) {
                        out = r;
                    }
                }
                match out {
                    Ok(()) => self.ok(req),
                    Err((code, m)) => self.error(code, m, req),
                }
            }
            ClientFrame::Unsubscribe {
                service,
                topic,
                req,
            } => {
                let remote = self
                    .hub
                    .router
                    .cluster
                    .as_ref()
                    .is_some_and(|bp| bp.unsubscribe_remote(&service, &topic, self.conn.conn));
                if remote {
                    return self.ok(req);
                }
                match self.services().unsubscribe(&service, &topic, &self.conn) {
                    Ok(()) => self.ok(req),
                    Err((code, m)) => self.error(code, m, req),
                }
            }
            _ => self.error(
                ErrorCode::UnknownType,
                "this frame type is not handled",
                None,
            ),
        }
    }

    fn services(&self) -> &Services {
        &self.hub.router.services
    }

    fn not_provider(&self, req: Option<u64>) {
        let m = "this connection provides no service: send `provide` first";
        self.error(ErrorCode::NotProvider, m, req);
    }

    /// Routes a call: to the hub's handler, or to the least busy client provider.
    fn call(&mut self, c: Call, now: Instant) {
        let cfg = &self.hub.config;
        let req = c.req;
        let max = cfg.max_call_timeout_ms;
        let ms = c.timeout_ms.unwrap_or(cfg.default_call_timeout_ms);
        if ms == 0 || ms > max {
            let m = format!("`timeout_ms` must be between 1 and {max}");
            return self.error(ErrorCode::InvalidField, m, Some(req));
        }
        if self.calls.len() >= cfg.max_calls_per_client {
            let m = format!(
                "{} calls are already waiting for an answer (max_calls_per_client)",
                self.calls.len()
            );
            return self.error(ErrorCode::TooManyCalls, m, Some(req));
        }
        let deadline = now + Duration::from_millis(ms);
        if let Some(bp) = self.hub.router.cluster.clone() {
            let local = self.services().offers(&c.service, &c.method);
            if let Some(node) = bp.pick(&c.service, &c.method, local) {
                return self.call_remote(&bp, &node, c, ms, deadline);
            }
        }
        let route = match self
            .services()
            .route(&c.service, &c.method, cfg.max_calls_per_provider)
        {
            Ok(r) => r,
            Err((code, m)) => return self.error(code, m, Some(req)),
        };
        self.hub.router.metrics.inc_calls(1);
        match route {
            Route::Hub(handler) => {
                let Ok(call) = self
                    .calls
                    .insert(req, HUB_PROVIDER, CallTarget::Hub, deadline)
                else {
                    return self.error(ErrorCode::TooManyCalls, "too many calls", Some(req));
                };
                let inv = Invocation {
                    from: self.conn.client.clone(),
                    service: c.service,
                    method: c.method,
                    payload: c.payload,
                };
                let router = self.hub.router.clone();
                let caller = self.conn.conn;
                tokio::spawn(async move {
                    let outcome = handler(inv).await.map_err(|e| e.message);
                    let done = Control::CallDone {
                        call,
                        provider: HUB_PROVIDER,
                        outcome,
                    };
                    router.control(caller, done);
                });
            }
            Route::Client(provider) => {
                // Watch the provider before the invoke can reach it: if it leaves after taking
                // the invoke, it finds this connection among its watchers.
                if self.watched.get_or_insert_default().insert(provider.conn) {
                    provider.cold().call_watchers.lock().insert(self.conn.conn);
                }
                let target = CallTarget::Client(provider.clone());
                let call = match self.calls.insert(req, provider.conn, target, deadline) {
                    Ok(id) => id,
                    Err(_) => {
                        return self.error(ErrorCode::TooManyCalls, "too many calls", Some(req))
                    }
                };
                let frame = ServerFrame::Invoke(Invoke {
                    call,
                    from: self.conn.client.clone(),
                    service: c.service,
                    method: c.method,
                    payload: c.payload,
                });
                let body = EncodedBody::encode(provider.encoding, &frame);
                if self.hub.router.to_conn(&provider, body).is_err() {
                    if let Some(e) = self.calls.complete(call, provider.conn) {
                        e.handle.release();
                    }
                    let m = format!(
                        "the provider {:?} is disconnecting",
                        provider.client.as_str()
                    );
                    self.error(ErrorCode::ProviderLeft, m, Some(req));
                }
            }
        }
    }

    /// Sends a call to a provider on another hub of the cluster.
    fn call_remote(
        &mut self,
        bp: &crate::cluster::Backplane,
        node: &str,
        c: Call,
        timeout_ms: u64,
        deadline: Instant,
    ) {
        let req = c.req;
        self.hub.router.metrics.inc_calls(1);
        let Ok(call) = self
            .calls
            .insert(req, REMOTE_PROVIDER, CallTarget::Remote, deadline)
        else {
            return self.error(ErrorCode::TooManyCalls, "too many calls", Some(req));
        };
        let invoke = ServerFrame::Invoke(Invoke {
            call,
            from: self.conn.client.clone(),
            service: c.service,
            method: c.method,
            payload: c.payload,
        });
        if !bp.call(node, timeout_ms, invoke) {
            if let Some(e) = self.calls.complete(call, REMOTE_PROVIDER) {
                e.handle.release();
            }
            let m = "the hub's queue to the cluster is full; try again";
            self.error(ErrorCode::ServiceBusy, m, Some(req));
        }
    }

    fn call_done(
        &mut self,
        call: u64,
        provider: u64,
        outcome: Result<peermesh_proto::Payload, String>,
    ) {
        match self.calls.complete(call, provider) {
            Some(Ended { req, handle }) => {
                handle.release();
                match outcome {
                    Ok(payload) => self.send(&ServerFrame::CallResult { req, payload }),
                    Err(m) => self.error(ErrorCode::ServiceError, m, Some(req)),
                }
            }
            None if provider != HUB_PROVIDER => {
                let m = format!(
                    "no pending call has id {call} for you (it was answered, timed out, or was \
                     not sent to you)"
                );
                let e = ServerFrame::Error(ErrorFrame::new(ErrorCode::UnknownCall, m, None));
                self.hub.router.metrics.inc_error(ErrorCode::UnknownCall);
                if let Some(p) = self.hub.registry().conn(provider) {
                    let _ = self
                        .hub
                        .router
                        .to_conn(&p, EncodedBody::encode(p.encoding, &e));
                }
            }
            // A hub handler that finished after the call timed out.
            None => {}
        }
    }

    fn not_in_room(&self, room: &RoomName, req: Option<u64>) {
        let m = format!("not a member of room {:?}; join it first", room.as_str());
        self.error(ErrorCode::NotInRoom, m, req);
    }

    /// Joins a room and tells the other members (unless this client id was already present
    /// through a connection this one replaced). In a cluster the membership is recorded for
    /// the other hubs, and the `ok` for `req` comes once it is: returns true then (the caller
    /// must not answer).
    fn join_room(&mut self, room: RoomName, req: Option<u64>) -> bool {
        self.conn.rooms.lock().insert(room.clone());
        // A client id already present through a connection this one replaced is no news.
        if let Ok(None) = self.hub.registry().join(&room, &self.conn) {
            let joined = ServerFrame::MemberJoined {
                room: room.clone(),
                id: self.conn.client.clone(),
            };
            self.hub
                .router
                .to_room(&room, &joined, Some(self.conn.conn));
            if let Some(bp) = &self.hub.router.cluster {
                bp.joined(&room, &self.conn.client, Some((self.conn.conn, req)));
                return true;
            }
        }
        false
    }

    /// Remembers a target for `peer_left`, and registers this connection as its watcher.
    fn touch_contact(&mut self, target: &ClientId, target_conn: u64, now: Instant) {
        let touch = self.contacts.touch(target, target_conn, now);
        let registry = self.hub.registry();
        let cluster = self.hub.router.cluster.as_ref();
        if let Some((old_target, old_conn)) = touch.unwatch {
            if old_conn == REMOTE {
                if let Some(bp) = cluster {
                    bp.unwatch(&old_target, self.conn.conn);
                }
            } else if let Some(c) = registry.conn(old_conn) {
                if let Some(k) = c.peek() {
                    k.watchers.lock().remove(&self.conn.conn);
                }
            }
        }
        if touch.watch {
            if target_conn == REMOTE {
                if let Some(bp) = cluster {
                    bp.watch(target, self.conn.conn);
                }
            } else if let Some(c) = registry.conn(target_conn) {
                c.cold().watchers.lock().insert(self.conn.conn);
            }
        }
    }

    fn handle_control(&mut self, c: Control) {
        match c {
            Control::AckReply {
                ack_id,
                from,
                payload,
            } => match self.acks.complete(ack_id, &from) {
                Some(req) => self.send(&ServerFrame::Ack { req, payload }),
                None => {
                    // Late (after the timeout), repeated, or not addressed to the replier.
                    debug!(ack_id, from = %from, "reply to no pending ack");
                    let m = format!(
                        "no pending acknowledgement has ack_id {ack_id} for you (it was answered, \
                         timed out, or was not sent to you)"
                    );
                    let e = ServerFrame::Error(ErrorFrame::new(ErrorCode::UnknownAck, m, None));
                    self.hub.router.metrics.inc_error(ErrorCode::UnknownAck);
                    let _ = self.hub.router.to_client(&from, &e);
                }
            },
            Control::CallDone {
                call,
                provider,
                outcome,
            } => self.call_done(call, provider, outcome),
            Control::ProviderGone { conn } => {
                if let Some(w) = self.watched.as_mut() {
                    w.remove(&conn);
                }
                for e in self.calls.fail_provider(conn) {
                    e.handle.release();
                    let m = "the provider disconnected before answering";
                    self.error(ErrorCode::ProviderLeft, m, Some(e.req));
                }
            }
            Control::PeerAway { id, conn } => {
                if self.contacts.is_recent(&id, conn, Instant::now()) {
                    self.send(&ServerFrame::PeerAway { id });
                }
            }
            Control::PeerBack { id, conn } => {
                if self.contacts.is_recent(&id, conn, Instant::now()) {
                    self.send(&ServerFrame::PeerBack { id });
                }
            }
            Control::Ok { req } => self.ok(req),
            Control::Drain => self.draining = true,
            Control::CallFailed {
                call,
                code,
                message,
            } => {
                if let Some(e) = self.calls.complete(call, REMOTE_PROVIDER) {
                    e.handle.release();
                    self.error(code, message, Some(e.req));
                }
            }
            Control::AckFailed { ack_id, to } => {
                if let Some(req) = self.acks.complete(ack_id, &to) {
                    let m = format!("no client with id {:?} is connected", to.as_str());
                    self.error(ErrorCode::UnknownTarget, m, Some(req));
                }
            }
            Control::Migrate(m) => {
                if let Some(older) = self.migration.replace(m) {
                    let _ = older.reply.send(Err(ResumeRefusal::Expired));
                }
            }
            Control::Resume(t) => {
                // A newer takeover wins; an older socket waiting here is dropped.
                self.takeover = Some(t);
            }
            Control::StreamPeerGone { id, node } => {
                let why = format!("{id} disconnected: its hub {node:?} left the cluster");
                let frames = self.streams.reset_remote(
                    |r| r.client == id && r.node == node,
                    ErrorCode::PeerLeft,
                    &why,
                );
                for f in frames {
                    self.send(&f);
                }
            }
            Control::StreamsInterrupted => {
                let why = "the link between this hub and the cluster was interrupted, so data \
                           of this stream to or from another hub may be lost; open it again";
                let frames =
                    self.streams
                        .reset_remote(|_| true, ErrorCode::ClusterUnavailable, why);
                for f in frames {
                    self.send(&f);
                }
            }
            Control::PeerGone { id, conn } => {
                for req in self.acks.fail_target(&id) {
                    let m = format!("{:?} disconnected before answering", id.as_str());
                    self.error(ErrorCode::PeerLeft, m, Some(req));
                }
                if self.contacts.gone(&id, conn, Instant::now()) {
                    self.send(&ServerFrame::PeerLeft { id });
                }
            }
        }
    }

    async fn cleanup(mut self) {
        let hub = self.hub.clone();
        let registry = hub.registry();
        // No new call reaches a provider that is leaving.
        if let Some(svc) = self.provided.take() {
            let closed = hub.router.services.unprovide(&svc, self.conn.conn);
            hub.router.topics_ended(closed);
            if let Some(bp) = &hub.router.cluster {
                bp.provider_gone(self.conn.conn);
            }
        }
        if let Some(bp) = &hub.router.cluster {
            // First: no pending join completes after the connection left its sessions.
            bp.session_joins_ended(&self.conn);
        }
        match &self.migrated_to {
            // It stays a member of its sessions, reached on its new hub from now on.
            Some(to) => hub.router.sessions.rehome(&self.conn, to),
            None => hub.router.sessions.leave_all(&self.conn),
        }
        if let Some(bp) = &hub.router.cluster {
            bp.session_member_gone(&self.conn, self.migrated);
        }
        let owned = registry.unregister(&self.conn);
        self.conn.cancel();
        let rooms: Vec<RoomName> = self.conn.rooms.lock().drain().collect();
        for room in rooms {
            if registry.leave(&room, &self.conn) && !self.migrated {
                let left = ServerFrame::MemberLeft {
                    room: room.clone(),
                    id: self.conn.client.clone(),
                };
                hub.router.to_room(&room, &left, None);
                if let Some(bp) = &hub.router.cluster {
                    bp.left(&room, &self.conn.client);
                }
            }
        }
        if let Some(bp) = &hub.router.cluster {
            // Matches the claim of the handshake (after the resume window, not at the drop);
            // a session that moved to another hub handed its claim over instead.
            if !self.migrated {
                bp.release(&self.conn.client).await;
            }
        }
        let watchers: HashSet<u64> = self
            .conn
            .peek()
            .map(|k| std::mem::take(&mut *k.watchers.lock()))
            .unwrap_or_default();
        if owned && self.migrated {
            // The client lives on, on another hub: its contacts here reach it through the
            // cluster from now on, and hear nothing.
        } else if owned {
            for w in watchers {
                hub.router.control(
                    w,
                    Control::PeerGone {
                        id: self.conn.client.clone(),
                        conn: self.conn.conn,
                    },
                );
            }
        } else if let Some(newer) = registry.client(&self.conn.client) {
            newer.cold().watchers.lock().extend(watchers);
        }
        for (target, conn) in self.contacts.drain() {
            if conn == REMOTE {
                if let Some(bp) = &hub.router.cluster {
                    bp.unwatch(&target, self.conn.conn);
                }
            } else if let Some(c) = registry.conn(conn) {
                if let Some(k) = c.peek() {
                    k.watchers.lock().remove(&self.conn.conn);
                }
            } else if let Some(c) = registry.client(&target) {
                if let Some(k) = c.peek() {
                    k.watchers.lock().remove(&self.conn.conn);
                }
            }
        }
        let reason = self.conn.close_reason().cloned();
        debug!(id = %self.conn.client, reason = ?reason.as_ref().map(|r| r.code), "client disconnected");
        hub.router.services.unsubscribe_all(&self.conn);
        if let Some(bp) = &hub.router.cluster {
            bp.unsubscribe_all(self.conn.conn);
        }
        for e in self.calls.drain() {
            e.handle.release();
        }
        for p in self.watched.take().map(|w| *w).unwrap_or_default() {
            if let Some(c) = registry.conn(p) {
                if let Some(k) = c.peek() {
                    k.call_watchers.lock().remove(&self.conn.conn);
                }
            }
        }
        let unread = self.conn.mailbox.close();
        // After the close, no invoke can be queued here: every caller that could have sent one
        // registered as a watcher before, and hears that this provider is gone.
        let callers: HashSet<u64> = self
            .conn
            .peek()
            .map(|k| std::mem::take(&mut *k.call_watchers.lock()))
            .unwrap_or_default();
        for w in callers {
            hub.router.control(
                w,
                Control::ProviderGone {
                    conn: self.conn.conn,
                },
            );
        }
        let unread = unread.into_iter().filter_map(|o| match o {
            Outbound::Stream(item) => Some(item),
            Outbound::Frame(_) | Outbound::Whole(_) => None,
        });
        self.streams.close(&self.conn.client, unread);
        // Write the close reason, if there is one, then the close frame.
        let Some(mut ws) = self.ws.take() else {
            return;
        };
        let fut = async {
            if let Some(r) = &reason {
                let frame = ServerFrame::Error(ErrorFrame::new(r.code, r.message.clone(), None));
                let body = EncodedBody::encode(self.conn.encoding, &frame);
                ws.send(self.framer.message(&body)).await.ok()?;
                ws.send(writer::close_frame(r.code, &r.message))
                    .await
                    .ok()?;
            }
            ws.close().await.ok()
        };
        let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, fut).await;
    }
}
