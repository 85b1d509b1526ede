//! The JSON lines `peermesh connect` prints, and the task that writes them to stdout.
//!
//! Lines that mirror a hub frame (`message`, `ack`, `ok`, `members`, `member_joined`,
//! `member_left`, `peer_left`) are the frame's JSON encoding without its `seq`, so a payload
//! prints as `data` (JSON) or `bin` (base64) exactly as on the wire.

use peermesh_client::{ClientError, ClientEvent, ClientId, Message, Payload, RoomName};
use peermesh_proto::{ErrorFrame, ServerFrame};
use serde::Serialize;
use tokio::io::AsyncWriteExt as _;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Lines waiting to be written; producers wait when it is full (stdout is slow).
const OUTPUT_QUEUE_LINES: usize = 1024;

fn frame_line(frame: &ServerFrame) -> String {
    // Serializing a frame into JSON cannot fail: string keys, JSON-compatible values.
    serde_json::to_string(frame).unwrap_or_else(|e| {
        tracing::error!(error = %e, "cannot print a frame");
        String::new()
    })
}

fn line<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// `{"type":"connected","id":…}`, with `"url":…` when the client was given several hubs.
pub(crate) fn connected(id: &ClientId, url: Option<&str>) -> String {
    #[derive(Serialize)]
    struct Connected<'a> {
        #[serde(rename = "type")]
        ty: &'static str,
        id: &'a ClientId,
        #[serde(skip_serializing_if = "Option::is_none")]
        url: Option<&'a str>,
    }
    line(&Connected {
        ty: "connected",
        id,
        url,
    })
}

/// `{"type":"message","from":…,"event":…,"data"|"bin":…,"room"?:…,"ack_id"?:…}`
pub(crate) fn message(m: &Message) -> String {
    frame_line(&ServerFrame::Message(m.to_proto()))
}

/// `{"type":"ack","req":…,"data"|"bin":…}`
pub(crate) fn ack(req: u64, payload: Payload) -> String {
    frame_line(&ServerFrame::Ack { req, payload })
}

/// `{"type":"invoke","call":…,"from":…,"service":…,"method":…,"data"|"bin":…}`
pub(crate) fn invoke(i: &peermesh_client::Invocation) -> String {
    frame_line(&ServerFrame::Invoke(peermesh_proto::Invoke {
        call: i.call,
        from: i.from.clone(),
        service: i.service.clone(),
        method: i.method.clone(),
        payload: i.payload.clone(),
    }))
}

/// `{"type":"result","req":…,"data"|"bin":…}`
pub(crate) fn result(req: u64, payload: Payload) -> String {
    frame_line(&ServerFrame::CallResult { req, payload })
}

/// `{"type":"publication","service":…,"topic":…,"data"|"bin":…}`
pub(crate) fn publication(p: peermesh_client::Publication) -> String {
    frame_line(&ServerFrame::Publication(p))
}

/// The state of a session as one `session_state` line (all its objects at once).
pub(crate) fn session_state(s: &peermesh_client::Session, req: Option<u64>) -> String {
    let v = s.view();
    let objects = v
        .objects
        .iter()
        .map(|(id, o)| peermesh_proto::SessionObject {
            id: id.clone(),
            payload: o.payload.clone(),
            owner: o.owner.clone(),
            on_owner_leave: o.on_owner_leave,
            version: o.version,
        })
        .collect();
    frame_line(&ServerFrame::SessionState(peermesh_proto::SessionState {
        session: s.name().clone(),
        req,
        rev: v.rev,
        mode: v.mode,
        authority: v.authority.clone(),
        epoch: v.epoch,
        members: v.members.clone(),
        objects,
        more: false,
    }))
}

/// A session event line, as the hub sent it.
pub(crate) fn session_event(
    session: peermesh_client::SessionName,
    rev: u64,
    by: ClientId,
    change: peermesh_client::SessionChange,
) -> String {
    frame_line(&ServerFrame::SessionEvent {
        session,
        rev,
        by,
        change,
    })
}

