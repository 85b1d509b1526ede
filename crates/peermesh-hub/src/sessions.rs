//! Sessions: rooms with shared state, ordered by the hub.
//!
//! ```text
//!   sessions: SessionName ──► Arc<Session> ──► Mutex { SessionState, members' connections }
//! ```
//!
//! `state` is the sans-IO state machine of one session (members, authority election, objects
//! with owners, sequenced events, snapshots for joiners and the member-side `View`); `patch`
//! applies RFC 7386 JSON merge patches. This module puts it on the hub: a session's lock is
//! held while its state changes *and* while the resulting events are queued to its members
//! (each queue push only appends, never waits), so every member sees the same order, and a
//! joiner's snapshot is queued under the same lock as its membership: the events after the
//! snapshot's revision follow it with no gap and no duplicate, however busy the session is.
//!
//! In a cluster a session lives on one hub, its *home* (the hub that created it, recorded by
//! compare-and-set in the cluster's registry, so of several hubs creating it at once exactly
//! one holds it). Members on other hubs are [`Member::Remote`]: their joins, operations,
//! leaves, drops and resumes come as requests relayed from their hub
//! (`cluster::sessions`), and what they receive — snapshots, answers, events — is published
//! once per hub with members, under the same lock, in the same order. So there is one
//! authority and one revision sequence per session, whichever hub a member is on.

pub(crate) mod mirror;
mod patch;
// The member-side `View`, digests and a few helpers serve the tests (and clients' mirrors).
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) mod state;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use parking_lot::Mutex;
use peermesh_proto::{
    ClientId, EncodedBody, ErrorCode, OwnerLeave as WireOwnerLeave, SessionChange, SessionMember,
    SessionMode, SessionName, SessionObject, SessionOp, SessionState as WireState,
};

use crate::cluster::relay::{BurstWriter, Relay};
use crate::cluster::Backplane;
use crate::registry::ConnShared;
use crate::router::Shared;
use state::{
    Change, Event, Limits, Mode, ObjectId, Op, OwnerLeave, Refusal, SessionState, StateEvent,
};

/// Encoded size a snapshot chunk aims at.
const CHUNK_BYTES: usize = 256 << 10;

/// Bytes of events in one [`Relay::SessionBurst`] message (well under NATS's default 1 MiB
/// payload limit).
const BURST_BYTES: usize = 256 << 10;

/// A refused session operation: the code and sentence of the `error` frame.
pub(crate) type SessionError = (ErrorCode, String);

fn refusal(r: Refusal) -> SessionError {
    let code = match r {
        Refusal::NotOwner => ErrorCode::NotOwner,
        Refusal::UnknownObject => ErrorCode::UnknownObject,
        Refusal::ObjectExists => ErrorCode::ObjectExists,
        Refusal::TooManyObjects => ErrorCode::TooManyObjects,
        Refusal::ObjectTooLarge => ErrorCode::ObjectTooLarge,
        Refusal::NotMember => ErrorCode::NotMember,
        Refusal::InvalidPatch => ErrorCode::InvalidPatch,
        Refusal::InvalidObjectId => ErrorCode::InvalidField,
        Refusal::TooManyMembers => ErrorCode::TooManyMembers,
    };
    (code, r.message().to_owned())
}

fn unknown_session(name: &SessionName) -> SessionError {
    (
        ErrorCode::UnknownSession,
        format!("not a member of session {:?}; join it first", name.as_str()),
    )
}

/// One session on the hub.
#[derive(Debug)]
pub(crate) struct Session {
    name: SessionName,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: SessionState,
    conns: HashMap<ClientId, Arc<ConnShared>>,
    /// Members on other hubs of the cluster: their hub.
    remote: HashMap<ClientId, String>,
    /// The last member left: the session is being removed; a join must create a new one.
    closed: bool,
    /// Taken over from a hub that left: members on other hubs whose hub has not yet said
    /// they are still there (`Ask::Moved`); those left when [`Sessions::expire_unconfirmed`]
    /// runs leave.
    unconfirmed: std::collections::HashSet<ClientId>,
}

/// Figures for the status page and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Sessions that exist.
    pub sessions: usize,
    /// Members of all sessions.
    pub members: usize,
    /// Objects of all sessions.
    pub objects: usize,
}

