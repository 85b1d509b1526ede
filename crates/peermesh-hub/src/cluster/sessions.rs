//! Sessions across hubs: a session lives on its home hub; members on other hubs reach it
//! through their own hub.
//!
//! ```text
//!   member's hub                                   home hub
//!   session_join ─► claim the session in the registry
//!                   won: create it here (this hub is its home)
//!                   taken: SessionAsk{join} ──────► join_member(Remote) ─► snapshot, events
//!   SessionOut{to: member} ◄── snapshot chunks, ok / error answers
//!   SessionOut{skip}       ◄── every event, once per hub with members, in revision order
//!   session_op / leave / drop / resume ─► SessionAsk ─► apply / leave / away / back
//! ```
//!
//! The member's hub keeps, per session held elsewhere, its home and its local members (the
//! connections that received the snapshot), and hands every event to them. Ordering holds
//! because the home publishes everything for one hub on that hub's subject, in the order
//! the session's lock produced it. A member whose hub dies leaves the sessions with it (its id
//! is released); a session whose home dies is gone, and its members elsewhere are told so
//! with an `unknown_session` error (at the next reconcile, within 5 s of the release).
//!
//! A connection's frames for one session are handled in the order it sent them, as on one
//! hub, although its `session_join` is resolved asynchronously (a registry round trip, then
//! possibly the home's answer). While the join is pending ([`Joins`], in the connection's
//! `ConnShared`), the connection's later frames for that session wait behind it, at most
//! [`MAX_WAITING`] of them and [`MAX_WAITING_BYTES`] (beyond: `rate_limited`), and run in
//! order when it is resolved:
//!
//! ```text
//!   session_join ─► Claiming ── won ──► joined here, then the waiting frames here
//!                      │ ─────── error ─► cluster_unavailable for the join and each waiting frame
//!                      └─ taken ─► Asked{home}: SessionAsk{join}, then the waiting frames to home
//!   Asked{home}: session_op ──────────────► straight to the home (it handles them after the join)
//!                session_join / _leave ───► wait for the home's answer (they change the
//!                                           membership this hub records), and all after them
//!   home's answer (last snapshot chunk or error) ─► membership recorded (or not), the waiting
//!                                                   frames run in order
//! ```
//!
//! The order to the home holds because one connection's frames for a session are published
//! under its `Joins` lock while the join is pending, and in its task after; the publisher keeps
//! this hub's order (`Backplane::enqueue` publishes directly only when nothing waits in its
//! queue), NATS keeps the order of one connection's messages on one subject, and the home's
//! inbound task handles `peermesh.node.<home>` messages one at a time, in arrival order.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use bytes::Bytes;
use peermesh_proto::{
    ClientFrame, ClientId, EncodedBody, ErrorCode, ErrorFrame, ServerFrame, SessionMode,
    SessionName,
};

use super::relay::{Ask, Relay};
use super::{node_subject, Backplane};
use crate::registry::ConnShared;
use crate::router::{Router, Shared};
use crate::sessions::mirror::Mirror;
use crate::sessions::Member;

/// A session held by another hub, seen from a hub with members of it.
#[derive(Debug)]
pub(crate) struct Held {
    home: String,
    /// Local members, by client id.
    conns: HashMap<ClientId, Arc<ConnShared>>,
    /// The session's state as its members here have seen it: what this hub takes over
    /// from if the home leaves the cluster.
    mirror: Mirror,
    /// Operations of local members sent to the home and not answered yet (client, `req`),
    /// at most [`MAX_UNANSWERED`]: if the home leaves first, each is answered here.
    unanswered: std::collections::HashSet<(ClientId, u64)>,
    /// Local members whose `session_leave` went to the home, not confirmed yet (with its
    /// `req`): if the home leaves first, the leave is done where the session goes.
    leaving: HashMap<ClientId, Option<u64>>,
}

/// Most operations per session held elsewhere that a hub remembers as not answered yet;
/// beyond it one may go unanswered if the home leaves the cluster.
pub(crate) const MAX_UNANSWERED: usize = 4096;

/// How long a hub that took a session over waits for the other members' hubs to confirm
/// them (`Ask::Moved`) before they leave it.
pub(crate) const CONFIRM_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a hub without a whole mirror of a session whose home left waits for another
/// hub to take it over, before it tells its members the session is lost.
const AWAIT_TAKEOVER: std::time::Duration = std::time::Duration::from_secs(3);

/// How long a `session_join` waits for a session held by a hub that left the cluster to be
/// taken over (or freed) before it is sent there anyway (and fails).
const AWAIT_GONE_HOME: std::time::Duration = std::time::Duration::from_secs(15);

/// Most `Ask::Moved` requests kept for a session while this hub takes it over.
const MAX_EARLY_ASKS: usize = 4096;

/// Local clients whose session moved here (they resumed here) and that asked the home of a
/// session they are in for a fresh snapshot, not answered yet: if that home leaves the
/// cluster first, they follow the session to the hub that takes it over (or are told it is
/// lost), like its members here.
#[derive(Debug)]
pub(crate) struct MovingIn {
    home: String,
    conns: HashMap<ClientId, Arc<ConnShared>>,
    since: std::time::Instant,
}

/// How long a hub keeps a [`MovingIn`] entry the home never answered.
const MOVING_IN_FOR: std::time::Duration = std::time::Duration::from_secs(60);

/// Requests for a session this hub is taking over, that came before it was installed.
#[derive(Debug, Default)]
pub(crate) struct Resolving {
    asks: Vec<(String, ClientId, u64)>,
}

/// Most frames of one connection that wait behind one of its pending `session_join`s; a
/// frame beyond it is dropped and answered with `rate_limited`.
pub(crate) const MAX_WAITING: usize = 256;
/// Most bytes of them (each frame counted at its MessagePack size), likewise.
pub(crate) const MAX_WAITING_BYTES: usize = 4 << 20;

/// A connection's `session_join`s in a cluster that are not resolved yet, and its frames for
/// those sessions that wait behind them. Kept in the connection's `ConnShared`; its lock is
/// never held across an await.
#[derive(Debug, Default)]
pub(crate) struct Joins {
    pending: HashMap<SessionName, Pending>,
    /// The connection ended: nothing is pending, and no membership is recorded for it.
    ended: bool,
}

