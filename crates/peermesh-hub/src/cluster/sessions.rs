//! Sessions across hubs: a session lives on its home hub; members on other hubs reach it
//! through their own hub.
//!
//! ```text
//!   member's hub                                   home hub
//!   session_join ─► claim the session in the registry
//!                   won: create it here (this hub is its home)
//!                   taken: SessionAsk{join} ──────► join_member(Remote) ─► snapshot, events
//!   SessionOut{to: member} ◄── snapshot chunks, ok / error answers
//!   SessionOut{skip}       ◄── every event, once per hub with members, in revision order
//!   session_op / leave / drop / resume ─► SessionAsk ─► apply / leave / away / back
//! ```
//!
//! The member's hub keeps, per session held elsewhere, its home and its local members (the
//! connections that received the snapshot), and hands every event to them. Ordering holds
//! because the home publishes everything for one hub on that hub's subject, in the order
//! the session's lock produced it. A member whose hub dies leaves the sessions with it (its id
//! is released); a session whose home dies is gone, and its members elsewhere are told so
//! with an `unknown_session` error (at the next reconcile, within 5 s of the release).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use peermesh_proto::{
    ClientFrame, ClientId, EncodedBody, ErrorCode, ErrorFrame, ServerFrame, SessionMode,
    SessionName,
};

use super::relay::{Ask, Relay};
use super::{node_subject, Backplane};
use crate::registry::ConnShared;
use crate::router::{Router, Shared};
use crate::sessions::Member;

/// A session held by another hub, seen from a hub with members of it.
#[derive(Debug)]
pub(crate) struct Held {
    home: String,
    /// Local members, by client id.
    conns: HashMap<ClientId, Arc<ConnShared>>,
}

/// Queues a frame for a client from outside its task.
pub(crate) fn tell(conn: &ConnShared, frame: &ServerFrame) {
    let _ = conn.send(EncodedBody::encode(conn.encoding, frame));
}

fn error(code: ErrorCode, message: String, req: Option<u64>) -> ServerFrame {
    ServerFrame::Error(ErrorFrame::new(code, message, req))
}

impl Backplane {
    /// Publishes a session frame to hub `node`.
    pub(crate) fn session_out(&self, node: &str, msg: Bytes) {
        self.enqueue(node_subject(node), msg);
    }

    /// The home of session `name` when another hub holds it and local client `id` is a member.
    pub(crate) fn session_home_of(&self, name: &SessionName, id: &ClientId) -> Option<String> {
        let held = self.held.get(name)?;
        held.conns.contains_key(id).then(|| held.home.clone())
    }

    fn ask(&self, home: &str, conn: &ConnShared, rtt_ms: Option<u64>, ask: Ask) -> bool {
        let msg = Relay::SessionAsk {
            origin: self.node.clone(),
            client: conn.client.clone(),
            conn: conn.conn,
            rtt_ms,
            ask,
        };
        self.enqueue(node_subject(home), msg.encode())
    }

    /// `session_join` of a local client in a cluster: the session is created here if no hub
    /// holds it, else joined at its home.
    pub(crate) fn join_session(
        self: &Arc<Self>,
        router: &Router,
        conn: &Arc<ConnShared>,
        name: SessionName,
        mode: SessionMode,
        rtt: Option<std::time::Duration>,
        req: Option<u64>,
    ) {
        let bp = self.clone();
        let router = router.clone();
        let conn = conn.clone();
        tokio::spawn(async move {
            let home = match bp.held.get(&name).map(|h| h.home.clone()) {
                Some(home) => Ok(peermesh_cluster::Claim::Taken { node: home }),
                None => bp.cluster.claim_session(name.as_str()).await,
            };
            match home {
                Ok(peermesh_cluster::Claim::Won) => {
                    match router.sessions.join(&name, mode, &conn, rtt, req) {
                        Ok(_) => {}
                        Err((code, m)) => tell(&conn, &error(code, m, req)),
                    }
                }
                Ok(peermesh_cluster::Claim::Taken { node }) => {
                    let frame = ClientFrame::SessionJoin {
                        session: Some(name.clone()),
                        mode: Some(mode),
                        req,
                    };
                    let rtt_ms = rtt.map(|d| d.as_millis() as u64);
                    if !bp.ask(&node, &conn, rtt_ms, Ask::Frame(frame)) {
                        let m = "the hub's queue to the cluster is full; try again".to_owned();
                        tell(&conn, &error(ErrorCode::ClusterUnavailable, m, req));
                    }
                }
                Err(e) => {
                    let m = format!(
                        "the hub cannot reach its cluster to find session {:?} ({e}); try again",
                        name.as_str()
                    );
                    tell(&conn, &error(ErrorCode::ClusterUnavailable, m, req));
                }
            }
        });
    }

