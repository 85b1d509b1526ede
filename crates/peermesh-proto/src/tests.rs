//! Unit and property tests of the codec.
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use proptest::prelude::*;
use serde_json::json;

use super::*;

const ENCS: [Encoding; 2] = [Encoding::Json, Encoding::MsgPack];

fn to_enc(enc: Encoding, v: &serde_json::Value) -> Vec<u8> {
    match enc {
        Encoding::Json => serde_json::to_vec(v).unwrap(),
        Encoding::MsgPack => rmp_serde::to_vec_named(v).unwrap(),
    }
}

fn err(enc: Encoding, v: serde_json::Value) -> DecodeError {
    decode_client(enc, &to_enc(enc, &v)).unwrap_err()
}

#[test]
fn decodes_emit_with_ack() {
    for enc in ENCS {
        let f = decode_client(
            enc,
            &to_enc(
                enc,
                &json!({"type":"emit","to":"bob","event":"q","data":1,"ack":true,"req":7}),
            ),
        )
        .unwrap();
        let ClientFrame::Emit(e) = f else { panic!() };
        assert!(e.ack);
        assert_eq!(e.req, Some(7));
        assert_eq!(e.payload, Payload::Json(json!(1)));
    }
}

#[test]
fn classifies_bad_frames() {
    for enc in ENCS {
        assert_eq!(
            err(enc, json!({"type":"nope","req":3})).code,
            ErrorCode::UnknownType
        );
        assert_eq!(err(enc, json!({"type":"nope","req":3})).req, Some(3));
        assert_eq!(err(enc, json!({"to":"bob"})).code, ErrorCode::InvalidField);
        assert_eq!(err(enc, json!({"type":5})).code, ErrorCode::InvalidField);
        let e = err(enc, json!({"type":"emit","event":"x","req":9}));
        assert_eq!((e.code, e.req), (ErrorCode::InvalidField, Some(9)));
        assert!(e.message.contains("`to`"), "{}", e.message);
        let e = err(enc, json!({"type":"emit","to":5,"event":"x","req":4}));
        assert_eq!((e.code, e.req), (ErrorCode::InvalidField, Some(4)));
        let e = err(enc, json!({"type":"emit","to":"a b","event":"x"}));
        assert_eq!(e.code, ErrorCode::InvalidField);
        let e = err(enc, json!({"type":"emit","to":"b","event":"x","ack":true}));
        assert!(e.message.contains("req"), "{}", e.message);
        let e = err(enc, json!({"type":"hello","id":"bad id","version":"1.0.0"}));
        assert_eq!(e.code, ErrorCode::InvalidId);
        let e = err(
            enc,
            json!({"type":"reply","ack_id":1,"data":1,"bin":"AA=="}),
        );
        assert_eq!(e.code, ErrorCode::InvalidField);
        assert_eq!(err(enc, json!([1, 2])).code, ErrorCode::Malformed);
    }
    assert_eq!(
        decode_client(Encoding::Json, b"{\"type\":")
            .unwrap_err()
            .code,
        ErrorCode::Malformed
    );
    assert_eq!(
        decode_client(Encoding::MsgPack, &[0x81, 0xa4])
            .unwrap_err()
            .code,
        ErrorCode::Malformed
    );
    assert_eq!(
        decode_client(Encoding::Json, b"").unwrap_err().code,
        ErrorCode::Malformed
    );
}

