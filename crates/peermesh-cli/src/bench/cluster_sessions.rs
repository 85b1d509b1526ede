//! The cluster scenario's session figures.
//!
//! - **One busy session across hubs** ([`busy_step`]): the machinery of scenario (h) with the
//!   writer on the first hub (so that hub holds the session) and the members round robin over
//!   every hub, so two thirds of them are on hubs that relay the session's events and keep a
//!   mirror of it. Reported: operations per second until every member applied the last one,
//!   and the hubs' CPU time per operation, beside the same on one hub without `--cluster`.
//! - **A session outliving its home** ([`Takeover`]): a session created on the hub the
//!   dead-hub step kills, with `objects` objects, and a member on each of two other hubs. From
//!   the `kill -9`: the time until both members see its creator leave (the session was taken
//!   over by one of their hubs), then one operation, which both must see at the same revision,
//!   with every object still there.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use peermesh_client::{Client, Session, SessionMode};
use serde::Serialize;
use serde_json::json;

use super::cluster::relayed;
use super::session::{client, per_s, pipelined, Busy, SessionConfig};
use super::target::{Measured, Server};

/// One busy session: the figures of one layout.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct BusyStep {
    /// Members besides the writer.
    pub(crate) members: usize,
    /// Of them, members on a hub that does not hold the session.
    pub(crate) members_elsewhere: usize,
    /// Operations sent.
    pub(crate) ops: usize,
    /// Operations per second, until every member applied the last.
    pub(crate) ops_per_s: f64,
    /// Session events delivered per second (operations × members).
    pub(crate) deliveries_per_s: f64,
    /// User + system CPU time of every hub (summed) per operation, µs.
    pub(crate) hub_cpu_us_per_op: Option<f64>,
    /// CPU of the hubs over the step, % of one core.
    pub(crate) hubs_cpu_pct: Option<f64>,
    /// CPU of nats-server over the step, % of one core (absent without a cluster).
    pub(crate) nats_cpu_pct: Option<f64>,
    /// NATS messages the hubs published to each other per operation (absent without a
    /// cluster): below the hubs with members elsewhere when events travel batched.
    pub(crate) nats_msgs_per_op: Option<f64>,
}

/// Runs one busy session with the writer on `hubs[0]` and the members round robin over `hubs`.
pub(crate) async fn busy_step(
    hubs: &[&Server],
    measured: &Measured,
    cfg: &SessionConfig,
    tag: &str,
) -> anyhow::Result<BusyStep> {
    let home = hubs.first().copied().context("internal: no hub")?;
    let mut busy = Busy::set_up(home, hubs, cfg, tag).await?;
    let cpu = || measured.server_cpu().map(|(u, s)| u + s);
    let clustered = hubs.len() > 1;
    let sent_before = if clustered {
        relayed(hubs.iter().copied()).await
    } else {
        None
    };
    let (hubs_before, nats_before) = (cpu(), measured.broker_cpu());
    let took = busy.run(cfg).await;
    let (hubs_after, nats_after) = (cpu(), measured.broker_cpu());
    let sent_after = if clustered {
        relayed(hubs.iter().copied()).await
    } else {
        None
    };
    busy.close().await;
    let took = took?;
    let pct = |a: Option<Duration>, b: Option<Duration>| {
        a.zip(b).map(|(a, b)| {
            (a.saturating_sub(b).as_secs_f64() / took.as_secs_f64().max(1e-9) * 100.0).round()
        })
    };
    let hub_cpu = hubs_after
        .zip(hubs_before)
        .map(|(a, b)| a.saturating_sub(b));
    Ok(BusyStep {
        members: cfg.members,
        members_elsewhere: (0..cfg.members).filter(|i| i % hubs.len() != 0).count(),
        ops: cfg.ops,
        ops_per_s: per_s(cfg.ops, took),
        deliveries_per_s: per_s(cfg.ops * cfg.members, took),
        hub_cpu_us_per_op: hub_cpu
            .map(|d| (d.as_secs_f64() * 1e6 / cfg.ops.max(1) as f64 * 100.0).round() / 100.0),
        hubs_cpu_pct: pct(hubs_after, hubs_before),
        nats_cpu_pct: pct(nats_after, nats_before),
        nats_msgs_per_op: sent_after.zip(sent_before).map(|(a, b)| {
            (a.saturating_sub(b) as f64 / cfg.ops.max(1) as f64 * 1000.0).round() / 1000.0
        }),
    })
}