/// One pending `session_join`.
#[derive(Debug)]
enum Pending {
    /// Claiming the session's name in the registry: every later frame of the connection for
    /// the session waits.
    Claiming { waiting: Waiting },
    /// Hub `home` holds the session and was asked to join; its answer (the snapshot, or an
    /// error) has not come back. Operations go straight to the home while nothing waits; a
    /// join or leave waits for the answer (it changes the membership this hub records when
    /// the answer arrives), and so does everything after it.
    Asked { home: String, waiting: Waiting },
}

impl Pending {
    fn waiting(&mut self) -> &mut Waiting {
        match self {
            Pending::Claiming { waiting } | Pending::Asked { waiting, .. } => waiting,
        }
    }
}

/// Frames waiting behind a pending join, in order.
#[derive(Debug, Default)]
struct Waiting {
    frames: VecDeque<ClientFrame>,
    /// Their size, as [`MAX_WAITING_BYTES`] counts it.
    bytes: usize,
}

impl IntoIterator for Waiting {
    type Item = ClientFrame;
    type IntoIter = std::collections::vec_deque::IntoIter<ClientFrame>;

    fn into_iter(self) -> Self::IntoIter {
        self.frames.into_iter()
    }
}

/// The session a session frame names (a `session_join` here always names one).
fn session_of(frame: &ClientFrame) -> Option<&SessionName> {
    match frame {
        ClientFrame::SessionJoin { session, .. } => session.as_ref(),
        ClientFrame::SessionOp { session, .. } | ClientFrame::SessionLeave { session, .. } => {
            Some(session)
        }
        _ => None,
    }
}

fn rtt_of(conn: &ConnShared) -> Option<std::time::Duration> {
    match conn.rtt_us.load(std::sync::atomic::Ordering::Relaxed) {
        0 => None,
        us => Some(std::time::Duration::from_micros(us)),
    }
}

/// Answers a frame of a local connection (as its own task would).
fn answer(router: &Router, conn: &ConnShared, frame: &ServerFrame) {
    if let ServerFrame::Error(e) = frame {
        router.metrics.inc_error(e.code);
    }
    let _ = router.to_conn(conn, EncodedBody::encode(conn.encoding, frame));
}

fn refuse(router: &Router, conn: &ConnShared, code: ErrorCode, m: String, req: Option<u64>) {
    answer(router, conn, &error(code, m, req));
}

fn ok(router: &Router, conn: &ConnShared, req: Option<u64>) {
    if let Some(req) = req {
        answer(router, conn, &ServerFrame::Ok { req });
    }
}

fn queue_full() -> String {
    "the hub's queue to the cluster is full; try again".to_owned()
}

/// Queues a frame for a client from outside its task.
pub(crate) fn tell(conn: &ConnShared, frame: &ServerFrame) {
    let _ = conn.send(EncodedBody::encode(conn.encoding, frame));
}

fn error(code: ErrorCode, message: String, req: Option<u64>) -> ServerFrame {
    ServerFrame::Error(ErrorFrame::new(code, message, req))
}

impl Backplane {
    /// Publishes a session frame to hub `node`.
    pub(crate) fn session_out(&self, node: &str, msg: Bytes) {
        self.enqueue(node_subject(node), msg);
    }

    /// Publishes a session's events to hub `node`, batched with whatever else this hub
    /// publishes to it before its flusher runs (a busy session's events, one NATS message
    /// for many).
    pub(crate) fn session_events_out(&self, node: &str, msg: Bytes) {
        self.enqueue_batched(node_subject(node), msg);
    }

    /// The home of session `name` when another hub holds it and local client `id` is a member.
    pub(crate) fn session_home_of(&self, name: &SessionName, id: &ClientId) -> Option<String> {
        let held = self.held.get(name)?;
        held.conns.contains_key(id).then(|| held.home.clone())
    }

    fn ask(&self, home: &str, conn: &ConnShared, rtt_ms: Option<u64>, ask: Ask) -> bool {
        let msg = Relay::SessionAsk {
            origin: self.node.clone(),
            client: conn.client.clone(),
            conn: conn.conn,
            rtt_ms,
            ask,
        };
        self.enqueue(node_subject(home), msg.encode())
    }

    /// A `session_join` (naming its session), `session_op` or `session_leave` of a local
    /// connection in a cluster: handled in the order the connection sent them, as on one hub,
    /// though a join may be resolved later (see the module's documentation).
    pub(crate) fn session_frame(
        self: &Arc<Self>,
        router: &Router,
        conn: &Arc<ConnShared>,
        frame: ClientFrame,
    ) {
        let mut joins = conn.cold().joins.lock();
        self.route(router, conn, &mut joins, frame);
    }

    /// [`Backplane::session_frame`] with the connection's `Joins` locked.
    fn route(
        self: &Arc<Self>,
        router: &Router,
        conn: &Arc<ConnShared>,
        joins: &mut Joins,
        frame: ClientFrame,
    ) {
        let Some(name) = session_of(&frame).cloned() else {
            return;
        };
        if let Some(pending) = joins.pending.get_mut(&name) {
            return self.behind_join(router, conn, pending, &name, frame);
        }
        match frame {
            ClientFrame::SessionJoin { mode, req, .. } => {
                self.join(router, conn, joins, name, mode.unwrap_or_default(), req)
            }
            ClientFrame::SessionOp { session, op, req } => {
                if let Some(home) = self.home_for(router, &session, &conn.client) {
                    let frame = ClientFrame::SessionOp { session, op, req };
                    self.forward(router, &home, conn, frame);
                    return;
                }
                match router.sessions.apply(&session, conn, op) {
                    Ok(_) => ok(router, conn, req),
                    Err((code, m)) => refuse(router, conn, code, m, req),
                }
            }
            ClientFrame::SessionLeave { session, req } => {
                if let Some(home) = self.home_for(router, &session, &conn.client) {
                    let frame = ClientFrame::SessionLeave { session, req };
                    self.forward(router, &home, conn, frame);
                    return;
                }
                match router.sessions.leave(&session, conn) {
                    Ok(()) => ok(router, conn, req),
                    Err((code, m)) => refuse(router, conn, code, m, req),
                }
            }
            _ => {}
        }
    }

