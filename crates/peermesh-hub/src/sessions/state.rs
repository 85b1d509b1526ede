//! The sans-IO state machine of one session: members, authority and shared objects.
//!
//! A session is a set of members plus shared state (objects). Every change is an [`Event`]
//! with the next per-session sequence number `seq` (starting at 1): membership changes,
//! authority changes and object changes alike, one `seq` per event. A member's view is a pure
//! function of the event stream: [`SessionState::join`] hands the joiner a [`Snapshot`] taken
//! after its own join events, and the joiner then receives every event with a greater `seq`,
//! with no gap and no duplicate. [`View`] is that member-side mirror; it checks the continuity
//! of `seq` and the consistency of every event.
//!
//! The hub and [`View`] apply events through the same code, so the hub's state is, by
//! construction, what a member rebuilds from the stream: the hub only *decides* (checks limits
//! and permissions, elects authorities) and then commits the resulting events.
//!
//! # Rules
//!
//! - **Mode**, chosen by the session's first joiner and fixed afterwards:
//!   [`Mode::PeerAuthoritative`] (the default) or [`Mode::Relay`].
//! - **Authority** (peer-authoritative sessions only): the first member. It stays authority
//!   while it is *away* (dropped, inside its resume window), since it may resume. When it
//!   leaves for good, exactly one remaining member becomes authority: the present (not away)
//!   member with the lowest measured RTT (an unknown RTT counts as the highest), ties broken by
//!   join order; when every remaining member is away, the earliest-joined one. The `epoch`
//!   starts at 1 with the first authority and grows by one on every change. A relay session
//!   has no authority and its epoch stays 0.
//! - **Permissions**: an object with an owner may be updated or deleted by its owner only; an
//!   object without owner by the authority (peer-authoritative) or by any member (relay).
//!   Ownership may be transferred by whoever may update the object, and by the authority for
//!   any object.
//! - **Owner leaving**: when a member leaves for good, each object it owns is, according to
//!   its [`OwnerLeave`], deleted or given to the authority (unowned when there is none, as in
//!   relay sessions).
//! - **Closing**: when the last member leaves, [`Left::closed`] tells the caller to drop the
//!   session.
//!
//! Operations from members that are away are accepted like any other: the caller decides when
//! a member is back. No clock is read here; time comes in as [`Instant`] arguments.

use std::borrow::Borrow;
use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use peermesh_proto::{ClientId, Payload};
use serde_json::Value;

use super::patch::merge_patch;

/// Limits of one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Most members at once (default [`Limits::DEFAULT_MAX_MEMBERS`]).
    pub(crate) max_members: usize,
    /// Most objects at once (default [`Limits::DEFAULT_MAX_OBJECTS`]).
    pub(crate) max_objects: usize,
    /// Largest object value in bytes: raw bytes for binary values, compact JSON text for JSON
    /// values (default [`Limits::DEFAULT_MAX_VALUE_BYTES`]).
    pub(crate) max_value_bytes: usize,
}

impl Limits {
    /// Default of [`Limits::max_members`]: 1,024.
    pub(crate) const DEFAULT_MAX_MEMBERS: usize = 1024;
    /// Default of [`Limits::max_objects`]: 1,000,000.
    pub(crate) const DEFAULT_MAX_OBJECTS: usize = 1_000_000;
    /// Default of [`Limits::max_value_bytes`]: 256 KiB.
    pub(crate) const DEFAULT_MAX_VALUE_BYTES: usize = 256 * 1024;
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_members: Self::DEFAULT_MAX_MEMBERS,
            max_objects: Self::DEFAULT_MAX_OBJECTS,
            max_value_bytes: Self::DEFAULT_MAX_VALUE_BYTES,
        }
    }
}

/// Why a session refused a request; a refused request changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The member may not change this object (it is neither its owner nor allowed otherwise).
    NotOwner,
    /// No object has this id.
    UnknownObject,
    /// An object with this id already exists.
    ObjectExists,
    /// The session holds its maximum number of objects.
    TooManyObjects,
    /// The value is larger than the session accepts.
    ObjectTooLarge,
    /// The client (acting, or named as new owner) is not a member of the session.
    NotMember,
    /// The merge patch cannot apply: the object's value is binary.
    InvalidPatch,
    /// The object id is empty, longer than 128 bytes or holds control characters.
    InvalidObjectId,
    /// The session holds its maximum number of members.
    TooManyMembers,
}

impl Refusal {
    /// Every refusal, in declaration order.
    pub(crate) const ALL: &'static [Refusal] = &[
        Refusal::NotOwner,
        Refusal::UnknownObject,
        Refusal::ObjectExists,
        Refusal::TooManyObjects,
        Refusal::ObjectTooLarge,
        Refusal::NotMember,
        Refusal::InvalidPatch,
        Refusal::InvalidObjectId,
        Refusal::TooManyMembers,
    ];

    /// The stable `snake_case` code of the refusal.
    pub(crate) fn code_name(&self) -> &'static str {
        match self {
            Refusal::NotOwner => "not_owner",
            Refusal::UnknownObject => "unknown_object",
            Refusal::ObjectExists => "object_exists",
            Refusal::TooManyObjects => "too_many_objects",
            Refusal::ObjectTooLarge => "object_too_large",
            Refusal::NotMember => "not_member",
            Refusal::InvalidPatch => "invalid_patch",
            Refusal::InvalidObjectId => "invalid_object_id",
            Refusal::TooManyMembers => "too_many_members",
        }
    }

    /// One sentence explaining the refusal to a person.
    pub(crate) fn message(&self) -> &'static str {
        match self {
            Refusal::NotOwner => "only the object's owner (or, for an object without owner, the session's authority) may change it",
            Refusal::UnknownObject => "the session has no object with that id",
            Refusal::ObjectExists => "the session already has an object with that id",
            Refusal::TooManyObjects => "the session already holds as many objects as allowed",
            Refusal::ObjectTooLarge => "the object's value is larger than the session allows",
            Refusal::NotMember => "the client is not a member of the session",
            Refusal::InvalidPatch => "a JSON merge patch cannot apply to a binary value",
            Refusal::InvalidObjectId => "an object id must be 1 to 128 bytes without control characters",
            Refusal::TooManyMembers => "the session already has as many members as allowed",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for Refusal {}

/// A validated object id: 1 to 128 bytes of text without control characters.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct ObjectId(Arc<str>);

impl ObjectId {
    /// The longest accepted id, in bytes.
    pub(crate) const MAX_LEN: usize = 128;

    /// Validates an object id.
    pub(crate) fn new(id: &str) -> Result<ObjectId, Refusal> {
        let valid =
            !id.is_empty() && id.len() <= Self::MAX_LEN && !id.chars().any(char::is_control);
        if valid {
            Ok(ObjectId(Arc::from(id)))
        } else {
            Err(Refusal::InvalidObjectId)
        }
    }

    /// The id as text.
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Borrow<str> for ObjectId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// How a session is run; chosen by its first joiner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub(crate) enum Mode {
    /// One member, the authority, owns every object without owner and may reassign ownership.
    #[default]
    PeerAuthoritative,
    /// No authority: the hub only orders and relays changes; objects without owner may be
    /// changed by any member.
    Relay,
}

/// What happens to an object when its owner leaves the session for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub(crate) enum OwnerLeave {
    /// The authority becomes the owner (no owner when there is no authority).
    #[default]
    ToAuthority,
    /// The object is deleted.
    Delete,
}

/// One shared object.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Object {
    /// The object's value.
    pub(crate) value: Payload,
    /// The member that owns it, if any.
    pub(crate) owner: Option<ClientId>,
    /// What happens to it when its owner leaves for good.
    pub(crate) on_owner_leave: OwnerLeave,
    /// The `seq` of its last change (creation, update or transfer).
    pub(crate) version: u64,
}

/// A member as every member sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct MemberInfo {
    /// The member's client id.
    pub(crate) client: ClientId,
    /// Its join order number, unique and increasing within the session (first is 1).
    pub(crate) order: u64,
    /// Its round-trip time measured when it joined, if known.
    pub(crate) rtt: Option<Duration>,
    /// Whether it dropped and may still resume.
    pub(crate) away: bool,
}

/// A change of an object's value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Change {
    /// The new value, whole.
    Replace(Payload),
    /// An RFC 7386 JSON merge patch applied to a JSON value.
    MergePatch(Value),
}

/// An operation of a member on the shared objects.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Op {
    /// Creates an object, owned by its creator when `owned`.
    Create {
        /// The new object's id.
        id: ObjectId,
        /// Its value.
        value: Payload,
        /// Whether the creator owns it.
        owned: bool,
        /// What happens to it when its owner leaves.
        on_owner_leave: OwnerLeave,
    },
    /// Changes an object's value.
    Update {
        /// The object.
        id: ObjectId,
        /// The change.
        change: Change,
    },
    /// Deletes an object.
    Delete {
        /// The object.
        id: ObjectId,
    },
    /// Gives an object to another member, or makes it unowned.
    Transfer {
        /// The object.
        id: ObjectId,
        /// The new owner, a member; `None` for no owner.
        to: Option<ClientId>,
    },
}

/// What changed, as broadcast to every member.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum StateEvent {
    /// A member joined.
    MemberJoined {
        /// The new member.
        client: ClientId,
        /// Its join order number.
        order: u64,
        /// Its measured round-trip time.
        rtt: Option<Duration>,
    },
    /// A member left for good.
    MemberLeft {
        /// The member.
        client: ClientId,
    },
    /// A member dropped and may resume.
    MemberAway {
        /// The member.
        client: ClientId,
    },
    /// A member that was away resumed.
    MemberBack {
        /// The member.
        client: ClientId,
    },
    /// The authority changed (`None` when the session's last member left).
    AuthorityChanged {
        /// The new authority.
        client: Option<ClientId>,
        /// The new epoch.
        epoch: u64,
    },
    /// An object was created.
    Created {
        /// The object.
        id: ObjectId,
        /// Its value.
        value: Payload,
        /// Its owner.
        owner: Option<ClientId>,
        /// What happens to it when its owner leaves.
        on_owner_leave: OwnerLeave,
    },
    /// An object's value changed; `value` is the whole new value (after a patch, too).
    Updated {
        /// The object.
        id: ObjectId,
        /// Its new value.
        value: Payload,
    },
    /// An object was deleted.
    Deleted {
        /// The object.
        id: ObjectId,
    },
    /// An object's owner changed.
    Transferred {
        /// The object.
        id: ObjectId,
        /// The new owner.
        owner: Option<ClientId>,
    },
}

/// One sequenced change of a session.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Event {
    /// The session's sequence number of this event.
    pub(crate) seq: u64,
    /// The member whose action caused it (the joiner, the leaver, the acting member).
    pub(crate) by: ClientId,
    /// What changed.
    pub(crate) change: StateEvent,
}

