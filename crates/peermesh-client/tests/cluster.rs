//! A client of a cluster of hubs moves to another hub when its own becomes unreachable, and
//! its session moves with it: two hubs in this process clustered through a real
//! `nats-server -js`, the client's path to its hub through a fault proxy that cuts it.
//! Every wait is bounded; nothing sleeps to synchronise.

mod common;

use std::time::Duration;

use anyhow::{Context as _, Result};
use peermesh_client::{Client, ClientEvent, ClientOptions, ReconnectPolicy};
use peermesh_hub::{Hub, HubConfig, HubHandle};
use peermesh_testkit::{FaultProxy, NatsServer};
use serde_json::json;

use common::{wait_for, within};

async fn hub(nats: &NatsServer, name: &str) -> Result<(std::net::SocketAddr, HubHandle)> {
    let hub = Hub::bind(HubConfig {
        listen: "127.0.0.1:0".parse()?,
        cluster: Some(nats.url()),
        node_name: Some(name.into()),
        ..HubConfig::default()
    })
    .await?;
    let addr = hub.local_addr();
    let handle = hub.handle();
    tokio::spawn(hub.run());
    Ok((addr, handle))
}

fn options(urls: &[String], id: &str) -> ClientOptions {
    let (first, rest) = urls
        .split_first()
        .map_or(("", &[][..]), |(f, r)| (f.as_str(), r));
    ClientOptions {
        reconnect: Some(ReconnectPolicy {
            base_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(100),
            seed: Some(7),
            ..Default::default()
        }),
        ..ClientOptions::new(first)
            .with_id(id)
            .with_fallback_urls(rest.iter().cloned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_off_from_its_hub_a_client_resumes_its_session_on_another_hub() -> Result<()> {
    let nats = NatsServer::start();
    let ((a_addr, a), (b_addr, b)) = tokio::try_join!(hub(&nats, "hub-a"), hub(&nats, "hub-b"))?;
    let proxy = FaultProxy::start(a_addr, None).await?;
    let via_proxy = format!("ws://{}/ws", proxy.addr());
    let b_url = format!("ws://{b_addr}/ws");

    let bob = within(Client::connect(options(
        std::slice::from_ref(&b_url),
        "bob",
    )))
    .await??;
    within(bob.join("lobby")).await??;
    let alice = within(Client::connect(ClientOptions {
        rooms: vec!["lobby".into()],
        ..options(&[via_proxy.clone(), b_url.clone()], "alice")
    }))
    .await??;
    let mut events = alice.events();
    let mut chat = alice.on("n");
    assert_eq!(alice.current_url(), via_proxy);
    // bob sees alice (she is on hub-a, he on hub-b) once the cluster knows her.
    let mut tries = 0;
    while within(bob.emit("alice", "n", json!(0))).await?.is_err() {
        tries += 1;
        assert!(tries < 100, "alice never became reachable from hub-b");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first = within(chat.recv()).await?.context("first message")?;
    assert_eq!(first.payload.as_json(), Some(&json!(0)));
    for i in 1..=3 {
        within(bob.emit("alice", "n", json!(i))).await??;
    }
    for i in 1..=3 {
        let m = within(chat.recv()).await?.context("a message")?;
        assert_eq!(m.payload.as_json(), Some(&json!(i)));
    }

    // Her path to hub-a breaks (reset, and refused for a while); hub-a itself lives on.
    proxy.cut(Duration::from_secs(30));
    wait_for(&mut events, |e| {
        matches!(e, ClientEvent::ConnectionLost { .. }).then_some(())
    })
    .await?;
    for i in 4..=6 {
        within(bob.emit("alice", "n", json!(i))).await??;
    }
    let url = wait_for(&mut events, |e| match e {
        ClientEvent::Reconnected { url, .. } => Some(url.clone()),
        ClientEvent::Lost { reason } => panic!("gave up: {reason}"),
        _ => None,
    })
    .await?;
    assert_eq!(url, b_url);
    wait_for(&mut events, |e| match e {
        ClientEvent::Resumed { .. } => Some(()),
        ClientEvent::Resynced { reason, .. } => {
            panic!("the session should have moved with her, got a resync ({reason:?})")
        }
        _ => None,
    })
    .await?;
    // Everything bob sent arrives once, in order, and new messages flow on hub-b.
    within(bob.emit("alice", "n", json!(7))).await??;
    for i in 4..=7 {
        let m = within(chat.recv())
            .await?
            .context("a message after the move")?;
        assert_eq!(m.payload.as_json(), Some(&json!(i)));
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), chat.recv())
            .await
            .is_err(),
        "no duplicate"
    );
    // She is still in her room, now on hub-b.
    let members = within(bob.members("lobby")).await??;
    assert_eq!(
        members.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
        ["alice", "bob"]
    );
    assert_eq!(a.client_count(), 0, "hub-a let the session go");
    assert_eq!(b.client_count(), 2);
    alice.close().await;
    bob.close().await;
    Ok(())
}

/// A member on hub-b of a session held by hub-a, with default options: the owner of 6,000
/// objects leaves (more events than the session holds). The client asks hub-b for a fresh
/// snapshot, which hub-b gets from hub-a, and goes on with every object given to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_held_by_another_hub_resyncs_a_member_that_got_too_many_updates() -> Result<()> {
    use peermesh_client::{SessionMode, SessionUpdate};
    let nats = NatsServer::start();
    let ((a_addr, _a), (b_addr, _b)) = tokio::try_join!(hub(&nats, "hub-a"), hub(&nats, "hub-b"))?;
    let owner = within(Client::connect(
        ClientOptions::new(format!("ws://{a_addr}/ws")).with_id("owner"),
    ))
    .await??;
    let os = within(owner.join_session(Some("big"), SessionMode::Authoritative)).await??;
    const N: usize = 6_000;
    let mut pending = std::collections::VecDeque::new();
    for i in 0..N {
        if pending.len() >= 256 {
            let p: peermesh_client::Pending<()> = pending.pop_front().context("window")?;
            within(p).await??;
        }
        pending.push_back(os.create(format!("o{i}"), json!(i)).send().await?);
    }
    for p in pending {
        within(p).await??;
    }
    let member = within(Client::connect(
        ClientOptions::new(format!("ws://{b_addr}/ws")).with_id("member"),
    ))
    .await??;
    let mut ms = within(member.join_session(Some("big"), SessionMode::Authoritative)).await??;
    assert_eq!(ms.view().objects.len(), N);
    within(os.leave().send().await?).await??;
    // Not reading meanwhile: the member's own operation is answered after every event of the
    // leave reached its client (one order from the home), so they all wait, unread.
    within(ms.update("o1", json!("y")).send().await?).await??;
    let mut resynced = 0;
    while ms.view().members.iter().any(|m| m.id.as_str() == "owner")
        || ms
            .view()
            .objects
            .get("o1")
            .map(|o| o.payload.as_json().cloned())
            != Some(Some(json!("y")))
    {
        match within(ms.next()).await? {
            Some(SessionUpdate::Resynced) => resynced += 1,
            Some(_) => {}
            None => anyhow::bail!("the session ended: {:?}", ms.end()),
        }
    }
    assert_eq!(
        resynced, 1,
        "one fresh snapshot, from the home through hub-b"
    );
    assert_eq!(ms.view().objects.len(), N);
    assert!(ms
        .view()
        .objects
        .values()
        .all(|o| o.owner.as_ref().map(|c| c.as_str()) == Some("member")));
    // It is still a member there: an operation goes through and comes back as an event.
    let rev = ms.view().rev;
    within(ms.update("o1", json!("x")).send().await?).await??;
    while ms.view().rev == rev {
        within(ms.next()).await?.context("the session ended")?;
    }
    assert_eq!(ms.view().rev, rev + 1);
    Ok(())
}
