//! The JSON lines `peermesh peers` prints. `ok` and `error` lines are the ones of
//! `peermesh connect` (`crate::connect::output`): both commands share the contract.

use std::collections::BTreeMap;
use std::time::Instant;

use peermesh_mesh::manager::{Direction, PeerAddr, PeerInfo, Severity, WaitId};
use serde::Serialize;
use serde_json::Value;

/// One line of JSON; a value that cannot be serialized (it never happens for these shapes)
/// prints nothing rather than half a line.
fn json_line<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|e| {
        tracing::error!(error = %e, "cannot print a line");
        String::new()
    })
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    HexOf(bytes).to_string()
}

/// Peer names as text, in the order given.
fn names(peers: &[PeerAddr]) -> Vec<String> {
    peers.iter().map(ToString::to_string).collect()
}

/// The fields every line starts with.
#[derive(Serialize)]
struct Tagged<T> {
    #[serde(rename = "type")]
    ty: &'static str,
    #[serde(flatten)]
    body: T,
}

fn tagged<T: Serialize>(ty: &'static str, body: T) -> String {
    json_line(&Tagged { ty, body })
}

#[derive(Serialize)]
struct PeerOnly {
    peer: String,
}

/// `{"type":"listening","addr":…}`
pub(crate) fn listening(addr: std::net::SocketAddr) -> String {
    #[derive(Serialize)]
    struct Listening {
        addr: String,
    }
    tagged(
        "listening",
        Listening {
            addr: addr.to_string(),
        },
    )
}

/// `{"type":"peer_connect","peer":…}`
pub(crate) fn peer_connect(peer: &PeerAddr) -> String {
    tagged(
        "peer_connect",
        PeerOnly {
            peer: peer.to_string(),
        },
    )
}

/// `{"type":"peer_end","peer":…,"reason":…}`
pub(crate) fn peer_end(peer: &PeerAddr, reason: &str) -> String {
    #[derive(Serialize)]
    struct PeerEnd<'a> {
        peer: String,
        reason: &'a str,
    }
    tagged(
        "peer_end",
        PeerEnd {
            peer: peer.to_string(),
            reason,
        },
    )
}

/// Serializes as a JSON string of its `Display` form, without building that string first.
struct Shown<'a, T: std::fmt::Display>(&'a T);

impl<T: std::fmt::Display> Serialize for Shown<'_, T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self.0)
    }
}

/// Bytes shown as lowercase hex.
struct HexOf<'a>(&'a [u8]);

impl std::fmt::Display for HexOf<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut chunk = [0u8; 128];
        for piece in self.0.chunks(chunk.len() / 2) {
            for (i, b) in piece.iter().enumerate() {
                chunk[2 * i] = DIGITS[usize::from(b >> 4)];
                chunk[2 * i + 1] = DIGITS[usize::from(b & 0x0f)];
            }
            // Hex digits are ASCII, so this never fails.
            let text =
                std::str::from_utf8(&chunk[..2 * piece.len()]).map_err(|_| std::fmt::Error)?;
            f.write_str(text)?;
        }
        Ok(())
    }
}

/// Appends `{"type":"message","peer":…,"command":…,"payload_hex":…}` to `out` (the hot path:
/// no intermediate strings).
pub(crate) fn message_into(out: &mut Vec<u8>, peer: &PeerAddr, command: &str, payload: &[u8]) {
    #[derive(Serialize)]
    struct Message<'a> {
        #[serde(rename = "type")]
        ty: &'static str,
        peer: Shown<'a, PeerAddr>,
        command: &'a str,
        payload_hex: Shown<'a, HexOf<'a>>,
    }
    let line = Message {
        ty: "message",
        peer: Shown(peer),
        command,
        payload_hex: Shown(&HexOf(payload)),
    };
    if let Err(e) = serde_json::to_writer(&mut *out, &line) {
        tracing::error!(error = %e, "cannot print a message line");
    }
}

/// `{"type":"message","peer":…,"command":…,"payload_hex":…}`
#[cfg(test)]
pub(crate) fn message(peer: &PeerAddr, command: &str, payload: &[u8]) -> String {
    let mut out = Vec::new();
    message_into(&mut out, peer, command, payload);
    String::from_utf8(out).unwrap_or_default()
}

/// `{"type":"answer","wait":…,"peer":…,"payload_hex":…}`
pub(crate) fn answer(wait: WaitId, peer: &PeerAddr, payload: &[u8]) -> String {
    #[derive(Serialize)]
    struct Answer {
        wait: WaitId,
        peer: String,
        payload_hex: String,
    }
    tagged(
        "answer",
        Answer {
            wait,
            peer: peer.to_string(),
            payload_hex: hex(payload),
        },
    )
}

/// `{"type":"answers_done","wait":…,"missing":[…]}`
pub(crate) fn answers_done(wait: WaitId, missing: &[PeerAddr]) -> String {
    #[derive(Serialize)]
    struct Done {
        wait: WaitId,
        missing: Vec<String>,
    }
    tagged(
        "answers_done",
        Done {
            wait,
            missing: names(missing),
        },
    )
}