/// `{"type":"session_ended","session":…,"reason":"left|out_of_order|closed"}`
pub(crate) fn session_ended(
    session: &peermesh_client::SessionName,
    end: peermesh_client::SessionEnd,
) -> String {
    use peermesh_client::SessionEnd;
    let reason = match end {
        SessionEnd::Left => "left",
        SessionEnd::OutOfOrder => "out_of_order",
        _ => "closed",
    };
    serde_json::json!({"type": "session_ended", "session": session, "reason": reason}).to_string()
}

/// `{"type":"topic_ended","service":…,"topic":…,"reason":…}`
pub(crate) fn topic_ended(
    service: peermesh_client::ServiceName,
    topic: peermesh_client::TopicName,
    reason: peermesh_client::TopicEnd,
) -> String {
    frame_line(&ServerFrame::TopicEnded {
        service,
        topic,
        reason,
    })
}

/// `{"type":"ok","req":…}`
pub(crate) fn ok(req: u64) -> String {
    frame_line(&ServerFrame::Ok { req })
}

/// `{"type":"members","req"?:…,"room":…,"members":[…]}`
pub(crate) fn members(req: Option<u64>, room: RoomName, members: Vec<ClientId>) -> String {
    frame_line(&ServerFrame::Members { req, room, members })
}

/// `{"type":"error","code":…,"message":…,"req"?:…}` for any code, protocol or CLI.
pub(crate) fn error(code: &str, message: &str, req: Option<u64>) -> String {
    #[derive(Serialize)]
    struct Error<'a> {
        #[serde(rename = "type")]
        ty: &'static str,
        code: &'a str,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        req: Option<u64>,
    }
    line(&Error {
        ty: "error",
        code,
        message,
        req,
    })
}

/// The error line for a failed client operation.
pub(crate) fn client_error(e: &ClientError, req: Option<u64>) -> String {
    error(e.code_name(), &e.message(), req)
}

/// The line for a lifecycle or presence event; `None` for `connected` (printed at start).
pub(crate) fn event(e: ClientEvent) -> Option<String> {
    #[derive(Serialize)]
    struct Reason<'a> {
        #[serde(rename = "type")]
        ty: &'static str,
        reason: &'a str,
    }
    #[derive(Serialize)]
    struct Reconnecting {
        #[serde(rename = "type")]
        ty: &'static str,
        attempt: u32,
        delay_ms: u64,
    }
    #[derive(Serialize)]
    struct Reconnected<'a> {
        #[serde(rename = "type")]
        ty: &'static str,
        id: &'a ClientId,
        attempt: u32,
        rooms: &'a [RoomName],
        url: &'a str,
    }
    Some(match e {
        ClientEvent::Connected { .. } => return None,
        ClientEvent::MemberJoined { room, id } => {
            frame_line(&ServerFrame::MemberJoined { room, id })
        }
        ClientEvent::MemberLeft { room, id } => frame_line(&ServerFrame::MemberLeft { room, id }),
        ClientEvent::PeerLeft { id } => frame_line(&ServerFrame::PeerLeft { id }),
        ClientEvent::Error { code, message } => {
            frame_line(&ServerFrame::Error(ErrorFrame::new(code, message, None)))
        }
        ClientEvent::ConnectionLost { reason } => line(&Reason {
            ty: "connection_lost",
            reason: &reason,
        }),
        ClientEvent::Reconnecting { attempt, delay } => line(&Reconnecting {
            ty: "reconnecting",
            attempt,
            delay_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
        }),
        ClientEvent::Reconnected {
            id,
            attempt,
            rooms,
            url,
        } => line(&Reconnected {
            ty: "reconnected",
            id: &id,
            attempt,
            rooms: &rooms,
            url: &url,
        }),
        ClientEvent::Lost { reason } => line(&Reason {
            ty: "lost",
            reason: &reason,
        }),
        ClientEvent::MemberAway { room, id } => frame_line(&ServerFrame::MemberAway { room, id }),
        ClientEvent::MemberBack { room, id } => frame_line(&ServerFrame::MemberBack { room, id }),
        ClientEvent::PeerAway { id } => frame_line(&ServerFrame::PeerAway { id }),
        ClientEvent::PeerBack { id } => frame_line(&ServerFrame::PeerBack { id }),
        ClientEvent::Resumed { resent } => {
            #[derive(Serialize)]
            struct Resumed {
                #[serde(rename = "type")]
                ty: &'static str,
                resent: u64,
            }
            line(&Resumed {
                ty: "resumed",
                resent,
            })
        }
        ClientEvent::Resynced { reason, message } => {
            #[derive(Serialize)]
            struct Resynced<'a> {
                #[serde(rename = "type")]
                ty: &'static str,
                reason: &'a str,
                message: &'a str,
            }
            line(&Resynced {
                ty: "resynced",
                reason: reason.as_str(),
                message: &message,
            })
        }
        other => {
            tracing::debug!(?other, "event without a line");
            return None;
        }
    })
}