/// Why a [`View`] could not apply an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ViewError {
    /// Events are missing before this one.
    #[error("event {got} arrived but event {expected} was expected: events are missing")]
    Gap {
        /// The `seq` the view expected.
        expected: u64,
        /// The `seq` that arrived.
        got: u64,
    },
    /// This event was applied already.
    #[error("event {got} arrived again: the view already applied events up to {last}")]
    Duplicate {
        /// The last `seq` the view applied.
        last: u64,
        /// The `seq` that arrived.
        got: u64,
    },
    /// The event contradicts the view's state.
    #[error("event {seq} does not fit the session's state: {reason}")]
    Inconsistent {
        /// The event's `seq`.
        seq: u64,
        /// What does not fit.
        reason: &'static str,
    },
}

/// The replicated state: what the hub and every member hold alike.
#[derive(Debug, Clone, PartialEq, Default)]
struct Replica {
    seq: u64,
    mode: Mode,
    authority: Option<ClientId>,
    epoch: u64,
    members: BTreeMap<ClientId, MemberInfo>,
    objects: BTreeMap<ObjectId, Object>,
}

impl Replica {
    /// Checks `event` against the state, then applies it; an error changes nothing.
    fn apply(&mut self, event: &Event) -> Result<(), ViewError> {
        let expected = self.seq + 1;
        if event.seq < expected {
            return Err(ViewError::Duplicate {
                last: self.seq,
                got: event.seq,
            });
        }
        if event.seq > expected {
            return Err(ViewError::Gap {
                expected,
                got: event.seq,
            });
        }
        self.check(&event.change)
            .map_err(|reason| ViewError::Inconsistent {
                seq: event.seq,
                reason,
            })?;
        self.mutate(event.seq, &event.change);
        self.seq = event.seq;
        Ok(())
    }

    /// Why `change` cannot apply to this state, if it cannot.
    fn check(&self, change: &StateEvent) -> Result<(), &'static str> {
        match change {
            StateEvent::MemberJoined { client, .. } => {
                require(!self.is_member(client), "the joiner is a member already")
            }
            StateEvent::MemberLeft { client } => {
                require(self.is_member(client), "the leaver is not a member")?;
                require(
                    self.authority.as_ref() != Some(client),
                    "the leaver is still the authority",
                )
            }
            StateEvent::MemberAway { client } | StateEvent::MemberBack { client } => {
                require(self.is_member(client), "the client is not a member")
            }
            StateEvent::AuthorityChanged { client, epoch } => {
                require(*epoch == self.epoch + 1, "the epoch does not grow by one")?;
                self.check_owner(client.as_ref())
            }
            StateEvent::Created { id, owner, .. } => {
                require(!self.objects.contains_key(id), "the object exists already")?;
                self.check_owner(owner.as_ref())
            }
            StateEvent::Updated { id, .. } | StateEvent::Deleted { id } => {
                require(self.objects.contains_key(id), "the object does not exist")
            }
            StateEvent::Transferred { id, owner } => {
                require(self.objects.contains_key(id), "the object does not exist")?;
                self.check_owner(owner.as_ref())
            }
        }
    }

    /// Checks that a named owner or authority is a member.
    fn check_owner(&self, client: Option<&ClientId>) -> Result<(), &'static str> {
        require(
            client.is_none_or(|c| self.is_member(c)),
            "the named client is not a member",
        )
    }

    /// Applies a checked change.
    fn mutate(&mut self, seq: u64, change: &StateEvent) {
        match change {
            StateEvent::MemberJoined { client, order, rtt } => {
                let info = MemberInfo {
                    client: client.clone(),
                    order: *order,
                    rtt: *rtt,
                    away: false,
                };
                self.members.insert(client.clone(), info);
            }
            StateEvent::MemberLeft { client } => {
                self.members.remove(client);
            }
            StateEvent::MemberAway { client } => self.set_away(client, true),
            StateEvent::MemberBack { client } => self.set_away(client, false),
            StateEvent::AuthorityChanged { client, epoch } => {
                self.authority = client.clone();
                self.epoch = *epoch;
            }
            StateEvent::Created {
                id,
                value,
                owner,
                on_owner_leave,
            } => {
                let object = Object {
                    value: value.clone(),
                    owner: owner.clone(),
                    on_owner_leave: *on_owner_leave,
                    version: seq,
                };
                self.objects.insert(id.clone(), object);
            }
            StateEvent::Updated { id, value } => {
                if let Some(object) = self.objects.get_mut(id) {
                    object.value = value.clone();
                    object.version = seq;
                }
            }
            StateEvent::Deleted { id } => {
                self.objects.remove(id);
            }
            StateEvent::Transferred { id, owner } => {
                if let Some(object) = self.objects.get_mut(id) {
                    object.owner = owner.clone();
                    object.version = seq;
                }
            }
        }
    }

    fn set_away(&mut self, client: &ClientId, away: bool) {
        if let Some(member) = self.members.get_mut(client) {
            member.away = away;
        }
    }

    fn is_member(&self, client: &ClientId) -> bool {
        self.members.contains_key(client)
    }

    /// A copy of the state, members in join order and objects by id.
    fn snapshot(&self) -> Snapshot {
        let mut members: Vec<MemberInfo> = self.members.values().cloned().collect();
        members.sort_by_key(|m| m.order);
        Snapshot {
            seq: self.seq,
            mode: self.mode,
            authority: self.authority.clone(),
            epoch: self.epoch,
            members,
            objects: self
                .objects
                .iter()
                .map(|(id, o)| (id.clone(), o.clone()))
                .collect(),
        }
    }

    /// A deterministic hash of the whole state.
    fn digest(&self) -> u64 {
        let mut h = DefaultHasher::new();
        self.seq.hash(&mut h);
        self.mode.hash(&mut h);
        self.authority.hash(&mut h);
        self.epoch.hash(&mut h);
        self.members.len().hash(&mut h);
        for member in self.members.values() {
            member.hash(&mut h);
        }
        self.objects.len().hash(&mut h);
        for (id, object) in &self.objects {
            id.hash(&mut h);
            hash_payload(&object.value, &mut h);
            object.owner.hash(&mut h);
            object.on_owner_leave.hash(&mut h);
            object.version.hash(&mut h);
        }
        h.finish()
    }
}

/// `Ok` when `ok`, else the reason.
fn require(ok: bool, reason: &'static str) -> Result<(), &'static str> {
    if ok {
        Ok(())
    } else {
        Err(reason)
    }
}

/// Hashes a payload; JSON object keys are hashed in sorted order.
fn hash_payload(payload: &Payload, h: &mut impl Hasher) {
    match payload {
        Payload::Json(v) => {
            0u8.hash(h);
            hash_json(v, h);
        }
        Payload::Bin(b) => {
            1u8.hash(h);
            b[..].hash(h);
        }
    }
}

/// Hashes a JSON value independently of the order of object keys.
fn hash_json(value: &Value, h: &mut impl Hasher) {
    match value {
        Value::Null => 0u8.hash(h),
        Value::Bool(b) => (1u8, b).hash(h),
        Value::Number(n) => (2u8, n).hash(h),
        Value::String(s) => (3u8, s).hash(h),
        Value::Array(items) => {
            (4u8, items.len()).hash(h);
            items.iter().for_each(|v| hash_json(v, h));
        }
        Value::Object(map) => {
            (5u8, map.len()).hash(h);
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            for (key, v) in entries {
                key.hash(h);
                hash_json(v, h);
            }
        }
    }
}

/// Counts the bytes written to it.
struct ByteCounter(usize);

impl std::io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The size of a value as limited by [`Limits::max_value_bytes`]: the number of bytes of a
/// binary value, the length of the compact JSON text of a JSON value.
pub(crate) fn payload_size(payload: &Payload) -> usize {
    match payload {
        Payload::Bin(b) => b.len(),
        Payload::Json(v) => {
            let mut counter = ByteCounter(0);
            match serde_json::to_writer(&mut counter, v) {
                Ok(()) => counter.0,
                Err(_) => usize::MAX,
            }
        }
    }
}

/// The approximate encoded size of one snapshot entry: id length + value size + 64. Binary
/// values count with their base64 length (as in JSON frames), an upper bound for MessagePack.
pub(crate) fn approx_entry_bytes(id: &ObjectId, object: &Object) -> usize {
    let value = match &object.value {
        Payload::Bin(b) => b.len().div_ceil(3) * 4,
        json => payload_size(json),
    };
    id.as_str().len().saturating_add(value).saturating_add(64)
}

/// The whole state of a session at one `seq`, as a joiner receives it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Snapshot {
    /// The `seq` of the last event the snapshot includes.
    pub(crate) seq: u64,
    /// The session's mode.
    pub(crate) mode: Mode,
    /// The authority, if any.
    pub(crate) authority: Option<ClientId>,
    /// The authority epoch.
    pub(crate) epoch: u64,
    /// The members, in join order.
    pub(crate) members: Vec<MemberInfo>,
    /// The objects, sorted by id.
    pub(crate) objects: Vec<(ObjectId, Object)>,
}

impl Snapshot {
    /// Splits the objects into consecutive chunks of at most `max_bytes` each by
    /// [`approx_entry_bytes`]; an object larger than `max_bytes` makes a chunk of its own.
    /// Yields nothing when there are no objects.
    pub(crate) fn chunks(&self, max_bytes: usize) -> Chunks<'_> {
        Chunks {
            rest: &self.objects,
            max_bytes,
        }
    }
}

/// Iterator over the object chunks of a [`Snapshot`]; see [`Snapshot::chunks`].
#[derive(Debug, Clone)]
pub(crate) struct Chunks<'a> {
    rest: &'a [(ObjectId, Object)],
    max_bytes: usize,
}

impl<'a> Iterator for Chunks<'a> {
    type Item = &'a [(ObjectId, Object)];

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let mut total = 0usize;
        let mut count = 0;
        for (id, object) in self.rest {
            let size = approx_entry_bytes(id, object);
            if count > 0 && total.saturating_add(size) > self.max_bytes {
                break;
            }
            total = total.saturating_add(size);
            count += 1;
        }
        let (chunk, rest) = self.rest.split_at(count);
        self.rest = rest;
        Some(chunk)
    }
}

/// A member's mirror of a session, built from its join snapshot and the events after it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct View {
    replica: Replica,
}

impl View {
    /// The view a joiner starts from.
    pub(crate) fn from_snapshot(snapshot: Snapshot) -> View {
        let members = snapshot
            .members
            .into_iter()
            .map(|m| (m.client.clone(), m))
            .collect();
        View {
            replica: Replica {
                seq: snapshot.seq,
                mode: snapshot.mode,
                authority: snapshot.authority,
                epoch: snapshot.epoch,
                members,
                objects: snapshot.objects.into_iter().collect(),
            },
        }
    }

    /// Applies the next event; refuses (changing nothing) a gap, a duplicate or an event
    /// that contradicts the state.
    pub(crate) fn apply(&mut self, event: &Event) -> Result<(), ViewError> {
        self.replica.apply(event)
    }

    /// The `seq` of the last event applied.
    pub(crate) fn seq(&self) -> u64 {
        self.replica.seq
    }

    /// The session's mode.
    pub(crate) fn mode(&self) -> Mode {
        self.replica.mode
    }