#[test]
fn service_frames_are_checked() {
    for enc in ENCS {
        let e = err(
            enc,
            json!({"type": "provide", "service": "s", "methods": [], "req": 1}),
        );
        assert_eq!((e.code, e.req), (ErrorCode::InvalidField, Some(1)));
        let e = err(
            enc,
            json!({"type": "provide", "service": "s", "methods": ["a", "a"]}),
        );
        assert!(e.message.contains("twice"), "{}", e.message);
        let e = err(enc, json!({"type": "call", "service": "s", "method": "m"}));
        assert!(e.message.contains("`req`"), "{}", e.message);
        let e = err(
            enc,
            json!({"type": "call", "service": "a b", "method": "m", "req": 2}),
        );
        assert_eq!((e.code, e.req), (ErrorCode::InvalidField, Some(2)));
        let e = err(
            enc,
            json!({"type": "respond", "call": 1, "error": "x", "data": 1}),
        );
        assert!(e.message.contains("not both"), "{}", e.message);
        let long = "e".repeat(crate::MAX_SERVICE_ERROR_LEN + 1);
        let e = err(enc, json!({"type": "respond", "call": 1, "error": long}));
        assert_eq!(e.code, ErrorCode::InvalidField);
        let e = err(
            enc,
            json!({"type": "subscribe", "service": "s", "topic": "a\nb"}),
        );
        assert_eq!(e.code, ErrorCode::InvalidField);
    }
    let ok = decode_client(
        Encoding::Json,
        br#"{"type":"respond","call":9,"error":"division by zero"}"#,
    )
    .unwrap();
    assert_eq!(
        ok,
        ClientFrame::Respond(Respond {
            call: 9,
            outcome: Err("division by zero".into())
        })
    );
    let (_, f) = decode_server(
        Encoding::Json,
        br#"{"seq":3,"type":"topic_ended","service":"s","topic":"t","reason":"later"}"#,
    )
    .unwrap();
    assert!(matches!(
        f,
        ServerFrame::TopicEnded {
            reason: TopicEnd::Unknown,
            ..
        }
    ));
}

