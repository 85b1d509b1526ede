//! Streams between two clients: the per-connection table and the items connections exchange.
//!
//! ```text
//!   alice's task                               bob's task
//!   table: a ─► (bob's conn, b, link, side 0)   table: b ─► (alice's conn, a, link, side 1)
//!        stream_open ──► Incoming{b} ─────────────► stream_request{b}
//!   stream_accepted{a} ◄─ Accepted{a} ◄──────────── stream_accept{b}
//!   binary data on a ───► Data(b) ─────────────────► binary data on b
//!   stream_credit{a} ◄─── Credit{a} ◄─ link.pending ◄ stream_credit{b}
//!   stream_end{a} ──────► End{b} ──────────────────► stream_end{b}
//!   stream_reset / leaving ► Reset{b} ─────────────► stream_reset{b}
//! ```
//!
//! Each connection task owns its end of every stream (credit, half-close, state) and is the
//! only one that changes it. What one end tells the other travels as a [`StreamItem`] in the
//! other connection's mailbox, in the same FIFO as its frames, so data, end and reset arrive in
//! the order they were sent and the receiving task updates its own end as it writes them.
//! Nothing on the data path takes a lock of its own or allocates: a data frame is checked
//! against the sender's credit, its bytes are shared (not copied) into a [`StreamItem::Data`],
//! and the receiver's writer prepends the header.
//!
//! Stream ids are allocated from each connection's own counter (`ConnShared::next_stream`),
//! so the opener picks both ids: its own and the target's. Ids are never reused on a
//! connection; a frame naming an id that was allocated but whose stream is over is ignored
//! (it may have crossed a reset on the wire), one naming an id never allocated is
//! `unknown_stream`.
//!
//! In a cluster the other end may be a connection of another hub ([`Peer::Remote`]): what
//! one end tells the other then crosses NATS as a relayed stream item (`cluster::relay`),
//! addressed by the other end's client id, connection number and stream id, and the
//! receiving hub puts it in the same mailbox FIFO as a local end would. The opener picks
//! only its own id; the target's hub picks the target's, and the opener learns it with the
//! acceptance (a reset before that names the opener's id, and the target's task finds the
//! stream by it). Credit travels as the bytes granted. Flow control is end to end: the
//! sender's hub checks every data frame against the credit the receiver granted across the
//! hubs, so what waits in NATS and in the receiving hub is bounded by the window as well.
//!
//! Bounds: a stream's data queued in a mailbox is at most the credit its receiver granted
//! (≤ `max_stream_window_bytes`); credits are coalesced in the shared [`Link`] so at most one
//! credit item per stream waits in a mailbox; each stream sends at most one `Incoming`,
//! `Accepted`, `End` and `Reset` per direction.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use peermesh_proto::stream::{HalfClose, SendCredit};
use peermesh_proto::{
    ClientId, EncodedBody, ErrorCode, ErrorFrame, ServerFrame, StreamOpen, StreamRequest,
};

use crate::cluster::relay::{StreamMsg, StreamWire};
use crate::cluster::Backplane;
use crate::metrics::Metrics;
use crate::registry::ConnShared;

/// The other end of a stream.
#[derive(Debug)]
pub(crate) enum Peer {
    /// A connection of this hub.
    Local(Arc<ConnShared>),
    /// A connection of another hub of the cluster.
    Remote(Box<RemoteEnd>),
}

/// The end of a stream on another hub.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RemoteEnd {
    /// Its hub.
    pub(crate) node: String,
    pub(crate) client: ClientId,
    /// Its connection number on that hub; 0 until the target accepts the stream.
    pub(crate) conn: u64,
}

/// Where a `stream_open` goes.
#[derive(Debug)]
pub(crate) enum Target {
    /// No client with that id is connected anywhere.
    Nowhere,
    Local(Arc<ConnShared>),
    /// A client of hub `node`.
    Remote(String),
}

/// What this connection needs to relay stream items to another hub: the backplane and its
/// own address there.
#[derive(Debug, Clone)]
pub(crate) struct Relayer {
    pub(crate) bp: Arc<Backplane>,
    pub(crate) client: ClientId,
    pub(crate) conn: u64,
}

impl Relayer {
    /// Sends `item` about our stream `ours` to the remote end; false when the queue to NATS
    /// is full.
    fn send(&self, to: &RemoteEnd, peer_stream: u64, ours: u64, item: StreamWire) -> bool {
        self.bp.stream(
            &to.node,
            StreamMsg {
                to: to.client.clone(),
                conn: to.conn,
                stream: peer_stream,
                origin: self.bp.node().to_owned(),
                from: self.client.clone(),
                from_conn: self.conn,
                from_stream: ours,
                item,
            },
        )
    }
}

