//! Byte streams to other clients: [`Stream`] (a tokio `AsyncRead + AsyncWrite`), and the
//! streams others open to this client ([`IncomingStreams`], [`IncomingStream`]).
//!
//! ```text
//!   Stream / IncomingStream ──lock──▶ StreamShared { buffers, credit, ends } ◀──lock── actor
//!             │ poke (unbounded, at most one queued per stream)                 ▲
//!             └─────────────────────────────────────────────────────────────────┘
//! ```
//!
//! The application side and the actor share one small state per stream under a mutex. A
//! write copies into the stream's send buffer (at most [`ClientOptions::stream_send_buffer`]
//! bytes) and pokes the actor, which turns buffered bytes into data frames as far as the
//! peer's credit allows. Bytes that arrive are queued (never more than the window this side
//! granted, [`ClientOptions::stream_window`]) until the application reads them; once it has
//! read half a window the actor grants that much credit again. So a writer is held back by
//! its own window when the reader is slow, and the actor never waits for a stream: one
//! stalled stream does not slow the others or the messages on the connection.
//!
//! Ending: `shutdown()` sends `stream_end` after the buffered bytes (the peer reads EOF);
//! [`Stream::reset`] aborts both directions with a reason. Dropping a stream that has not
//! finished in both directions resets it (reason `dropped`); dropping an [`IncomingStream`]
//! without answering rejects it. When the connection drops, every stream fails with
//! `connection_lost`; when the peer disconnects, with `peer_left`.
//!
//! [`ClientOptions::stream_send_buffer`]: crate::ClientOptions::stream_send_buffer
//! [`ClientOptions::stream_window`]: crate::ClientOptions::stream_window

use std::collections::{HashMap, VecDeque};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::{Buf as _, Bytes, BytesMut};
use parking_lot::Mutex;
use peermesh_proto::stream::{DataFrame, RecvWindow, DATA_HEADER_LEN};
use peermesh_proto::{ClientFrame, ClientId, ErrorCode};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;

/// Largest data frame payload the client sends.
pub(crate) const MAX_CHUNK: usize = 64 << 10;

/// Why a stream was reset, as seen by this side.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stream reset ({code}): {reason}")]
pub struct StreamReset {
    /// `peer_reset` (the other end reset it, `reason` is its reason), `peer_left`,
    /// `flow_control`, `stream_timeout`, …, or `unknown` for local causes (`reason` says).
    pub code: ErrorCode,
    /// The other end's reason, or a sentence.
    pub reason: String,
}

#[derive(Debug)]
struct Inner {
    recv: VecDeque<Bytes>,
    window: RecvWindow,
    recv_eof: bool,
    send_buf: BytesMut,
    send_cap: usize,
    credit: u64,
    /// The application asked for `stream_end`.
    shutdown: bool,
    end_sent: bool,
    reset: Option<StreamReset>,
    /// A reset (or reject) the actor must send.
    reset_to_send: Option<String>,
    /// Incoming: the application accepted; the actor must send `stream_accept`.
    accept_to_send: bool,
    /// Incoming and not yet answered.
    offered: bool,
    credit_due: u64,
    poked: bool,
    read_waker: Option<Waker>,
    write_waker: Option<Waker>,
}

impl Inner {
    fn wake_all(&mut self) {
        if let Some(w) = self.read_waker.take() {
            w.wake();
        }
        if let Some(w) = self.write_waker.take() {
            w.wake();
        }
    }

    fn finished(&self) -> bool {
        self.reset.is_some() || (self.end_sent && self.recv_eof)
    }

    fn fail(&mut self, code: ErrorCode, reason: impl Into<String>) {
        if self.reset.is_none() {
            self.reset = Some(StreamReset {
                code,
                reason: reason.into(),
            });
        }
        self.send_buf.clear();
        self.wake_all();
    }
}

