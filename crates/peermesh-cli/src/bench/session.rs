//! Scenario (h): sessions. Two figures, each beside the hub's own room relay measured in the
//! same run as the reference (the same fan-out without state, ordering by revision or
//! ownership checks):
//!
//! - **operations per second through one busy session**: one writer updates its own objects
//!   (pipelined, `window` requests in flight) while `members` other clients are in the
//!   session; the clock stops when every member has applied the last revision. Reference: the
//!   same writer emits the same payloads to a room of the same members.
//! - **late join**: a session is filled with `objects` objects; a new member joins; the time
//!   from its `session_join` to its complete view, and the bytes the hub sent it for the
//!   snapshot (from the hub's per-connection counters on `/status.json`).

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use futures_util::future::try_join_all;
use peermesh_client::{Client, ClientOptions, Encoding, Session, SessionMode, SessionUpdate};
use serde::Serialize;
use serde_json::json;

use super::target::{http_get, Server};

/// Settings of the session scenario.
#[derive(Debug, Clone)]
pub(crate) struct SessionConfig {
    /// Members besides the writer.
    pub(crate) members: usize,
    /// Operations (and room messages) sent by the writer.
    pub(crate) ops: usize,
    /// Requests in flight at once.
    pub(crate) window: usize,
    /// Objects in the late-join session.
    pub(crate) objects: usize,
    /// Encoding of every client.
    pub(crate) encoding: Encoding,
    /// Time allowed to connect.
    pub(crate) connect_timeout: Duration,
}

/// The figures of the session scenario.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct SessionResult {
    /// Members besides the writer.
    pub(crate) members: usize,
    /// Operations sent.
    pub(crate) ops: usize,
    /// Session operations per second, until every member applied the last.
    pub(crate) session_ops_per_s: f64,
    /// Room messages per second for the same writer and members.
    pub(crate) room_msgs_per_s: f64,
    /// Session deliveries per second (operations × members).
    pub(crate) session_deliveries_per_s: f64,
    /// Objects in the late-join session.
    pub(crate) objects: usize,
    /// Time to fill it, s.
    pub(crate) fill_s: f64,
    /// From `session_join` to the complete view, ms.
    pub(crate) late_join_ms: f64,
    /// Bytes the hub sent the joiner for the snapshot.
    pub(crate) late_join_bytes: Option<u64>,
}

pub(crate) fn per_s(n: usize, d: Duration) -> f64 {
    (n as f64 / d.as_secs_f64().max(1e-9)).round()
}

fn url(server: &Server) -> String {
    format!(
        "ws://{}{}",
        server.endpoint.url.host, server.endpoint.url.target
    )
}

pub(crate) async fn client(
    server: &Server,
    cfg: &SessionConfig,
    id: String,
) -> anyhow::Result<Client> {
    let opts = ClientOptions {
        id: Some(id),
        encoding: cfg.encoding,
        reconnect: None,
        connect_timeout: cfg.connect_timeout,
        request_timeout: Duration::from_secs(60),
        // Every member is read as the updates come (see `Busy::run`), so this only absorbs
        // bursts. The writer's own session is not read while it writes: once full, its
        // client asks for one fresh snapshot and drops the rest, so memory stays flat.
        session_capacity: READ_AHEAD,
        // A room listener drops what does not fit, and the reference counts every message:
        // room for all of them (read at once, they do not pile up).
        listener_capacity: cfg.ops + 1024,
        ..ClientOptions::new(url(server))
    };
    Ok(Client::connect(opts).await?)
}

/// Session updates a bench client holds for its reader.
const READ_AHEAD: usize = 16_384;

/// Sends `n` requests built by `make`, at most `window` in flight.
pub(crate) async fn pipelined<F>(n: usize, window: usize, make: F) -> anyhow::Result<()>
where
    F: Fn(usize) -> peermesh_client::Request<()>,
{
    let mut inflight = std::collections::VecDeque::new();
    for i in 0..n {
        if inflight.len() >= window.max(1) {
            let p: peermesh_client::Pending<()> = inflight
                .pop_front()
                .ok_or_else(|| anyhow!("empty window"))?;
            p.await?;
        }
        inflight.push_back(make(i).send().await?);
    }
    for p in inflight {
        p.await?;
    }
    Ok(())
}

/// A session with a writer and its members, ready for [`Busy::run`].
pub(crate) struct Busy {
    name: String,
    writer: Client,
    ws: Session,
    members: Vec<(Client, Session)>,
}

/// Objects of the writer's, updated in turn by [`Busy::run`].
const OWN: usize = 100;

impl Busy {
    /// Connects the writer to `writer_at` (its hub holds the session: it joins first) and
    /// member `i` to `members_at[i % len]`; every one joins the session and a room of its name.
    pub(crate) async fn set_up(
        writer_at: &Server,
        members_at: &[&Server],
        cfg: &SessionConfig,
        tag: &str,
    ) -> anyhow::Result<Busy> {
        let name = format!("{tag}-busy");
        let writer = client(writer_at, cfg, format!("{tag}-w")).await?;
        let mut ws = writer
            .join_session(Some(&name), SessionMode::Authoritative)
            .await?;
        let mut members = Vec::new();
        for i in 0..cfg.members {
            let at = members_at
                .get(i % members_at.len().max(1))
                .copied()
                .unwrap_or(writer_at);
            let c = client(at, cfg, format!("{tag}-m{i}")).await?;
            let s = c
                .join_session(Some(&name), SessionMode::Authoritative)
                .await?;
            c.join(&name).await?;
            members.push((c, s));
        }
        writer.join(&name).await?;
        pipelined(OWN, cfg.window, |i| {
            ws.create(format!("o{i}"), json!({"v": 0}))
        })
        .await
        .context("creating the objects")?;
        ws.drain();
        while ws.view().objects.len() < OWN {
            ws.next()
                .await
                .ok_or_else(|| anyhow!("the writer's session ended"))?;
        }
        Ok(Busy {
            name,
            writer,
            ws,
            members,
        })
    }

