//! The async shell around [`Decoder`](super::codec::Decoder): a socket that holds no buffer
//! while it waits.
//!
//! Reads go into a buffer of the worker thread (`read_chunk` bytes, made once per thread);
//! only bytes of a frame that has not fully arrived are copied into the connection's own read
//! buffer, which is freed as soon as it is empty. Writes are framed into the connection's write
//! buffer and written out past `write_threshold` bytes or on `flush`; [`WebSocket::release`]
//! frees it once it is empty. An idle connection therefore holds no read or write buffer at
//! all, only this struct. Every await point is cancel-safe: what was read stays decoded or
//! buffered, what was framed stays queued.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::Poll;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::codec::{encode, frame_len, CloseFrame, Decoder, Message, ProtocolError};

/// The upgraded connection of a hub.
/// Missing bytes of a frame from which the socket reads straight into the frame's buffer
/// rather than through the thread's buffer.
const DIRECT_READ: usize = 4096;

pub(crate) type HubIo = hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>;

/// Why a socket failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WsError {
    /// The client broke RFC 6455.
    #[error("WebSocket protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    /// The connection failed.
    #[error("connection error: {0}")]
    Io(#[from] io::Error),
    /// A data frame after a close frame was sent.
    #[error("the WebSocket is closed")]
    Closed,
}

thread_local! {
    /// The thread's read buffer: every socket polled on this thread reads into it.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// What the bytes already read hold.
enum Step {
    Message(Message),
    Failed(WsError),
    /// The connection ended.
    Ended,
    /// A frame is incomplete: read more.
    More,
}

/// Limits of one socket.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Largest message accepted (also the largest frame).
    pub(crate) max_message: usize,
    /// Bytes read at most per read call, into the thread's buffer.
    pub(crate) read_chunk: usize,
    /// Framed bytes beyond which `feed` writes out before returning.
    pub(crate) write_threshold: usize,
}