/// What one end of a stream tells the other.
#[derive(Debug)]
enum Say {
    Accepted { window: u64 },
    Credit { bytes: u64 },
    Data(bytes::Bytes),
    End,
    Reset { code: ErrorCode, reason: Box<str> },
}

/// Credit granted to each side and not yet applied by that side's task.
#[derive(Debug, Default)]
pub(crate) struct Link {
    pending: [AtomicU64; 2],
}

/// Something one end of a stream tells the other, queued in the other's mailbox.
#[derive(Debug)]
pub(crate) enum StreamItem {
    /// Bytes for the receiving connection's stream (already addressed).
    Data(EncodedBody),
    /// Another connection opens a stream to this one.
    Incoming(Box<Incoming>),
    /// The target accepted the stream `stream` (ours) and grants `window`; a target on
    /// another hub also tells its stream id and connection number there.
    Accepted {
        stream: u64,
        window: u64,
        remote: Option<(u64, u64)>,
    },
    /// Credit for `stream` waits in its link.
    Credit { stream: u64 },
    /// The other end, on another hub, grants `bytes` more on `stream`.
    Granted { stream: u64, bytes: u64 },
    /// The opener on hub `node` (connection `conn`) reset its stream `stream` before it
    /// learned our id.
    Cancel {
        node: String,
        conn: u64,
        stream: u64,
        code: ErrorCode,
        reason: Box<str>,
    },
    /// The other end ended its direction of `stream`.
    End { stream: u64 },
    /// The other end rejected, reset or left `stream`.
    Reset {
        stream: u64,
        code: ErrorCode,
        reason: Box<str>,
    },
}

impl StreamItem {
    /// Bytes counted for the item in a mailbox.
    pub(crate) fn len(&self) -> usize {
        match self {
            StreamItem::Data(b) => b.encoded_len(),
            StreamItem::Incoming(i) => 128 + i.meta_len,
            _ => 64,
        }
    }
}

/// A stream offered to a connection.
#[derive(Debug)]
pub(crate) struct Incoming {
    /// The id in the target's space.
    pub(crate) stream: u64,
    pub(crate) opener: Peer,
    pub(crate) opener_stream: u64,
    pub(crate) from: ClientId,
    pub(crate) meta: Option<serde_json::Value>,
    pub(crate) meta_len: usize,
    /// Credit the opener grants the target.
    pub(crate) window: u64,
    pub(crate) link: Arc<Link>,
}

#[derive(Debug)]
enum State {
    /// We opened it and wait for the target's answer to `req`.
    Opening { req: u64, deadline: Instant },
    /// It was offered to us; the opener granted `window`.
    Offered { window: u64 },
    /// Both sides agreed.
    Open,
}

#[derive(Debug)]
struct Entry {
    peer: Peer,
    /// The other end's id of the stream (0 while a remote target has not answered).
    peer_stream: u64,
    link: Arc<Link>,
    /// 0: we opened it, 1: we accepted it.
    side: usize,
    state: State,
    send: SendCredit,
    ends: HalfClose,
}

impl Entry {
    /// Tells the other end (`ours` is our id of the stream); false when it could not be
    /// relayed to another hub. A closed local mailbox means the other end is leaving and
    /// cleans up itself.
    fn tell(&self, relay: Option<&Relayer>, ours: u64, say: Say) -> bool {
        match &self.peer {
            Peer::Local(c) => {
                let stream = self.peer_stream;
                let item = match say {
                    Say::Accepted { window } => StreamItem::Accepted {
                        stream,
                        window,
                        remote: None,
                    },
                    Say::Credit { bytes } => {
                        let other = 1 - self.side;
                        let before = self.link.pending[other]
                            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                                Some(v.saturating_add(bytes))
                            })
                            .unwrap_or(u64::MAX);
                        if before != 0 {
                            // A credit item already waits for the other end: it takes this too.
                            return true;
                        }
                        StreamItem::Credit { stream }
                    }
                    Say::Data(data) => StreamItem::Data(EncodedBody::data(stream, data)),
                    Say::End => StreamItem::End { stream },
                    Say::Reset { code, reason } => StreamItem::Reset {
                        stream,
                        code,
                        reason,
                    },
                };
                let _ = c.mailbox.push_stream(item);
                true
            }
            Peer::Remote(r) => {
                let Some(relay) = relay else {
                    return false;
                };
                let item = match say {
                    Say::Accepted { window } => StreamWire::Accepted { window },
                    Say::Credit { bytes } => StreamWire::Credit { bytes },
                    Say::Data(data) => StreamWire::Data(data),
                    Say::End => StreamWire::End,
                    Say::Reset { code, reason } => StreamWire::Reset {
                        code,
                        reason: reason.into(),
                    },
                };
                relay.send(r, self.peer_stream, ours, item)
            }
        }
    }
}

