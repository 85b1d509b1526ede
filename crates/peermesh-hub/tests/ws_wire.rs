//! The hub's WebSocket layer seen byte by byte over a real loopback socket: the upgrade,
//! frames that arrive in pieces or together with the upgrade request, fragments with control
//! frames between them, and the RFC 6455 close codes of protocol violations.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::TestHub;
use peermesh_hub::HubConfig;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(5);
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
/// `KEY`'s answer, from RFC 6455 §1.3.
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

fn upgrade_request(extra: &str) -> String {
    format!(
        "GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// A client frame: masked, as RFC 6455 requires of clients.
fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame_with(if fin { 0x80 } else { 0 } | opcode, true, payload)
}

fn frame_with(b0: u8, masked: bool, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let m = if masked { 0x80 } else { 0 };
    let mut out = vec![b0];
    match payload.len() {
        n if n < 126 => out.push(m | n as u8),
        n if n <= 0xffff => {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// The header of a masked text frame of 1 MiB, with its mask key and no payload.
fn too_large_header() -> Vec<u8> {
    let mut out = vec![0x81, 0x80 | 127];
    out.extend_from_slice(&(1u64 << 20).to_be_bytes());
    out.extend_from_slice(&[1, 2, 3, 4]);
    out
}

fn text(v: Value) -> Vec<u8> {
    frame(true, 0x1, v.to_string().as_bytes())
}

/// Reads the HTTP response head.
async fn response_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        let n = timeout(WAIT, s.read(&mut b)).await.unwrap().unwrap();
        assert_eq!(n, 1, "the hub closed during the handshake: {head:?}");
        head.push(b[0]);
    }
    String::from_utf8(head).unwrap()
}

/// Reads one server frame: (opcode, payload), skipping the hub's own pings (it measures the
/// round-trip time right after the welcome). Server frames are never masked.
async fn read_frame(s: &mut TcpStream) -> (u8, Vec<u8>) {
    loop {
        let (op, p) = read_any_frame(s).await;
        if op != 0x9 {
            return (op, p);
        }
    }
}

async fn read_any_frame(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut h = [0u8; 2];
    timeout(WAIT, s.read_exact(&mut h)).await.unwrap().unwrap();
    assert_eq!(h[0] & 0x80, 0x80, "the hub sends whole frames");
    assert_eq!(h[1] & 0x80, 0, "server frames are not masked");
    let len = match h[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            s.read_exact(&mut b).await.unwrap();
            u64::from(u16::from_be_bytes(b))
        }
        127 => {
            let mut b = [0u8; 8];
            s.read_exact(&mut b).await.unwrap();
            u64::from_be_bytes(b)
        }
        n => u64::from(n),
    };
    let mut payload = vec![0u8; len as usize];
    timeout(WAIT, s.read_exact(&mut payload))
        .await
        .unwrap()
        .unwrap();
    (h[0] & 0x0f, payload)
}

async fn read_json(s: &mut TcpStream) -> Value {
    let (op, p) = read_frame(s).await;
    assert_eq!(op, 0x1, "a text frame, got opcode {op}: {p:?}");
    serde_json::from_slice(&p).unwrap()
}

/// Reads until the close frame: the JSON frames before it and the close code.
async fn read_until_close(s: &mut TcpStream) -> (Vec<Value>, u16) {
    let mut frames = Vec::new();
    loop {
        let (op, p) = read_frame(s).await;
        match op {
            0x1 => frames.push(serde_json::from_slice(&p).unwrap()),
            0x8 => {
                assert!(p.len() >= 2, "a close frame with a code");
                return (frames, u16::from_be_bytes([p[0], p[1]]));
            }
            _ => {}
        }
    }
}

/// An upgraded socket that said hello as `id`.
async fn greeted(hub: &TestHub, id: &str) -> TcpStream {
    let mut s = TcpStream::connect(hub.addr).await.unwrap();
    s.write_all(upgrade_request(&format!("Sec-WebSocket-Key: {KEY}\r\n")).as_bytes())
        .await
        .unwrap();
    let head = response_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s.write_all(&text(json!({"type":"hello","version":"1.0.0","id":id})))
        .await
        .unwrap();
    assert_eq!(read_json(&mut s).await["type"], "welcome");
    s
}

#[tokio::test]
async fn the_upgrade_and_the_first_frames_in_one_write() {
    let hub = TestHub::default().await;
    let mut s = TcpStream::connect(hub.addr).await.unwrap();
    // A client that does not wait for the 101: the hub must keep the bytes it read past the
    // request and decode them as frames.
    let mut bytes = upgrade_request(&format!("Sec-WebSocket-Key: {KEY}\r\n")).into_bytes();
    bytes.extend(text(json!({"type":"hello","version":"1.0.0","id":"eager"})));
    bytes.extend(text(json!({"type":"ping","req":7})));
    s.write_all(&bytes).await.unwrap();
    let head = response_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(
        lower.contains(&format!(
            "sec-websocket-accept: {}",
            ACCEPT.to_ascii_lowercase()
        )),
        "{head}"
    );
    let welcome = read_json(&mut s).await;
    assert_eq!(
        (welcome["type"].as_str(), welcome["id"].as_str()),
        (Some("welcome"), Some("eager"))
    );
    let pong = read_json(&mut s).await;
    assert_eq!(
        (pong["type"].as_str(), &pong["req"]),
        (Some("pong"), &json!(7))
    );
}

#[tokio::test]
async fn frames_in_single_bytes_and_a_fragmented_message_around_a_ping() {
    let hub = TestHub::default().await;
    let mut s = greeted(&hub, "trickle").await;
    s.set_nodelay(true).unwrap();
    // One request as two fragments with a WebSocket ping between them, every byte its own
    // write: the hub answers the ping at once and the request once it is whole.
    let body = json!({"type":"ping","req":11}).to_string();
    let (a, b) = body.as_bytes().split_at(9);
    let mut bytes = frame(false, 0x1, a);
    bytes.extend(frame(true, 0x9, b"are you there"));
    bytes.extend(frame(true, 0x0, b));
    for byte in bytes {
        s.write_all(&[byte]).await.unwrap();
        tokio::task::yield_now().await;
    }
    let (op, p) = read_frame(&mut s).await;
    assert_eq!(
        (op, p.as_slice()),
        (0xA, &b"are you there"[..]),
        "the pong first"
    );
    let pong = read_json(&mut s).await;
    assert_eq!(
        (pong["type"].as_str(), &pong["req"]),
        (Some("pong"), &json!(11))
    );
    // The socket is still in step: another request, whole.
    s.write_all(&text(json!({"type":"ping","req":12})))
        .await
        .unwrap();
    assert_eq!(read_json(&mut s).await["req"], 12);
}

#[tokio::test]
async fn protocol_violations_close_with_the_rfc_codes_and_others_carry_on() {
    let hub = TestHub::start(HubConfig {
        max_frame_bytes: 1024,
        ..Default::default()
    })
    .await;
    let mut bystander = greeted(&hub, "bystander").await;
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("an unmasked frame", frame_with(0x81, false, b"{}"), 1002),
        (
            "a reserved bit",
            frame_with(0x80 | 0x40 | 0x1, true, b"{}"),
            1002,
        ),
        ("a reserved opcode", frame(true, 0x3, b"{}"), 1002),
        (
            "a continuation with nothing to continue",
            frame(true, 0x0, b"{}"),
            1002,
        ),
        ("a fragmented ping", frame(false, 0x9, b""), 1002),
        (
            "text that is not UTF-8",
            frame(true, 0x1, &[0x22, 0xff, 0xfe, 0x22]),
            1007,
        ),
        // Only the header: the hub refuses from the declared length, before any payload.
        ("a frame declared too large", too_large_header(), 1009),
    ];
    for (i, (what, bytes, code)) in cases.into_iter().enumerate() {
        let mut s = greeted(&hub, &format!("bad{i}")).await;
        s.write_all(&bytes).await.unwrap();
        let (frames, got) = read_until_close(&mut s).await;
        assert_eq!(got, code, "{what}: {frames:?}");
        let last = frames
            .last()
            .unwrap_or_else(|| panic!("{what}: no error frame"));
        let want = if code == 1009 {
            "frame_too_large"
        } else {
            "malformed"
        };
        assert_eq!(last["code"], want, "{what}: {last}");
        assert!(!last["message"].as_str().unwrap_or_default().is_empty());
        // Everyone else carries on.
        bystander
            .write_all(&text(json!({"type":"ping","req":i})))
            .await
            .unwrap();
        assert_eq!(read_json(&mut bystander).await["req"], i);
    }
}