    /// The authority, if any.
    pub(crate) fn authority(&self) -> Option<&ClientId> {
        self.replica.authority.as_ref()
    }

    /// The authority epoch.
    pub(crate) fn epoch(&self) -> u64 {
        self.replica.epoch
    }

    /// A member, if present.
    pub(crate) fn member(&self, client: &ClientId) -> Option<&MemberInfo> {
        self.replica.members.get(client)
    }

    /// The members, by client id.
    pub(crate) fn members(&self) -> impl Iterator<Item = &MemberInfo> {
        self.replica.members.values()
    }

    /// An object, if present.
    pub(crate) fn object(&self, id: &str) -> Option<&Object> {
        self.replica.objects.get(id)
    }

    /// The objects, by id.
    pub(crate) fn objects(&self) -> impl Iterator<Item = (&ObjectId, &Object)> {
        self.replica.objects.iter()
    }

    /// A deterministic hash of the state; equal to [`SessionState::digest`] when in sync.
    pub(crate) fn digest(&self) -> u64 {
        self.replica.digest()
    }
}

/// What a join returns.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Joined {
    /// The state for the joiner, including its own join events.
    pub(crate) snapshot: Snapshot,
    /// The events to broadcast to the other members (not to the joiner).
    pub(crate) events: Vec<Event>,
}

/// What a leave returns.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Left {
    /// The events to broadcast to the remaining members.
    pub(crate) events: Vec<Event>,
    /// Whether the session has no member left: the caller should drop it.
    pub(crate) closed: bool,
}

/// What the hub alone knows of a member.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Presence {
    conn: u64,
    away_since: Option<Instant>,
}

/// The hub's state of one session.
#[derive(Debug, Clone)]
pub(crate) struct SessionState {
    limits: Limits,
    replica: Replica,
    presence: HashMap<ClientId, Presence>,
    /// The ids of the objects each member owns (members owning nothing are absent).
    owned: HashMap<ClientId, BTreeSet<ObjectId>>,
    next_order: u64,
}

impl SessionState {
    /// An empty session; its mode is chosen by the first join.
    pub(crate) fn new(limits: Limits) -> SessionState {
        SessionState {
            limits,
            replica: Replica::default(),
            presence: HashMap::new(),
            owned: HashMap::new(),
            next_order: 1,
        }
    }

    /// The state of a session taken over from a member's mirror, its home hub gone: every
    /// member of `view`, on connection `conn_of(member)`; members away in the view are away
    /// since `now`. Join order numbers go on above the view's revision (every join added an
    /// event, so no order given before is higher), unique and increasing as before.
    pub(crate) fn from_view(
        view: View,
        limits: Limits,
        now: Instant,
        conn_of: impl Fn(&ClientId) -> u64,
    ) -> SessionState {
        let replica = view.replica;
        let presence = replica
            .members
            .values()
            .map(|m| {
                let p = Presence {
                    conn: conn_of(&m.client),
                    away_since: m.away.then_some(now),
                };
                (m.client.clone(), p)
            })
            .collect();
        let mut owned: HashMap<ClientId, BTreeSet<ObjectId>> = HashMap::new();
        for (id, object) in &replica.objects {
            if let Some(owner) = &object.owner {
                owned.entry(owner.clone()).or_default().insert(id.clone());
            }
        }
        let next_order = replica.seq + 1;
        SessionState {
            limits,
            replica,
            presence,
            owned,
            next_order,
        }
    }

    /// Adds `client` (on connection `conn`). The first joiner chooses the mode and, in a
    /// peer-authoritative session, becomes authority; so does a joiner of a session whose
    /// members all left. Joining again is idempotent: the member keeps its join order and
    /// RTT, its connection becomes `conn`, it is back if it was away, and it gets a fresh
    /// snapshot.
    pub(crate) fn join(
        &mut self,
        client: ClientId,
        conn: u64,
        rtt: Option<Duration>,
        mode_if_new: Mode,
    ) -> Result<Joined, Refusal> {
        if self.replica.is_member(&client) {
            let events = self.back(&client, conn)?;
            let snapshot = self.replica.snapshot();
            return Ok(Joined { snapshot, events });
        }
        if self.replica.members.len() >= self.limits.max_members {
            return Err(Refusal::TooManyMembers);
        }
        if self.replica.seq == 0 {
            self.replica.mode = mode_if_new;
        }
        let order = self.next_order;
        self.next_order += 1;
        self.presence.insert(
            client.clone(),
            Presence {
                conn,
                away_since: None,
            },
        );
        let joined = StateEvent::MemberJoined {
            client: client.clone(),
            order,
            rtt,
        };
        let mut events = vec![self.commit(&client, joined)];
        let needs_authority = self.replica.mode == Mode::PeerAuthoritative;
        if needs_authority && self.replica.authority.is_none() {
            events.push(self.commit_authority(&client, Some(client.clone())));
        }
        let snapshot = self.replica.snapshot();
        Ok(Joined { snapshot, events })
    }

    /// Marks a member as away (dropped, may resume) since `now`; it stays a member, and an
    /// authority stays authority. Idempotent: no event when already away.
    pub(crate) fn away(&mut self, client: &ClientId, now: Instant) -> Result<Vec<Event>, Refusal> {
        let presence = self.presence.get_mut(client).ok_or(Refusal::NotMember)?;
        if presence.away_since.is_some() {
            return Ok(Vec::new());
        }
        presence.away_since = Some(now);
        let away = StateEvent::MemberAway {
            client: client.clone(),
        };
        Ok(vec![self.commit(client, away)])
    }

    /// Marks an away member as back, now on connection `conn`. Idempotent: no event when it
    /// was not away (its connection is updated anyway).
    pub(crate) fn back(&mut self, client: &ClientId, conn: u64) -> Result<Vec<Event>, Refusal> {
        let presence = self.presence.get_mut(client).ok_or(Refusal::NotMember)?;
        presence.conn = conn;
        if presence.away_since.take().is_none() {
            return Ok(Vec::new());
        }
        let back = StateEvent::MemberBack {
            client: client.clone(),
        };
        Ok(vec![self.commit(client, back)])
    }

    /// Removes a member for good. In order, the events are: the new authority (when the
    /// leaver was authority), one event per object it owned (by id: deleted, or given to the
    /// authority or to no one), and its departure.
    pub(crate) fn leave(&mut self, client: &ClientId) -> Result<Left, Refusal> {
        if !self.replica.is_member(client) {
            return Err(Refusal::NotMember);
        }
        let mut events = Vec::new();
        if self.replica.authority.as_ref() == Some(client) {
            let next = self.successor(client);
            events.push(self.commit_authority(client, next));
        }
        let owned = self.owned.remove(client).unwrap_or_default();
        for id in owned {
            let change = self.owner_left(id);
            events.push(self.commit(client, change));
        }
        self.presence.remove(client);
        let left = StateEvent::MemberLeft {
            client: client.clone(),
        };
        events.push(self.commit(client, left));
        let closed = self.replica.members.is_empty();
        Ok(Left { events, closed })
    }

    /// Applies a member's operation on the objects; a refusal changes nothing.
    pub(crate) fn apply(&mut self, by: &ClientId, op: Op) -> Result<Event, Refusal> {
        if !self.replica.is_member(by) {
            return Err(Refusal::NotMember);
        }
        let change = match op {
            Op::Create {
                id,
                value,
                owned,
                on_owner_leave,
            } => self.decide_create(by, id, value, owned, on_owner_leave)?,
            Op::Update { id, change } => self.decide_update(by, id, change)?,
            Op::Delete { id } => self.decide_delete(by, id)?,
            Op::Transfer { id, to } => self.decide_transfer(by, id, to)?,
        };
        Ok(self.commit(by, change))
    }

    /// The members whose away time reached `window` at `now`, by client id: the caller
    /// should make them leave.
    pub(crate) fn expired_away(&self, now: Instant, window: Duration) -> Vec<ClientId> {
        let mut expired: Vec<ClientId> = self
            .presence
            .iter()
            .filter(|(_, p)| {
                p.away_since
                    .is_some_and(|since| now.saturating_duration_since(since) >= window)
            })
            .map(|(c, _)| c.clone())
            .collect();
        expired.sort();
        expired
    }

    /// The snapshot a joiner would receive now.
    pub(crate) fn snapshot(&self) -> Snapshot {
        self.replica.snapshot()
    }

    /// The `seq` of the last event (0 before the first join).
    pub(crate) fn seq(&self) -> u64 {
        self.replica.seq
    }

    /// The session's mode.
    pub(crate) fn mode(&self) -> Mode {
        self.replica.mode
    }

    /// The authority, if any.
    pub(crate) fn authority(&self) -> Option<&ClientId> {
        self.replica.authority.as_ref()
    }

    /// The authority epoch (0 before the first authority).
    pub(crate) fn epoch(&self) -> u64 {
        self.replica.epoch
    }

    /// Whether `client` is a member (present or away).
    pub(crate) fn is_member(&self, client: &ClientId) -> bool {
        self.replica.is_member(client)
    }

    /// A member, if present.
    pub(crate) fn member(&self, client: &ClientId) -> Option<&MemberInfo> {
        self.replica.members.get(client)
    }

    /// The members, by client id.
    pub(crate) fn members(&self) -> impl Iterator<Item = &MemberInfo> {
        self.replica.members.values()
    }

    /// The connection number of a member.
    pub(crate) fn conn_of(&self, client: &ClientId) -> Option<u64> {
        self.presence.get(client).map(|p| p.conn)
    }

    /// Number of members (present or away).
    pub(crate) fn member_count(&self) -> usize {
        self.replica.members.len()
    }

    /// An object, if present.
    pub(crate) fn object(&self, id: &str) -> Option<&Object> {
        self.replica.objects.get(id)
    }

    /// Number of objects.
    pub(crate) fn object_count(&self) -> usize {
        self.replica.objects.len()
    }

    /// A deterministic hash of the replicated state; equal to [`View::digest`] when in sync.
    pub(crate) fn digest(&self) -> u64 {
        self.replica.digest()
    }

    /// Whether a member's view holds exactly the hub's replicated state.
    pub(crate) fn view_eq(&self, view: &View) -> bool {
        self.replica == view.replica
    }

    fn decide_create(
        &self,
        by: &ClientId,
        id: ObjectId,
        value: Payload,
        owned: bool,
        on_owner_leave: OwnerLeave,
    ) -> Result<StateEvent, Refusal> {
        if self.replica.objects.contains_key(&id) {
            return Err(Refusal::ObjectExists);
        }
        if self.replica.objects.len() >= self.limits.max_objects {
            return Err(Refusal::TooManyObjects);
        }
        self.check_size(&value)?;
        Ok(StateEvent::Created {
            id,
            value,
            owner: owned.then(|| by.clone()),
            on_owner_leave,
        })
    }

    fn decide_update(
        &self,
        by: &ClientId,
        id: ObjectId,
        change: Change,
    ) -> Result<StateEvent, Refusal> {
        let object = self.writable(by, &id)?;
        let value = match change {
            Change::Replace(value) => value,
            Change::MergePatch(patch) => patched(&object.value, &patch)?,
        };
        self.check_size(&value)?;
        Ok(StateEvent::Updated { id, value })
    }

