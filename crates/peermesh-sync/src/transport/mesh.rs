//! The mesh: datagrams over a [`MeshSocket`], routed through the Kademlia relay mesh; peers
//! are node ids (feature `mesh`).
//!
//! The mesh delivers datagrams as UDP does, lost or reordered now and then, which the sync
//! layer expects. A datagram travels as peer-relay's JSON `Buffer` (up to four bytes a byte on
//! the wire), well within the mesh's limits for the sync layer's datagrams of at most
//! [`MTU`](crate::packet::MTU) bytes. Messages queue in the node while it has no link yet, so
//! a client may start before its node has joined the mesh.

use std::fmt;
use std::io;
use std::sync::Arc;

use bytes::Bytes;
use peermesh_mesh::id::NodeId;
use peermesh_mesh::socket::MeshSocket;
use peermesh_mesh::ws::MeshError;

use super::Transport;

/// A [`MeshSocket`] as a [`Transport`]; peers are node ids.
///
/// The socket is shared so the application can keep using its node (peers, counters,
/// [`MeshSocket::close`]); it should not also call [`MeshSocket::recv_from`], or the two
/// readers split the datagrams between them.
pub struct MeshTransport {
    socket: Arc<MeshSocket>,
}

impl MeshTransport {
    /// Wraps a bound socket.
    pub fn new(socket: Arc<MeshSocket>) -> Self {
        Self { socket }
    }

    /// The socket underneath; its node id is this peer's address.
    pub fn socket(&self) -> &Arc<MeshSocket> {
        &self.socket
    }
}

impl fmt::Debug for MeshTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeshTransport")
            .field("local_addr", &self.socket.local_addr())
            .finish_non_exhaustive()
    }
}

impl Transport for MeshTransport {
    type Addr = NodeId;

    async fn send(&mut self, to: &NodeId, datagram: Bytes) -> io::Result<()> {
        self.socket
            .send_to(&datagram, *to)
            .await
            .map(|_| ())
            .map_err(io_error)
    }

    // `MeshSocket::recv_from` is cancel-safe: it awaits only the lock of its event channel
    // and the channel itself, and decodes synchronously once an event is in hand.
    async fn recv(&mut self) -> io::Result<(NodeId, Bytes)> {
        let (buf, from) = self.socket.recv_from().await.map_err(io_error)?;
        Ok((from, Bytes::from(buf)))
    }
}

/// The io error for a mesh error: a closed node ends the shells, as does an oversized
/// datagram (which the sync layer never sends).
fn io_error(e: MeshError) -> io::Error {
    let kind = match &e {
        MeshError::Closed => io::ErrorKind::BrokenPipe,
        MeshError::DatagramTooLarge { .. } => io::ErrorKind::InvalidInput,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, e)
}
