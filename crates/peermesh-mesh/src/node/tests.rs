//! Tests of the node core: small simulated networks, and bad input fed to one node.

use std::time::{Duration, Instant};

use super::*;
use crate::sim::{Sim, SimConfig};

fn small(nodes: usize, rule: ConnectionRule, seed: u64) -> SimConfig {
    SimConfig {
        nodes,
        messages: 400,
        seed,
        node: NodeConfig {
            rule,
            ..NodeConfig::default()
        },
        settle: Duration::from_secs(65),
        join_probes: 2,
        probe_senders: 20,
        ..SimConfig::default()
    }
}

fn run(cfg: SimConfig) -> crate::sim::SimReport {
    Sim::new(cfg).unwrap().run(&mut |_, _, _| {})
}

#[test]
fn a_small_mesh_delivers_everything() {
    let r = run(small(60, ConnectionRule::Buckets, 7));
    assert!(r.counted >= 380, "{r:?}");
    assert_eq!(r.delivered, r.counted, "{r:?}");
    assert!(r.mean_hops >= 1.0 && r.mean_hops <= 4.0, "{r:?}");
    assert_eq!(r.join_senders, 2 * 20, "{r:?}");
    assert_eq!(r.join_heard, r.join_senders, "{r:?}");
    // The issue's bound (2 + 2 x mean hops round trips) is met at 1,000 nodes (docs/mesh.md);
    // at 60 nodes a path is 1.5 hops on average and the bound is tighter than a handshake
    // plus a lookup, so here the check is that a joining node is heard within 25% of it.
    assert!(
        r.join_round_trips_max <= r.join_round_trips_bound * 1.25,
        "{r:?}"
    );
    assert_eq!(r.bucket_coverage, 1.0, "{r:?}");
    assert!(r.mean_links <= 40.0, "{r:?}");
}

#[test]
fn churn_is_repaired() {
    let mut cfg = small(80, ConnectionRule::Buckets, 3);
    cfg.churn = 0.2;
    // 16 nodes replaced over 10 s of sending, with two nodes joining meanwhile.
    cfg.messages = 2000;
    let r = run(cfg);
    assert!(r.delivery >= 0.98, "{r:?}");
    assert_eq!(r.join_heard, r.join_senders, "{r:?}");
}

#[test]
fn runs_are_reproducible() {
    let a = run(small(30, ConnectionRule::Closest, 11));
    let b = run(small(30, ConnectionRule::Closest, 11));
    assert_eq!((a.delivered, a.events), (b.delivered, b.events));
}

fn node(seed: u64) -> Node {
    Node::new(
        NodeConfig::default(),
        Some("ws://127.0.0.1:1".into()),
        Instant::now(),
        seed,
    )
    .unwrap()
}

fn outputs(n: &mut Node) -> Vec<Output> {
    std::iter::from_fn(|| n.poll_output()).collect()
}

fn events(n: &mut Node) -> Vec<NodeEvent> {
    std::iter::from_fn(|| n.poll_event()).collect()
}

/// Brings up a link from `peer` into `n` and returns its number.
fn link_from(n: &mut Node, peer: NodeId, now: Instant) -> LinkId {
    let link = n.handle_inbound(now);
    n.handle_frame(link, &crate::wire::peer_relay::encode_greeting(&peer), now);
    link
}

#[test]
fn bad_greetings_close_the_link_and_nothing_else() {
    let now = Instant::now();
    let mut n = node(1);
    let good = link_from(&mut n, NodeId([1; 20]), now);
    for bad in [
        &b"garbage"[..],
        b"{\"type\":\"Buffer\",\"data\":[1]}",
        b"\"00\"",
    ] {
        let l = n.handle_inbound(now);
        n.handle_frame(l, bad, now);
        assert!(outputs(&mut n)
            .iter()
            .any(|o| matches!(o, Output::Close { link, .. } if *link == l)));
    }
    // Its own id: refused.
    let me = n.id();
    let l = n.handle_inbound(now);
    n.handle_frame(l, &crate::wire::peer_relay::encode_greeting(&me), now);
    assert!(outputs(&mut n)
        .iter()
        .any(|o| matches!(o, Output::Close { link, .. } if *link == l)));
    assert_eq!(n.peers(), vec![NodeId([1; 20])]);
    let _ = good;
}

