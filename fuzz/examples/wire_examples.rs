//! Prints the example exchanges of `docs/protocol.md`: every frame in JSON and as a hex dump of
//! its MessagePack encoding, produced by `peermesh-proto` itself so the document stays exact.
//!
//! `cargo run --manifest-path fuzz/Cargo.toml --example wire_examples > /tmp/examples.md`

use bytes::Bytes;
use peermesh_proto::*;
use serde_json::json;

enum Dir {
    Up(ClientFrame),
    Down(u64, ServerFrame),
}

fn hexdump(bytes: &[u8]) -> String {
    let mut out = String::new();
    for (i, chunk) in bytes.chunks(16).enumerate() {
        let hex: Vec<String> = chunk.iter().map(|b| format!("{b:02x}")).collect();
        let ascii: String = chunk
            .iter()
            .map(|&b| {
                if (0x20..0x7f).contains(&b) {
                    b as char
                } else {
                    '.'
                }
            })
            .collect();
        out.push_str(&format!(
            "{:04x}  {:<47}  {}\n",
            i * 16,
            hex.join(" "),
            ascii
        ));
    }
    out
}

fn show(title: &str, frames: Vec<(&str, Dir)>) {
    println!("#### {title}\n");
    for (who, dir) in &frames {
        let (arrow, json, mp) = match dir {
            Dir::Up(f) => (
                "→ hub",
                encode_client(Encoding::Json, f),
                encode_client(Encoding::MsgPack, f),
            ),
            Dir::Down(seq, f) => (
                "hub →",
                encode_server(Encoding::Json, *seq, f),
                encode_server(Encoding::MsgPack, *seq, f),
            ),
        };
        // Every example must decode back to itself: the document never shows a frame the
        // reference implementation would refuse.
        match dir {
            Dir::Up(f) => {
                assert_eq!(&decode_client(Encoding::Json, &json).expect("json"), f);
                assert_eq!(&decode_client(Encoding::MsgPack, &mp).expect("msgpack"), f);
            }
            Dir::Down(seq, f) => {
                assert_eq!(
                    decode_server(Encoding::Json, &json).expect("json"),
                    (*seq, f.clone())
                );
                assert_eq!(
                    decode_server(Encoding::MsgPack, &mp).expect("msgpack"),
                    (*seq, f.clone())
                );
            }
        }
        let (who, arrow) = if arrow == "→ hub" {
            (*who, arrow.to_string())
        } else {
            ("hub", format!("→ {who}"))
        };
        println!(
            "{who} {arrow}, text frame:\n\n```json\n{}\n```\n",
            String::from_utf8_lossy(&json)
        );
        println!(
            "the same as a binary frame ({} bytes of MessagePack):\n\n```text\n{}```\n",
            mp.len(),
            hexdump(&mp)
        );
    }
}

