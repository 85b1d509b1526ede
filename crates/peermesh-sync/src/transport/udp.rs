//! UDP: one socket per host or client; peers are socket addresses.

use std::io;
use std::net::SocketAddr;

use bytes::Bytes;
use tokio::net::UdpSocket;

use super::Transport;
use crate::packet::MTU;

/// A UDP socket as a [`Transport`].
#[derive(Debug)]
pub struct Udp {
    socket: UdpSocket,
    buf: Vec<u8>,
}

impl Udp {
    /// Binds `addr` (port 0 picks one).
    pub async fn bind(addr: SocketAddr) -> io::Result<Self> {
        Ok(Self {
            socket: UdpSocket::bind(addr).await?,
            // Room for a little more than the largest datagram, so an oversized one is seen
            // (and refused by the decoder) rather than silently cut to size.
            buf: vec![0; MTU * 2],
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }
}

impl Transport for Udp {
    type Addr = SocketAddr;

    async fn send(&mut self, to: &SocketAddr, datagram: Bytes) -> io::Result<()> {
        self.socket.send_to(&datagram, to).await.map(|_| ())
    }

    async fn recv(&mut self) -> io::Result<(SocketAddr, Bytes)> {
        let (n, from) = self.socket.recv_from(&mut self.buf).await?;
        Ok((from, Bytes::copy_from_slice(&self.buf[..n])))
    }
}