/// Every session of one hub.
#[derive(Debug)]
pub(crate) struct Sessions {
    map: DashMap<SessionName, Arc<Session>>,
    limits: Limits,
    /// Set in a cluster: members on other hubs.
    cluster: Option<Arc<Backplane>>,
}

/// A member of a session held by this hub.
#[derive(Debug, Clone)]
pub(crate) enum Member<'a> {
    /// A client of this hub.
    Local(&'a Arc<ConnShared>),
    /// Client `client` (connection `conn`) of hub `node`.
    Remote {
        client: &'a ClientId,
        node: &'a str,
        conn: u64,
    },
}

impl Member<'_> {
    fn client(&self) -> &ClientId {
        match self {
            Member::Local(c) => &c.client,
            Member::Remote { client, .. } => client,
        }
    }

    fn conn_no(&self) -> u64 {
        match self {
            Member::Local(c) => c.conn,
            Member::Remote { conn, .. } => *conn,
        }
    }
}

impl Sessions {
    pub(crate) fn new(
        max_members: usize,
        max_objects: usize,
        max_value_bytes: usize,
        cluster: Option<Arc<Backplane>>,
    ) -> Self {
        Self {
            map: DashMap::new(),
            limits: Limits {
                max_members,
                max_objects,
                max_value_bytes,
            },
            cluster,
        }
    }

    /// Whether this hub holds session `name`.
    pub(crate) fn holds(&self, name: &SessionName) -> bool {
        self.map.contains_key(name)
    }

    /// Joins `conn` to a session (created with `mode` if new): queues its snapshot (carrying
    /// `req`) and tells the other members. Returns the snapshot's revision.
    pub(crate) fn join(
        &self,
        name: &SessionName,
        mode: SessionMode,
        conn: &Arc<ConnShared>,
        rtt: Option<Duration>,
        req: Option<u64>,
    ) -> Result<u64, SessionError> {
        let rev = self.join_member(name, mode, Member::Local(conn), rtt, req)?;
        conn.cold().sessions.lock().insert(name.clone());
        Ok(rev)
    }

    /// Joins a member, local or on another hub, to a session held here (created with `mode`
    /// if new). The snapshot goes to the member first, then the events that follow it.
    pub(crate) fn join_member(
        &self,
        name: &SessionName,
        mode: SessionMode,
        member: Member<'_>,
        rtt: Option<Duration>,
        req: Option<u64>,
    ) -> Result<u64, SessionError> {
        loop {
            let mut created = false;
            let session = self
                .map
                .entry(name.clone())
                .or_insert_with(|| {
                    created = true;
                    Arc::new(Session {
                        name: name.clone(),
                        inner: Mutex::new(Inner {
                            state: SessionState::new(self.limits),
                            conns: HashMap::new(),
                            remote: HashMap::new(),
                            closed: false,
                            unconfirmed: Default::default(),
                        }),
                    })
                })
                .clone();
            let mut inner = session.inner.lock();
            if inner.closed {
                // Removed between the lookup and the lock: make a new one.
                drop(inner);
                self.map.remove_if(name, |_, s| Arc::ptr_eq(s, &session));
                continue;
            }
            if created {
                self.reclaim(name);
            }
            let mode = match mode {
                SessionMode::Authoritative => Mode::PeerAuthoritative,
                SessionMode::Relay => Mode::Relay,
            };
            let client = member.client().clone();
            let joined = inner
                .state
                .join(client.clone(), member.conn_no(), rtt, mode)
                .map_err(refusal)?;
            let rev = joined.snapshot.seq;
            // The snapshot goes first, then the events that follow it.
            self.send_snapshot(name, &joined.snapshot, &member, req);
            match member {
                Member::Local(conn) => {
                    inner.remote.remove(&client);
                    inner.conns.insert(client.clone(), conn.clone());
                }
                Member::Remote { node, .. } => {
                    inner.conns.remove(&client);
                    inner.remote.insert(client.clone(), node.to_owned());
                }
            }
            session.fan_out(
                &inner,
                &joined.events,
                Some(&client),
                self.cluster.as_deref(),
            );
            return Ok(rev);
        }
    }

