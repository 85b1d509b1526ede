//! A member hub's mirror of a session held by another hub, built from what that hub sends
//! its members anyway: the join snapshot (`session_state` chunks) and every event after it.
//!
//! ```text
//!   chunks for one member (rev r) ─► partial ─► last chunk ─► View at r (when r ≥ the mirror's)
//!   session_event rev n ──────────► n ≤ seq: seen already · n = seq + 1: applied · else: broken
//! ```
//!
//! When the home hub leaves the cluster, a hub whose mirror is whole can take the session
//! over ([`super::state::SessionState::from_view`]). A mirror that missed an event (messages
//! lost with a NATS outage) is dropped until the next snapshot: it never pretends.

use std::collections::HashMap;
use std::time::Duration;

use peermesh_proto::{
    ClientId, OwnerLeave as WireOwnerLeave, ServerFrame, SessionChange, SessionMode, SessionName,
    SessionState as WireState,
};

use super::state::{
    Event, MemberInfo, Mode, Object, ObjectId, OwnerLeave, Snapshot, StateEvent, View,
};

/// The mirror of one session on a hub with members of it.
#[derive(Debug, Default)]
pub(crate) struct Mirror {
    view: Option<View>,
}

/// Snapshots being received in chunks, by session and the member they are for. Chunks of
/// one snapshot come in order; what is left of one cut short is dropped with
/// [`Partials::clear`] when the hub learns messages may have been lost.
#[derive(Debug, Default)]
pub(crate) struct Partials {
    partial: HashMap<(SessionName, ClientId), Snapshot>,
}

impl Partials {
    /// A frame of a session's home for local member `to`: the whole snapshot once its last
    /// chunk is in, else `None`.
    pub(crate) fn chunk(
        &mut self,
        session: &SessionName,
        to: &ClientId,
        frame: &ServerFrame,
    ) -> Option<Snapshot> {
        let ServerFrame::SessionState(st) = frame else {
            return None;
        };
        let key = (session.clone(), to.clone());
        let Some(part) = chunk_snapshot(st) else {
            self.partial.remove(&key);
            return None;
        };
        let whole = match self.partial.remove(&key) {
            Some(mut p) if p.seq == part.seq => {
                p.objects.extend(part.objects);
                p
            }
            _ => part,
        };
        if st.more {
            self.partial.insert(key, whole);
            return None;
        }
        Some(whole)
    }

    /// Drops every snapshot still arriving.
    pub(crate) fn clear(&mut self) {
        self.partial.clear();
    }
}

fn owner_leave(p: WireOwnerLeave) -> OwnerLeave {
    match p {
        WireOwnerLeave::Authority => OwnerLeave::ToAuthority,
        WireOwnerLeave::Delete => OwnerLeave::Delete,
    }
}

fn object_id(name: &peermesh_proto::ObjectName) -> Option<ObjectId> {
    ObjectId::new(name.as_str()).ok()
}

/// The header and objects of one chunk as a snapshot (`None` when an object id is refused).
fn chunk_snapshot(st: &WireState) -> Option<Snapshot> {
    let members = st
        .members
        .iter()
        .map(|m| MemberInfo {
            client: m.id.clone(),
            order: m.order,
            rtt: m.rtt_ms.map(Duration::from_millis),
            away: m.away,
        })
        .collect();
    let mut objects = Vec::with_capacity(st.objects.len());
    for o in &st.objects {
        let object = Object {
            value: o.payload.clone(),
            owner: o.owner.clone(),
            on_owner_leave: owner_leave(o.on_owner_leave),
            version: o.version,
        };
        objects.push((object_id(&o.id)?, object));
    }
    Some(Snapshot {
        seq: st.rev,
        mode: match st.mode {
            SessionMode::Authoritative => Mode::PeerAuthoritative,
            SessionMode::Relay => Mode::Relay,
        },
        authority: st.authority.clone(),
        epoch: st.epoch,
        members,
        objects,
    })
}