    /// The home of a session held by another hub that local client `id` is a member of.
    fn home_for(&self, router: &Router, name: &SessionName, id: &ClientId) -> Option<String> {
        if router.sessions.holds(name) {
            return None;
        }
        self.session_home_of(name, id)
    }

    /// A frame of a connection for a session it has a pending join of.
    fn behind_join(
        &self,
        router: &Router,
        conn: &ConnShared,
        pending: &mut Pending,
        name: &SessionName,
        frame: ClientFrame,
    ) {
        if let Pending::Asked { home, waiting } = pending {
            if waiting.frames.is_empty() && matches!(frame, ClientFrame::SessionOp { .. }) {
                // The home handles it after the join it was asked first.
                self.forward(router, home, conn, frame);
                return;
            }
        }
        let waiting = pending.waiting();
        let size = peermesh_proto::encode_client(peermesh_proto::Encoding::MsgPack, &frame).len();
        if waiting.frames.len() >= MAX_WAITING || waiting.bytes + size > MAX_WAITING_BYTES {
            let m = format!(
                "{} frames ({} bytes) for session {:?} already wait for its session_join to be \
                 answered (at most {MAX_WAITING} frames, {MAX_WAITING_BYTES} bytes): this {} \
                 was dropped; wait for the join's answer before sending more",
                waiting.frames.len(),
                waiting.bytes,
                name.as_str(),
                frame.type_name()
            );
            return refuse(router, conn, ErrorCode::RateLimited, m, frame.req());
        }
        waiting.bytes += size;
        waiting.frames.push_back(frame);
    }

    /// A `session_join` of a connection without a pending join of that session.
    fn join(
        self: &Arc<Self>,
        router: &Router,
        conn: &Arc<ConnShared>,
        joins: &mut Joins,
        name: SessionName,
        mode: SessionMode,
        req: Option<u64>,
    ) {
        {
            // Pending joins count: as on one hub, where a join is answered at once.
            let sessions = conn.cold().sessions.lock();
            let count = sessions.len()
                + joins
                    .pending
                    .keys()
                    .filter(|n| !sessions.contains(*n))
                    .count();
            let max = self.max_sessions_per_client;
            if count >= max && !sessions.contains(&name) {
                drop(sessions);
                let m = format!("already in {count} sessions (max_sessions_per_client is {max})");
                return refuse(router, conn, ErrorCode::TooManySessions, m, req);
            }
        }
        let rtt = rtt_of(conn);
        if router.sessions.holds(&name) {
            if let Err((code, m)) = router.sessions.join(&name, mode, conn, rtt, req) {
                refuse(router, conn, code, m, req);
            }
            return;
        }
        let frame = ClientFrame::SessionJoin {
            session: Some(name.clone()),
            mode: Some(mode),
            req,
        };
        if let Some(home) = self.session_home_of(&name, &conn.client) {
            // A member already: its home sends a fresh snapshot.
            self.forward(router, &home, conn, frame);
            return;
        }
        let known = self.held.get(&name).map(|h| h.home.clone());
        if let Some(home) = known {
            // Other local clients are members: the home is known.
            if self.forward(router, &home, conn, frame) {
                let waiting = Waiting::default();
                joins.pending.insert(name, Pending::Asked { home, waiting });
            }
            return;
        }
        // Created here once claimed in the cluster, or joined at its home hub; the answer
        // (snapshot or error) comes when that is done.
        let waiting = Waiting::default();
        joins
            .pending
            .insert(name.clone(), Pending::Claiming { waiting });
        let bp = self.clone();
        let router = router.clone();
        let conn = conn.clone();
        tokio::spawn(async move {
            let claim = bp.claim_live_session(&name).await;
            bp.claimed(&router, &conn, name, mode, req, claim);
        });
    }