/// `{"type":"status","active":…,"pool":…,"backed_off":…}`
pub(crate) fn status(active: usize, pool: usize, backed_off: usize) -> String {
    #[derive(Serialize)]
    struct Status {
        active: usize,
        pool: usize,
        backed_off: usize,
    }
    tagged(
        "status",
        Status {
            active,
            pool,
            backed_off,
        },
    )
}

/// `{"type":"log","severity":…,"message":…,"peer"?:…}`
pub(crate) fn log(severity: Severity, message: &str, peer: Option<&PeerAddr>) -> String {
    #[derive(Serialize)]
    struct Log<'a> {
        severity: &'static str,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        peer: Option<String>,
    }
    tagged(
        "log",
        Log {
            severity: severity.as_str(),
            message,
            peer: peer.map(ToString::to_string),
        },
    )
}

/// `{"type":"sent","req"?:…,"peers":[…],"wait"?:…}`
pub(crate) fn sent(req: Option<u64>, peers: &[PeerAddr], wait: Option<WaitId>) -> String {
    #[derive(Serialize)]
    struct Sent {
        #[serde(skip_serializing_if = "Option::is_none")]
        req: Option<u64>,
        peers: Vec<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        wait: Option<WaitId>,
    }
    tagged(
        "sent",
        Sent {
            req,
            peers: names(peers),
            wait,
        },
    )
}

/// `{"type":"peers","req"?:…,"peers":[{"peer","state","direction","properties","idle_ms"}…]}`,
/// sorted by peer.
pub(crate) fn peers(req: Option<u64>, mut infos: Vec<PeerInfo>, now: Instant) -> String {
    #[derive(Serialize)]
    struct Entry<'a> {
        peer: String,
        state: &'a str,
        direction: &'static str,
        properties: &'a BTreeMap<String, Value>,
        idle_ms: u64,
    }
    #[derive(Serialize)]
    struct Peers<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        req: Option<u64>,
        peers: Vec<Entry<'a>>,
    }
    infos.sort_by(|a, b| a.addr.cmp(&b.addr));
    let peers = infos
        .iter()
        .map(|p| Entry {
            peer: p.addr.to_string(),
            state: p.state.name(),
            direction: match p.direction {
                Direction::Outbound => "outbound",
                Direction::Inbound => "inbound",
            },
            properties: &p.props,
            idle_ms: u64::try_from(now.saturating_duration_since(p.last_seen).as_millis())
                .unwrap_or(u64::MAX),
        })
        .collect();
    tagged("peers", Peers { req, peers })
}

/// A human sentence naming how many events the manager dropped.
pub(crate) fn dropped_sentence(total: u64, new: u64) -> String {
    format!("{new} events were dropped because stdout did not keep up ({total} so far)")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(host: &str, port: u16) -> PeerAddr {
        PeerAddr {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn lines_have_the_documented_shapes() {
        let a = addr("127.0.0.1", 4000);
        let b = addr("::1", 5);
        assert_eq!(
            listening("127.0.0.1:9".parse().expect("addr")),
            r#"{"type":"listening","addr":"127.0.0.1:9"}"#
        );
        assert_eq!(
            peer_connect(&b),
            r#"{"type":"peer_connect","peer":"[::1]:5"}"#
        );
        assert_eq!(
            peer_end(&a, "the peer closed the connection"),
            r#"{"type":"peer_end","peer":"127.0.0.1:4000","reason":"the peer closed the connection"}"#
        );
        assert_eq!(
            message(&a, "knock", &[0, 1, 0xab, 0xff]),
            r#"{"type":"message","peer":"127.0.0.1:4000","command":"knock","payload_hex":"0001abff"}"#
        );
        assert_eq!(
            answer(3, &a, b"\x10"),
            r#"{"type":"answer","wait":3,"peer":"127.0.0.1:4000","payload_hex":"10"}"#
        );
        assert_eq!(
            answers_done(3, &[a.clone(), b.clone()]),
            r#"{"type":"answers_done","wait":3,"missing":["127.0.0.1:4000","[::1]:5"]}"#
        );
        assert_eq!(
            status(2, 1, 0),
            r#"{"type":"status","active":2,"pool":1,"backed_off":0}"#
        );
        assert_eq!(
            log(Severity::Warning, "bad", Some(&a)),
            r#"{"type":"log","severity":"warning","message":"bad","peer":"127.0.0.1:4000"}"#
        );
        assert_eq!(
            log(Severity::Info, "x", None),
            r#"{"type":"log","severity":"info","message":"x"}"#
        );
        assert_eq!(
            sent(Some(1), std::slice::from_ref(&a), Some(2)),
            r#"{"type":"sent","req":1,"peers":["127.0.0.1:4000"],"wait":2}"#
        );
        assert_eq!(sent(None, &[], None), r#"{"type":"sent","peers":[]}"#);
        assert_eq!(
            peers(None, Vec::new(), Instant::now()),
            r#"{"type":"peers","peers":[]}"#
        );
        assert_eq!(hex(&[]), "");
        let long: Vec<u8> = (0..=255).collect();
        let want: String = long.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex(&long), want);
        assert_eq!(
            message(&b, "q\"\\", &long[..3]),
            r#"{"type":"message","peer":"[::1]:5","command":"q\"\\","payload_hex":"000102"}"#
        );
    }
}
