//! One stdin line of `peermesh peers` turned into an [`Op`], or the reason it is not one.
//!
//! Everything that can be judged from the line alone is checked here (hex payloads, command
//! names that fit the 12-byte field, `HOST:PORT` peers, timeouts), so a command that parses is
//! only refused later for what the manager knows (an unknown peer, the manager stopped).

use std::time::Duration;

use bytes::Bytes;
use peermesh_mesh::manager::{HostSpec, PeerAddr, PeerState};
use peermesh_mesh::wire::p2p_node::Command as WireCommand;
use serde::Deserialize;
use serde_json::{Map, Value};

/// The longest answer wait a `send` may ask for.
pub(crate) const MAX_TIMEOUT_MS: u64 = 86_400_000;

/// Properties the manager derives itself; `set_property` cannot shadow them.
const BUILT_IN_PROPERTIES: &[&str] = &["state", "host", "port", "direction"];

/// The ops, as written on stdin.
pub(crate) const OPS: &[&str] = &[
    "send",
    "reply",
    "add_pool",
    "add_active",
    "del_active",
    "set_property",
    "set_state",
    "peers",
];

/// A parsed command line: what to do and its correlation number.
#[derive(Debug, PartialEq)]
pub(crate) struct Line {
    pub(crate) op: Op,
    pub(crate) req: Option<u64>,
}

/// What a line asks for.
#[derive(Debug, PartialEq)]
pub(crate) enum Op {
    /// A selective send, optionally collecting answers.
    Send {
        number: i64,
        property: String,
        values: Vec<Value>,
        command: String,
        payload: Bytes,
        /// The answer command and how long to wait (`None`: the `--answer-timeout-ms`).
        answer: Option<(String, Option<Duration>)>,
    },
    /// One message to one active peer.
    Reply {
        peer: PeerAddr,
        command: String,
        payload: Bytes,
    },
    AddPool(Vec<PeerAddr>),
    AddActive(Vec<PeerAddr>),
    DelActive {
        peer: PeerAddr,
        reason: Option<String>,
    },
    SetProperty {
        peer: PeerAddr,
        key: String,
        value: Value,
    },
    SetState {
        peer: PeerAddr,
        state: PeerState,
    },
    Peers,
}

/// Why a line was refused; `req` when the line carried a readable one.
#[derive(Debug, PartialEq)]
pub(crate) struct Refusal {
    pub(crate) message: String,
    pub(crate) req: Option<u64>,
}

#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
enum Wire {
    Send {
        command: String,
        payload_hex: Option<String>,
        number: Option<i64>,
        property: Option<String>,
        values: Option<Vec<Value>>,
        answer: Option<String>,
        timeout_ms: Option<u64>,
    },
    Reply {
        peer: String,
        command: String,
        payload_hex: Option<String>,
    },
    AddPool {
        hosts: Vec<Value>,
    },
    AddActive {
        hosts: Vec<Value>,
    },
    DelActive {
        peer: String,
        reason: Option<String>,
    },
    SetProperty {
        peer: String,
        key: String,
        value: Value,
    },
    SetState {
        peer: String,
        state: String,
    },
    Peers {},
}

/// Reads the `op` and `req` of an object before its fields are checked, so that every refusal
/// of a readable request can carry its `req`.
fn envelope(obj: &Map<String, Value>) -> Result<Option<u64>, Refusal> {
    let req = match obj.get("req") {
        None => None,
        Some(r) => Some(r.as_u64().ok_or_else(|| Refusal {
            message: "`req` must be a non-negative integer".into(),
            req: None,
        })?),
    };
    let refuse = |message: String| Err(Refusal { message, req });
    match obj.get("op") {
        Some(Value::String(op)) if OPS.contains(&op.as_str()) => Ok(req),
        Some(Value::String(op)) => {
            let shown: String = op.chars().take(64).collect();
            refuse(format!(
                "unknown op {shown:?}; the ops are {}",
                OPS.join(", ")
            ))
        }
        Some(_) => refuse("`op` must be a string".into()),
        None => refuse("missing field `op`".into()),
    }
}

