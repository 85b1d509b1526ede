//! Services and topics between Rust clients and the hub, over loopback sockets.
//!
//! Every wait is bounded by `within` (10 s); nothing sleeps to synchronise: tests wait for the
//! answer, publication or feed end they expect.

use std::future::IntoFuture;
use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};
use peermesh_client::{
    Client, ClientError, ClientOptions, Encoding, ErrorCode, FeedEnd, Payload, TopicEnd,
};
use peermesh_hub::{Hub, HubConfig, HubHandle, ServiceError, ServiceSpec, ServiceStats};
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(10);

async fn within<T>(fut: impl IntoFuture<Output = T>) -> Result<T> {
    tokio::time::timeout(LIMIT, fut)
        .await
        .map_err(|_| anyhow!("no result within {LIMIT:?}"))
}

struct TestHub {
    url: String,
    handle: HubHandle,
}

impl TestHub {
    async fn start(config: HubConfig) -> Result<Self> {
        let hub = Hub::bind(HubConfig {
            listen: "127.0.0.1:0".parse()?,
            shutdown_grace_ms: 1_000,
            ..config
        })
        .await?;
        let url = format!("ws://{}/ws", hub.local_addr());
        let handle = hub.handle();
        tokio::spawn(hub.run());
        Ok(Self { url, handle })
    }

    async fn client(&self, id: &str, enc: Encoding) -> Result<Client> {
        let opts = ClientOptions {
            encoding: enc,
            reconnect: None,
            ..ClientOptions::new(&self.url).with_id(id)
        };
        within(Client::connect(opts)).await?.context("connect")
    }

    async fn until_clean(&self) -> Result<()> {
        within(async {
            while self.handle.service_stats() != ServiceStats::default()
                || self.handle.client_count() != 0
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .map_err(|e| anyhow!("{e}: state left {:?}", self.handle.service_stats()))
    }
}

fn code<T>(r: Result<T, ClientError>) -> Option<ErrorCode> {
    r.err().and_then(|e| e.code())
}

/// A provider that answers `add` with the sum and its own id, `fail` with an error, and
/// holds `hold` calls until it holds `batch` of them, then answers them all with its id.
fn serve_calc(p: &Client, batch: usize) -> tokio::task::JoinHandle<()> {
    let mut calls = p.invocations();
    let me = p.id().to_string();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Some(inv) = calls.recv().await {
            let args = inv.payload.as_json().cloned().unwrap_or_default();
            match inv.method.as_str() {
                "add" => {
                    let sum = args[0].as_i64().unwrap_or(0) + args[1].as_i64().unwrap_or(0);
                    let _ = inv
                        .respond(Ok(Payload::Json(json!({"sum": sum, "by": me}))))
                        .await;
                }
                "fail" => {
                    let _ = inv.respond(Err("it failed on purpose".into())).await;
                }
                "hold" => {
                    held.push(inv);
                    if held.len() >= batch {
                        for h in held.drain(..) {
                            let _ = h.respond(Ok(Payload::Json(json!(me)))).await;
                        }
                    }
                }
                _ => {
                    let _ = inv.respond(Err("no such method here".into())).await;
                }
            }
        }
    })
}

