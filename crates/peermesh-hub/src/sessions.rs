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

use crate::registry::ConnShared;
use crate::router::Shared;
use state::{
    Change, Event, Limits, Mode, ObjectId, Op, OwnerLeave, Refusal, SessionState, StateEvent,
};

/// Encoded size a snapshot chunk aims at.
const CHUNK_BYTES: usize = 256 << 10;

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
    /// The last member left: the session is being removed; a join must create a new one.
    closed: bool,
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
}

impl Sessions {
    pub(crate) fn new(max_members: usize, max_objects: usize, max_value_bytes: usize) -> Self {
        Self {
            map: DashMap::new(),
            limits: Limits {
                max_members,
                max_objects,
                max_value_bytes,
            },
        }
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
        loop {
            let session = self
                .map
                .entry(name.clone())
                .or_insert_with(|| {
                    Arc::new(Session {
                        name: name.clone(),
                        inner: Mutex::new(Inner {
                            state: SessionState::new(self.limits),
                            conns: HashMap::new(),
                            closed: false,
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
            let mode = match mode {
                SessionMode::Authoritative => Mode::PeerAuthoritative,
                SessionMode::Relay => Mode::Relay,
            };
            let joined = inner
                .state
                .join(conn.client.clone(), conn.conn, rtt, mode)
                .map_err(refusal)?;
            let rev = joined.snapshot.seq;
            // The snapshot goes first, then the events that follow it.
            queue_snapshot(name, &joined.snapshot, conn, req);
            inner.conns.insert(conn.client.clone(), conn.clone());
            session.fan_out(&inner, &joined.events, Some(&conn.client));
            conn.sessions.lock().insert(name.clone());
            return Ok(rev);
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
        let op = to_op(op).map_err(refusal)?;
        let inner = &mut *session.inner.lock();
        let event = inner.state.apply(&conn.client, op).map_err(refusal)?;
        let rev = event.seq;
        session.fan_out(inner, std::slice::from_ref(&event), None);
        Ok(rev)
    }

    /// `conn` leaves a session for good.
    pub(crate) fn leave(&self, name: &SessionName, conn: &ConnShared) -> Result<(), SessionError> {
        let session = self.member_of(name, conn)?;
        conn.sessions.lock().remove(name);
        let closed = {
            let inner = &mut *session.inner.lock();
            let left = inner.state.leave(&conn.client).map_err(refusal)?;
            inner.conns.remove(&conn.client);
            session.fan_out(inner, &left.events, None);
            if left.closed {
                inner.closed = true;
            }
            left.closed
        };
        if closed {
            self.map.remove_if(name, |_, s| Arc::ptr_eq(s, &session));
        }
        Ok(())
    }

    /// `conn` leaves every session it is in (it is gone).
    pub(crate) fn leave_all(&self, conn: &ConnShared) {
        let names: Vec<SessionName> = conn.sessions.lock().iter().cloned().collect();
        for name in names {
            let _ = self.leave(&name, conn);
        }
    }

    /// `conn` dropped and may resume (`away`), or resumed.
    pub(crate) fn set_away(&self, conn: &ConnShared, away: bool) {
        let names: Vec<SessionName> = conn.sessions.lock().iter().cloned().collect();
        let now = Instant::now();
        for name in names {
            let Some(session) = self.map.get(&name).map(|s| s.value().clone()) else {
                continue;
            };
            let inner = &mut *session.inner.lock();
            let events = if away {
                inner.state.away(&conn.client, now)
            } else {
                inner.state.back(&conn.client, conn.conn)
            };
            if let Ok(events) = events {
                session.fan_out(inner, &events, None);
            }
        }
    }

    fn member_of(
        &self,
        name: &SessionName,
        conn: &ConnShared,
    ) -> Result<Arc<Session>, SessionError> {
        if !conn.sessions.lock().contains(name) {
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
    /// Queues events to the members (except `skip`), each encoded once per encoding. Called
    /// with the session locked.
    fn fan_out(&self, inner: &Inner, events: &[Event], skip: Option<&ClientId>) {
        for e in events {
            let frame = wire_event(&self.name, e);
            let mut shared = Shared::new(&frame);
            for (id, conn) in &inner.conns {
                if Some(id) == skip {
                    continue;
                }
                // A full queue closes that member as a slow consumer; the others carry on.
                let _ = conn.send(shared.body(conn.encoding));
            }
        }
    }
}

/// Queues a snapshot in chunks of about [`CHUNK_BYTES`].
fn queue_snapshot(name: &SessionName, snap: &state::Snapshot, conn: &ConnShared, req: Option<u64>) {
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
        let body = EncodedBody::encode(conn.encoding, &header(Vec::new(), false));
        let _ = conn.mailbox.push_frame_unbounded(body);
        return;
    }
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
        let body = EncodedBody::encode(conn.encoding, &header(objects, more));
        let _ = conn.mailbox.push_frame_unbounded(body);
    }
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