    /// `session_op` or `session_leave` of a local member of a session held by hub `home`.
    pub(crate) fn forward_session_frame(&self, home: &str, conn: &ConnShared, frame: ClientFrame) {
        let req = frame.req();
        if let ClientFrame::SessionLeave { session, .. } = &frame {
            self.forget_member(session, &conn.client);
            conn.sessions.lock().remove(session);
        }
        if !self.ask(home, conn, None, Ask::Frame(frame)) {
            let m = "the hub's queue to the cluster is full; try again".to_owned();
            tell(conn, &error(ErrorCode::ClusterUnavailable, m, req));
        }
    }

    fn forget_member(&self, name: &SessionName, id: &ClientId) {
        self.held.remove_if_mut(name, |_, h| {
            h.conns.remove(id);
            h.conns.is_empty()
        });
    }

    /// A local client dropped (`away`) or resumed: its sessions held elsewhere learn it.
    pub(crate) fn session_member_away(&self, conn: &ConnShared, away: bool) {
        let names: Vec<SessionName> = conn.sessions.lock().iter().cloned().collect();
        for name in names {
            if let Some(home) = self.session_home_of(&name, &conn.client) {
                let ask = if away {
                    Ask::Away(name)
                } else {
                    Ask::Back(name)
                };
                self.ask(&home, conn, None, ask);
            }
        }
    }

    /// A local client is gone: it leaves its sessions held elsewhere — for good, or, when
    /// its session moved to another hub (`migrated`), only here (the new hub tells the homes).
    pub(crate) fn session_member_gone(&self, conn: &ConnShared, migrated: bool) {
        let names: Vec<SessionName> = conn.sessions.lock().iter().cloned().collect();
        for name in names {
            let Some(home) = self.session_home_of(&name, &conn.client) else {
                continue;
            };
            self.forget_member(&name, &conn.client);
            if !migrated {
                let frame = ClientFrame::SessionLeave {
                    session: name,
                    req: None,
                };
                self.ask(&home, conn, None, Ask::Frame(frame));
            }
        }
    }

    /// A session moved here with its client (it resumed here): each session it is in learns
    /// where it is now, and sends it a fresh snapshot.
    pub(crate) fn sessions_arrived(
        &self,
        router: &Router,
        conn: &Arc<ConnShared>,
        names: &[SessionName],
    ) {
        for name in names {
            if router.sessions.holds(name) {
                if router.sessions.moved(name, Member::Local(conn)).is_ok() {
                    conn.sessions.lock().insert(name.clone());
                }
                continue;
            }
            let Some(home) = self.cluster.session_home(name.as_str()) else {
                continue;
            };
            // The snapshot that answers registers it as a member here.
            self.ask(&home, conn, None, Ask::Moved(name.clone()));
        }
    }