    /// In a cluster, makes sure the registry names this hub as the home of a session it
    /// (re)created: normally already so (a hub creates a session only after claiming it);
    /// after a release raced with a join, this claims it again.
    fn reclaim(&self, name: &SessionName) {
        let Some(bp) = self.cluster.clone() else {
            return;
        };
        let name = name.clone();
        tokio::spawn(async move {
            match bp.cluster().claim_session(name.as_str()).await {
                Ok(peermesh_cluster::Claim::Won) => {}
                Ok(peermesh_cluster::Claim::Taken { node }) => tracing::warn!(
                    session = %name.as_str(), %node,
                    "a session this hub holds is recorded for another hub"
                ),
                Err(e) => {
                    tracing::debug!(session = %name.as_str(), error = %e, "cannot record a session's home")
                }
            }
        });
    }

    /// The session closed with its last member: the cluster forgets its home.
    fn released(&self, name: &SessionName) {
        let Some(bp) = self.cluster.clone() else {
            return;
        };
        let name = name.clone();
        tokio::spawn(async move {
            if let Err(e) = bp.cluster().release_session(name.as_str()).await {
                tracing::debug!(session = %name.as_str(), error = %e, "cannot release a session's home");
            }
        });
    }

    /// Queues (or, for a member on another hub, relays) a snapshot in chunks.
    fn send_snapshot(
        &self,
        name: &SessionName,
        snap: &state::Snapshot,
        member: &Member<'_>,
        req: Option<u64>,
    ) {
        let frames = snapshot_frames(name, snap, req);
        match member {
            Member::Local(conn) => {
                for f in &frames {
                    conn.send_whole(EncodedBody::encode(conn.encoding, f));
                }
            }
            Member::Remote { client, node, .. } => {
                if let Some(bp) = &self.cluster {
                    for frame in frames {
                        let out = Relay::SessionOut {
                            origin: bp.node().to_owned(),
                            session: name.clone(),
                            to: Some((*client).clone()),
                            skip: None,
                            frame,
                        };
                        bp.session_out(node, out.encode());
                    }
                }
            }
        }
    }

    /// An operation of a member; the event goes to every member (the actor too). Returns the
    /// event's revision.
    pub(crate) fn apply(
        &self,
        name: &SessionName,
        conn: &ConnShared,
        op: SessionOp,
    ) -> Result<u64, SessionError> {
        let session = self.member_of(name, conn)?;
        self.apply_on(&session, &conn.client, None, op)
    }

    /// An operation of member `client` of hub `node` on a session held here.
    pub(crate) fn apply_remote(
        &self,
        name: &SessionName,
        client: &ClientId,
        node: &str,
        op: SessionOp,
    ) -> Result<u64, SessionError> {
        let session = self.get(name)?;
        self.apply_on(&session, client, Some(node), op)
    }

    fn apply_on(
        &self,
        session: &Session,
        client: &ClientId,
        node: Option<&str>,
        op: SessionOp,
    ) -> Result<u64, SessionError> {
        let op = to_op(op).map_err(refusal)?;
        let inner = &mut *session.inner.lock();
        if let Some(node) = node {
            if inner.remote.get(client).map(String::as_str) != Some(node) {
                return Err(unknown_session(&session.name));
            }
        }
        let event = inner.state.apply(client, op).map_err(refusal)?;
        let rev = event.seq;
        session.fan_out(
            inner,
            std::slice::from_ref(&event),
            None,
            self.cluster.as_deref(),
        );
        Ok(rev)
    }

    /// `conn` leaves a session for good.
    pub(crate) fn leave(&self, name: &SessionName, conn: &ConnShared) -> Result<(), SessionError> {
        let session = self.member_of(name, conn)?;
        if let Some(k) = conn.peek() {
            k.sessions.lock().remove(name);
        }
        self.leave_on(&session, &conn.client, None)
    }

    /// Member `client` of hub `node` leaves a session held here for good.
    pub(crate) fn leave_remote(
        &self,
        name: &SessionName,
        client: &ClientId,
        node: &str,
    ) -> Result<(), SessionError> {
        let session = self.get(name)?;
        self.leave_on(&session, client, Some(node))
    }

