//! Stable, machine-readable error codes.
//!
//! Every error the hub reports on the wire carries one of these codes as a `snake_case` string.
//! The strings are part of the protocol: they never change meaning once released.

use std::fmt;
use std::str::FromStr;

macro_rules! error_codes {
    ($( $(#[$doc:meta])* $variant:ident => $wire:literal, $fatal:literal, $text:literal; )*) => {
        /// A stable error code, written on the wire as a `snake_case` string.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum ErrorCode {
            $( $(#[$doc])* $variant, )*
            /// A code this build does not know (sent by a newer peer).
            Unknown,
        }

        impl ErrorCode {
            /// Every known code, in documentation order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The wire spelling of the code.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $wire,)*
                    ErrorCode::Unknown => "unknown",
                }
            }

            /// Whether the hub closes the connection after sending this error.
            pub fn is_fatal(self) -> bool {
                match self {
                    $(ErrorCode::$variant => $fatal,)*
                    ErrorCode::Unknown => false,
                }
            }

            /// One sentence explaining the code, used in documentation and default messages.
            pub fn describe(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $text,)*
                    ErrorCode::Unknown => "an error code this build does not know",
                }
            }
        }

        impl FromStr for ErrorCode {
            type Err = std::convert::Infallible;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Ok(match s {
                    $($wire => ErrorCode::$variant,)*
                    _ => ErrorCode::Unknown,
                })
            }
        }
    };
}