#[tokio::test]
async fn calls_answers_and_every_error_code() -> Result<()> {
    let hub = TestHub::start(HubConfig::default()).await?;
    let calc = hub.client("calc", Encoding::MsgPack).await?;
    let server = serve_calc(&calc, usize::MAX);
    within(calc.provide("calc", ["add", "fail", "hold"])).await??;
    let alice = hub.client("alice", Encoding::Json).await?;

    let r = within(alice.call("calc", "add", json!([2, 40]), None)).await??;
    assert_eq!(r.as_json(), Some(&json!({"sum": 42, "by": "calc"})));

    let e = within(alice.call("calc", "fail", Payload::NULL, None))
        .await?
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::ServiceError));
    assert_eq!(e.message(), "it failed on purpose");
    assert_eq!(
        code(within(alice.call("nope", "add", Payload::NULL, None)).await?),
        Some(ErrorCode::UnknownService)
    );
    assert_eq!(
        code(within(alice.call("calc", "nope", Payload::NULL, None)).await?),
        Some(ErrorCode::UnknownMethod)
    );
    let timeout = Duration::from_millis(100);
    let e = within(alice.call("calc", "hold", Payload::NULL, timeout))
        .await?
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::CallTimeout), "{e}");
    assert_eq!(e.code_name(), "call_timeout");
    assert!(matches!(
        within(alice.call("a b", "x", Payload::NULL, None)).await?,
        Err(ClientError::InvalidName(_))
    ));
    // alice may provide calc too (another method), but only one service.
    within(alice.provide("calc", ["x"])).await??;
    let second = within(alice.provide("other", ["x"])).await?.unwrap_err();
    assert_eq!(second.code(), Some(ErrorCode::AlreadyProviding));
    // After unprovide, alice may provide another service; a second unprovide is refused.
    within(alice.unprovide()).await??;
    let again = within(alice.unprovide()).await?.unwrap_err();
    assert_eq!(again.code(), Some(ErrorCode::NotProvider));
    within(alice.provide("other", ["x"])).await??;
    within(alice.unprovide()).await??;

    // provider_left: the provider holds the call and disconnects.
    let held = alice.call("calc", "hold", Payload::NULL, Duration::from_secs(5));
    let pending = within(held.send()).await??;
    // The held call has reached the provider once a later call on the same path is answered.
    within(alice.call("calc", "add", json!([1, 1]), None)).await??;
    calc.close().await;
    let e = within(pending).await?.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::ProviderLeft), "{e}");
    within(server).await??;
    alice.close().await;
    hub.until_clean().await
}

#[tokio::test]
async fn three_providers_share_the_load_and_the_hub_answers_first() -> Result<()> {
    let hub = TestHub::start(HubConfig::default()).await?;
    let mut servers = Vec::new();
    let mut providers = Vec::new();
    for i in 0..3 {
        let p = hub.client(&format!("w{i}"), Encoding::Json).await?;
        servers.push(serve_calc(&p, 10));
        within(p.provide("calc", ["add", "hold"])).await??;
        providers.push(p);
    }
    let alice = hub.client("alice", Encoding::MsgPack).await?;
    // 30 held calls at once: least-busy with round-robin ties puts 10 on each provider, and
    // each answers its calls once it holds 10 (an uneven share would time out).
    let mut pending = Vec::new();
    for _ in 0..30 {
        let r = alice.call("calc", "hold", Payload::NULL, Duration::from_secs(8));
        pending.push(within(r.send()).await??);
    }
    let mut by = std::collections::BTreeMap::new();
    for p in pending {
        let who = within(p).await??;
        *by.entry(who.as_json().cloned().unwrap_or_default().to_string())
            .or_insert(0) += 1;
    }
    assert_eq!(
        by.values().copied().collect::<Vec<_>>(),
        [10, 10, 10],
        "{by:?}"
    );

    // The hub provides `calc.add` too: it answers, the clients never see those calls.
    let spec = ServiceSpec::new("calc")?.method("add", |call| async move {
        let a = call.payload.as_json().cloned().unwrap_or_default();
        match (a[0].as_i64(), a[1].as_i64()) {
            (Some(x), Some(y)) => Ok(Payload::Json(json!({"sum": x + y, "by": "hub"}))),
            _ => Err(ServiceError::new("two integers, please")),
        }
    })?;
    let hub_calc = hub.handle.provide(spec)?;
    for _ in 0..6 {
        let r = within(alice.call("calc", "add", json!([1, 2]), None)).await??;
        assert_eq!(r.as_json(), Some(&json!({"sum": 3, "by": "hub"})));
    }
    let e = within(alice.call("calc", "add", json!("x"), None))
        .await?
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Some(ErrorCode::ServiceError), "two integers, please".into())
    );
    drop(hub_calc);
    let r = within(alice.call("calc", "add", json!([1, 2]), None)).await??;
    assert_ne!(r.as_json().map(|v| v["by"].clone()), Some(json!("hub")));

    for p in &providers {
        p.close().await;
    }
    for s in servers {
        within(s).await??;
    }
    alice.close().await;
    hub.until_clean().await
}

