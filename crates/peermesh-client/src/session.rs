//! Sessions on the client side: a [`Session`] is this client's membership of a hub session,
//! with a [`SessionView`] of its members, authority and shared objects kept up to date from
//! the hub's ordered events.
//!
//! [`Client::join_session`](crate::Client::join_session) resolves once the hub's snapshot has
//! arrived whole; then [`Session::next`] applies each change, in revision order, and returns
//! it. Changes are made with [`Client::session_op`](crate::Client::session_op) (or the
//! shortcuts on [`Session`]); the hub checks ownership and answers `not_owner` and friends.
//!
//! # Drops, resume, resync
//!
//! After a resumed connection the session simply carries on (the hub kept the membership and
//! replays what was missed). After a resync the client joins again with its `hello`, and the
//! next update is [`SessionUpdate::Resynced`] with a fresh snapshot.
//!
//! # Limits
//!
//! Each session holds [`ClientOptions::session_capacity`](crate::ClientOptions::session_capacity)
//! updates (default 4,096) that the application has not taken. When it is full the session
//! cannot stay consistent: it ends with [`SessionEnd::Lagged`] (join again for a fresh snapshot).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::Mutex;
use peermesh_proto::{
    ClientId, ObjectName, OwnerLeave, Payload, SessionChange, SessionMember, SessionMode,
    SessionName, SessionOp, SessionState,
};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use crate::error::ClientError;
use crate::request::{self, Command, Op, Request};

/// One shared object as a member sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectState {
    /// Its value.
    pub payload: Payload,
    /// Its owner, if any.
    pub owner: Option<ClientId>,
    /// What happens to it when its owner leaves.
    pub on_owner_leave: OwnerLeave,
    /// The revision of its last change.
    pub version: u64,
}

/// A member's mirror of a session: rebuilt from the snapshot, then from every event in
/// revision order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SessionView {
    /// The last revision applied.
    pub rev: u64,
    /// How the session is run.
    pub mode: SessionMode,
    /// The authority, if any.
    pub authority: Option<ClientId>,
    /// The authority's epoch (it only grows).
    pub epoch: u64,
    /// The members in join order.
    pub members: Vec<SessionMember>,
    /// The shared objects by id.
    pub objects: BTreeMap<ObjectName, ObjectState>,
}

/// An event the view could not apply: the stream of events broke (a bug on one side).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("session event out of order: expected revision {expected}, got {got}")]
pub struct OutOfOrder {
    /// The revision that should have come.
    pub expected: u64,
    /// The revision that came.
    pub got: u64,
}

impl SessionView {
    fn from_chunks(first: SessionState, rest: Vec<SessionState>) -> Self {
        let mut v = SessionView {
            rev: first.rev,
            mode: first.mode,
            authority: first.authority,
            epoch: first.epoch,
            members: first.members,
            objects: BTreeMap::new(),
        };
        for o in first
            .objects
            .into_iter()
            .chain(rest.into_iter().flat_map(|c| c.objects))
        {
            v.objects.insert(
                o.id,
                ObjectState {
                    payload: o.payload,
                    owner: o.owner,
                    on_owner_leave: o.on_owner_leave,
                    version: o.version,
                },
            );
        }
        v
    }

    /// Applies the event of revision `rev`; it must be the next one.
    pub fn apply(&mut self, rev: u64, change: &SessionChange) -> Result<(), OutOfOrder> {
        if rev != self.rev + 1 {
            return Err(OutOfOrder {
                expected: self.rev + 1,
                got: rev,
            });
        }
        self.rev = rev;
        match change {
            SessionChange::MemberJoined {
                member,
                order,
                rtt_ms,
            } => self.members.push(SessionMember {
                id: member.clone(),
                order: *order,
                rtt_ms: *rtt_ms,
                away: false,
            }),
            SessionChange::MemberLeft { member } => self.members.retain(|m| &m.id != member),
            SessionChange::MemberAway { member } | SessionChange::MemberBack { member } => {
                let away = matches!(change, SessionChange::MemberAway { .. });
                if let Some(m) = self.members.iter_mut().find(|m| &m.id == member) {
                    m.away = away;
                }
            }
            SessionChange::Authority { member, epoch } => {
                self.authority = member.clone();
                self.epoch = *epoch;
            }
            SessionChange::Created {
                object,
                payload,
                owner,
                on_owner_leave,
            } => {
                self.objects.insert(
                    object.clone(),
                    ObjectState {
                        payload: payload.clone(),
                        owner: owner.clone(),
                        on_owner_leave: *on_owner_leave,
                        version: rev,
                    },
                );
            }
            SessionChange::Updated { object, payload } => {
                if let Some(o) = self.objects.get_mut(object) {
                    o.payload = payload.clone();
                    o.version = rev;
                }
            }
            SessionChange::Deleted { object } => {
                self.objects.remove(object);
            }
            SessionChange::Transferred { object, owner } => {
                if let Some(o) = self.objects.get_mut(object) {
                    o.owner = owner.clone();
                    o.version = rev;
                }
            }
        }
        Ok(())
    }