#[test]
fn bad_frames_are_counted_and_the_link_carries_on() {
    let now = Instant::now();
    let mut n = node(2);
    let peer = NodeId([9; 20]);
    let link = link_from(&mut n, peer, now);
    outputs(&mut n);
    let me = n.id();
    let frames: Vec<Vec<u8>> = vec![
        b"not json".to_vec(),
        b"{}".to_vec(),
        format!(r#"{{"to":"{me}","from":"zz","path":[],"nonce":"1","data":{{"type":"user"}}}}"#)
            .into_bytes(),
        format!(
            r#"{{"to":"{me}","from":"{peer}","path":[],"nonce":"2","data":{{"type":"nope"}}}}"#
        )
        .into_bytes(),
        vec![b'x'; 2 << 20],
    ];
    for f in &frames {
        n.handle_frame(link, f, now);
    }
    assert_eq!(n.stats().malformed, frames.len() as u64);
    let ok = format!(
        r#"{{"to":"{me}","from":"{peer}","path":["{peer}"],"nonce":"3","data":{{"type":"user","data":[1,"a"]}}}}"#
    );
    n.handle_frame(link, ok.as_bytes(), now);
    n.handle_frame(link, ok.as_bytes(), now);
    let got: Vec<NodeEvent> = events(&mut n)
        .into_iter()
        .filter(|e| matches!(e, NodeEvent::Message { .. }))
        .collect();
    assert_eq!(got.len(), 1, "the duplicate was dropped");
    let NodeEvent::Message { from, data, path } = &got[0] else {
        unreachable!()
    };
    assert_eq!(
        (*from, data.get(), path.clone()),
        (peer, r#"[1,"a"]"#, vec![peer])
    );
    assert_eq!(n.stats().duplicates, 1);
    assert_eq!(n.peers(), vec![peer]);
}

fn relayed_links(n: &mut Node) -> Vec<LinkId> {
    outputs(n)
        .into_iter()
        .filter_map(|o| match o {
            Output::Transmit { link, .. } => Some(link),
            _ => None,
        })
        .collect()
}

#[test]
fn relays_toward_the_target_and_drops_at_the_hop_limit() {
    let now = Instant::now();
    let target = NodeId([0x31; 20]);
    for (relay_fanout, me, want) in [
        // Relays send one copy on, to the closest peer: 0x30.. (peers[2]).
        (1, NodeId([0xf0; 20]), vec![2]),
        // peer-relay's fan-out of 2: 0x30.. then 0x20.. (peers[1]).
        (2, NodeId([0xf0; 20]), vec![2, 1]),
        // Only peers closer to the target than the relay itself: 0x30.. is, 0x20.. is not.
        (2, NodeId([0x21; 20]), vec![2]),
    ] {
        let cfg = NodeConfig {
            relay_fanout,
            ..NodeConfig::default()
        };
        let mut n = Node::with_id(me, cfg, None, now, 3).unwrap();
        let peers: Vec<NodeId> = (1..=5u8).map(|i| NodeId([i * 16; 20])).collect();
        let links: Vec<LinkId> = peers.iter().map(|p| link_from(&mut n, *p, now)).collect();
        outputs(&mut n);
        let from = peers[4];
        let env = format!(
            r#"{{"to":"{target}","from":"{from}","path":["{from}"],"nonce":"77","data":{{"type":"user","data":1}}}}"#
        );
        n.handle_frame(links[4], env.as_bytes(), now);
        let mut sent = relayed_links(&mut n);
        sent.sort_unstable();
        let mut expected: Vec<LinkId> = want.iter().map(|&i| links[i]).collect();
        expected.sort_unstable();
        assert_eq!(sent, expected, "relay_fanout {relay_fanout}, me {me}");
    }
    let mut n = node(3);
    let link = link_from(&mut n, NodeId([0x30; 20]), now);
    outputs(&mut n);
    let long: Vec<String> = (0..20)
        .map(|i| format!("\"{}\"", NodeId([200 + i as u8; 20])))
        .collect();
    let env = format!(
        r#"{{"to":"{target}","from":"{}","path":[{}],"nonce":"78","data":{{"type":"user","data":1}}}}"#,
        NodeId([200; 20]),
        long.join(",")
    );
    n.handle_frame(link, env.as_bytes(), now);
    assert_eq!(n.stats().hop_limit, 1);
    let relayed = outputs(&mut n).into_iter().any(|o| {
        matches!(o, Output::Transmit { frame, .. }
            if frame.windows(12).any(|w| w == br#""nonce":"78""#))
    });
    assert!(!relayed, "the message at the hop limit was sent on");
}

#[test]
fn messages_wait_for_the_first_link_within_the_queue_bound() {
    let now = Instant::now();
    let cfg = NodeConfig {
        queue_capacity: 3,
        ..NodeConfig::default()
    };
    let mut n = Node::new(cfg, None, now, 4).unwrap();
    for i in 0..5 {
        n.send(
            NodeId([7; 20]),
            RawJson::from_value(&serde_json::json!(i)),
            now,
        );
    }
    assert_eq!(n.memory_sizes().2, 3);
    assert_eq!(n.stats().queue_dropped, 2);
    let link = link_from(&mut n, NodeId([7; 20]), now);
    let frames: Vec<Bytes> = outputs(&mut n)
        .into_iter()
        .filter_map(|o| match o {
            Output::Transmit { link: l, frame } if l == link => Some(frame),
            _ => None,
        })
        .collect();
    // The greeting, findPeers, and the three queued messages (2, 3, 4).
    let users: Vec<&Bytes> = frames
        .iter()
        .filter(|f| f.windows(13).any(|w| w == b"\"type\":\"user\""))
        .collect();
    assert_eq!(users.len(), 3);
    assert_eq!(n.memory_sizes().2, 0);
}

#[test]
fn handshakes_are_retried_then_given_up() {
    let t0 = Instant::now();
    let mut n = node(5);
    let relay = NodeId([1; 20]);
    let _link = link_from(&mut n, relay, t0);
    outputs(&mut n);
    let target = NodeId([0xee; 20]);
    n.connect(target, t0);
    let mut now = t0;
    // Offers at 0, 2 and 4 s; the manager gives up at its connect timeout (11 s).
    for _ in 0..30 {
        now += Duration::from_millis(500);
        n.handle_timeout(now);
    }
    assert_eq!(
        n.stats().offers,
        3,
        "three offers, then the manager gives up"
    );
    assert!(n.handshakes.is_empty());
    assert!(n.manager.is_backed_off(&target, now));
}

#[test]
fn a_second_link_to_a_peer_is_a_spare_not_a_loss() {
    let now = Instant::now();
    let mut n = node(8);
    let peer = NodeId([0x42; 20]);
    let first = link_from(&mut n, peer, now);
    let second = link_from(&mut n, peer, now);
    let closes = outputs(&mut n)
        .into_iter()
        .filter(|o| matches!(o, Output::Close { .. }))
        .count();
    assert_eq!(
        closes, 0,
        "neither link is closed (peer-relay would drop the peer)"
    );
    assert_eq!(n.stats().duplicate_links, 1);
    let me = n.id();
    // Frames are accepted on both links.
    for (link, nonce) in [(first, 1), (second, 2)] {
        let env = format!(
            r#"{{"to":"{me}","from":"{peer}","path":["{peer}"],"nonce":"{nonce}","data":{{"type":"user","data":{nonce}}}}}"#
        );
        n.handle_frame(link, env.as_bytes(), now);
    }
    assert_eq!(n.stats().delivered, 2);
    // The first link goes: the spare takes over, the peer is not gone.
    n.handle_link_closed(first, now);
    assert!(!events(&mut n).contains(&NodeEvent::PeerGone(peer)));
    assert_eq!(n.peers(), vec![peer]);
    n.send(peer, RawJson::from_value(&serde_json::json!(1)), now);
    assert!(outputs(&mut n)
        .iter()
        .any(|o| matches!(o, Output::Transmit { link, .. } if *link == second)));
    n.handle_link_closed(second, now);
    assert!(events(&mut n).contains(&NodeEvent::PeerGone(peer)));
    assert!(n.peers().is_empty());
}

/// A routed frame from `from` to `to` carrying `data`, as a relay would hand it on.
fn routed(to: NodeId, from: NodeId, nonce: &str, data: &str) -> Vec<u8> {
    format!(r#"{{"to":"{to}","from":"{from}","path":["{from}"],"nonce":"{nonce}","data":{data}}}"#)
        .into_bytes()
}

#[test]
fn a_peermesh_offer_is_dialled_at_once_and_the_offerer_waits_for_that_link() {
    let t0 = Instant::now();
    // The answerer: an offer with a URL comes only from a peermesh node; it dials that URL
    // right away and says so in its answer.
    let mut b = node(21);
    let relay = NodeId([1; 20]);
    let link = link_from(&mut b, relay, t0);
    outputs(&mut b);
    let offerer = NodeId([0x42; 20]);
    let offer = r#"{"type":"handshake-offer","data":{"ws":"ws://127.0.0.1:7001"}}"#;
    b.handle_frame(link, &routed(b.id(), offerer, "o1", offer), t0);
    let out = outputs(&mut b);
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Dial { url, .. } if url == "ws://127.0.0.1:7001")),
        "{out:?}"
    );
    let answer = out.iter().find_map(|o| match o {
        Output::Transmit { frame, .. } if frame.windows(16).any(|w| w == b"handshake-answer") => {
            Some(String::from_utf8_lossy(frame).into_owned())
        }
        _ => None,
    });
    let answer = answer.expect("an answer is sent back");
    assert!(answer.contains(r#""dialing":true"#), "{answer}");

    // An offer without a URL (peer-relay's): answered with our URL, no dial, no extension.
    let pr = NodeId([0x43; 20]);
    b.handle_frame(
        link,
        &routed(b.id(), pr, "o2", r#"{"type":"handshake-offer"}"#),
        t0,
    );
    let out = outputs(&mut b);
    assert!(
        !out.iter().any(|o| matches!(o, Output::Dial { .. })),
        "{out:?}"
    );
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::Transmit { frame, .. }
        if frame.windows(16).any(|w| w == b"handshake-answer")
            && !frame.windows(9).any(|w| w == b"\"dialing\""))));

    // The offerer: an answer that says "dialing" does not make it dial; when the link has not
    // come by the time the offer is due again, it dials the answer's URL instead.
    let mut a = node(22);
    let alink = link_from(&mut a, relay, t0);
    outputs(&mut a);
    let target = NodeId([0x77; 20]);
    a.connect(target, t0);
    outputs(&mut a);
    let ans = r#"{"type":"handshake-answer","data":{"ws":"ws://127.0.0.1:7002","wrtc":false,"dialing":true}}"#;
    a.handle_frame(alink, &routed(a.id(), target, "a1", ans), t0);
    assert!(!outputs(&mut a)
        .iter()
        .any(|o| matches!(o, Output::Dial { .. })));
    let offers = a.stats().offers;
    a.handle_timeout(t0 + Duration::from_secs(3));
    let out = outputs(&mut a);
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Dial { url, .. } if url == "ws://127.0.0.1:7002")),
        "{out:?}"
    );
    assert_eq!(
        a.stats().offers,
        offers,
        "dialled instead of offering again"
    );
}

