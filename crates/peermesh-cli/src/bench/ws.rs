//! A minimal WebSocket client (RFC 6455) made for load generation.
//!
//! `tokio-tungstenite` allocates a message per frame and writes frame by frame; a load generator
//! that shares two cores with the server it measures cannot afford that. This client:
//!
//! - reads into one reusable buffer and hands out frames as slices of it (no allocation per
//!   frame, fragmented messages aside);
//! - queues outgoing frames into one reusable buffer, masked in place, and writes a whole batch
//!   with one `write_all`;
//! - answers pings and close frames by itself.
//!
//! It speaks only what the benchmark needs: `ws://` URLs, no extensions, no subprotocols.
//! Nothing read from the network can make it panic: every length is checked.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// Largest frame or reassembled message accepted from a server.
const MAX_MESSAGE: usize = 16 << 20;
/// Largest HTTP response head accepted during the upgrade.
const MAX_HEAD: usize = 16 << 10;

/// Errors of the WebSocket client.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WsError {
    /// A socket error.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// The URL is not a `ws://host:port/path` URL with a numeric address.
    #[error("invalid WebSocket URL {0:?}: expected ws://IP:PORT/path")]
    Url(String),
    /// The server refused or botched the upgrade.
    #[error("WebSocket upgrade failed: {0}")]
    Handshake(String),
    /// The server broke the framing rules.
    #[error("WebSocket protocol violation: {0}")]
    Protocol(&'static str),
    /// The server closed the connection (close frame or end of stream).
    #[error("connection closed by the server{0}")]
    Closed(String),
    /// The operation did not finish in time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

/// A parsed `ws://IP:PORT/path?query` URL.
#[derive(Debug, Clone)]
pub(crate) struct WsUrl {
    /// The server's socket address.
    pub(crate) addr: SocketAddr,
    /// The `Host` header value.
    pub(crate) host: String,
    /// The request target (path and query).
    pub(crate) target: String,
}

impl WsUrl {
    /// Parses a URL such as `ws://127.0.0.1:7070/ws?enc=msgpack` (`localhost` is accepted).
    pub(crate) fn parse(url: &str) -> Result<Self, WsError> {
        let bad = || WsError::Url(url.to_owned());
        let rest = url.strip_prefix("ws://").ok_or_else(bad)?;
        let (authority, target) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].to_owned()),
            None => (rest, "/".to_owned()),
        };
        let addr: SocketAddr = match authority.parse() {
            Ok(a) => a,
            Err(_) => {
                let port = authority.strip_prefix("localhost:").ok_or_else(bad)?;
                SocketAddr::new(
                    IpAddr::from([127, 0, 0, 1]),
                    port.parse().map_err(|_| bad())?,
                )
            }
        };
        Ok(Self {
            addr,
            host: authority.to_owned(),
            target,
        })
    }

    /// The same server with another request target.
    pub(crate) fn with_target(&self, target: &str) -> Self {
        Self {
            addr: self.addr,
            host: self.host.clone(),
            target: target.to_owned(),
        }
    }
}

/// Opcode of a data message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Opcode {
    /// UTF-8 text.
    Text = 1,
    /// Binary.
    Binary = 2,
}

/// One client connection.
pub(crate) struct WsConn {
    stream: TcpStream,
    /// Read buffer; `rbuf[rpos..rlen]` holds received, unparsed bytes.
    rbuf: Vec<u8>,
    rpos: usize,
    rlen: usize,
    /// Frames queued for the next [`WsConn::flush`].
    wbuf: Vec<u8>,
    /// Reassembly of a fragmented message, with its opcode.
    frag: Vec<u8>,
    frag_op: Option<Opcode>,
    /// xorshift state for masking keys.
    rng: u64,
    /// Whether a close frame was received (and answered).
    closed: bool,
}