#[tokio::test]
async fn topics_feeds_namespacing_and_their_ends() -> Result<()> {
    let hub = TestHub::start(HubConfig::default()).await?;
    let weather = hub.client("weather", Encoding::Json).await?;
    let sport = hub.client("sport", Encoding::MsgPack).await?;
    within(weather.provide("weather", ["now"])).await??;
    within(sport.provide("sport", ["now"])).await??;
    for p in [&weather, &sport] {
        within(p.create_topic("news")).await??;
    }
    within(weather.create_topic("alerts")).await??;
    let alice = hub.client("alice", Encoding::MsgPack).await?;
    let mut w_news = within(alice.subscribe("weather", "news")).await??;
    let mut w_alerts = within(alice.subscribe("weather", "alerts")).await??;
    let mut s_news = within(alice.subscribe("sport", "news")).await??;
    let e = within(alice.subscribe("weather", "nope"))
        .await?
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::UnknownTopic));
    let e = within(alice.subscribe("nope", "news")).await?.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::UnknownService));
    let e = within(alice.publish("news", json!(1))).await?.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotProvider));

    within(weather.publish("news", json!("rain"))).await??;
    within(sport.publish("news", Payload::Bin(vec![1u8, 2].into()))).await??;
    let p = within(w_news.recv()).await?.context("weather news")?;
    assert_eq!((p.service.as_str(), p.topic.as_str()), ("weather", "news"));
    assert_eq!(p.payload.as_json(), Some(&json!("rain")));
    let p = within(s_news.recv()).await?.context("sport news")?;
    assert_eq!(p.service.as_str(), "sport");
    assert_eq!(p.payload.as_bytes().map(|b| b.to_vec()), Some(vec![1, 2]));

    // Unsubscribe ends the feed; a second one is not_subscribed.
    within(alice.unsubscribe("sport", "news")).await??;
    assert!(within(s_news.recv()).await?.is_none());
    assert_eq!(s_news.end(), Some(FeedEnd::Unsubscribed));
    let e = within(alice.unsubscribe("sport", "news"))
        .await?
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotSubscribed));

    // Destroyed: the feed ends with the hub's reason.
    within(weather.destroy_topic("news")).await??;
    assert!(within(w_news.recv()).await?.is_none());
    assert_eq!(w_news.end(), Some(FeedEnd::Topic(TopicEnd::Destroyed)));

    // The provider disconnects: its service and topics go.
    weather.close().await;
    assert!(within(w_alerts.recv()).await?.is_none());
    assert_eq!(w_alerts.end(), Some(FeedEnd::Topic(TopicEnd::ServiceGone)));

    // A dropped feed unsubscribes on the next publication.
    let dropped = within(alice.subscribe("sport", "news")).await??;
    drop(dropped);
    within(sport.publish("news", json!(1))).await??;
    within(async {
        while hub.handle.service_stats().subscriptions != 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await?;

    sport.close().await;
    alice.close().await;
    hub.until_clean().await
}

#[tokio::test]
async fn a_provider_without_a_handler_refuses_at_once() -> Result<()> {
    let hub = TestHub::start(HubConfig::default()).await?;
    let lazy = hub.client("lazy", Encoding::Json).await?;
    within(lazy.provide("lazy", ["x"])).await??;
    let alice = hub.client("alice", Encoding::Json).await?;
    let e = within(alice.call("lazy", "x", Payload::NULL, None))
        .await?
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::ServiceError), "{e}");
    assert!(e.message().contains("no handler"), "{e}");
    lazy.close().await;
    alice.close().await;
    hub.until_clean().await
}
