//! The one path every delivery takes.
//!
//! Connection tasks never touch another connection's queue directly: they ask the [`Router`]
//! to deliver to a client id, a room or a connection number. Today the router resolves targets
//! in the local [`Registry`]; a cluster backplane plugs in here, behind the same calls.
//!
//! A frame is encoded once per encoding and the encoded body (a refcounted `Bytes`) is shared by
//! every recipient; each recipient's writer only prepends its own `seq`.

use std::sync::Arc;

use peermesh_proto::{
    ClientId, EncodedBody, Encoding, Payload, Publication, RoomName, ServerFrame,
};

use crate::cluster::{Backplane, Remote};
use crate::metrics::Metrics;
use crate::registry::{ConnShared, Control, QueueError, Registry};
use crate::services::{Closed, Refusal, Services, Topic};

/// A frame encoded lazily, at most once per encoding.
pub(crate) struct Shared<'a> {
    frame: &'a ServerFrame,
    json: Option<EncodedBody>,
    msgpack: Option<EncodedBody>,
}

impl<'a> Shared<'a> {
    pub(crate) fn new(frame: &'a ServerFrame) -> Self {
        Self {
            frame,
            json: None,
            msgpack: None,
        }
    }

    pub(crate) fn body(&mut self, enc: Encoding) -> EncodedBody {
        let slot = match enc {
            Encoding::Json => &mut self.json,
            Encoding::MsgPack => &mut self.msgpack,
        };
        slot.get_or_insert_with(|| EncodedBody::encode(enc, self.frame))
            .clone()
    }
}

/// Why a delivery to a client failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RouteError {
    /// No client with that id is connected.
    UnknownTarget,
    /// The target is connected but could not take the frame (closing, or closed as slow).
    TargetUnavailable,
}

/// Where a direct message went.
#[derive(Debug)]
pub(crate) enum Target {
    /// To a connection of this hub.
    Local(Arc<ConnShared>),
    /// To another hub of the cluster.
    Remote,
}

/// Delivers frames to clients, rooms and connections.
#[derive(Debug, Clone)]
pub(crate) struct Router {
    /// The cluster backplane, when the hub is part of a cluster.
    pub(crate) cluster: Option<Arc<Backplane>>,
    pub(crate) registry: Arc<Registry>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) services: Arc<Services>,
    pub(crate) sessions: Arc<crate::sessions::Sessions>,
}

impl Router {
    /// Delivers a frame to one client, on this hub or (in a cluster) on the hub that holds it.
    pub(crate) fn to_client(
        &self,
        to: &ClientId,
        frame: &ServerFrame,
    ) -> Result<Target, RouteError> {
        match self.to_local_client(to, frame) {
            Ok(conn) => Ok(Target::Local(conn)),
            // Not here, or closing here because its session just moved to another hub.
            Err(e) => {
                let Some(bp) = &self.cluster else {
                    return Err(e);
                };
                match bp.locate(to) {
                    Remote::On(node) => {
                        if bp.direct(&node, to, frame) {
                            Ok(Target::Remote)
                        } else {
                            Err(RouteError::TargetUnavailable)
                        }
                    }
                    Remote::Nowhere => Err(e),
                }
            }
        }
    }

    /// Delivers a frame to one client of this hub; returns its connection.
    pub(crate) fn to_local_client(
        &self,
        to: &ClientId,
        frame: &ServerFrame,
    ) -> Result<Arc<ConnShared>, RouteError> {
        let conn = self.registry.client(to).ok_or(RouteError::UnknownTarget)?;
        self.to_conn(&conn, EncodedBody::encode(conn.encoding, frame))
            .map(|()| conn)
    }

    /// Queues an encoded frame for one connection.
    pub(crate) fn to_conn(&self, conn: &ConnShared, body: EncodedBody) -> Result<(), RouteError> {
        match conn.send(body) {
            Ok(()) => {
                self.metrics.inc_deliveries(1);
                Ok(())
            }
            Err(QueueError::SlowConsumer) => {
                self.metrics.inc_slow_consumers();
                Err(RouteError::TargetUnavailable)
            }
            Err(QueueError::Closed) => Err(RouteError::TargetUnavailable),
        }
    }

    /// A client's emit to a room: delivered to the members of this hub (except connection
    /// `except`) and, in a cluster, published once for the other hubs' members. Returns the
    /// members of this hub reached.
    pub(crate) fn emit_room(
        &self,
        room: &RoomName,
        frame: &ServerFrame,
        except: Option<u64>,
    ) -> usize {
        match &self.cluster {
            Some(bp) => bp.emit_room(self, room, frame, except),
            None => self.to_room(room, frame, except),
        }
    }

