//! Scenario (i): a cluster of hubs — what crossing hubs through NATS costs.
//!
//! The bench starts its own `nats-server -js` (a temporary store directory, a free port) and
//! `hubs` (3) `peermesh serve --cluster nats://… --node-name bench-hub-K` child processes of
//! the same executable, then measures, in one run:
//!
//! 1. **Direct messages, same hub against different hubs**, with the machinery of scenario (a)
//!    (round trips timed by the originator, so one clock): `pairs` originator/echoer pairs
//!    spread round robin over the hubs, first with both ends of every pair on one hub, then
//!    with the echoer on the next hub (a round trip crosses NATS twice), each at the same
//!    offered total rate for the same duration; and the same pairs on a hub without
//!    `--cluster`, as the reference.
//! 2. **Room fan-out**, with the machinery of scenario (b) and `senders` (3) senders: the same
//!    `members` (300) and senders spread over the hubs, all on one hub of the cluster, and all
//!    on a single hub started without `--cluster`. The figure of interest is the hubs' CPU time
//!    (user + system from `/proc/PID/stat`, summed over the hubs) per delivery; nats-server's
//!    is reported apart.
//! 3. **One busy session** (`cluster_sessions`): its writer on the first hub, its members
//!    round robin over the hubs, against the same on a hub without `--cluster`.
//! 4. **A dead hub's ids and session**: the last hub holds a session of `takeover_objects`
//!    objects with a member on two other hubs, and `ids` (200) clients connect to it; it is
//!    killed with SIGKILL; hellos with the same ids go to the other hubs (a few ids every
//!    `poll` until the first is accepted, then every pending id every `poll`) until each is
//!    accepted, while the session's members wait for its takeover.
//!
//! ```text
//!   bench ──ws──► bench-hub-1 ─┐
//!         ──ws──► bench-hub-2 ─┼── nats-server -js (ids, rooms, relayed frames)
//!         ──ws──► bench-hub-3 ─┘
//! ```
//!
//! Order: start, direct (same, cross), NATS alone, fan-out (spread, one hub), the busy
//! session, kill -9 of the last hub, stop the cluster, then the single hub's direct step,
//! fan-out and busy session on a machine without the cluster running.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::future::join_all;
use peermesh_proto::Encoding;
use peermesh_testkit::NatsServer;
use serde::Serialize;
use tokio::sync::Semaphore;

use super::client::{open, ConnectOpts};
use super::cluster_sessions::{busy_step, BusyStep, Takeover, TakeoverResult};
use super::dialect::{Dialect, SetupError};
use super::direct::{self, DirectConfig, DirectStep, Flavor, Rate};
use super::fanout::{self, FanoutConfig, FanoutResult};
use super::nats_floor::{self, FloorConfig, NatsFloor};
use super::progress::{self, Progress};
use super::report::Outcome;
use super::session::SessionConfig;
use super::stats::{Clock, ErrorLog};
use super::target::{http_get, Launch, Measured, Server, Targets};
use super::ws::WsConn;