/// A `session_event` frame as the event it carries (its values moved, not cloned).
fn event_of(frame: ServerFrame) -> Option<Event> {
    let ServerFrame::SessionEvent {
        rev, by, change, ..
    } = frame
    else {
        return None;
    };
    let change = match change {
        SessionChange::MemberJoined {
            member,
            order,
            rtt_ms,
        } => StateEvent::MemberJoined {
            client: member,
            order,
            rtt: rtt_ms.map(Duration::from_millis),
        },
        SessionChange::MemberLeft { member } => StateEvent::MemberLeft { client: member },
        SessionChange::MemberAway { member } => StateEvent::MemberAway { client: member },
        SessionChange::MemberBack { member } => StateEvent::MemberBack { client: member },
        SessionChange::Authority { member, epoch } => StateEvent::AuthorityChanged {
            client: member,
            epoch,
        },
        SessionChange::Created {
            object,
            payload,
            owner,
            on_owner_leave,
        } => StateEvent::Created {
            id: object_id(&object)?,
            value: payload,
            owner,
            on_owner_leave: owner_leave(on_owner_leave),
        },
        SessionChange::Updated { object, payload } => StateEvent::Updated {
            id: object_id(&object)?,
            value: payload,
        },
        SessionChange::Deleted { object } => StateEvent::Deleted {
            id: object_id(&object)?,
        },
        SessionChange::Transferred { object, owner } => StateEvent::Transferred {
            id: object_id(&object)?,
            owner,
        },
    };
    Some(Event {
        seq: rev,
        by,
        change,
    })
}

impl Mirror {
    /// A whole snapshot sent to a local member: it replaces the mirror unless the mirror is
    /// further along already.
    pub(crate) fn snapshot(&mut self, whole: Snapshot) {
        if self.view.as_ref().is_none_or(|v| whole.seq >= v.seq()) {
            self.view = Some(View::from_snapshot(whole));
        }
    }

    /// Forgets the mirrored state (messages from the home may have been lost).
    pub(crate) fn drop_view(&mut self) {
        self.view = None;
    }

    /// An event for the members: applied in order; one already seen is ignored; a gap or a
    /// contradiction drops the mirror (until the next snapshot).
    pub(crate) fn event(&mut self, frame: ServerFrame) {
        let Some(view) = self.view.as_mut() else {
            return;
        };
        let is_event = matches!(frame, ServerFrame::SessionEvent { .. });
        let Some(event) = event_of(frame) else {
            if is_event {
                self.view = None;
            }
            return;
        };
        if event.seq <= view.seq() {
            return;
        }
        if let Err(e) = view.apply(&event) {
            tracing::debug!(error = %e, "a session's mirror missed an event: dropped until the next snapshot");
            self.view = None;
        }
    }

    /// The mirrored state, when whole.
    pub(crate) fn view(&self) -> Option<&View> {
        self.view.as_ref()
    }

    /// Takes the mirrored state, when whole.
    pub(crate) fn take(&mut self) -> Option<View> {
        self.view.take()
    }
}