#[test]
fn json_bin_is_base64_and_msgpack_bin_is_bin() {
    let frame = ServerFrame::Ack {
        req: 1,
        payload: Payload::Bin(Bytes::from_static(b"\x00\xff")),
    };
    let json = encode_server(Encoding::Json, 3, &frame);
    assert_eq!(&json[..], br#"{"seq":3,"type":"ack","req":1,"bin":"AP8="}"#);
    let mp = encode_server(Encoding::MsgPack, 3, &frame);
    assert!(mp.windows(4).any(|w| w == [0xc4, 2, 0x00, 0xff]));
    for (enc, bytes) in [(Encoding::Json, json), (Encoding::MsgPack, mp)] {
        assert_eq!(decode_server(enc, &bytes).unwrap(), (3, frame.clone()));
    }
}

#[test]
fn deep_nesting_is_refused_not_a_crash() {
    let mut v = json!(1);
    for _ in 0..300 {
        v = json!([v]);
    }
    let frame = json!({"type":"emit","to":"b","event":"e","data":v});
    for enc in ENCS {
        let bytes = to_enc(enc, &frame);
        assert!(decode_client(enc, &bytes).is_err());
    }
}

fn arb_name() -> BoxedStrategy<String> {
    "[a-zA-Z0-9_.:@-]{1,20}".boxed()
}

fn arb_json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(json!(null)),
        any::<bool>().prop_map(|b| json!(b)),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        (-1e9f64..1e9).prop_map(|f| json!(f)),
        ".{0,12}".prop_map(|s| json!(s)),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            prop::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn arb_payload() -> impl Strategy<Value = Payload> {
    prop_oneof![
        arb_json().prop_map(Payload::Json),
        prop::collection::vec(any::<u8>(), 0..32).prop_map(Payload::from),
    ]
}

fn arb_client_frame() -> impl Strategy<Value = ClientFrame> {
    let id = arb_name().prop_map(|s| ClientId::new(&s).unwrap()).boxed();
    let room = "[^\\p{Cc}]{1,16}"
        .prop_map(|s| RoomName::new(&s).unwrap())
        .boxed();
    let event = "[^\\p{Cc}]{1,16}".prop_map(|s| EventName::new(&s).unwrap());
    prop_oneof![
        (
            proptest::option::of(id.clone()),
            prop::collection::vec(room.clone(), 0..3),
            proptest::option::of("[a-z]{1,8}"),
            any::<bool>(),
            proptest::option::of(any::<u64>()),
        )
            .prop_map(
                |(id, rooms, token, resume, last_seq)| ClientFrame::Hello(Hello {
                    id,
                    version: "1.0.0".into(),
                    rooms,
                    token,
                    secret: last_seq.map(|s| format!("{s:032x}")),
                    resume,
                    last_seq,
                    sessions: Vec::new(),
                })
            ),
        any::<u64>().prop_map(|seq| ClientFrame::Received { seq }),
        (arb_payload(), any::<bool>(), any::<Option<u64>>(), 0u8..5).prop_map(
            |(payload, owned, req, k)| {
                let object = ObjectName::new("ball · 1").unwrap();
                let op = match k {
                    0 => SessionOp::Create {
                        object,
                        payload,
                        owned,
                        on_owner_leave: if owned {
                            OwnerLeave::Authority
                        } else {
                            OwnerLeave::Delete
                        },
                    },
                    1 => SessionOp::Update { object, payload },
                    2 => SessionOp::Patch {
                        object,
                        patch: json!({"x": null, "y": [1, 2]}),
                    },
                    3 => SessionOp::Delete { object },
                    _ => SessionOp::Transfer {
                        object,
                        to: owned.then(|| ClientId::new("bob").unwrap()),
                    },
                };
                ClientFrame::SessionOp {
                    session: SessionName::new("g-1").unwrap(),
                    op,
                    req,
                }
            }
        ),
        (any::<bool>(), any::<Option<u64>>()).prop_map(|(named, req)| ClientFrame::SessionJoin {
            session: named.then(|| SessionName::new("g").unwrap()),
            mode: named.then_some(SessionMode::Relay),
            req,
        }),
        (
            id,
            event.clone(),
            arb_payload(),
            any::<Option<u64>>(),
            any::<bool>()
        )
            .prop_map(|(to, event, payload, req, ack)| ClientFrame::Emit(Emit {
                to,
                event,
                payload,
                req: if ack { Some(req.unwrap_or(1)) } else { req },
                ack,
                timeout_ms: None,
            })),
        (any::<u64>(), arb_payload())
            .prop_map(|(ack_id, payload)| ClientFrame::Reply(Reply { ack_id, payload })),
        (room.clone(), any::<Option<u64>>())
            .prop_map(|(room, req)| ClientFrame::Join { room, req }),
        (room.clone(), event, arb_payload(), any::<bool>()).prop_map(
            |(room, event, payload, include_self)| ClientFrame::EmitRoom(EmitRoom {
                room,
                event,
                payload,
                include_self,
                req: None,
            })
        ),
        any::<Option<u64>>().prop_map(|req| ClientFrame::Ping { req }),
        arb_stream_client_frame(),
        arb_service_client_frame(),
    ]
}

fn arb_service() -> BoxedStrategy<ServiceName> {
    arb_name()
        .prop_map(|s| ServiceName::new(&s).unwrap())
        .boxed()
}

fn arb_topic() -> BoxedStrategy<TopicName> {
    "[^\\p{Cc}]{1,16}"
        .prop_map(|s| TopicName::new(&s).unwrap())
        .boxed()
}

fn arb_service_client_frame() -> impl Strategy<Value = ClientFrame> {
    let method = arb_name().prop_map(|s| MethodName::new(&s).unwrap());
    prop_oneof![
        (
            arb_service(),
            prop::collection::btree_set(arb_name(), 1..4),
            any::<Option<u64>>()
        )
            .prop_map(|(service, methods, req)| ClientFrame::Provide(Provide {
                service,
                methods: methods
                    .iter()
                    .map(|m| MethodName::new(m).unwrap())
                    .collect(),
                req,
            })),
        (
            arb_service(),
            method,
            arb_payload(),
            any::<u64>(),
            any::<Option<u64>>()
        )
            .prop_map(|(service, method, payload, req, timeout_ms)| {
                ClientFrame::Call(Call {
                    service,
                    method,
                    payload,
                    req,
                    timeout_ms,
                })
            }),
        (any::<u64>(), arb_payload()).prop_map(|(call, p)| ClientFrame::Respond(Respond {
            call,
            outcome: Ok(p)
        })),
        (any::<u64>(), ".{0,20}").prop_map(|(call, e)| ClientFrame::Respond(Respond {
            call,
            outcome: Err(e)
        })),
        (arb_topic(), any::<Option<u64>>())
            .prop_map(|(topic, req)| ClientFrame::CreateTopic { topic, req }),
        (arb_topic(), any::<Option<u64>>())
            .prop_map(|(topic, req)| ClientFrame::DestroyTopic { topic, req }),
        (arb_topic(), arb_payload(), any::<Option<u64>>()).prop_map(|(topic, payload, req)| {
            ClientFrame::Publish(Publish {
                topic,
                payload,
                req,
            })
        }),
        (arb_service(), arb_topic(), any::<Option<u64>>()).prop_map(|(service, topic, req)| {
            ClientFrame::Subscribe {
                service,
                topic,
                req,
            }
        }),
        (arb_service(), arb_topic(), any::<Option<u64>>()).prop_map(|(service, topic, req)| {
            ClientFrame::Unsubscribe {
                service,
                topic,
                req,
            }
        }),
    ]
}

fn arb_meta() -> impl Strategy<Value = Option<serde_json::Value>> {
    proptest::option::of(arb_json().prop_filter("null is absent", |v| !v.is_null()))
}

fn arb_stream_client_frame() -> impl Strategy<Value = ClientFrame> {
    let id = arb_name().prop_map(|s| ClientId::new(&s).unwrap());
    prop_oneof![
        (id, arb_meta(), any::<u64>(), any::<u64>()).prop_map(|(to, meta, window, req)| {
            ClientFrame::StreamOpen(StreamOpen {
                to,
                meta,
                window,
                req,
            })
        }),
        (any::<u64>(), any::<u64>())
            .prop_map(|(stream, window)| ClientFrame::StreamAccept { stream, window }),
        (any::<u64>(), ".{0,20}")
            .prop_map(|(stream, reason)| ClientFrame::StreamReject { stream, reason }),
        (any::<u64>(), 1u64..)
            .prop_map(|(stream, bytes)| ClientFrame::StreamCredit { stream, bytes }),
        any::<u64>().prop_map(|stream| ClientFrame::StreamEnd { stream }),
        (any::<u64>(), ".{0,20}")
            .prop_map(|(stream, reason)| ClientFrame::StreamReset { stream, reason }),
    ]
}

proptest! {
    #[test]
    fn client_frames_roundtrip(frame in arb_client_frame()) {
        for enc in ENCS {
            let bytes = encode_client(enc, &frame);
            prop_assert_eq!(decode_client(enc, &bytes).unwrap(), frame.clone());
        }
    }

    #[test]
    fn server_frames_roundtrip_with_any_seq(
        seq in any::<u64>(),
        from in arb_name(),
        payload in arb_payload(),
        ack_id in any::<Option<u64>>(),
        n_members in 0usize..40,
    ) {
        let frames = [
            ServerFrame::Message(Message {
                from: ClientId::new(&from).unwrap(),
                event: EventName::new("e").unwrap(),
                payload: payload.clone(),
                room: Some(RoomName::new("r").unwrap()),
                ack_id,
            }),
            ServerFrame::Members {
                req: ack_id,
                room: RoomName::new("r").unwrap(),
                members: (0..n_members).map(|i| ClientId::new(&format!("c{i}")).unwrap()).collect(),
            },
            ServerFrame::Error(ErrorFrame::new(ErrorCode::UnknownTarget, "no", ack_id)),
            ServerFrame::StreamRequest(StreamRequest {
                stream: seq ^ 1,
                from: ClientId::new(&from).unwrap(),
                meta: payload.as_json().filter(|v| !v.is_null()).cloned(),
                window: ack_id.unwrap_or(0),
            }),
            ServerFrame::StreamAccepted { req: seq, stream: n_members as u64, window: 7 },
            ServerFrame::StreamCredit { stream: seq, bytes: 1 + n_members as u64 },
            ServerFrame::StreamEnd { stream: seq },
            ServerFrame::StreamReset { stream: seq, code: ErrorCode::PeerReset, reason: from.clone() },
            ServerFrame::Invoke(Invoke {
                call: seq,
                from: ClientId::new(&from).unwrap(),
                service: ServiceName::new(&from).unwrap(),
                method: MethodName::new("m").unwrap(),
                payload: payload.clone(),
            }),
            ServerFrame::CallResult { req: seq, payload: payload.clone() },
            ServerFrame::Publication(Publication {
                service: ServiceName::new(&from).unwrap(),
                topic: TopicName::new("t · 1").unwrap(),
                payload: payload.clone(),
            }),
            ServerFrame::TopicEnded {
                service: ServiceName::new(&from).unwrap(),
                topic: TopicName::new("t").unwrap(),
                reason: if n_members % 2 == 0 { TopicEnd::Destroyed } else { TopicEnd::ServiceGone },
            },
            ServerFrame::MemberAway { room: RoomName::new("r").unwrap(), id: ClientId::new(&from).unwrap() },
            ServerFrame::MemberBack { room: RoomName::new("r").unwrap(), id: ClientId::new(&from).unwrap() },
            ServerFrame::PeerAway { id: ClientId::new(&from).unwrap() },
            ServerFrame::PeerBack { id: ClientId::new(&from).unwrap() },
            ServerFrame::Received { seq: seq ^ 7 },
            ServerFrame::ResumeRejected {
                reason: [ResumeRefusal::Expired, ResumeRefusal::Overflow, ResumeRefusal::BadSecret,
                    ResumeRefusal::Encoding][n_members % 4],
                message: from.clone(),
            },
            ServerFrame::SessionEvent {
                session: SessionName::new("g").unwrap(),
                rev: seq,
                by: ClientId::new(&from).unwrap(),
                change: match n_members % 5 {
                    0 => SessionChange::MemberJoined { member: ClientId::new(&from).unwrap(), order: 3, rtt_ms: ack_id },
                    1 => SessionChange::Authority { member: ack_id.map(|_| ClientId::new(&from).unwrap()), epoch: 4 },
                    2 => SessionChange::Created { object: ObjectName::new("o").unwrap(), payload: payload.clone(), owner: None, on_owner_leave: OwnerLeave::Delete },
                    3 => SessionChange::Updated { object: ObjectName::new("o").unwrap(), payload: payload.clone() },
                    _ => SessionChange::Transferred { object: ObjectName::new("o").unwrap(), owner: Some(ClientId::new(&from).unwrap()) },
                },
            },
            ServerFrame::SessionState(SessionState {
                session: SessionName::new("g").unwrap(),
                req: ack_id,
                rev: seq,
                mode: SessionMode::Authoritative,
                authority: Some(ClientId::new(&from).unwrap()),
                epoch: 2,
                members: (0..n_members).map(|i| SessionMember { id: ClientId::new(&format!("c{i}")).unwrap(), order: i as u64 + 1, rtt_ms: Some(i as u64), away: i % 3 == 0 }).collect(),
                objects: vec![SessionObject { id: ObjectName::new("o").unwrap(), payload: payload.clone(), owner: None, on_owner_leave: OwnerLeave::Authority, version: 9 }],
                more: n_members % 2 == 0,
            }),
            ServerFrame::Welcome(Welcome {
                id: ClientId::new(&from).unwrap(),
                secret: from.clone(),
                version: "1.0.0".into(),
                heartbeat_ms: 5,
                rooms: vec![RoomName::new("r").unwrap()],
                limits: Limits {
                    max_frame_bytes: 1, max_rooms_per_client: 2, rate_per_sec: 3, rate_burst: 4,
                    max_pending_acks: 5, max_ack_timeout_ms: 6, max_streams: 7,
                    max_stream_window: 8, stream_open_timeout_ms: 9, max_calls: 10,
                    max_call_timeout_ms: 11, max_subscriptions: 12,
                },
                resumed: n_members % 2 == 1,
                received: if n_members % 2 == 1 { seq } else { 0 },
                resume_grace_ms: ack_id.unwrap_or(0),
            }),
        ];
        for frame in frames {
            for enc in ENCS {
                let bytes = encode_server(enc, seq, &frame);
                prop_assert_eq!(decode_server(enc, &bytes).unwrap(), (seq, frame.clone()));
            }
        }
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        for enc in ENCS {
            let _ = decode_client(enc, &bytes);
            let _ = decode_server(enc, &bytes);
        }
        let _ = crate::stream::DataFrame::decode(bytes::Bytes::from(bytes));
    }

    #[test]
    fn decoding_mutated_frames_never_panics(frame in arb_client_frame(), pos in any::<usize>(), byte in any::<u8>()) {
        for enc in ENCS {
            let mut bytes = encode_client(enc, &frame).to_vec();
            let i = pos % bytes.len();
            bytes[i] = byte;
            let _ = decode_client(enc, &bytes);
            bytes.truncate(i);
            let _ = decode_client(enc, &bytes);
        }
    }
}
