//! Several hub URLs over real sockets: two hubs in this process on 127.0.0.1:0, a client
//! given a list of URLs. It skips a dead URL when connecting, and when its hub shuts down it
//! reconnects to the next one (a fresh session there: the hubs share nothing) and works there.
//! Every wait is bounded; nothing sleeps to synchronise.

mod common;

use std::future::IntoFuture;
use std::time::Duration;

use anyhow::{Context as _, Result};
use peermesh_client::{
    Client, ClientEvent, ClientOptions, Payload, ReconnectPolicy, ResumeRefusal,
};
use peermesh_hub::{Hub, HubConfig, HubError, HubHandle};
use serde_json::json;
use tokio::task::JoinHandle;

use common::{wait_for, within};

struct TestHub {
    url: String,
    handle: HubHandle,
    run: JoinHandle<Result<(), HubError>>,
}

impl TestHub {
    async fn start() -> Result<Self> {
        let hub = Hub::bind(HubConfig {
            listen: "127.0.0.1:0".parse()?,
            resume_grace_ms: 10_000,
            shutdown_grace_ms: 500,
            ..HubConfig::default()
        })
        .await?;
        let url = format!("ws://{}/ws", hub.local_addr());
        let handle = hub.handle();
        let run = tokio::spawn(hub.run());
        Ok(Self { url, handle, run })
    }

    /// Shuts the hub down and waits until it stopped listening.
    async fn stop(self) -> Result<()> {
        self.handle.shutdown();
        within(self.run).await???;
        Ok(())
    }
}

/// A URL where nothing listens: a port that was bound, then released.
fn dead_url() -> Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    drop(listener);
    Ok(format!("ws://{addr}/ws"))
}

fn options(urls: &[&str], id: &str) -> ClientOptions {
    let (first, rest) = urls.split_first().map_or(("", &[][..]), |(f, r)| (*f, r));
    ClientOptions {
        reconnect: Some(ReconnectPolicy {
            base_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(100),
            max_attempts: 1_000,
            max_elapsed: Duration::from_secs(60),
            seed: Some(7),
            ..Default::default()
        }),
        ..ClientOptions::new(first)
            .with_id(id)
            .with_fallback_urls(rest.iter().copied())
    }
}

#[tokio::test]
async fn connect_skips_a_dead_url_and_uses_the_next_hub() -> Result<()> {
    let a = TestHub::start().await?;
    let dead = dead_url()?;
    let bob = within(Client::connect(options(&[&a.url], "bob"))).await??;
    let mut chat = bob.on("chat");

    let alice = within(Client::connect(options(&[&dead, &a.url], "alice"))).await??;
    assert_eq!(alice.current_url(), a.url);
    assert_eq!(a.handle.client_count(), 2);
    within(alice.emit("bob", "chat", json!("hi from alice"))).await??;
    let m = within(chat.recv()).await?.context("bob's message")?;
    assert_eq!(m.from.as_str(), "alice");
    assert_eq!(m.payload.as_json(), Some(&json!("hi from alice")));

    // Only dead URLs: the connection fails with the last one's error.
    let err = within(Client::connect(options(&[&dead, &dead_url()?], "carol")))
        .await?
        .err()
        .context("no hub to reach")?;
    assert_eq!(err.code_name(), "websocket", "{err}");

    alice.close().await;
    bob.close().await;
    a.stop().await
}

#[tokio::test]
async fn when_its_hub_shuts_down_the_client_moves_to_the_next_and_works_there() -> Result<()> {
    let a = TestHub::start().await?;
    let b = TestHub::start().await?;
    let a_url = a.url.clone();
    let b_url = b.url.clone();
    let bob = within(Client::connect(options(&[&b_url], "bob"))).await??;
    let mut bob_chat = bob.on("chat");
    let mut bob_q = bob.on("q");
    within(bob.join("lobby")).await??;

    let alice = within(Client::connect(ClientOptions {
        rooms: vec!["lobby".into()],
        ..options(&[&a_url, &b_url], "alice")
    }))
    .await??;
    let mut events = alice.events();
    let mut alice_chat = alice.on("chat");
    assert_eq!(alice.current_url(), a_url);
    assert_eq!(a.handle.client_count(), 1);
    assert_eq!(b.handle.client_count(), 1, "only bob is on b");

    a.stop().await?;
    wait_for(&mut events, |e| {
        matches!(e, ClientEvent::ConnectionLost { .. }).then_some(())
    })
    .await?;
    let (url, rooms) = wait_for(&mut events, |e| match e {
        ClientEvent::Reconnected { url, rooms, .. } => Some((url.clone(), rooms.clone())),
        ClientEvent::Lost { reason } => panic!("gave up: {reason}"),
        _ => None,
    })
    .await?;
    assert_eq!(url, b_url);
    assert_eq!(
        rooms.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
        ["lobby"]
    );
    assert_eq!(alice.current_url(), b_url);
    // b never saw alice's session: she presented her secret and got a fresh one.
    let reason = wait_for(&mut events, |e| match e {
        ClientEvent::Resynced { reason, .. } => Some(*reason),
        ClientEvent::Resumed { .. } => panic!("resumed on a hub that never saw the session"),
        _ => None,
    })
    .await?;
    assert_eq!(reason, ResumeRefusal::Expired);

    // alice works on b: rooms, messages both ways, acknowledgements.
    let members = within(bob.members("lobby")).await??;
    assert_eq!(
        members.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
        ["alice", "bob"],
        "alice rejoined the room on b"
    );
    within(bob.emit("alice", "chat", json!("welcome to b"))).await??;
    let m = within(alice_chat.recv())
        .await?
        .context("alice's message")?;
    assert_eq!(m.payload.as_json(), Some(&json!("welcome to b")));
    within(alice.emit("bob", "chat", json!("thanks"))).await??;
    let m = within(bob_chat.recv()).await?.context("bob's message")?;
    assert_eq!(m.from.as_str(), "alice");
    let ask = tokio::spawn(
        alice
            .emit_with_ack("bob", "q", Payload::NULL, Duration::from_secs(10))
            .into_future(),
    );
    let q = within(bob_q.recv()).await?.context("bob's question")?;
    within(q.reply(json!(42))).await??;
    let answer = within(ask).await???;
    assert_eq!(answer.as_json(), Some(&json!(42)));
    assert_eq!(b.handle.client_count(), 2);

    alice.close().await;
    bob.close().await;
    b.stop().await
}