/// One server-side WebSocket connection.
#[derive(Debug)]
pub(crate) struct WebSocket<S = HubIo> {
    io: S,
    decoder: Decoder,
    /// Bytes of a frame that has not fully arrived (empty, and unallocated, otherwise).
    rbuf: BytesMut,
    /// Framed bytes not yet written; `wpos` of them already were.
    wbuf: Vec<u8>,
    wpos: usize,
    read_chunk: u32,
    write_threshold: u32,
    /// The close code to send instead of the caller's, after a protocol error.
    failed: Option<u16>,
    close_sent: bool,
    /// No more messages: the close frame, a protocol error or the end of the stream came.
    done: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> WebSocket<S> {
    /// A socket over an upgraded connection.
    pub(crate) fn new(io: S, limits: Limits) -> Self {
        Self {
            io,
            decoder: Decoder::new(limits.max_message),
            rbuf: BytesMut::new(),
            wbuf: Vec::new(),
            wpos: 0,
            read_chunk: limits.read_chunk.clamp(
                crate::config::MIN_WS_READ_BUFFER,
                crate::config::MAX_WS_READ_BUFFER,
            ) as u32,
            write_threshold: limits.write_threshold.min(u32::MAX as usize) as u32,
            failed: None,
            close_sent: false,
            done: false,
        }
    }

    /// The next message; `None` once the connection ended (after a close frame, which is
    /// answered, or the end of the stream). Pings are answered before they are returned.
    /// Cancel-safe.
    pub(crate) async fn recv(&mut self) -> Option<Result<Message, WsError>> {
        loop {
            match self.buffered() {
                Step::Message(m @ (Message::Ping(_) | Message::Close(_))) => {
                    // Boxed: the answer's writing state stays out of the future every idle
                    // connection holds.
                    return Some(Box::pin(self.answered(m)).await);
                }
                Step::Message(m) => return Some(Ok(m)),
                Step::Failed(e) => return Some(Err(e)),
                Step::Ended => return None,
                Step::More => {}
            }
            match self.read_some().await {
                Ok(0) => {
                    self.done = true;
                    return None;
                }
                Ok(_) => {}
                Err(e) => {
                    self.done = true;
                    return Some(Err(e.into()));
                }
            }
        }
    }

    /// The next message among the bytes already read.
    fn buffered(&mut self) -> Step {
        loop {
            if self.done {
                return Step::Ended;
            }
            if self.rbuf.is_empty() {
                return Step::More;
            }
            match self.decoder.decode(&self.rbuf) {
                Ok(d) if d.consumed > 0 => {
                    let _ = self.rbuf.split_to(d.consumed);
                    if self.rbuf.is_empty() {
                        self.rbuf = BytesMut::new();
                    }
                    if let Some(m) = d.message {
                        return Step::Message(m);
                    }
                }
                Ok(_) => return Step::More,
                Err(e) => return Step::Failed(self.fail(e)),
            }
        }
    }

    /// `m` once it is answered.
    async fn answered(&mut self, m: Message) -> Result<Message, WsError> {
        self.answer(&m).await?;
        Ok(m)
    }

    /// Answers a ping or a close frame.
    async fn answer(&mut self, m: &Message) -> Result<(), WsError> {
        match m {
            Message::Ping(p) => {
                encode(&Message::Pong(p.clone()), &mut self.wbuf);
                self.flush().await?;
            }
            Message::Close(c) => {
                self.done = true;
                if !self.close_sent {
                    // Echo the code (RFC 6455 §5.5.1); the caller sees the close and ends.
                    let echo = c.as_ref().map(|c| CloseFrame {
                        code: c.code,
                        reason: String::new(),
                    });
                    self.close_sent = true;
                    encode(&Message::Close(echo), &mut self.wbuf);
                    let _ = self.flush().await;
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn fail(&mut self, e: ProtocolError) -> WsError {
        self.done = true;
        self.failed = Some(e.close_code());
        self.rbuf = BytesMut::new();
        e.into()
    }

    /// Reads once: into the connection's buffer when it holds the start of a large frame
    /// (sized once for the whole frame, so its bytes are not copied on the way), else into the
    /// thread's buffer, keeping in the connection's buffer only what is not decoded yet.
    async fn read_some(&mut self) -> io::Result<usize> {
        let chunk = self.read_chunk as usize;
        // A frame's header and mask key take at most 14 bytes.
        let max_frame = self.decoder.max_message().saturating_add(14);
        if let Some(total) = frame_len(&self.rbuf, max_frame) {
            let missing = total.saturating_sub(self.rbuf.len());
            if missing >= DIRECT_READ {
                self.rbuf.reserve(missing);
                return poll_fn(|cx| {
                    tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rbuf)
                })
                .await;
            }
        }
        poll_fn(|cx| {
            SCRATCH.with(|s| {
                let mut s = s.borrow_mut();
                if s.len() < chunk {
                    s.resize(chunk, 0);
                }
                let mut buf = ReadBuf::new(&mut s[..chunk]);
                match Pin::new(&mut self.io).poll_read(cx, &mut buf) {
                    Poll::Ready(Ok(())) => {
                        let filled = buf.filled();
                        if self.rbuf.is_empty() {
                            // The start of a frame larger than this read: make room for all
                            // of it now, so its next bytes are read in place.
                            if let Some(total) = frame_len(filled, max_frame) {
                                if total > filled.len() {
                                    self.rbuf.reserve(total);
                                }
                            }
                        }
                        self.rbuf.extend_from_slice(filled);
                        Poll::Ready(Ok(filled.len()))
                    }
                    Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                    Poll::Pending => Poll::Pending,
                }
            })
        })
        .await
    }

    /// Frames `message` into the write buffer, and writes out if the buffer is past its
    /// threshold.
    pub(crate) async fn feed(&mut self, message: Message) -> Result<(), WsError> {
        self.queue(message)?;
        if self.wbuf.len() - self.wpos > self.write_threshold as usize {
            self.write_out().await?;
        }
        Ok(())
    }

    /// Frames `message` into the write buffer without writing.
    pub(crate) fn queue(&mut self, message: Message) -> Result<(), WsError> {
        if self.close_sent {
            return Err(WsError::Closed);
        }
        let message = match message {
            Message::Close(c) => {
                self.close_sent = true;
                match (self.failed, c) {
                    (Some(code), Some(c)) => Message::Close(Some(CloseFrame { code, ..c })),
                    (Some(code), None) => Message::Close(Some(CloseFrame {
                        code,
                        reason: String::new(),
                    })),
                    (None, c) => Message::Close(c),
                }
            }
            m => m,
        };
        encode(&message, &mut self.wbuf);
        Ok(())
    }

    /// Writes every framed byte and flushes the connection.
    pub(crate) async fn flush(&mut self) -> Result<(), WsError> {
        self.write_out().await?;
        self.io.flush().await?;
        Ok(())
    }

    /// `feed` then `flush`.
    pub(crate) async fn send(&mut self, message: Message) -> Result<(), WsError> {
        self.queue(message)?;
        self.flush().await
    }

    /// Sends a close frame (unless one was sent), flushes and shuts the connection down.
    pub(crate) async fn close(&mut self) -> Result<(), WsError> {
        if !self.close_sent {
            self.queue(Message::Close(None))?;
        }
        self.flush().await?;
        self.io.shutdown().await?;
        Ok(())
    }

    /// Frees the buffers if they hold nothing (an idle connection keeps neither).
    pub(crate) fn release(&mut self) {
        if self.wpos == self.wbuf.len() {
            self.wbuf = Vec::new();
            self.wpos = 0;
        }
        if self.rbuf.is_empty() {
            self.rbuf = BytesMut::new();
        }
    }

    async fn write_out(&mut self) -> io::Result<()> {
        while self.wpos < self.wbuf.len() {
            let n = self.io.write(&self.wbuf[self.wpos..]).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.wpos += n;
        }
        self.wbuf.clear();
        self.wpos = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::codec::client_frame;
    use super::*;
    use bytes::Bytes;
    use tokio::io::{AsyncReadExt, DuplexStream};

    const KEY: [u8; 4] = [1, 2, 3, 4];

    fn pair() -> (WebSocket<DuplexStream>, DuplexStream) {
        let (a, b) = tokio::io::duplex(1 << 16);
        let limits = Limits {
            max_message: 1 << 16,
            read_chunk: 256,
            write_threshold: 1024,
        };
        (WebSocket::new(a, limits), b)
    }

    #[tokio::test]
    async fn messages_split_over_reads_arrive_whole_and_the_buffer_is_freed() {
        let (mut ws, mut peer) = pair();
        let mut wire = client_frame(true, 0x1, KEY, b"hello");
        wire.extend(client_frame(true, 0x2, KEY, &[7; 1000]));
        // Byte by byte for the first frame, then the rest at once.
        for b in &wire[..5] {
            peer.write_all(&[*b]).await.expect("write");
            tokio::task::yield_now().await;
        }
        peer.write_all(&wire[5..]).await.expect("write");
        let m = ws.recv().await.expect("a message").expect("valid");
        assert_eq!(m, Message::Text(Bytes::from_static(b"hello")));
        let m = ws.recv().await.expect("a message").expect("valid");
        assert_eq!(m, Message::Binary(Bytes::from(vec![7; 1000])));
        assert_eq!(
            ws.rbuf.capacity(),
            0,
            "nothing held once every frame is read"
        );
    }

    #[tokio::test]
    async fn a_ping_is_answered_with_a_pong_of_the_same_payload() {
        let (mut ws, mut peer) = pair();
        peer.write_all(&client_frame(true, 0x9, KEY, b"abc"))
            .await
            .expect("write");
        let m = ws.recv().await.expect("a message").expect("valid");
        assert_eq!(m, Message::Ping(Bytes::from_static(b"abc")));
        let mut pong = [0u8; 5];
        peer.read_exact(&mut pong).await.expect("pong");
        assert_eq!(pong, [0x8A, 3, b'a', b'b', b'c']);
    }

    #[tokio::test]
    async fn a_close_is_echoed_once_and_ends_the_stream() {
        let (mut ws, mut peer) = pair();
        let mut payload = 1000u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"bye");
        peer.write_all(&client_frame(true, 0x8, KEY, &payload))
            .await
            .expect("write");
        let m = ws.recv().await.expect("a message").expect("valid");
        assert!(matches!(
            m,
            Message::Close(Some(CloseFrame { code: 1000, .. }))
        ));
        assert!(ws.recv().await.is_none());
        let mut echo = [0u8; 4];
        peer.read_exact(&mut echo).await.expect("echo");
        assert_eq!(echo, [0x88, 2, 0x03, 0xE8]);
        assert!(matches!(
            ws.send(Message::Text(Bytes::from_static(b"late"))).await,
            Err(WsError::Closed)
        ));
    }

    #[tokio::test]
    async fn a_protocol_error_sets_the_code_of_the_close_frame() {
        let (mut ws, mut peer) = pair();
        peer.write_all(&[0x81, 0x01, b'x']).await.expect("write");
        let e = ws.recv().await.expect("an error").expect_err("unmasked");
        assert!(matches!(e, WsError::Protocol(ProtocolError::Unmasked)));
        assert!(ws.recv().await.is_none());
        ws.send(Message::Text(Bytes::from_static(b"{}")))
            .await
            .expect("an error frame can still go out");
        ws.send(Message::Close(Some(CloseFrame {
            code: 1008,
            reason: "malformed".into(),
        })))
        .await
        .expect("close");
        let mut out = vec![0u8; 4 + 2 + 2 + 9];
        peer.read_exact(&mut out).await.expect("frames");
        assert_eq!(&out[4..8], &[0x88, 11, 0x03, 0xEA], "close code 1002");
    }

    #[tokio::test]
    async fn feed_writes_out_past_the_threshold_and_release_frees_the_buffer() {
        let (mut ws, mut peer) = pair();
        ws.feed(Message::Binary(Bytes::from(vec![1; 100])))
            .await
            .expect("feed");
        assert_eq!(ws.wbuf.len(), 102, "below the threshold: kept");
        ws.feed(Message::Binary(Bytes::from(vec![2; 2000])))
            .await
            .expect("feed");
        assert_eq!(ws.wbuf.len(), 0, "past the threshold: written");
        let mut got = vec![0u8; 102 + 2004];
        peer.read_exact(&mut got).await.expect("read");
        ws.release();
        assert_eq!(ws.wbuf.capacity(), 0);
    }

    #[tokio::test]
    async fn the_end_of_the_stream_mid_frame_ends_the_socket() {
        let (mut ws, mut peer) = pair();
        let f = client_frame(true, 0x2, KEY, &[0; 50]);
        peer.write_all(&f[..20]).await.expect("write");
        drop(peer);
        assert!(ws.recv().await.is_none());
    }
}