/// Settings of the cluster scenario.
#[derive(Debug, Clone)]
pub(crate) struct ClusterConfig {
    /// Hubs in the cluster (at least 2).
    pub(crate) hubs: usize,
    /// The `nats-server` executable.
    pub(crate) nats_server: PathBuf,
    /// The `peermesh` executable the hubs run.
    pub(crate) hub_bin: PathBuf,
    /// Arguments after `serve` for every hub (limits, --hub-arg).
    pub(crate) hub_args: Vec<String>,
    /// Encoding between the clients and the hubs.
    pub(crate) encoding: Encoding,
    /// Direct messages: originator/echoer pairs.
    pub(crate) pairs: usize,
    /// Direct messages: offered messages per second (both legs), in both layouts.
    pub(crate) rate: u64,
    /// Fan-out: room members (receivers).
    pub(crate) members: usize,
    /// Fan-out: senders.
    pub(crate) senders: usize,
    /// Fan-out: room messages in flight (all senders together).
    pub(crate) fanout_window: u64,
    /// Dead hub: clients on the hub that is killed.
    pub(crate) ids: usize,
    /// Sessions: the busy session (members, operations, window) and the clients' settings.
    pub(crate) session: SessionConfig,
    /// Dead hub: objects in the session held by the killed hub.
    pub(crate) takeover_objects: usize,
    /// Dead hub: time between two rounds of hellos.
    pub(crate) poll: Duration,
    /// Dead hub: how long to wait for every id.
    pub(crate) release_timeout: Duration,
    /// Payload string length.
    pub(crate) payload: usize,
    /// Warm-up before each measured step.
    pub(crate) warmup: Duration,
    /// Measurement time of each step.
    pub(crate) duration: Duration,
    /// Wait for messages in flight after a step.
    pub(crate) drain: Duration,
    /// Count bound of every send loop.
    pub(crate) max_messages: u64,
    /// Tasks driving the client connections.
    pub(crate) tasks: usize,
    /// Connections opened at the same time.
    pub(crate) concurrency: usize,
    /// Source addresses 127.0.0.1 ..= 127.0.0.N.
    pub(crate) source_ips: u8,
    /// Time allowed for one connection's setup, and for a hub to start.
    pub(crate) connect_timeout: Duration,
    /// Direct messages: alternating rounds of a same-hub and a cross-hub step (each of
    /// `duration / rounds`) after the two long steps; 0 for none.
    pub(crate) rounds: usize,
}

/// Steps the progress display counts: 3 direct, NATS alone, 3 fan-out, 2 sessions, 1 dead hub.
pub(crate) const STEPS: u64 = 10;

/// The figures of the cluster scenario.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ClusterResult {
    /// Hubs in the cluster.
    pub(crate) hubs: usize,
    /// `nats-server --version`.
    pub(crate) nats_server: String,
    /// Measurement time of each step, seconds.
    pub(crate) duration_s: f64,
    /// Direct messages, same hub against different hubs (and a hub without a cluster).
    pub(crate) direct: ClusterDirect,
    /// Room fan-out: single hub, one hub of the cluster, spread over the cluster.
    pub(crate) fanout: ClusterFanout,
    /// One busy session, members spread over the cluster against one hub.
    pub(crate) sessions: ClusterSessions,
    /// Time until a killed hub's ids are accepted by another hub.
    pub(crate) dead_hub: Outcome<DeadHub>,
    /// The session the killed hub held: taken over by another.
    pub(crate) takeover: Outcome<TakeoverResult>,
}

/// One busy session in two layouts.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ClusterSessions {
    /// Writer and members on one hub started without `--cluster`.
    pub(crate) single_hub: Outcome<BusyStep>,
    /// The writer on the first hub (the session's home), members round robin over the hubs.
    pub(crate) cluster_spread: Outcome<BusyStep>,
    /// Hub CPU per operation, spread over the cluster ÷ single hub.
    pub(crate) cpu_ratio: Option<f64>,
}

/// Direct messages: both layouts at the same offered rate.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ClusterDirect {
    /// Originator/echoer pairs.
    pub(crate) pairs: usize,
    /// Offered messages per second (both legs of every round trip).
    pub(crate) offered_msgs_per_s: u64,
    /// What the latency is.
    pub(crate) latency: &'static str,
    /// The same pairs on one hub started without `--cluster` (the reference).
    pub(crate) single_hub: Outcome<DirectStep>,
    /// Both ends of every pair on one hub (pairs spread over the hubs).
    pub(crate) same_hub: Outcome<DirectStep>,
    /// Messages the hubs relayed through NATS during the same-hub step (expected 0).
    pub(crate) same_hub_relayed: Option<u64>,
    /// The echoer on the hub after its originator's.
    pub(crate) cross_hub: Outcome<DirectStep>,
    /// Messages the hubs relayed through NATS during the cross-hub step.
    pub(crate) cross_hub_relayed: Option<u64>,
    /// The reference under the cross-hub figures: two plain NATS clients, a round trip
    /// through the same nats-server at the same offered rate (no hub).
    pub(crate) nats_alone: Outcome<NatsFloor>,
    /// Cross-hub p99 ÷ same-hub p99 (both in the cluster).
    pub(crate) p99_ratio: Option<f64>,
    /// Cross-hub p99 ÷ the p99 of the hub without a cluster.
    pub(crate) cross_vs_single_p99_ratio: Option<f64>,
    /// Alternating short rounds, same hub then different hubs: drift of the machine between
    /// the two long steps weighs on one ratio, not on the median of these.
    pub(crate) rounds: Vec<Round>,
    /// The median of the rounds' p99 ratios (cross ÷ same).
    pub(crate) median_round_ratio: Option<f64>,
}

