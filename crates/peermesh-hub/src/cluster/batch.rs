//! Hub-to-hub messages for one subject coalesced into one NATS message (sans-IO).
//!
//! A busy session's home would publish one message per event to every hub with members of it.
//! Each NATS message costs a publish on this hub, a round through nats-server and a parse on
//! the receiving hub, whatever its size, and the broker's capacity is counted in messages. So
//! the home *opens a batch* for a subject instead of publishing an event at once,
//! and the hub's flusher publishes everything the batch collected when it next runs: after
//! the task that produced the events yields, typically after it handled all the frames of
//! one socket read.
//!
//! ```text
//!   kind 13 │ count: u32 │ count × (length: u32, one relay message of any other kind)
//! ```
//!
//! Order: a batch is open per subject, and *every* message for a subject with an open batch
//! joins it, batched or not, so the receiving hub handles them in the order they were
//! published. A batch holds at most [`BATCH_BYTES`]; the message that would go beyond closes
//! it (it is published at once, still in order) and opens the next. A batch of one message is
//! published as that message.
//!
//! A message that joins a batch counts as sent: if the batch then finds the queue to NATS full
//! (65,536 messages waiting, NATS gone for a while), its messages are dropped and counted as one
//! in `peermesh_cluster_dropped_total`, where a message published alone would have been refused
//! to its sender (`unknown_target`). Only a subject with a busy session's events waits in a
//! batch.

use std::collections::HashMap;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::relay::{err, RelayError};

/// The kind byte of a batch.
pub(crate) const BATCH_KIND: u8 = 13;

/// Most bytes of messages one batch holds (NATS's default `max_payload` is 1 MiB): a message
/// beyond it closes the batch.
pub(crate) const BATCH_BYTES: usize = 256 << 10;

/// The open batches, by subject.
#[derive(Debug, Default)]
pub(crate) struct Batches {
    open: HashMap<String, Open>,
}

#[derive(Debug, Default)]
struct Open {
    msgs: Vec<Bytes>,
    bytes: usize,
}

/// What adding a message asks of the caller.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Added {
    /// A batch closed by the limit: publish it now, before anything else for the subject.
    pub(crate) publish: Option<Bytes>,
    /// The subject had no open batch: have the flusher run.
    pub(crate) opened: bool,
}

impl Batches {
    /// Whether a batch is open for `subject`.
    pub(crate) fn is_open(&self, subject: &str) -> bool {
        self.open.contains_key(subject)
    }

    /// Adds `msg` to the batch of `subject`, opening one if none is.
    pub(crate) fn add(&mut self, subject: &str, msg: Bytes) -> Added {
        let mut added = Added::default();
        let open = match self.open.get_mut(subject) {
            Some(open) => open,
            None => {
                added.opened = true;
                self.open.entry(subject.to_owned()).or_default()
            }
        };
        if !open.msgs.is_empty() && open.bytes + msg.len() > BATCH_BYTES {
            added.publish = Some(seal(std::mem::take(&mut open.msgs)));
            open.bytes = 0;
        }
        open.bytes += msg.len();
        open.msgs.push(msg);
        added
    }

    /// Closes every open batch: what to publish, by subject.
    pub(crate) fn take_all(&mut self) -> Vec<(String, Bytes)> {
        self.open
            .drain()
            .filter(|(_, open)| !open.msgs.is_empty())
            .map(|(subject, open)| (subject, seal(open.msgs)))
            .collect()
    }

    /// Open batches.
    pub(crate) fn len(&self) -> usize {
        self.open.len()
    }
}

/// One message, or a batch of several.
pub(crate) fn seal(mut msgs: Vec<Bytes>) -> Bytes {
    if msgs.len() == 1 {
        return msgs.pop().unwrap_or_default();
    }
    let size = 5 + msgs.iter().map(|m| 4 + m.len()).sum::<usize>();
    let mut out = BytesMut::with_capacity(size);
    out.put_u8(BATCH_KIND);
    out.put_u32(u32::try_from(msgs.len()).unwrap_or(u32::MAX));
    for m in &msgs {
        out.put_u32(u32::try_from(m.len()).unwrap_or(u32::MAX));
        out.put_slice(m);
    }
    out.freeze()
}