/// Parses one non-empty line. `default_port` completes hosts given without a port.
pub(crate) fn parse(text: &str, default_port: u16) -> Result<Line, Refusal> {
    let mut value: Value = serde_json::from_str(text).map_err(|e| Refusal {
        message: format!("not a JSON object: {e}"),
        req: None,
    })?;
    let req = match value.as_object_mut() {
        Some(obj) => {
            let req = envelope(obj)?;
            // Read once, here; every op accepts it, so the per-op fields leave it out.
            obj.remove("req");
            req
        }
        None => {
            return Err(Refusal {
                message: "a command is a JSON object with an `op` field".into(),
                req: None,
            })
        }
    };
    let wire = Wire::deserialize(value).map_err(|e| Refusal {
        message: e.to_string(),
        req,
    })?;
    let op = op_of(wire, default_port).map_err(|message| Refusal { message, req })?;
    Ok(Line { op, req })
}

fn op_of(wire: Wire, default_port: u16) -> Result<Op, String> {
    Ok(match wire {
        Wire::Send {
            command,
            payload_hex,
            number,
            property,
            values,
            answer,
            timeout_ms,
        } => {
            let (property, values) = match (property, values) {
                (Some(p), Some(v)) => (p, v),
                (None, None) => ("state".to_string(), vec![Value::from("connected")]),
                _ => return Err("`property` and `values` go together".into()),
            };
            let answer = match (answer, timeout_ms) {
                (None, Some(_)) => return Err("`timeout_ms` only applies with `answer`".into()),
                (None, None) => None,
                (Some(a), t) => {
                    let a = command_name("answer", a)?;
                    let t = t.map(timeout).transpose()?;
                    Some((a, t))
                }
            };
            Op::Send {
                number: number.unwrap_or(0),
                property,
                values,
                command: command_name("command", command)?,
                payload: hex_payload(payload_hex)?,
                answer,
            }
        }
        Wire::Reply {
            peer,
            command,
            payload_hex,
        } => Op::Reply {
            peer: peer_name(&peer)?,
            command: command_name("command", command)?,
            payload: hex_payload(payload_hex)?,
        },
        Wire::AddPool { hosts } => Op::AddPool(host_list(hosts, default_port)?),
        Wire::AddActive { hosts } => Op::AddActive(host_list(hosts, default_port)?),
        Wire::DelActive { peer, reason } => Op::DelActive {
            peer: peer_name(&peer)?,
            reason,
        },
        Wire::SetProperty { peer, key, value } => {
            if key.is_empty() {
                return Err("`key` must not be empty".into());
            }
            if BUILT_IN_PROPERTIES.contains(&key.as_str()) {
                return Err(format!(
                    "`{key}` is derived by the manager and cannot be set (use set_state for the state)"
                ));
            }
            Op::SetProperty {
                peer: peer_name(&peer)?,
                key,
                value,
            }
        }
        Wire::SetState { peer, state } => Op::SetState {
            peer: peer_name(&peer)?,
            state: state_of(state)?,
        },
        Wire::Peers {} => Op::Peers,
    })
}

fn timeout(ms: u64) -> Result<Duration, String> {
    if ms == 0 || ms > MAX_TIMEOUT_MS {
        return Err(format!(
            "`timeout_ms` must be between 1 and {MAX_TIMEOUT_MS} (a day)"
        ));
    }
    Ok(Duration::from_millis(ms))
}

/// A command must fit the 12-byte, ASCII, NUL-padded field of the p2p-node header.
fn command_name(field: &str, name: String) -> Result<String, String> {
    WireCommand::new(&name)
        .map(|_| name)
        .map_err(|e| format!("`{field}`: {e}"))
}

/// `HOST:PORT` (`[V6]:PORT`), as printed in `peer_connect` lines.
fn peer_name(text: &str) -> Result<PeerAddr, String> {
    let has_port = text.rsplit_once(':').is_some_and(|(h, p)| {
        !p.is_empty()
            && p.bytes().all(|b| b.is_ascii_digit())
            && (h.ends_with(']') || !h.contains(':'))
    });
    if !has_port {
        let shown: String = text.chars().take(100).collect();
        return Err(format!(
            "`peer` must be HOST:PORT as printed in peer_connect lines, not {shown:?}"
        ));
    }
    HostSpec::Text(text.to_string())
        .resolve(0)
        .map_err(|e| format!("`peer`: {e}"))
}

