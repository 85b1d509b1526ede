//! The client's half of resume: the frames it sent that the hub has not confirmed, sent again
//! after a resume from the count the hub confirms, and the receipts it owes the hub.
//!
//! Frames are counted the way the hub counts them: every frame but `hello`, `received` and
//! stream frames (streams do not survive a drop).

use std::collections::VecDeque;
use std::time::Duration;

use peermesh_proto::ClientFrame;
use tokio::time::Instant;

use crate::connection::{self, WsMessage};

/// Hub frames after which a receipt is sent at once.
pub(crate) const RECEIPT_EVERY: u64 = 32;
/// Longest wait before a receipt for fewer frames.
pub(crate) const RECEIPT_DELAY: Duration = Duration::from_millis(200);
/// Unconfirmed bytes beyond which the client stops taking new commands until the hub confirms.
pub(crate) const SENT_CAP: usize = 1 << 20;

/// Whether a frame counts (see the module docs).
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

/// Sent frames not yet confirmed, and receipts owed.
#[derive(Debug, Default)]
pub(crate) struct SentLog {
    frames: VecDeque<(u64, WsMessage)>,
    bytes: usize,
    /// Counted frames sent in this session.
    count: u64,
    /// Hub frames seen since the last receipt, and when a receipt falls due.
    unreceipted: u64,
    receipt_due: Option<Instant>,
}

impl SentLog {
    /// Records a counted frame as sent.
    pub(crate) fn sent(&mut self, msg: &WsMessage) {
        self.count += 1;
        self.bytes += connection::wire_len(msg);
        self.frames.push_back((self.count, msg.clone()));
    }

    /// The hub confirmed the first `count` counted frames.
    pub(crate) fn confirmed(&mut self, count: u64) {
        while self.frames.front().is_some_and(|(n, _)| *n <= count) {
            if let Some((_, m)) = self.frames.pop_front() {
                self.bytes -= connection::wire_len(&m);
            }
        }
    }

    /// After a resume: the frames the hub did not handle (after its `received`), to send
    /// again, oldest first.
    pub(crate) fn resend(&mut self, received: u64) -> Vec<WsMessage> {
        self.confirmed(received);
        self.frames.iter().map(|(_, m)| m.clone()).collect()
    }

    /// Unconfirmed bytes.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// A fresh session: nothing to send again, counting starts over.
    pub(crate) fn reset(&mut self) {
        *self = Self::default();
    }

    /// A hub frame arrived; `true` when a receipt is due at once.
    pub(crate) fn seen(&mut self, now: Instant) -> bool {
        self.unreceipted += 1;
        if self.receipt_due.is_none() {
            self.receipt_due = Some(now + RECEIPT_DELAY);
        }
        self.unreceipted >= RECEIPT_EVERY
    }

    /// A receipt was queued.
    pub(crate) fn receipted(&mut self) {
        self.unreceipted = 0;
        self.receipt_due = None;
    }

    /// When the next receipt falls due.
    pub(crate) fn receipt_due(&self) -> Option<Instant> {
        self.receipt_due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(s: &str) -> WsMessage {
        WsMessage::Text(s.to_owned().into())
    }

    #[test]
    fn resends_exactly_what_the_hub_did_not_confirm() {
        let mut log = SentLog::default();
        for s in ["a", "bb", "ccc", "dddd"] {
            log.sent(&msg(s));
        }
        assert_eq!(log.bytes(), 10);
        log.confirmed(1);
        assert_eq!(log.bytes(), 9);
        let again = log.resend(3);
        assert_eq!(again, [msg("dddd")]);
        log.reset();
        assert_eq!((log.bytes(), log.resend(0).len()), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn receipts_fall_due_after_a_count_or_a_delay() {
        let mut log = SentLog::default();
        let now = Instant::now();
        assert!(!log.seen(now));
        assert_eq!(log.receipt_due(), Some(now + RECEIPT_DELAY));
        for _ in 1..RECEIPT_EVERY - 1 {
            assert!(!log.seen(now));
        }
        assert!(log.seen(now));
        log.receipted();
        assert_eq!(log.receipt_due(), None);
        assert!(counts(&ClientFrame::Ping { req: None }));
        assert!(!counts(&ClientFrame::Received { seq: 3 }));
    }
}
