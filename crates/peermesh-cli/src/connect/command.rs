//! Parsing one stdin line into a command (`op`), or the `bad_command` error it earns.

use base64::Engine as _;
use peermesh_proto::{ClientId, ObjectName, OwnerLeave, Payload, SessionMode, SessionOp};
use serde::Deserialize;
use serde_json::Value;

/// One command line, parsed.
#[derive(Debug, PartialEq)]
pub(crate) struct Command {
    /// What to do.
    pub(crate) op: Op,
    /// The correlation number echoed in the single answer line.
    pub(crate) req: Option<u64>,
}

/// The operations of `peermesh connect`.
#[derive(Debug, PartialEq)]
pub(crate) enum Op {
    Emit {
        to: String,
        event: String,
        payload: Payload,
        /// `Some(timeout_ms or default)` when the target must answer.
        ack: Option<Option<u64>>,
    },
    Reply {
        ack_id: u64,
        payload: Payload,
    },
    Join {
        room: String,
    },
    Leave {
        room: String,
    },
    EmitRoom {
        room: String,
        event: String,
        payload: Payload,
        include_self: bool,
    },
    Members {
        room: String,
    },
    Provide {
        service: String,
        methods: Vec<String>,
    },
    Unprovide,
    Call {
        service: String,
        method: String,
        payload: Payload,
        timeout_ms: Option<u64>,
    },
    Respond {
        call: u64,
        outcome: Result<Payload, String>,
    },
    Subscribe {
        service: String,
        topic: String,
    },
    Unsubscribe {
        service: String,
        topic: String,
    },
    CreateTopic {
        topic: String,
    },
    DestroyTopic {
        topic: String,
    },
    Publish {
        topic: String,
        payload: Payload,
    },
    SessionJoin {
        session: Option<String>,
        mode: SessionMode,
    },
    SessionLeave {
        session: String,
    },
    SessionChange {
        session: String,
        op: SessionOp,
    },
}

/// Why a line is not a command, with its `req` when it could be read.
#[derive(Debug, PartialEq)]
pub(crate) struct BadCommand {
    pub(crate) message: String,
    pub(crate) req: Option<u64>,
}

/// The ops, as written on stdin.
pub(crate) const OPS: &[&str] = &[
    "emit",
    "reply",
    "join",
    "leave",
    "emit_room",
    "members",
    "provide",
    "unprovide",
    "call",
    "respond",
    "subscribe",
    "unsubscribe",
    "create_topic",
    "destroy_topic",
    "publish",
    "session_join",
    "session_leave",
    "session_create",
    "session_update",
    "session_patch",
    "session_delete",
    "session_transfer",
];

#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
enum Raw {
    Emit {
        to: String,
        event: String,
        data: Option<Value>,
        bin: Option<String>,
        #[serde(default)]
        ack: bool,
        timeout_ms: Option<u64>,
        req: Option<u64>,
    },
    Reply {
        ack_id: u64,
        data: Option<Value>,
        bin: Option<String>,
        req: Option<u64>,
    },
    Join {
        room: String,
        req: Option<u64>,
    },
    Leave {
        room: String,
        req: Option<u64>,
    },
    EmitRoom {
        room: String,
        event: String,
        data: Option<Value>,
        bin: Option<String>,
        #[serde(default)]
        include_self: bool,
        req: Option<u64>,
    },
    Members {
        room: String,
        req: Option<u64>,
    },
    Provide {
        service: String,
        methods: Vec<String>,
        req: Option<u64>,
    },
    Unprovide {
        req: Option<u64>,
    },
    Call {
        service: String,
        method: String,
        data: Option<Value>,
        bin: Option<String>,
        timeout_ms: Option<u64>,
        req: Option<u64>,
    },
    Respond {
        call: u64,
        data: Option<Value>,
        bin: Option<String>,
        error: Option<String>,
        req: Option<u64>,
    },
    Subscribe {
        service: String,
        topic: String,
        req: Option<u64>,
    },
    Unsubscribe {
        service: String,
        topic: String,
        req: Option<u64>,
    },
    CreateTopic {
        topic: String,
        req: Option<u64>,
    },
    DestroyTopic {
        topic: String,
        req: Option<u64>,
    },
    Publish {
        topic: String,
        data: Option<Value>,
        bin: Option<String>,
        req: Option<u64>,
    },
    SessionJoin {
        session: Option<String>,
        mode: Option<String>,
        req: Option<u64>,
    },
    SessionLeave {
        session: String,
        req: Option<u64>,
    },
    SessionCreate {
        session: String,
        object: String,
        data: Option<Value>,
        bin: Option<String>,
        owned: Option<bool>,
        on_owner_leave: Option<String>,
        req: Option<u64>,
    },
    SessionUpdate {
        session: String,
        object: String,
        data: Option<Value>,
        bin: Option<String>,
        req: Option<u64>,
    },
    SessionPatch {
        session: String,
        object: String,
        data: Value,
        req: Option<u64>,
    },
    SessionDelete {
        session: String,
        object: String,
        req: Option<u64>,
    },
    SessionTransfer {
        session: String,
        object: String,
        to: Option<String>,
        req: Option<u64>,
    },
}