/// Refuses a stream offered to a connection without an entry for it.
fn refuse(relay: Option<&Relayer>, inc: Incoming, code: ErrorCode, reason: Box<str>) {
    match inc.opener {
        Peer::Local(c) => {
            let _ = c.mailbox.push_stream(StreamItem::Reset {
                stream: inc.opener_stream,
                code,
                reason,
            });
        }
        Peer::Remote(r) => {
            if let Some(relay) = relay {
                let item = StreamWire::Reset {
                    code,
                    reason: reason.into(),
                };
                relay.send(&r, inc.opener_stream, inc.stream, item);
            }
        }
    }
}

/// What a client frame on a stream led to.
#[derive(Debug, PartialEq)]
pub(crate) enum Outcome {
    /// Nothing to tell the client.
    Done,
    /// A frame for the client.
    Reply(Box<ServerFrame>),
    /// The frame names an id this connection never had.
    Unknown,
}

/// The streams of one connection, owned by its task.
#[derive(Debug)]
pub(crate) struct Streams {
    /// Allocated at the first stream and freed when the connection drops: most
    /// connections never open one.
    maps: Option<Box<Maps>>,
    max_streams: usize,
    max_window: u64,
    open_timeout: Duration,
    metrics: Arc<Metrics>,
    /// Set in a cluster: streams to clients of other hubs.
    relay: Option<Relayer>,
}

/// The streams of a connection that has any.
#[derive(Debug, Default)]
struct Maps {
    entries: HashMap<u64, Entry>,
    /// Open requests not answered yet, by deadline.
    deadlines: BTreeSet<(Instant, u64)>,
}

fn reset_frame(stream: u64, code: ErrorCode, reason: impl Into<String>) -> ServerFrame {
    ServerFrame::StreamReset {
        stream,
        code,
        reason: reason.into(),
    }
}

fn error_frame(code: ErrorCode, message: impl Into<String>, req: u64) -> ServerFrame {
    ServerFrame::Error(ErrorFrame::new(code, message, Some(req)))
}

impl Streams {
    pub(crate) fn new(
        max_streams: usize,
        max_window: u64,
        open_timeout: Duration,
        metrics: Arc<Metrics>,
        relay: Option<Relayer>,
    ) -> Self {
        Self {
            maps: None,
            max_streams,
            max_window,
            open_timeout,
            metrics,
            relay,
        }
    }

    fn get(&self, stream: u64) -> Option<&Entry> {
        self.maps.as_ref()?.entries.get(&stream)
    }

    fn get_mut(&mut self, stream: u64) -> Option<&mut Entry> {
        self.maps.as_mut()?.entries.get_mut(&stream)
    }

    /// Streams open or opening on this connection.
    fn count(&self) -> usize {
        self.maps.as_ref().map_or(0, |m| m.entries.len())
    }

    /// The ids of the streams that match `which`.
    fn ids(&self, which: impl Fn(&Entry) -> bool) -> Vec<u64> {
        self.maps.as_ref().map_or_else(Vec::new, |m| {
            m.entries
                .iter()
                .filter(|(_, e)| which(e))
                .map(|(id, _)| *id)
                .collect()
        })
    }

    fn insert(&mut self, stream: u64, e: Entry) {
        let maps = self.maps.get_or_insert_default();
        if let State::Opening { deadline, .. } = e.state {
            maps.deadlines.insert((deadline, stream));
        }
        if let (Peer::Remote(r), Some(relay)) = (&e.peer, &self.relay) {
            relay.bp.stream_opened(&r.client, relay.conn);
        }
        maps.entries.insert(stream, e);
        self.metrics.add_streams(1);
    }

    fn remove(&mut self, stream: u64) -> Option<Entry> {
        let maps = self.maps.as_mut()?;
        let e = maps.entries.remove(&stream)?;
        if let State::Opening { deadline, .. } = e.state {
            maps.deadlines.remove(&(deadline, stream));
        }
        if let (Peer::Remote(r), Some(relay)) = (&e.peer, &self.relay) {
            relay.bp.stream_closed(&r.client, relay.conn);
        }
        self.metrics.sub_streams(1);
        Some(e)
    }

    /// Tells the other end of `stream`; when that fails (the queue to the cluster is full),
    /// the stream is reset on both ends with `cluster_unavailable`.
    fn tell(&mut self, stream: u64, say: Say) -> Outcome {
        let Some(e) = self.get(stream) else {
            return Outcome::Done;
        };
        if e.tell(self.relay.as_ref(), stream, say) {
            return Outcome::Done;
        }
        self.broken(stream)
    }

