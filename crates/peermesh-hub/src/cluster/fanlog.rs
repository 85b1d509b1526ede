//! Exactly-once room emits for a client whose session moves between hubs (sans-IO). A second
//! log, with its own sequence, does the same for topic messages (`publication`,
//! `topic_ended`; see `topics.rs`): "emit" below stands for either, "room" for the topic.
//!
//! Every hub numbers the room emits it publishes (one sequence per hub, starting above
//! anything an earlier run of the same hub name used) and receives every other hub's emits
//! in their order (one publisher's messages stay in order in NATS). So "which emits has this
//! hub handled" is one number per origin hub, and a session moving from hub A to hub B needs
//! two such pictures:
//!
//! - the **cut**, taken by A at the instant it closes the client's queue (under the write
//!   locks of the client's rooms, so no emit to them is half delivered): every emit at or
//!   below it reached the client through A; every later one did not;
//! - B's own picture when it installs the client (again under its rooms' write locks). For
//!   each origin, emits B handled after the cut (the client was on neither hub for them) are
//!   replayed from a short **history** of recent emits kept by every hub; emits B has not
//!   handled yet but A did are **skipped** for the client when B handles them.
//!
//! ```text
//!   origin O:   … s ≤ cut(O): delivered by A │ cut(O) < s ≤ here(O): replay │ later: live
//!                                 (if here(O) < cut(O): skip s ≤ cut(O) when it comes)
//! ```
//!
//! An origin the old hub never heard from (absent from the cut): only the emits this hub
//! handled since it asked for the session are owed. Emits of such a hub that reached this hub
//! before the ask and the old hub not at all by its cut would be missed; that needs the old
//! hub never to have received a room emit from that hub in its life, and to be behind this hub
//! on it by the whole time the handover takes.
//!
//! Limits: the history keeps the last [`MAX_ENTRIES`] emits and at most [`MAX_BYTES`] bytes;
//! at most [`MAX_ORIGINS`] origin hubs are tracked. A catch-up that needs an emit already
//! dropped from the history is a [`Gap`]: the move is refused (`resume_rejected`, a fresh
//! session), never silently short.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

/// Most emits the history keeps.
pub(crate) const MAX_ENTRIES: usize = 8192;
/// Most bytes of emits the history keeps.
pub(crate) const MAX_BYTES: usize = 16 << 20;
/// Most origin hubs tracked (a cluster has far fewer; a hostile publisher cannot grow it).
pub(crate) const MAX_ORIGINS: usize = 1024;

/// One hub's picture at an instant: the last emit handled, per origin hub.
pub(crate) type Cut = Vec<(String, u64)>;

/// The history no longer holds an emit a catch-up needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Gap {
    /// The origin hub whose emits are missing.
    pub(crate) origin: String,
}

/// What a client moving here needs: emits to replay (oldest first, per origin) and, per
/// origin, the last emit the old hub already delivered (to skip when it comes here).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct CatchUp {
    pub(crate) replay: Vec<Bytes>,
    pub(crate) skip: Vec<(Arc<str>, u64)>,
}

#[derive(Debug)]
struct Entry {
    origin: Arc<str>,
    seq: u64,
    msg: Bytes,
}

#[derive(Debug)]
struct Inner {
    node: Arc<str>,
    /// The last sequence number this hub gave one of its own emits.
    own: u64,
    /// The last emit handled, per other origin.
    last: HashMap<Arc<str>, u64>,
    ring: VecDeque<Entry>,
    bytes: usize,
    /// The newest emit dropped from the history, per origin.
    evicted: HashMap<Arc<str>, u64>,
}

/// The room-emit sequence of this hub and its picture of the others (see the module docs).
#[derive(Debug)]
pub(crate) struct FanLog {
    inner: Mutex<Inner>,
}

impl Inner {
    fn intern(&mut self, origin: &str) -> Option<Arc<str>> {
        if let Some((k, _)) = self.last.get_key_value(origin) {
            return Some(k.clone());
        }
        if self.last.len() >= MAX_ORIGINS {
            return None;
        }
        let k: Arc<str> = Arc::from(origin);
        self.last.insert(k.clone(), 0);
        Some(k)
    }