#[test]
fn a_node_past_its_dial_limit_still_links_its_nearest_neighbour() {
    let t0 = Instant::now();
    let mut n = node(31);
    let me = n.id();
    // 34 links (the dial limit is 32), all in the farthest bucket.
    let mut link = None;
    for k in 0..34u8 {
        let mut id = me.0;
        id[0] ^= 0x80;
        id[19] = k;
        id[18] = 0xa5;
        link = Some(link_from(&mut n, NodeId(id), t0));
    }
    assert_eq!(n.peer_count(), 34);
    outputs(&mut n);
    let offers = n.stats().offers;
    // A peer names a node that differs from us in the last bit only: our nearest neighbour.
    let mut near = me.0;
    near[19] ^= 1;
    let near = NodeId(near);
    let mut from = me.0;
    from[0] ^= 0x80;
    from[19] = 0;
    from[18] = 0xa5;
    let found = format!(r#"{{"type":"foundPeers","data":["{near}"]}}"#);
    n.handle_frame(
        link.expect("linked"),
        &routed(me, NodeId(from), "f1", &found),
        t0,
    );
    n.handle_timeout(t0 + Duration::from_secs(2));
    assert!(
        n.stats().offers > offers,
        "the nearest neighbour is offered a link past the dial limit"
    );
}

#[test]
fn an_isolated_node_waiting_for_a_dial_never_reports_a_past_timer() {
    // A node whose only way in is a bootstrap URL that never answers: it dials, waits for the
    // greeting, retries with back-off. Its timer must always lie in the future once handled:
    // a rejoin time left in the past while a dial was open made poll_timeout report it again
    // and again (a busy loop in the shell; `peermesh sim --rule closest` stuck at one instant).
    let cfg = NodeConfig {
        repair_delay: Duration::from_millis(200),
        greeting_timeout: Duration::from_secs(3),
        ..NodeConfig::default()
    };
    let start = Instant::now();
    let mut n = Node::new(cfg, None, start, 9).unwrap();
    n.bootstrap("ws://127.0.0.1:1", start);
    let mut now = start;
    let mut wakeups = 0;
    while now < start + Duration::from_secs(60) {
        let next = n.poll_timeout().expect("a timer");
        now = next.max(now);
        n.handle_timeout(now);
        // Dials are never answered, and never fail: the link stays open until its timeout.
        outputs(&mut n);
        wakeups += 1;
        assert!(
            n.poll_timeout().is_some_and(|t| t > now),
            "after {wakeups} wake-ups at {:?}, the next timer is not in the future",
            now - start
        );
        assert!(wakeups < 10_000, "too many wake-ups: {wakeups}");
    }
}

fn transmitted(n: &mut Node) -> Vec<(LinkId, String)> {
    outputs(n)
        .into_iter()
        .filter_map(|o| match o {
            Output::Transmit { link, frame } => {
                Some((link, String::from_utf8_lossy(&frame).into_owned()))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn a_lookup_of_its_own_id_goes_toward_it_and_the_node_where_it_ends_answers() {
    let now = Instant::now();
    let newcomer = NodeId([0x11; 20]);
    // The newcomer's first link: besides peer-relay's lookup sent to that peer, a lookup
    // addressed to its own id.
    let mut n = Node::with_id(newcomer, NodeConfig::default(), None, now, 1).unwrap();
    link_from(&mut n, NodeId([0xf0; 20]), now);
    let own = format!(r#""to":"{newcomer}","from":"{newcomer}""#);
    assert!(
        transmitted(&mut n)
            .iter()
            .any(|(_, f)| f.contains(&own) && f.contains("findPeers")),
        "no lookup of its own id"
    );
    // A relay linked to the newcomer carries it on toward the newcomer's id, not back to it.
    let mut relay = Node::with_id(NodeId([0xf0; 20]), NodeConfig::default(), None, now, 2).unwrap();
    let to_newcomer = link_from(&mut relay, newcomer, now);
    let closer = link_from(&mut relay, NodeId([0x13; 20]), now);
    outputs(&mut relay);
    let lookup = format!(r#"{{"type":"findPeers","data":"{newcomer}"}}"#);
    relay.handle_frame(to_newcomer, &routed(newcomer, newcomer, "s1", &lookup), now);
    assert_eq!(relayed_links(&mut relay), vec![closer]);
    // The node where greedy routing toward the newcomer ends answers with the nodes it knows
    // closest to it, the way the lookup came.
    let mut end = Node::with_id(NodeId([0x13; 20]), NodeConfig::default(), None, now, 3).unwrap();
    let back = link_from(&mut end, NodeId([0xf0; 20]), now);
    let other = NodeId([0x80; 20]);
    link_from(&mut end, other, now);
    outputs(&mut end);
    let frame = format!(
        r#"{{"to":"{newcomer}","from":"{newcomer}","path":["{newcomer}","{}"],"nonce":"s1","data":{lookup}}}"#,
        NodeId([0xf0; 20])
    );
    end.handle_frame(back, frame.as_bytes(), now);
    let sent = transmitted(&mut end);
    assert!(
        sent.iter().all(|(_, f)| !f.contains(r#""nonce":"s1""#)),
        "the lookup went on: {sent:?}"
    );
    let answer = sent
        .iter()
        .find(|(_, f)| f.contains(r#""type":"foundPeers""#))
        .expect("no answer");
    assert_eq!(answer.0, back);
    assert!(answer.1.contains(&other.to_string()), "{answer:?}");
    assert!(
        answer.1.contains(&format!(r#""to":"{newcomer}""#)),
        "{answer:?}"
    );
    // It has an empty bucket where the newcomer is: it offers it a link as well.
    assert!(
        sent.iter()
            .any(|(l, f)| *l == back && f.contains(r#""type":"handshake-offer""#)),
        "{sent:?}"
    );
}

#[test]
fn relays_take_requests_greedily_and_the_way_back_after_a_dead_end() {
    let now = Instant::now();
    let target = NodeId([0x20; 20]);
    let mut n = Node::with_id(NodeId([0x80; 20]), NodeConfig::default(), None, now, 4).unwrap();
    // Distances to the target: the relay 0xa0.., `back` 0x60.., `closest` 0x01..,
    // `near` 0x02.., `far` 0xe0...
    let back = link_from(&mut n, NodeId([0x40; 20]), now);
    let closest = link_from(&mut n, NodeId([0x21; 20]), now);
    let near = link_from(&mut n, NodeId([0x22; 20]), now);
    let far = link_from(&mut n, NodeId([0xc0; 20]), now);
    outputs(&mut n);
    // The target's last message came through `back`: that is the way back to it.
    let user = r#"{"type":"user","data":1}"#;
    n.handle_frame(back, &routed(NodeId([0xc0; 20]), target, "p1", user), now);
    assert_eq!(relayed_links(&mut n), vec![far]);
    let origin = NodeId([0xc1; 20]);
    // A handshake offer (a request) goes greedily, not the long way back.
    let offer = r#"{"type":"handshake-offer","data":{"ws":"ws://x"}}"#;
    n.handle_frame(far, &routed(target, origin, "o1", offer), now);
    assert_eq!(relayed_links(&mut n), vec![closest]);
    // So does a lookup.
    let lookup = format!(r#"{{"type":"findPeers","data":"{origin}"}}"#);
    n.handle_frame(far, &routed(target, origin, "f1", &lookup), now);
    assert_eq!(relayed_links(&mut n), vec![closest]);
    // An answer takes the way back only, as before.
    let found = r#"{"type":"foundPeers","data":[]}"#;
    n.handle_frame(far, &routed(target, origin, "a1", found), now);
    assert_eq!(relayed_links(&mut n), vec![back]);
    // A user message coming from a node closer to the target than us (greedy routing ended
    // there and sent it back) follows the way back rather than returning greedily.
    let returned = format!(
        r#"{{"to":"{target}","from":"{origin}","path":["{origin}","{}"],"nonce":"u1","data":{user}}}"#,
        NodeId([0x22; 20])
    );
    n.handle_frame(near, returned.as_bytes(), now);
    assert_eq!(relayed_links(&mut n), vec![back]);
    // One making progress goes greedily.
    n.handle_frame(far, &routed(target, origin, "u2", user), now);
    assert_eq!(relayed_links(&mut n), vec![closest]);
}