    /// The stream could not be relayed to its other end on another hub: both ends are reset.
    fn broken(&mut self, stream: u64) -> Outcome {
        let why = "the stream's other end is on another hub, and the link to it through the \
                   cluster failed; open the stream again";
        let Some(e) = self.remove(stream) else {
            return Outcome::Done;
        };
        let reset = Say::Reset {
            code: ErrorCode::ClusterUnavailable,
            reason: why.into(),
        };
        let _ = e.tell(self.relay.as_ref(), stream, reset);
        self.metrics.inc_error(ErrorCode::ClusterUnavailable);
        Outcome::Reply(Box::new(match e.state {
            State::Opening { req, .. } => error_frame(ErrorCode::ClusterUnavailable, why, req),
            _ => reset_frame(stream, ErrorCode::ClusterUnavailable, why),
        }))
    }

    fn known(me: &ConnShared, stream: u64) -> Outcome {
        if stream != 0 && stream < me.next_stream.load(Ordering::Relaxed) {
            Outcome::Done
        } else {
            Outcome::Unknown
        }
    }

    /// Resets a stream whose client broke its rules: both ends learn why.
    fn violation(&mut self, stream: u64, code: ErrorCode, why: String) -> Outcome {
        let Some(e) = self.remove(stream) else {
            return Outcome::Done;
        };
        let reset = Say::Reset {
            code,
            reason: format!("the other end broke the stream's rules: {why}").into(),
        };
        let _ = e.tell(self.relay.as_ref(), stream, reset);
        self.metrics.inc_error(code);
        Outcome::Reply(Box::new(match e.state {
            State::Opening { req, .. } => error_frame(code, why, req),
            _ => reset_frame(stream, code, why),
        }))
    }

    /// Resets a stream because of one of its frames (e.g. too large).
    pub(crate) fn reset_for(&mut self, stream: u64, code: ErrorCode, why: String) -> Outcome {
        if self.get(stream).is_none() {
            return Outcome::Done;
        }
        self.violation(stream, code, why)
    }

    /// `stream_open`: `target` is the target's connection, if it is connected.
    pub(crate) fn open(
        &mut self,
        me: &Arc<ConnShared>,
        target: Target,
        open: StreamOpen,
        now: Instant,
    ) -> Outcome {
        let req = open.req;
        if self.count() >= self.max_streams {
            let m = format!(
                "this connection already has {} streams (max_streams_per_client)",
                self.count()
            );
            return Outcome::Reply(Box::new(error_frame(ErrorCode::TooManyStreams, m, req)));
        }
        if open.window > self.max_window {
            let m = format!(
                "`window` is {} bytes; at most {} are allowed (max_stream_window_bytes)",
                open.window, self.max_window
            );
            return Outcome::Reply(Box::new(error_frame(ErrorCode::InvalidField, m, req)));
        }
        let target = match target {
            Target::Local(c) => c,
            Target::Remote(node) => return self.open_remote(me, node, open, now),
            Target::Nowhere => {
                let m = format!("no client with id {:?} is connected", open.to.as_str());
                return Outcome::Reply(Box::new(error_frame(ErrorCode::UnknownTarget, m, req)));
            }
        };
        let ours = me.alloc_stream();
        let theirs = target.alloc_stream();
        let link = Arc::new(Link::default());
        let meta_len = open.meta.as_ref().map_or(0, |m| m.to_string().len());
        let incoming = Incoming {
            stream: theirs,
            opener: Peer::Local(me.clone()),
            opener_stream: ours,
            from: me.client.clone(),
            meta: open.meta,
            meta_len,
            window: open.window,
            link: link.clone(),
        };
        if target
            .mailbox
            .push_stream(StreamItem::Incoming(Box::new(incoming)))
            .is_err()
        {
            let m = format!("client {:?} is disconnecting", open.to.as_str());
            return Outcome::Reply(Box::new(error_frame(ErrorCode::UnknownTarget, m, req)));
        }
        self.metrics.inc_streams_opened();
        let deadline = now + self.open_timeout;
        // The target's window is not known yet: no credit until `Accepted`.
        let send = SendCredit::none(self.max_window);
        self.insert(
            ours,
            Entry {
                peer: Peer::Local(target),
                peer_stream: theirs,
                link,
                side: 0,
                state: State::Opening { req, deadline },
                send,
                ends: HalfClose::default(),
            },
        );
        Outcome::Done
    }

    /// `stream_open` to a client of hub `node`: the offer is relayed there, whose hub picks
    /// the target's id and tells it with the answer.
    fn open_remote(
        &mut self,
        me: &Arc<ConnShared>,
        node: String,
        open: StreamOpen,
        now: Instant,
    ) -> Outcome {
        let req = open.req;
        let Some(relay) = self.relay.clone() else {
            let m = format!("no client with id {:?} is connected", open.to.as_str());
            return Outcome::Reply(Box::new(error_frame(ErrorCode::UnknownTarget, m, req)));
        };
        let ours = me.alloc_stream();
        let remote = RemoteEnd {
            node,
            client: open.to.clone(),
            conn: 0,
        };
        let item = StreamWire::Open {
            window: open.window,
            meta: open.meta,
        };
        if !relay.send(&remote, 0, ours, item) {
            let m = format!(
                "{:?} is on another hub and the hub's queue to the cluster is full; try again",
                open.to.as_str()
            );
            self.metrics.inc_error(ErrorCode::ClusterUnavailable);
            return Outcome::Reply(Box::new(error_frame(ErrorCode::ClusterUnavailable, m, req)));
        }
        self.metrics.inc_streams_opened();
        let deadline = now + self.open_timeout;
        self.insert(
            ours,
            Entry {
                peer: Peer::Remote(Box::new(remote)),
                peer_stream: 0,
                link: Arc::new(Link::default()),
                side: 0,
                state: State::Opening { req, deadline },
                send: SendCredit::none(self.max_window),
                ends: HalfClose::default(),
            },
        );
        Outcome::Done
    }