/// State shared by a stream's handle and the actor.
#[derive(Debug)]
pub(crate) struct StreamShared {
    id: u64,
    peer: ClientId,
    pokes: mpsc::UnboundedSender<Arc<StreamShared>>,
    inner: Mutex<Inner>,
}

impl StreamShared {
    pub(crate) fn new(
        id: u64,
        peer: ClientId,
        window: u64,
        credit: u64,
        send_cap: usize,
        offered: bool,
        pokes: mpsc::UnboundedSender<Arc<StreamShared>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            id,
            peer,
            pokes,
            inner: Mutex::new(Inner {
                recv: VecDeque::new(),
                window: RecvWindow::new(window),
                recv_eof: false,
                send_buf: BytesMut::new(),
                send_cap: send_cap.max(1),
                credit,
                shutdown: false,
                end_sent: false,
                reset: None,
                reset_to_send: None,
                accept_to_send: false,
                offered,
                credit_due: 0,
                poked: false,
                read_waker: None,
                write_waker: None,
            }),
        })
    }

    /// Asks the actor to look at this stream (at most one poke is queued).
    fn poke(self: &Arc<Self>, inner: &mut Inner) {
        if !inner.poked {
            inner.poked = true;
            // The actor has stopped: the stream was failed with everything else.
            let _ = self.pokes.send(self.clone());
        }
    }
}

fn io_error(r: &StreamReset) -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, r.clone())
}

/// A byte stream to another client, through the hub: `AsyncRead + AsyncWrite`.
///
/// `shutdown()` ends this side's direction (the peer reads EOF once it has read everything);
/// reading returns EOF once the peer has ended its direction. A reset (by either side, or
/// because the peer or the connection left) makes reads and writes fail with
/// [`io::ErrorKind::ConnectionReset`] carrying a [`StreamReset`]; bytes that arrived before
/// are still read first. Dropping a stream that has not finished both directions resets it.
pub struct Stream {
    shared: Arc<StreamShared>,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("id", &self.shared.id)
            .field("peer", &self.shared.peer)
            .finish()
    }
}

impl Stream {
    pub(crate) fn new(shared: Arc<StreamShared>) -> Self {
        Self { shared }
    }

    /// The stream's id on this connection.
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// The client at the other end.
    pub fn peer(&self) -> &ClientId {
        &self.shared.peer
    }

    /// Aborts both directions; the peer sees a reset with code `peer_reset` and `reason`
    /// (cut to 1,024 bytes). Buffered bytes that were not sent are discarded.
    pub fn reset(&self, reason: impl Into<String>) {
        let mut reason: String = reason.into();
        if reason.len() > peermesh_proto::stream::MAX_REASON_LEN {
            let mut cut = peermesh_proto::stream::MAX_REASON_LEN;
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            reason.truncate(cut);
        }
        let mut inner = self.shared.inner.lock();
        if inner.finished() {
            return;
        }
        inner.fail(ErrorCode::Unknown, format!("reset by this side: {reason}"));
        inner.reset_to_send = Some(reason);
        self.shared.poke(&mut inner);
    }