    fn push(&mut self, origin: Arc<str>, seq: u64, msg: Bytes) {
        self.bytes += msg.len();
        self.ring.push_back(Entry { origin, seq, msg });
        while self.ring.len() > MAX_ENTRIES || self.bytes > MAX_BYTES {
            let Some(old) = self.ring.pop_front() else {
                break;
            };
            self.bytes -= old.msg.len();
            let e = self.evicted.entry(old.origin).or_insert(0);
            *e = (*e).max(old.seq);
        }
    }

    fn here(&self, origin: &str) -> u64 {
        if origin == &*self.node {
            self.own
        } else {
            self.last.get(origin).copied().unwrap_or(0)
        }
    }
}

impl FanLog {
    /// The log of hub `node`, whose own emits are numbered after `start`.
    pub(crate) fn new(node: &str, start: u64) -> Self {
        Self {
            inner: Mutex::new(Inner {
                node: Arc::from(node),
                own: start,
                last: HashMap::new(),
                ring: VecDeque::new(),
                bytes: 0,
                evicted: HashMap::new(),
            }),
        }
    }

    /// A start above anything an earlier run of the same hub name can have reached: the
    /// time in milliseconds times 2^20 (a hub cannot publish a million emits a millisecond).
    pub(crate) fn start_now() -> u64 {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        ms.saturating_mul(1 << 20)
    }

    /// Numbers one of this hub's emits and sends it, as one step: `send(seq)` publishes the
    /// message and returns it, or `None` if it could not be published (the number is used up;
    /// the others see a gap, as for any message NATS lost). Skipped (`false`, nothing sent)
    /// when `stale()` says the caller's view of the room changed.
    pub(crate) fn local(
        &self,
        stale: impl FnOnce() -> bool,
        send: impl FnOnce(u64) -> Option<Bytes>,
    ) -> bool {
        let mut g = self.inner.lock();
        if stale() {
            return false;
        }
        g.own += 1;
        let seq = g.own;
        if let Some(msg) = send(seq) {
            let node = g.node.clone();
            g.push(node, seq, msg);
        }
        true
    }

    /// Records another hub's emit `seq`, handled here; `false` (nothing recorded) when
    /// `stale()` says the caller's view of the room changed.
    pub(crate) fn remote(
        &self,
        origin: &str,
        seq: u64,
        msg: &Bytes,
        stale: impl FnOnce() -> bool,
    ) -> bool {
        let mut g = self.inner.lock();
        if stale() {
            return false;
        }
        let Some(k) = g.intern(origin) else {
            return true;
        };
        if let Some(last) = g.last.get_mut(&k) {
            *last = (*last).max(seq);
        }
        // A copy: the message may be a slice of a large read buffer it would keep alive.
        g.push(k, seq, Bytes::copy_from_slice(msg));
        true
    }

    /// The last emit handled here, per origin (this hub's own included).
    pub(crate) fn cut(&self) -> Cut {
        let g = self.inner.lock();
        let mut cut: Cut = g.last.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        cut.push((g.node.to_string(), g.own));
        cut
    }

