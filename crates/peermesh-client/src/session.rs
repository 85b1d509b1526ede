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
//! updates (default 4,096) that the application has not taken. When more come (the application
//! is slow, or one member's leave gave thousands of events at once: one per object it owned),
//! the client drops the updates it cannot hold and asks the hub for a fresh snapshot (a
//! `session_join` of the session it is already in, without `req`). The application first takes
//! the updates held from before the gap, then [`SessionUpdate::Resynced`] with the fresh view,
//! then the updates after it: never a gap, and at most one snapshot waiting per session.

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
    /// A fresh snapshot waits in the session's slot.
    Wake,
}

/// How long a lagging session waits for the fresh snapshot it asked for before asking again.
const RESYNC_AGAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Where the actor leaves a session's fresh snapshot (at most one; a newer replaces it), for
/// the receiver to take ahead of the events that follow it.
type Slot = Arc<Mutex<Option<Box<SessionView>>>>;

/// This client's membership of a session; see the [module docs](self).
#[derive(Debug)]
pub struct Session {
    name: SessionName,
    me: ClientId,
    view: SessionView,
    rx: mpsc::Receiver<Delivery>,
    slot: Slot,
    /// An event received while a snapshot was due, to apply after it.
    stashed: Option<(u64, ClientId, SessionChange)>,
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
        loop {
            if let Some(u) = self.take_slot() {
                return Some(u);
            }
            let (rev, by, change) = match self.stashed.take() {
                Some(e) => e,
                None => match self.rx.recv().await? {
                    Delivery::Event { rev, by, change } => (rev, by, change),
                    Delivery::Wake => continue,
                },
            };
            match self.event(rev, by, change) {
                Step::Update(u) => return Some(u),
                Step::Skip => continue,
                Step::Ended => return None,
            }
        }
    }

    /// Takes every update already received without waiting; returns how many.
    pub fn drain(&mut self) -> usize {
        let mut n = 0;
        loop {
            if self.take_slot().is_some() {
                n += 1;
                continue;
            }
            let (rev, by, change) = match self.stashed.take() {
                Some(e) => e,
                None => match self.rx.try_recv() {
                    Ok(Delivery::Event { rev, by, change }) => (rev, by, change),
                    Ok(Delivery::Wake) => continue,
                    Err(_) => return n,
                },
            };
            match self.event(rev, by, change) {
                Step::Update(_) => n += 1,
                Step::Skip => {}
                Step::Ended => return n,
            }
        }
    }

    /// A fresh snapshot, if one waits: the view becomes it.
    fn take_slot(&mut self) -> Option<SessionUpdate> {
        let view = self.slot.lock().take()?;
        self.view = *view;
        Some(SessionUpdate::Resynced)
    }

    /// One event from the actor, against the view.
    fn event(&mut self, rev: u64, by: ClientId, change: SessionChange) -> Step {
        if rev <= self.view.rev {
            // Held from before a gap the snapshot taken since already covers.
            return Step::Skip;
        }
        if rev > self.view.rev + 1 {
            // Past a gap: the snapshot that covers it is in the slot (the actor puts it there
            // before any event that follows it), unless the hub broke the order.
            if self.slot.lock().is_some() {
                self.stashed = Some((rev, by, change));
                return Step::Skip;
            }
        }
        if self.view.apply(rev, &change).is_err() {
            tracing::error!(session = %self.name, rev, "session event out of order");
            *self.end.lock() = Some(SessionEnd::OutOfOrder);
            self.rx.close();
            return Step::Ended;
        }
        Step::Update(SessionUpdate::Event { rev, by, change })
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

impl Sink {
    /// Whether to ask the hub for a fresh snapshot now (and note that it was): not while the
    /// receiver has not taken the last one (a stalled application would otherwise cost a
    /// snapshot per event), and again after [`RESYNC_AGAIN`] without an answer (the hub may
    /// have refused the request, which has no `req` to answer).
    fn ask_now(&mut self) -> bool {
        let due = match self.lagging {
            Some(None) => self.slot.lock().is_none(),
            Some(Some(asked)) => asked.elapsed() >= RESYNC_AGAIN,
            None => false,
        };
        if due {
            self.lagging = Some(Some(std::time::Instant::now()));
        }
        due
    }
}

/// What [`Session::event`] made of one event.
enum Step {
    Update(SessionUpdate),
    Skip,
    Ended,
}

struct Sink {
    tx: mpsc::Sender<Delivery>,
    slot: Slot,
    /// Updates were dropped: nothing more is sent until a fresh snapshot, asked for at this
    /// time (`None`: not yet, because the receiver has not taken the previous one, which is
    /// stale now).
    lagging: Option<Option<std::time::Instant>>,
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
        match self.sinks.get_mut(&name) {
            Some(sink) if !joining => {
                // Ahead of every event after it; the receiver is woken if it waits (when the
                // queue is full, it is busy with what is queued and looks here next).
                *sink.slot.lock() = Some(view);
                sink.lagging = None;
                let _ = sink.tx.try_send(Delivery::Wake);
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
        let slot = Slot::default();
        if let Some(old) = self.sinks.insert(
            name.clone(),
            Sink {
                tx: stx,
                slot: slot.clone(),
                lagging: None,
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
            slot,
            stashed: None,
            end,
            tx,
        }
    }

    /// Hands an event to its session. Returns `true` when the session's receiver is full:
    /// the event is dropped, and so is every one until a fresh snapshot, which the caller
    /// asks the hub for.
    #[must_use]
    pub(crate) fn event(
        &mut self,
        name: &SessionName,
        rev: u64,
        by: ClientId,
        change: SessionChange,
    ) -> bool {
        let Some(sink) = self.sinks.get_mut(name) else {
            return false;
        };
        if sink.lagging.is_some() {
            return sink.ask_now();
        }
        match sink.tx.try_send(Delivery::Event { rev, by, change }) {
            Ok(()) => false,
            Err(TrySendError::Full(_)) => {
                tracing::info!(
                    session = %name,
                    "more session updates than session_capacity not taken: asking for a fresh snapshot"
                );
                sink.lagging = Some(None);
                sink.ask_now()
            }
            Err(TrySendError::Closed(_)) => {
                self.sinks.remove(name);
                false
            }
        }
    }

    /// Sessions whose fresh snapshot was asked for more than [`RESYNC_AGAIN`] ago and has
    /// not come: the caller asks again.
    pub(crate) fn overdue(&mut self) -> Vec<SessionName> {
        let mut names = Vec::new();
        for (name, sink) in &mut self.sinks {
            if sink.lagging.is_some() && sink.ask_now() {
                names.push(name.clone());
            }
        }
        names
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

#[cfg(test)]
mod tests {
    use super::*;

    fn state(rev: u64, objects: &[(&str, u64)]) -> SessionState {
        SessionState {
            session: SessionName::new("s").expect("name"),
            req: None,
            rev,
            mode: SessionMode::Authoritative,
            authority: None,
            epoch: 0,
            members: Vec::new(),
            objects: objects
                .iter()
                .map(|(id, v)| peermesh_proto::SessionObject {
                    id: ObjectName::new(id).expect("object"),
                    payload: Payload::Json(serde_json::json!(v)),
                    owner: None,
                    on_owner_leave: OwnerLeave::Authority,
                    version: *v,
                })
                .collect(),
            more: false,
        }
    }

    fn created(object: &str, v: u64) -> SessionChange {
        SessionChange::Created {
            object: ObjectName::new(object).expect("object"),
            payload: Payload::Json(serde_json::json!(v)),
            owner: None,
            on_owner_leave: OwnerLeave::Authority,
        }
    }

    fn objects(upto: u64) -> SessionState {
        let names: Vec<String> = (1..=upto).map(|r| format!("o{r}")).collect();
        let all: Vec<(&str, u64)> = names
            .iter()
            .zip(1..)
            .map(|(o, r)| (o.as_str(), r))
            .collect();
        state(upto, &all)
    }

    fn kinds(seen: &[Option<SessionUpdate>]) -> Vec<String> {
        seen.iter()
            .map(|u| match u {
                Some(SessionUpdate::Event { rev, .. }) => rev.to_string(),
                Some(SessionUpdate::Resynced) => "resync".into(),
                None => "end".into(),
            })
            .collect()
    }

    fn run(f: impl std::future::Future<Output = ()>) {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime")
            .block_on(f);
    }

    /// Capacity 3: events 1..=5 come at once; the fourth does not fit, so the client asks for
    /// a snapshot once and drops what follows. The application takes the three held events,
    /// then the snapshot (at 5), then events 6 and 7.
    #[test]
    fn a_full_session_asks_for_a_snapshot_and_goes_on_from_it_without_a_gap() {
        run(async {
            let name = SessionName::new("s").expect("name");
            let by = ClientId::new("w").expect("id");
            let (tx, _cmds) = mpsc::channel(1);
            let mut sessions = Sessions::new(3);
            let view = SessionView::from_chunks(state(0, &[]), Vec::new());
            let mut s = sessions.open(name.clone(), by.clone(), view, tx);
            let asked: Vec<bool> = (1..=5)
                .map(|rev| sessions.event(&name, rev, by.clone(), created(&format!("o{rev}"), rev)))
                .collect();
            assert_eq!(asked, [false, false, false, true, false]);
            let mut seen = vec![s.next().await, s.next().await, s.next().await];
            assert!(sessions.overdue().is_empty(), "asked already");
            assert!(matches!(
                sessions.chunk(objects(5), false),
                Assembled::Resynced
            ));
            for rev in 6..=7 {
                assert!(!sessions.event(&name, rev, by.clone(), created(&format!("o{rev}"), rev)));
            }
            while s.view().rev < 7 {
                let next = tokio::time::timeout(std::time::Duration::from_secs(5), s.next());
                seen.push(next.await.expect("an update within 5 s"));
            }
            assert_eq!(kinds(&seen), ["1", "2", "3", "resync", "6", "7"]);
            assert_eq!(s.view().objects.len(), 7);
            assert_eq!(s.end(), None);
        });
    }

    /// An application that does not read at all costs one snapshot, not one per event: once
    /// the queue is full again behind the snapshot, the client waits until the application
    /// took it before asking for the next.
    #[test]
    fn a_stalled_application_costs_one_snapshot_at_a_time() {
        run(async {
            let name = SessionName::new("s").expect("name");
            let by = ClientId::new("w").expect("id");
            let (tx, _cmds) = mpsc::channel(1);
            let mut sessions = Sessions::new(2);
            let view = SessionView::from_chunks(state(0, &[]), Vec::new());
            let mut s = sessions.open(name.clone(), by.clone(), view, tx);
            let mut asked = 0;
            for rev in 1..=4 {
                asked += usize::from(sessions.event(
                    &name,
                    rev,
                    by.clone(),
                    created(&format!("o{rev}"), rev),
                ));
            }
            assert!(matches!(
                sessions.chunk(objects(4), false),
                Assembled::Resynced
            ));
            for rev in 5..=40 {
                asked += usize::from(sessions.event(
                    &name,
                    rev,
                    by.clone(),
                    created(&format!("o{rev}"), rev),
                ));
            }
            assert!(sessions.overdue().is_empty());
            assert_eq!(asked, 1, "one snapshot while the application does not read");
            // It reads: the snapshot at 4; the held events 1 and 2 are older and skipped.
            let mut seen = vec![s.next().await];
            assert_eq!(s.drain(), 0);
            // Now the client asks again, and the application goes on from there.
            assert_eq!(sessions.overdue(), std::slice::from_ref(&name));
            assert!(matches!(
                sessions.chunk(objects(40), false),
                Assembled::Resynced
            ));
            seen.push(s.next().await);
            assert!(!sessions.event(&name, 41, by.clone(), created("o41", 41)));
            seen.push(s.next().await);
            assert_eq!(kinds(&seen), ["resync", "resync", "41"]);
            assert_eq!(s.view().objects.len(), 41);
            assert_eq!(s.end(), None);
        });
    }

    /// A gap the client did not make (no snapshot asked for, none waiting) ends the session.
    #[test]
    fn a_gap_without_a_snapshot_ends_the_session_as_out_of_order() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let name = SessionName::new("s").expect("name");
            let by = ClientId::new("w").expect("id");
            let (tx, _cmds) = mpsc::channel(1);
            let mut sessions = Sessions::new(8);
            let view = SessionView::from_chunks(state(0, &[]), Vec::new());
            let mut s = sessions.open(name.clone(), by.clone(), view, tx);
            assert!(!sessions.event(&name, 2, by.clone(), created("x", 2)));
            assert_eq!(s.next().await, None);
            assert_eq!(s.end(), Some(SessionEnd::OutOfOrder));
        });
    }
}