#[tokio::test]
async fn refused_upgrades_say_why() {
    let hub = TestHub::default().await;
    let cases = [
        (
            "GET /ws HTTP/1.1\r\nHost: localhost\r\n\r\n".to_owned(),
            "400",
            "websocket",
        ),
        (
            upgrade_request("").replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8"),
            "426",
            "sec-websocket-version: 13",
        ),
        (upgrade_request(""), "400", "sec-websocket-key"),
        (
            upgrade_request(&format!("Sec-WebSocket-Key: {KEY}\r\n")).replace("/ws", "/ws?enc=xml"),
            "400",
            "enc=json",
        ),
    ];
    for (req, status, says) in cases {
        let mut s = TcpStream::connect(hub.addr).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        let _ = timeout(WAIT, async {
            let mut b = [0u8; 4096];
            while !String::from_utf8_lossy(&out)
                .to_ascii_lowercase()
                .contains(says)
            {
                match s.read(&mut b).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => out.extend_from_slice(&b[..n]),
                }
            }
        })
        .await;
        let out = String::from_utf8_lossy(&out).to_ascii_lowercase();
        assert!(
            out.starts_with(&format!("http/1.1 {status}")),
            "{req:?}: {out}"
        );
        assert!(out.contains(says), "{req:?}: {out}");
    }
}

#[tokio::test]
async fn a_client_close_is_echoed_then_the_socket_ends() {
    let hub = TestHub::default().await;
    let mut s = greeted(&hub, "leaver").await;
    let mut payload = 1000u16.to_be_bytes().to_vec();
    payload.extend_from_slice(b"bye");
    s.write_all(&frame(true, 0x8, &payload)).await.unwrap();
    let (frames, code) = read_until_close(&mut s).await;
    assert_eq!(code, 1000, "{frames:?}");
    let mut rest = Vec::new();
    let n = timeout(WAIT, s.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0, "nothing after the close: {rest:?}");
}