    /// Sends `cfg.ops` updates (`cfg.window` in flight) and returns the time until every
    /// member applied the last revision.
    pub(crate) async fn run(&mut self, cfg: &SessionConfig) -> anyhow::Result<Duration> {
        let last_rev = self.ws.view().rev + cfg.ops as u64;
        let started = Instant::now();
        let ws = &self.ws;
        let send = pipelined(cfg.ops, cfg.window, |i| {
            ws.update(
                format!("o{}", i % OWN),
                json!({"v": i, "pad": "0123456789abcdef"}),
            )
        });
        // Every member reads at once, as an application would.
        let watch = try_join_all(self.members.iter_mut().map(|(_, s)| async move {
            let mut resynced = 0;
            while s.view().rev < last_rev {
                match s.next().await {
                    Some(SessionUpdate::Resynced) => resynced += 1,
                    Some(_) => {}
                    None => bail!("a member's session ended ({:?})", s.end()),
                }
            }
            anyhow::Ok(resynced)
        }));
        let (sent, seen) = tokio::join!(send, watch);
        sent.context("sending operations")?;
        let resynced: usize = seen?.into_iter().sum();
        if resynced > 0 {
            tracing::info!(resynced, "members fell behind and took a fresh snapshot");
        }
        Ok(started.elapsed())
    }

    /// Closes every client.
    pub(crate) async fn close(self) {
        for (c, _) in &self.members {
            c.close().await;
        }
        self.writer.close().await;
    }
}

pub(crate) async fn run(server: &Server, cfg: &SessionConfig) -> anyhow::Result<SessionResult> {
    let tag = format!("sess{}", std::process::id());
    let mut busy = Busy::set_up(server, &[server], cfg, &tag).await?;
    let session_time = busy.run(cfg).await?;
    let Busy {
        name,
        writer,
        ws,
        members,
    } = busy;

    // The reference: the same payloads to a room of the same members.
    let mut inboxes: Vec<_> = members.iter().map(|(c, _)| c.on("r")).collect();
    let started = Instant::now();
    let send = pipelined(cfg.ops, cfg.window, |i| {
        writer.emit_room(
            &name,
            "r",
            json!({"v": i, "pad": "0123456789abcdef"}),
            false,
        )
    });
    let watch = try_join_all(inboxes.iter_mut().map(|inbox| async move {
        for _ in 0..cfg.ops {
            inbox
                .recv()
                .await
                .ok_or_else(|| anyhow!("a member stopped receiving"))?;
        }
        anyhow::Ok(())
    }));
    let (sent, seen) = tokio::join!(send, watch);
    sent.context("room emits")?;
    seen?;
    let room_time = started.elapsed();
    for (c, _) in &members {
        c.close().await;
    }

    // Late join: fill a session, then time a new member's snapshot.
    let big = format!("{tag}-big");
    let filler = client(server, cfg, format!("{tag}-f")).await?;
    let fs = filler
        .join_session(Some(&big), SessionMode::Authoritative)
        .await?;
    let started = Instant::now();
    pipelined(cfg.objects, cfg.window, |i| {
        fs.create(
            format!("entity-{i:06}"),
            json!({"x": i % 1000, "y": i / 1000, "z": 0, "kind": "crate"}),
        )
    })
    .await
    .context("filling the session")?;
    let fill = started.elapsed();
    let joiner_id = format!("{tag}-late");
    let joiner = client(server, cfg, joiner_id.clone()).await?;
    let before = bytes_out(server, &joiner_id).await;
    let started = Instant::now();
    let late = joiner
        .join_session(Some(&big), SessionMode::Authoritative)
        .await?;
    let late_join = started.elapsed();
    if late.view().objects.len() != cfg.objects {
        bail!(
            "the snapshot has {} objects, not {}",
            late.view().objects.len(),
            cfg.objects
        );
    }
    let after = bytes_out(server, &joiner_id).await;
    joiner.close().await;
    filler.close().await;
    writer.close().await;
    drop(ws);
    Ok(SessionResult {
        members: cfg.members,
        ops: cfg.ops,
        session_ops_per_s: per_s(cfg.ops, session_time),
        room_msgs_per_s: per_s(cfg.ops, room_time),
        session_deliveries_per_s: per_s(cfg.ops * cfg.members, session_time),
        objects: cfg.objects,
        fill_s: (fill.as_secs_f64() * 100.0).round() / 100.0,
        late_join_ms: (late_join.as_secs_f64() * 10_000.0).round() / 10.0,
        late_join_bytes: before.zip(after).map(|(b, a)| a.saturating_sub(b)),
    })
}

/// The hub's `bytes_out` for a client, from `/status.json` (`None` if unreadable).
async fn bytes_out(server: &Server, id: &str) -> Option<u64> {
    let body = http_get(server.http_host(), "/status.json").await.ok()?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["client_list"]
        .as_array()?
        .iter()
        .find(|c| c["id"] == id)?["bytes_out"]
        .as_u64()
}