    /// Why the stream was reset, if it was.
    pub fn reset_reason(&self) -> Option<StreamReset> {
        self.shared.inner.lock().reset.clone()
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let mut inner = self.shared.inner.lock();
        if inner.finished() {
            return;
        }
        inner.fail(ErrorCode::Unknown, "the stream handle was dropped");
        inner.reset_to_send = Some("dropped".into());
        self.shared.poke(&mut inner);
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let shared = &self.shared;
        let mut inner = shared.inner.lock();
        if !inner.recv.is_empty() {
            let mut n = 0;
            while buf.remaining() > 0 {
                let Some(front) = inner.recv.front_mut() else {
                    break;
                };
                let take = front.len().min(buf.remaining());
                buf.put_slice(&front[..take]);
                front.advance(take);
                n += take;
                if front.is_empty() {
                    inner.recv.pop_front();
                }
            }
            if let Some(grant) = inner.window.on_read(n as u64) {
                inner.credit_due += grant;
                shared.poke(&mut inner);
            }
            return Poll::Ready(Ok(()));
        }
        if inner.recv_eof {
            return Poll::Ready(Ok(()));
        }
        if let Some(r) = &inner.reset {
            return Poll::Ready(Err(io_error(r)));
        }
        inner.read_waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let shared = &self.shared;
        let mut inner = shared.inner.lock();
        if let Some(r) = &inner.reset {
            return Poll::Ready(Err(io_error(r)));
        }
        if inner.shutdown {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the stream's write side was shut down",
            )));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let room = inner.send_cap.saturating_sub(inner.send_buf.len());
        if room == 0 {
            inner.write_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = room.min(buf.len());
        inner.send_buf.extend_from_slice(&buf[..n]);
        shared.poke(&mut inner);
        Poll::Ready(Ok(n))
    }

    /// Resolves once every byte written so far has been handed to the connection.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut inner = self.shared.inner.lock();
        if let Some(r) = &inner.reset {
            return Poll::Ready(Err(io_error(r)));
        }
        if inner.send_buf.is_empty() {
            return Poll::Ready(Ok(()));
        }
        inner.write_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Ends this side's direction once the buffered bytes are sent.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let shared = &self.shared;
        let mut inner = shared.inner.lock();
        if inner.end_sent {
            return Poll::Ready(Ok(()));
        }
        if let Some(r) = &inner.reset {
            return Poll::Ready(Err(io_error(r)));
        }
        if !inner.shutdown {
            inner.shutdown = true;
            shared.poke(&mut inner);
        }
        inner.write_waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// A stream another client wants to open with this one: [`accept`](Self::accept) or
/// [`reject`](Self::reject) it. Dropping it rejects it.
pub struct IncomingStream {
    shared: Option<Arc<StreamShared>>,
    meta: Option<serde_json::Value>,
}

impl std::fmt::Debug for IncomingStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IncomingStream")
            .field("from", &self.from())
            .field("meta", &self.meta)
            .finish()
    }
}

impl IncomingStream {
    /// The client that opens the stream.
    pub fn from(&self) -> Option<&ClientId> {
        self.shared.as_ref().map(|s| &s.peer)
    }

    /// The opener's metadata.
    pub fn meta(&self) -> Option<&serde_json::Value> {
        self.meta.as_ref()
    }

    /// Accepts the stream. Writing may start at once (bytes wait for the accept to go out).
    pub fn accept(mut self) -> Stream {
        let shared = self
            .shared
            .take()
            .unwrap_or_else(|| unreachable!("an IncomingStream holds its state until answered"));
        {
            let mut inner = shared.inner.lock();
            if inner.reset.is_none() {
                inner.offered = false;
                inner.accept_to_send = true;
                shared.poke(&mut inner);
            }
        }
        Stream::new(shared)
    }

    /// Rejects the stream; the opener's `open_stream` fails with `stream_rejected` and
    /// `reason` (cut to 1,024 bytes).
    pub fn reject(mut self, reason: impl Into<String>) {
        if let Some(shared) = self.shared.take() {
            reject(&shared, reason.into());
        }
    }
}

fn reject(shared: &Arc<StreamShared>, mut reason: String) {
    if reason.len() > peermesh_proto::stream::MAX_REASON_LEN {
        let mut cut = peermesh_proto::stream::MAX_REASON_LEN;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
    }
    let mut inner = shared.inner.lock();
    if inner.reset.is_none() {
        inner.fail(ErrorCode::StreamRejected, "rejected by this side");
        inner.reset_to_send = Some(reason);
        shared.poke(&mut inner);
    }
}

impl Drop for IncomingStream {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            reject(&shared, "not accepted".into());
        }
    }
}

/// The streams other clients open to this one, from
/// [`Client::incoming_streams`](crate::Client::incoming_streams).
#[derive(Debug)]
pub struct IncomingStreams {
    rx: mpsc::Receiver<IncomingStream>,
}

