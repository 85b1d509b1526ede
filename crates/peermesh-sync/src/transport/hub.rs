//! The hub: datagrams travel as binary messages named [`EVENT`] between clients of a peermesh
//! hub; peers are addressed by their hub client ids (feature `hub`).
//!
//! The host and every client each hold a connected [`peermesh_client::Client`]; the sync
//! client is given the host's client id as the host's address. Nothing here reconnects: the
//! hub client's own reconnect ladder (and resume, when the hub allows it) keeps the link, under
//! the same id, so the peers' addresses stay valid across a dropped connection. While it is
//! down, datagrams are lost, which the sync layer's acknowledgements and reconnect ladder
//! already handle.
//!
//! Datagrams are sent with [`Client::emit_unanswered`]: the hub does not answer them and no
//! request slot is held, so a datagram costs one frame each way; one to a client that is not
//! connected is lost silently, like a UDP datagram to a closed port. When the hub client's command queue is full (see
//! [`ClientOptions::command_capacity`](peermesh_client::ClientOptions::command_capacity)), or
//! it is between connections and holds commands for a resume, [`send`](Transport::send) drops
//! the datagram and reports [`io::ErrorKind::WouldBlock`] rather than stalling the caller's
//! tick loop. Received datagrams wait in the subscription's queue
//! ([`ClientOptions::listener_capacity`](peermesh_client::ClientOptions::listener_capacity),
//! 256 by default; a host with many clients wants more), dropped when it is full
//! ([`HubTransport::dropped`]).

use std::future::Future;
use std::io;
use std::task::Poll;

use bytes::Bytes;
use peermesh_client::{Client, ClientError, ErrorCode, Payload, Subscription};

use super::Transport;

/// The event name the datagrams travel under.
pub const EVENT: &str = "sync";

/// A connected hub client as a [`Transport`]; peers are hub client ids.
#[derive(Debug)]
pub struct HubTransport {
    client: Client,
    inbox: Subscription,
    skipped: u64,
}

impl HubTransport {
    /// Wraps a connected client and subscribes to [`EVENT`] messages from anyone (from this
    /// call on: earlier messages are not seen). Dropping the transport removes the
    /// subscription but leaves the client connected; close it with [`Client::close`].
    pub fn new(client: Client) -> Self {
        let inbox = client.on(EVENT);
        Self {
            client,
            inbox,
            skipped: 0,
        }
    }

    /// The hub client underneath (its id is this peer's address).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Received datagrams dropped because the subscription's queue was full.
    pub fn dropped(&self) -> u64 {
        self.inbox.dropped()
    }

    /// Messages named [`EVENT`] that were skipped because their payload was not binary.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }
}

impl Transport for HubTransport {
    type Addr = String;

    async fn send(&mut self, to: &String, datagram: Bytes) -> io::Result<()> {
        let request = self
            .client
            .emit_unanswered(to, EVENT, Payload::Bin(datagram));
        // Queue the emit if the actor's inbox has room now, and never wait for the hub's
        // answer (dropping it does not cancel the emit). `unconstrained`: tokio's cooperative
        // budget must not turn a free slot into a spurious drop.
        let mut queued = std::pin::pin!(tokio::task::unconstrained(request.send()));
        let polled = std::future::poll_fn(|cx| Poll::Ready(queued.as_mut().poll(cx))).await;
        match polled {
            Poll::Ready(Ok(_answer)) => Ok(()),
            Poll::Ready(Err(e)) => Err(io_error(e)),
            Poll::Pending => Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "the hub client's command queue is full; datagram dropped",
            )),
        }
    }

    async fn recv(&mut self) -> io::Result<(String, Bytes)> {
        loop {
            // `Subscription::recv` is a channel receive: cancel-safe, and nothing below awaits.
            let Some(message) = self.inbox.recv().await else {
                return Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "the hub client is closed",
                ));
            };
            match message.payload {
                Payload::Bin(bytes) => return Ok((message.from.as_str().to_owned(), bytes)),
                Payload::Json(_) => self.skipped += 1,
            }
        }
    }
}

/// The io error for a hub client error. Peers that are absent or being reconnected, full
/// queues and timeouts map to kinds the shells treat as transient; a closed client and
/// invalid names end them.
fn io_error(e: ClientError) -> io::Error {
    let kind = match &e {
        ClientError::NotConnected => io::ErrorKind::NotConnected,
        ClientError::ConnectionLost(_) => io::ErrorKind::ConnectionReset,
        ClientError::RequestTimeout(_) | ClientError::AckTimeout(_) => io::ErrorKind::TimedOut,
        ClientError::Hub { code, .. } => match code {
            ErrorCode::UnknownTarget | ErrorCode::PeerLeft => io::ErrorKind::NotConnected,
            ErrorCode::RateLimited | ErrorCode::TooManyPendingAcks => io::ErrorKind::WouldBlock,
            ErrorCode::FrameTooLarge | ErrorCode::InvalidField | ErrorCode::InvalidId => {
                io::ErrorKind::InvalidInput
            }
            _ => io::ErrorKind::Other,
        },
        ClientError::Closed => io::ErrorKind::BrokenPipe,
        ClientError::InvalidName(_) | ClientError::InvalidUrl(_) => io::ErrorKind::InvalidInput,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::is_transient;

    fn hub(code: ErrorCode) -> ClientError {
        ClientError::Hub {
            code,
            message: String::new(),
        }
    }

    #[test]
    fn absent_peers_and_reconnects_are_transient_and_a_closed_client_is_not() {
        for e in [
            hub(ErrorCode::UnknownTarget),
            hub(ErrorCode::PeerLeft),
            hub(ErrorCode::RateLimited),
            ClientError::NotConnected,
            ClientError::ConnectionLost("reset".into()),
            ClientError::RequestTimeout(std::time::Duration::from_secs(1)),
        ] {
            let name = e.code_name();
            assert!(is_transient(&io_error(e)), "{name}");
        }
        for e in [
            ClientError::Closed,
            hub(ErrorCode::FrameTooLarge),
            hub(ErrorCode::Internal),
        ] {
            let name = e.code_name();
            assert!(!is_transient(&io_error(e)), "{name}");
        }
        let e = io_error(ClientError::Closed);
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
        assert!(e.to_string().contains("closed"), "{e}");
    }
}
