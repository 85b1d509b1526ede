//! Resume through a real fault proxy: the client's TCP connection is reset (an RST, no close
//! frame) and refused for a while; the client resumes by itself and nothing is lost or
//! delivered twice. Every wait is bounded; nothing sleeps to synchronise.

mod common;

use std::collections::HashMap;

use std::time::Duration;

use anyhow::{Context as _, Result};
use peermesh_client::{
    Client, ClientEvent, ClientOptions, Payload, ReconnectPolicy, ResumeRefusal,
};
use peermesh_hub::{Hub, HubConfig, HubHandle, ServiceSpec};
use peermesh_testkit::{FaultProxy, Schedule};
use serde_json::json;

use common::{wait_for, within};

struct TestHub {
    addr: std::net::SocketAddr,
    handle: HubHandle,
}

impl TestHub {
    async fn start(grace_ms: u64) -> Result<Self> {
        let hub = Hub::bind(HubConfig {
            listen: "127.0.0.1:0".parse()?,
            resume_grace_ms: grace_ms,
            shutdown_grace_ms: 500,
            ..HubConfig::default()
        })
        .await?;
        let addr = hub.local_addr();
        let handle = hub.handle();
        tokio::spawn(hub.run());
        Ok(Self { addr, handle })
    }

    fn options(&self, via: std::net::SocketAddr, id: &str) -> ClientOptions {
        ClientOptions {
            reconnect: Some(ReconnectPolicy {
                base_delay: Duration::from_millis(20),
                max_delay: Duration::from_millis(100),
                max_attempts: 1_000,
                max_elapsed: Duration::from_secs(60),
                seed: Some(7),
                ..Default::default()
            }),
            ..ClientOptions::new(format!("ws://{via}/ws")).with_id(id)
        }
    }
}

#[tokio::test]
async fn a_reset_connection_resumes_with_pending_requests_subscriptions_and_missed_messages(
) -> Result<()> {
    let hub = TestHub::start(10_000).await?;
    let spec = ServiceSpec::new("news")?.method("ping", |_| async { Ok(Payload::NULL) })?;
    let news = hub.handle.provide(spec)?;
    news.create_topic("today")?;
    let proxy = FaultProxy::start(hub.addr, None).await?;
    let alice = within(Client::connect(ClientOptions {
        rooms: vec!["lobby".into()],
        ..hub.options(proxy.addr(), "alice")
    }))
    .await??;
    let mut events = alice.events();
    let mut chat = alice.on("chat");
    let mut feed = within(alice.subscribe("news", "today")).await??;
    let bob = within(Client::connect(hub.options(hub.addr, "bob"))).await??;
    within(bob.join("lobby")).await??;
    let mut bob_events = bob.events();
    let mut bob_q = bob.on("q");
    // bob writes to alice first: he hears of her as a contact too.
    within(bob.emit("alice", "chat", json!(-1))).await??;
    let m = within(chat.recv()).await?.context("first message")?;
    assert_eq!(m.payload.as_json(), Some(&json!(-1)));

    // alice asks bob a question; bob holds it.
    let pending = alice
        .emit_with_ack("bob", "q", json!("well?"), Duration::from_secs(10))
        .send()
        .await?;
    let question = within(bob_q.recv())
        .await?
        .context("bob got the question")?;

    // alice's connection is reset and refused for 300 ms.
    proxy.wait_connections(1).await;
    assert_eq!(proxy.cut(Duration::from_millis(300)), 1);
    wait_for(&mut events, |e| {
        matches!(e, ClientEvent::ConnectionLost { .. }).then_some(())
    })
    .await?;
    wait_for(&mut bob_events, |e| match e {
        ClientEvent::MemberAway { id, .. } if id.as_str() == "alice" => Some(()),
        _ => None,
    })
    .await?;
    // While she is away: 20 messages, a publication and bob's answer to her question.
    for i in 0..20 {
        within(bob.emit("alice", "chat", json!(i))).await??;
    }
    news.publish("today", Payload::Json(json!("headline")))?;
    within(question.reply(json!("yes"))).await??;

    let resent = wait_for(&mut events, |e| match e {
        ClientEvent::Resumed { resent } => Some(*resent),
        ClientEvent::Resynced { reason, .. } => panic!("resynced: {reason}"),
        _ => None,
    })
    .await?;
    assert!(resent <= 1, "at most the unconfirmed emit: {resent}");
    for i in 0..20 {
        let m = within(chat.recv()).await?.context("missed message")?;
        assert_eq!(m.payload.as_json(), Some(&json!(i)), "in order, once");
    }
    let answer = within(pending).await??;
    assert_eq!(answer.as_json(), Some(&json!("yes")));
    let p = within(feed.recv()).await?.context("publication")?;
    assert_eq!(p.payload.as_json(), Some(&json!("headline")));
    wait_for(&mut bob_events, |e| match e {
        ClientEvent::MemberBack { id, .. } if id.as_str() == "alice" => Some(()),
        _ => None,
    })
    .await?;
    // Nothing arrives twice.
    within(bob.emit("alice", "chat", json!("last"))).await??;
    let m = within(chat.recv()).await?.context("last")?;
    assert_eq!(m.payload.as_json(), Some(&json!("last")));
    assert_eq!(hub.handle.client_count(), 2);
    alice.close().await;
    bob.close().await;
    Ok(())
}