impl IncomingStreams {
    pub(crate) fn new(rx: mpsc::Receiver<IncomingStream>) -> Self {
        Self { rx }
    }

    /// The next stream request; `None` once the client stopped or another
    /// `incoming_streams` replaced this one.
    pub async fn recv(&mut self) -> Option<IncomingStream> {
        self.rx.recv().await
    }
}

/// The actor's side: the streams of the current connection.
pub(crate) struct Streams {
    map: HashMap<u64, Arc<StreamShared>>,
    pub(crate) pokes_tx: mpsc::UnboundedSender<Arc<StreamShared>>,
    pub(crate) pokes_rx: mpsc::UnboundedReceiver<Arc<StreamShared>>,
    /// Streams with work left after their turn.
    pub(crate) ready: VecDeque<Arc<StreamShared>>,
    pub(crate) listener: Arc<Mutex<Option<mpsc::Sender<IncomingStream>>>>,
    pub(crate) window: u64,
    pub(crate) send_cap: usize,
}

/// What the actor must write for a stream.
pub(crate) enum Out {
    Frame(ClientFrame),
    Data(Bytes),
}

impl Streams {
    pub(crate) fn new(
        window: u64,
        send_cap: usize,
        listener: Arc<Mutex<Option<mpsc::Sender<IncomingStream>>>>,
    ) -> Self {
        let (pokes_tx, pokes_rx) = mpsc::unbounded_channel();
        Self {
            map: HashMap::new(),
            pokes_tx,
            pokes_rx,
            ready: VecDeque::new(),
            listener,
            window,
            send_cap,
        }
    }

    /// Number of live streams.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// A stream this client opened was accepted.
    pub(crate) fn opened(&mut self, id: u64, peer: ClientId, credit: u64) -> Stream {
        let shared = StreamShared::new(
            id,
            peer,
            self.window,
            credit,
            self.send_cap,
            false,
            self.pokes_tx.clone(),
        );
        self.map.insert(id, shared.clone());
        Stream::new(shared)
    }

    /// Another client offers a stream; returns the reject to send when nobody listens.
    pub(crate) fn offered(&mut self, r: peermesh_proto::StreamRequest) -> Option<ClientFrame> {
        let listener = self.listener.lock().clone();
        let Some(listener) = listener else {
            return Some(ClientFrame::StreamReject {
                stream: r.stream,
                reason: "this client does not accept streams".into(),
            });
        };
        let shared = StreamShared::new(
            r.stream,
            r.from,
            self.window,
            r.window,
            self.send_cap,
            true,
            self.pokes_tx.clone(),
        );
        self.map.insert(r.stream, shared.clone());
        let incoming = IncomingStream {
            shared: Some(shared.clone()),
            meta: r.meta,
        };
        match listener.try_send(incoming) {
            Ok(()) => None,
            Err(e) => {
                let reason = match &e {
                    mpsc::error::TrySendError::Full(_) => {
                        tracing::warn!(stream = r.stream, "incoming stream refused: no room");
                        "the client has too many unanswered stream requests"
                    }
                    mpsc::error::TrySendError::Closed(_) => "this client does not accept streams",
                };
                // Answered here: the request must not also reject itself when dropped.
                let mut refused = e.into_inner();
                refused.shared = None;
                self.map.remove(&r.stream);
                Some(ClientFrame::StreamReject {
                    stream: r.stream,
                    reason: reason.into(),
                })
            }
        }
    }

    pub(crate) fn on_data(&mut self, frame: DataFrame) {
        let Some(s) = self.map.get(&frame.stream) else {
            return;
        };
        let mut inner = s.inner.lock();
        if inner.reset.is_some() || inner.recv_eof {
            return;
        }
        if let Err(e) = inner.window.on_data(frame.data.len() as u64) {
            tracing::warn!(stream = frame.stream, error = %e, "the hub sent beyond our window");
        }
        inner.recv.push_back(frame.data);
        if let Some(w) = inner.read_waker.take() {
            w.wake();
        }
    }