impl WsConn {
    /// Opens a TCP connection (bound to `source` first when given) and upgrades it.
    ///
    /// `read_capacity` is the initial size of the read buffer: small for idle connections, a
    /// few KiB for busy ones (it grows as needed up to 16 MiB).
    pub(crate) async fn connect(
        url: &WsUrl,
        source: Option<IpAddr>,
        read_capacity: usize,
        timeout: Duration,
    ) -> Result<Self, WsError> {
        match tokio::time::timeout(timeout, Self::connect_inner(url, source, read_capacity)).await {
            Ok(r) => r,
            Err(_) => Err(WsError::Timeout(timeout)),
        }
    }

    async fn connect_inner(
        url: &WsUrl,
        source: Option<IpAddr>,
        read_capacity: usize,
    ) -> Result<Self, WsError> {
        let socket = match url.addr {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        if let Some(ip) = source {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        let stream = socket.connect(url.addr).await?;
        stream.set_nodelay(true)?;
        let key = generate_key();
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n",
            url.target, url.host
        );
        let seed = seed_from(&key);
        let mut conn = Self {
            stream,
            rbuf: vec![0; read_capacity.max(256)],
            rpos: 0,
            rlen: 0,
            wbuf: Vec::with_capacity(256),
            frag: Vec::new(),
            frag_op: None,
            rng: seed,
            closed: false,
        };
        conn.stream.write_all(request.as_bytes()).await?;
        // Read the response head; bytes after it are the first frames and stay buffered.
        let head_end = loop {
            if let Some(i) = find(&conn.rbuf[..conn.rlen], b"\r\n\r\n") {
                break i + 4;
            }
            if conn.rlen >= MAX_HEAD {
                return Err(WsError::Handshake("response head too large".into()));
            }
            if conn.read_more().await? == 0 {
                return Err(WsError::Handshake(
                    "connection closed during upgrade".into(),
                ));
            }
        };
        check_response(&conn.rbuf[..head_end], &derive_accept_key(key.as_bytes()))?;
        conn.rpos = head_end;
        Ok(conn)
    }

    /// Reads whatever the socket has (at least one byte unless the stream ended).
    ///
    /// Returns the number of bytes read; 0 means the server closed the stream. Cancel-safe.
    pub(crate) async fn read_more(&mut self) -> Result<usize, WsError> {
        if self.rpos == self.rlen {
            self.rpos = 0;
            self.rlen = 0;
        } else if self.rpos > 0 && self.rbuf.len() - self.rlen < self.rbuf.len() / 4 {
            self.rbuf.copy_within(self.rpos..self.rlen, 0);
            self.rlen -= self.rpos;
            self.rpos = 0;
        }
        if self.rlen == self.rbuf.len() {
            // A frame larger than the buffer: grow (bounded by the frame size check in parse).
            let new_len = (self.rbuf.len() * 2).min(MAX_MESSAGE + 16);
            if new_len <= self.rbuf.len() {
                return Err(WsError::Protocol("frame larger than 16 MiB"));
            }
            self.rbuf.resize(new_len, 0);
        }
        let n = self.stream.read(&mut self.rbuf[self.rlen..]).await?;
        self.rlen += n;
        Ok(n)
    }

    /// Like [`WsConn::read_more`] but an end of stream is an error.
    pub(crate) async fn read_some(&mut self) -> Result<usize, WsError> {
        match self.read_more().await? {
            0 => Err(WsError::Closed(" (end of stream)".into())),
            n => Ok(n),
        }
    }

    /// Parses the next complete data message out of the read buffer.
    ///
    /// Pings are answered (a pong is queued; call [`WsConn::flush`] afterwards) and skipped. A
    /// close frame is answered and reported as [`WsError::Closed`]. `Ok(None)` means more bytes
    /// are needed.
    pub(crate) fn next_message(&mut self) -> Result<Option<(Opcode, &[u8])>, WsError> {
        loop {
            let buf = &self.rbuf[self.rpos..self.rlen];
            if buf.len() < 2 {
                return Ok(None);
            }
            let b0 = buf[0];
            let b1 = buf[1];
            if b0 & 0x70 != 0 {
                return Err(WsError::Protocol(
                    "reserved bits set (no extension was negotiated)",
                ));
            }
            if b1 & 0x80 != 0 {
                return Err(WsError::Protocol("server frames must not be masked"));
            }
            let fin = b0 & 0x80 != 0;
            let opcode = b0 & 0x0f;
            let (len, hdr) = match b1 & 0x7f {
                126 => {
                    if buf.len() < 4 {
                        return Ok(None);
                    }
                    (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
                }
                127 => {
                    if buf.len() < 10 {
                        return Ok(None);
                    }
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&buf[2..10]);
                    (u64::from_be_bytes(b), 10)
                }
                n => (u64::from(n), 2),
            };
            if len > MAX_MESSAGE as u64 {
                return Err(WsError::Protocol("frame larger than 16 MiB"));
            }
            // `len` fits in usize: it is at most MAX_MESSAGE.
            let len = len as usize;
            if buf.len() < hdr + len {
                return Ok(None);
            }
            let start = self.rpos + hdr;
            let end = start + len;
            self.rpos = end;
            match opcode {
                0x8 => {
                    let reason = close_reason(&self.rbuf[start..end]);
                    if !self.closed {
                        self.closed = true;
                        let code = if len >= 2 {
                            [self.rbuf[start], self.rbuf[start + 1]]
                        } else {
                            1000u16.to_be_bytes()
                        };
                        self.queue_parts(0x8, &[&code]);
                    }
                    return Err(WsError::Closed(reason));
                }
                0x9 => {
                    if len > 125 || !fin {
                        return Err(WsError::Protocol("invalid ping frame"));
                    }
                    let mut payload = [0u8; 125];
                    payload[..len].copy_from_slice(&self.rbuf[start..end]);
                    self.queue_parts(0xA, &[&payload[..len]]);
                }
                0xA => {}
                0x1 | 0x2 => {
                    if self.frag_op.is_some() {
                        return Err(WsError::Protocol("new message inside a fragmented one"));
                    }
                    let op = if opcode == 1 {
                        Opcode::Text
                    } else {
                        Opcode::Binary
                    };
                    if fin {
                        return Ok(Some((op, &self.rbuf[start..end])));
                    }
                    self.frag_op = Some(op);
                    self.frag.clear();
                    self.frag.extend_from_slice(&self.rbuf[start..end]);
                }
                0x0 => {
                    let Some(op) = self.frag_op else {
                        return Err(WsError::Protocol("continuation without a first fragment"));
                    };
                    if self.frag.len() + len > MAX_MESSAGE {
                        return Err(WsError::Protocol("message larger than 16 MiB"));
                    }
                    self.frag.extend_from_slice(&self.rbuf[start..end]);
                    if fin {
                        self.frag_op = None;
                        return Ok(Some((op, &self.frag)));
                    }
                }
                _ => return Err(WsError::Protocol("unknown opcode")),
            }
        }
    }

    /// Queues a data message made of the concatenation of `parts`, masked.
    pub(crate) fn queue(&mut self, op: Opcode, parts: &[&[u8]]) {
        self.queue_parts(op as u8, parts);
    }

    fn queue_parts(&mut self, opcode: u8, parts: &[&[u8]]) {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        self.wbuf.push(0x80 | opcode);
        if len < 126 {
            self.wbuf.push(0x80 | len as u8);
        } else if let Ok(l) = u16::try_from(len) {
            self.wbuf.push(0x80 | 126);
            self.wbuf.extend_from_slice(&l.to_be_bytes());
        } else {
            self.wbuf.push(0x80 | 127);
            self.wbuf.extend_from_slice(&(len as u64).to_be_bytes());
        }
        // xorshift64: a fresh, unpredictable-enough masking key per frame (RFC 6455 §5.3 asks
        // for one; servers do not check it).
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let mask = (self.rng as u32).to_ne_bytes();
        self.wbuf.extend_from_slice(&mask);
        let start = self.wbuf.len();
        for p in parts {
            self.wbuf.extend_from_slice(p);
        }
        apply_mask(&mut self.wbuf[start..], mask);
    }

    /// Writes every queued frame in one go.
    pub(crate) async fn flush(&mut self) -> Result<(), WsError> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf).await?;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// Sends a close frame (best effort) and shuts the socket down.
    pub(crate) async fn close(mut self) {
        if !self.closed {
            self.queue_parts(0x8, &[&1000u16.to_be_bytes()]);
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), async {
            let _ = self.flush().await;
            let _ = self.stream.shutdown().await;
        })
        .await;
    }
}