    /// A request of a member on hub `origin` for a session held here.
    pub(crate) fn session_ask(
        &self,
        router: &Router,
        origin: String,
        client: ClientId,
        conn: u64,
        rtt_ms: Option<u64>,
        ask: Ask,
    ) {
        let sessions = &router.sessions;
        let member = Member::Remote {
            client: &client,
            node: &origin,
            conn,
        };
        let (result, req, session) = match ask {
            Ask::Frame(ClientFrame::SessionJoin {
                session: Some(name),
                mode,
                req,
            }) => {
                let rtt = rtt_ms.map(std::time::Duration::from_millis);
                let r = sessions.join_member(&name, mode.unwrap_or_default(), member, rtt, req);
                // The snapshot answers a join.
                (r.map(|_| None), req, name)
            }
            Ask::Frame(ClientFrame::SessionOp { session, op, req }) => {
                let r = sessions.apply_remote(&session, &client, &origin, op);
                (r.map(|_| req), req, session)
            }
            Ask::Frame(ClientFrame::SessionLeave { session, req }) => {
                let r = sessions.leave_remote(&session, &client, &origin);
                (r.map(|_| req), req, session)
            }
            Ask::Frame(_) => return,
            Ask::Away(name) => {
                sessions.away_as(&name, &client, Some(&origin), conn, true);
                return;
            }
            Ask::Back(name) => {
                sessions.away_as(&name, &client, Some(&origin), conn, false);
                return;
            }
            Ask::Moved(name) => {
                if let Err((code, m)) = sessions.moved(&name, member) {
                    self.session_reply(&origin, &name, &client, error(code, m, None));
                }
                return;
            }
        };
        let frame = match result {
            Ok(Some(req)) => ServerFrame::Ok { req },
            Ok(None) => return,
            Err((code, m)) => error(code, m, req),
        };
        self.session_reply(&origin, &session, &client, frame);
    }

    fn session_reply(&self, node: &str, session: &SessionName, to: &ClientId, frame: ServerFrame) {
        let out = Relay::SessionOut {
            origin: self.node.clone(),
            session: session.clone(),
            to: Some(to.clone()),
            skip: None,
            frame,
        };
        self.session_out(node, out.encode());
    }

    /// A frame from the home of `session` for local members.
    pub(crate) fn session_in(
        &self,
        router: &Router,
        origin: String,
        session: SessionName,
        to: Option<ClientId>,
        skip: Option<ClientId>,
        frame: ServerFrame,
    ) {
        match to {
            Some(id) => {
                let Some(conn) = router.registry.client(&id) else {
                    return;
                };
                if matches!(frame, ServerFrame::SessionState(_)) {
                    // A snapshot: from now on the client gets the session's events here.
                    self.held
                        .entry(session.clone())
                        .or_insert_with(|| Held {
                            home: origin.clone(),
                            conns: HashMap::new(),
                        })
                        .conns
                        .insert(id, conn.clone());
                    conn.sessions.lock().insert(session);
                }
                tell(&conn, &frame);
            }
            None => {
                let Some(held) = self.held.get(&session) else {
                    return;
                };
                if held.home != origin {
                    return;
                }
                let mut shared = Shared::new(&frame);
                for (id, conn) in &held.conns {
                    if Some(id) != skip.as_ref() {
                        let _ = conn.send(shared.body(conn.encoding));
                    }
                }
            }
        }
    }

    /// Sessions whose home left the cluster are gone: their members here are told.
    pub(crate) fn drop_orphaned_sessions(&self) {
        let orphaned: Vec<SessionName> = self
            .held
            .iter()
            .filter(|h| !self.cluster.is_member(&h.home))
            .map(|h| h.key().clone())
            .collect();
        for name in orphaned {
            let Some((_, held)) = self.held.remove(&name) else {
                continue;
            };
            for conn in held.conns.values() {
                conn.sessions.lock().remove(&name);
                let m = format!(
                    "session {:?} was held by hub {:?}, which left the cluster: its state is lost; \
                     join it again to start it anew",
                    name.as_str(),
                    held.home
                );
                tell(conn, &error(ErrorCode::UnknownSession, m, None));
            }
        }
    }
}
