//! A connection's inbox: frames for its socket and notices for its task.
//!
//! Producers (any task routing to this connection) push under a short lock and never wait; the
//! connection's own task takes everything queued in one swap. Only the push that makes an empty
//! mailbox non-empty wakes the task, so a burst costs one wake-up, not one per frame. An empty
//! mailbox owns no heap memory: an idle connection pays nothing for its queues.
//!
//! Bounds: `max_frames` and `max_bytes` cover frames queued *and* frames taken but not yet
//! written (they are released with [`Mailbox::written`]), so one connection holds at most
//! `max_bytes` of outgoing frames however slowly it reads. Notices are bounded by
//! `max_notices`.
//!
//! Stream items ([`StreamItem`]: data and the stream control events of the other end) share
//! the frames' FIFO, so a stream's data, end and reset reach the client in the order they
//! were sent, but they are counted apart and never refused for being over the bounds: the
//! credit a receiver grants bounds a stream's data, and each stream has at most a handful of
//! control items queued (see `streams`). A stalled stream therefore never closes its
//! connection as a slow consumer, and never stops messages from being queued.

use std::collections::VecDeque;

use parking_lot::Mutex;
use peermesh_proto::EncodedBody;
use tokio::sync::Notify;

use crate::streams::StreamItem;

/// One entry of the outgoing FIFO.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// A frame for the socket, counted against the bounds.
    Frame(EncodedBody),
    /// A frame of a whole the client must get entire (a session snapshot, the events of one
    /// leave), counted apart: never refused, and never making an ordinary frame behind it
    /// look like a slow consumer's (see [`Mailbox::push_frame_unbounded`]).
    Whole(EncodedBody),
    /// A stream item, counted apart.
    Stream(StreamItem),
}

/// What the writer wrote, by kind, for [`Mailbox::written`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Written {
    pub(crate) frames: usize,
    pub(crate) bytes: usize,
    pub(crate) stream_items: usize,
    pub(crate) stream_bytes: usize,
    pub(crate) whole_frames: usize,
    pub(crate) whole_bytes: usize,
}

impl Written {
    /// Counts one entry.
    pub(crate) fn add(&mut self, o: &Outbound) {
        match o {
            Outbound::Frame(b) => {
                self.frames += 1;
                self.bytes += b.encoded_len();
            }
            Outbound::Stream(i) => {
                self.stream_items += 1;
                self.stream_bytes += i.len();
            }
            Outbound::Whole(b) => {
                self.whole_frames += 1;
                self.whole_bytes += b.encoded_len();
            }
        }
    }
}

/// Why a push was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PushError {
    /// Over the frame or byte bound: the consumer is too slow.
    Full,
    /// The mailbox was closed.
    Closed,
}

#[derive(Debug, Default)]
struct Inner<N> {
    frames: VecDeque<Outbound>,
    notices: VecDeque<N>,
    /// Frames queued or taken and not yet written.
    frames_held: usize,
    /// Their bytes (as counted by `EncodedBody::encoded_len`).
    bytes_held: usize,
    /// Stream items queued or taken and not yet written.
    stream_items_held: usize,
    /// Their bytes.
    stream_bytes_held: usize,
    /// Frames of wholes queued or taken and not yet written.
    whole_frames_held: usize,
    /// Their bytes.
    whole_bytes_held: usize,
    closed: bool,
}

/// Frames and notices waiting for one connection's task.
#[derive(Debug)]
pub(crate) struct Mailbox<N> {
    inner: Mutex<Inner<N>>,
    wake: Notify,
    max_frames: usize,
    max_bytes: usize,
    max_notices: usize,
}

/// What [`Mailbox::take`] hands the consumer.
#[derive(Debug)]
pub(crate) struct Taken<N> {
    pub(crate) frames: VecDeque<Outbound>,
    pub(crate) notices: VecDeque<N>,
}