fn apply_mask(data: &mut [u8], mask: [u8; 4]) {
    let m = u32::from_ne_bytes(mask);
    let mut chunks = data.chunks_exact_mut(4);
    for c in &mut chunks {
        let v = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]) ^ m;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i];
    }
}

fn seed_from(key: &str) -> u64 {
    // FNV-1a of the random handshake key: a per-connection seed without another RNG.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h | 1
}

fn close_reason(payload: &[u8]) -> String {
    if payload.len() < 2 {
        return String::new();
    }
    let code = u16::from_be_bytes([payload[0], payload[1]]);
    let text = String::from_utf8_lossy(&payload[2..]);
    format!(" (close code {code}: {text})")
}

fn check_response(head: &[u8], expected_accept: &str) -> Result<(), WsError> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status = lines.next().unwrap_or_default();
    let mut parts = status.split(' ');
    let code = parts.nth(1).unwrap_or_default();
    if code != "101" {
        return Err(WsError::Handshake(format!(
            "expected `101 Switching Protocols`, got {:?}",
            status.chars().take(120).collect::<String>()
        )));
    }
    let mut accept_ok = false;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            let name = name.trim();
            let value = value.trim();
            if name.eq_ignore_ascii_case("sec-websocket-accept") {
                accept_ok = value == expected_accept;
            } else if name.eq_ignore_ascii_case("sec-websocket-extensions") && !value.is_empty() {
                return Err(WsError::Handshake(format!(
                    "server enabled an extension we did not ask for: {value}"
                )));
            }
        }
    }
    if !accept_ok {
        return Err(WsError::Handshake(
            "missing or wrong Sec-WebSocket-Accept".into(),
        ));
    }
    Ok(())
}