/// One round of the alternating direct steps.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Round {
    /// Same-hub p99, µs.
    pub(crate) same_p99_us: f64,
    /// Cross-hub p99, µs.
    pub(crate) cross_p99_us: f64,
    /// Cross ÷ same.
    pub(crate) ratio: f64,
}

/// The median of the rounds' ratios (the mean of the middle two for an even count).
fn median_ratio(rounds: &[Round]) -> Option<f64> {
    let mut r: Vec<f64> = rounds.iter().map(|r| r.ratio).collect();
    r.sort_by(f64::total_cmp);
    let n = r.len();
    let m = match n {
        0 => return None,
        _ if n % 2 == 1 => r[n / 2],
        _ => (r[n / 2 - 1] + r[n / 2]) / 2.0,
    };
    Some((m * 100.0).round() / 100.0)
}

/// Room fan-out in three layouts.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ClusterFanout {
    /// Members and senders on one hub started without `--cluster`.
    pub(crate) single_hub: Outcome<FanoutResult>,
    /// Members and senders all on the first hub of the cluster (CPU summed over every hub).
    pub(crate) cluster_one_hub: Outcome<FanoutResult>,
    /// Members and senders spread round robin over the hubs.
    pub(crate) cluster_spread: Outcome<FanoutResult>,
    /// Hub CPU per delivery, spread over the cluster ÷ single hub.
    pub(crate) cpu_ratio: Option<f64>,
}

/// A killed hub's ids, accepted again by the others.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct DeadHub {
    /// Clients connected to the killed hub (its ids).
    pub(crate) clients: usize,
    /// Ids accepted by another hub before the timeout.
    pub(crate) accepted: usize,
    /// Seconds from the kill to the first id accepted elsewhere.
    pub(crate) first_s: Option<f64>,
    /// Seconds from the kill until half the ids were accepted.
    pub(crate) median_s: Option<f64>,
    /// Seconds from the kill until every id was accepted (absent if some never were).
    pub(crate) all_s: Option<f64>,
    /// Time between two rounds of hellos, ms (the resolution of the figures).
    pub(crate) poll_ms: u64,
    /// Hellos sent after the kill.
    pub(crate) hellos: u64,
    /// Hellos answered `id_taken` (the id not released yet).
    pub(crate) refused: u64,
    /// Other failures.
    pub(crate) errors: u64,
    /// The first of them.
    pub(crate) first_error: Option<String>,
}

/// The running cluster: its broker and hubs.
struct Running {
    nats: NatsServer,
    hubs: Vec<Server>,
}

impl Running {
    fn measured(&self) -> Measured {
        Measured {
            servers: self.hubs.iter().filter_map(|h| h.pid).collect(),
            broker: self.nats.pid().into_iter().collect(),
        }
    }

    /// Clients on the first `on` hubs (round robin); CPU of every hub and of NATS.
    fn targets(&self, on: usize) -> Targets {
        Targets {
            endpoints: self
                .hubs
                .iter()
                .take(on.max(1))
                .map(|h| h.endpoint.clone())
                .collect(),
            measured: self.measured(),
        }
    }

    async fn stop(self) {
        for h in self.hubs {
            h.stop().await;
        }
        let mut nats = self.nats;
        let _ = tokio::task::spawn_blocking(move || nats.kill()).await;
    }
}

