//! Sessions through the Rust client: a seeded random schedule of 50 clients joining,
//! leaving, dropping (their TCP connection reset by a fault proxy) and resuming, and changing
//! shared state. At the end every member's view equals a fresh snapshot of the hub's state,
//! no operation was lost or applied twice, and no two members ever saw different authorities
//! in the same epoch.

use std::collections::{HashMap, HashSet};
use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use parking_lot::Mutex;
use peermesh_client::{
    Client, ClientId, ClientOptions, ReconnectPolicy, Session, SessionChange, SessionEnd,
    SessionMode, SessionOp, SessionUpdate, SessionView,
};
use peermesh_hub::{Hub, HubConfig};
use peermesh_proto::{ObjectName, OwnerLeave, Payload};
use peermesh_testkit::FaultProxy;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(20);
const CLIENTS: usize = 50;
const STEPS: usize = 800;
const OBJECTS: usize = 30;

async fn within<T>(fut: impl IntoFuture<Output = T>) -> Result<T> {
    tokio::time::timeout(LIMIT, fut)
        .await
        .map_err(|_| anyhow!("no result within {LIMIT:?}"))
}

/// What every member's consumer task reports.
#[derive(Default)]
struct Shared {
    /// epoch → the authorities members saw in it.
    authorities: Mutex<HashMap<u64, HashSet<Option<ClientId>>>>,
    /// Latest view per client (absent when not a member).
    views: Mutex<HashMap<String, SessionView>>,
    /// `op` tokens seen in events by the witness (who never leaves or drops).
    witnessed: Mutex<Vec<u64>>,
    /// Sessions that ended out of order.
    broken: Mutex<Vec<String>>,
}

fn record_authority(shared: &Shared, view: &SessionView) {
    shared
        .authorities
        .lock()
        .entry(view.epoch)
        .or_default()
        .insert(view.authority.clone());
}

/// Consumes a session's updates until it ends, publishing the view.
fn consume(id: String, mut s: Session, shared: Arc<Shared>, witness: bool) {
    tokio::spawn(async move {
        record_authority(&shared, s.view());
        shared.views.lock().insert(id.clone(), s.view().clone());
        while let Some(u) = s.next().await {
            if let SessionUpdate::Event { change, .. } = &u {
                if let SessionChange::Authority { .. } = change {
                    record_authority(&shared, s.view());
                }
                if witness {
                    if let SessionChange::Created { payload, .. }
                    | SessionChange::Updated { payload, .. } = change
                    {
                        if let Some(n) = payload.as_json().and_then(|v| v["op"].as_u64()) {
                            shared.witnessed.lock().push(n);
                        }
                    }
                }
            }
            if matches!(u, SessionUpdate::Resynced) {
                record_authority(&shared, s.view());
            }
            shared.views.lock().insert(id.clone(), s.view().clone());
        }
        if s.end() == Some(SessionEnd::OutOfOrder) {
            shared.broken.lock().push(id.clone());
        }
        if s.end() != Some(SessionEnd::Left) {
            // Ended otherwise (closed): keep the last view for the report.
            return;
        }
        shared.views.lock().remove(&id);
    });
}

