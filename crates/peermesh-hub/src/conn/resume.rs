//! What a resumable connection keeps so a dropped client can resume without loss: the frames
//! written to it that it has not confirmed (and, while it is away, every frame meant for it),
//! and the count of its own frames the hub has handled.
//!
//! ```text
//!   hub → client:  seq 1 … confirmed ┆ kept: confirmed+1 … last written  (≤ budget bytes)
//!   client → hub:  counted frames handled = `in_count`, told in `received` receipts
//! ```
//!
//! A resume from `last_seq` replays the kept frames after it. When the kept frames outgrow the
//! budget while the client is connected, the oldest go and [`ResumeBuffer::keep`] reports the
//! highest `seq` lost, so a resume that would need it is refused (`overflow`).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::ws::Message;
use peermesh_proto::ClientFrame;

/// Counted client frames after which a receipt is sent at once.
pub(crate) const RECEIPT_EVERY: u64 = 32;
/// Longest wait before a receipt for fewer frames.
pub(crate) const RECEIPT_DELAY: Duration = Duration::from_millis(200);

/// The frames kept for a resume and the receipts owed.
#[derive(Debug)]
pub(crate) struct ResumeBuffer {
    frames: VecDeque<(u64, Message)>,
    bytes: usize,
    budget: usize,
    /// Counted client frames handled in this session.
    pub(crate) in_count: u64,
    receipted: u64,
    receipt_due: Option<Instant>,
}

fn len(m: &Message) -> usize {
    match m {
        Message::Text(t) => t.len(),
        Message::Binary(b) => b.len(),
        _ => 0,
    }
}

/// Whether a client frame counts: every frame but `hello`, `received` and stream frames (a
/// client sends again only counted frames after a resume; streams are reset at a drop).
pub(crate) fn counts(frame: &ClientFrame) -> bool {
    !matches!(
        frame,
        ClientFrame::Hello(_)
            | ClientFrame::Received { .. }
            | ClientFrame::StreamOpen(_)
            | ClientFrame::StreamAccept { .. }
            | ClientFrame::StreamReject { .. }
            | ClientFrame::StreamCredit { .. }
            | ClientFrame::StreamEnd { .. }
            | ClientFrame::StreamReset { .. }
    )
}

impl ResumeBuffer {
    pub(crate) fn new(budget: usize) -> Self {
        Self {
            frames: VecDeque::new(),
            bytes: 0,
            budget,
            in_count: 0,
            receipted: 0,
            receipt_due: None,
        }
    }

    /// Keeps a written (or, while away, produced) frame. Returns the highest `seq` dropped to
    /// stay within the budget, if any.
    pub(crate) fn keep(&mut self, seq: u64, msg: Message) -> Option<u64> {
        self.bytes += len(&msg);
        self.frames.push_back((seq, msg));
        let mut lost = None;
        while self.bytes > self.budget && self.frames.len() > 1 {
            if let Some((s, m)) = self.frames.pop_front() {
                self.bytes -= len(&m);
                lost = Some(s);
            }
        }
        lost
    }

    /// Keeps a frame produced while the client is away, dropping nothing: `false` once the
    /// kept frames exceed the budget (the session cannot be resumed without loss).
    pub(crate) fn hold(&mut self, seq: u64, msg: Message) -> bool {
        self.bytes += len(&msg);
        self.frames.push_back((seq, msg));
        self.bytes <= self.budget
    }

    /// Bytes kept.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// The client confirmed every frame up to `seq`.
    pub(crate) fn confirm(&mut self, seq: u64) {
        while self.frames.front().is_some_and(|(s, _)| *s <= seq) {
            if let Some((_, m)) = self.frames.pop_front() {
                self.bytes -= len(&m);
            }
        }
        if self.frames.is_empty() {
            self.frames = VecDeque::new();
        }
    }

    /// The kept frames after `seq`, oldest first.
    pub(crate) fn after(&self, seq: u64) -> impl Iterator<Item = &Message> {
        self.frames
            .iter()
            .filter(move |(s, _)| *s > seq)
            .map(|(_, m)| m)
    }

    /// A counted client frame was handled.
    pub(crate) fn counted(&mut self, now: Instant) {
        self.in_count += 1;
        if self.receipt_due.is_none() {
            self.receipt_due = Some(now + RECEIPT_DELAY);
        }
    }

    /// The count to confirm in a `received` now, if one is due: after [`RECEIPT_EVERY`]
    /// frames, or once [`RECEIPT_DELAY`] passed since the first unconfirmed one.
    pub(crate) fn receipt(&mut self, now: Instant) -> Option<u64> {
        let pending = self.in_count - self.receipted;
        let due = self.receipt_due.is_some_and(|d| now >= d);
        if pending == 0 || (pending < RECEIPT_EVERY && !due) {
            return None;
        }
        self.receipted = self.in_count;
        self.receipt_due = None;
        Some(self.in_count)
    }

    /// When the next receipt falls due.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.receipt_due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(n: usize) -> Message {
        Message::Binary(bytes::Bytes::from(vec![0u8; n]))
    }

    #[test]
    fn keeps_within_the_budget_and_reports_the_loss() {
        let mut b = ResumeBuffer::new(100);
        assert_eq!(b.keep(1, msg(40)), None);
        assert_eq!(b.keep(2, msg(40)), None);
        assert_eq!(b.keep(3, msg(40)), Some(1));
        assert_eq!(b.bytes(), 80);
        assert_eq!(b.after(1).count(), 2);
        assert_eq!(b.after(2).count(), 1);
        b.confirm(2);
        assert_eq!(b.bytes(), 40);
        assert_eq!(b.after(0).count(), 1);
        // One frame over the budget is kept alone, and says so.
        assert_eq!(b.keep(4, msg(500)), Some(3));
        assert_eq!(b.bytes(), 500);
        b.confirm(10);
        assert_eq!(b.bytes(), 0);
        // While away nothing is dropped: the overflow is reported instead.
        assert!(b.hold(5, msg(60)));
        assert!(!b.hold(6, msg(60)));
        assert_eq!(b.after(0).count(), 2);
    }

    #[test]
    fn receipts_come_after_enough_frames_or_a_delay() {
        let t0 = Instant::now();
        let mut b = ResumeBuffer::new(100);
        assert_eq!(b.receipt(t0), None);
        b.counted(t0);
        assert_eq!(b.receipt(t0), None);
        assert_eq!(b.poll_timeout(), Some(t0 + RECEIPT_DELAY));
        assert_eq!(b.receipt(t0 + RECEIPT_DELAY), Some(1));
        assert_eq!(b.poll_timeout(), None);
        for _ in 0..RECEIPT_EVERY {
            b.counted(t0);
        }
        assert_eq!(b.receipt(t0), Some(1 + RECEIPT_EVERY));
        assert_eq!(b.receipt(t0 + RECEIPT_DELAY * 2), None);
    }

    #[test]
    fn stream_frames_and_receipts_do_not_count() {
        assert!(!counts(&ClientFrame::Received { seq: 1 }));
        assert!(!counts(&ClientFrame::StreamEnd { stream: 1 }));
        assert!(counts(&ClientFrame::Ping { req: None }));
        assert!(counts(&ClientFrame::Unprovide { req: None }));
    }
}