    fn leave_on(
        &self,
        session: &Arc<Session>,
        client: &ClientId,
        node: Option<&str>,
    ) -> Result<(), SessionError> {
        let closed = {
            let inner = &mut *session.inner.lock();
            if let Some(node) = node {
                if inner.remote.get(client).map(String::as_str) != Some(node) {
                    return Err(unknown_session(&session.name));
                }
            }
            let left = inner.state.leave(client).map_err(refusal)?;
            inner.conns.remove(client);
            inner.remote.remove(client);
            inner.unconfirmed.remove(client);
            // Not for the leaver: on its hub too, when that is another (it stops counting it
            // as a member when told below, after these).
            session.fan_out(inner, &left.events, Some(client), self.cluster.as_deref());
            if let (Some(node), Some(bp)) = (node, self.cluster.as_deref()) {
                bp.session_left(node, &session.name, client);
            }
            if left.closed {
                inner.closed = true;
            }
            left.closed
        };
        if closed {
            self.map
                .remove_if(&session.name, |_, s| Arc::ptr_eq(s, session));
            self.released(&session.name);
        }
        Ok(())
    }

    /// `conn` leaves every session it is in (it is gone).
    pub(crate) fn leave_all(&self, conn: &ConnShared) {
        let names: Vec<SessionName> = conn
            .peek()
            .map(|k| k.sessions.lock().iter().cloned().collect())
            .unwrap_or_default();
        for name in names {
            let _ = self.leave(&name, conn);
        }
    }

    /// `conn` dropped and may resume (`away`), or resumed.
    pub(crate) fn set_away(&self, conn: &ConnShared, away: bool) {
        let names: Vec<SessionName> = conn
            .peek()
            .map(|k| k.sessions.lock().iter().cloned().collect())
            .unwrap_or_default();
        for name in names {
            self.away_as(&name, &conn.client, None, conn.conn, away);
        }
    }

    /// Member `client` (of hub `node`, or of this hub) dropped and may resume, or resumed.
    pub(crate) fn away_as(
        &self,
        name: &SessionName,
        client: &ClientId,
        node: Option<&str>,
        conn: u64,
        away: bool,
    ) {
        let Some(session) = self.map.get(name).map(|s| s.value().clone()) else {
            return;
        };
        let inner = &mut *session.inner.lock();
        if node.is_some() && inner.remote.get(client).map(String::as_str) != node {
            return;
        }
        let events = if away {
            inner.state.away(client, Instant::now())
        } else {
            inner.state.back(client, conn)
        };
        if let Ok(events) = events {
            session.fan_out(inner, &events, None, self.cluster.as_deref());
        }
    }

    /// Member `client`'s hub session moved to another hub (it resumed there): it is back,
    /// reached through `to` from now on, and gets a fresh snapshot (events sent meanwhile
    /// went to its old hub).
    pub(crate) fn moved(&self, name: &SessionName, to: Member<'_>) -> Result<(), SessionError> {
        let session = self.get(name)?;
        let inner = &mut *session.inner.lock();
        let client = to.client().clone();
        if !inner.conns.contains_key(&client) && !inner.remote.contains_key(&client) {
            return Err(unknown_session(name));
        }
        inner.unconfirmed.remove(&client);
        if let Ok(events) = inner.state.back(&client, to.conn_no()) {
            session.fan_out(inner, &events, Some(&client), self.cluster.as_deref());
        }
        let snap = inner.state.snapshot();
        self.send_snapshot(name, &snap, &to, None);
        match to {
            Member::Local(conn) => {
                inner.remote.remove(&client);
                inner.conns.insert(client, conn.clone());
            }
            Member::Remote { node, .. } => {
                inner.conns.remove(&client);
                inner.remote.insert(client, node.to_owned());
            }
        }
        Ok(())
    }

    /// Local client `conn`'s session moved to hub `to`: in the sessions held here it stays a
    /// member, reached there (the new hub then asks for a fresh snapshot).
    pub(crate) fn rehome(&self, conn: &ConnShared, to: &str) {
        let names: Vec<SessionName> = conn
            .peek()
            .map(|k| k.sessions.lock().iter().cloned().collect())
            .unwrap_or_default();
        for name in names {
            let Some(session) = self.map.get(&name).map(|s| s.value().clone()) else {
                continue;
            };
            let inner = &mut *session.inner.lock();
            if inner
                .conns
                .get(&conn.client)
                .is_some_and(|c| c.conn == conn.conn)
            {
                inner.conns.remove(&conn.client);
                inner.remote.insert(conn.client.clone(), to.to_owned());
            }
        }
    }