    /// Whether `id` is the authority.
    pub fn is_authority(&self, id: &ClientId) -> bool {
        self.authority.as_ref() == Some(id)
    }
}

/// What [`Session::next`] hands the application.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum SessionUpdate {
    /// A change, already applied to the view.
    Event {
        /// Its revision.
        rev: u64,
        /// The member whose action caused it.
        by: ClientId,
        /// What changed.
        change: SessionChange,
    },
    /// The connection was resynced: the view was replaced by a fresh snapshot.
    Resynced,
}

/// Why a [`Session`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionEnd {
    /// [`Session::leave`] (or `Client::leave_session`) was called.
    Left,
    /// The application fell behind by more than the session's capacity.
    Lagged,
    /// The events did not follow each other (a bug on one side).
    OutOfOrder,
    /// The client stopped, or its session with the hub was lost for good.
    Closed,
}

/// What the actor hands a session's receiver.
#[derive(Debug)]
pub(crate) enum Delivery {
    Event {
        rev: u64,
        by: ClientId,
        change: SessionChange,
    },
    Snapshot(Box<SessionView>),
}

/// This client's membership of a session; see the [module docs](self).
#[derive(Debug)]
pub struct Session {
    name: SessionName,
    me: ClientId,
    view: SessionView,
    rx: mpsc::Receiver<Delivery>,
    end: Arc<Mutex<Option<SessionEnd>>>,
    tx: mpsc::Sender<Command>,
}

impl Session {
    /// The session's id.
    pub fn name(&self) -> &SessionName {
        &self.name
    }

    /// The current view (as of the last update taken).
    pub fn view(&self) -> &SessionView {
        &self.view
    }

    /// Whether this client is the session's authority now.
    pub fn is_authority(&self) -> bool {
        self.view.is_authority(&self.me)
    }

    /// The next update, applied to the view; `None` once the session ended ([`end`](Self::end)
    /// says why).
    pub async fn next(&mut self) -> Option<SessionUpdate> {
        match self.rx.recv().await? {
            Delivery::Event { rev, by, change } => {
                if self.view.apply(rev, &change).is_err() {
                    tracing::error!(session = %self.name, rev, "session event out of order");
                    *self.end.lock() = Some(SessionEnd::OutOfOrder);
                    self.rx.close();
                    return None;
                }
                Some(SessionUpdate::Event { rev, by, change })
            }
            Delivery::Snapshot(view) => {
                self.view = *view;
                Some(SessionUpdate::Resynced)
            }
        }
    }

    /// Takes every update already received without waiting; returns how many.
    pub fn drain(&mut self) -> usize {
        let mut n = 0;
        while let Ok(d) = self.rx.try_recv() {
            n += 1;
            match d {
                Delivery::Event { rev, change, .. } => {
                    if self.view.apply(rev, &change).is_err() {
                        *self.end.lock() = Some(SessionEnd::OutOfOrder);
                        self.rx.close();
                        break;
                    }
                }
                Delivery::Snapshot(view) => self.view = *view,
            }
        }
        n
    }

    /// Why the session ended, once it has.
    pub fn end(&self) -> Option<SessionEnd> {
        *self.end.lock()
    }

    /// Applies an operation; resolves once the hub accepted it (its event comes through
    /// [`next`](Self::next)).
    pub fn op(&self, op: SessionOp) -> Request<()> {
        let op = Ok(Op::SessionChange {
            session: self.name.clone(),
            op,
        });
        Request::new(Some(self.tx.clone()), op, request::unit)
    }

    /// Creates an object owned by this client.
    pub fn create(&self, object: impl AsRef<str>, value: impl Into<Payload>) -> Request<()> {
        self.object_op(object, |object| SessionOp::Create {
            object,
            payload: value.into(),
            owned: true,
            on_owner_leave: OwnerLeave::Authority,
        })
    }

    /// Replaces an object's value.
    pub fn update(&self, object: impl AsRef<str>, value: impl Into<Payload>) -> Request<()> {
        self.object_op(object, |object| SessionOp::Update {
            object,
            payload: value.into(),
        })
    }

    /// Applies a JSON merge patch (RFC 7386) to an object.
    pub fn patch(&self, object: impl AsRef<str>, patch: serde_json::Value) -> Request<()> {
        self.object_op(object, |object| SessionOp::Patch { object, patch })
    }

