//! Streams whose two ends are on different hubs: relaying stream items, and ending the
//! streams whose other end can no longer be reached.
//!
//! ```text
//!   opener's task ──Open──► peermesh.node.<target hub> ──► stream_in ──► target's mailbox
//!   target's task ──Accepted{its id, its conn}──► opener's hub ──► opener's mailbox
//!   either task ──Data / Credit / End / Reset──► the other hub ──► the other mailbox
//! ```
//!
//! Items of one stream direction leave a hub in order (one publisher, one subject per hub)
//! and NATS keeps the order of one connection's messages, so data, end and reset arrive in
//! the order they were sent. NATS itself may lose messages only when a connection drops or a
//! subscriber overflows; the client library reports both, and then every stream with an end
//! on another hub is reset with `cluster_unavailable` on this hub, and its other end is told
//! (once the link is back), rather than left with a silent gap. A hub that dies takes its
//! streams with it: when its ids are released, the other ends are reset with `peer_left`.

use std::collections::HashSet;
use std::sync::Arc;

use peermesh_proto::{ClientId, EncodedBody, ErrorCode};

use super::relay::{Relay, StreamMsg, StreamWire};
use super::{node_subject, Backplane};
use crate::registry::Control;
use crate::router::Router;
use crate::streams::{Incoming, Link, Peer, RemoteEnd, StreamItem};

impl Backplane {
    /// Relays a stream item to hub `node`; false when the queue to NATS is full.
    pub(crate) fn stream(&self, node: &str, msg: StreamMsg) -> bool {
        self.enqueue(node_subject(node), Relay::Stream(Box::new(msg)).encode())
    }

    /// Local connection `conn` holds one more stream with client `peer` of another hub.
    pub(crate) fn stream_opened(&self, peer: &ClientId, conn: u64) {
        *self
            .stream_peers
            .entry(peer.clone())
            .or_default()
            .entry(conn)
            .or_default() += 1;
    }

    /// Local connection `conn` holds one stream less with client `peer` of another hub.
    pub(crate) fn stream_closed(&self, peer: &ClientId, conn: u64) {
        self.stream_peers.remove_if_mut(peer, |_, conns| {
            if let Some(n) = conns.get_mut(&conn) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    conns.remove(&conn);
                }
            }
            conns.is_empty()
        });
    }

    /// Client `id` of hub `node` is gone: the local ends of its streams are reset, when its
    /// hub died (a live hub resets them itself, after the data it still relays).
    pub(crate) fn stream_peer_released(&self, router: &Router, id: &ClientId, node: &str) {
        if self.cluster.is_member(node) {
            return;
        }
        let Some(conns) = self
            .stream_peers
            .get(id)
            .map(|c| c.keys().copied().collect::<Vec<_>>())
        else {
            return;
        };
        for conn in conns {
            router.control(
                conn,
                Control::StreamPeerGone {
                    id: id.clone(),
                    node: node.to_owned(),
                },
            );
        }
    }

    /// Messages between this hub and NATS may have been lost: every stream with an end on
    /// another hub is reset.
    pub(crate) fn streams_interrupted(&self, router: &Router) {
        let conns: HashSet<u64> = self
            .stream_peers
            .iter()
            .flat_map(|e| e.value().keys().copied().collect::<Vec<_>>())
            .collect();
        for conn in conns {
            router.control(conn, Control::StreamsInterrupted);
        }
    }

    /// A stream item from another hub: into the mailbox of the connection it names.
    pub(crate) fn stream_in(&self, router: &Router, m: StreamMsg) {
        let target = router
            .registry
            .client(&m.to)
            .filter(|c| m.conn == 0 || c.conn == m.conn);
        let Some(target) = target else {
            let (code, reason) = match m.item {
                StreamWire::Reset { .. } => return,
                StreamWire::Open { .. } => (
                    ErrorCode::UnknownTarget,
                    format!("no client with id {:?} is connected", m.to.as_str()),
                ),
                _ => (ErrorCode::PeerLeft, format!("{} disconnected", m.to)),
            };
            self.bounce(&m, code, reason);
            return;
        };
        let stream = m.stream;
        let item = match m.item {
            StreamWire::Open { window, ref meta } => {
                let meta = meta.clone();
                let meta_len = meta.as_ref().map_or(0, |v| v.to_string().len());
                StreamItem::Incoming(Box::new(Incoming {
                    stream: target.alloc_stream(),
                    opener: Peer::Remote(Box::new(RemoteEnd {
                        node: m.origin.clone(),
                        client: m.from.clone(),
                        conn: m.from_conn,
                    })),
                    opener_stream: m.from_stream,
                    from: m.from.clone(),
                    meta,
                    meta_len,
                    window,
                    link: Arc::new(Link::default()),
                }))
            }
            StreamWire::Accepted { window } => StreamItem::Accepted {
                stream,
                window,
                remote: Some((m.from_stream, m.from_conn)),
            },
            StreamWire::Credit { bytes } => StreamItem::Granted { stream, bytes },
            StreamWire::Data(ref data) => StreamItem::Data(EncodedBody::data(stream, data.clone())),
            StreamWire::End => StreamItem::End { stream },
            StreamWire::Reset {
                code, ref reason, ..
            } if stream == 0 => StreamItem::Cancel {
                node: m.origin.clone(),
                conn: m.from_conn,
                stream: m.from_stream,
                code,
                reason: reason.as_str().into(),
            },
            StreamWire::Reset { code, ref reason } => StreamItem::Reset {
                stream,
                code,
                reason: reason.as_str().into(),
            },
        };
        if let Err(item) = target.mailbox.push_stream(item) {
            // The target is leaving; its own cleanup tells the streams it knew about.
            if matches!(item, StreamItem::Incoming(_)) {
                let reason = format!("client {:?} is disconnecting", m.to.as_str());
                self.bounce(&m, ErrorCode::UnknownTarget, reason);
            }
        }
    }

    /// Answers a stream item that found no end here with a reset for its sender.
    fn bounce(&self, m: &StreamMsg, code: ErrorCode, reason: String) {
        let back = StreamMsg {
            to: m.from.clone(),
            conn: m.from_conn,
            stream: m.from_stream,
            origin: self.node.clone(),
            from: m.to.clone(),
            from_conn: 0,
            from_stream: 0,
            item: StreamWire::Reset { code, reason },
        };
        self.stream(&m.origin, back);
    }
}

/// Resets the cross-hub streams, and resyncs the members of sessions held elsewhere, whenever
/// the NATS connection reports a possible loss.
pub(super) async fn watch_interruptions(bp: Arc<Backplane>, router: Router) {
    let mut rx = bp.cluster.interruptions();
    while rx.changed().await.is_ok() {
        bp.streams_interrupted(&router);
        bp.mirrors_interrupted();
    }
}