    /// Takes over session `name` from a mirror (its home hub `gone` left the cluster and
    /// this hub won it in the registry). Local members (`local`) go on from the mirror's
    /// revision with nothing missing. A member whose client id another live hub holds is
    /// reached there, and must be confirmed by that hub (`Ask::Moved`, which sends it a
    /// fresh snapshot) before [`Sessions::expire_unconfirmed`]; any other member (on the
    /// gone hub, or nowhere) leaves at once, with the usual events (authority handed on,
    /// its objects given up). Returns the members waiting for confirmation.
    pub(crate) fn take_over(
        &self,
        name: &SessionName,
        view: state::View,
        local: HashMap<ClientId, Arc<ConnShared>>,
        hub_of: impl Fn(&ClientId) -> Option<String>,
    ) -> Result<Vec<ClientId>, SessionError> {
        let state = SessionState::from_view(view, self.limits, Instant::now(), |c| {
            local.get(c).map_or(0, |conn| conn.conn)
        });
        let mut remote = HashMap::new();
        let mut gone = Vec::new();
        for m in state.members() {
            if local.contains_key(&m.client) {
                continue;
            }
            match hub_of(&m.client) {
                Some(node) => {
                    remote.insert(m.client.clone(), node);
                }
                None => gone.push(m.client.clone()),
            }
        }
        let unconfirmed: std::collections::HashSet<ClientId> = remote.keys().cloned().collect();
        let waiting: Vec<ClientId> = unconfirmed.iter().cloned().collect();
        let session = Arc::new(Session {
            name: name.clone(),
            inner: Mutex::new(Inner {
                state,
                conns: local,
                remote,
                closed: false,
                unconfirmed,
            }),
        });
        match self.map.entry(name.clone()) {
            dashmap::mapref::entry::Entry::Occupied(_) => {
                return Err((
                    ErrorCode::Internal,
                    format!("session {:?} exists here already", name.as_str()),
                ))
            }
            dashmap::mapref::entry::Entry::Vacant(v) => {
                v.insert(session.clone());
            }
        }
        for client in gone {
            let _ = self.leave_on(&session, &client, None);
        }
        Ok(waiting)
    }

    /// The names of the sessions held here.
    pub(crate) fn names(&self) -> Vec<SessionName> {
        self.map.iter().map(|s| s.key().clone()).collect()
    }

    /// This hub no longer holds session `name` (another hub holds it in the registry, after
    /// this one was cut off from the cluster): it is dropped here without events, and its
    /// local members are returned with its mode, to join it where it is held now.
    pub(crate) fn hand_over(
        &self,
        name: &SessionName,
    ) -> Option<(SessionMode, Vec<Arc<ConnShared>>)> {
        let session = self.map.get(name).map(|s| s.value().clone())?;
        let (mode, conns) = {
            let mut inner = session.inner.lock();
            if inner.closed {
                return None;
            }
            inner.closed = true;
            let mode = match inner.state.mode() {
                Mode::PeerAuthoritative => SessionMode::Authoritative,
                Mode::Relay => SessionMode::Relay,
            };
            let conns: Vec<Arc<ConnShared>> = inner.conns.drain().map(|(_, c)| c).collect();
            (mode, conns)
        };
        self.map.remove_if(name, |_, s| Arc::ptr_eq(s, &session));
        Some((mode, conns))
    }

    /// Members of a session taken over that their hub has not confirmed yet leave it.
    pub(crate) fn expire_unconfirmed(&self, name: &SessionName) {
        let Some(session) = self.map.get(name).map(|s| s.value().clone()) else {
            return;
        };
        let expired: Vec<(ClientId, Option<String>)> = {
            let inner = session.inner.lock();
            inner
                .unconfirmed
                .iter()
                .map(|c| (c.clone(), inner.remote.get(c).cloned()))
                .collect()
        };
        for (client, node) in expired {
            let _ = self.leave_on(&session, &client, node.as_deref());
        }
    }

    /// Client `id` of hub `node` is gone with its hub: it leaves the sessions held here.
    pub(crate) fn remote_gone(&self, id: &ClientId, node: &str) {
        let sessions: Vec<Arc<Session>> = self
            .map
            .iter()
            .filter(|s| s.inner.lock().remote.get(id).map(String::as_str) == Some(node))
            .map(|s| s.value().clone())
            .collect();
        for s in sessions {
            let _ = self.leave_on(&s, id, Some(node));
        }
    }

    fn get(&self, name: &SessionName) -> Result<Arc<Session>, SessionError> {
        self.map
            .get(name)
            .map(|s| s.value().clone())
            .ok_or_else(|| unknown_session(name))
    }