    fn decide_delete(&self, by: &ClientId, id: ObjectId) -> Result<StateEvent, Refusal> {
        self.writable(by, &id)?;
        Ok(StateEvent::Deleted { id })
    }

    fn decide_transfer(
        &self,
        by: &ClientId,
        id: ObjectId,
        to: Option<ClientId>,
    ) -> Result<StateEvent, Refusal> {
        if !self.is_authority(by) {
            self.writable(by, &id)?;
        } else if !self.replica.objects.contains_key(&id) {
            return Err(Refusal::UnknownObject);
        }
        if to.as_ref().is_some_and(|c| !self.replica.is_member(c)) {
            return Err(Refusal::NotMember);
        }
        Ok(StateEvent::Transferred { id, owner: to })
    }

    /// The object, if `by` may update or delete it.
    fn writable(&self, by: &ClientId, id: &ObjectId) -> Result<&Object, Refusal> {
        let object = self.replica.objects.get(id).ok_or(Refusal::UnknownObject)?;
        let allowed = match &object.owner {
            Some(owner) => owner == by,
            None => self.replica.mode == Mode::Relay || self.is_authority(by),
        };
        if allowed {
            Ok(object)
        } else {
            Err(Refusal::NotOwner)
        }
    }

    fn is_authority(&self, client: &ClientId) -> bool {
        self.replica.authority.as_ref() == Some(client)
    }

    fn check_size(&self, value: &Payload) -> Result<(), Refusal> {
        if payload_size(value) > self.limits.max_value_bytes {
            Err(Refusal::ObjectTooLarge)
        } else {
            Ok(())
        }
    }

    /// The next authority when `leaving` (the authority) leaves: the present member with the
    /// lowest RTT (unknown counts as highest), ties by join order; else the earliest-joined.
    fn successor(&self, leaving: &ClientId) -> Option<ClientId> {
        let remaining = || {
            self.replica
                .members
                .values()
                .filter(move |m| &m.client != leaving)
        };
        let present = remaining()
            .filter(|m| !m.away)
            .min_by_key(|m| (m.rtt.is_none(), m.rtt, m.order));
        present
            .or_else(|| remaining().min_by_key(|m| m.order))
            .map(|m| m.client.clone())
    }

    /// What becomes of object `id` when its owner leaves (after any authority change).
    fn owner_left(&self, id: ObjectId) -> StateEvent {
        let policy = self.replica.objects.get(&id).map(|o| o.on_owner_leave);
        match policy {
            Some(OwnerLeave::Delete) => StateEvent::Deleted { id },
            _ => StateEvent::Transferred {
                id,
                owner: self.replica.authority.clone(),
            },
        }
    }

    fn commit_authority(&mut self, by: &ClientId, client: Option<ClientId>) -> Event {
        let epoch = self.replica.epoch + 1;
        self.commit(by, StateEvent::AuthorityChanged { client, epoch })
    }

    /// Gives `change` the next `seq`, applies it like a [`View`] would and keeps the index of
    /// owned objects up to date.
    fn commit(&mut self, by: &ClientId, change: StateEvent) -> Event {
        let event = Event {
            seq: self.replica.seq + 1,
            by: by.clone(),
            change,
        };
        let previous_owner = self.previous_owner(&event.change);
        let applied = self.replica.apply(&event);
        debug_assert!(applied.is_ok(), "inconsistent event {event:?}: {applied:?}");
        if applied.is_ok() {
            self.reindex(&event.change, previous_owner);
        }
        event
    }

    fn previous_owner(&self, change: &StateEvent) -> Option<ClientId> {
        match change {
            StateEvent::Deleted { id } | StateEvent::Transferred { id, .. } => {
                self.replica.objects.get(id).and_then(|o| o.owner.clone())
            }
            _ => None,
        }
    }

    fn reindex(&mut self, change: &StateEvent, previous_owner: Option<ClientId>) {
        match change {
            StateEvent::Created {
                id,
                owner: Some(owner),
                ..
            } => self.index_insert(owner, id),
            StateEvent::Deleted { id } => self.index_remove(previous_owner.as_ref(), id),
            StateEvent::Transferred { id, owner } => {
                self.index_remove(previous_owner.as_ref(), id);
                if let Some(owner) = owner {
                    self.index_insert(owner, id);
                }
            }
            _ => {}
        }
    }

    fn index_insert(&mut self, owner: &ClientId, id: &ObjectId) {
        self.owned
            .entry(owner.clone())
            .or_default()
            .insert(id.clone());
    }

    fn index_remove(&mut self, owner: Option<&ClientId>, id: &ObjectId) {
        let Some(owner) = owner else { return };
        if let Some(ids) = self.owned.get_mut(owner) {
            ids.remove(id);
            if ids.is_empty() {
                self.owned.remove(owner);
            }
        }
    }
}

