//! [`ClientError`]: everything a client operation can fail with.

use std::time::Duration;

use peermesh_proto::{ErrorCode, NameError};

/// Why a client operation failed.
///
/// Errors reported by the hub keep its stable [`ErrorCode`] and sentence ([`ClientError::Hub`]);
/// the others are found by the client itself. [`ClientError::code`] gives the protocol code when
/// there is one, [`ClientError::code_name`] a stable `snake_case` name for every variant.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The hub answered with an `error` frame.
    #[error("{code}: {message}")]
    Hub {
        /// The stable code.
        code: ErrorCode,
        /// The hub's sentence.
        message: String,
    },
    /// The target did not answer an acknowledged emit within the timeout.
    #[error("ack_timeout: no answer within {0:?}")]
    AckTimeout(Duration),
    /// The provider did not answer a call within its timeout (noticed by the client; the hub
    /// reports the same with code `call_timeout`).
    #[error("call_timeout: no answer within {0:?}")]
    CallTimeout(Duration),
    /// The hub did not answer a request within the request timeout.
    #[error("timeout: the hub did not answer within {0:?}")]
    RequestTimeout(Duration),
    /// The connection dropped while the request was waiting for its answer; the request may or
    /// may not have reached the hub.
    #[error("connection_lost: the connection to the hub dropped before the answer arrived ({0})")]
    ConnectionLost(String),
    /// The client is between connections (reconnecting); nothing was sent.
    #[error("not_connected: the client is reconnecting to the hub; nothing was sent")]
    NotConnected,
    /// The client was closed, or gave up reconnecting.
    #[error("closed: the client is closed")]
    Closed,
    /// A name given to the client is not a valid client id, room or event name.
    #[error("invalid_name: {0}")]
    InvalidName(#[from] NameError),
    /// The hub URL is not a `ws://` or `wss://` URL.
    #[error("invalid_url: {0}")]
    InvalidUrl(String),
    /// One connection attempt (TCP, WebSocket upgrade and handshake) took too long.
    #[error("connect_timeout: no welcome from the hub within {0:?}")]
    ConnectTimeout(Duration),
    /// Opening the WebSocket failed (TCP, TLS or HTTP upgrade).
    #[error("websocket: {0}")]
    WebSocket(String),
    /// The hub broke the protocol (e.g. closed during the handshake or sent an undecodable
    /// `welcome`).
    #[error("protocol: {0}")]
    Protocol(String),
    /// [`Message::reply`](crate::Message::reply) on a message that did not ask for an answer.
    #[error("no_ack: the message has no ack_id to reply to")]
    NoAck,
}

impl ClientError {
    /// The protocol error code, for errors that have one: every [`ClientError::Hub`] error,
    /// [`ClientError::AckTimeout`] (`ack_timeout`) and [`ClientError::CallTimeout`]
    /// (`call_timeout`), whichever side timed out first.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Hub { code, .. } => Some(*code),
            ClientError::AckTimeout(_) => Some(ErrorCode::AckTimeout),
            ClientError::CallTimeout(_) => Some(ErrorCode::CallTimeout),
            _ => None,
        }
    }

    /// A stable `snake_case` name for the error: the protocol code for hub errors, otherwise the
    /// variant's name (`timeout`, `connection_lost`, `not_connected`, `closed`, `invalid_name`,
    /// `invalid_url`, `connect_timeout`, `websocket`, `protocol`, `no_ack`).
    pub fn code_name(&self) -> &'static str {
        match self {
            ClientError::Hub { code, .. } => code.as_str(),
            ClientError::AckTimeout(_) => ErrorCode::AckTimeout.as_str(),
            ClientError::CallTimeout(_) => ErrorCode::CallTimeout.as_str(),
            ClientError::RequestTimeout(_) => "timeout",
            ClientError::ConnectionLost(_) => "connection_lost",
            ClientError::NotConnected => "not_connected",
            ClientError::Closed => "closed",
            ClientError::InvalidName(_) => "invalid_name",
            ClientError::InvalidUrl(_) => "invalid_url",
            ClientError::ConnectTimeout(_) => "connect_timeout",
            ClientError::WebSocket(_) => "websocket",
            ClientError::Protocol(_) => "protocol",
            ClientError::NoAck => "no_ack",
        }
    }

    /// The error without its `code_name:` prefix, for people (the CLI prints the name apart).
    pub fn message(&self) -> String {
        match self {
            ClientError::Hub { message, .. } => message.clone(),
            other => {
                let full = other.to_string();
                match full.split_once(": ") {
                    Some((_, rest)) => rest.to_owned(),
                    None => full,
                }
            }
        }
    }

    /// Whether a reconnect can help after a handshake failed with this error. Refusals that
    /// would repeat identically (bad version, bad id, bad token) are permanent.
    pub(crate) fn is_retryable(&self) -> bool {
        !matches!(
            self.code(),
            Some(
                ErrorCode::VersionUnsupported
                    | ErrorCode::InvalidId
                    | ErrorCode::Unauthorized
                    | ErrorCode::Replaced
            )
        ) && !matches!(
            self,
            ClientError::InvalidUrl(_) | ClientError::InvalidName(_) | ClientError::Closed
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_messages() {
        let e = ClientError::Hub {
            code: ErrorCode::UnknownTarget,
            message: "no client \"bob\"".into(),
        };
        assert_eq!(e.code(), Some(ErrorCode::UnknownTarget));
        assert_eq!(e.code_name(), "unknown_target");
        assert_eq!(e.message(), "no client \"bob\"");
        assert_eq!(e.to_string(), "unknown_target: no client \"bob\"");

        let t = ClientError::AckTimeout(Duration::from_millis(200));
        assert_eq!(t.code(), Some(ErrorCode::AckTimeout));
        assert_eq!(t.code_name(), "ack_timeout");
        assert_eq!(t.message(), "no answer within 200ms");
        assert_eq!(ClientError::Closed.code(), None);
        assert_eq!(ClientError::Closed.code_name(), "closed");
    }

    #[test]
    fn permanent_refusals_are_not_retried() {
        let hub = |code| ClientError::Hub {
            code,
            message: String::new(),
        };
        assert!(!hub(ErrorCode::Unauthorized).is_retryable());
        assert!(!hub(ErrorCode::VersionUnsupported).is_retryable());
        assert!(hub(ErrorCode::IdTaken).is_retryable());
        assert!(hub(ErrorCode::ServerFull).is_retryable());
        assert!(ClientError::WebSocket("refused".into()).is_retryable());
    }
}
