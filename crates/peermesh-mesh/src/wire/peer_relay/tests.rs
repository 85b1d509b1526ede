//! Known-answer tests against frames written by peer-relay 0.0.2 itself (captured with Node
//! 20 and the npm package), and properties of the decoder on arbitrary input.

use proptest::prelude::*;

use super::*;

const ME: &str = "00112233445566778899aabbccddeeff01234567";
const YOU: &str = "ffeeddccbbaa99887766554433221100fedcba98";

/// `JSON.stringify(Buffer.from(ME, 'hex'))`.
const JS_GREETING: &str = r#"{"type":"Buffer","data":[0,17,34,51,68,85,102,119,136,153,170,187,204,221,238,255,1,35,69,103]}"#;
/// An envelope as peer-relay's `Router.send` writes it at the origin.
const JS_ORIGIN: &str = r#"{"to":"ffeeddccbbaa99887766554433221100fedcba98","from":"00112233445566778899aabbccddeeff01234567","path":["00112233445566778899aabbccddeeff01234567"],"nonce":"123456789012345","data":{"type":"user","data":{"hello":"wörld","n":[1,2.5]}}}"#;
/// The same envelope as peer-relay relays it: `to` and `from` became Buffers.
const JS_RELAYED: &str = r#"{"to":{"type":"Buffer","data":[255,238,221,204,187,170,153,136,119,102,85,68,51,34,17,0,254,220,186,152]},"from":{"type":"Buffer","data":[0,17,34,51,68,85,102,119,136,153,170,187,204,221,238,255,1,35,69,103]},"path":["00112233445566778899aabbccddeeff01234567","ffeeddccbbaa99887766554433221100fedcba98"],"nonce":"123456789012345","data":{"type":"user","data":{"hello":"wörld","n":[1,2.5]}}}"#;

fn id(s: &str) -> NodeId {
    NodeId::from_hex(s).unwrap()
}

#[test]
fn greeting_matches_node_buffer_json() {
    assert_eq!(&encode_greeting(&id(ME))[..], JS_GREETING.as_bytes());
    assert_eq!(decode_greeting(JS_GREETING.as_bytes()).unwrap(), id(ME));
    assert_eq!(
        decode_greeting(format!("\"{ME}\"").as_bytes()).unwrap(),
        id(ME)
    );
    for bad in [
        r#"{"type":"Buffer","data":[1,2,3]}"#,
        r#"{"type":"Buffer","data":[0,17,34,51,68,85,102,119,136,153,170,187,204,221,238,255,1,35,69,300]}"#,
        r#"{"type":"Array","data":[0,17,34,51,68,85,102,119,136,153,170,187,204,221,238,255,1,35,69,103]}"#,
        r#""abc""#,
        "42",
        "not json",
    ] {
        let e = decode_greeting(bad.as_bytes()).unwrap_err();
        assert!(matches!(e.code(), "bad_id" | "malformed"), "{bad}: {e}");
    }
}

#[test]
fn decodes_origin_and_relayed_envelopes() {
    for frame in [JS_ORIGIN, JS_RELAYED] {
        let env = decode_envelope(frame.as_bytes(), DEFAULT_MAX_FRAME).unwrap();
        assert_eq!(env.to, id(YOU));
        assert_eq!(env.from, id(ME));
        assert_eq!(env.nonce, "123456789012345");
        assert_eq!(env.path[0], id(ME));
        let Message::User(data) = Message::decode(&env.data).unwrap() else {
            panic!("not a user message")
        };
        let v: serde_json::Value = serde_json::from_str(data.get()).unwrap();
        assert_eq!(v, serde_json::json!({"hello": "wörld", "n": [1, 2.5]}));
    }
}

#[test]
fn encoding_the_origin_envelope_gives_peer_relays_bytes() {
    let env = decode_envelope(JS_ORIGIN.as_bytes(), DEFAULT_MAX_FRAME).unwrap();
    let out = encode_envelope(&env.to, &env.from, &env.path, &env.nonce, &env.data);
    assert_eq!(std::str::from_utf8(&out).unwrap(), JS_ORIGIN);
}