    /// Claims session `name` for a join. While a hub that left the cluster still holds it,
    /// the hubs with its state are taking it over (or the reaper will free it): the claim is
    /// tried again until one of them has, rather than sending the join to a hub that is gone.
    async fn claim_live_session(
        &self,
        name: &SessionName,
    ) -> Result<peermesh_cluster::Claim, peermesh_cluster::ClusterError> {
        let until = tokio::time::Instant::now() + AWAIT_GONE_HOME;
        loop {
            let claim = self.cluster.claim_session(name.as_str()).await;
            match &claim {
                Ok(peermesh_cluster::Claim::Taken { node })
                    if !self.cluster.is_member(node) && tokio::time::Instant::now() < until =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                }
                _ => return claim,
            }
        }
    }

    /// The registry answered the claim of a connection's pending join: it is joined here, or
    /// asked at its home, and the frames that waited behind it follow.
    fn claimed(
        self: &Arc<Self>,
        router: &Router,
        conn: &Arc<ConnShared>,
        name: SessionName,
        mode: SessionMode,
        req: Option<u64>,
        claim: Result<peermesh_cluster::Claim, peermesh_cluster::ClusterError>,
    ) {
        let mut joins = conn.cold().joins.lock();
        let waiting = match joins.pending.remove(&name) {
            Some(Pending::Claiming { waiting }) => waiting,
            other => {
                if let Some(p) = other {
                    // Not this claim's (cannot happen: a name is claimed once at a time).
                    joins.pending.insert(name, p);
                    return;
                }
                // The connection ended meanwhile. A session name won for it is given back
                // unless a session of that name lives here now.
                drop(joins);
                if matches!(claim, Ok(peermesh_cluster::Claim::Won))
                    && !router.sessions.holds(&name)
                {
                    let bp = self.clone();
                    tokio::spawn(async move {
                        if let Err(e) = bp.cluster.release_session(name.as_str()).await {
                            tracing::debug!(session = %name.as_str(), error = %e, "cannot release a session's home");
                        }
                    });
                }
                return;
            }
        };
        match claim {
            Ok(peermesh_cluster::Claim::Won) => {
                if let Err((code, m)) = router.sessions.join(&name, mode, conn, rtt_of(conn), req) {
                    refuse(router, conn, code, m, req);
                }
            }
            Ok(peermesh_cluster::Claim::Taken { node }) => {
                let frame = ClientFrame::SessionJoin {
                    session: Some(name.clone()),
                    mode: Some(mode),
                    req,
                };
                if !self.forward(router, &node, conn, frame) {
                    let why = queue_full();
                    for f in waiting {
                        refuse(
                            router,
                            conn,
                            ErrorCode::ClusterUnavailable,
                            why.clone(),
                            f.req(),
                        );
                    }
                    return;
                }
                let asked = Pending::Asked {
                    home: node,
                    waiting: Waiting::default(),
                };
                joins.pending.insert(name, asked);
            }
            Err(e) => {
                let m = format!(
                    "the hub cannot reach its cluster to find session {:?} ({e}); try again",
                    name.as_str()
                );
                refuse(router, conn, ErrorCode::ClusterUnavailable, m.clone(), req);
                for f in waiting {
                    refuse(
                        router,
                        conn,
                        ErrorCode::ClusterUnavailable,
                        m.clone(),
                        f.req(),
                    );
                }
                return;
            }
        }
        for f in waiting {
            self.route(router, conn, &mut joins, f);
        }
    }

    /// Sends a session frame of a local connection to the session's home (false, and the
    /// frame answered with `cluster_unavailable`, when the queue to NATS is full).
    fn forward(&self, router: &Router, home: &str, conn: &ConnShared, frame: ClientFrame) -> bool {
        let req = frame.req();
        let rtt_ms = match &frame {
            ClientFrame::SessionJoin { .. } => rtt_of(conn).map(|d| d.as_millis() as u64),
            ClientFrame::SessionLeave { session, req } => {
                // Left, as far as the client and its count of sessions go; the session's
                // events still reach it until the home has handled the leave (`SessionLeft`),
                // as the events of its operations before the leave are for it.
                if let Some(k) = conn.peek() {
                    k.sessions.lock().remove(session);
                }
                if let Some(mut held) = self.held.get_mut(session) {
                    if held.home == home && held.conns.contains_key(&conn.client) {
                        held.leaving.insert(conn.client.clone(), *req);
                    }
                }
                None
            }
            _ => None,
        };
        // Remembered before it is sent: the answer may come back at once.
        let tracked = match (&frame, req) {
            (ClientFrame::SessionOp { session, .. }, Some(req)) => {
                self.await_answer(session, home, &conn.client, req)
            }
            _ => None,
        };
        if self.ask(home, conn, rtt_ms, Ask::Frame(frame)) {
            return true;
        }
        if let Some(session) = tracked {
            self.answered(&session, &conn.client, req);
        }
        refuse(
            router,
            conn,
            ErrorCode::ClusterUnavailable,
            queue_full(),
            req,
        );
        false
    }

    /// Remembers that local client `client`'s operation `req` on session `name` (held by
    /// `home`) waits for its answer; the session when remembered.
    fn await_answer(
        &self,
        name: &SessionName,
        home: &str,
        client: &ClientId,
        req: u64,
    ) -> Option<SessionName> {
        let mut held = self.held.get_mut(name)?;
        if held.home != home || held.unanswered.len() >= MAX_UNANSWERED {
            return None;
        }
        held.unanswered.insert((client.clone(), req));
        Some(name.clone())
    }

    fn answered(&self, name: &SessionName, client: &ClientId, req: Option<u64>) {
        let Some(req) = req else { return };
        if let Some(mut held) = self.held.get_mut(name) {
            if !held.unanswered.is_empty() {
                held.unanswered.remove(&(client.clone(), req));
            }
        }
    }

    /// Operations sent to hub `gone` that it will never answer: each client is told.
    fn never_answered(
        &self,
        router: &Router,
        name: &SessionName,
        gone: &str,
        unanswered: std::collections::HashSet<(ClientId, u64)>,
    ) {
        for (client, req) in unanswered {
            let Some(conn) = router.registry.client(&client) else {
                continue;
            };
            let m = format!(
                "hub {gone:?}, which held session {:?}, left the cluster before answering this \
                 operation: it may or may not have been applied (the session's events, or a \
                 fresh session_state, show which)",
                name.as_str()
            );
            refuse(router, &conn, ErrorCode::ClusterUnavailable, m, Some(req));
        }
    }

    /// A local connection ended: its pending joins are dropped with what waited behind them,
    /// and a home already asked is told it left (after the join, in order), so no member is
    /// left behind there. Called before the connection leaves its sessions.
    pub(crate) fn session_joins_ended(&self, conn: &ConnShared) {
        let pending = {
            let mut joins = conn.cold().joins.lock();
            joins.ended = true;
            std::mem::take(&mut joins.pending)
        };
        for (name, p) in pending {
            if let Pending::Asked { home, .. } = p {
                let frame = ClientFrame::SessionLeave {
                    session: name,
                    req: None,
                };
                self.ask(&home, conn, None, Ask::Frame(frame));
            }
        }
    }

    /// A local connection's pending joins asked at a hub that left the cluster: no answer
    /// will come, the session's state is gone with that hub. The join fails with
    /// `unknown_session` (as a member's session does), and what waited runs (as a
    /// non-member's frames).
    pub(crate) fn drop_orphaned_joins(self: &Arc<Self>, router: &Router, conn: &Arc<ConnShared>) {
        let mut joins = conn.cold().joins.lock();
        let orphaned: Vec<SessionName> = joins
            .pending
            .iter()
            .filter(
                |(_, p)| matches!(p, Pending::Asked { home, .. } if !self.cluster.is_member(home)),
            )
            .map(|(name, _)| name.clone())
            .collect();
        for name in orphaned {
            let Some(Pending::Asked { home, waiting }) = joins.pending.remove(&name) else {
                continue;
            };
            let m = format!(
                "session {:?} was held by hub {home:?}, which left the cluster before it \
                 answered the session_join: its state is lost; join it again to start it anew",
                name.as_str()
            );
            refuse(router, conn, ErrorCode::UnknownSession, m, None);
            for f in waiting {
                self.route(router, conn, &mut joins, f);
            }
        }
    }

    fn forget_member(&self, name: &SessionName, id: &ClientId) {
        self.held.remove_if_mut(name, |_, h| {
            h.conns.remove(id);
            h.conns.is_empty()
        });
    }

    /// A local client dropped (`away`) or resumed: its sessions held elsewhere learn it.
    pub(crate) fn session_member_away(&self, conn: &ConnShared, away: bool) {
        let names: Vec<SessionName> = conn
            .peek()
            .map(|k| k.sessions.lock().iter().cloned().collect())
            .unwrap_or_default();
        for name in names {
            if let Some(home) = self.session_home_of(&name, &conn.client) {
                let ask = if away {
                    Ask::Away(name)
                } else {
                    Ask::Back(name)
                };
                self.ask(&home, conn, None, ask);
            }
        }
    }

    /// A local client is gone: it leaves its sessions held elsewhere — for good, or, when
    /// its session moved to another hub (`migrated`), only here (the new hub tells the homes).
    pub(crate) fn session_member_gone(&self, conn: &ConnShared, migrated: bool) {
        let names: Vec<SessionName> = conn
            .peek()
            .map(|k| k.sessions.lock().iter().cloned().collect())
            .unwrap_or_default();
        for name in names {
            let Some(home) = self.session_home_of(&name, &conn.client) else {
                continue;
            };
            self.forget_member(&name, &conn.client);
            if !migrated {
                let frame = ClientFrame::SessionLeave {
                    session: name,
                    req: None,
                };
                self.ask(&home, conn, None, Ask::Frame(frame));
            }
        }
    }

    /// A session moved here with its client (it resumed here): each session it is in learns
    /// where it is now, and sends it a fresh snapshot.
    pub(crate) fn sessions_arrived(
        &self,
        router: &Router,
        conn: &Arc<ConnShared>,
        names: &[SessionName],
    ) {
        for name in names {
            if router.sessions.holds(name) {
                if router.sessions.moved(name, Member::Local(conn)).is_ok() {
                    conn.cold().sessions.lock().insert(name.clone());
                }
                continue;
            }
            // Unknown: the home's key was released (it died) and no hub took the session
            // over yet; resolved with the sessions whose home left.
            let home = self.cluster.session_home(name.as_str()).unwrap_or_default();
            self.moving_in
                .entry(name.clone())
                .or_insert_with(|| MovingIn {
                    home: home.clone(),
                    conns: HashMap::new(),
                    since: std::time::Instant::now(),
                })
                .conns
                .insert(conn.client.clone(), conn.clone());
            if !home.is_empty() {
                // The snapshot that answers registers it as a member here.
                self.ask(&home, conn, None, Ask::Moved(name.clone()));
            }
        }
    }

    /// The home answered a local client that moved here (a snapshot, or an error).
    fn moved_in(&self, name: &SessionName, client: &ClientId) {
        self.moving_in.remove_if_mut(name, |_, m| {
            m.conns.remove(client);
            m.conns.is_empty()
        });
    }

    /// Forgets clients that moved here whose session's home never answered.
    pub(crate) fn expire_moving_in(&self) {
        self.moving_in
            .retain(|_, m| m.since.elapsed() < MOVING_IN_FOR);
    }

    /// A request of a member on hub `origin` for a session held here.
    pub(crate) fn session_ask(
        &self,
        router: &Router,
        origin: String,
        client: ClientId,
        conn: u64,
        rtt_ms: Option<u64>,
        ask: Ask,
    ) {
        let sessions = &router.sessions;
        let member = Member::Remote {
            client: &client,
            node: &origin,
            conn,
        };
        let (result, req, session) = match ask {
            Ask::Frame(ClientFrame::SessionJoin {
                session: Some(name),
                mode,
                req,
            }) => {
                let rtt = rtt_ms.map(std::time::Duration::from_millis);
                let r = sessions.join_member(&name, mode.unwrap_or_default(), member, rtt, req);
                // The snapshot answers a join.
                (r.map(|_| None), req, name)
            }
            Ask::Frame(ClientFrame::SessionOp { session, op, req }) => {
                let r = sessions.apply_remote(&session, &client, &origin, op);
                (r.map(|_| req), req, session)
            }
            Ask::Frame(ClientFrame::SessionLeave { session, req }) => {
                let r = sessions.leave_remote(&session, &client, &origin);
                (r.map(|_| req), req, session)
            }
            Ask::Frame(_) => return,
            Ask::Away(name) => {
                sessions.away_as(&name, &client, Some(&origin), conn, true);
                return;
            }
            Ask::Back(name) => {
                sessions.away_as(&name, &client, Some(&origin), conn, false);
                return;
            }
            Ask::Moved(name) => {
                if self.early_ask(router, &name, &origin, &client, conn) {
                    return;
                }
                if let Err((code, m)) = sessions.moved(&name, member) {
                    self.session_reply(&origin, &name, &client, error(code, m, None));
                }
                return;
            }
        };
        let frame = match result {
            Ok(Some(req)) => ServerFrame::Ok { req },
            Ok(None) => return,
            Err((code, m)) => error(code, m, req),
        };
        self.session_reply(&origin, &session, &client, frame);
    }

    /// Tells hub `node` that its client `client` left `session`, held here (under the
    /// session's lock, after the leave's events).
    pub(crate) fn session_left(&self, node: &str, session: &SessionName, client: &ClientId) {
        let out = Relay::SessionLeft {
            origin: self.node.clone(),
            session: session.clone(),
            client: client.clone(),
        };
        self.session_out(node, out.encode());
    }

    /// The home of `session` had local client `client` leave it: nothing more of the session
    /// is for it here (until it joins again).
    pub(crate) fn session_left_in(&self, origin: String, session: SessionName, client: ClientId) {
        let mut gone = None;
        self.held.remove_if_mut(&session, |_, h| {
            if h.home == origin {
                gone = h.conns.remove(&client);
                h.leaving.remove(&client);
            }
            h.conns.is_empty()
        });
        if let Some(conn) = gone {
            if let Some(k) = conn.peek() {
                k.sessions.lock().remove(&session);
            }
        }
    }

    fn session_reply(&self, node: &str, session: &SessionName, to: &ClientId, frame: ServerFrame) {
        let out = Relay::SessionOut {
            origin: self.node.clone(),
            session: session.clone(),
            to: Some(to.clone()),
            skip: None,
            frame,
        };
        self.session_out(node, out.encode());
    }

    /// A frame from the home of `session` for local members.
    pub(crate) fn session_in(
        self: &Arc<Self>,
        router: &Router,
        origin: String,
        session: SessionName,
        to: Option<ClientId>,
        skip: Option<ClientId>,
        frame: ServerFrame,
    ) {
        match to {
            Some(id) => {
                let Some(conn) = router.registry.client(&id) else {
                    return;
                };
                match &frame {
                    ServerFrame::Ok { req } => self.answered(&session, &id, Some(*req)),
                    ServerFrame::Error(e) => self.answered(&session, &id, e.req),
                    _ => {}
                }
                // The answer to a join asked there: its last snapshot chunk, or an error.
                let last_chunk = matches!(&frame, ServerFrame::SessionState(s) if !s.more);
                let is_answer = last_chunk || matches!(frame, ServerFrame::Error(_));
                if is_answer {
                    self.moved_in(&session, &id);
                }
                let mut joins = conn.cold().joins.lock();
                if joins.ended {
                    return;
                }
                let (register, waiting) = match joins.pending.get(&session) {
                    None => (last_chunk, None),
                    Some(Pending::Asked { home, .. }) if is_answer && *home == origin => {
                        match joins.pending.remove(&session) {
                            Some(Pending::Asked { waiting, .. }) => (last_chunk, Some(waiting)),
                            _ => (last_chunk, None),
                        }
                    }
                    // A join or leave of this client waits to be sent: it decides the
                    // membership, not this.
                    Some(_) => (false, None),
                };
                if register {
                    // A snapshot: from now on the client gets the session's events here.
                    let mut held = self.held.entry(session.clone()).or_insert_with(|| Held {
                        home: origin.clone(),
                        conns: HashMap::new(),
                        mirror: Mirror::default(),
                        unanswered: Default::default(),
                        leaving: HashMap::new(),
                    });
                    held.conns.insert(id.clone(), conn.clone());
                    conn.cold().sessions.lock().insert(session.clone());
                }
                let whole = self.partials.lock().chunk(&session, &id, &frame);
                if let Some(whole) = whole {
                    if let Some(mut held) = self.held.get_mut(&session) {
                        if held.home == origin {
                            held.mirror.snapshot(whole);
                        }
                    }
                }
                if matches!(frame, ServerFrame::SessionState(_)) {
                    // A snapshot chunk: the member must get the snapshot whole, as on the
                    // session's own hub (its size is bounded by the session's limits).
                    conn.send_whole(EncodedBody::encode(conn.encoding, &frame));
                } else {
                    tell(&conn, &frame);
                }
                let Some(waiting) = waiting else {
                    return;
                };
                if last_chunk {
                    // Member now: what waited goes to the home, in order.
                    for f in waiting {
                        self.route(router, &conn, &mut joins, f);
                    }
                    return;
                }
                // The join failed there. What waited goes there too, so that the home answers
                // it after the operations it already has (a `session_op` or `session_leave`
                // of a non-member: `unknown_session`), up to another join, which starts anew.
                let mut rest = waiting.into_iter();
                while let Some(f) = rest.next() {
                    if matches!(f, ClientFrame::SessionJoin { .. }) {
                        self.route(router, &conn, &mut joins, f);
                        for f in rest.by_ref() {
                            self.route(router, &conn, &mut joins, f);
                        }
                        break;
                    }
                    self.forward(router, &origin, &conn, f);
                }
            }
            None => self.session_events_in(&origin, &session, skip.as_ref(), [frame], false),
        }
    }

    /// Events of the home `origin` of `session` for its members here but `skip`; `whole`
    /// for the events of one action (a [`Relay::SessionBurst`]), queued beyond the members'
    /// outbound limits as the home queues them for its own members.
    pub(crate) fn session_events_in(
        &self,
        origin: &str,
        session: &SessionName,
        skip: Option<&ClientId>,
        frames: impl IntoIterator<Item = ServerFrame>,
        whole: bool,
    ) {
        let Some(mut held) = self.held.get_mut(session) else {
            return;
        };
        if held.home != origin {
            return;
        }
        for frame in frames {
            let mut shared = Shared::new(&frame);
            for (id, conn) in &held.conns {
                if Some(id) == skip {
                    continue;
                }
                if whole {
                    conn.send_whole(shared.body(conn.encoding));
                } else {
                    let _ = conn.send(shared.body(conn.encoding));
                }
            }
            // Last: the mirror takes the frame's values instead of copying them.
            held.mirror.event(frame);
        }
    }

    /// Sessions held by other hubs with members here, and how many of them this hub mirrors
    /// whole.
    pub(crate) fn sessions_elsewhere(&self) -> (usize, usize) {
        let mut counts = (0, 0);
        for h in self.held.iter() {
            counts.0 += 1;
            counts.1 += usize::from(h.mirror.view().is_some());
        }
        counts
    }

    /// Messages from other hubs may have been lost: no mirror can be trusted to be whole,
    /// and local members of sessions held elsewhere may have missed events. Once connected
    /// again, each such member asks its session's home for a fresh snapshot (a resync for
    /// the client, a whole mirror for this hub).
    pub(crate) fn mirrors_interrupted(self: &Arc<Self>) {
        self.partials.lock().clear();
        for mut held in self.held.iter_mut() {
            held.mirror.drop_view();
        }
        if self.resyncing.swap(true, Relaxed) {
            return;
        }
        let bp = self.clone();
        tokio::spawn(async move {
            while !bp.cluster.connected() {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            bp.resyncing.store(false, Relaxed);
            let members: Vec<(SessionName, String, Vec<Arc<ConnShared>>)> = bp
                .held
                .iter()
                .map(|h| {
                    (
                        h.key().clone(),
                        h.home.clone(),
                        h.conns.values().cloned().collect(),
                    )
                })
                .collect();
            for (name, home, conns) in members {
                for conn in conns {
                    bp.resync_member(&home, &conn, &name);
                }
            }
        });
    }

    /// Sessions whose home left the cluster: a hub with a whole mirror of one tries to take
    /// it over (of several, the registry lets exactly one); the others follow the hub that
    /// did, whose fresh snapshot resyncs their members. Members are told the session is lost
    /// (`unknown_session`) only when no hub could take it over.
    pub(crate) fn resolve_orphaned_sessions(self: &Arc<Self>, router: &Router) {
        let mut orphaned: Vec<(SessionName, String)> = self
            .held
            .iter()
            .filter(|h| !self.cluster.is_member(&h.home))
            .map(|h| (h.key().clone(), h.home.clone()))
            .collect();
        for m in self.moving_in.iter() {
            if !self.cluster.is_member(&m.home) && !orphaned.iter().any(|(n, _)| n == m.key()) {
                orphaned.push((m.key().clone(), m.home.clone()));
            }
        }
        for (name, gone) in orphaned {
            let vacant = match self.resolving.entry(name.clone()) {
                dashmap::mapref::entry::Entry::Occupied(_) => false,
                dashmap::mapref::entry::Entry::Vacant(v) => {
                    v.insert(Resolving::default());
                    true
                }
            };
            if !vacant {
                continue;
            }
            let bp = self.clone();
            let router = router.clone();
            tokio::spawn(async move {
                bp.resolve(&router, &name, &gone).await;
                // Hubs that found this one holding the session asked before it was installed.
                let early = bp.resolving.remove(&name).map(|(_, r)| r.asks);
                for (origin, client, conn) in early.unwrap_or_default() {
                    let ask = Ask::Moved(name.clone());
                    bp.session_ask(&router, origin, client, conn, None, ask);
                }
            });
        }
    }

    async fn resolve(self: &Arc<Self>, router: &Router, name: &SessionName, gone: &str) {
        let whole = self
            .held
            .get(name)
            .is_some_and(|h| h.home == gone && h.mirror.view().is_some());
        let outcome = if whole {
            self.cluster.take_over_session(name.as_str(), gone).await
        } else {
            self.await_takeover(name, gone).await
        };
        match outcome {
            Ok(peermesh_cluster::Claim::Won) => self.install(router, name, gone),
            Ok(peermesh_cluster::Claim::Taken { node })
                if node != gone && node != self.node && self.cluster.is_member(&node) =>
            {
                self.follow(router, name, gone, &node)
            }
            // The hub was only out of touch and is back: it still holds the session.
            Ok(_) if self.cluster.is_member(gone) => {}
            Ok(peermesh_cluster::Claim::Taken { .. }) => self.lost(router, name, gone),
            // NATS is away: the next reconcile tries again.
            Err(e) => {
                tracing::debug!(session = %name.as_str(), error = %e, "cannot take a session over yet")
            }
        }
    }

    /// Sessions held here that the registry records for another live hub (which took them
    /// over while this hub was cut off from the cluster) move there: this hub's members join
    /// it there, and get its snapshot (a resync). A session the registry lost (NATS came back
    /// empty) is recorded for this hub again.
    pub(crate) fn check_sessions_held_here(self: &Arc<Self>, router: &Router) {
        for name in router.sessions.names() {
            let heard = self.cluster.session_home(name.as_str());
            if heard.as_deref() == Some(self.node.as_str()) {
                continue;
            }
            let vacant = match self.resolving.entry(name.clone()) {
                dashmap::mapref::entry::Entry::Occupied(_) => false,
                dashmap::mapref::entry::Entry::Vacant(v) => {
                    v.insert(Resolving::default());
                    true
                }
            };
            if !vacant {
                continue;
            }
            let bp = self.clone();
            let router = router.clone();
            tokio::spawn(async move {
                let claim = bp.cluster.claim_session(name.as_str()).await;
                match claim {
                    Ok(peermesh_cluster::Claim::Taken { node }) if bp.cluster.is_member(&node) => {
                        bp.step_down(&router, &name, &node)
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(session = %name.as_str(), error = %e, "cannot check a session's home")
                    }
                }
                bp.resolving.remove(&name);
            });
        }
    }

    /// Hub `node` holds session `name`, which this hub held too: its members here join it
    /// there.
    fn step_down(&self, router: &Router, name: &SessionName, node: &str) {
        let Some((mode, conns)) = router.sessions.hand_over(name) else {
            return;
        };
        tracing::warn!(
            session = %name.as_str(), %node, members = conns.len(),
            "another hub took over a session held here while this hub was cut off: its \
             members here join it there, and changes made here since are dropped"
        );
        self.counters.sessions_handed_over.fetch_add(1, Relaxed);
        for conn in conns {
            let rtt_ms = rtt_of(&conn).map(|d| d.as_millis() as u64);
            let join = ClientFrame::SessionJoin {
                session: Some(name.clone()),
                mode: Some(mode),
                req: None,
            };
            self.ask(node, &conn, rtt_ms, Ask::Frame(join));
        }
    }

    /// Without a whole mirror: waits for another hub to take the session over.
    async fn await_takeover(
        &self,
        name: &SessionName,
        gone: &str,
    ) -> Result<peermesh_cluster::Claim, peermesh_cluster::ClusterError> {
        let until = tokio::time::Instant::now() + AWAIT_TAKEOVER;
        loop {
            if let Some(node) = self.cluster.session_home_now(name.as_str()).await? {
                if node != gone && self.cluster.is_member(&node) {
                    return Ok(peermesh_cluster::Claim::Taken { node });
                }
            }
            if tokio::time::Instant::now() >= until {
                return Ok(peermesh_cluster::Claim::Taken {
                    node: gone.to_owned(),
                });
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    /// This hub won session `name` from hub `gone`: it holds it from now on, from its mirror.
    fn install(self: &Arc<Self>, router: &Router, name: &SessionName, gone: &str) {
        let taken = self.held.remove_if_mut(name, |_, h| h.home == gone);
        let Some((_, mut held)) = taken else {
            return self.give_back(router, name);
        };
        // Members that moved here meanwhile are local members too; they missed events on the
        // way, so each gets a fresh snapshot once the session is held here.
        let arrived: Vec<Arc<ConnShared>> = self
            .moving_in
            .remove(name)
            .map(|(_, m)| m.conns.into_values().collect())
            .unwrap_or_default();
        for conn in &arrived {
            held.conns.insert(conn.client.clone(), conn.clone());
        }
        let Some(view) = held.mirror.take() else {
            // Cannot happen (checked before the claim, and only this task takes it).
            self.held.insert(name.clone(), held);
            return self.lost(router, name, gone);
        };
        let rev = view.seq();
        self.never_answered(router, name, gone, std::mem::take(&mut held.unanswered));
        // Leaves the gone home never confirmed: done here (not local members, so they leave
        // when the session is installed).
        let leavers = std::mem::take(&mut held.leaving);
        for (client, req) in &leavers {
            if let Some(conn) = held.conns.remove(client) {
                ok(router, &conn, *req);
            }
        }
        let hub_of = |id: &ClientId| {
            self.cluster
                .owner(id.as_str())
                .filter(|n| n != gone && *n != self.node && self.cluster.is_member(n))
        };
        let members: Vec<Arc<ConnShared>> = held.conns.values().cloned().collect();
        match router.sessions.take_over(name, view, held.conns, hub_of) {
            Ok(waiting) => {
                for conn in &arrived {
                    if router.sessions.moved(name, Member::Local(conn)).is_ok() {
                        conn.cold().sessions.lock().insert(name.clone());
                    }
                }
                self.counters.sessions_taken_over.fetch_add(1, Relaxed);
                tracing::info!(
                    session = %name.as_str(), from = %gone, rev, waiting = waiting.len(),
                    "took over a session whose home hub left the cluster"
                );
                if !waiting.is_empty() {
                    let router = router.clone();
                    let name = name.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(CONFIRM_WITHIN).await;
                        router.sessions.expire_unconfirmed(&name);
                    });
                }
            }
            Err((_, m)) => {
                tracing::warn!(session = %name.as_str(), "cannot take a session over: {m}");
                for conn in &members {
                    if let Some(k) = conn.peek() {
                        k.sessions.lock().remove(name);
                    }
                    let m = format!(
                        "session {:?} was held by hub {gone:?}, which left the cluster, and \
                         this hub could not take it over ({m}): join it again",
                        name.as_str()
                    );
                    tell(conn, &error(ErrorCode::UnknownSession, m, None));
                }
            }
        }
    }

    /// A session won in the registry that this hub has no members of (they all left while
    /// it claimed it) is released: nobody holds its state.
    fn give_back(self: &Arc<Self>, router: &Router, name: &SessionName) {
        if router.sessions.holds(name) {
            return;
        }
        let bp = self.clone();
        let name = name.clone();
        tokio::spawn(async move {
            let _ = bp.cluster.release_session(name.as_str()).await;
        });
    }

    /// Hub `node` took session `name` over from hub `gone`: this hub's members are reached
    /// there now; it sends each a fresh snapshot when asked.
    fn follow(&self, router: &Router, name: &SessionName, gone: &str, node: &str) {
        let mut conns: Vec<Arc<ConnShared>> = Vec::new();
        if let Some(mut m) = self.moving_in.get_mut(name) {
            if m.home == gone {
                m.home = node.to_owned();
                conns.extend(m.conns.values().cloned());
            }
        }
        let mut leavers: Vec<(Arc<ConnShared>, Option<u64>)> = Vec::new();
        let unanswered = match self.held.get_mut(name) {
            Some(mut held) if held.home == gone => {
                held.home = node.to_owned();
                held.mirror.drop_view();
                let leaving = std::mem::take(&mut held.leaving);
                for (id, conn) in &held.conns {
                    match leaving.get(id) {
                        Some(req) => leavers.push((conn.clone(), *req)),
                        None => conns.push(conn.clone()),
                    }
                }
                std::mem::take(&mut held.unanswered)
            }
            _ => Default::default(),
        };
        // A leave the gone home never confirmed goes to the new one.
        for (conn, req) in leavers {
            let leave = ClientFrame::SessionLeave {
                session: name.clone(),
                req,
            };
            self.ask(node, &conn, None, Ask::Frame(leave));
        }
        self.never_answered(router, name, gone, unanswered);
        if conns.is_empty() {
            return;
        }
        self.counters.sessions_followed.fetch_add(1, Relaxed);
        for conn in conns {
            self.resync_member(node, &conn, name);
        }
    }

    /// Asks session `name`'s home for a fresh snapshot for local member `conn` (it stays
    /// away there if it is away here).
    fn resync_member(&self, home: &str, conn: &ConnShared, name: &SessionName) {
        self.ask(home, conn, None, Ask::Moved(name.clone()));
        if conn.away.load(std::sync::atomic::Ordering::Acquire) {
            self.ask(home, conn, None, Ask::Away(name.clone()));
        }
    }

    /// No hub could take session `name` over from hub `gone`: its members here are told.
    fn lost(&self, router: &Router, name: &SessionName, gone: &str) {
        let mut conns: Vec<Arc<ConnShared>> = self
            .moving_in
            .remove_if(name, |_, m| m.home == gone)
            .map(|(_, m)| m.conns.into_values().collect())
            .unwrap_or_default();
        if let Some((_, held)) = self.held.remove_if(name, |_, h| h.home == gone) {
            self.never_answered(router, name, gone, held.unanswered);
            for (id, conn) in held.conns {
                match held.leaving.get(&id) {
                    // Left already, as far as it knows: its leave is done.
                    Some(req) => ok(router, &conn, *req),
                    None => conns.push(conn),
                }
            }
        }
        let gone = if gone.is_empty() { "(unknown)" } else { gone };
        for conn in &conns {
            if let Some(k) = conn.peek() {
                k.sessions.lock().remove(name);
            }
            let m = format!(
                "session {:?} was held by hub {gone:?}, which left the cluster, and no other \
                 hub had all of its state: it is lost; join it again to start it anew",
                name.as_str(),
            );
            tell(conn, &error(ErrorCode::UnknownSession, m, None));
        }
    }

    /// An `Ask::Moved` for a session this hub is taking over, before it holds it: kept until
    /// it does (true), or not (false: handle it now).
    fn early_ask(
        &self,
        router: &Router,
        name: &SessionName,
        origin: &str,
        client: &ClientId,
        conn: u64,
    ) -> bool {
        let Some(mut r) = self.resolving.get_mut(name) else {
            return false;
        };
        if router.sessions.holds(name) || r.asks.len() >= MAX_EARLY_ASKS {
            return false;
        }
        r.asks.push((origin.to_owned(), client.clone(), conn));
        true
    }
}