/// The value after applying a merge patch; binary values cannot be patched.
fn patched(value: &Payload, patch: &Value) -> Result<Payload, Refusal> {
    let Payload::Json(json) = value else {
        return Err(Refusal::InvalidPatch);
    };
    let mut json = json.clone();
    merge_patch(&mut json, patch);
    Ok(Payload::Json(json))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn cid(s: &str) -> ClientId {
        ClientId::new(s).unwrap()
    }

    fn oid(s: &str) -> ObjectId {
        ObjectId::new(s).unwrap()
    }

    fn ms(n: u64) -> Option<Duration> {
        Some(Duration::from_millis(n))
    }

    fn json(v: Value) -> Payload {
        Payload::Json(v)
    }

    fn create(id: &str, value: Payload, owned: bool, on_owner_leave: OwnerLeave) -> Op {
        Op::Create {
            id: oid(id),
            value,
            owned,
            on_owner_leave,
        }
    }

    fn replace(id: &str, value: Payload) -> Op {
        Op::Update {
            id: oid(id),
            change: Change::Replace(value),
        }
    }

    fn merge(id: &str, patch: Value) -> Op {
        Op::Update {
            id: oid(id),
            change: Change::MergePatch(patch),
        }
    }

    fn delete(id: &str) -> Op {
        Op::Delete { id: oid(id) }
    }

    fn transfer(id: &str, to: Option<&str>) -> Op {
        Op::Transfer {
            id: oid(id),
            to: to.map(cid),
        }
    }

    impl SessionState {
        /// Checks the hub-only bookkeeping against the replicated state.
        fn assert_invariants(&self) {
            let r = &self.replica;
            let present: BTreeSet<&ClientId> = self.presence.keys().collect();
            let members: BTreeSet<&ClientId> = r.members.keys().collect();
            assert_eq!(present, members, "presence and members differ");
            for (client, p) in &self.presence {
                assert_eq!(p.away_since.is_some(), r.members[client].away, "{client}");
            }
            let mut owned: HashMap<ClientId, BTreeSet<ObjectId>> = HashMap::new();
            for (id, object) in &r.objects {
                if let Some(owner) = &object.owner {
                    assert!(r.is_member(owner), "{id} owned by non-member {owner}");
                    owned.entry(owner.clone()).or_default().insert(id.clone());
                }
                assert!(object.version <= r.seq);
            }
            assert_eq!(owned, self.owned, "owned index out of date");
            match r.mode {
                Mode::Relay => assert_eq!((&r.authority, r.epoch), (&None, 0)),
                Mode::PeerAuthoritative => {
                    assert_eq!(r.authority.is_some(), !r.members.is_empty());
                    if let Some(a) = &r.authority {
                        assert!(r.is_member(a), "authority {a} is not a member");
                    }
                }
            }
            assert!(r.members.len() <= self.limits.max_members);
            assert!(r.objects.len() <= self.limits.max_objects);
            assert!(r.members.values().all(|m| m.order < self.next_order));
        }
    }

    /// A session and the views of its members, with every event routed as the hub would.
    struct Net {
        state: SessionState,
        views: BTreeMap<ClientId, View>,
        /// Every event, in order.
        log: Vec<Event>,
    }

    impl Net {
        fn new(limits: Limits) -> Net {
            Net {
                state: SessionState::new(limits),
                views: BTreeMap::new(),
                log: Vec::new(),
            }
        }

        fn with(mode: Mode, members: &[(&str, Option<Duration>)]) -> Net {
            let mut net = Net::new(Limits::default());
            for (name, rtt) in members {
                net.join(name, *rtt, mode).unwrap();
            }
            net
        }

        fn deliver(&mut self, events: &[Event], skip: Option<&ClientId>) {
            self.log.extend_from_slice(events);
            for (client, view) in &mut self.views {
                if Some(client) == skip {
                    continue;
                }
                for event in events {
                    if let Err(e) = view.apply(event) {
                        panic!("view of {client} refused {event:?}: {e}");
                    }
                }
            }
        }

        fn join(
            &mut self,
            who: &str,
            rtt: Option<Duration>,
            mode: Mode,
        ) -> Result<Joined, Refusal> {
            let client = cid(who);
            let joined = self.state.join(client.clone(), 7, rtt, mode)?;
            self.deliver(&joined.events, Some(&client));
            self.views
                .insert(client, View::from_snapshot(joined.snapshot.clone()));
            Ok(joined)
        }

        fn leave(&mut self, who: &str) -> Result<Left, Refusal> {
            let client = cid(who);
            let left = self.state.leave(&client)?;
            self.views.remove(&client);
            self.deliver(&left.events, None);
            Ok(left)
        }

        fn away(&mut self, who: &str) -> Result<Vec<Event>, Refusal> {
            let events = self.state.away(&cid(who), Instant::now())?;
            self.deliver(&events, None);
            Ok(events)
        }

        fn back(&mut self, who: &str) -> Result<Vec<Event>, Refusal> {
            let events = self.state.back(&cid(who), 8)?;
            self.deliver(&events, None);
            Ok(events)
        }

        fn op(&mut self, who: &str, op: Op) -> Result<Event, Refusal> {
            let event = self.state.apply(&cid(who), op)?;
            self.deliver(std::slice::from_ref(&event), None);
            Ok(event)
        }

        /// Like [`Net::op`], and asserts that a refusal changed nothing.
        fn refused(&mut self, who: &str, op: Op) -> Refusal {
            let before = (self.state.digest(), self.state.owned.clone());
            let refusal = self.op(who, op).expect_err("the op should be refused");
            assert_eq!(before, (self.state.digest(), self.state.owned.clone()));
            refusal
        }

        fn assert_in_sync(&self) {
            self.state.assert_invariants();
            for (client, view) in &self.views {
                assert!(self.state.view_eq(view), "view of {client} differs");
                assert_eq!(self.state.digest(), view.digest(), "digest of {client}");
            }
            for (i, event) in self.log.iter().enumerate() {
                assert_eq!(event.seq, i as u64 + 1, "seqs are contiguous");
            }
        }

        fn authority(&self) -> Option<&str> {
            self.state.authority().map(ClientId::as_str)
        }

        fn owner(&self, id: &str) -> Option<&str> {
            let object = self.state.object(id).expect("object exists");
            object.owner.as_ref().map(ClientId::as_str)
        }
    }

    fn changes(events: &[Event]) -> Vec<StateEvent> {
        events.iter().map(|e| e.change.clone()).collect()
    }

    #[test]
    fn limits_defaults() {
        let limits = Limits::default();
        assert_eq!(limits.max_members, 1024);
        assert_eq!(limits.max_objects, 1_000_000);
        assert_eq!(limits.max_value_bytes, 262_144);
    }

    #[test]
    fn refusal_codes_are_stable_snake_case_with_sentences() {
        let codes: Vec<&str> = Refusal::ALL.iter().map(Refusal::code_name).collect();
        assert_eq!(
            codes,
            [
                "not_owner",
                "unknown_object",
                "object_exists",
                "too_many_objects",
                "object_too_large",
                "not_member",
                "invalid_patch",
                "invalid_object_id",
                "too_many_members",
            ]
        );
        for refusal in Refusal::ALL {
            assert!(refusal.message().len() > 20);
            assert_eq!(refusal.to_string(), refusal.message());
        }
    }

    #[test]
    fn object_id_validation() {
        assert!(ObjectId::new("player/1 position").is_ok());
        assert!(ObjectId::new("é").is_ok());
        assert!(ObjectId::new(&"a".repeat(128)).is_ok());
        assert_eq!(ObjectId::new(""), Err(Refusal::InvalidObjectId));
        assert_eq!(
            ObjectId::new(&"a".repeat(129)),
            Err(Refusal::InvalidObjectId)
        );
        assert_eq!(ObjectId::new("a\nb"), Err(Refusal::InvalidObjectId));
        assert_eq!(oid("x").as_str(), "x");
    }

    #[test]
    fn first_joiner_is_authority_at_epoch_one_and_snapshot_follows_its_events() {
        let mut net = Net::new(Limits::default());
        assert_eq!((net.state.seq(), net.state.epoch()), (0, 0));
        let joined = net.join("alice", ms(5), Mode::PeerAuthoritative).unwrap();
        assert_eq!(
            changes(&joined.events),
            [
                StateEvent::MemberJoined {
                    client: cid("alice"),
                    order: 1,
                    rtt: ms(5)
                },
                StateEvent::AuthorityChanged {
                    client: Some(cid("alice")),
                    epoch: 1
                },
            ]
        );
        let snap = &joined.snapshot;
        assert_eq!(snap.seq, 2);
        assert_eq!(snap.authority, Some(cid("alice")));
        assert_eq!(snap.epoch, 1);
        assert_eq!(snap.mode, Mode::PeerAuthoritative);
        assert_eq!(snap.members.len(), 1);
        let joined = net.join("bob", None, Mode::Relay).unwrap();
        assert_eq!(joined.snapshot.seq, 3);
        assert_eq!(
            joined.snapshot.mode,
            Mode::PeerAuthoritative,
            "mode is fixed"
        );
        assert_eq!(joined.events.len(), 1);
        let orders: Vec<u64> = joined.snapshot.members.iter().map(|m| m.order).collect();
        assert_eq!(orders, [1, 2]);
        assert_eq!(net.authority(), Some("alice"));
        net.assert_in_sync();
    }

    #[test]
    fn relay_session_has_no_authority() {
        let mut net = Net::with(Mode::Relay, &[("alice", ms(1)), ("bob", ms(2))]);
        assert_eq!(net.state.mode(), Mode::Relay);
        assert_eq!((net.authority(), net.state.epoch()), (None, 0));
        net.leave("alice").unwrap();
        assert_eq!((net.authority(), net.state.epoch()), (None, 0));
        assert_eq!(net.state.seq(), 3);
        net.assert_in_sync();
    }

    #[test]
    fn joining_twice_is_idempotent_and_brings_an_away_member_back() {
        let mut net = Net::with(Mode::PeerAuthoritative, &[("alice", ms(1)), ("bob", ms(2))]);
        let seq = net.state.seq();
        let again = net.join("bob", ms(99), Mode::Relay).unwrap();
        assert!(again.events.is_empty());
        assert_eq!(again.snapshot, net.state.snapshot());
        assert_eq!(net.state.seq(), seq);
        assert_eq!(
            net.state.member(&cid("bob")).unwrap().rtt,
            ms(2),
            "RTT is kept"
        );
        net.away("bob").unwrap();
        let again = net.join("bob", None, Mode::PeerAuthoritative).unwrap();
        assert_eq!(
            changes(&again.events),
            [StateEvent::MemberBack { client: cid("bob") }]
        );
        assert!(!net.state.member(&cid("bob")).unwrap().away);
        assert_eq!(net.state.conn_of(&cid("bob")), Some(7));
        net.assert_in_sync();
    }

    #[test]
    fn too_many_members_is_refused() {
        let limits = Limits {
            max_members: 2,
            ..Limits::default()
        };
        let mut net = Net::new(limits);
        net.join("a", None, Mode::PeerAuthoritative).unwrap();
        net.join("b", None, Mode::PeerAuthoritative).unwrap();
        let digest = net.state.digest();
        let refusal = net.join("c", None, Mode::PeerAuthoritative).unwrap_err();
        assert_eq!(refusal, Refusal::TooManyMembers);
        assert_eq!(net.state.digest(), digest);
        assert!(
            net.join("b", None, Mode::PeerAuthoritative).is_ok(),
            "rejoin"
        );
        net.leave("a").unwrap();
        assert!(net.join("c", None, Mode::PeerAuthoritative).is_ok());
        net.assert_in_sync();
    }

    #[test]
    fn membership_requests_of_non_members_are_refused() {
        let mut net = Net::with(Mode::PeerAuthoritative, &[("alice", None)]);
        let digest = net.state.digest();
        assert_eq!(net.leave("zed").unwrap_err(), Refusal::NotMember);
        assert_eq!(net.away("zed").unwrap_err(), Refusal::NotMember);
        assert_eq!(net.back("zed").unwrap_err(), Refusal::NotMember);
        let op = create("o", Payload::NULL, false, OwnerLeave::Delete);
        assert_eq!(net.refused("zed", op), Refusal::NotMember);
        assert_eq!(net.state.digest(), digest);
    }

    #[test]
    fn authority_leaving_elects_present_member_with_lowest_rtt() {
        let members = [("a", ms(1)), ("b", ms(30)), ("c", ms(10)), ("d", None)];
        let mut net = Net::with(Mode::PeerAuthoritative, &members);
        let left = net.leave("a").unwrap();
        assert!(!left.closed);
        assert_eq!(
            changes(&left.events),
            [
                StateEvent::AuthorityChanged {
                    client: Some(cid("c")),
                    epoch: 2
                },
                StateEvent::MemberLeft { client: cid("a") },
            ]
        );
        assert!(left.events.iter().all(|e| e.by == cid("a")));
        assert_eq!(net.authority(), Some("c"));
        net.leave("c").unwrap();
        assert_eq!((net.authority(), net.state.epoch()), (Some("b"), 3));
        net.leave("b").unwrap();
        assert_eq!(
            (net.authority(), net.state.epoch()),
            (Some("d"), 4),
            "an unknown RTT ranks after every known one"
        );
        net.assert_in_sync();
    }

    #[test]
    fn election_ties_are_broken_by_join_order() {
        let members = [
            ("a", ms(1)),
            ("z", ms(10)),
            ("b", ms(10)),
            ("y", None),
            ("x", None),
        ];
        let mut net = Net::with(Mode::PeerAuthoritative, &members);
        net.leave("a").unwrap();
        assert_eq!(net.authority(), Some("z"), "z joined before b");
        net.leave("z").unwrap();
        net.leave("b").unwrap();
        assert_eq!(net.authority(), Some("y"), "y joined before x");
        net.assert_in_sync();
    }

    #[test]
    fn election_skips_away_members_unless_all_are_away() {
        let members = [("a", ms(50)), ("b", ms(1)), ("c", ms(40)), ("d", ms(2))];
        let mut net = Net::with(Mode::PeerAuthoritative, &members);
        net.away("b").unwrap();
        net.leave("a").unwrap();
        assert_eq!(net.authority(), Some("d"), "b is away");
        net.away("c").unwrap();
        net.leave("d").unwrap();
        assert_eq!(net.authority(), Some("b"), "all away: the earliest-joined");
        assert_eq!(net.state.epoch(), 3);
        net.assert_in_sync();
    }

    #[test]
    fn away_authority_stays_authority() {
        let mut net = Net::with(Mode::PeerAuthoritative, &[("a", ms(50)), ("b", ms(1))]);
        let events = net.away("a").unwrap();
        assert_eq!(
            changes(&events),
            [StateEvent::MemberAway { client: cid("a") }]
        );
        assert!(net.away("a").unwrap().is_empty(), "away twice: no event");
        assert_eq!((net.authority(), net.state.epoch()), (Some("a"), 1));
        assert!(net.state.member(&cid("a")).unwrap().away);
        let events = net.back("a").unwrap();
        assert_eq!(
            changes(&events),
            [StateEvent::MemberBack { client: cid("a") }]
        );
        assert!(net.back("a").unwrap().is_empty(), "back twice: no event");
        assert_eq!(net.state.conn_of(&cid("a")), Some(8));
        assert_eq!((net.authority(), net.state.epoch()), (Some("a"), 1));
        net.assert_in_sync();
    }

    #[test]
    fn other_members_leaving_keep_authority_and_epoch() {
        let mut net = Net::with(Mode::PeerAuthoritative, &[("a", ms(50)), ("b", ms(1))]);
        let left = net.leave("b").unwrap();
        assert_eq!(
            changes(&left.events),
            [StateEvent::MemberLeft { client: cid("b") }]
        );
        assert_eq!((net.authority(), net.state.epoch()), (Some("a"), 1));
        net.assert_in_sync();
    }

    #[test]
    fn last_member_leaving_closes_the_session() {
        let mut net = Net::with(Mode::PeerAuthoritative, &[("a", None)]);
        let keep = create("keep", json(json!(1)), true, OwnerLeave::ToAuthority);
        net.op("a", keep).unwrap();
        let gone = create("gone", json(json!(2)), true, OwnerLeave::Delete);
        net.op("a", gone).unwrap();
        let left = net.leave("a").unwrap();
        assert!(left.closed);
        assert_eq!(
            changes(&left.events),
            [
                StateEvent::AuthorityChanged {
                    client: None,
                    epoch: 2
                },
                StateEvent::Deleted { id: oid("gone") },
                StateEvent::Transferred {
                    id: oid("keep"),
                    owner: None
                },
                StateEvent::MemberLeft { client: cid("a") },
            ]
        );
        assert_eq!(net.state.member_count(), 0);
        net.assert_in_sync();
        // A caller that keeps the session: the next joiner becomes authority.
        let joined = net.join("b", None, Mode::Relay).unwrap();
        assert_eq!(joined.snapshot.mode, Mode::PeerAuthoritative);
        assert_eq!((net.authority(), net.state.epoch()), (Some("b"), 3));
        assert_eq!(net.owner("keep"), None);
        net.assert_in_sync();
    }

    #[test]
    fn create_sets_owner_version_and_refuses_what_it_must() {
        let limits = Limits {
            max_objects: 2,
            max_value_bytes: 10,
            ..Limits::default()
        };
        let mut net = Net::new(limits);
        net.join("a", None, Mode::PeerAuthoritative).unwrap();
        net.join("b", None, Mode::PeerAuthoritative).unwrap();
        let event = net
            .op(
                "b",
                create("mine", json(json!("12345678")), true, OwnerLeave::Delete),
            )
            .unwrap();
        assert_eq!(event.by, cid("b"));
        assert_eq!(
            event.change,
            StateEvent::Created {
                id: oid("mine"),
                value: json(json!("12345678")),
                owner: Some(cid("b")),
                on_owner_leave: OwnerLeave::Delete
            }
        );
        let object = net.state.object("mine").unwrap();
        assert_eq!(
            (object.version, object.owner.clone()),
            (event.seq, Some(cid("b")))
        );
        let dup = create("mine", Payload::NULL, false, OwnerLeave::Delete);
        assert_eq!(net.refused("a", dup), Refusal::ObjectExists);
        let big = create("big", json(json!("123456789")), false, OwnerLeave::Delete);
        assert_eq!(net.refused("a", big), Refusal::ObjectTooLarge);
        let bin = create(
            "bin",
            Payload::from(vec![0u8; 11]),
            false,
            OwnerLeave::Delete,
        );
        assert_eq!(net.refused("a", bin), Refusal::ObjectTooLarge);
        let bin = create(
            "bin",
            Payload::from(vec![0u8; 10]),
            false,
            OwnerLeave::Delete,
        );
        net.op("a", bin).unwrap();
        assert_eq!(net.owner("bin"), None);
        let third = create("third", Payload::NULL, false, OwnerLeave::Delete);
        assert_eq!(net.refused("a", third), Refusal::TooManyObjects);
        net.assert_in_sync();
    }

    #[test]
    fn update_and_delete_follow_ownership_in_peer_authoritative_mode() {
        let mut net = Net::with(
            Mode::PeerAuthoritative,
            &[("auth", None), ("b", None), ("c", None)],
        );
        net.op(
            "b",
            create("owned", json(json!(0)), true, OwnerLeave::Delete),
        )
        .unwrap();
        net.op(
            "b",
            create("free", json(json!(0)), false, OwnerLeave::Delete),
        )
        .unwrap();
        net.op("b", replace("owned", json(json!(1)))).unwrap();
        assert_eq!(
            net.refused("c", replace("owned", json(json!(2)))),
            Refusal::NotOwner
        );
        assert_eq!(
            net.refused("auth", replace("owned", json(json!(2)))),
            Refusal::NotOwner
        );
        assert_eq!(net.refused("auth", delete("owned")), Refusal::NotOwner);
        assert_eq!(
            net.refused("b", replace("free", json(json!(2)))),
            Refusal::NotOwner
        );
        assert_eq!(net.refused("b", delete("free")), Refusal::NotOwner);
        let event = net.op("auth", replace("free", json(json!(3)))).unwrap();
        assert_eq!(
            event.change,
            StateEvent::Updated {
                id: oid("free"),
                value: json(json!(3))
            }
        );
        assert_eq!(net.state.object("free").unwrap().version, event.seq);
        assert_eq!(
            net.refused("b", replace("nope", Payload::NULL)),
            Refusal::UnknownObject
        );
        assert_eq!(net.refused("b", delete("nope")), Refusal::UnknownObject);
        let event = net.op("b", delete("owned")).unwrap();
        assert_eq!(event.change, StateEvent::Deleted { id: oid("owned") });
        net.op("auth", delete("free")).unwrap();
        assert_eq!(net.state.object_count(), 0);
        net.assert_in_sync();
    }

    #[test]
    fn relay_mode_lets_anyone_change_objects_without_owner() {
        let mut net = Net::with(Mode::Relay, &[("a", None), ("b", None)]);
        net.op(
            "a",
            create("free", json(json!(0)), false, OwnerLeave::Delete),
        )
        .unwrap();
        net.op(
            "a",
            create("mine", json(json!(0)), true, OwnerLeave::Delete),
        )
        .unwrap();
        net.op("b", replace("free", json(json!(1)))).unwrap();
        net.op("b", transfer("free", Some("b"))).unwrap();
        assert_eq!(
            net.refused("a", replace("free", json(json!(2)))),
            Refusal::NotOwner
        );
        assert_eq!(
            net.refused("b", replace("mine", json(json!(2)))),
            Refusal::NotOwner
        );
        assert_eq!(net.refused("b", transfer("mine", None)), Refusal::NotOwner);
        net.op("b", transfer("free", None)).unwrap();
        net.op("a", delete("free")).unwrap();
        net.assert_in_sync();
    }

    #[test]
    fn merge_patch_update_broadcasts_the_whole_value() {
        let mut net = Net::with(Mode::PeerAuthoritative, &[("a", None)]);
        let value = json(json!({"a": 1, "b": {"c": 2}, "e": [1]}));
        net.op("a", create("o", value, true, OwnerLeave::Delete))
            .unwrap();
        let event = net
            .op(
                "a",
                merge("o", json!({"b": {"c": null}, "d": 3, "e": null})),
            )
            .unwrap();
        let want = json(json!({"a": 1, "b": {}, "d": 3}));
        assert_eq!(
            event.change,
            StateEvent::Updated {
                id: oid("o"),
                value: want.clone()
            }
        );
        assert_eq!(net.state.object("o").unwrap().value, want);
        net.op("a", merge("o", json!([1, 2]))).unwrap();
        assert_eq!(net.state.object("o").unwrap().value, json(json!([1, 2])));
        net.assert_in_sync();
    }

    #[test]
    fn merge_patch_refusals() {
        let limits = Limits {
            max_value_bytes: 16,
            ..Limits::default()
        };
        let mut net = Net::new(limits);
        net.join("a", None, Mode::PeerAuthoritative).unwrap();
        net.join("b", None, Mode::PeerAuthoritative).unwrap();
        net.op(
            "a",
            create("bin", Payload::from(vec![1, 2]), true, OwnerLeave::Delete),
        )
        .unwrap();
        net.op(
            "a",
            create("j", json(json!({"k": 1})), true, OwnerLeave::Delete),
        )
        .unwrap();
        assert_eq!(
            net.refused("a", merge("bin", json!({"x": 1}))),
            Refusal::InvalidPatch
        );
        let grow = merge("j", json!({"long": "0123456789"}));
        assert_eq!(net.refused("a", grow), Refusal::ObjectTooLarge);
        let big = replace("j", json(json!("0123456789abcdefg")));
        assert_eq!(net.refused("a", big), Refusal::ObjectTooLarge);
        assert_eq!(
            net.refused("b", merge("j", json!({"x": 1}))),
            Refusal::NotOwner
        );
        assert_eq!(
            net.refused("b", merge("bin", json!({"x": 1}))),
            Refusal::NotOwner
        );
        assert_eq!(
            net.refused("a", merge("zzz", json!({}))),
            Refusal::UnknownObject
        );
        net.op("a", replace("bin", json(json!({"now": "json"}))))
            .unwrap();
        net.op("a", merge("bin", json!({"now": null}))).unwrap();
        assert_eq!(net.state.object("bin").unwrap().value, json(json!({})));
        net.assert_in_sync();
    }

    #[test]
    fn transfer_rules() {
        let mut net = Net::with(
            Mode::PeerAuthoritative,
            &[("auth", None), ("b", None), ("c", None)],
        );
        net.op("b", create("o", json(json!(0)), true, OwnerLeave::Delete))
            .unwrap();
        net.op(
            "c",
            create("free", json(json!(0)), false, OwnerLeave::Delete),
        )
        .unwrap();
        assert_eq!(
            net.refused("c", transfer("o", Some("c"))),
            Refusal::NotOwner
        );
        assert_eq!(
            net.refused("c", transfer("free", Some("c"))),
            Refusal::NotOwner
        );
        assert_eq!(
            net.refused("b", transfer("o", Some("zed"))),
            Refusal::NotMember
        );
        assert_eq!(
            net.refused("b", transfer("nope", None)),
            Refusal::UnknownObject
        );
        assert_eq!(
            net.refused("auth", transfer("nope", None)),
            Refusal::UnknownObject
        );
        let event = net.op("b", transfer("o", Some("c"))).unwrap();
        assert_eq!(
            event.change,
            StateEvent::Transferred {
                id: oid("o"),
                owner: Some(cid("c"))
            }
        );
        assert_eq!(net.state.object("o").unwrap().version, event.seq);
        net.op("auth", transfer("o", Some("b"))).unwrap();
        assert_eq!(
            net.owner("o"),
            Some("b"),
            "the authority reassigns any object"
        );
        net.op("b", transfer("o", None)).unwrap();
        assert_eq!(net.owner("o"), None);
        net.op("auth", transfer("free", Some("c"))).unwrap();
        assert_eq!(net.owner("free"), Some("c"));
        net.away("b").unwrap();
        net.op("c", transfer("free", Some("b"))).unwrap();
        assert_eq!(net.owner("free"), Some("b"), "an away member is a member");
        net.assert_in_sync();
    }

    #[test]
    fn owner_leaving_applies_each_objects_policy() {
        let mut net = Net::with(Mode::PeerAuthoritative, &[("auth", None), ("b", None)]);
        net.op(
            "b",
            create("x-keep", json(json!(1)), true, OwnerLeave::ToAuthority),
        )
        .unwrap();
        net.op(
            "b",
            create("a-drop", json(json!(2)), true, OwnerLeave::Delete),
        )
        .unwrap();
        net.op(
            "auth",
            create("other", json(json!(3)), true, OwnerLeave::Delete),
        )
        .unwrap();
        let left = net.leave("b").unwrap();
        assert_eq!(
            changes(&left.events),
            [
                StateEvent::Deleted { id: oid("a-drop") },
                StateEvent::Transferred {
                    id: oid("x-keep"),
                    owner: Some(cid("auth"))
                },
                StateEvent::MemberLeft { client: cid("b") },
            ]
        );
        assert!(left.events.iter().all(|e| e.by == cid("b")));
        assert_eq!(net.owner("x-keep"), Some("auth"));
        assert_eq!(net.owner("other"), Some("auth"));
        assert!(net.state.object("a-drop").is_none());
        net.assert_in_sync();
    }

    #[test]
    fn authority_leaving_hands_its_objects_to_the_new_authority() {
        let mut net = Net::with(
            Mode::PeerAuthoritative,
            &[("a", ms(1)), ("b", ms(9)), ("c", ms(3))],
        );
        net.op(
            "a",
            create("o", json(json!(1)), true, OwnerLeave::ToAuthority),
        )
        .unwrap();
        let left = net.leave("a").unwrap();
        assert_eq!(
            changes(&left.events),
            [
                StateEvent::AuthorityChanged {
                    client: Some(cid("c")),
                    epoch: 2
                },
                StateEvent::Transferred {
                    id: oid("o"),
                    owner: Some(cid("c"))
                },
                StateEvent::MemberLeft { client: cid("a") },
            ]
        );
        net.op("c", replace("o", json(json!(2)))).unwrap();
        net.assert_in_sync();
    }

    #[test]
    fn relay_owner_leaving_leaves_objects_without_owner() {
        let mut net = Net::with(Mode::Relay, &[("a", None), ("b", None)]);
        net.op(
            "b",
            create("o", json(json!(1)), true, OwnerLeave::ToAuthority),
        )
        .unwrap();
        let left = net.leave("b").unwrap();
        assert_eq!(
            changes(&left.events)[0],
            StateEvent::Transferred {
                id: oid("o"),
                owner: None
            }
        );
        net.op("a", replace("o", json(json!(2)))).unwrap();
        net.assert_in_sync();
    }

    #[test]
    fn expired_away_members_are_reported() {
        let mut net = Net::with(
            Mode::PeerAuthoritative,
            &[("a", None), ("b", None), ("c", None)],
        );
        let t0 = Instant::now();
        let window = Duration::from_secs(30);
        net.state.away(&cid("c"), t0).unwrap();
        net.state
            .away(&cid("b"), t0 + Duration::from_secs(10))
            .unwrap();
        assert!(net
            .state
            .expired_away(t0 + Duration::from_secs(29), window)
            .is_empty());
        assert_eq!(net.state.expired_away(t0 + window, window), [cid("c")]);
        let later = t0 + Duration::from_secs(60);
        assert_eq!(net.state.expired_away(later, window), [cid("b"), cid("c")]);
        net.state.back(&cid("b"), 3).unwrap();
        assert_eq!(net.state.expired_away(later, window), [cid("c")]);
    }

    #[test]
    fn view_refuses_gaps_duplicates_and_contradictions() {
        let mut net = Net::with(Mode::PeerAuthoritative, &[("a", None)]);
        let mut view = View::from_snapshot(net.state.snapshot());
        let e1 = net
            .op("a", create("o", json(json!(1)), true, OwnerLeave::Delete))
            .unwrap();
        let e2 = net.op("a", replace("o", json(json!(2)))).unwrap();
        let e3 = net.op("a", delete("o")).unwrap();
        assert_eq!(
            view.apply(&e2),
            Err(ViewError::Gap {
                expected: e1.seq,
                got: e2.seq
            })
        );
        view.apply(&e1).unwrap();
        let before = view.clone();
        assert_eq!(
            view.apply(&e1),
            Err(ViewError::Duplicate {
                last: e1.seq,
                got: e1.seq
            })
        );
        let contradiction = Event {
            seq: e2.seq,
            by: cid("a"),
            change: StateEvent::MemberJoined {
                client: cid("a"),
                order: 9,
                rtt: None,
            },
        };
        assert!(matches!(
            view.apply(&contradiction),
            Err(ViewError::Inconsistent { .. })
        ));
        let bad_epoch = Event {
            seq: e2.seq,
            by: cid("a"),
            change: StateEvent::AuthorityChanged {
                client: Some(cid("a")),
                epoch: 5,
            },
        };
        assert!(matches!(
            view.apply(&bad_epoch),
            Err(ViewError::Inconsistent { .. })
        ));
        assert_eq!(view, before, "refused events change nothing");
        assert!(view.apply(&e1).unwrap_err().to_string().contains("again"));
        view.apply(&e2).unwrap();
        view.apply(&e3).unwrap();
        assert!(net.state.view_eq(&view));
        assert_eq!(view.seq(), net.state.seq());
        assert_eq!(view.authority(), Some(&cid("a")));
        assert_eq!((view.epoch(), view.mode()), (1, Mode::PeerAuthoritative));
        assert!(view.member(&cid("a")).is_some());
        assert_eq!((view.members().count(), view.objects().count()), (1, 0));
        assert!(view.object("o").is_none());
    }

    #[test]
    fn digest_sees_every_difference_and_ignores_json_key_order() {
        let a = Net::with(Mode::PeerAuthoritative, &[("a", None)]);
        let mut b = Net::with(Mode::PeerAuthoritative, &[("a", None)]);
        assert_eq!(a.state.digest(), b.state.digest());
        b.away("a").unwrap();
        assert_ne!(a.state.digest(), b.state.digest());
        let mut h1 = DefaultHasher::new();
        let mut h2 = DefaultHasher::new();
        let mut m1 = serde_json::Map::new();
        m1.insert("x".into(), json!(1));
        m1.insert("y".into(), json!(2));
        let mut m2 = serde_json::Map::new();
        m2.insert("y".into(), json!(2));
        m2.insert("x".into(), json!(1));
        hash_json(&Value::Object(m1), &mut h1);
        hash_json(&Value::Object(m2), &mut h2);
        assert_eq!(h1.finish(), h2.finish());
    }

    #[test]
    fn payload_sizes() {
        assert_eq!(payload_size(&Payload::NULL), 4);
        assert_eq!(payload_size(&json(json!({"a": [1, "b"]}))), 13);
        assert_eq!(payload_size(&Payload::from(vec![0u8; 5])), 5);
        let object = Object {
            value: Payload::from(vec![0u8; 5]),
            owner: None,
            on_owner_leave: OwnerLeave::Delete,
            version: 1,
        };
        assert_eq!(approx_entry_bytes(&oid("abc"), &object), 3 + 8 + 64);
    }

    #[test]
    fn snapshot_chunks_are_bounded_ordered_and_complete() {
        let mut net = Net::with(Mode::PeerAuthoritative, &[("a", None)]);
        assert_eq!(net.state.snapshot().chunks(100).count(), 0);
        for i in 0..50 {
            let value = json(json!("x".repeat(i * 3)));
            net.op(
                "a",
                create(&format!("o{i:02}"), value, false, OwnerLeave::Delete),
            )
            .unwrap();
        }
        let huge = json(json!("y".repeat(1000)));
        net.op("a", create("zz-huge", huge, false, OwnerLeave::Delete))
            .unwrap();
        let snapshot = net.state.snapshot();
        let max = 400;
        let chunks: Vec<_> = snapshot.chunks(max).collect();
        let mut all = Vec::new();
        for chunk in &chunks {
            assert!(!chunk.is_empty());
            let size: usize = chunk.iter().map(|(id, o)| approx_entry_bytes(id, o)).sum();
            assert!(size <= max || chunk.len() == 1, "chunk of {size} bytes");
            all.extend_from_slice(chunk);
        }
        assert_eq!(all, snapshot.objects);
        assert_eq!(chunks.last().unwrap()[0].0, oid("zz-huge"));
        assert!(snapshot.objects.windows(2).all(|w| w[0].0 < w[1].0));
    }

    /// 100,000 objects: the snapshot and its chunks take well under a second, even in debug.
    #[test]
    fn snapshot_of_100k_objects_is_fast() {
        let mut state = SessionState::new(Limits::default());
        let a = cid("a");
        state
            .join(a.clone(), 1, None, Mode::PeerAuthoritative)
            .unwrap();
        for i in 0..100_000u32 {
            let value = json(json!({"n": i, "name": "object"}));
            let op = create(
                &format!("obj-{i:06}"),
                value,
                i % 2 == 0,
                OwnerLeave::Delete,
            );
            state.apply(&a, op).unwrap();
        }
        let start = Instant::now();
        let snapshot = state.snapshot();
        let mut chunks = 0;
        let mut objects = 0;
        for chunk in snapshot.chunks(64 * 1024) {
            chunks += 1;
            objects += chunk.len();
        }
        let elapsed = start.elapsed();
        assert_eq!(objects, 100_000);
        assert!(chunks > 100, "{chunks} chunks");
        eprintln!("snapshot + {chunks} chunks of 100,000 objects: {elapsed:?}");
        assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
        let start = Instant::now();
        let left = state.leave(&a).unwrap();
        assert_eq!(left.events.len(), 50_000 + 2);
        assert!(start.elapsed() < Duration::from_secs(2));
    }

    // ---- the state-machine property test ----

    const CLIENTS: usize = 12;
    const OBJECTS: usize = 40;

    /// Chooses a client or an object: an existing one (when there is one) if `existing`,
    /// else any of the pool (12 clients, 40 object ids).
    #[derive(Debug, Clone, Copy)]
    struct Pick {
        existing: bool,
        index: usize,
    }

    #[derive(Debug, Clone)]
    enum TestOp {
        Create(Payload, bool, OwnerLeave),
        Replace(Payload),
        Merge(Value),
        Delete,
        Transfer(Option<Pick>),
    }

    #[derive(Debug, Clone)]
    enum Step {
        Join(Pick, Option<u64>, Mode),
        Leave(Pick),
        Away(Pick),
        Back(Pick),
        Op(Pick, Pick, TestOp),
    }

    /// A step with its clients and object chosen in the session's current state.
    #[derive(Debug, Clone)]
    enum Action {
        Join(ClientId, Option<Duration>, Mode),
        Leave(ClientId),
        Away(ClientId),
        Back(ClientId),
        Op(ClientId, Op),
    }

    fn pick_client(state: &SessionState, pick: Pick) -> ClientId {
        let count = state.member_count();
        if pick.existing && count > 0 {
            let member = state.members().nth(pick.index % count);
            return member.unwrap().client.clone();
        }
        cid(&format!("c{}", pick.index % CLIENTS))
    }

    fn pick_object(state: &SessionState, pick: Pick) -> ObjectId {
        let count = state.object_count();
        if pick.existing && count > 0 {
            return state
                .replica
                .objects
                .keys()
                .nth(pick.index % count)
                .unwrap()
                .clone();
        }
        oid(&format!("o{}", pick.index % OBJECTS))
    }

    fn resolve(state: &SessionState, step: &Step) -> Action {
        match step.clone() {
            Step::Join(c, rtt, mode) => {
                Action::Join(pick_client(state, c), rtt.map(Duration::from_millis), mode)
            }
            Step::Leave(c) => Action::Leave(pick_client(state, c)),
            Step::Away(c) => Action::Away(pick_client(state, c)),
            Step::Back(c) => Action::Back(pick_client(state, c)),
            Step::Op(c, o, op) => {
                let id = pick_object(state, o);
                let op = match op {
                    TestOp::Create(value, owned, on_owner_leave) => Op::Create {
                        id,
                        value,
                        owned,
                        on_owner_leave,
                    },
                    TestOp::Replace(value) => Op::Update {
                        id,
                        change: Change::Replace(value),
                    },
                    TestOp::Merge(patch) => Op::Update {
                        id,
                        change: Change::MergePatch(patch),
                    },
                    TestOp::Delete => Op::Delete { id },
                    TestOp::Transfer(to) => Op::Transfer {
                        id,
                        to: to.map(|p| pick_client(state, p)),
                    },
                };
                Action::Op(pick_client(state, c), op)
            }
        }
    }

    fn op_object(op: &Op) -> &ObjectId {
        match op {
            Op::Create { id, .. }
            | Op::Update { id, .. }
            | Op::Delete { id }
            | Op::Transfer { id, .. } => id,
        }
    }

    fn arb_pick(existing: f64) -> impl Strategy<Value = Pick> {
        (prop::bool::weighted(existing), 0..1000usize)
            .prop_map(|(existing, index)| Pick { existing, index })
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            (0i64..50).prop_map(Value::from),
            "[a-z]{0,6}".prop_map(Value::from),
        ];
        leaf.prop_recursive(2, 8, 3, |inner| {
            prop::collection::btree_map("[a-c]", inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect()))
        })
    }

    fn arb_payload() -> impl Strategy<Value = Payload> {
        prop_oneof![
            4 => arb_json().prop_map(Payload::Json),
            1 => prop::collection::vec(any::<u8>(), 0..6).prop_map(Payload::from),
            1 => "[a-z]{40,50}".prop_map(|s| Payload::Json(Value::from(s))),
        ]
    }

    fn arb_op() -> impl Strategy<Value = (Pick, TestOp)> {
        let policy = prop_oneof![Just(OwnerLeave::ToAuthority), Just(OwnerLeave::Delete)];
        prop_oneof![
            3 => (arb_pick(0.15), arb_payload(), any::<bool>(), policy)
                .prop_map(|(o, v, owned, p)| (o, TestOp::Create(v, owned, p))),
            3 => (arb_pick(0.85), arb_payload()).prop_map(|(o, v)| (o, TestOp::Replace(v))),
            3 => (arb_pick(0.85), arb_json()).prop_map(|(o, p)| (o, TestOp::Merge(p))),
            1 => arb_pick(0.85).prop_map(|o| (o, TestOp::Delete)),
            2 => (arb_pick(0.85), prop::option::weighted(0.85, arb_pick(0.85)))
                .prop_map(|(o, to)| (o, TestOp::Transfer(to))),
        ]
    }

    fn arb_step() -> impl Strategy<Value = Step> {
        let mode = prop_oneof![4 => Just(Mode::PeerAuthoritative), 1 => Just(Mode::Relay)];
        prop_oneof![
            3 => (arb_pick(0.2), prop::option::weighted(0.8, 0u64..4), mode)
                .prop_map(|(c, rtt, m)| Step::Join(c, rtt, m)),
            1 => arb_pick(0.85).prop_map(Step::Leave),
            1 => arb_pick(0.8).prop_map(Step::Away),
            1 => arb_pick(0.8).prop_map(Step::Back),
            10 => (arb_pick(0.9), arb_op()).prop_map(|(c, (o, op))| Step::Op(c, o, op)),
        ]
    }

    /// The authority expected after `leaving` (the authority) leaves, computed by sorting.
    fn expected_successor(state: &SessionState, leaving: &ClientId) -> Option<ClientId> {
        let mut candidates: Vec<&MemberInfo> =
            state.members().filter(|m| &m.client != leaving).collect();
        candidates.sort_by_key(|m| {
            let rtt = if m.away { None } else { m.rtt };
            let unknown = !m.away && m.rtt.is_none();
            (m.away, unknown, rtt, m.order)
        });
        candidates.first().map(|m| m.client.clone())
    }

    /// The refusal an update or delete must get from the permission rule, if any.
    fn update_refusal(state: &SessionState, who: &ClientId, id: &str) -> Option<Refusal> {
        if !state.is_member(who) {
            return Some(Refusal::NotMember);
        }
        let object = state.object(id)?;
        let allowed = match &object.owner {
            Some(owner) => owner == who,
            None => state.mode() == Mode::Relay || state.authority() == Some(who),
        };
        (!allowed).then_some(Refusal::NotOwner)
    }

    /// Runs one action; returns the events it produced, or its refusal.
    fn run(net: &mut Net, action: &Action) -> Result<Vec<Event>, Refusal> {
        match action {
            Action::Join(c, rtt, mode) => {
                let joined = net.join(c.as_str(), *rtt, *mode)?;
                assert_eq!(joined.snapshot.seq, net.state.seq());
                Ok(joined.events)
            }
            Action::Leave(c) => {
                let left = net.leave(c.as_str())?;
                assert_eq!(left.closed, net.state.member_count() == 0);
                Ok(left.events)
            }
            Action::Away(c) => net.away(c.as_str()),
            Action::Back(c) => net.back(c.as_str()),
            Action::Op(c, op) => net.op(c.as_str(), op.clone()).map(|e| vec![e]),
        }
    }

    /// The authority the rules expect after `action`, given the state `before` it.
    fn expected_authority(
        before: &SessionState,
        after: &SessionState,
        action: &Action,
        accepted: bool,
    ) -> Option<ClientId> {
        let previous = before.authority().cloned();
        match action {
            Action::Leave(c) if accepted && previous.as_ref() == Some(c) => {
                expected_successor(before, c)
            }
            Action::Join(c, ..)
                if accepted && previous.is_none() && after.mode() == Mode::PeerAuthoritative =>
            {
                Some(c.clone())
            }
            _ => previous,
        }
    }

    /// The refusal the permission rules demand for an operation, if any.
    fn required_refusal(before: &SessionState, who: &ClientId, op: &Op) -> Option<Refusal> {
        let id = op_object(op).as_str();
        match op {
            Op::Update { .. } | Op::Delete { .. } => update_refusal(before, who, id),
            Op::Transfer { .. } if before.authority() != Some(who) => {
                update_refusal(before, who, id)
            }
            Op::Create { .. } | Op::Transfer { .. } => None,
        }
    }

    fn check_step(net: &mut Net, step: &Step) {
        let before = net.state.clone();
        let action = resolve(&before, step);
        let result = run(net, &action);
        let state = &net.state;
        // (2) a refusal changes nothing; (4) accepted events have contiguous seqs.
        match &result {
            Err(_) => {
                assert_eq!(
                    state.digest(),
                    before.digest(),
                    "refused {action:?} changed state"
                );
                assert_eq!(state.owned, before.owned);
                assert_eq!(state.presence, before.presence);
                assert_eq!(state.next_order, before.next_order);
            }
            Ok(events) => {
                let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
                let want: Vec<u64> = (before.seq() + 1..=state.seq()).collect();
                assert_eq!(seqs, want, "seqs of {action:?}");
            }
        }
        // (1) one authority, which changes exactly when the previous one left (or on the
        // first join); the epoch grows by one per change and never decreases.
        let expected = expected_authority(&before, state, &action, result.is_ok());
        assert_eq!(
            state.authority(),
            expected.as_ref(),
            "authority after {action:?}"
        );
        let changed = u64::from(state.authority() != before.authority());
        assert_eq!(
            state.epoch(),
            before.epoch() + changed,
            "epoch after {action:?}"
        );
        // (5) changes by a member without the right are refused.
        if let Action::Op(who, op) = &action {
            if let Some(refusal) = required_refusal(&before, who, op) {
                assert_eq!(result.as_ref().err(), Some(&refusal), "{action:?}");
            }
        }
        // (3) every member's view equals the hub's state.
        net.assert_in_sync();
        assert_eq!(net.views.len(), net.state.member_count());
    }

    /// Runs `action` on a state with no views (the taken-over copy in the test below).
    fn run_bare(state: &mut SessionState, action: &Action) -> Result<Vec<Event>, Refusal> {
        match action {
            Action::Join(c, rtt, mode) => state.join(c.clone(), 7, *rtt, *mode).map(|j| j.events),
            Action::Leave(c) => state.leave(c).map(|l| l.events),
            Action::Away(c) => state.away(c, Instant::now()),
            Action::Back(c) => state.back(c, 8),
            Action::Op(c, op) => state.apply(c, op.clone()).map(|e| vec![e]),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// A hub's mirror, built from the wire frames a member hub receives (snapshot chunks at
        /// any point, then every event), always equals the session's state.
        #[test]
        fn a_mirror_from_wire_frames_equals_the_session(
            before in prop::collection::vec(arb_step(), 1..60),
            after in prop::collection::vec(arb_step(), 1..60),
        ) {
            use crate::sessions::mirror::{Mirror, Partials};
            let limits = Limits { max_members: 9, max_objects: 10, max_value_bytes: 48 };
            let name = peermesh_proto::SessionName::new("s").unwrap();
            let mut net = Net::new(limits);
            for step in &before {
                check_step(&mut net, step);
            }
            // A member hub's first snapshot is a joiner's: the session has members (and its
            // mode, which no event carries, is chosen).
            if net.state.member_count() == 0 {
                return Ok(());
            }
            let (mut mirror, mut partials) = (Mirror::default(), Partials::default());
            let member = cid("m");
            for frame in crate::sessions::snapshot_frames(&name, &net.state.snapshot(), None) {
                if let Some(whole) = partials.chunk(&name, &member, &frame) {
                    mirror.snapshot(whole);
                }
            }
            for step in &after {
                let action = resolve(&net.state, step);
                if let Ok(events) = run(&mut net, &action) {
                    for e in &events {
                        mirror.event(crate::sessions::wire_event(&name, e));
                    }
                }
                let digest = mirror.view().map(View::digest);
                prop_assert_eq!(digest, Some(net.state.digest()), "after {:?}", action);
            }
        }

        /// A session taken over from any member's view, at any point, goes on exactly as the
        /// original would: the same events, refusals and state for every later step.
        #[test]
        fn a_session_taken_over_from_a_view_goes_on_as_the_original(
            before in prop::collection::vec(arb_step(), 1..60),
            after in prop::collection::vec(arb_step(), 1..60),
            pick in 0..1000usize,
        ) {
            let limits = Limits { max_members: 9, max_objects: 10, max_value_bytes: 48 };
            let mut net = Net::new(limits);
            for step in &before {
                check_step(&mut net, step);
            }
            let Some(view) = net.views.values().nth(pick % net.views.len().max(1)).cloned() else {
                return Ok(());
            };
            let mut taken = SessionState::from_view(view, limits, Instant::now(), |_| 7);
            prop_assert!(taken.next_order >= net.state.next_order);
            prop_assert_eq!(taken.digest(), net.state.digest());
            prop_assert_eq!(&taken.owned, &net.state.owned);
            // Order numbers differ by design (see `from_view`); everything else must not.
            taken.next_order = net.state.next_order;
            for step in &after {
                let action = resolve(&net.state, step);
                let original = run(&mut net, &action);
                let copy = run_bare(&mut taken, &action);
                prop_assert_eq!(&copy, &original, "{:?}", action);
                prop_assert_eq!(taken.digest(), net.state.digest());
                prop_assert_eq!(&taken.owned, &net.state.owned);
            }
        }

        /// Random joins, leaves, absences and object operations by up to 12 clients on up to
        /// 40 objects keep every invariant after every step.
        #[test]
        fn session_state_machine(steps in prop::collection::vec(arb_step(), 1..100)) {
            let limits = Limits { max_members: 9, max_objects: 10, max_value_bytes: 48 };
            let mut net = Net::new(limits);
            for step in &steps {
                check_step(&mut net, step);
            }
        }
    }
}