    /// `stream_accept`.
    pub(crate) fn accept(&mut self, me: &ConnShared, stream: u64, window: u64) -> Outcome {
        let max = self.max_window;
        let Some(e) = self.get_mut(stream) else {
            return Self::known(me, stream);
        };
        let State::Offered { window: granted } = e.state else {
            let why =
                format!("stream {stream} was not offered to this client, or is already accepted");
            return self.violation(stream, ErrorCode::StreamState, why);
        };
        if window > max {
            let why = format!(
                "`window` is {window} bytes; at most {max} are allowed (max_stream_window_bytes)"
            );
            return self.violation(stream, ErrorCode::FlowControl, why);
        }
        // `granted` was checked against the same maximum when the stream was opened.
        let Ok(send) = SendCredit::new(granted, max) else {
            return self.violation(stream, ErrorCode::FlowControl, "window too large".into());
        };
        e.send = send;
        e.state = State::Open;
        self.tell(stream, Say::Accepted { window })
    }

    /// `stream_reject` and `stream_reset`.
    pub(crate) fn reset(
        &mut self,
        me: &ConnShared,
        stream: u64,
        reason: String,
        reject: bool,
    ) -> Outcome {
        let Some(e) = self.get(stream) else {
            return Self::known(me, stream);
        };
        if reject && !matches!(e.state, State::Offered { .. }) {
            let why = format!("stream {stream} is not waiting for an answer; reset it instead");
            return self.violation(stream, ErrorCode::StreamState, why);
        }
        let code = match e.state {
            State::Offered { .. } => ErrorCode::StreamRejected,
            _ => ErrorCode::PeerReset,
        };
        if let Some(e) = self.remove(stream) {
            let reset = Say::Reset {
                code,
                reason: reason.into(),
            };
            // The stream is over here whatever happens to this last word.
            let _ = e.tell(self.relay.as_ref(), stream, reset);
        }
        Outcome::Done
    }

    /// `stream_credit`.
    pub(crate) fn credit(&mut self, me: &ConnShared, stream: u64, bytes: u64) -> Outcome {
        let Some(e) = self.get(stream) else {
            return Self::known(me, stream);
        };
        if !matches!(e.state, State::Open) {
            let why = format!("stream {stream} is not open yet");
            return self.violation(stream, ErrorCode::StreamState, why);
        }
        if !e.ends.may_receive() {
            // Nothing more will come on this direction: the credit is moot.
            return Outcome::Done;
        }
        self.tell(stream, Say::Credit { bytes })
    }

    /// `stream_end`.
    pub(crate) fn end(&mut self, me: &ConnShared, stream: u64) -> Outcome {
        let Some(e) = self.get_mut(stream) else {
            return Self::known(me, stream);
        };
        if !matches!(e.state, State::Open) {
            let why = format!("stream {stream} is not open yet");
            return self.violation(stream, ErrorCode::StreamState, why);
        }
        if !e.ends.end_local() {
            let why = format!("stream {stream} was already ended by this client");
            return self.violation(stream, ErrorCode::StreamState, why);
        }
        let finished = e.ends.finished();
        let outcome = self.tell(stream, Say::End);
        if finished {
            self.remove(stream);
        }
        outcome
    }

    /// A data frame from the client: checks it and queues it for the other end.
    pub(crate) fn data(&mut self, me: &ConnShared, stream: u64, data: bytes::Bytes) -> Outcome {
        let Some(e) = self.get_mut(stream) else {
            return Self::known(me, stream);
        };
        if !matches!(e.state, State::Open) {
            let why = format!("data on stream {stream} before it was accepted");
            return self.violation(stream, ErrorCode::StreamState, why);
        }
        if !e.ends.may_send() {
            let why = format!("data on stream {stream} after this client ended it");
            return self.violation(stream, ErrorCode::StreamState, why);
        }
        let len = data.len() as u64;
        if let Err(err) = e.send.consume(len) {
            return self.violation(stream, ErrorCode::FlowControl, err.to_string());
        }
        self.metrics.inc_stream_bytes(len);
        self.tell(stream, Say::Data(data))
    }

