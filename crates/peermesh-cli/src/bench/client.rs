//! Opening benchmark clients: TCP (from one of several loopback source addresses), WebSocket
//! upgrade, and the dialect's identification handshake.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use super::dialect::{Dialect, SetupError};
use super::ws::{WsConn, WsUrl};

/// Where and how to connect: a server's URL and the protocol it speaks.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    /// The WebSocket URL.
    pub(crate) url: WsUrl,
    /// The protocol.
    pub(crate) dialect: Dialect,
}

/// How clients are opened.
#[derive(Debug, Clone)]
pub(crate) struct ConnectOpts {
    /// Time allowed for connect + upgrade + handshake (+ join).
    pub(crate) timeout: Duration,
    /// Source addresses to spread connections over (empty: let the kernel choose).
    pub(crate) source_ips: Vec<IpAddr>,
}

impl ConnectOpts {
    /// Options spreading connections over `127.0.0.1 ..= 127.0.0.N` when the server is on IPv4
    /// loopback and `n > 1`; one source address gives each about 28,000 ephemeral ports.
    pub(crate) fn new(url: &WsUrl, n: u8, timeout: Duration) -> Self {
        let source_ips = match url.addr.ip() {
            IpAddr::V4(ip) if ip.is_loopback() && n > 1 => (1..=n)
                .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)))
                .collect(),
            _ => Vec::new(),
        };
        Self {
            timeout,
            source_ips,
        }
    }

    fn source(&self, index: usize) -> Option<IpAddr> {
        if self.source_ips.is_empty() {
            None
        } else {
            Some(self.source_ips[index % self.source_ips.len()])
        }
    }
}

/// Opens client number `index` with id `id` and completes the handshake.
pub(crate) async fn open(
    server: &Endpoint,
    id: &str,
    index: usize,
    read_capacity: usize,
    opts: &ConnectOpts,
) -> Result<WsConn, SetupError> {
    let mut conn =
        WsConn::connect(&server.url, opts.source(index), read_capacity, opts.timeout).await?;
    server
        .dialect
        .handshake(&mut conn, id, opts.timeout)
        .await?;
    Ok(conn)
}

/// Opens a client and joins `room`.
pub(crate) async fn open_in_room(
    server: &Endpoint,
    id: &str,
    index: usize,
    read_capacity: usize,
    room: &str,
    opts: &ConnectOpts,
) -> Result<WsConn, SetupError> {
    let mut conn = open(server, id, index, read_capacity, opts).await?;
    server
        .dialect
        .join(&mut conn, room, 1, opts.timeout)
        .await?;
    Ok(conn)
}