#[test]
fn handshake_messages_match_the_js_shapes() {
    let answer = Message::HandshakeAnswer {
        ws: Some("ws://localhost:1234".into()),
        wrtc: false,
        dialing: false,
    };
    assert_eq!(
        answer.encode().get(),
        r#"{"type":"handshake-answer","data":{"ws":"ws://localhost:1234","wrtc":false}}"#
    );
    let none = Message::HandshakeAnswer {
        ws: None,
        wrtc: false,
        dialing: false,
    };
    assert_eq!(
        none.encode().get(),
        r#"{"type":"handshake-answer","data":{"ws":null,"wrtc":false}}"#
    );
    let offer = Message::HandshakeOffer { ws: None };
    assert_eq!(offer.encode().get(), r#"{"type":"handshake-offer"}"#);
    for m in [
        answer,
        none,
        offer,
        Message::HandshakeOffer {
            ws: Some("ws://h:1".into()),
        },
    ] {
        assert_eq!(Message::decode(&m.encode()).unwrap(), m);
    }
    // peer-relay's `send(id, undefined)` has no `data`: it arrives as null.
    let raw = RawJson::from_string(r#"{"type":"user"}"#.into()).unwrap();
    assert_eq!(Message::decode(&raw).unwrap(), Message::User(null_raw()));
}

#[test]
fn peer_lists_round_trip_and_skip_junk() {
    let m = Message::FoundPeers(vec![id(ME), id(YOU)]);
    assert_eq!(Message::decode(&m.encode()).unwrap(), m);
    let raw = RawJson::from_string(format!(
        r#"{{"type":"foundPeers","data":["{ME}","nope",7,"{YOU}"]}}"#
    ))
    .unwrap();
    assert_eq!(Message::decode(&raw).unwrap(), m);
    let f = Message::FindPeers(id(YOU));
    assert_eq!(Message::decode(&f.encode()).unwrap(), f);
}

#[test]
fn bad_envelopes_have_stable_codes() {
    let cases: &[(&str, &str)] = &[
        ("not json", "malformed"),
        (
            r#"{"to":"zz","from":"00","path":[],"nonce":"1","data":{}}"#,
            "bad_id",
        ),
        (
            &format!(r#"{{"to":"{YOU}","from":"{ME}","path":["x"],"nonce":"1","data":{{}}}}"#),
            "bad_id",
        ),
        (
            &format!(r#"{{"to":"{YOU}","from":"{ME}","path":[],"nonce":"","data":{{}}}}"#),
            "malformed",
        ),
        (
            &format!(r#"{{"to":"{YOU}","from":"{ME}","path":[],"nonce":"1"}}"#),
            "malformed",
        ),
    ];
    for (frame, code) in cases {
        let e = decode_envelope(frame.as_bytes(), DEFAULT_MAX_FRAME).unwrap_err();
        assert_eq!(e.code(), *code, "{frame}: {e}");
    }
    let e = decode_envelope(JS_ORIGIN.as_bytes(), 100).unwrap_err();
    assert_eq!(e.code(), "too_large");
    let raw = RawJson::from_string(r#"{"type":"teleport"}"#.into()).unwrap();
    assert_eq!(Message::decode(&raw).unwrap_err().code(), "unknown_type");
    let raw = RawJson::from_string(
        r#"{"type":"handshake-answer","data":{"ws":"http://x","wrtc":false}}"#.into(),
    )
    .unwrap();
    assert_eq!(Message::decode(&raw).unwrap_err().code(), "malformed");
}

proptest! {
    #[test]
    fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        crate::testing::check_peer_relay_frame(&bytes);
    }

    #[test]
    fn envelopes_round_trip(
        to: [u8; 20], from: [u8; 20], path in proptest::collection::vec(any::<[u8; 20]>(), 0..20),
        nonce in "[0-9a-zA-Z\"\\\\]{1,20}", text in ".{0,40}",
    ) {
        let path: Vec<NodeId> = path.into_iter().map(NodeId).collect();
        let data = Message::User(RawJson::from_value(&serde_json::json!({"t": text}))).encode();
        let frame = encode_envelope(&NodeId(to), &NodeId(from), &path, &nonce, &data);
        let env = decode_envelope(&frame, DEFAULT_MAX_FRAME).unwrap();
        prop_assert_eq!(env.to, NodeId(to));
        prop_assert_eq!(env.from, NodeId(from));
        prop_assert_eq!(env.path, path);
        prop_assert_eq!(env.nonce, nonce);
        prop_assert_eq!(env.data.get(), data.get());
    }
}

#[test]
fn datagrams_match_peer_relay_sockets() {
    // What `PeerRelay.Socket#send(Buffer.from([1,2,255]), 0, 3, 9, id)` puts in `data`.
    let js = format!(
        r#"{{"buffer":{{"type":"Buffer","data":[1,2,255]}},"address":"{ME}","port":4242}}"#
    );
    let d = Datagram::decode(&RawJson::from_string(js.clone()).unwrap()).unwrap();
    assert_eq!(
        d,
        Datagram {
            buffer: vec![1, 2, 255],
            address: ME.into(),
            port: 4242
        }
    );
    assert_eq!(d.encode().get(), js);
    for not in [
        r#"{"buffer":[1]}"#,
        r#"{"buffer":{"type":"X","data":[1]}}"#,
        "3",
        r#"{"buffer":{"type":"Buffer","data":[300]}}"#,
    ] {
        assert_eq!(
            Datagram::decode(&RawJson::from_string(not.into()).unwrap()),
            None,
            "{not}"
        );
    }
}
