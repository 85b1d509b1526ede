//! [`MeshSocket`]: a UDP-like socket over the mesh, for programs written against `send_to` /
//! `recv_from`. Its datagrams are those of peer-relay's `PeerRelay.Socket`, so the two
//! exchange datagrams.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, Mutex};

use crate::id::NodeId;
use crate::node::{NodeConfig, NodeEvent};
use crate::wire::peer_relay::{Datagram, MAX_DATAGRAM};
use crate::ws::{self, MeshError, MeshHandle, WsOptions};

/// A datagram socket whose addresses are node ids.
///
/// Datagrams may be lost or reordered, as with UDP. Messages that are not datagrams are
/// skipped by [`MeshSocket::recv_from`] (and counted).
pub struct MeshSocket {
    handle: MeshHandle,
    events: Mutex<mpsc::Receiver<NodeEvent>>,
    port: u16,
    skipped: AtomicU64,
}

impl MeshSocket {
    /// Starts a mesh node (see [`ws::spawn`]) and wraps it; `port` is the pretend port peers
    /// see (peer-relay picks a random one below 10,000).
    pub async fn bind(cfg: NodeConfig, opts: WsOptions, port: u16) -> Result<Self, MeshError> {
        let (handle, events) = ws::spawn(cfg, opts).await?;
        Ok(Self {
            handle,
            events: Mutex::new(events),
            port,
            skipped: AtomicU64::new(0),
        })
    }

    /// The local address: this node's id and the pretend port.
    pub fn local_addr(&self) -> (NodeId, u16) {
        (self.handle.id(), self.port)
    }

    /// The node underneath (to connect, list peers, read counters).
    pub fn node(&self) -> &MeshHandle {
        &self.handle
    }

    /// Messages received that were not datagrams.
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    /// Sends `buf` to the node `peer`; returns the length sent.
    pub async fn send_to(&self, buf: &[u8], peer: NodeId) -> Result<usize, MeshError> {
        if buf.len() > MAX_DATAGRAM {
            return Err(MeshError::DatagramTooLarge {
                len: buf.len(),
                max: MAX_DATAGRAM,
            });
        }
        let d = Datagram {
            buffer: buf.to_vec(),
            address: self.handle.id().to_string(),
            port: self.port,
        };
        self.handle.send(peer, d.encode()).await?;
        Ok(buf.len())
    }

    /// Waits for the next datagram: its bytes and the sending node.
    pub async fn recv_from(&self) -> Result<(Vec<u8>, NodeId), MeshError> {
        let mut events = self.events.lock().await;
        loop {
            match events.recv().await {
                Some(NodeEvent::Message { from, data, .. }) => match Datagram::decode(&data) {
                    Some(d) => return Ok((d.buffer, from)),
                    None => {
                        self.skipped.fetch_add(1, Ordering::Relaxed);
                    }
                },
                Some(_) => {}
                None => return Err(MeshError::Closed),
            }
        }
    }

    /// Closes the socket and its node.
    pub async fn close(&self) -> Result<(), MeshError> {
        self.handle.destroy().await
    }
}