    fn member_of(
        &self,
        name: &SessionName,
        conn: &ConnShared,
    ) -> Result<Arc<Session>, SessionError> {
        if !conn
            .peek()
            .is_some_and(|k| k.sessions.lock().contains(name))
        {
            return Err(unknown_session(name));
        }
        self.map
            .get(name)
            .map(|s| s.value().clone())
            .ok_or_else(|| unknown_session(name))
    }

    /// Counts for tests and the status page.
    pub(crate) fn stats(&self) -> SessionStats {
        let mut st = SessionStats::default();
        for s in self.map.iter() {
            let inner = s.inner.lock();
            st.sessions += 1;
            st.members += inner.state.member_count();
            st.objects += inner.state.object_count();
        }
        st
    }

    /// The largest sessions: (name, members, objects, revision), at most `limit`.
    pub(crate) fn rows(&self, limit: usize) -> Vec<(SessionName, usize, usize, u64)> {
        let mut rows: Vec<_> = self
            .map
            .iter()
            .map(|s| {
                let inner = s.inner.lock();
                (
                    s.name.clone(),
                    inner.state.member_count(),
                    inner.state.object_count(),
                    inner.state.seq(),
                )
            })
            .collect();
        rows.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        rows.truncate(limit);
        rows
    }
}

impl Session {
    /// Queues events to the members (except `skip`), each encoded once per encoding, and
    /// publishes each once to every other hub with members. Called with the session locked.
    ///
    /// The events of one action are one whole: a leave gives one event per object the leaver
    /// owned, up to the session's `max_session_objects`, which no member's outbound queue
    /// limit may cut (that would close every member as a slow consumer at once). So several
    /// events are queued beyond those limits, like a snapshot, and cross to other hubs in
    /// [`Relay::SessionBurst`] messages of about [`BURST_BYTES`] instead of one message each.
    fn fan_out(
        &self,
        inner: &Inner,
        events: &[Event],
        skip: Option<&ClientId>,
        cluster: Option<&Backplane>,
    ) {
        let mut nodes: Vec<&str> = Vec::new();
        for (id, node) in &inner.remote {
            if Some(id) != skip && !nodes.contains(&node.as_str()) {
                nodes.push(node);
            }
        }
        let whole = events.len() > 1;
        let remote = cluster.filter(|_| !nodes.is_empty());
        let mut burst = remote
            .filter(|_| whole)
            .map(|bp| BurstWriter::new(bp.node(), &self.name, skip));
        for e in events {
            let frame = wire_event(&self.name, e);
            let mut shared = Shared::new(&frame);
            for (id, conn) in &inner.conns {
                if Some(id) == skip {
                    continue;
                }
                if whole {
                    conn.send_whole(shared.body(conn.encoding));
                } else {
                    // A full queue closes that member as a slow consumer; the others carry on.
                    let _ = conn.send(shared.body(conn.encoding));
                }
            }
            if let (Some(w), Some(bp)) = (burst.as_mut(), remote) {
                w.push(&frame);
                if w.frame_bytes() >= BURST_BYTES {
                    let full = std::mem::replace(w, BurstWriter::new(bp.node(), &self.name, skip));
                    let msg = full.finish();
                    for node in &nodes {
                        bp.session_events_out(node, msg.clone());
                    }
                }
                continue;
            }
            if let Some(bp) = remote {
                let out = Relay::SessionOut {
                    origin: bp.node().to_owned(),
                    session: self.name.clone(),
                    to: None,
                    skip: skip.cloned(),
                    frame,
                }
                .encode();
                for node in &nodes {
                    bp.session_events_out(node, out.clone());
                }
            }
        }
        if let (Some(w), Some(bp)) = (burst, remote) {
            if w.count() > 0 {
                let msg = w.finish();
                for node in &nodes {
                    bp.session_events_out(node, msg.clone());
                }
            }
        }
    }
}

