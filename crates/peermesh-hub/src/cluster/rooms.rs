//! Room emits across hubs, numbered so a client moving between hubs gets each exactly once
//! (the rules are in [`super::fanlog`]).
//!
//! Both paths hold the room's read lock from numbering (or recording) to the end of the local
//! delivery, so the cut and the catch-up, taken under the rooms' write locks, never see an
//! emit half delivered. A room this hub has no members of has no lock to hold: then the
//! registry's count of room creations tells whether one appeared meanwhile, and the step is
//! retried.

use peermesh_proto::{RoomName, ServerFrame};

use super::relay::{set_room_seq, Relay};
use super::{room_subject, Backplane};
use crate::router::Router;

impl Backplane {
    /// A local client's emit to `room`: numbered, published once for the other hubs and
    /// delivered to this hub's members (except connection `except`) as one step. Returns the
    /// members of this hub reached.
    pub(crate) fn emit_room(
        &self,
        router: &Router,
        room: &RoomName,
        frame: &ServerFrame,
        except: Option<u64>,
    ) -> usize {
        let mut msg = Some(
            Relay::Room {
                seq: 0,
                origin: self.node.clone(),
                room: room.clone(),
                frame: frame.clone(),
            }
            .encode_mut(),
        );
        let subject = room_subject(room);
        let mut send = |seq: u64| {
            let mut m = msg.take()?;
            set_room_seq(&mut m, seq);
            let m = m.freeze();
            self.enqueue(subject.clone(), m.clone()).then_some(m)
        };
        loop {
            let created = router.registry.rooms_created();
            match router.registry.room(room) {
                Some(r) => {
                    let members = r.members.read();
                    if r.is_dead() {
                        continue;
                    }
                    self.room_log.local(|| false, &mut send);
                    return router.deliver_room(&members, frame, except, None);
                }
                None => {
                    let stale = || router.registry.rooms_created() != created;
                    if self.room_log.local(stale, &mut send) {
                        return 0;
                    }
                }
            }
        }
    }

    /// Another hub's emit `seq` to `room`: delivered to this hub's members (but not to one
    /// that already got it on the hub it came from) and kept in the recent history.
    pub(crate) fn room_in(
        &self,
        router: &Router,
        origin: &str,
        seq: u64,
        room: &RoomName,
        frame: &ServerFrame,
        raw: &bytes::Bytes,
    ) {
        loop {
            let created = router.registry.rooms_created();
            match router.registry.room(room) {
                Some(r) => {
                    let members = r.members.read();
                    if r.is_dead() {
                        continue;
                    }
                    router.deliver_room(&members, frame, None, Some((origin, seq)));
                    self.room_log.remote(origin, seq, raw, || false);
                    return;
                }
                None => {
                    let stale = || router.registry.rooms_created() != created;
                    if self.room_log.remote(origin, seq, raw, stale) {
                        return;
                    }
                }
            }
        }
    }
}

impl Backplane {
    /// The last room emit of every hub handled here (taken when a client's queue closes for
    /// a move).
    pub(crate) fn room_cut(&self) -> super::fanlog::Cut {
        self.room_log.cut()
    }

    /// Whether the room emits and topic messages a session arriving with `h` is owed are
    /// still in the histories.
    pub(crate) fn can_catch_up(&self, h: &super::Handoff) -> bool {
        self.room_log.catch_up(&h.cut, &h.mark).is_ok() && self.can_catch_up_topics(h)
    }

    /// Makes the arriving `conn` a member of `rooms` and, in the same step, queues the room
    /// emits it missed between the two hubs and marks those it already got: returns how many
    /// were replayed.
    pub(crate) fn install_rooms(
        &self,
        router: &Router,
        conn: &std::sync::Arc<crate::registry::ConnShared>,
        rooms: &[RoomName],
        h: &super::Handoff,
    ) -> Result<usize, super::fanlog::Gap> {
        router.registry.with_rooms_locked(rooms, Some(conn), || {
            let owed = self.room_log.catch_up(&h.cut, &h.mark)?;
            conn.skip_room_emits(owed.skip);
            let mut replayed = 0;
            for raw in &owed.replay {
                // The history only holds messages that were decoded once already.
                if let Ok(Relay::Room { room, frame, .. }) = Relay::decode(raw) {
                    let body = peermesh_proto::EncodedBody::encode(conn.encoding, &frame);
                    if rooms.contains(&room) && conn.send(body).is_ok() {
                        replayed += 1;
                    }
                }
            }
            self.counters
                .room_replayed
                .fetch_add(replayed as u64, std::sync::atomic::Ordering::Relaxed);
            Ok(replayed)
        })
    }
}
