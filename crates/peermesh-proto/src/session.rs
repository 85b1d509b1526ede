//! Wire types of sessions: a room with shared state (objects with owners), an authority, and
//! a per-session revision number that orders every change ([protocol §25]).
//!
//! [protocol §25]: ../../../docs/protocol.md

use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::id::{ClientId, ObjectName, SessionName};
use crate::payload::{BinField, Payload};

/// How a session is run; chosen by its first member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SessionMode {
    /// The hub elects one member as the authority (the default).
    #[default]
    Authoritative,
    /// No authority: the hub orders and relays changes only.
    Relay,
}

impl SessionMode {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionMode::Authoritative => "authoritative",
            SessionMode::Relay => "relay",
        }
    }

    /// Parses the wire spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "authoritative" => Some(SessionMode::Authoritative),
            "relay" => Some(SessionMode::Relay),
            _ => None,
        }
    }
}

/// What happens to an object when its owner leaves the session for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum OwnerLeave {
    /// The authority becomes its owner (the default; no owner without an authority).
    #[default]
    Authority,
    /// The object is deleted.
    Delete,
}

impl OwnerLeave {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            OwnerLeave::Authority => "authority",
            OwnerLeave::Delete => "delete",
        }
    }

    /// Parses the wire spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "authority" => Some(OwnerLeave::Authority),
            "delete" => Some(OwnerLeave::Delete),
            _ => None,
        }
    }
}

/// An operation on a session's objects (`session_op`).
#[derive(Debug, Clone, PartialEq)]
pub enum SessionOp {
    /// Creates an object; owned by its creator when `owned`.
    Create {
        /// The object.
        object: ObjectName,
        /// Its value.
        payload: Payload,
        /// Whether the creator owns it.
        owned: bool,
        /// What happens to it when its owner leaves.
        on_owner_leave: OwnerLeave,
    },
    /// Replaces an object's value.
    Update {
        /// The object.
        object: ObjectName,
        /// The new value.
        payload: Payload,
    },
    /// Applies an RFC 7386 JSON merge patch to an object's JSON value.
    Patch {
        /// The object.
        object: ObjectName,
        /// The patch.
        patch: Value,
    },
    /// Deletes an object.
    Delete {
        /// The object.
        object: ObjectName,
    },
    /// Gives an object to another member (`None`: no owner).
    Transfer {
        /// The object.
        object: ObjectName,
        /// The new owner.
        to: Option<ClientId>,
    },
}

impl SessionOp {
    /// The wire spelling of the operation.
    pub fn name(&self) -> &'static str {
        match self {
            SessionOp::Create { .. } => "create",
            SessionOp::Update { .. } => "update",
            SessionOp::Patch { .. } => "patch",
            SessionOp::Delete { .. } => "delete",
            SessionOp::Transfer { .. } => "transfer",
        }
    }

    /// The object it acts on.
    pub fn object(&self) -> &ObjectName {
        match self {
            SessionOp::Create { object, .. }
            | SessionOp::Update { object, .. }
            | SessionOp::Patch { object, .. }
            | SessionOp::Delete { object }
            | SessionOp::Transfer { object, .. } => object,
        }
    }

    pub(crate) fn entries(&self) -> usize {
        match self {
            SessionOp::Create { payload, .. } => 2 + payload.entries(),
            SessionOp::Update { payload, .. } => payload.entries(),
            SessionOp::Patch { .. } => 1,
            SessionOp::Delete { .. } => 0,
            SessionOp::Transfer { to, .. } => usize::from(to.is_some()),
        }
    }

    pub(crate) fn serialize_fields<M: SerializeMap>(&self, m: &mut M) -> Result<(), M::Error> {
        m.serialize_entry("op", self.name())?;
        m.serialize_entry("object", self.object())?;
        match self {
            SessionOp::Create {
                payload,
                owned,
                on_owner_leave,
                ..
            } => {
                payload.serialize_entry(m)?;
                m.serialize_entry("owned", owned)?;
                m.serialize_entry("on_owner_leave", on_owner_leave.as_str())?;
                Ok(())
            }
            SessionOp::Update { payload, .. } => payload.serialize_entry(m),
            SessionOp::Patch { patch, .. } => m.serialize_entry("data", patch),
            SessionOp::Delete { .. } => Ok(()),
            SessionOp::Transfer { to, .. } => match to {
                Some(to) => m.serialize_entry("to", to),
                None => Ok(()),
            },
        }
    }
}

