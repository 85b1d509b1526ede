//! [`ClientEvent`]: lifecycle and presence, as seen by one client.

use std::time::Duration;

use peermesh_proto::{ClientId, ErrorCode, ResumeRefusal, RoomName};

/// Something that happened to the connection or to the rooms the client is in.
///
/// Received through [`Client::events`](crate::Client::events). A typical life:
/// `Connected`, presence events, `ConnectionLost`, `Reconnecting { attempt: 1, .. }`, …,
/// `Reconnected`, more presence events, and either the end of the stream (the client was closed)
/// or `Lost` (it gave up reconnecting) followed by the end of the stream.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// The client is connected as `id`. Opens every stream subscribed while connected (a
    /// stream subscribed during a reconnect sees `Reconnected` or `Lost` next instead).
    Connected {
        /// The client's id.
        id: ClientId,
    },
    /// A client joined a room this client is in.
    MemberJoined {
        /// The room.
        room: RoomName,
        /// Who joined.
        id: ClientId,
    },
    /// A client left a room this client is in.
    MemberLeft {
        /// The room.
        room: RoomName,
        /// Who left.
        id: ClientId,
    },
    /// A client this one sent to recently disconnected from the hub.
    PeerLeft {
        /// Who disconnected.
        id: ClientId,
    },
    /// A member of a room this client is in dropped and may resume (it is away, not gone).
    MemberAway {
        /// The room.
        room: RoomName,
        /// Who dropped.
        id: ClientId,
    },
    /// An away member of a room resumed.
    MemberBack {
        /// The room.
        room: RoomName,
        /// Who resumed.
        id: ClientId,
    },
    /// A client this one sent to recently dropped and may resume.
    PeerAway {
        /// Who dropped.
        id: ClientId,
    },
    /// A client that was away resumed.
    PeerBack {
        /// Who resumed.
        id: ClientId,
    },
    /// The hub reported an error not tied to a request (e.g. `rate_limited`, `unknown_ack`).
    Error {
        /// The stable code.
        code: ErrorCode,
        /// The hub's sentence.
        message: String,
    },
    /// The live connection dropped; requests that were waiting failed with
    /// [`ClientError::ConnectionLost`](crate::ClientError::ConnectionLost).
    ConnectionLost {
        /// Why, for people.
        reason: String,
    },
    /// A reconnect attempt will start after `delay`. With several hub URLs
    /// ([`ClientOptions::fallback_urls`](crate::ClientOptions::fallback_urls)), an attempt is
    /// a round that tries each of them in turn, without waiting between them.
    Reconnecting {
        /// 1-based attempt number within this ladder.
        attempt: u32,
        /// The wait before the attempt.
        delay: Duration,
    },
    /// A reconnect attempt succeeded: same id, rooms rejoined.
    Reconnected {
        /// The client's id.
        id: ClientId,
        /// The attempt that succeeded.
        attempt: u32,
        /// The rooms the client is in again.
        rooms: Vec<RoomName>,
        /// The hub URL now in use, as given in the options (also
        /// [`Client::current_url`](crate::Client::current_url)).
        url: String,
    },
    /// After `Reconnected`: the hub resumed the session. Nothing was lost: the hub replays what
    /// this client missed (frames already seen are dropped by `seq`), and this client sent
    /// again the `resent` frames the hub had not confirmed; pending requests carry on.
    Resumed {
        /// Frames this client sent again.
        resent: u64,
    },
    /// After `Reconnected`: the hub could not resume the session (`reason`), so this is a
    /// fresh one: requests that were pending failed with
    /// [`ClientError::ConnectionLost`](crate::ClientError::ConnectionLost), rooms were joined
    /// again, and anything the application derived from earlier messages should be resynced.
    Resynced {
        /// Why the resume was refused.
        reason: ResumeRefusal,
        /// The hub's sentence.
        message: String,
    },
    /// The client gave up: reconnection is off, its attempts or time budget ran out, or the hub
    /// refused it for good. The stream ends after this event.
    Lost {
        /// Why, for people.
        reason: String,
    },
}