/// How many messages a batch this hub sealed holds (`None` for a lone message).
pub(crate) fn count(msg: &[u8]) -> Option<u32> {
    match msg {
        [BATCH_KIND, a, b, c, d, ..] => Some(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => None,
    }
}

/// The messages of a batch (slices of `whole`, not copies). Empty, nested or inconsistent
/// batches are errors.
pub(crate) fn split(whole: &Bytes) -> Result<Vec<Bytes>, RelayError> {
    let mut b: &[u8] = whole;
    if b.first() != Some(&BATCH_KIND) {
        return Err(err("not a batch"));
    }
    b.advance(1);
    if b.remaining() < 4 {
        return Err(err("truncated batch count"));
    }
    let count = b.get_u32() as usize;
    // Each message takes at least its length and its kind byte.
    if count < 2 || count > b.remaining() / 5 {
        return Err(err(format!(
            "a batch of {count} messages in {} bytes",
            b.remaining()
        )));
    }
    let mut msgs = Vec::with_capacity(count);
    let mut at = 5;
    for _ in 0..count {
        if b.remaining() < 4 {
            return Err(err("truncated batch message length"));
        }
        let len = b.get_u32() as usize;
        at += 4;
        if len == 0 || len > b.remaining() {
            return Err(err(format!(
                "a batched message of {len} bytes with {} left",
                b.remaining()
            )));
        }
        if b[0] == BATCH_KIND {
            return Err(err("a batch inside a batch"));
        }
        msgs.push(whole.slice(at..at + len));
        b.advance(len);
        at += len;
    }
    if b.has_remaining() {
        return Err(err("bytes after a batch"));
    }
    Ok(msgs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn msg(tag: u8, len: usize) -> Bytes {
        let mut v = vec![tag; len.max(1)];
        v[0] = 1 + tag % 12;
        Bytes::from(v)
    }

    /// What the receiving hub gets from a sequence of published messages, in order.
    fn received(published: &[Bytes]) -> Vec<Bytes> {
        published
            .iter()
            .flat_map(|p| {
                if p[0] == BATCH_KIND {
                    split(p).expect("a batch we sealed splits")
                } else {
                    vec![p.clone()]
                }
            })
            .collect()
    }

    #[test]
    fn one_message_goes_out_as_itself_and_several_as_one_batch() {
        let mut b = Batches::default();
        let a = msg(1, 10);
        assert!(b.add("s", a.clone()).opened);
        assert!(b.is_open("s"));
        assert_eq!(b.take_all(), vec![("s".to_owned(), a.clone())]);
        assert!(!b.is_open("s"));

        let (x, y, z) = (msg(2, 7), msg(3, 1), msg(4, 300));
        assert!(b.add("s", x.clone()).opened);
        assert!(!b.add("s", y.clone()).opened);
        assert!(!b.add("s", z.clone()).opened);
        let out = b.take_all();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1[0], BATCH_KIND);
        assert_eq!(split(&out[0].1).expect("splits"), vec![x, y, z]);
        assert_eq!(count(&out[0].1), Some(3));
        assert_eq!(count(&a), None);
    }

    #[test]
    fn a_message_beyond_the_limit_closes_the_batch_before_it() {
        let mut b = Batches::default();
        let big = msg(5, BATCH_BYTES - 100);
        assert!(b.add("s", big.clone()).opened);
        let next = msg(6, 200);
        let added = b.add("s", next.clone());
        assert_eq!(added.publish, Some(big));
        assert!(!added.opened);
        assert_eq!(b.take_all(), vec![("s".to_owned(), next)]);
    }

    #[test]
    fn subjects_are_batched_apart() {
        let mut b = Batches::default();
        assert!(b.add("a", msg(1, 5)).opened);
        assert!(b.add("b", msg(2, 5)).opened);
        assert_eq!(b.len(), 2);
        let mut out = b.take_all();
        out.sort();
        assert_eq!(out.len(), 2);
        assert_eq!(b.len(), 0);
    }

    #[test]
    fn malformed_batches_are_errors() {
        let good = {
            let mut b = Batches::default();
            b.add("s", msg(1, 9));
            b.add("s", msg(2, 9));
            b.take_all().remove(0).1
        };
        assert_eq!(split(&good).expect("good").len(), 2);
        for n in 0..good.len() {
            assert!(split(&good.slice(..n)).is_err(), "truncated at {n}");
        }
        let mut extra = good.to_vec();
        extra.push(0);
        assert!(split(&Bytes::from(extra)).is_err());
        // One message is never sent as a batch, and a count beyond the bytes is refused
        // before anything is allocated for it.
        let mut one = vec![BATCH_KIND, 0, 0, 0, 1, 0, 0, 0, 1, 1];
        assert!(split(&Bytes::from(one.clone())).is_err());
        one[1] = 0xff;
        assert!(split(&Bytes::from(one)).is_err());
        // Nested.
        let mut nested = vec![BATCH_KIND, 0, 0, 0, 2, 0, 0, 0, 1, BATCH_KIND];
        nested.extend_from_slice(&[0, 0, 0, 1, 1]);
        assert!(split(&Bytes::from(nested)).is_err());
    }

    proptest! {
        /// Whatever is added, and whenever the flusher runs, the receiver gets every message
        /// once, in order, per subject; no published batch exceeds the limit by more than one
        /// message.
        #[test]
        fn every_message_arrives_once_in_order(
            steps in proptest::collection::vec((0u8..3, 1usize..120_000, any::<bool>()), 1..60),
        ) {
            let mut b = Batches::default();
            let mut sent: HashMap<String, Vec<Bytes>> = HashMap::new();
            let mut published: HashMap<String, Vec<Bytes>> = HashMap::new();
            for (i, (subject, len, flush)) in steps.into_iter().enumerate() {
                let subject = format!("s{subject}");
                let m = msg(i as u8, len);
                sent.entry(subject.clone()).or_default().push(m.clone());
                if let Some(p) = b.add(&subject, m).publish {
                    prop_assert!(p.len() <= BATCH_BYTES + 5 + 4 * 60 + 120_000);
                    published.entry(subject.clone()).or_default().push(p);
                }
                if flush {
                    for (s, p) in b.take_all() {
                        published.entry(s).or_default().push(p);
                    }
                }
            }
            for (s, p) in b.take_all() {
                published.entry(s).or_default().push(p);
            }
            for (subject, msgs) in sent {
                let got = received(published.get(&subject).map(Vec::as_slice).unwrap_or(&[]));
                prop_assert_eq!(got, msgs);
            }
        }
    }
}