fn options(via: std::net::SocketAddr, id: &str) -> ClientOptions {
    ClientOptions {
        reconnect: Some(ReconnectPolicy {
            base_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(100),
            max_attempts: 10_000,
            max_elapsed: Duration::from_secs(60),
            seed: Some(3),
            ..Default::default()
        }),
        request_timeout: Duration::from_secs(15),
        ..ClientOptions::new(format!("ws://{via}/ws")).with_id(id)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_clients_join_leave_drop_resume_and_change_state_consistently() -> Result<()> {
    let hub = Hub::bind(HubConfig {
        listen: "127.0.0.1:0".parse()?,
        resume_grace_ms: 20_000,
        ..HubConfig::default()
    })
    .await?;
    let addr = hub.local_addr();
    let handle = hub.handle();
    tokio::spawn(hub.run());
    let shared = Arc::new(Shared::default());

    // The witness never drops or leaves: it sees every event.
    let witness = within(Client::connect(options(addr, "witness"))).await??;
    let s = within(witness.join_session(Some("world"), SessionMode::Authoritative)).await??;
    consume("witness".into(), s, shared.clone(), true);

    let mut proxies = Vec::new();
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let proxy = FaultProxy::start(addr, None).await?;
        let c = within(Client::connect(options(proxy.addr(), &format!("c{i}")))).await??;
        proxies.push(proxy);
        clients.push(c);
    }
    let mut member = [false; CLIENTS];
    let mut rng = StdRng::seed_from_u64(0x5e55_1011);
    let mut accepted: Vec<u64> = Vec::new();
    let mut refused: Vec<u64> = Vec::new();
    let mut token = 0u64;
    let mut drops = 0;
    for _ in 0..STEPS {
        let i = rng.random_range(0..CLIENTS);
        let c = &clients[i];
        let id = format!("c{i}");
        match rng.random_range(0..100) {
            // join / leave
            0..=19 => {
                if member[i] && rng.random_bool(0.3) {
                    match within(c.leave_session("world")).await? {
                        Ok(()) => member[i] = false,
                        Err(e) => bail!("{id} could not leave: {e}"),
                    }
                } else if !member[i] {
                    let s = within(c.join_session(Some("world"), SessionMode::Authoritative))
                        .await?
                        .with_context(|| format!("{id} joins"))?;
                    consume(id, s, shared.clone(), false);
                    member[i] = true;
                }
            }
            // drop: reset the connection and refuse it for a little while
            20..=29 => {
                let down = Duration::from_millis(rng.random_range(20..200));
                drops += proxies[i].cut(down);
            }
            // an operation on the shared objects
            _ => {
                if !member[i] {
                    continue;
                }
                token += 1;
                // Mostly the client's own objects (which it may change), some shared ones.
                let name = if rng.random_bool(0.7) {
                    format!("{id}-{}", rng.random_range(0..3))
                } else {
                    format!("o{}", rng.random_range(0..OBJECTS))
                };
                let object = ObjectName::new(&name)?;
                let value = Payload::Json(json!({"op": token, "by": id}));
                let op = match rng.random_range(0..5) {
                    0 => SessionOp::Create {
                        object,
                        payload: value,
                        owned: rng.random_bool(0.7),
                        on_owner_leave: if rng.random_bool(0.5) {
                            OwnerLeave::Authority
                        } else {
                            OwnerLeave::Delete
                        },
                    },
                    1 | 2 => SessionOp::Update {
                        object,
                        payload: value,
                    },
                    3 => SessionOp::Delete { object },
                    _ => SessionOp::Transfer {
                        object,
                        to: Some(ClientId::new(&format!(
                            "c{}",
                            rng.random_range(0..CLIENTS)
                        ))?),
                    },
                };
                let carries = matches!(op, SessionOp::Create { .. } | SessionOp::Update { .. });
                // Refusals (not_owner, unknown_object, …) are part of the game.
                match within(c.session_op("world", op)).await? {
                    Ok(()) if carries => accepted.push(token),
                    Err(e) if carries && e.code().is_some() => refused.push(token),
                    Ok(()) => {}
                    Err(e) if e.code().is_some() => {}
                    Err(e) => bail!("{id}: {e}"),
                }
            }
        }
    }
    assert!(drops > 20, "the schedule dropped {drops} connections");
    assert!(
        accepted.len() > 40,
        "{} operations accepted",
        accepted.len()
    );

    // A fresh member's snapshot is the hub's state; every member (resumed by now) reaches the
    // same revision with the same view (drops still resuming add away/back events meanwhile).
    let checker = within(Client::connect(options(addr, "checker"))).await??;
    let snap = within(checker.join_session(Some("world"), SessionMode::Authoritative)).await??;
    consume("checker".into(), snap, shared.clone(), false);
    let strip = |v: &SessionView| {
        let mut v = v.clone();
        v.members.iter_mut().for_each(|m| m.away = false);
        v
    };
    let views = within(async {
        loop {
            let views = shared.views.lock().clone();
            let want = views.get("checker").map(strip);
            if let Some(want) = want {
                if views.values().all(|v| strip(v) == want) {
                    return views;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .with_context(|| {
        let views = shared.views.lock();
        let revs: Vec<(String, u64)> = views.iter().map(|(k, v)| (k.clone(), v.rev)).collect();
        format!("members never agreed: {revs:?}")
    })?;
    let members: usize = member.iter().filter(|m| **m).count();
    assert_eq!(
        views.len(),
        members + 2,
        "every member, the witness and the checker have a view"
    );
    let want = &views["checker"];
    let ids: Vec<&str> = want.members.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids.len(), members + 2, "{ids:?}");
    assert!(
        shared.broken.lock().is_empty(),
        "out of order: {:?}",
        shared.broken.lock()
    );
    // No operation lost or applied twice: the witness saw each accepted one exactly once.
    let seen = shared.witnessed.lock().clone();
    let mut counts: HashMap<u64, usize> = HashMap::new();
    for n in &seen {
        *counts.entry(*n).or_default() += 1;
    }
    for n in &accepted {
        assert_eq!(counts.get(n), Some(&1), "accepted op {n} seen once");
    }
    for n in &refused {
        assert_eq!(counts.get(n), None, "refused op {n} never applied");
    }
    // One authority per epoch, as the members themselves saw it.
    for (epoch, who) in shared.authorities.lock().iter() {
        assert_eq!(who.len(), 1, "epoch {epoch} had authorities {who:?}");
    }
    assert_eq!(handle.session_stats().sessions, 1);
    Ok(())
}

/// More updates than a session holds (`session_capacity`, 4,096 by default) come at once:
/// first a member owning 6,000 objects leaves (one event each) while the other reads as they
/// come, then the application stops reading while 10,000 updates pass. Each time the client
/// asks the hub for a fresh snapshot instead of ending the session: the application gets what
/// was held, `Resynced`, then the rest, and ends with the hub's state. Before, the session
/// ended as lagged.
#[tokio::test]
async fn more_updates_than_the_session_holds_resync_it_instead_of_ending_it() -> Result<()> {
    let hub = Hub::bind(HubConfig {
        listen: "127.0.0.1:0".parse()?,
        rate_per_sec: 1_000_000,
        rate_burst: 1_000_000,
        ..HubConfig::default()
    })
    .await?;
    let addr = hub.local_addr();
    tokio::spawn(hub.run());
    let url = format!("ws://{addr}/ws");
    let owner = within(Client::connect(
        ClientOptions::new(url.clone()).with_id("owner"),
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
    let member = within(Client::connect(ClientOptions::new(url).with_id("member"))).await??;
    let mut ms = within(member.join_session(Some("big"), SessionMode::Authoritative)).await??;
    assert_eq!(ms.view().objects.len(), N);
    within(os.leave().send().await?).await??;
    let mut resynced = 0;
    while ms.view().members.iter().any(|m| m.id.as_str() == "owner") {
        match within(ms.next()).await? {
            Some(SessionUpdate::Resynced) => resynced += 1,
            Some(_) => {}
            None => bail!("the session ended: {:?}", ms.end()),
        }
    }
    assert_eq!(resynced, 1, "the client asked for one fresh snapshot");
    assert_eq!(ms.view().objects.len(), N);
    assert!(ms
        .view()
        .objects
        .values()
        .all(|o| o.owner.as_ref().map(ClientId::as_str) == Some("member")));

    // An application that does not read for a while: 10,000 updates pile up, more than the
    // session holds. Once it reads, it gets what was held, a resync, then the rest, and ends
    // with the hub's state.
    let ms_ops = {
        let mut pending = std::collections::VecDeque::new();
        for i in 0..10_000 {
            if pending.len() >= 256 {
                let p: peermesh_client::Pending<()> = pending.pop_front().context("window")?;
                within(p).await??;
            }
            pending.push_back(
                ms.update(format!("o{}", i % N), json!({"v": i}))
                    .send()
                    .await?,
            );
        }
        for p in pending {
            within(p).await??;
        }
        10_000u64
    };
    let last = ms.view().rev + ms_ops;
    let mut resynced = 0;
    while ms.view().rev < last {
        match within(ms.next()).await? {
            Some(SessionUpdate::Resynced) => resynced += 1,
            Some(_) => {}
            None => bail!("the session ended: {:?}", ms.end()),
        }
    }
    assert!(resynced >= 1, "{resynced}");
    let checker = within(Client::connect(
        ClientOptions::new(format!("ws://{addr}/ws")).with_id("checker"),
    ))
    .await??;
    let cs = within(checker.join_session(Some("big"), SessionMode::Authoritative)).await??;
    assert_eq!(cs.view().objects, ms.view().objects);
    Ok(())
}