/// What changed in a session, as every member is told (`session_event`).
#[derive(Debug, Clone, PartialEq)]
pub enum SessionChange {
    /// A member joined.
    MemberJoined {
        /// Who.
        member: ClientId,
        /// Its join order number (first is 1).
        order: u64,
        /// Its round-trip time to the hub when it joined, in ms, if measured.
        rtt_ms: Option<u64>,
    },
    /// A member left for good.
    MemberLeft {
        /// Who.
        member: ClientId,
    },
    /// A member dropped and may resume.
    MemberAway {
        /// Who.
        member: ClientId,
    },
    /// An away member resumed.
    MemberBack {
        /// Who.
        member: ClientId,
    },
    /// The authority changed (`None`: the last member left).
    Authority {
        /// The new authority.
        member: Option<ClientId>,
        /// The new epoch (it only grows).
        epoch: u64,
    },
    /// An object was created.
    Created {
        /// The object.
        object: ObjectName,
        /// Its value.
        payload: Payload,
        /// Its owner.
        owner: Option<ClientId>,
        /// What happens to it when its owner leaves.
        on_owner_leave: OwnerLeave,
    },
    /// An object's value changed (the whole new value, after a patch too).
    Updated {
        /// The object.
        object: ObjectName,
        /// Its new value.
        payload: Payload,
    },
    /// An object was deleted.
    Deleted {
        /// The object.
        object: ObjectName,
    },
    /// An object's owner changed.
    Transferred {
        /// The object.
        object: ObjectName,
        /// The new owner (`None`: no owner).
        owner: Option<ClientId>,
    },
}

impl SessionChange {
    /// The wire spelling (`event` field).
    pub fn name(&self) -> &'static str {
        match self {
            SessionChange::MemberJoined { .. } => "member_joined",
            SessionChange::MemberLeft { .. } => "member_left",
            SessionChange::MemberAway { .. } => "member_away",
            SessionChange::MemberBack { .. } => "member_back",
            SessionChange::Authority { .. } => "authority",
            SessionChange::Created { .. } => "created",
            SessionChange::Updated { .. } => "updated",
            SessionChange::Deleted { .. } => "deleted",
            SessionChange::Transferred { .. } => "transferred",
        }
    }

    pub(crate) fn entries(&self) -> usize {
        1 + match self {
            SessionChange::MemberJoined { rtt_ms, .. } => 2 + usize::from(rtt_ms.is_some()),
            SessionChange::MemberLeft { .. }
            | SessionChange::MemberAway { .. }
            | SessionChange::MemberBack { .. }
            | SessionChange::Deleted { .. } => 1,
            SessionChange::Authority { member, .. } => 1 + usize::from(member.is_some()),
            SessionChange::Created { payload, owner, .. } => {
                2 + payload.entries() + usize::from(owner.is_some())
            }
            SessionChange::Updated { payload, .. } => 1 + payload.entries(),
            SessionChange::Transferred { owner, .. } => 1 + usize::from(owner.is_some()),
        }
    }

    pub(crate) fn serialize_fields<M: SerializeMap>(&self, m: &mut M) -> Result<(), M::Error> {
        m.serialize_entry("event", self.name())?;
        match self {
            SessionChange::MemberJoined {
                member,
                order,
                rtt_ms,
            } => {
                m.serialize_entry("member", member)?;
                m.serialize_entry("order", order)?;
                if let Some(r) = rtt_ms {
                    m.serialize_entry("rtt_ms", r)?;
                }
            }
            SessionChange::MemberLeft { member }
            | SessionChange::MemberAway { member }
            | SessionChange::MemberBack { member } => m.serialize_entry("member", member)?,
            SessionChange::Authority { member, epoch } => {
                if let Some(a) = member {
                    m.serialize_entry("member", a)?;
                }
                m.serialize_entry("epoch", epoch)?;
            }
            SessionChange::Created {
                object,
                payload,
                owner,
                on_owner_leave,
            } => {
                m.serialize_entry("object", object)?;
                payload.serialize_entry(m)?;
                if let Some(o) = owner {
                    m.serialize_entry("owner", o)?;
                }
                m.serialize_entry("on_owner_leave", on_owner_leave.as_str())?;
            }
            SessionChange::Updated { object, payload } => {
                m.serialize_entry("object", object)?;
                payload.serialize_entry(m)?;
            }
            SessionChange::Deleted { object } => m.serialize_entry("object", object)?,
            SessionChange::Transferred { object, owner } => {
                m.serialize_entry("object", object)?;
                if let Some(o) = owner {
                    m.serialize_entry("owner", o)?;
                }
            }
        }
        Ok(())
    }
}