/// A handle to the stdout writer task.
#[derive(Clone)]
pub(crate) struct Output {
    tx: mpsc::Sender<String>,
}

impl Output {
    /// Starts the writer task; it ends when every [`Output`] is dropped and the queue drained.
    pub(crate) fn spawn() -> (Output, JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<String>(OUTPUT_QUEUE_LINES);
        let task = tokio::spawn(async move {
            let mut out = tokio::io::BufWriter::new(tokio::io::stdout());
            while let Some(first) = rx.recv().await {
                let mut next = Some(first);
                // Write everything queued, then flush once.
                while let Some(l) = next {
                    if out.write_all(l.as_bytes()).await.is_err()
                        || out.write_all(b"\n").await.is_err()
                    {
                        tracing::error!("stdout is closed; no more output");
                        return;
                    }
                    next = rx.try_recv().ok();
                }
                if out.flush().await.is_err() {
                    tracing::error!("stdout is closed; no more output");
                    return;
                }
            }
        });
        (Output { tx }, task)
    }

    /// Queues one line (waits while the queue is full).
    pub(crate) async fn line(&self, line: String) {
        if line.is_empty() {
            return;
        }
        if self.tx.send(line).await.is_err() {
            tracing::debug!("stdout writer stopped; line dropped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn id(s: &str) -> ClientId {
        ClientId::new(s).expect("valid id")
    }

    #[test]
    fn lines_match_the_documented_shapes() {
        assert_eq!(
            connected(&id("alice"), None),
            r#"{"type":"connected","id":"alice"}"#
        );
        assert_eq!(
            connected(&id("alice"), Some("ws://b/ws")),
            r#"{"type":"connected","id":"alice","url":"ws://b/ws"}"#
        );
        assert_eq!(
            ack(7, Payload::Json(serde_json::json!(2))),
            r#"{"type":"ack","req":7,"data":2}"#
        );
        assert_eq!(ok(3), r#"{"type":"ok","req":3}"#);
        assert_eq!(
            error("unknown_target", "no client \"x\"", Some(9)),
            r#"{"type":"error","code":"unknown_target","message":"no client \"x\"","req":9}"#
        );
        assert_eq!(
            error("bad_command", "nope", None),
            r#"{"type":"error","code":"bad_command","message":"nope"}"#
        );
        let room = RoomName::new("r").expect("room");
        assert_eq!(
            members(Some(1), room.clone(), vec![id("a"), id("b")]),
            r#"{"type":"members","req":1,"room":"r","members":["a","b"]}"#
        );
        assert_eq!(
            event(ClientEvent::MemberJoined {
                room,
                id: id("bob")
            })
            .as_deref(),
            Some(r#"{"type":"member_joined","room":"r","id":"bob"}"#)
        );
        assert_eq!(
            event(ClientEvent::Reconnecting {
                attempt: 2,
                delay: Duration::from_millis(400)
            })
            .as_deref(),
            Some(r#"{"type":"reconnecting","attempt":2,"delay_ms":400}"#)
        );
        assert_eq!(
            event(ClientEvent::Reconnected {
                id: id("alice"),
                attempt: 1,
                rooms: vec![RoomName::new("r").expect("room")],
                url: "ws://b/ws".into(),
            })
            .as_deref(),
            Some(
                r#"{"type":"reconnected","id":"alice","attempt":1,"rooms":["r"],"url":"ws://b/ws"}"#
            )
        );
        assert_eq!(event(ClientEvent::Connected { id: id("a") }), None);
        let e = ClientError::AckTimeout(Duration::from_millis(200));
        assert_eq!(
            client_error(&e, Some(7)),
            r#"{"type":"error","code":"ack_timeout","message":"no answer within 200ms","req":7}"#
        );
    }
}
