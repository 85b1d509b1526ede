//! Writes the seed corpus: every frame type in both encodings, plus a few near-misses.
//!
//! `cargo run --manifest-path fuzz/Cargo.toml --example seeds -- fuzz/seeds`
//! writes `<dir>/<name>` files that start with the encoding selector byte (`j` or `m`).

use std::path::PathBuf;

use peermesh_proto::*;
use serde_json::json;

fn main() -> std::io::Result<()> {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "fuzz/seeds".into()),
    );
    std::fs::create_dir_all(&dir)?;
    let id = |s: &str| ClientId::new(s).expect("valid seed id");
    let room = |s: &str| RoomName::new(s).expect("valid seed room");
    let event = |s: &str| EventName::new(s).expect("valid seed event");
    let rich = json!({"text": "hi ✓", "n": -3, "big": 18446744073709551615u64,
                      "f": 0.25, "list": [true, null, "x", {"k": []}]});
    let bin = Payload::from(vec![0u8, 1, 2, 0xfe, 0xff]);

    let client = [
        (
            "hello_min",
            ClientFrame::Hello(Hello {
                version: "1.0.0".into(),
                ..Hello::default()
            }),
        ),
        (
            "hello_full",
            ClientFrame::Hello(Hello {
                id: Some(id("alice")),
                version: "1.0.0".into(),
                rooms: vec![room("lobby"), room("game · 1")],
                token: Some("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2ln".into()),
                secret: Some("5f0c6a".into()),
            }),
        ),
        (
            "emit_data",
            ClientFrame::Emit(Emit {
                to: id("bob"),
                event: event("chat"),
                payload: Payload::Json(rich.clone()),
                req: None,
                ack: false,
                timeout_ms: None,
            }),
        ),
        (
            "emit_ack_bin",
            ClientFrame::Emit(Emit {
                to: id("bob"),
                event: event("file"),
                payload: bin.clone(),
                req: Some(300),
                ack: true,
                timeout_ms: Some(70_000),
            }),
        ),
        (
            "reply",
            ClientFrame::Reply(Reply {
                ack_id: 9,
                payload: Payload::Json(json!("ok")),
            }),
        ),
        (
            "reply_bin",
            ClientFrame::Reply(Reply {
                ack_id: 1 << 40,
                payload: bin.clone(),
            }),
        ),
        (
            "join",
            ClientFrame::Join {
                room: room("lobby"),
                req: Some(2),
            },
        ),
        (
            "leave",
            ClientFrame::Leave {
                room: room("lobby"),
                req: None,
            },
        ),
        (
            "members",
            ClientFrame::Members {
                room: room("lobby"),
                req: Some(70_000),
            },
        ),
        (
            "emit_room",
            ClientFrame::EmitRoom(EmitRoom {
                room: room("lobby"),
                event: event("move"),
                payload: Payload::Json(json!([1.5, -2])),
                include_self: true,
                req: Some(4),
            }),
        ),
        (
            "ping",
            ClientFrame::Ping {
                req: Some(u64::MAX),
            },
        ),
    ];
    let limits = Limits {
        max_frame_bytes: 1 << 20,
        max_rooms_per_client: 64,
        rate_per_sec: 100,
        rate_burst: 200,
        max_pending_acks: 256,
        max_ack_timeout_ms: 60_000,
        max_streams: 128,
        max_stream_window: 4 << 20,
        stream_open_timeout_ms: 10_000,
    };
    let server = [
        (
            "welcome",
            ServerFrame::Welcome(Welcome {
                id: id("alice"),
                secret: "8c1d2e".into(),
                version: PROTOCOL_VERSION.into(),
                heartbeat_ms: 10_000,
                rooms: vec![room("lobby")],
                limits,
            }),
        ),
        (
            "message",
            ServerFrame::Message(Message {
                from: id("bob"),
                event: event("chat"),
                payload: Payload::Json(rich),
                room: Some(room("lobby")),
                ack_id: Some(17),
            }),
        ),
        (
            "message_bin",
            ServerFrame::Message(Message {
                from: id("bob"),
                event: event("file"),
                payload: bin.clone(),
                room: None,
                ack_id: None,
            }),
        ),
        (
            "ack",
            ServerFrame::Ack {
                req: 300,
                payload: bin,
            },
        ),
        ("ok", ServerFrame::Ok { req: 2 }),
        (
            "members_resp",
            ServerFrame::Members {
                req: Some(3),
                room: room("lobby"),
                members: vec![id("alice"), id("bob")],
            },
        ),
        (
            "error",
            ServerFrame::Error(ErrorFrame::new(
                ErrorCode::UnknownTarget,
                "no client \"zed\"",
                Some(5),
            )),
        ),
        (
            "member_joined",
            ServerFrame::MemberJoined {
                room: room("lobby"),
                id: id("carol"),
            },
        ),
        (
            "member_left",
            ServerFrame::MemberLeft {
                room: room("lobby"),
                id: id("carol"),
            },
        ),
        ("peer_left", ServerFrame::PeerLeft { id: id("bob") }),
        ("pong", ServerFrame::Pong { req: None }),
    ];
    let mut n = 0;
    for (name, frame) in &client {
        for (tag, enc) in [(b'j', Encoding::Json), (b'm', Encoding::MsgPack)] {
            let mut out = vec![tag];
            out.extend_from_slice(&encode_client(enc, frame));
            std::fs::write(dir.join(format!("c_{name}.{}", enc.as_str())), out)?;
            n += 1;
        }
    }
    for (name, frame) in &server {
        for (tag, enc) in [(b'j', Encoding::Json), (b'm', Encoding::MsgPack)] {
            let mut out = vec![tag];
            out.extend_from_slice(&encode_server(enc, 1 << 33, frame));
            std::fs::write(dir.join(format!("s_{name}.{}", enc.as_str())), out)?;
            n += 1;
        }
    }
    // Near-misses: each should be refused with a precise code, not a crash.
    let bad = [
        ("unknown_type", json!({"type": "teleport", "req": 1})),
        ("no_type", json!({"to": "bob", "req": 2})),
        ("type_not_string", json!({"type": 7})),
        (
            "both_payloads",
            json!({"type": "reply", "ack_id": 1, "data": 1, "bin": "AA=="}),
        ),
        (
            "bad_base64",
            json!({"type": "reply", "ack_id": 1, "bin": "%%%"}),
        ),
        (
            "ack_without_req",
            json!({"type": "emit", "to": "b", "event": "e", "ack": true}),
        ),
        (
            "bad_id",
            json!({"type": "hello", "id": "a b", "version": "1.0.0"}),
        ),
        (
            "unknown_code",
            json!({"type": "error", "seq": 1, "code": "from_the_future", "message": "m"}),
        ),
        (
            "unknown_literal_code",
            json!({"type": "error", "seq": 1, "code": "unknown", "message": "m"}),
        ),
        ("deep", (0..200).fold(json!(0), |v, _| json!([v]))),
    ];
    for (name, value) in &bad {
        std::fs::write(
            dir.join(format!("x_{name}.json")),
            [b"j".as_slice(), &serde_json::to_vec(value)?].concat(),
        )?;
        let mp = rmp_serde::to_vec_named(value).expect("a JSON value encodes as MessagePack");
        std::fs::write(
            dir.join(format!("x_{name}.msgpack")),
            [b"m".as_slice(), &mp].concat(),
        )?;
        n += 2;
    }
    println!("wrote {n} seeds to {}", dir.display());
    Ok(())
}