/// What became of a session whose home hub was killed.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TakeoverResult {
    /// Objects in the session before the kill.
    pub(crate) objects: usize,
    /// Seconds from the kill until both members saw the creator (on the killed hub) leave.
    pub(crate) gone_s: f64,
    /// Milliseconds of the first operation after that (sent to the session's new home).
    pub(crate) next_op_ms: f64,
    /// Objects the members see once it went on (expected: all of them).
    pub(crate) objects_kept: usize,
    /// Whether both members saw that operation at the same revision.
    pub(crate) same_revision: bool,
}

/// A session held by the hub about to be killed, with a member on two other hubs.
pub(crate) struct Takeover {
    creator: Client,
    creator_id: String,
    members: Vec<(Client, Session)>,
    objects: usize,
}

impl Takeover {
    /// Creates the session on `home` (its creator adds `objects` objects) and joins one member
    /// on each of `others` (at least two).
    pub(crate) async fn set_up(
        home: &Server,
        others: &[Server],
        objects: usize,
        cfg: &SessionConfig,
        tag: &str,
    ) -> anyhow::Result<Takeover> {
        if others.len() < 2 {
            bail!("a takeover needs two other hubs");
        }
        let name = format!("{tag}home");
        let creator_id = format!("{tag}creator");
        let creator = client(home, cfg, creator_id.clone()).await?;
        let cs = creator
            .join_session(Some(&name), SessionMode::Authoritative)
            .await?;
        pipelined(objects, cfg.window, |i| {
            cs.create(format!("c{i:06}"), json!({"x": i, "kind": "crate"}))
        })
        .await
        .context("filling the session")?;
        let mut members = Vec::new();
        for (k, hub) in others.iter().take(2).enumerate() {
            let c = client(hub, cfg, format!("{tag}member{k}")).await?;
            let s = c
                .join_session(Some(&name), SessionMode::Authoritative)
                .await?;
            s.create(format!("m{k}"), json!(0)).send().await?.await?;
            members.push((c, s));
        }
        // Both members (and so both mirrors) have every object before the kill.
        let total = objects + members.len();
        for (_, s) in members.iter_mut() {
            while s.view().objects.len() < total {
                s.next()
                    .await
                    .ok_or_else(|| anyhow!("a member's session ended ({:?})", s.end()))?;
            }
        }
        drop(cs);
        Ok(Takeover {
            creator,
            creator_id,
            members,
            objects: total,
        })
    }

    /// Call right after the home was killed (`killed`); waits at most `timeout`.
    pub(crate) async fn watch(
        self,
        killed: Instant,
        timeout: Duration,
    ) -> anyhow::Result<TakeoverResult> {
        let Takeover {
            creator,
            creator_id,
            mut members,
            objects,
        } = self;
        drop(creator);
        let deadline = killed + timeout;
        let present = |s: &Session| s.view().members.iter().any(|m| m.id.as_str() == creator_id);
        for (_, s) in members.iter_mut() {
            while present(s) {
                match tokio::time::timeout_at(deadline.into(), s.next()).await {
                    Ok(Some(_)) => {}
                    Ok(None) => bail!("a member's session ended ({:?})", s.end()),
                    Err(_) => {
                        bail!("the creator was still in the session {timeout:?} after the kill")
                    }
                }
            }
        }
        let gone = killed.elapsed();
        let (_, first) = members.first().context("internal: no member")?;
        let version = |s: &Session| s.view().objects.get("m0").map(|o| o.version);
        let before = version(first);
        let sent = Instant::now();
        first
            .update("m0", json!(1))
            .send()
            .await?
            .await
            .context("the first operation after the takeover")?;
        let next_op = sent.elapsed();
        let mut revs = Vec::new();
        for (_, s) in members.iter_mut() {
            loop {
                if version(s) > before {
                    break;
                }
                match tokio::time::timeout_at(deadline.into(), s.next()).await {
                    Ok(Some(_)) => {}
                    Ok(None) => bail!("a member's session ended ({:?})", s.end()),
                    Err(_) => bail!("a member never saw the operation after the takeover"),
                }
            }
            revs.push(s.view().rev);
        }
        let kept = members
            .iter()
            .map(|(_, s)| s.view().objects.len())
            .min()
            .unwrap_or(0);
        for (c, _) in &members {
            c.close().await;
        }
        Ok(TakeoverResult {
            objects,
            gone_s: (gone.as_secs_f64() * 100.0).round() / 100.0,
            next_op_ms: (next_op.as_secs_f64() * 10_000.0).round() / 10.0,
            objects_kept: kept,
            same_revision: revs.windows(2).all(|w| w[0] == w[1]),
        })
    }
}