fn object(name: &str) -> Result<ObjectName, String> {
    ObjectName::new(name).map_err(|e| format!("`object`: {e}"))
}

fn payload(data: Option<Value>, bin: Option<String>) -> Result<Payload, String> {
    match (data, bin) {
        (Some(_), Some(_)) => Err("a command carries either `data` or `bin`, not both".into()),
        (None, Some(b)) => base64::engine::general_purpose::STANDARD
            .decode(b.as_bytes())
            .map(|v| Payload::Bin(v.into()))
            .map_err(|e| format!("`bin` is not valid base64: {e}")),
        (Some(v), None) => Ok(Payload::Json(v)),
        (None, None) => Ok(Payload::NULL),
    }
}

/// Parses one line.
pub(crate) fn parse(line: &str) -> Result<Command, BadCommand> {
    let value: Value = serde_json::from_str(line).map_err(|e| BadCommand {
        message: format!("not a JSON object: {e}"),
        req: None,
    })?;
    let Value::Object(map) = &value else {
        return Err(BadCommand {
            message: "a command must be a JSON object with an `op`".into(),
            req: None,
        });
    };
    let req = map.get("req").and_then(Value::as_u64);
    let bad = |message: String| BadCommand { message, req };
    match map.get("op") {
        None => return Err(bad("missing field `op`".into())),
        Some(Value::String(op)) if !OPS.contains(&op.as_str()) => {
            return Err(bad(format!(
                "unknown op {:?}; expected one of: {}",
                op.chars().take(64).collect::<String>(),
                OPS.join(", ")
            )))
        }
        Some(Value::String(_)) => {}
        Some(_) => return Err(bad("`op` must be a string".into())),
    }
    if map.get("req").is_some_and(|r| !r.is_u64()) {
        return Err(bad("`req` must be a non-negative integer".into()));
    }
    let raw: Raw = serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
    let (op, req) = match raw {
        Raw::Emit {
            to,
            event,
            data,
            bin,
            ack,
            timeout_ms,
            req,
        } => {
            if ack && req.is_none() {
                return Err(bad(
                    "an `emit` with `ack: true` needs a `req` to print the answer with".into(),
                ));
            }
            if !ack && timeout_ms.is_some() {
                return Err(bad("`timeout_ms` only applies with `ack: true`".into()));
            }
            let payload = payload(data, bin).map_err(bad)?;
            let ack = ack.then_some(timeout_ms);
            let op = Op::Emit {
                to,
                event,
                payload,
                ack,
            };
            (op, req)
        }
        Raw::Reply {
            ack_id,
            data,
            bin,
            req,
        } => {
            let payload = payload(data, bin).map_err(bad)?;
            (Op::Reply { ack_id, payload }, req)
        }
        Raw::Join { room, req } => (Op::Join { room }, req),
        Raw::Leave { room, req } => (Op::Leave { room }, req),
        Raw::EmitRoom {
            room,
            event,
            data,
            bin,
            include_self,
            req,
        } => {
            let payload = payload(data, bin).map_err(bad)?;
            let op = Op::EmitRoom {
                room,
                event,
                payload,
                include_self,
            };
            (op, req)
        }
        Raw::Members { room, req } => (Op::Members { room }, req),
        Raw::Provide {
            service,
            methods,
            req,
        } => (Op::Provide { service, methods }, req),
        Raw::Unprovide { req } => (Op::Unprovide, req),
        Raw::Call {
            service,
            method,
            data,
            bin,
            timeout_ms,
            req,
        } => {
            if req.is_none() {
                return Err(bad("a `call` needs a `req` to print the result with".into()));
            }
            let payload = payload(data, bin).map_err(bad)?;
            let op = Op::Call {
                service,
                method,
                payload,
                timeout_ms,
            };
            (op, req)
        }
        Raw::Respond {
            call,
            data,
            bin,
            error,
            req,
        } => {
            let outcome = match error {
                Some(e) if data.is_none() && bin.is_none() => Err(e),
                Some(_) => {
                    return Err(bad(
                        "a `respond` carries `error` or a result (`data`/`bin`), not both".into(),
                    ))
                }
                None => Ok(payload(data, bin).map_err(bad)?),
            };
            (Op::Respond { call, outcome }, req)
        }
        Raw::Subscribe {
            service,
            topic,
            req,
        } => (Op::Subscribe { service, topic }, req),
        Raw::Unsubscribe {
            service,
            topic,
            req,
        } => (Op::Unsubscribe { service, topic }, req),
        Raw::CreateTopic { topic, req } => (Op::CreateTopic { topic }, req),
        Raw::DestroyTopic { topic, req } => (Op::DestroyTopic { topic }, req),
        Raw::Publish {
            topic,
            data,
            bin,
            req,
        } => {
            let payload = payload(data, bin).map_err(bad)?;
            (Op::Publish { topic, payload }, req)
        }
        Raw::SessionJoin { session, mode, req } => {
            let mode = match mode.as_deref() {
                None => SessionMode::Authoritative,
                Some(m) => SessionMode::parse(m).ok_or_else(|| {
                    bad(format!(
                        "`mode` must be \"authoritative\" or \"relay\", not {m:?}"
                    ))
                })?,
            };
            (Op::SessionJoin { session, mode }, req)
        }
        Raw::SessionLeave { session, req } => (Op::SessionLeave { session }, req),
        Raw::SessionCreate {
            session,
            object: name,
            data,
            bin,
            owned,
            on_owner_leave,
            req,
        } => {
            let on_owner_leave = match on_owner_leave.as_deref() {
                None => OwnerLeave::Authority,
                Some(p) => OwnerLeave::parse(p).ok_or_else(|| {
                    bad(format!(
                        "`on_owner_leave` must be \"authority\" or \"delete\", not {p:?}"
                    ))
                })?,
            };
            let op = SessionOp::Create {
                object: object(&name).map_err(bad)?,
                payload: payload(data, bin).map_err(bad)?,
                owned: owned.unwrap_or(true),
                on_owner_leave,
            };
            (Op::SessionChange { session, op }, req)
        }
        Raw::SessionUpdate {
            session,
            object: name,
            data,
            bin,
            req,
        } => {
            let op = SessionOp::Update {
                object: object(&name).map_err(bad)?,
                payload: payload(data, bin).map_err(bad)?,
            };
            (Op::SessionChange { session, op }, req)
        }
        Raw::SessionPatch {
            session,
            object: name,
            data,
            req,
        } => {
            let op = SessionOp::Patch {
                object: object(&name).map_err(bad)?,
                patch: data,
            };
            (Op::SessionChange { session, op }, req)
        }
        Raw::SessionDelete {
            session,
            object: name,
            req,
        } => {
            let op = SessionOp::Delete {
                object: object(&name).map_err(bad)?,
            };
            (Op::SessionChange { session, op }, req)
        }
        Raw::SessionTransfer {
            session,
            object: name,
            to,
            req,
        } => {
            let to = to
                .map(|t| ClientId::new(&t).map_err(|e| bad(format!("`to`: {e}"))))
                .transpose()?;
            let op = SessionOp::Transfer {
                object: object(&name).map_err(bad)?,
                to,
            };
            (Op::SessionChange { session, op }, req)
        }
    };
    Ok(Command { op, req })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ok(line: &str) -> Command {
        match parse(line) {
            Ok(c) => c,
            Err(e) => panic!("{line}: {}", e.message),
        }
    }

    fn bad(line: &str) -> BadCommand {
        match parse(line) {
            Ok(c) => panic!("{line} parsed as {c:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn parses_every_op() {
        assert_eq!(
            ok(r#"{"op":"emit","to":"bob","event":"chat","data":{"text":"hi"}}"#),
            Command {
                op: Op::Emit {
                    to: "bob".into(),
                    event: "chat".into(),
                    payload: Payload::Json(json!({"text": "hi"})),
                    ack: None,
                },
                req: None
            }
        );
        assert_eq!(
            ok(
                r#"{"op":"emit","to":"bob","event":"q","data":1,"ack":true,"req":7,"timeout_ms":300}"#
            ),
            Command {
                op: Op::Emit {
                    to: "bob".into(),
                    event: "q".into(),
                    payload: Payload::Json(json!(1)),
                    ack: Some(Some(300)),
                },
                req: Some(7)
            }
        );
        assert_eq!(
            ok(r#"{"op":"reply","ack_id":3,"bin":"AAEC"}"#).op,
            Op::Reply {
                ack_id: 3,
                payload: Payload::Bin(vec![0u8, 1, 2].into())
            }
        );
        assert_eq!(
            ok(r#"{"op":"join","room":"r","req":1}"#),
            Command {
                op: Op::Join { room: "r".into() },
                req: Some(1)
            }
        );
        assert_eq!(
            ok(r#"{"op":"leave","room":"r"}"#).op,
            Op::Leave { room: "r".into() }
        );
        assert_eq!(
            ok(r#"{"op":"emit_room","room":"r","event":"e","include_self":true}"#).op,
            Op::EmitRoom {
                room: "r".into(),
                event: "e".into(),
                payload: Payload::NULL,
                include_self: true
            }
        );
        assert_eq!(
            ok(r#"{"op":"members","room":"r","req":2}"#).op,
            Op::Members { room: "r".into() }
        );
    }

    #[test]
    fn parses_the_service_ops() {
        assert_eq!(
            ok(r#"{"op":"provide","service":"calc","methods":["add","mul"],"req":1}"#).op,
            Op::Provide {
                service: "calc".into(),
                methods: vec!["add".into(), "mul".into()]
            }
        );
        assert_eq!(
            ok(r#"{"op":"call","service":"calc","method":"add","data":[1,2],"timeout_ms":500,"req":2}"#)
                .op,
            Op::Call {
                service: "calc".into(),
                method: "add".into(),
                payload: Payload::Json(json!([1, 2])),
                timeout_ms: Some(500)
            }
        );
        assert_eq!(
            ok(r#"{"op":"respond","call":9,"error":"nope"}"#).op,
            Op::Respond {
                call: 9,
                outcome: Err("nope".into())
            }
        );
        assert_eq!(
            ok(r#"{"op":"respond","call":9,"data":3}"#).op,
            Op::Respond {
                call: 9,
                outcome: Ok(Payload::Json(json!(3)))
            }
        );
        assert_eq!(
            ok(r#"{"op":"subscribe","service":"s","topic":"t"}"#).op,
            Op::Subscribe {
                service: "s".into(),
                topic: "t".into()
            }
        );
        assert_eq!(
            ok(r#"{"op":"publish","topic":"t","bin":"AQ=="}"#).op,
            Op::Publish {
                topic: "t".into(),
                payload: Payload::Bin(vec![1u8].into())
            }
        );
        assert!(bad(r#"{"op":"call","service":"s","method":"m"}"#)
            .message
            .contains("needs a `req`"));
        assert!(
            bad(r#"{"op":"respond","call":1,"error":"x","data":1,"req":3}"#)
                .message
                .contains("not both")
        );
    }

    #[test]
    fn explains_bad_lines_and_keeps_req() {
        assert!(bad("hello").message.contains("not a JSON object"));
        assert!(bad("[1]").message.contains("JSON object"));
        let e = bad(r#"{"op":"fly","req":4}"#);
        assert!(e.message.contains("unknown op \"fly\""), "{}", e.message);
        assert_eq!(e.req, Some(4));
        let e = bad(r#"{"op":"emit","to":"bob","req":5}"#);
        assert!(e.message.contains("missing field `event`"), "{}", e.message);
        assert_eq!(e.req, Some(5));
        let e = bad(r#"{"op":"emit","to":"bob","event":"x","date":1,"req":6}"#);
        assert!(e.message.contains("unknown field `date`"), "{}", e.message);
        assert_eq!(e.req, Some(6));
        assert!(bad(r#"{"op":"emit","to":"b","event":"x","ack":true}"#)
            .message
            .contains("needs a `req`"));
        assert!(
            bad(r#"{"op":"emit","to":"b","event":"x","data":1,"bin":"AA=="}"#)
                .message
                .contains("not both")
        );
        assert!(bad(r#"{"op":"reply","ack_id":1,"bin":"%%"}"#)
            .message
            .contains("base64"));
        assert!(bad(r#"{"op":"join","room":"r","req":-1}"#)
            .message
            .contains("`req`"));
        assert!(bad(r#"{"room":"r"}"#)
            .message
            .contains("missing field `op`"));
        assert!(bad(r#"{"op":1}"#).message.contains("must be a string"));
    }
}