/// Position of `needle` in `hay`.
pub(crate) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let first = *needle.first()?;
    let last_start = hay.len().checked_sub(needle.len())?;
    let mut i = 0;
    while i <= last_start {
        match hay[i..=last_start].iter().position(|&b| b == first) {
            Some(p) => {
                let at = i + p;
                if &hay[at..at + needle.len()] == needle {
                    return Some(at);
                }
                i = at + 1;
            }
            None => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_roundtrip() {
        let mut data: Vec<u8> = (0u8..23).collect();
        let orig = data.clone();
        apply_mask(&mut data, [1, 2, 3, 4]);
        assert_eq!(data[0], 1);
        assert_eq!(data[5], 5 ^ 2);
        apply_mask(&mut data, [1, 2, 3, 4]);
        assert_eq!(data, orig);
    }

    #[test]
    fn find_works() {
        assert_eq!(find(b"abcabd", b"abd"), Some(3));
        assert_eq!(find(b"ab", b"abd"), None);
        assert_eq!(find(b"xx\r\n\r\n", b"\r\n\r\n"), Some(2));
        assert_eq!(find(b"", b"a"), None);
    }

    #[test]
    fn urls() {
        let u = WsUrl::parse("ws://127.0.0.1:7070/ws?enc=msgpack").expect("valid url");
        assert_eq!(u.addr.port(), 7070);
        assert_eq!(u.target, "/ws?enc=msgpack");
        let u = WsUrl::parse("ws://localhost:80").expect("valid url");
        assert_eq!(u.target, "/");
        assert!(WsUrl::parse("http://127.0.0.1:1/").is_err());
        assert!(WsUrl::parse("ws://example.com:80/").is_err());
    }

    #[test]
    fn response_check() {
        let ok = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: abc\r\n\r\n";
        assert!(check_response(ok, "abc").is_ok());
        assert!(check_response(ok, "abd").is_err());
        assert!(check_response(b"HTTP/1.1 404 Not Found\r\n\r\n", "abc").is_err());
    }
}