/// Runs the scenario.
pub(crate) async fn run(
    cfg: &ClusterConfig,
    clock: Clock,
    progress: &Progress,
    tag: &str,
) -> anyhow::Result<ClusterResult> {
    if cfg.hubs < 2 {
        bail!("a cluster needs at least 2 hubs");
    }
    let nats_version = nats_version(&cfg.nats_server).await;
    progress.set_step(&format!(
        "cluster: starting nats-server and {} hubs",
        cfg.hubs
    ));
    let cluster = start(cfg).await?;
    let connect = ConnectOpts::new(
        &cluster.hubs[0].endpoint.url,
        cfg.source_ips,
        cfg.connect_timeout,
    );

    // 1. Direct messages, both layouts at the same offered rate.
    let all = cluster.targets(cfg.hubs);
    let (same, same_relayed) = direct_step(
        &all,
        &cluster.hubs,
        0,
        "cluster same-hub",
        cfg.duration,
        cfg,
        &connect,
        clock,
        progress,
        &format!("{tag}ds-"),
    )
    .await;
    let (cross, cross_relayed) = direct_step(
        &all,
        &cluster.hubs,
        1,
        "cluster cross-hub",
        cfg.duration,
        cfg,
        &connect,
        clock,
        progress,
        &format!("{tag}dx-"),
    )
    .await;

    // Alternating short rounds: the ratio of each, and their median.
    let mut rounds = Vec::new();
    let round = (cfg.duration / u32::try_from(cfg.rounds.max(1)).unwrap_or(1))
        .max(Duration::from_millis(100));
    for k in 0..cfg.rounds {
        let mut p99 = [None, None];
        for (shift, layout) in [(0, "same-hub"), (1, "cross-hub")] {
            let (r, _) = direct_step(
                &all,
                &cluster.hubs,
                shift,
                &format!("cluster {layout} round {}/{}", k + 1, cfg.rounds),
                round,
                cfg,
                &connect,
                clock,
                progress,
                &format!("{tag}r{k}{shift}-"),
            )
            .await;
            p99[shift] = r.ok().map(|s| s.rtt.p99_us).filter(|v| *v > 0.0);
        }
        if let [Some(same_p99_us), Some(cross_p99_us)] = p99 {
            rounds.push(Round {
                same_p99_us,
                cross_p99_us,
                ratio: (cross_p99_us / same_p99_us * 100.0).round() / 100.0,
            });
        }
    }

    // What the two crossings of the broker cost without any hub, at the same rate.
    let floor = nats_floor::run(
        &FloorConfig {
            url: cluster.nats.url(),
            rate: cfg.rate,
            payload: cfg.payload,
            warmup: cfg.warmup,
            duration: cfg.duration,
            drain: cfg.drain,
        },
        &cluster.measured(),
        clock,
        progress,
    )
    .await;
    if let Err(e) = &floor {
        progress.step_done();
        progress.println(&format!("nats-server alone failed: {e:#}"));
    }

    // 2. Fan-out, spread and on one hub of the cluster.
    let spread = fanout_step(
        &cluster.targets(cfg.hubs),
        cfg,
        &connect,
        clock,
        progress,
        &format!("{tag}fs-"),
    )
    .await;
    let one_hub = fanout_step(
        &cluster.targets(1),
        cfg,
        &connect,
        clock,
        progress,
        &format!("{tag}f1-"),
    )
    .await;

    // 3. One busy session, its members spread over the hubs.
    progress.set_step("cluster: one busy session, members on every hub");
    let hubs: Vec<&Server> = cluster.hubs.iter().collect();
    let sessions_spread = busy_step(
        &hubs,
        &cluster.measured(),
        &cfg.session,
        &format!("{tag}ss"),
    )
    .await;
    progress.step_done();
    if let Err(e) = &sessions_spread {
        progress.println(&format!("cluster session (spread) failed: {e:#}"));
    }

    // 4. kill -9 of the last hub, which holds a session with members on the others.
    let mut cluster = cluster;
    let (dead_hub, takeover) =
        dead_hub(&mut cluster, cfg, &connect, progress, &format!("{tag}d-")).await;
    if let Err(e) = &takeover {
        progress.println(&format!("session takeover failed: {e:#}"));
    }
    let (dead_hub, takeover) = (
        Outcome::from_result(dead_hub),
        Outcome::from_result(takeover),
    );
    cluster.stop().await;

    // The reference: the same direct pairs and fan-out on one hub without a cluster.
    progress.set_step("single hub: starting");
    let launch = Launch::Hub {
        bin: cfg.hub_bin.clone(),
        args: cfg.hub_args.clone(),
    };
    let (single_direct, single, sessions_single) = match Server::start(
        &launch,
        Dialect::Peermesh(cfg.encoding),
        cfg.connect_timeout,
    )
    .await
    {
        Err(e) => {
            progress.step_done();
            progress.step_done();
            progress.step_done();
            (
                Err(anyhow::anyhow!("{e:#}")),
                Err(anyhow::anyhow!("{e:#}")),
                Err(e),
            )
        }
        Ok(server) => {
            let (d, _) = direct_step(
                &server.targets(),
                &[],
                0,
                "single hub",
                cfg.duration,
                cfg,
                &connect,
                clock,
                progress,
                &format!("{tag}d0-"),
            )
            .await;
            let f = fanout_step(
                &server.targets(),
                cfg,
                &connect,
                clock,
                progress,
                &format!("{tag}f0-"),
            )
            .await;
            progress.set_step("single hub: one busy session");
            let s = busy_step(
                &[&server],
                &server.measured(),
                &cfg.session,
                &format!("{tag}s0"),
            )
            .await;
            progress.step_done();
            if let Err(e) = &s {
                progress.println(&format!("single hub session failed: {e:#}"));
            }
            server.stop().await;
            (d, f, s)
        }
    };
    for (what, r) in [
        ("cluster fan-out (spread)", &spread),
        ("cluster fan-out (one hub)", &one_hub),
        ("single hub fan-out", &single),
    ] {
        if let Err(e) = r {
            progress.println(&format!("{what} failed: {e:#}"));
        }
    }
    let cpu = |r: &anyhow::Result<FanoutResult>| {
        r.as_ref()
            .ok()
            .and_then(|x| x.server_cpu_us_per_delivery)
            .filter(|v| *v > 0.0)
    };
    let cpu_ratio = cpu(&spread)
        .zip(cpu(&single))
        .map(|(a, b)| (a / b * 100.0).round() / 100.0);
    let op_cpu = |r: &anyhow::Result<BusyStep>| {
        r.as_ref()
            .ok()
            .and_then(|x| x.hub_cpu_us_per_op)
            .filter(|v| *v > 0.0)
    };
    let session_cpu_ratio = op_cpu(&sessions_spread)
        .zip(op_cpu(&sessions_single))
        .map(|(a, b)| (a / b * 100.0).round() / 100.0);
    Ok(ClusterResult {
        hubs: cfg.hubs,
        nats_server: nats_version,
        duration_s: cfg.duration.as_secs_f64(),
        direct: ClusterDirect {
            pairs: cfg.pairs,
            offered_msgs_per_s: cfg.rate,
            latency: "round trip (originator -> hub -> echoer -> hub -> originator), one clock",
            p99_ratio: p99_ratio(&cross, &same),
            cross_vs_single_p99_ratio: p99_ratio(&cross, &single_direct),
            median_round_ratio: median_ratio(&rounds),
            rounds,
            single_hub: Outcome::from_result(single_direct),
            same_hub: Outcome::from_result(same),
            same_hub_relayed: same_relayed,
            cross_hub: Outcome::from_result(cross),
            cross_hub_relayed: cross_relayed,
            nats_alone: Outcome::from_result(floor),
        },
        fanout: ClusterFanout {
            single_hub: Outcome::from_result(single),
            cluster_one_hub: Outcome::from_result(one_hub),
            cluster_spread: Outcome::from_result(spread),
            cpu_ratio,
        },
        sessions: ClusterSessions {
            single_hub: Outcome::from_result(sessions_single),
            cluster_spread: Outcome::from_result(sessions_spread),
            cpu_ratio: session_cpu_ratio,
        },
        dead_hub,
        takeover,
    })
}