/// A snapshot as `session_state` frames of about [`CHUNK_BYTES`] each.
fn snapshot_frames(
    name: &SessionName,
    snap: &state::Snapshot,
    req: Option<u64>,
) -> Vec<peermesh_proto::ServerFrame> {
    let members: Vec<SessionMember> = snap
        .members
        .iter()
        .map(|m| SessionMember {
            id: m.client.clone(),
            order: m.order,
            rtt_ms: m.rtt.map(|d| d.as_millis() as u64),
            away: m.away,
        })
        .collect();
    let header = |objects: Vec<SessionObject>, more: bool| {
        peermesh_proto::ServerFrame::SessionState(WireState {
            session: name.clone(),
            req,
            rev: snap.seq,
            mode: match snap.mode {
                Mode::PeerAuthoritative => SessionMode::Authoritative,
                Mode::Relay => SessionMode::Relay,
            },
            authority: snap.authority.clone(),
            epoch: snap.epoch,
            members: members.clone(),
            objects,
            more,
        })
    };
    let mut chunks = snap.chunks(CHUNK_BYTES).peekable();
    if chunks.peek().is_none() {
        return vec![header(Vec::new(), false)];
    }
    let mut out = Vec::new();
    while let Some(chunk) = chunks.next() {
        let objects = chunk
            .iter()
            .filter_map(|(id, o)| {
                Some(SessionObject {
                    id: peermesh_proto::ObjectName::new(id.as_str()).ok()?,
                    payload: o.value.clone(),
                    owner: o.owner.clone(),
                    on_owner_leave: wire_owner_leave(o.on_owner_leave),
                    version: o.version,
                })
            })
            .collect();
        let more = chunks.peek().is_some();
        out.push(header(objects, more));
    }
    out
}

fn wire_owner_leave(p: OwnerLeave) -> WireOwnerLeave {
    match p {
        OwnerLeave::ToAuthority => WireOwnerLeave::Authority,
        OwnerLeave::Delete => WireOwnerLeave::Delete,
    }
}

fn to_op(op: SessionOp) -> Result<Op, Refusal> {
    let id = |o: &peermesh_proto::ObjectName| ObjectId::new(o.as_str());
    Ok(match op {
        SessionOp::Create {
            object,
            payload,
            owned,
            on_owner_leave,
        } => Op::Create {
            id: id(&object)?,
            value: payload,
            owned,
            on_owner_leave: match on_owner_leave {
                WireOwnerLeave::Authority => OwnerLeave::ToAuthority,
                WireOwnerLeave::Delete => OwnerLeave::Delete,
            },
        },
        SessionOp::Update { object, payload } => Op::Update {
            id: id(&object)?,
            change: Change::Replace(payload),
        },
        SessionOp::Patch { object, patch } => Op::Update {
            id: id(&object)?,
            change: Change::MergePatch(patch),
        },
        SessionOp::Delete { object } => Op::Delete { id: id(&object)? },
        SessionOp::Transfer { object, to } => Op::Transfer {
            id: id(&object)?,
            to,
        },
    })
}

fn wire_event(name: &SessionName, e: &Event) -> peermesh_proto::ServerFrame {
    let object = |id: &ObjectId| {
        peermesh_proto::ObjectName::new(id.as_str())
            .unwrap_or_else(|_| unreachable!("object ids are checked on creation"))
    };
    let change = match &e.change {
        StateEvent::MemberJoined { client, order, rtt } => SessionChange::MemberJoined {
            member: client.clone(),
            order: *order,
            rtt_ms: rtt.map(|d| d.as_millis() as u64),
        },
        StateEvent::MemberLeft { client } => SessionChange::MemberLeft {
            member: client.clone(),
        },
        StateEvent::MemberAway { client } => SessionChange::MemberAway {
            member: client.clone(),
        },
        StateEvent::MemberBack { client } => SessionChange::MemberBack {
            member: client.clone(),
        },
        StateEvent::AuthorityChanged { client, epoch } => SessionChange::Authority {
            member: client.clone(),
            epoch: *epoch,
        },
        StateEvent::Created {
            id,
            value,
            owner,
            on_owner_leave,
        } => SessionChange::Created {
            object: object(id),
            payload: value.clone(),
            owner: owner.clone(),
            on_owner_leave: wire_owner_leave(*on_owner_leave),
        },
        StateEvent::Updated { id, value } => SessionChange::Updated {
            object: object(id),
            payload: value.clone(),
        },
        StateEvent::Deleted { id } => SessionChange::Deleted { object: object(id) },
        StateEvent::Transferred { id, owner } => SessionChange::Transferred {
            object: object(id),
            owner: owner.clone(),
        },
    };
    peermesh_proto::ServerFrame::SessionEvent {
        session: name.clone(),
        rev: e.seq,
        by: e.by.clone(),
        change,
    }
}