    /// Deletes an object.
    pub fn delete(&self, object: impl AsRef<str>) -> Request<()> {
        self.object_op(object, |object| SessionOp::Delete { object })
    }

    /// Gives an object to another member (`None`: no owner).
    pub fn transfer(&self, object: impl AsRef<str>, to: Option<&str>) -> Request<()> {
        let to = match to.map(ClientId::new).transpose() {
            Ok(t) => t,
            Err(e) => return Request::new(None, Err(e.into()), request::unit),
        };
        self.object_op(object, |object| SessionOp::Transfer { object, to })
    }

    /// Leaves the session.
    pub fn leave(&self) -> Request<()> {
        let op = Ok(Op::SessionLeave(self.name.clone()));
        Request::new(Some(self.tx.clone()), op, request::unit)
    }

    fn object_op(
        &self,
        object: impl AsRef<str>,
        make: impl FnOnce(ObjectName) -> SessionOp,
    ) -> Request<()> {
        match ObjectName::new(object.as_ref()) {
            Ok(o) => self.op(make(o)),
            Err(e) => Request::new(None, Err(ClientError::from(e)), request::unit),
        }
    }
}

struct Sink {
    tx: mpsc::Sender<Delivery>,
    end: Arc<Mutex<Option<SessionEnd>>>,
}

/// The sessions of this client, owned by the actor: snapshots being assembled and the
/// receivers of live sessions.
pub(crate) struct Sessions {
    sinks: HashMap<SessionName, Sink>,
    /// Chunks of snapshots not complete yet.
    partial: HashMap<SessionName, Vec<SessionState>>,
    capacity: usize,
}

/// What a `session_state` chunk completed.
pub(crate) enum Assembled {
    /// More chunks are due.
    Partial,
    /// A join's snapshot is complete: make its session.
    Joined(SessionName, Box<SessionView>),
    /// A resync's snapshot went to its live session.
    Resynced,
}

impl Sessions {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            sinks: HashMap::new(),
            partial: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// The names of the live sessions (joined again after a resync).
    pub(crate) fn names(&self) -> Vec<SessionName> {
        self.sinks.keys().cloned().collect()
    }

    /// One snapshot chunk. `joining` says whether a join request waits for it.
    pub(crate) fn chunk(&mut self, st: SessionState, joining: bool) -> Assembled {
        let name = st.session.clone();
        let more = st.more;
        let chunks = self.partial.entry(name.clone()).or_default();
        chunks.push(st);
        if more {
            return Assembled::Partial;
        }
        let mut chunks = self.partial.remove(&name).unwrap_or_default();
        if chunks.is_empty() {
            return Assembled::Partial;
        }
        let first = chunks.remove(0);
        let view = Box::new(SessionView::from_chunks(first, chunks));
        match self.sinks.get(&name) {
            Some(sink) if !joining => {
                let _ = sink.tx.try_send(Delivery::Snapshot(view));
                Assembled::Resynced
            }
            _ => Assembled::Joined(name, view),
        }
    }

    /// A new session for a completed join (replacing an older one of the same name).
    pub(crate) fn open(
        &mut self,
        name: SessionName,
        me: ClientId,
        view: SessionView,
        tx: mpsc::Sender<Command>,
    ) -> Session {
        let (stx, rx) = mpsc::channel(self.capacity);
        let end = Arc::new(Mutex::new(None));
        if let Some(old) = self.sinks.insert(
            name.clone(),
            Sink {
                tx: stx,
                end: end.clone(),
            },
        ) {
            *old.end.lock() = Some(SessionEnd::Left);
        }
        Session {
            name,
            me,
            view,
            rx,
            end,
            tx,
        }
    }

    /// Hands an event to its session.
    pub(crate) fn event(
        &mut self,
        name: &SessionName,
        rev: u64,
        by: ClientId,
        change: SessionChange,
    ) {
        let Some(sink) = self.sinks.get(name) else {
            return;
        };
        match sink.tx.try_send(Delivery::Event { rev, by, change }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                tracing::warn!(session = %name, "session updates not taken: the session lags and ends");
                self.end(name, SessionEnd::Lagged);
            }
            Err(TrySendError::Closed(_)) => {
                self.sinks.remove(name);
            }
        }
    }

    /// Ends a session.
    pub(crate) fn end(&mut self, name: &SessionName, why: SessionEnd) {
        if let Some(sink) = self.sinks.remove(name) {
            *sink.end.lock() = Some(why);
        }
    }

    /// Ends every session.
    pub(crate) fn end_all(&mut self, why: SessionEnd) {
        self.partial.clear();
        for (_, sink) in self.sinks.drain() {
            *sink.end.lock() = Some(why);
        }
    }
}