    /// What a client arriving from a hub whose picture was `cut` needs here. `mark` is this
    /// hub's picture when it asked for the session: for an origin the old hub never heard
    /// from, only emits handled here since the ask are owed.
    pub(crate) fn catch_up(&self, cut: &Cut, mark: &Cut) -> Result<CatchUp, Gap> {
        let g = self.inner.lock();
        let find = |c: &Cut, o: &str| c.iter().find(|(k, _)| k == o).map(|(_, v)| *v);
        let mut owed: HashMap<&str, (u64, u64)> = HashMap::new();
        let mut out = CatchUp::default();
        let origins = g.last.keys().map(|k| &**k).chain(std::iter::once(&*g.node));
        for o in origins {
            let here = g.here(o);
            let from = find(cut, o).or_else(|| find(mark, o)).unwrap_or(0);
            if here > from {
                if g.evicted.get(o).is_some_and(|e| *e > from) {
                    return Err(Gap {
                        origin: o.to_owned(),
                    });
                }
                owed.insert(o, (from, here));
            }
        }
        for (o, seq) in cut {
            if *seq > g.here(o) {
                let k = g
                    .last
                    .get_key_value(o.as_str())
                    .map_or_else(|| Arc::from(o.as_str()), |(k, _)| k.clone());
                out.skip.push((k, *seq));
            }
        }
        for e in &g.ring {
            if let Some((from, upto)) = owed.get(&*e.origin) {
                if e.seq > *from && e.seq <= *upto {
                    out.replay.push(e.msg.clone());
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tag: &str) -> Bytes {
        Bytes::copy_from_slice(tag.as_bytes())
    }

    fn texts(c: &CatchUp) -> Vec<String> {
        c.replay
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect()
    }

    #[test]
    fn own_emits_are_numbered_in_order_and_kept() {
        let log = FanLog::new("b", 100);
        for t in ["x", "y"] {
            assert!(log.local(|| false, |seq| Some(msg(&format!("{t}{seq}")))));
        }
        assert!(!log.local(|| true, |_| panic!("not sent when stale")));
        assert!(log.cut().contains(&("b".to_owned(), 102)));
        // An old hub that saw b's emits up to 101: only 102 is owed.
        let c = log
            .catch_up(&vec![("b".into(), 101)], &vec![])
            .expect("kept");
        assert_eq!(texts(&c), ["y102"]);
        assert!(c.skip.is_empty());
    }

    #[test]
    fn emits_handled_here_after_the_cut_are_replayed_and_earlier_ones_skipped() {
        let log = FanLog::new("b", 0);
        for s in 1..=5 {
            assert!(log.remote("o", s, &msg(&format!("o{s}")), || false));
        }
        for s in 1..=2 {
            assert!(log.remote("p", s, &msg(&format!("p{s}")), || false));
        }
        // The old hub had delivered o up to 3 and p up to 4 (p's 3 and 4 are on their way here).
        let cut = vec![
            ("o".to_owned(), 3),
            ("p".to_owned(), 4),
            ("b".to_owned(), 0),
        ];
        let c = log.catch_up(&cut, &vec![]).expect("kept");
        assert_eq!(texts(&c), ["o4", "o5"]);
        assert_eq!(c.skip, vec![(Arc::from("p"), 4)]);
    }

    #[test]
    fn an_origin_the_old_hub_never_heard_from_owes_only_what_came_since_the_ask() {
        let log = FanLog::new("b", 0);
        assert!(log.remote("n", 7, &msg("n7"), || false));
        let mark = log.cut();
        assert!(log.remote("n", 8, &msg("n8"), || false));
        let c = log.catch_up(&vec![], &mark).expect("kept");
        assert_eq!(texts(&c), ["n8"]);
    }

    #[test]
    fn a_catch_up_past_the_history_is_a_gap() {
        let log = FanLog::new("b", 0);
        for s in 1..=(MAX_ENTRIES as u64 + 10) {
            assert!(log.remote("o", s, &msg("m"), || false));
        }
        assert_eq!(
            log.catch_up(&vec![("o".into(), 5)], &vec![]),
            Err(Gap { origin: "o".into() })
        );
        let c = log
            .catch_up(&vec![("o".into(), 20)], &vec![])
            .expect("kept");
        assert_eq!(c.replay.len(), MAX_ENTRIES - 10);
    }

    mod model {
        use super::*;
        use proptest::prelude::*;

        /// One step of the world: an origin publishes, a hub handles the next emit of an
        /// origin, or the move goes one step on (ask, cut, install).
        #[derive(Debug, Clone)]
        enum Step {
            Publish(usize),
            Handle { hub: usize, origin: usize },
            Move,
        }

        fn step() -> impl Strategy<Value = Step> {
            prop_oneof![
                (0..5usize).prop_map(Step::Publish),
                ((0..2usize), (0..5usize)).prop_map(|(hub, origin)| Step::Handle { hub, origin }),
                Just(Step::Move),
            ]
        }

        /// Hubs 0 (A, the old hub) and 1 (B, the new one) are origins 0 and 1 too; 2..5 are
        /// other hubs. The client is a member throughout: on A until the cut, on B from the
        /// install. Each emit must reach it exactly once.
        fn run(steps: &[Step]) -> Result<(), TestCaseError> {
            let names = ["a", "b", "o2", "o3", "o4"];
            let logs = [FanLog::new("a", 1000), FanLog::new("b", 5000)];
            let mut next = [1000u64, 5000, 0, 100, 7];
            let mut published: Vec<Vec<u64>> = vec![Vec::new(); 5];
            let mut handled = [[0usize; 5]; 2];
            let mut got: Vec<(usize, u64)> = Vec::new();
            let mut phase = 0;
            let (mut mark, mut cut): (Cut, Cut) = (Vec::new(), Vec::new());
            let mut skip: HashMap<String, u64> = HashMap::new();
            let wire = |o: usize, seq: u64| Bytes::from(format!("{o}:{seq}"));
            // Every hub has heard from every origin before the move (the documented case).
            let mut script: Vec<Step> = Vec::new();
            for o in 0..5 {
                script.push(Step::Publish(o));
                for hub in 0..2 {
                    script.push(Step::Handle { hub, origin: o });
                }
            }
            script.extend(steps.iter().cloned());
            script.extend([Step::Move, Step::Move, Step::Move]);
            // In the end every hub handles everything.
            for o in 0..5 {
                for _ in 0..=steps.len() {
                    script.push(Step::Handle { hub: 1, origin: o });
                }
            }
            let deliver = |hub: usize,
                           o: usize,
                           seq: u64,
                           phase: usize,
                           skip: &mut HashMap<String, u64>,
                           got: &mut Vec<(usize, u64)>| {
                if hub == 0 && phase < 2 {
                    got.push((o, seq));
                } else if hub == 1 && phase == 3 {
                    match skip.get(names[o]) {
                        Some(upto) if seq <= *upto => {}
                        _ => {
                            skip.remove(names[o]);
                            got.push((o, seq));
                        }
                    }
                }
            };
            for s in script {
                match s {
                    Step::Publish(o) => {
                        if o < 2 {
                            let mut seq = 0;
                            logs[o].local(
                                || false,
                                |s| {
                                    seq = s;
                                    Some(wire(o, s))
                                },
                            );
                            published[o].push(seq);
                            handled[o][o] += 1;
                            deliver(o, o, seq, phase, &mut skip, &mut got);
                        } else {
                            next[o] += 1;
                            published[o].push(next[o]);
                        }
                    }
                    Step::Handle { hub, origin } => {
                        if origin == hub || handled[hub][origin] >= published[origin].len() {
                            continue;
                        }
                        let seq = published[origin][handled[hub][origin]];
                        handled[hub][origin] += 1;
                        logs[hub].remote(names[origin], seq, &wire(origin, seq), || false);
                        deliver(hub, origin, seq, phase, &mut skip, &mut got);
                    }
                    Step::Move => {
                        match phase {
                            0 => mark = logs[1].cut(),
                            1 => cut = logs[0].cut(),
                            2 => {
                                let owed = logs[1]
                                    .catch_up(&cut, &mark)
                                    .map_err(|g| TestCaseError::fail(format!("gap: {g:?}")))?;
                                for m in &owed.replay {
                                    let text = String::from_utf8_lossy(m);
                                    let (o, seq) = text.split_once(':').unwrap_or_default();
                                    got.push((o.parse().unwrap_or(99), seq.parse().unwrap_or(0)));
                                }
                                skip = owed.skip.iter().map(|(o, s)| (o.to_string(), *s)).collect();
                            }
                            _ => continue,
                        }
                        phase += 1;
                    }
                }
            }
            let mut want: Vec<(usize, u64)> = published
                .iter()
                .enumerate()
                .flat_map(|(o, v)| v.iter().map(move |s| (o, *s)))
                .collect();
            want.sort_unstable();
            let mut sorted = got.clone();
            sorted.sort_unstable();
            prop_assert_eq!(sorted, want, "received {:?}", got);
            // Each origin's emits arrive in order.
            for o in 0..5 {
                let mine: Vec<u64> = got
                    .iter()
                    .filter(|(x, _)| *x == o)
                    .map(|(_, s)| *s)
                    .collect();
                prop_assert!(
                    mine.windows(2).all(|w| w[0] < w[1]),
                    "origin {}: {:?}",
                    o,
                    mine
                );
            }
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]
            #[test]
            fn a_moving_member_gets_every_emit_exactly_once_in_order(
                steps in proptest::collection::vec(step(), 0..80)
            ) {
                run(&steps)?;
            }
        }
    }

    #[test]
    fn stale_views_record_nothing_and_origins_are_bounded() {
        let log = FanLog::new("b", 0);
        assert!(!log.remote("o", 1, &msg("m"), || true));
        assert_eq!(log.cut(), vec![("b".to_owned(), 0)]);
        for i in 0..(MAX_ORIGINS + 5) {
            assert!(log.remote(&format!("h{i}"), 1, &msg("m"), || false));
        }
        assert_eq!(log.cut().len(), MAX_ORIGINS + 1);
    }
}