    pub(crate) fn on_credit(&mut self, stream: u64, bytes: u64) {
        if let Some(s) = self.map.get(&stream) {
            let mut inner = s.inner.lock();
            inner.credit = inner.credit.saturating_add(bytes);
            if !inner.send_buf.is_empty() || inner.shutdown {
                s.poke(&mut inner);
            }
        }
    }

    pub(crate) fn on_end(&mut self, stream: u64) {
        let Some(s) = self.map.get(&stream) else {
            return;
        };
        let done = {
            let mut inner = s.inner.lock();
            inner.recv_eof = true;
            if let Some(w) = inner.read_waker.take() {
                w.wake();
            }
            inner.finished()
        };
        if done {
            self.map.remove(&stream);
        }
    }

    pub(crate) fn on_reset(&mut self, stream: u64, code: ErrorCode, reason: String) {
        if let Some(s) = self.map.remove(&stream) {
            s.inner.lock().fail(code, reason);
        }
    }

    /// Fails every stream (the connection dropped or the client closed).
    pub(crate) fn fail_all(&mut self, reason: &str) {
        for (_, s) in self.map.drain() {
            s.inner.lock().fail(ErrorCode::Unknown, reason);
        }
        self.ready.clear();
    }

    /// Does what a poked stream needs: at most `budget` data frames, then its end, credit,
    /// accept or reset. Returns whether it has more to send.
    pub(crate) fn process(
        &mut self,
        s: &Arc<StreamShared>,
        max_chunk: usize,
        budget: usize,
        out: &mut impl FnMut(Out),
    ) -> bool {
        let live = self.map.get(&s.id).is_some_and(|m| Arc::ptr_eq(m, s));
        let mut inner = s.inner.lock();
        inner.poked = false;
        if !live {
            return false;
        }
        if let Some(reason) = inner.reset_to_send.take() {
            let frame = if inner.offered {
                ClientFrame::StreamReject {
                    stream: s.id,
                    reason,
                }
            } else {
                ClientFrame::StreamReset {
                    stream: s.id,
                    reason,
                }
            };
            out(Out::Frame(frame));
            drop(inner);
            self.map.remove(&s.id);
            return false;
        }
        if inner.offered {
            return false;
        }
        if std::mem::take(&mut inner.accept_to_send) {
            out(Out::Frame(ClientFrame::StreamAccept {
                stream: s.id,
                window: inner.window.window(),
            }));
        }
        let mut sent = 0;
        while sent < budget && inner.credit > 0 && !inner.send_buf.is_empty() {
            let n = (inner.credit as usize)
                .min(inner.send_buf.len())
                .min(max_chunk);
            let mut frame = BytesMut::with_capacity(DATA_HEADER_LEN + n);
            DataFrame::put_header(&mut frame, 0, s.id);
            frame.extend_from_slice(&inner.send_buf[..n]);
            inner.send_buf.advance(n);
            inner.credit -= n as u64;
            out(Out::Data(frame.freeze()));
            sent += 1;
        }
        if sent > 0 {
            if let Some(w) = inner.write_waker.take() {
                w.wake();
            }
        }
        if inner.shutdown && inner.send_buf.is_empty() && !inner.end_sent {
            inner.end_sent = true;
            out(Out::Frame(ClientFrame::StreamEnd { stream: s.id }));
            if let Some(w) = inner.write_waker.take() {
                w.wake();
            }
        }
        let credit = std::mem::take(&mut inner.credit_due);
        if credit > 0 && !inner.recv_eof {
            out(Out::Frame(ClientFrame::StreamCredit {
                stream: s.id,
                bytes: credit,
            }));
        }
        let more = inner.credit > 0 && !inner.send_buf.is_empty();
        let done = inner.finished();
        drop(inner);
        if done {
            self.map.remove(&s.id);
        }
        more
    }
}