error_codes! {
    /// The frame is not valid JSON / MessagePack, or not a map.
    Malformed => "malformed", false, "the frame could not be decoded as a JSON object or MessagePack map";
    /// The frame's `type` is not one the hub knows.
    UnknownType => "unknown_type", false, "the frame's `type` is not a known frame type";
    /// A field is missing, has the wrong type, or holds a value out of range.
    InvalidField => "invalid_field", false, "a field is missing, has the wrong type or an invalid value";
    /// The frame is larger than the hub's `max_frame_bytes`.
    FrameTooLarge => "frame_too_large", false, "the frame is larger than the hub accepts";
    /// A frame other than `hello` arrived before the handshake finished.
    HelloRequired => "hello_required", false, "the first frame on a connection must be `hello`";
    /// A second `hello` arrived on a connection that already finished its handshake.
    AlreadyGreeted => "already_greeted", false, "the connection already said hello";
    /// The client id in `hello` does not follow the id rules.
    InvalidId => "invalid_id", true, "the client id is not valid";
    /// Another live connection holds the requested client id.
    IdTaken => "id_taken", true, "another connection already uses this client id";
    /// The client's protocol version is outside the range the hub supports.
    VersionUnsupported => "version_unsupported", true, "the client's protocol version is not supported by this hub";
    /// Authentication failed: missing, invalid or expired token, or `sub` differs from the id.
    Unauthorized => "unauthorized", true, "authentication failed";
    /// The token does not allow joining this room.
    Forbidden => "forbidden", false, "the client is not allowed to do this";
    /// The hub holds its maximum number of clients.
    ServerFull => "server_full", true, "the hub has reached its client limit";
    /// No connected client has the target id.
    UnknownTarget => "unknown_target", false, "no client with that id is connected";
    /// The target did not answer an acknowledged emit in time.
    AckTimeout => "ack_timeout", false, "the target did not acknowledge in time";
    /// A `reply` names an acknowledgement that does not exist, expired, or is not addressed to the replier.
    UnknownAck => "unknown_ack", false, "no pending acknowledgement has that id";
    /// The other client disconnected: before it answered an acknowledged emit or a stream
    /// request, or while a stream with it was open.
    PeerLeft => "peer_left", false, "the other client disconnected before answering, or while a stream with it was open";
    /// `leave`, `emit_room` or `members` named a room the client is not in.
    NotInRoom => "not_in_room", false, "the client is not a member of that room";
    /// Joining would exceed `max_rooms_per_client`.
    TooManyRooms => "too_many_rooms", false, "the client is already in as many rooms as allowed";
    /// Too many acknowledged emits are waiting for an answer on this connection.
    TooManyPendingAcks => "too_many_pending_acks", false, "too many acknowledgements are pending";
    /// The client sends frames faster than its inbound rate limit allows.
    RateLimited => "rate_limited", false, "the client sends faster than its rate limit; the frame was dropped";
    /// The client reads too slowly: its outbound queue overflowed.
    SlowConsumer => "slow_consumer", true, "the client did not read fast enough and its outbound queue overflowed";
    /// A newer connection with the same client id replaced this one.
    Replaced => "replaced", true, "a newer connection with the same client id replaced this one";
    /// The hub is shutting down.
    ShuttingDown => "shutting_down", true, "the server is shutting down";
    /// No frame or pong arrived within the heartbeat timeout.
    HeartbeatTimeout => "heartbeat_timeout", true, "the connection sent nothing within the heartbeat timeout";
    /// A stream frame names a stream id the hub never gave this connection.
    UnknownStream => "unknown_stream", false, "no stream with that id was ever opened on this connection";
    /// The target of `stream_open` rejected the stream; the message is its reason.
    StreamRejected => "stream_rejected", false, "the target rejected the stream";
    /// The target of `stream_open` neither accepted nor rejected it in time.
    StreamTimeout => "stream_timeout", false, "the target did not accept or reject the stream in time";
    /// A stream end sent more data than its credit allows, or granted more than the largest window.
    FlowControl => "flow_control", false, "the stream broke flow control: data beyond the granted credit, or credit beyond the largest window";
    /// The frame is not allowed in the stream's state (data after `stream_end`, a second accept, ...).
    StreamState => "stream_state", false, "the frame is not allowed in the stream's current state";
    /// Opening or accepting would exceed `max_streams_per_client` on one of the two connections.
    TooManyStreams => "too_many_streams", false, "a client already has as many streams open as allowed";
    /// The other end of the stream reset it; the message is its reason.
    PeerReset => "peer_reset", false, "the other end reset the stream";
    /// No provider (the hub or a client) offers the service named by a `call` or `subscribe`.
    UnknownService => "unknown_service", false, "no provider offers that service";
    /// The service exists but none of its providers offers the method.
    UnknownMethod => "unknown_method", false, "the service has no such method";
    /// The provider answered the call with an error; the message is the provider's.
    ServiceError => "service_error", false, "the provider answered the call with an error";
    /// The provider did not answer a call within its timeout.
    CallTimeout => "call_timeout", false, "the provider did not answer the call in time";
    /// The provider handling a call disconnected before answering.
    ProviderLeft => "provider_left", false, "the provider disconnected before answering the call";
    /// A `respond` names a call that is not pending for this provider (answered, timed out, or never sent to it).
    UnknownCall => "unknown_call", false, "no pending call has that id for this provider";
    /// The caller already has as many calls waiting as allowed.
    TooManyCalls => "too_many_calls", false, "too many calls are waiting for an answer";
    /// Every provider of the service has as many calls in flight as allowed.
    ServiceBusy => "service_busy", false, "every provider of the service is at its limit of calls in flight";
    /// The connection already provides a service (one service per connection).
    AlreadyProviding => "already_providing", false, "this connection already provides a service";
    /// A topic operation or `respond` came from a connection that provides no service.
    NotProvider => "not_provider", false, "this connection provides no service";
    /// The service has no topic with that name.
    UnknownTopic => "unknown_topic", false, "the service has no such topic";
    /// `unsubscribe` named a topic the client is not subscribed to.
    NotSubscribed => "not_subscribed", false, "the client is not subscribed to that topic";
    /// Subscribing would exceed `max_subscriptions_per_client`.
    TooManySubscriptions => "too_many_subscriptions", false, "the client already has as many subscriptions as allowed";
    /// Creating the topic would exceed `max_topics_per_service`.
    TooManyTopics => "too_many_topics", false, "the service already has as many topics as allowed";
    /// The client is not a member of that session (or no such session exists).
    UnknownSession => "unknown_session", false, "the client is not a member of that session";
    /// Joining would exceed `max_sessions_per_client`.
    TooManySessions => "too_many_sessions", false, "the client is already in as many sessions as allowed";
    /// The session already has `max_session_members` members.
    TooManyMembers => "too_many_members", false, "the session already has as many members as allowed";
    /// Only the object's owner (or the authority, for objects without owner) may do that.
    NotOwner => "not_owner", false, "only the object's owner, or the authority for an object without owner, may change it";
    /// The session has no object with that id.
    UnknownObject => "unknown_object", false, "the session has no object with that id";
    /// An object with that id already exists in the session.
    ObjectExists => "object_exists", false, "an object with that id already exists";
    /// The session already has `max_session_objects` objects.
    TooManyObjects => "too_many_objects", false, "the session already has as many objects as allowed";
    /// The object's value is larger than `max_object_bytes`.
    ObjectTooLarge => "object_too_large", false, "the object's value is larger than allowed";
    /// A merge patch that cannot apply (the value is bytes, or the patch is not JSON).
    InvalidPatch => "invalid_patch", false, "the merge patch cannot be applied to that value";
    /// The new owner of a transfer is not a member of the session.
    NotMember => "not_member", false, "the named client is not a member of the session";
    /// The hub is part of a cluster and cannot reach it to register the client id (NATS is
    /// down or restarting); the connection is refused. Try again, or another hub.
    ClusterUnavailable => "cluster_unavailable", true, "the hub cannot reach its cluster (to register the client id, or to carry a stream to another hub)";
    /// An internal error; the hub logs the details.
    Internal => "internal", false, "an internal error occurred in the hub";
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_roundtrip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.as_str()), "duplicate {code}");
            assert_eq!(code.as_str().parse::<ErrorCode>().ok(), Some(*code));
            assert!(code
                .as_str()
                .chars()
                .all(|c| c.is_ascii_lowercase() || c == '_'));
        }
        assert_eq!("nope".parse::<ErrorCode>().ok(), Some(ErrorCode::Unknown));
    }
}