    /// A data frame is about to be written: whether its stream is still ours.
    pub(crate) fn deliverable(&self, stream: u64) -> bool {
        self.get(stream).is_some()
    }

    /// An item from the other end of a stream; returns the frame to write, in order.
    pub(crate) fn on_item(&mut self, item: StreamItem) -> Option<ServerFrame> {
        match item {
            StreamItem::Data(_) => None,
            StreamItem::Incoming(inc) => {
                if self.count() >= self.max_streams {
                    let reason = format!(
                        "the target already has {} streams (max_streams_per_client)",
                        self.count()
                    );
                    refuse(
                        self.relay.as_ref(),
                        *inc,
                        ErrorCode::TooManyStreams,
                        reason.into(),
                    );
                    return None;
                }
                let Incoming {
                    stream,
                    opener,
                    opener_stream,
                    from,
                    meta,
                    window,
                    link,
                    ..
                } = *inc;
                self.insert(
                    stream,
                    Entry {
                        peer: opener,
                        peer_stream: opener_stream,
                        link,
                        side: 1,
                        state: State::Offered { window },
                        send: SendCredit::none(self.max_window),
                        ends: HalfClose::default(),
                    },
                );
                Some(ServerFrame::StreamRequest(StreamRequest {
                    stream,
                    from,
                    meta,
                    window,
                }))
            }
            StreamItem::Accepted {
                stream,
                window,
                remote,
            } => {
                let max = self.max_window;
                let e = self.get_mut(stream)?;
                let State::Opening { req, deadline } = e.state else {
                    return None;
                };
                if let (Some((peer_stream, conn)), Peer::Remote(r)) = (remote, &mut e.peer) {
                    e.peer_stream = peer_stream;
                    r.conn = conn;
                }
                e.send = SendCredit::new(window, max).ok()?;
                e.state = State::Open;
                if let Some(m) = self.maps.as_mut() {
                    m.deadlines.remove(&(deadline, stream));
                }
                Some(ServerFrame::StreamAccepted {
                    req,
                    stream,
                    window,
                })
            }
            StreamItem::Credit { stream } => {
                let e = self.get(stream)?;
                let bytes = e.link.pending[e.side].swap(0, Ordering::AcqRel);
                self.granted(stream, bytes)
            }
            StreamItem::Granted { stream, bytes } => self.granted(stream, bytes),
            StreamItem::End { stream } => {
                let e = self.get_mut(stream)?;
                e.ends.end_remote();
                if e.ends.finished() {
                    self.remove(stream);
                }
                Some(ServerFrame::StreamEnd { stream })
            }
            StreamItem::Reset {
                stream,
                code,
                reason,
            } => {
                let e = self.remove(stream)?;
                Some(match e.state {
                    State::Opening { req, .. } => error_frame(code, reason, req),
                    _ => reset_frame(stream, code, reason),
                })
            }
            StreamItem::Cancel {
                node,
                conn,
                stream: theirs,
                code,
                reason,
            } => {
                let stream = *self
                    .ids(|e| match &e.peer {
                        Peer::Remote(r) => {
                            e.side == 1
                                && e.peer_stream == theirs
                                && r.conn == conn
                                && r.node == node
                        }
                        Peer::Local(_) => false,
                    })
                    .first()?;
                self.remove(stream)?;
                Some(reset_frame(stream, code, reason))
            }
        }
    }

    /// The other end granted `bytes` more on `stream`.
    fn granted(&mut self, stream: u64, bytes: u64) -> Option<ServerFrame> {
        let e = self.get_mut(stream)?;
        if bytes == 0 || !e.ends.may_send() || !matches!(e.state, State::Open) {
            return None;
        }
        if let Err(err) = e.send.grant(bytes) {
            let why = format!("the other end granted too much credit: {err}");
            if let Some(e) = self.remove(stream) {
                let reset = Say::Reset {
                    code: ErrorCode::FlowControl,
                    reason: err.to_string().into(),
                };
                let _ = e.tell(self.relay.as_ref(), stream, reset);
            }
            self.metrics.inc_error(ErrorCode::FlowControl);
            return Some(reset_frame(stream, ErrorCode::FlowControl, why));
        }
        Some(ServerFrame::StreamCredit { stream, bytes })
    }

    /// Refuses a stream offered to this connection that it will never see.
    pub(crate) fn refuse(&self, inc: Incoming, code: ErrorCode, reason: Box<str>) {
        refuse(self.relay.as_ref(), inc, code, reason);
    }