/// Hosts in the forms p2p-manager accepts: `"host:port"`, `"host"`, `["host", port]`,
/// `{"host": …, "port"?: …}`.
fn host_list(hosts: Vec<Value>, default_port: u16) -> Result<Vec<PeerAddr>, String> {
    if hosts.is_empty() {
        return Err("`hosts` must name at least one host".into());
    }
    let port_of = |v: &Value| {
        v.as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| format!("`hosts`: the port {v} is not a number 0-65535"))
    };
    hosts
        .into_iter()
        .map(|h| {
            let spec = match h {
                Value::String(s) => HostSpec::Text(s),
                Value::Array(a) => match a.as_slice() {
                    [Value::String(host), port] => HostSpec::Pair(host.clone(), port_of(port)?),
                    _ => return Err("`hosts`: an array entry is [\"host\", port]".to_string()),
                },
                Value::Object(o) => {
                    let Some(Value::String(host)) = o.get("host") else {
                        return Err("`hosts`: an object entry needs a string `host`".into());
                    };
                    if let Some(k) = o.keys().find(|k| *k != "host" && *k != "port") {
                        return Err(format!("`hosts`: unknown field `{k}` in a host object"));
                    }
                    let port = o.get("port").map(port_of).transpose()?;
                    HostSpec::Object {
                        host: host.clone(),
                        port,
                    }
                }
                other => {
                    return Err(format!(
                        "`hosts`: {other} is not a host (a string, [host, port] or {{host, port}})"
                    ))
                }
            };
            spec.resolve(default_port)
                .map_err(|e| format!("`hosts`: {e}"))
        })
        .collect()
}

fn state_of(name: String) -> Result<PeerState, String> {
    Ok(match name.as_str() {
        "" => return Err("`state` must not be empty".into()),
        "new" => PeerState::New,
        "connecting" => PeerState::Connecting,
        "connected" => PeerState::Connected,
        "disconnecting" => PeerState::Disconnecting,
        "closed" => PeerState::Closed,
        _ => PeerState::Custom(name),
    })
}