/// For the `cluster_message` fuzz target: a mirror of a one-member session takes `frame` as
/// a snapshot chunk and as an event, and must not panic.
pub(crate) fn check_frame(frame: &ServerFrame) {
    let (Ok(name), Ok(alice)) = (SessionName::new("s"), ClientId::new("alice")) else {
        return;
    };
    let base = Snapshot {
        seq: 1,
        mode: Mode::PeerAuthoritative,
        authority: Some(alice.clone()),
        epoch: 1,
        members: vec![MemberInfo {
            client: alice.clone(),
            order: 1,
            rtt: None,
            away: false,
        }],
        objects: Vec::new(),
    };
    let mut mirror = Mirror::default();
    mirror.snapshot(base);
    mirror.event(frame.clone());
    let mut partials = Partials::default();
    if let Some(whole) = partials.chunk(&name, &alice, frame) {
        mirror.snapshot(whole);
    }
    mirror.event(frame.clone());
    if let Some(view) = mirror.take() {
        let _ = view.digest();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sessions::state::{Change, Limits, Op, SessionState};
    use crate::sessions::{snapshot_frames, wire_event};
    use peermesh_proto::{Payload, SessionName};
    use serde_json::json;

    fn cid(s: &str) -> ClientId {
        ClientId::new(s).unwrap()
    }

    fn create(state: &mut SessionState, by: &str, id: &str, value: Payload) -> Event {
        let op = Op::Create {
            id: ObjectId::new(id).unwrap(),
            value,
            owned: true,
            on_owner_leave: OwnerLeave::Delete,
        };
        state.apply(&cid(by), op).unwrap()
    }

    #[test]
    fn a_mirror_follows_snapshot_chunks_and_events_and_drops_itself_on_a_gap() {
        let name = SessionName::new("game").unwrap();
        let mut state = SessionState::new(Limits::default());
        state
            .join(cid("a"), 1, None, Mode::PeerAuthoritative)
            .unwrap();
        // Big enough for several chunks.
        for i in 0..6 {
            let big = Payload::Json(json!("x".repeat(100 << 10)));
            create(&mut state, "a", &format!("o{i}"), big);
        }
        let frames = snapshot_frames(&name, &state.snapshot(), Some(3));
        assert!(frames.len() > 1, "{} chunks", frames.len());
        let mut mirror = Mirror::default();
        let mut partials = Partials::default();
        let last = frames.len() - 1;
        for (i, f) in frames.iter().enumerate() {
            let whole = partials.chunk(&name, &cid("b"), f);
            assert_eq!(whole.is_some(), i == last);
            if let Some(whole) = whole {
                mirror.snapshot(whole);
            }
        }
        assert_eq!(mirror.view().map(View::digest), Some(state.digest()));

        // Events in order, and one seen twice.
        let mut events = Vec::new();
        events.extend(state.join(cid("b"), 2, None, Mode::Relay).unwrap().events);
        let update = Op::Update {
            id: ObjectId::new("o1").unwrap(),
            change: Change::MergePatch(json!({"k": 1})),
        };
        events.push(state.apply(&cid("a"), update).unwrap());
        events.extend(state.leave(&cid("a")).unwrap().events);
        for e in &events {
            mirror.event(wire_event(&name, e));
        }
        mirror.event(wire_event(&name, &events[0]));
        assert_eq!(mirror.view().map(View::digest), Some(state.digest()));

        // A snapshot older than the mirror changes nothing.
        let old = partials.chunk(&name, &cid("c"), &frames[last]);
        mirror.snapshot(old.unwrap());
        assert_eq!(mirror.view().map(View::digest), Some(state.digest()));

        // A gap drops it; the next snapshot brings it back.
        let lost = create(&mut state, "b", "p", Payload::Json(json!(1)));
        let next = create(&mut state, "b", "q", Payload::Json(json!(2)));
        let _ = lost;
        mirror.event(wire_event(&name, &next));
        assert!(mirror.view().is_none());
        for f in snapshot_frames(&name, &state.snapshot(), None) {
            if let Some(whole) = partials.chunk(&name, &cid("b"), &f) {
                mirror.snapshot(whole);
            }
        }
        assert_eq!(mirror.view().map(View::digest), Some(state.digest()));
        assert_eq!(mirror.take().map(|v| v.seq()), Some(state.seq()));
        assert!(mirror.view().is_none());
    }

    #[test]
    fn interleaved_snapshots_for_two_members_are_kept_apart() {
        let name = SessionName::new("game").unwrap();
        let mut state = SessionState::new(Limits::default());
        state
            .join(cid("a"), 1, None, Mode::PeerAuthoritative)
            .unwrap();
        for i in 0..4 {
            create(
                &mut state,
                "a",
                &format!("o{i}"),
                Payload::Json(json!("y".repeat(100 << 10))),
            );
        }
        let first = snapshot_frames(&name, &state.snapshot(), None);
        state.join(cid("b"), 2, None, Mode::Relay).unwrap();
        let second = snapshot_frames(&name, &state.snapshot(), None);
        assert!(first.len() > 1 && first.len() == second.len());
        let mut mirror = Mirror::default();
        let mut partials = Partials::default();
        for (x, y) in first.iter().zip(&second) {
            for whole in [
                partials.chunk(&name, &cid("b"), x),
                partials.chunk(&name, &cid("c"), y),
            ]
            .into_iter()
            .flatten()
            {
                mirror.snapshot(whole);
            }
        }
        assert_eq!(mirror.view().map(View::digest), Some(state.digest()));
    }
}