    /// The earliest open deadline.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.maps.as_ref()?.deadlines.first().map(|(d, _)| *d)
    }

    /// Opens whose target did not answer in time: the errors for the client.
    pub(crate) fn handle_timeout(&mut self, now: Instant, me: &ClientId) -> Vec<ServerFrame> {
        let mut out = Vec::new();
        while let Some(m) = self.maps.as_mut() {
            let Some(&(deadline, stream)) = m.deadlines.first() else {
                break;
            };
            if deadline > now {
                break;
            }
            m.deadlines.pop_first();
            let Some(e) = self.remove(stream) else {
                continue;
            };
            let State::Opening { req, .. } = e.state else {
                continue;
            };
            let secs = self.open_timeout.as_secs_f64();
            let reset = Say::Reset {
                code: ErrorCode::StreamTimeout,
                reason: format!("the stream from {me} was not answered within {secs} s").into(),
            };
            let _ = e.tell(self.relay.as_ref(), stream, reset);
            self.metrics.inc_error(ErrorCode::StreamTimeout);
            let m = format!(
                "{} did not accept or reject the stream within {secs} s",
                e.peer_client()
            );
            out.push(error_frame(ErrorCode::StreamTimeout, m, req));
        }
        out
    }

    /// Resets the streams whose other end is a client of another hub that matches `which`,
    /// with `code` and `reason`: the frames for this client.
    pub(crate) fn reset_remote(
        &mut self,
        which: impl Fn(&RemoteEnd) -> bool,
        code: ErrorCode,
        reason: &str,
    ) -> Vec<ServerFrame> {
        let ids = self.ids(|e| matches!(&e.peer, Peer::Remote(r) if which(r)));
        let mut out = Vec::with_capacity(ids.len());
        for stream in ids {
            let Some(e) = self.remove(stream) else {
                continue;
            };
            // Tell the other end as well, in case it can still hear us.
            let reset = Say::Reset {
                code,
                reason: reason.into(),
            };
            let _ = e.tell(self.relay.as_ref(), stream, reset);
            out.push(match e.state {
                State::Opening { req, .. } => error_frame(code, reason, req),
                _ => reset_frame(stream, code, reason),
            });
        }
        out
    }

    /// The connection ends: every other end learns it with `peer_left`, and streams offered
    /// to this connection that it never saw are refused.
    pub(crate) fn close(&mut self, me: &ClientId, unread: impl IntoIterator<Item = StreamItem>) {
        let reason: Box<str> = format!("{me} disconnected").into();
        for id in self.ids(|_| true) {
            if let Some(e) = self.remove(id) {
                let reset = Say::Reset {
                    code: ErrorCode::PeerLeft,
                    reason: reason.clone(),
                };
                let _ = e.tell(self.relay.as_ref(), id, reset);
            }
        }
        self.maps = None;
        for item in unread {
            if let StreamItem::Incoming(inc) = item {
                refuse(
                    self.relay.as_ref(),
                    *inc,
                    ErrorCode::PeerLeft,
                    reason.clone(),
                );
            }
        }
    }
}