impl<N> Mailbox<N> {
    pub(crate) fn new(max_frames: usize, max_bytes: usize, max_notices: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                frames: VecDeque::new(),
                notices: VecDeque::new(),
                frames_held: 0,
                bytes_held: 0,
                stream_items_held: 0,
                stream_bytes_held: 0,
                whole_frames_held: 0,
                whole_bytes_held: 0,
                closed: false,
            }),
            wake: Notify::new(),
            max_frames,
            max_bytes,
            max_notices,
        }
    }

    /// Queues a frame for the socket.
    pub(crate) fn push_frame(&self, body: EncodedBody) -> Result<(), PushError> {
        let len = body.encoded_len();
        let wake = {
            let mut g = self.inner.lock();
            if g.closed {
                return Err(PushError::Closed);
            }
            if g.frames_held >= self.max_frames || g.bytes_held + len > self.max_bytes {
                return Err(PushError::Full);
            }
            let was_empty = g.frames.is_empty() && g.notices.is_empty();
            g.frames.push_back(Outbound::Frame(body));
            g.frames_held += 1;
            g.bytes_held += len;
            was_empty
        };
        if wake {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Queues a frame beyond the frame and byte limits, counted apart like stream items: for
    /// a session snapshot or the events of one leave, whose size the session's own limits
    /// bound and which must reach the client whole, in order with what follows. Counting
    /// them against the limits would cut off the client at the next ordinary frame, before
    /// the writer could send a burst of thousands of them. A client that stops reading is
    /// still cut off: by its ordinary frames, or by the heartbeat it no longer answers.
    /// Refused only when closed.
    pub(crate) fn push_frame_unbounded(&self, body: EncodedBody) -> Result<(), PushError> {
        let len = body.encoded_len();
        let wake = {
            let mut g = self.inner.lock();
            if g.closed {
                return Err(PushError::Closed);
            }
            let was_empty = g.frames.is_empty() && g.notices.is_empty();
            g.frames.push_back(Outbound::Whole(body));
            g.whole_frames_held += 1;
            g.whole_bytes_held += len;
            was_empty
        };
        if wake {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Queues a stream item; refused only when the mailbox is closed (the item comes back).
    pub(crate) fn push_stream(&self, item: StreamItem) -> Result<(), StreamItem> {
        let len = item.len();
        let wake = {
            let mut g = self.inner.lock();
            if g.closed {
                return Err(item);
            }
            let was_empty = g.frames.is_empty() && g.notices.is_empty();
            g.frames.push_back(Outbound::Stream(item));
            g.stream_items_held += 1;
            g.stream_bytes_held += len;
            was_empty
        };
        if wake {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Queues a notice for the task; `false` when closed or full.
    pub(crate) fn push_notice(&self, n: N) -> bool {
        let wake = {
            let mut g = self.inner.lock();
            if g.closed || g.notices.len() >= self.max_notices {
                return false;
            }
            let was_empty = g.frames.is_empty() && g.notices.is_empty();
            g.notices.push_back(n);
            was_empty
        };
        if wake {
            self.wake.notify_one();
        }
        true
    }

    /// Wakes the consumer without queuing anything (it should look at its other state, such
    /// as a close request).
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    /// Waits until something may have been queued since the last `take` (spurious wake-ups
    /// are possible: `take` may then return nothing).
    pub(crate) async fn ready(&self) {
        self.wake.notified().await
    }

    /// Takes everything queued. `spare` is an empty deque whose allocation is reused for the
    /// next frames (pass `VecDeque::new()` to let the mailbox shrink to nothing).
    pub(crate) fn take(&self, spare: VecDeque<Outbound>) -> Taken<N> {
        let mut g = self.inner.lock();
        let frames = std::mem::replace(&mut g.frames, spare);
        let notices = std::mem::take(&mut g.notices);
        Taken { frames, notices }
    }

    /// The consumer wrote (or handled) entries that it took earlier.
    pub(crate) fn written(&self, w: Written) {
        let mut g = self.inner.lock();
        g.frames_held = g.frames_held.saturating_sub(w.frames);
        g.bytes_held = g.bytes_held.saturating_sub(w.bytes);
        g.stream_items_held = g.stream_items_held.saturating_sub(w.stream_items);
        g.stream_bytes_held = g.stream_bytes_held.saturating_sub(w.stream_bytes);
        g.whole_frames_held = g.whole_frames_held.saturating_sub(w.whole_frames);
        g.whole_bytes_held = g.whole_bytes_held.saturating_sub(w.whole_bytes);
    }

    /// Refuses every later push; returns what was queued (notices are dropped).
    pub(crate) fn close(&self) -> VecDeque<Outbound> {
        let mut g = self.inner.lock();
        g.closed = true;
        g.notices = VecDeque::new();
        std::mem::take(&mut g.frames)
    }

    /// Bytes queued or in flight.
    pub(crate) fn bytes_held(&self) -> usize {
        let g = self.inner.lock();
        g.bytes_held + g.whole_bytes_held
    }

    /// Stream items and their bytes queued or in flight.
    pub(crate) fn stream_held(&self) -> (usize, usize) {
        let g = self.inner.lock();
        (g.stream_items_held, g.stream_bytes_held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use peermesh_proto::{Encoding, ServerFrame};
    use proptest::prelude::*;

    fn body() -> EncodedBody {
        EncodedBody::encode(Encoding::Json, &ServerFrame::Pong { req: Some(1) })
    }

    #[tokio::test]
    async fn only_the_first_push_wakes() {
        let m: Mailbox<u32> = Mailbox::new(10, 1 << 20, 4);
        m.push_frame(body()).unwrap();
        m.push_frame(body()).unwrap();
        assert!(m.push_notice(7));
        // One permit is stored: the first `ready` completes, the next one would wait.
        m.ready().await;
        let t = m.take(VecDeque::new());
        assert_eq!((t.frames.len(), t.notices.len()), (2, 1));
        let pending = tokio::time::timeout(std::time::Duration::from_millis(20), m.ready()).await;
        assert!(pending.is_err(), "no second wake-up for one burst");
    }

    #[test]
    fn bounds_cover_frames_in_flight() {
        let len = body().encoded_len();
        let m: Mailbox<u32> = Mailbox::new(3, 10 * len, 1);
        for _ in 0..3 {
            m.push_frame(body()).unwrap();
        }
        assert_eq!(m.push_frame(body()), Err(PushError::Full));
        let t = m.take(VecDeque::new());
        assert_eq!(t.frames.len(), 3);
        // Taken but not yet written: still held.
        assert_eq!(m.push_frame(body()), Err(PushError::Full));
        m.written(Written {
            frames: 3,
            bytes: 3 * len,
            ..Written::default()
        });
        m.push_frame(body()).unwrap();
        assert!(m.push_notice(1));
        assert!(!m.push_notice(2), "notices are bounded too");
        let left = m.close();
        assert_eq!(left.len(), 1);
        assert_eq!(m.push_frame(body()), Err(PushError::Closed));
        assert!(!m.push_notice(3));
    }

    #[test]
    fn wholes_bypass_the_bounds_and_do_not_block_the_frames_behind_them() {
        let len = body().encoded_len();
        let m: Mailbox<u32> = Mailbox::new(3, 10 * len, 1);
        // A burst far over both bounds (a leave of many objects) goes in whole...
        for _ in 0..100 {
            m.push_frame_unbounded(body()).unwrap();
        }
        // ...and the ordinary frames right behind it still fit their own bounds.
        for _ in 0..3 {
            m.push_frame(body()).unwrap();
        }
        assert_eq!(m.push_frame(body()), Err(PushError::Full));
        assert_eq!(m.bytes_held(), 103 * len, "reported with the rest");
        let t = m.take(VecDeque::new());
        let mut w = Written::default();
        for o in &t.frames {
            w.add(o);
        }
        assert_eq!((w.frames, w.whole_frames), (3, 100));
        m.written(w);
        assert_eq!(m.bytes_held(), 0);
        m.push_frame(body()).unwrap();
    }

    #[test]
    fn stream_items_bypass_the_bounds_but_are_counted() {
        let m: Mailbox<u32> = Mailbox::new(1, 64, 1);
        m.push_frame(body()).unwrap();
        assert_eq!(m.push_frame(body()), Err(PushError::Full));
        let data = EncodedBody::data(3, bytes::Bytes::from(vec![7u8; 1000]));
        let item = StreamItem::Data(data);
        let len = item.len();
        m.push_stream(item).unwrap();
        assert_eq!(m.stream_held(), (1, len));
        let t = m.take(VecDeque::new());
        let mut w = Written::default();
        for o in &t.frames {
            w.add(o);
        }
        m.written(w);
        assert_eq!(m.stream_held(), (0, 0));
        assert_eq!(m.bytes_held(), 0);
    }

    proptest! {
        /// Whatever the interleaving of pushes, takes and writes, the held bytes never exceed
        /// the bound, and every accepted frame is taken exactly once.
        #[test]
        fn never_over_the_bound(ops in prop::collection::vec(0u8..3, 0..300)) {
            let len = body().encoded_len();
            let m: Mailbox<u32> = Mailbox::new(1000, 7 * len, 4);
            let (mut accepted, mut taken, mut in_flight) = (0usize, 0usize, 0usize);
            for op in ops {
                match op {
                    0 => if m.push_frame(body()).is_ok() { accepted += 1 },
                    1 => { let t = m.take(VecDeque::new()); taken += t.frames.len(); in_flight += t.frames.len(); }
                    _ => {
                        m.written(Written { frames: in_flight, bytes: in_flight * len, ..Written::default() });
                        in_flight = 0;
                    }
                }
                prop_assert!(m.bytes_held() <= 7 * len);
            }
            taken += m.take(VecDeque::new()).frames.len();
            prop_assert_eq!(accepted, taken);
        }
    }
}