#[tokio::test]
async fn after_the_window_the_client_resyncs_and_pending_requests_fail() -> Result<()> {
    let hub = TestHub::start(200).await?;
    let proxy = FaultProxy::start(hub.addr, None).await?;
    let alice = within(Client::connect(ClientOptions {
        rooms: vec!["lobby".into()],
        ..hub.options(proxy.addr(), "alice")
    }))
    .await??;
    let mut events = alice.events();
    let bob = within(Client::connect(hub.options(hub.addr, "bob"))).await??;
    within(bob.join("lobby")).await??;
    let mut bob_q = bob.on("q");
    let pending = alice
        .emit_with_ack("bob", "q", Payload::NULL, Duration::from_secs(10))
        .send()
        .await?;
    within(bob_q.recv()).await?.context("question")?;
    proxy.wait_connections(1).await;
    proxy.cut(Duration::from_millis(800));
    let (reason, message) = wait_for(&mut events, |e| match e {
        ClientEvent::Resynced { reason, message } => Some((*reason, message.clone())),
        ClientEvent::Resumed { .. } => panic!("resumed after the window"),
        _ => None,
    })
    .await?;
    assert_eq!(reason, ResumeRefusal::Expired, "{message}");
    let err = within(pending).await?.expect_err("the session is gone");
    assert_eq!(err.code_name(), "connection_lost");
    let members = within(bob.members("lobby")).await??;
    assert_eq!(
        members.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
        ["alice", "bob"],
        "alice rejoined the room in her fresh session"
    );
    alice.close().await;
    bob.close().await;
    Ok(())
}

/// 50 clients whose connections are reset on a schedule (each with its own phase) while one
/// publisher on an uncut connection writes to each of them by id: every message arrives once,
/// in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_clients_under_periodic_resets_receive_every_message_once_in_order() -> Result<()> {
    const CLIENTS: usize = 50;
    const MESSAGES: u64 = 40;
    let hub = TestHub::start(10_000).await?;
    let mut proxies = Vec::new();
    let mut clients = Vec::new();
    let mut inboxes = Vec::new();
    for i in 0..CLIENTS {
        let schedule = Schedule {
            first: Duration::from_millis(100 + 20 * i as u64),
            period: Duration::from_millis(1_000),
            down: Duration::from_millis(150),
        };
        let proxy = FaultProxy::start(hub.addr, Some(schedule)).await?;
        let id = format!("c{i}");
        // Connecting may hit a cut: retry like a user would.
        let client = loop {
            match tokio::time::timeout(
                Duration::from_secs(2),
                Client::connect(hub.options(proxy.addr(), &id)),
            )
            .await
            {
                Ok(Ok(c)) => break c,
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        inboxes.push(client.on("m"));
        clients.push(client);
        proxies.push(proxy);
    }
    let publisher = within(Client::connect(hub.options(hub.addr, "publisher"))).await??;
    // 40 rounds over ~3 s: every client is cut about three times meanwhile.
    for n in 0..MESSAGES {
        for i in 0..CLIENTS {
            within(publisher.emit(format!("c{i}"), "m", json!(n))).await??;
        }
        tokio::time::sleep(Duration::from_millis(75)).await;
    }
    let mut got: HashMap<usize, Vec<u64>> = HashMap::new();
    for (i, inbox) in inboxes.iter_mut().enumerate() {
        let v = got.entry(i).or_default();
        while (v.len() as u64) < MESSAGES {
            let m = within(inbox.recv())
                .await
                .with_context(|| format!("c{i} after {v:?}"))?
                .context("inbox closed")?;
            v.push(
                m.payload
                    .as_json()
                    .and_then(|j| j.as_u64())
                    .unwrap_or(u64::MAX),
            );
        }
    }
    let want: Vec<u64> = (0..MESSAGES).collect();
    for (i, v) in &got {
        assert_eq!(v, &want, "c{i} received every message once, in order");
    }
    let cuts: u64 = proxies.iter().map(|p| p.stats().cut).sum();
    assert!(
        cuts >= CLIENTS as u64 * 2,
        "the proxies cut {cuts} connections"
    );
    // No duplicate arrives late either.
    publisher.close().await;
    for c in &clients {
        c.close().await;
    }
    Ok(())
}