fn main() {
    let id = |s: &str| ClientId::new(s).expect("id");
    let room = |s: &str| RoomName::new(s).expect("room");
    let ev = |s: &str| EventName::new(s).expect("event");
    let limits = Limits {
        max_frame_bytes: 1_048_576,
        max_rooms_per_client: 256,
        rate_per_sec: 5_000,
        rate_burst: 10_000,
        max_pending_acks: 1_024,
        max_ack_timeout_ms: 60_000,
        max_streams: 128,
        max_stream_window: 4 << 20,
        stream_open_timeout_ms: 10_000,
    };
    show(
        "Handshake",
        vec![
            (
                "alice",
                Dir::Up(ClientFrame::Hello(Hello {
                    id: Some(id("alice")),
                    version: "1.0.0".into(),
                    rooms: vec![room("lobby")],
                    token: None,
                    secret: None,
                })),
            ),
            (
                "alice",
                Dir::Down(
                    1,
                    ServerFrame::Welcome(Welcome {
                        id: id("alice"),
                        secret: "4f6c0a9e2b7d41c3a85e6f0d19b2c7e4".into(),
                        version: PROTOCOL_VERSION.into(),
                        heartbeat_ms: 5_000,
                        rooms: vec![room("lobby")],
                        limits,
                    }),
                ),
            ),
        ],
    );
    let ack_id = (3u64 << 32) | 1;
    show(
        "Direct message with an acknowledgement",
        vec![
            (
                "alice",
                Dir::Up(ClientFrame::Emit(Emit {
                    to: id("bob"),
                    event: ev("chat"),
                    payload: Payload::Json(json!({"text": "hi"})),
                    req: Some(1),
                    ack: true,
                    timeout_ms: None,
                })),
            ),
            (
                "bob",
                Dir::Down(
                    2,
                    ServerFrame::Message(Message {
                        from: id("alice"),
                        event: ev("chat"),
                        payload: Payload::Json(json!({"text": "hi"})),
                        room: None,
                        ack_id: Some(ack_id),
                    }),
                ),
            ),
            (
                "bob",
                Dir::Up(ClientFrame::Reply(Reply {
                    ack_id,
                    payload: Payload::Json(json!("got it")),
                })),
            ),
            (
                "alice",
                Dir::Down(
                    2,
                    ServerFrame::Ack {
                        req: 1,
                        payload: Payload::Json(json!("got it")),
                    },
                ),
            ),
        ],
    );
    show(
        "Binary payload",
        vec![
            (
                "alice",
                Dir::Up(ClientFrame::Emit(Emit {
                    to: id("bob"),
                    event: ev("blob"),
                    payload: Payload::Bin(Bytes::from_static(&[0xde, 0xad, 0xbe, 0xef])),
                    req: None,
                    ack: false,
                    timeout_ms: None,
                })),
            ),
            (
                "bob",
                Dir::Down(
                    3,
                    ServerFrame::Message(Message {
                        from: id("alice"),
                        event: ev("blob"),
                        payload: Payload::Bin(Bytes::from_static(&[0xde, 0xad, 0xbe, 0xef])),
                        room: None,
                        ack_id: None,
                    }),
                ),
            ),
        ],
    );
    show(
        "Rooms",
        vec![
            (
                "bob",
                Dir::Up(ClientFrame::Join {
                    room: room("lobby"),
                    req: Some(7),
                }),
            ),
            ("bob", Dir::Down(4, ServerFrame::Ok { req: 7 })),
            (
                "alice",
                Dir::Down(
                    3,
                    ServerFrame::MemberJoined {
                        room: room("lobby"),
                        id: id("bob"),
                    },
                ),
            ),
            (
                "alice",
                Dir::Up(ClientFrame::EmitRoom(EmitRoom {
                    room: room("lobby"),
                    event: ev("move"),
                    payload: Payload::Json(json!({"x": 3, "y": -1.5})),
                    include_self: false,
                    req: Some(2),
                })),
            ),
            (
                "bob",
                Dir::Down(
                    5,
                    ServerFrame::Message(Message {
                        from: id("alice"),
                        event: ev("move"),
                        payload: Payload::Json(json!({"x": 3, "y": -1.5})),
                        room: Some(room("lobby")),
                        ack_id: None,
                    }),
                ),
            ),
            ("alice", Dir::Down(4, ServerFrame::Ok { req: 2 })),
            (
                "alice",
                Dir::Up(ClientFrame::Members {
                    room: room("lobby"),
                    req: Some(3),
                }),
            ),
            (
                "alice",
                Dir::Down(
                    5,
                    ServerFrame::Members {
                        req: Some(3),
                        room: room("lobby"),
                        members: vec![id("alice"), id("bob")],
                    },
                ),
            ),
            (
                "bob",
                Dir::Up(ClientFrame::Leave {
                    room: room("lobby"),
                    req: Some(8),
                }),
            ),
            ("bob", Dir::Down(6, ServerFrame::Ok { req: 8 })),
            (
                "alice",
                Dir::Down(
                    6,
                    ServerFrame::MemberLeft {
                        room: room("lobby"),
                        id: id("bob"),
                    },
                ),
            ),
        ],
    );
    show(
        "A refused handshake",
        vec![
        ("mallory", Dir::Up(ClientFrame::Hello(Hello {
            id: Some(id("alice")),
            version: "1.0.0".into(),
            rooms: vec![],
            token: None,
            secret: None,
        }))),
        ("mallory", Dir::Down(1, ServerFrame::Error(ErrorFrame::new(
            ErrorCode::IdTaken,
            "client id \"alice\" is already connected; pick another id, or present the secret \
             from its welcome to replace that connection",
            None,
        )))),
    ],
    );
    show(
        "Errors, ping and peer_left",
        vec![
            (
                "alice",
                Dir::Up(ClientFrame::Emit(Emit {
                    to: id("zed"),
                    event: ev("chat"),
                    payload: Payload::Json(json!("hello?")),
                    req: Some(4),
                    ack: false,
                    timeout_ms: None,
                })),
            ),
            (
                "alice",
                Dir::Down(
                    7,
                    ServerFrame::Error(ErrorFrame::new(
                        ErrorCode::UnknownTarget,
                        "no client with id \"zed\" is connected",
                        Some(4),
                    )),
                ),
            ),
            ("alice", Dir::Up(ClientFrame::Ping { req: Some(5) })),
            ("alice", Dir::Down(8, ServerFrame::Pong { req: Some(5) })),
            (
                "alice",
                Dir::Down(9, ServerFrame::PeerLeft { id: id("bob") }),
            ),
        ],
    );
}