    /// Delivers a frame to every member of a room on this hub except connection `except`;
    /// returns the number of members reached.
    pub(crate) fn to_room(
        &self,
        room: &RoomName,
        frame: &ServerFrame,
        except: Option<u64>,
    ) -> usize {
        let Some(room) = self.registry.room(room) else {
            return 0;
        };
        let members = room.members.read();
        self.deliver_room(&members, frame, except, None)
    }

    /// Delivers a frame to `members` (under the caller's lock of the room) except connection
    /// `except`, and except members that already got room emit `from` = (origin hub, seq) on
    /// another hub; returns the number reached.
    pub(crate) fn deliver_room(
        &self,
        members: &std::collections::HashMap<peermesh_proto::ClientId, Arc<ConnShared>>,
        frame: &ServerFrame,
        except: Option<u64>,
        from: Option<(&str, u64)>,
    ) -> usize {
        let mut shared = Shared::new(frame);
        let mut reached = 0;
        let mut slow = 0;
        for conn in members.values() {
            if Some(conn.conn) == except {
                continue;
            }
            if let Some((origin, seq)) = from {
                if conn.skips_room_emit(origin, seq) {
                    if let Some(bp) = &self.cluster {
                        bp.counters
                            .room_skipped
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    continue;
                }
            }
            match conn.send(shared.body(conn.encoding)) {
                Ok(()) => reached += 1,
                Err(QueueError::SlowConsumer) => slow += 1,
                Err(QueueError::Closed) => {}
            }
        }
        self.metrics.inc_deliveries(reached as u64);
        for _ in 0..slow {
            self.metrics.inc_slow_consumers();
        }
        reached
    }

    /// Publishes to every subscriber of a topic; returns how many it reached. The frame is
    /// encoded at most once per encoding; a subscriber whose outbound queue is full is closed
    /// as a slow consumer and the others carry on.
    pub(crate) fn to_topic(&self, topic: &Topic, payload: Payload) -> Result<usize, Refusal> {
        let frame = ServerFrame::Publication(Publication {
            service: topic.service.clone(),
            topic: topic.name.clone(),
            payload,
        });
        let mut shared = Shared::new(&frame);
        // Numbered, published for the other hubs and delivered here as one step, under the
        // topic's lock: a subscriber moving away gets it here or on its new hub, once.
        let (reached, slow) = topic
            .with_subscribers(|subs| {
                if let Some(bp) = &self.cluster {
                    bp.topic(&frame);
                }
                let (mut reached, mut slow) = (0usize, 0usize);
                for conn in subs.values() {
                    match conn.send(shared.body(conn.encoding)) {
                        Ok(()) => reached += 1,
                        Err(QueueError::SlowConsumer) => slow += 1,
                        Err(QueueError::Closed) => {}
                    }
                }
                (reached, slow)
            })
            .ok_or_else(|| topic.gone())?;
        self.metrics.inc_publications(1);
        self.metrics.inc_deliveries(reached as u64);
        for _ in 0..slow {
            self.metrics.inc_slow_consumers();
        }
        Ok(reached)
    }

    /// Tells the subscribers of topics that ended (`topic_ended`).
    pub(crate) fn topics_ended(&self, closed: Vec<Closed>) {
        for c in closed {
            let frame = ServerFrame::TopicEnded {
                service: c.topic.service.clone(),
                topic: c.topic.name.clone(),
                reason: c.reason,
            };
            let mut shared = Shared::new(&frame);
            c.topic.end(|subscribers| {
                if let Some(bp) = &self.cluster {
                    bp.topic(&frame);
                }
                for conn in subscribers {
                    let _ = self.to_conn(conn, shared.body(conn.encoding));
                }
            });
        }
    }

    /// Sends a notice to the connection holding `slot` (an `ack_id`'s high bits).
    pub(crate) fn control_slot(&self, slot: u32, c: Control) -> bool {
        self.registry.by_slot(slot).is_some_and(|t| t.control(c))
    }

    /// Sends a notice to a connection's task by number; false if it is gone or its inbox full.
    pub(crate) fn control(&self, conn: u64, c: Control) -> bool {
        self.registry.conn(conn).is_some_and(|t| t.control(c))
    }
}