fn hex_payload(text: Option<String>) -> Result<Bytes, String> {
    let Some(text) = text else {
        return Ok(Bytes::new());
    };
    let digits = text.as_bytes();
    if digits.len() % 2 == 1 {
        return Err("`payload_hex` has an odd number of digits".into());
    }
    let nibble = |i: usize| -> Result<u8, String> {
        let d = digits[i];
        char::from(d)
            .to_digit(16)
            .and_then(|v| u8::try_from(v).ok())
            .ok_or_else(|| {
                format!(
                    "`payload_hex`: {:?} at offset {i} is not a hex digit",
                    char::from(d)
                )
            })
    };
    let mut out = Vec::with_capacity(digits.len() / 2);
    for i in (0..digits.len()).step_by(2) {
        out.push(nibble(i)? << 4 | nibble(i + 1)?);
    }
    Ok(out.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn addr(host: &str, port: u16) -> PeerAddr {
        PeerAddr {
            host: host.into(),
            port,
        }
    }

    fn parsed(text: &str) -> Line {
        parse(text, 8333).unwrap_or_else(|r| panic!("{text}: {}", r.message))
    }

    fn refused(text: &str) -> Refusal {
        match parse(text, 8333) {
            Ok(l) => panic!("{text} was accepted as {l:?}"),
            Err(r) => r,
        }
    }

    #[test]
    fn every_op_parses() {
        assert_eq!(
            parsed(
                r#"{"op":"send","number":2,"property":"state","values":["connected"],"command":"knock","payload_hex":"01ff","answer":"answer","timeout_ms":2000,"req":4}"#
            ),
            Line {
                op: Op::Send {
                    number: 2,
                    property: "state".into(),
                    values: vec![json!("connected")],
                    command: "knock".into(),
                    payload: Bytes::from_static(&[1, 0xff]),
                    answer: Some(("answer".into(), Some(Duration::from_secs(2)))),
                },
                req: Some(4),
            }
        );
        assert_eq!(
            parsed(r#"{"op":"send","command":"ping"}"#).op,
            Op::Send {
                number: 0,
                property: "state".into(),
                values: vec![json!("connected")],
                command: "ping".into(),
                payload: Bytes::new(),
                answer: None,
            }
        );
        assert_eq!(
            parsed(r#"{"op":"reply","peer":"127.0.0.1:5","command":"pong","payload_hex":"AB"}"#).op,
            Op::Reply {
                peer: addr("127.0.0.1", 5),
                command: "pong".into(),
                payload: Bytes::from_static(&[0xab]),
            }
        );
        assert_eq!(
            parsed(r#"{"op":"add_pool","hosts":["a:1","b",["c",3],{"host":"d"},{"host":"e","port":5}]}"#).op,
            Op::AddPool(vec![
                addr("a", 1),
                addr("b", 8333),
                addr("c", 3),
                addr("d", 8333),
                addr("e", 5)
            ])
        );
        assert_eq!(
            parsed(r#"{"op":"add_active","hosts":["[::1]:7"],"req":1}"#).op,
            Op::AddActive(vec![addr("::1", 7)])
        );
        assert_eq!(
            parsed(r#"{"op":"del_active","peer":"[::1]:7"}"#).op,
            Op::DelActive {
                peer: addr("::1", 7),
                reason: None
            }
        );
        assert_eq!(
            parsed(r#"{"op":"set_property","peer":"h:1","key":"role","value":{"a":1}}"#).op,
            Op::SetProperty {
                peer: addr("h", 1),
                key: "role".into(),
                value: json!({"a": 1}),
            }
        );
        assert_eq!(
            parsed(r#"{"op":"set_state","peer":"h:1","state":"handshaked"}"#).op,
            Op::SetState {
                peer: addr("h", 1),
                state: PeerState::Custom("handshaked".into()),
            }
        );
        assert_eq!(
            parsed(r#"{"op":"set_state","peer":"h:1","state":"closed"}"#).op,
            Op::SetState {
                peer: addr("h", 1),
                state: PeerState::Closed,
            }
        );
        assert_eq!(parsed(r#"{"op":"peers","req":9}"#).req, Some(9));
    }

    #[test]
    fn refusals_explain_and_keep_the_req() {
        let cases: &[(&str, &str, Option<u64>)] = &[
            ("nope", "not a JSON object", None),
            ("[1]", "JSON object with an `op`", None),
            (r#"{"op":"fly","req":3}"#, "unknown op \"fly\"", Some(3)),
            (r#"{"op":7,"req":3}"#, "`op` must be a string", Some(3)),
            (r#"{"req":3}"#, "missing field `op`", Some(3)),
            (r#"{"op":"peers","req":-1}"#, "`req` must be", None),
            (
                r#"{"op":"peers","typo":1,"req":2}"#,
                "unknown field `typo`",
                Some(2),
            ),
            (
                r#"{"op":"send","req":2}"#,
                "missing field `command`",
                Some(2),
            ),
            (
                r#"{"op":"send","command":"a","property":"x","req":2}"#,
                "go together",
                Some(2),
            ),
            (
                r#"{"op":"send","command":"a","timeout_ms":5,"req":2}"#,
                "only applies with `answer`",
                Some(2),
            ),
            (
                r#"{"op":"send","command":"a","answer":"b","timeout_ms":0}"#,
                "`timeout_ms` must be",
                None,
            ),
            (
                r#"{"op":"send","command":"thirteen_long","req":1}"#,
                "at most 12 bytes",
                Some(1),
            ),
            (
                r#"{"op":"send","command":"a","payload_hex":"0"}"#,
                "odd number",
                None,
            ),
            (
                r#"{"op":"send","command":"a","payload_hex":"zz"}"#,
                "not a hex digit",
                None,
            ),
            (
                r#"{"op":"reply","peer":"nohost","command":"a"}"#,
                "HOST:PORT",
                None,
            ),
            (
                r#"{"op":"reply","peer":"h:99999","command":"a"}"#,
                "0-65535",
                None,
            ),
            (r#"{"op":"add_pool","hosts":[]}"#, "at least one host", None),
            (r#"{"op":"add_pool","hosts":[1]}"#, "is not a host", None),
            (
                r#"{"op":"add_pool","hosts":[["h"]]}"#,
                "[\"host\", port]",
                None,
            ),
            (
                r#"{"op":"add_pool","hosts":[{"host":"h","prt":1}]}"#,
                "unknown field `prt`",
                None,
            ),
            (r#"{"op":"add_pool","hosts":["h:0"]}"#, "port 0", None),
            (
                r#"{"op":"set_property","peer":"h:1","key":"state","value":1}"#,
                "use set_state",
                None,
            ),
            (
                r#"{"op":"set_property","peer":"h:1","key":"k"}"#,
                "missing field `value`",
                None,
            ),
            (
                r#"{"op":"set_state","peer":"h:1","state":""}"#,
                "must not be empty",
                None,
            ),
        ];
        for (text, needle, req) in cases {
            let r = refused(text);
            assert!(r.message.contains(needle), "{text}: {}", r.message);
            assert_eq!(r.req, *req, "{text}");
        }
    }

    #[test]
    fn hex_decodes_both_cases() {
        assert_eq!(
            hex_payload(Some("00aAfF10".into())),
            Ok(Bytes::from_static(&[0, 0xaa, 0xff, 0x10]))
        );
        assert_eq!(hex_payload(None), Ok(Bytes::new()));
        assert_eq!(hex_payload(Some(String::new())), Ok(Bytes::new()));
    }
}