impl Entry {
    /// The other end's client id.
    fn peer_client(&self) -> &ClientId {
        match &self.peer {
            Peer::Local(c) => &c.client,
            Peer::Remote(r) => &r.client,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;
    use crate::mailbox::Outbound;
    use crate::registry::{ConnInfo, MailboxLimits};
    use bytes::Bytes;
    use peermesh_proto::Encoding;

    fn conn(no: u64, id: &str) -> Arc<ConnShared> {
        let info = ConnInfo {
            addr: "127.0.0.1:1".parse().unwrap_or_else(|_| unreachable!()),
            ip: "127.0.0.1".into(),
            meta: Vec::new(),
            version: "1.0.0".into(),
            connected_at: std::time::SystemTime::now(),
        };
        let limits = MailboxLimits {
            frames: 16,
            bytes: 1 << 20,
            notices: 16,
        };
        let id = ClientId::new(id).unwrap_or_else(|_| unreachable!());
        Arc::new(ConnShared::new(
            no,
            no as u32,
            id,
            Encoding::Json,
            String::new(),
            info,
            limits,
            false,
        ))
    }

    struct End {
        conn: Arc<ConnShared>,
        streams: Streams,
    }

    impl End {
        fn new(no: u64, id: &str, metrics: &Arc<Metrics>) -> Self {
            Self {
                conn: conn(no, id),
                streams: Streams::new(4, 100, Duration::from_secs(1), metrics.clone(), None),
            }
        }

        /// Handles every queued item, as the writer would: the frames the client sees.
        fn pump(&mut self) -> Vec<ServerFrame> {
            let mut out = Vec::new();
            let taken = self.conn.mailbox.take(VecDeque::new());
            for o in taken.frames {
                match o {
                    Outbound::Stream(StreamItem::Data(b)) => {
                        let (stream, len) = b.data_stream().unwrap_or((0, 0));
                        if self.streams.deliverable(stream) {
                            out.push(ServerFrame::StreamCredit {
                                stream,
                                bytes: len as u64,
                            });
                        }
                    }
                    Outbound::Stream(item) => out.extend(self.streams.on_item(item)),
                    Outbound::Frame(_) | Outbound::Whole(_) => {}
                }
            }
            out
        }
    }

    fn open_req(to: &str, window: u64) -> StreamOpen {
        StreamOpen {
            to: ClientId::new(to).unwrap_or_else(|_| unreachable!()),
            meta: None,
            window,
            req: 1,
        }
    }

    #[test]
    fn open_data_credit_end_and_every_entry_freed() {
        let metrics = Arc::new(Metrics::default());
        let mut a = End::new(1, "alice", &metrics);
        let mut b = End::new(2, "bob", &metrics);
        let now = Instant::now();
        let o = a.streams.open(
            &a.conn,
            Target::Local(b.conn.clone()),
            open_req("bob", 10),
            now,
        );
        assert_eq!(o, Outcome::Done);
        let frames = b.pump();
        let [ServerFrame::StreamRequest(r)] = &frames[..] else {
            panic!("{frames:?}")
        };
        let sb = r.stream;
        assert_eq!(b.streams.accept(&b.conn, sb, 5), Outcome::Done);
        let frames = a.pump();
        let [ServerFrame::StreamAccepted {
            stream: sa,
            window: 5,
            ..
        }] = frames[..]
        else {
            panic!("{frames:?}")
        };
        // alice may send 5 bytes; the 6th breaks flow control later.
        assert_eq!(
            a.streams.data(&a.conn, sa, Bytes::from_static(b"12345")),
            Outcome::Done
        );
        assert_eq!(b.pump().len(), 1, "the data reached bob");
        // Two grants before alice's task runs arrive as one credit.
        b.streams.credit(&b.conn, sb, 2);
        b.streams.credit(&b.conn, sb, 3);
        let frames = a.pump();
        assert_eq!(
            frames,
            [ServerFrame::StreamCredit {
                stream: sa,
                bytes: 5
            }]
        );
        assert_eq!(a.streams.end(&a.conn, sa), Outcome::Done);
        assert_eq!(b.pump(), [ServerFrame::StreamEnd { stream: sb }]);
        assert_eq!(metrics.stream_ends(), 2, "half-closed streams are kept");
        assert_eq!(b.streams.end(&b.conn, sb), Outcome::Done);
        assert_eq!(a.pump(), [ServerFrame::StreamEnd { stream: sa }]);
        assert_eq!(metrics.stream_ends(), 0);
        // Frames for the finished stream are ignored; never-allocated ids are unknown.
        assert_eq!(
            a.streams.data(&a.conn, sa, Bytes::from_static(b"x")),
            Outcome::Done
        );
        assert_eq!(a.streams.end(&a.conn, 999), Outcome::Unknown);
    }

    #[test]
    fn over_credit_and_leaving_reset_the_other_end() {
        let metrics = Arc::new(Metrics::default());
        let mut a = End::new(1, "alice", &metrics);
        let mut b = End::new(2, "bob", &metrics);
        let now = Instant::now();
        a.streams.open(
            &a.conn,
            Target::Local(b.conn.clone()),
            open_req("bob", 0),
            now,
        );
        let sb = match &b.pump()[..] {
            [ServerFrame::StreamRequest(r)] => r.stream,
            other => panic!("{other:?}"),
        };
        b.streams.accept(&b.conn, sb, 3);
        let sa = match a.pump()[..] {
            [ServerFrame::StreamAccepted { stream, .. }] => stream,
            ref other => panic!("{other:?}"),
        };
        let o = a.streams.data(&a.conn, sa, Bytes::from_static(b"1234"));
        let Outcome::Reply(f) = o else {
            panic!("{o:?}")
        };
        let ServerFrame::StreamReset { code, .. } = *f else {
            panic!("{f:?}")
        };
        assert_eq!(code, ErrorCode::FlowControl);
        let frames = b.pump();
        assert!(
            matches!(
                frames[..],
                [ServerFrame::StreamReset {
                    code: ErrorCode::FlowControl,
                    ..
                }]
            ),
            "{frames:?}"
        );
        assert_eq!(metrics.stream_ends(), 0);

        // An offered stream whose target leaves: the opener's request fails with peer_left.
        a.streams.open(
            &a.conn,
            Target::Local(b.conn.clone()),
            open_req("bob", 0),
            now,
        );
        let unread = b.conn.mailbox.close();
        let unread = unread.into_iter().filter_map(|o| match o {
            Outbound::Stream(i) => Some(i),
            Outbound::Frame(_) | Outbound::Whole(_) => None,
        });
        b.streams.close(&b.conn.client, unread);
        let frames = a.pump();
        let [ServerFrame::Error(e)] = &frames[..] else {
            panic!("{frames:?}")
        };
        assert_eq!((e.code, e.req), (ErrorCode::PeerLeft, Some(1)));
        assert_eq!(metrics.stream_ends(), 0);
    }
}