/// A member in a session snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionMember {
    /// Its client id.
    pub id: ClientId,
    /// Its join order number (first is 1).
    pub order: u64,
    /// Its round-trip time when it joined, in ms, if measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<u64>,
    /// Dropped, inside its resume window.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub away: bool,
}

/// An object in a session snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionObject {
    /// Its id.
    pub id: ObjectName,
    /// Its value.
    pub payload: Payload,
    /// Its owner.
    pub owner: Option<ClientId>,
    /// What happens to it when its owner leaves.
    pub on_owner_leave: OwnerLeave,
    /// The revision of its last change.
    pub version: u64,
}

impl Serialize for SessionObject {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // `on_owner_leave` is written only when it is not the default (`authority`).
        let delete = self.on_owner_leave == OwnerLeave::Delete;
        let n =
            2 + self.payload.entries() + usize::from(self.owner.is_some()) + usize::from(delete);
        let mut m = s.serialize_map(Some(n))?;
        m.serialize_entry("id", &self.id)?;
        self.payload.serialize_entry(&mut m)?;
        if let Some(o) = &self.owner {
            m.serialize_entry("owner", o)?;
        }
        if delete {
            m.serialize_entry("on_owner_leave", self.on_owner_leave.as_str())?;
        }
        m.serialize_entry("version", &self.version)?;
        m.end()
    }
}

#[derive(Deserialize)]
pub(crate) struct RawObject {
    id: String,
    #[serde(default)]
    data: Option<Value>,
    #[serde(default)]
    bin: Option<BinField>,
    #[serde(default)]
    owner: Option<String>,
    #[serde(default)]
    on_owner_leave: Option<String>,
    #[serde(default)]
    version: u64,
}

impl RawObject {
    pub(crate) fn parse(self) -> Result<SessionObject, String> {
        Ok(SessionObject {
            id: ObjectName::new(&self.id).map_err(|e| e.to_string())?,
            payload: Payload::from_fields(self.data, self.bin).map_err(str::to_owned)?,
            owner: self
                .owner
                .map(|o| ClientId::new(&o))
                .transpose()
                .map_err(|e| e.to_string())?,
            on_owner_leave: match self.on_owner_leave.as_deref() {
                None => OwnerLeave::Authority,
                Some(s) => {
                    OwnerLeave::parse(s).ok_or_else(|| format!("`on_owner_leave`: {s:?}"))?
                }
            },
            version: self.version,
        })
    }
}

/// One chunk of a session snapshot (`session_state`): the header repeats in every chunk; the
/// objects are split over the chunks; `more` is false on the last.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionState {
    /// The session.
    pub session: SessionName,
    /// The `req` of the `session_join`, when it had one.
    pub req: Option<u64>,
    /// The last revision the snapshot includes; events follow from `rev + 1`.
    pub rev: u64,
    /// How the session is run.
    pub mode: SessionMode,
    /// The authority, if any.
    pub authority: Option<ClientId>,
    /// The authority's epoch.
    pub epoch: u64,
    /// The members, in join order (in every chunk).
    pub members: Vec<SessionMember>,
    /// Objects of this chunk, by id.
    pub objects: Vec<SessionObject>,
    /// More chunks follow.
    pub more: bool,
}