/// `nats-server v2.9.10` (from `nats-server --version`), or `?`.
async fn nats_version(bin: &std::path::Path) -> String {
    match tokio::process::Command::new(bin)
        .arg("--version")
        .output()
        .await
    {
        // `nats-server: v2.9.10`
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout);
            let version = text.trim().trim_start_matches("nats-server:").trim();
            format!("nats-server {version}")
        }
        Err(_) => "?".to_owned(),
    }
}

/// Starts nats-server and the hubs, and waits until every hub sees every other.
async fn start(cfg: &ClusterConfig) -> anyhow::Result<Running> {
    let bin = cfg.nats_server.clone();
    let nats = tokio::task::spawn_blocking(move || NatsServer::try_start(bin))
        .await
        .context("starting nats-server")?
        .map_err(|e| anyhow::anyhow!(e))?;
    let mut hubs: Vec<Server> = Vec::with_capacity(cfg.hubs);
    let mut failed: Option<anyhow::Error> = None;
    for k in 1..=cfg.hubs {
        let mut args = cfg.hub_args.clone();
        args.extend([
            "--cluster".to_owned(),
            nats.url(),
            "--node-name".to_owned(),
            format!("bench-hub-{k}"),
        ]);
        let launch = Launch::Hub {
            bin: cfg.hub_bin.clone(),
            args,
        };
        match Server::start(
            &launch,
            Dialect::Peermesh(cfg.encoding),
            cfg.connect_timeout,
        )
        .await
        {
            Ok(s) => hubs.push(s),
            Err(e) => {
                failed = Some(e.context(format!("starting bench-hub-{k}")));
                break;
            }
        }
    }
    let cluster = Running { nats, hubs };
    if let Some(e) = failed {
        cluster.stop().await;
        return Err(e);
    }
    // Every hub hears every other's heartbeat (one a second) before anything is measured.
    let deadline = Instant::now() + cfg.connect_timeout + Duration::from_secs(10);
    loop {
        let mut seen = Vec::new();
        for h in &cluster.hubs {
            seen.push(
                cluster_status(h)
                    .await
                    .map_or(0, |s| s["nodes"].as_array().map_or(0, Vec::len)),
            );
        }
        if seen.iter().all(|&n| n == cfg.hubs) {
            break;
        }
        if Instant::now() >= deadline {
            cluster.stop().await;
            bail!("the hubs did not all see each other (nodes seen by each: {seen:?})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(cluster)
}

/// The `cluster` object of a hub's `/status.json`.
async fn cluster_status(hub: &Server) -> Option<serde_json::Value> {
    let body = http_get(hub.http_host(), "/status.json").await.ok()?;
    let mut v: serde_json::Value = serde_json::from_str(&body).ok()?;
    Some(v["cluster"].take())
}

/// NATS messages all hubs published to other hubs so far.
pub(crate) async fn relayed<'a>(hubs: impl IntoIterator<Item = &'a Server>) -> Option<u64> {
    let mut total = 0;
    for h in hubs {
        total += cluster_status(h).await?["sent"].as_u64()?;
    }
    Some(total)
}

/// One direct-message step at the configured rate with echoers `shift` hubs after their
/// originators; also the messages the hubs relayed to each other meanwhile.
#[allow(clippy::too_many_arguments)]
async fn direct_step(
    targets: &Targets,
    hubs: &[Server],
    shift: usize,
    label: &str,
    duration: Duration,
    cfg: &ClusterConfig,
    connect: &ConnectOpts,
    clock: Clock,
    progress: &Progress,
    tag: &str,
) -> (anyhow::Result<DirectStep>, Option<u64>) {
    let dcfg = DirectConfig {
        flavor: Flavor::Direct,
        pairs: cfg.pairs,
        rates: vec![Rate::Fixed(cfg.rate)],
        window: 1,
        payload: cfg.payload,
        warmup: cfg.warmup,
        duration,
        drain: cfg.drain,
        max_messages: cfg.max_messages,
        tasks: cfg.tasks,
        connect: connect.clone(),
        echo_shift: shift,
        label: format!("{label} direct"),
    };
    let before = relayed(hubs).await;
    let r = direct::run(targets, &dcfg, clock, progress, tag)
        .await
        .and_then(|mut v| v.pop().context("the direct step measured nothing"));
    let after = relayed(hubs).await;
    if let Err(e) = &r {
        progress.println(&format!("{label} direct failed: {e:#}"));
    }
    (r, after.zip(before).map(|(a, b)| a.saturating_sub(b)))
}

/// p99 of `a` ÷ p99 of `b`.
fn p99_ratio(a: &anyhow::Result<DirectStep>, b: &anyhow::Result<DirectStep>) -> Option<f64> {
    let p99 =
        |r: &anyhow::Result<DirectStep>| r.as_ref().ok().map(|s| s.rtt.p99_us).filter(|v| *v > 0.0);
    p99(a)
        .zip(p99(b))
        .map(|(x, y)| (x / y * 100.0).round() / 100.0)
}

async fn fanout_step(
    targets: &Targets,
    cfg: &ClusterConfig,
    connect: &ConnectOpts,
    clock: Clock,
    progress: &Progress,
    tag: &str,
) -> anyhow::Result<FanoutResult> {
    let fcfg = FanoutConfig {
        members: cfg.members,
        senders: cfg.senders,
        room: format!("{tag}room"),
        window: cfg.fanout_window,
        payload: cfg.payload,
        warmup: cfg.warmup,
        duration: cfg.duration,
        drain: cfg.drain,
        max_messages: cfg.max_messages,
        // Join notifications cross the cluster's registry; give them time to settle.
        settle: Duration::from_secs(1),
        tasks: cfg.tasks,
        concurrency: cfg.concurrency,
        connect: connect.clone(),
    };
    fanout::run(targets, &fcfg, clock, progress, tag).await
}

/// Connects `ids` clients to the last hub, and makes it the home of a session with members
/// on two others; kills it with SIGKILL, and polls the other hubs with the same ids until
/// each is accepted while the session's members wait for its takeover.
async fn dead_hub(
    cluster: &mut Running,
    cfg: &ClusterConfig,
    connect: &ConnectOpts,
    progress: &Progress,
    tag: &str,
) -> (anyhow::Result<DeadHub>, anyhow::Result<TakeoverResult>) {
    let Some(victim) = cluster.hubs.pop() else {
        progress.step_done();
        let e = || anyhow::anyhow!("internal: no hub to kill");
        return (Err(e()), Err(e()));
    };
    let name = format!("bench-hub-{}", cfg.hubs);
    progress.set_step(&format!(
        "cluster: a session of {} objects and {} clients on {name}",
        cfg.takeover_objects, cfg.ids
    ));
    let takeover = Takeover::set_up(
        &victim,
        &cluster.hubs,
        cfg.takeover_objects,
        &cfg.session,
        &format!("{tag}s"),
    )
    .await;
    let r = ids_of_a_dead_hub(victim, &cluster.hubs, cfg, connect, progress, tag, takeover).await;
    progress.step_done();
    r
}

/// The body of [`dead_hub`], from the victim's clients to the last id accepted elsewhere.
#[allow(clippy::too_many_arguments)]
async fn ids_of_a_dead_hub(
    victim: Server,
    survivors: &[Server],
    cfg: &ClusterConfig,
    connect: &ConnectOpts,
    progress: &Progress,
    tag: &str,
    takeover: anyhow::Result<Takeover>,
) -> (anyhow::Result<DeadHub>, anyhow::Result<TakeoverResult>) {
    let name = format!("bench-hub-{}", cfg.hubs);
    let ids: Vec<String> = (0..cfg.ids).map(|i| format!("{tag}{i}")).collect();

    // Connect every client to the victim.
    let bar = progress.counter(&format!("connecting to {name}"), cfg.ids as u64);
    let permits = Semaphore::new(cfg.concurrency.max(1));
    let opened = join_all(ids.iter().enumerate().map(|(i, id)| {
        let (permits, bar, victim, name) = (&permits, &bar, &victim, &name);
        async move {
            let _permit = permits.acquire().await;
            let r = open(&victim.endpoint, id, i, 512, connect).await;
            bar.inc(1);
            r.with_context(|| format!("connecting {id} to {name}"))
        }
    }))
    .await;
    progress::done(&bar);
    let held: Vec<WsConn> = match opened.into_iter().collect::<anyhow::Result<Vec<_>>>() {
        Ok(v) => v,
        Err(e) => {
            victim.kill().await;
            return (
                Err(e),
                Err(anyhow::anyhow!("not measured: the ids step failed")),
            );
        }
    };
    // The other hubs learn the claims through the registry's watch.
    tokio::time::sleep(Duration::from_millis(500)).await;

    progress.set_step(&format!(
        "cluster: kill -9 {name}; hellos to the others until its ids are accepted"
    ));
    let bar = progress.timed("waiting for the ids", cfg.release_timeout);
    let killed = Instant::now();
    victim.kill().await;
    drop(held);
    let watch = async {
        match takeover {
            Ok(t) => t.watch(killed, cfg.release_timeout).await,
            Err(e) => Err(e.context("setting up the session on the killed hub")),
        }
    };
    let (ids, takeover) = tokio::join!(poll_ids(survivors, &ids, killed, cfg, connect), watch);
    progress::done(&bar);
    (Ok(ids), takeover)
}

/// Hellos with `ids` to the `survivors` until each is accepted (or the timeout).
async fn poll_ids(
    survivors: &[Server],
    ids: &[String],
    killed: Instant,
    cfg: &ClusterConfig,
    connect: &ConnectOpts,
) -> DeadHub {
    let mut accepted_at: Vec<Option<Duration>> = vec![None; cfg.ids];
    let mut pending: Vec<usize> = (0..cfg.ids).collect();
    let mut kept: Vec<WsConn> = Vec::new();
    let hellos = AtomicU64::new(0);
    let refused = AtomicU64::new(0);
    let errors = ErrorLog::default();
    let permits = Arc::new(Semaphore::new(cfg.concurrency.max(1)));
    // Before the first acceptance, a few ids per round (rotating); then every pending id.
    const PROBES: usize = 4;
    let mut round = 0usize;
    while !pending.is_empty() && killed.elapsed() < cfg.release_timeout {
        let round_start = Instant::now();
        let batch: Vec<usize> = if pending.len() < cfg.ids {
            pending.clone()
        } else {
            (0..PROBES.min(pending.len()))
                .map(|k| pending[(round * PROBES + k) % pending.len()])
                .collect()
        };
        let results = join_all(batch.iter().map(|&i| {
            let hub = &survivors[(i + round) % survivors.len()];
            let (permits, hellos, id) = (&permits, &hellos, &ids[i]);
            async move {
                let _permit = permits.acquire().await;
                hellos.fetch_add(1, Ordering::Relaxed);
                let r = open(&hub.endpoint, id, i, 512, connect).await;
                (i, r, killed.elapsed())
            }
        }))
        .await;
        for (i, r, at) in results {
            match r {
                Ok(conn) => {
                    accepted_at[i] = Some(at);
                    kept.push(conn);
                }
                Err(SetupError::Refused(why)) if why.starts_with("id_taken") => {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => errors.record(format!("{}: {e}", ids[i])),
            }
        }
        pending.retain(|&i| accepted_at[i].is_none());
        round += 1;
        tokio::time::sleep_until((round_start + cfg.poll).into()).await;
    }
    for conn in kept {
        conn.close().await;
    }
    let mut times: Vec<Duration> = accepted_at.iter().flatten().copied().collect();
    times.sort();
    let secs = |d: Duration| (d.as_secs_f64() * 100.0).round() / 100.0;
    DeadHub {
        clients: cfg.ids,
        accepted: times.len(),
        first_s: times.first().map(|d| secs(*d)),
        median_s: times.get(cfg.ids / 2).map(|d| secs(*d)),
        all_s: (times.len() == cfg.ids)
            .then(|| times.last().map(|d| secs(*d)))
            .flatten(),
        poll_ms: u64::try_from(cfg.poll.as_millis()).unwrap_or(u64::MAX),
        hellos: hellos.load(Ordering::Relaxed),
        refused: refused.load(Ordering::Relaxed),
        errors: errors.count(),
        first_error: errors.first(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rounds(ratios: &[f64]) -> Vec<Round> {
        ratios
            .iter()
            .map(|&ratio| Round {
                same_p99_us: 100.0,
                cross_p99_us: 100.0 * ratio,
                ratio,
            })
            .collect()
    }

    #[test]
    fn the_median_round_ratio_ignores_one_outlier_either_way() {
        assert_eq!(median_ratio(&[]), None);
        assert_eq!(median_ratio(&rounds(&[2.5])), Some(2.5));
        assert_eq!(median_ratio(&rounds(&[9.0, 2.4, 2.6, 0.5, 2.5])), Some(2.5));
        assert_eq!(median_ratio(&rounds(&[2.0, 3.0])), Some(2.5));
        assert_eq!(median_ratio(&rounds(&[3.0, 1.0, 2.0, 10.0])), Some(2.5));
    }
}
