//! `peermesh sim`: the mesh's node logic over a simulated network, with figures.

use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use peermesh_mesh::node::{ConnectionRule, NodeConfig};
use peermesh_mesh::sim::{Sim, SimConfig, SimReport};

pub(crate) const LONG_ABOUT: &str = "\
Run the mesh node's real logic (the sans-IO core that `peermesh node` runs) over an in-memory \
network with per-link latency and virtual time, and print what it delivers.

Nodes join one after another, each bootstrapping from one random earlier node; the network \
settles; then --messages messages go between random live nodes while --churn of the nodes \
are replaced evenly over the sending phase. Only messages whose target was alive from the \
send until 5 s after count. Join probes: a few nodes join after the network formed and \
--probe-senders random nodes send to each of them every half round trip from its first link \
until heard; the slowest is reported in round trips.

A run is a pure function of its flags (--seed included). --rule both runs peermesh's k-bucket \
rule and peer-relay's closest-only rule in the same run and prints them side by side.

Example: peermesh sim --nodes 1000 --messages 10000 --rule both";

/// Which connection rule(s) to simulate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum RuleArg {
    /// peermesh: links that cover the k-buckets, then the closest.
    Buckets,
    /// peer-relay: only the closest candidates.
    Closest,
    /// Both, side by side.
    Both,
}

#[derive(Args, Debug)]
pub(crate) struct SimArgs {
    /// Nodes in the network (kept constant under churn).
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// Fraction of the nodes replaced during the sending phase (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    churn: f64,
    /// Messages sent between random live nodes.
    #[arg(long, default_value_t = 10_000)]
    messages: usize,
    /// Seed of everything random.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Connection rule.
    #[arg(long, value_enum, default_value_t = RuleArg::Buckets)]
    rule: RuleArg,
    /// Links a node dials up to (beyond, only to cover empty buckets).
    #[arg(long, default_value_t = 15)]
    target_peers: usize,
    /// Most links per node, inbound included.
    #[arg(long, default_value_t = 40)]
    max_peers: usize,
    /// Copies the origin sends.
    #[arg(long, default_value_t = 2)]
    fanout: usize,
    /// Copies each relay sends on (peer-relay: 2; with --rule closest and --rule both the
    /// closest rule always uses 2, as peer-relay does).
    #[arg(long, default_value_t = 1)]
    relay_fanout: usize,
    /// Shortest one-way link latency, ms.
    #[arg(long, default_value_t = 5)]
    latency_min_ms: u64,
    /// Longest one-way link latency, ms.
    #[arg(long, default_value_t = 40)]
    latency_max_ms: u64,
    /// Time between two joins, ms.
    #[arg(long, default_value_t = 20)]
    join_interval_ms: u64,
    /// Time between the last join and the first message, s.
    #[arg(long, default_value_t = 130)]
    settle_s: u64,
    /// Time between two messages, ms.
    #[arg(long, default_value_t = 5)]
    send_interval_ms: u64,
    /// Message ids each node remembers to drop duplicates (a node's default: 65,536). Lower
    /// it for very large simulations, whose memory is mostly these caches; duplicates arrive
    /// within a few round trips, long before a few thousand newer ids push them out.
    #[arg(long, default_value_t = 65_536)]
    seen_capacity: usize,
    /// Nodes joining after the network formed whose reachability is measured.
    #[arg(long, default_value_t = 5)]
    join_probes: usize,
    /// Senders per join probe.
    #[arg(long, default_value_t = 100)]
    probe_senders: usize,
    /// Print the report(s) as JSON (one object, or an array for --rule both) instead of a table.
    #[arg(long)]
    json: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

fn config(args: &SimArgs, rule: ConnectionRule) -> anyhow::Result<SimConfig> {
    if !(0.0..=1.0).contains(&args.churn) {
        bail!("--churn is a fraction between 0 and 1, got {}", args.churn);
    }
    if args.nodes < 2 {
        bail!("--nodes must be at least 2");
    }
    if args.latency_max_ms < args.latency_min_ms {
        bail!("--latency-max-ms must be at least --latency-min-ms");
    }
    if args.send_interval_ms == 0 || args.join_interval_ms == 0 {
        bail!("--send-interval-ms and --join-interval-ms must be at least 1");
    }
    Ok(SimConfig {
        nodes: args.nodes,
        churn: args.churn,
        messages: args.messages,
        seed: args.seed,
        node: NodeConfig {
            rule,
            target_peers: args.target_peers,
            max_peers: args.max_peers,
            fanout: args.fanout,
            relay_fanout: if rule == ConnectionRule::Closest {
                2
            } else {
                args.relay_fanout
            },
            reserve_inbound: (args.max_peers / 5).min(args.max_peers.saturating_sub(1)),
            seen_capacity: args.seen_capacity.max(1),
            ..NodeConfig::default()
        },
        latency: (
            Duration::from_millis(args.latency_min_ms),
            Duration::from_millis(args.latency_max_ms),
        ),
        join_interval: Duration::from_millis(args.join_interval_ms),
        settle: Duration::from_secs(args.settle_s),
        send_interval: Duration::from_millis(args.send_interval_ms),
        join_probes: args.join_probes,
        probe_senders: args.probe_senders,
    })
}

fn run_one(cfg: SimConfig, quiet: bool, label: &str) -> anyhow::Result<SimReport> {
    let sim = Sim::new(cfg).context("invalid node options")?;
    let bar = ProgressBar::with_draw_target(
        Some(1000),
        if quiet {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        },
    );
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg} {bar:30} {percent}%")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let label = label.to_string();
    let report = sim.run(&mut |phase, done, total| {
        bar.set_message(format!("{label}: {phase}"));
        bar.set_position(done.saturating_mul(1000) / total.max(1));
    });
    bar.finish_and_clear();
    Ok(report)
}

fn row(name: &str, f: impl Fn(&SimReport) -> String, reports: &[SimReport]) -> String {
    let mut s = format!("{name:<38}");
    for r in reports {
        s.push_str(&format!("{:>16}", f(r)));
    }
    s
}

fn table(reports: &[SimReport]) -> String {
    let mut out = Vec::new();
    out.push(row("", |r| r.rule.to_string(), reports));
    out.push(row("nodes", |r| r.nodes.to_string(), reports));
    out.push(row(
        "churn",
        |r| format!("{:.0}%", r.churn * 100.0),
        reports,
    ));
    out.push(row(
        "mean links per node",
        |r| format!("{:.1}", r.mean_links),
        reports,
    ));
    out.push(row(
        "k-buckets with a link",
        |r| format!("{:.1}%", r.bucket_coverage * 100.0),
        reports,
    ));
    out.push(row(
        "delivery",
        |r| format!("{:.3}%", r.delivery * 100.0),
        reports,
    ));
    out.push(row(
        "delivered / counted",
        |r| format!("{}/{}", r.delivered, r.counted),
        reports,
    ));
    out.push(row("mean hops", |r| format!("{:.2}", r.mean_hops), reports));
    out.push(row("p99 hops", |r| r.p99_hops.to_string(), reports));
    out.push(row(
        "duplicates per delivery",
        |r| format!("{:.2}", r.duplicates_per_delivery),
        reports,
    ));
    out.push(row(
        "messages handled per node (mean)",
        |r| format!("{:.1}", r.handled_per_node),
        reports,
    ));
    out.push(row(
        "messages handled (busiest)",
        |r| r.handled_max.to_string(),
        reports,
    ));
    out.push(row(
        "join probes: senders heard",
        |r| format!("{}/{}", r.join_heard, r.join_senders),
        reports,
    ));
    out.push(row(
        "join: median sender (RTTs)",
        |r| format!("{:.1}", r.join_round_trips_p50),
        reports,
    ));
    out.push(row(
        "join: 90th percentile sender (RTTs)",
        |r| format!("{:.1}", r.join_round_trips_p90),
        reports,
    ));
    out.push(row(
        "join: slowest sender (RTTs)",
        |r| format!("{:.1}", r.join_round_trips_max),
        reports,
    ));
    out.push(row(
        "join bound 2 + 2 x mean hops",
        |r| format!("{:.1}", r.join_round_trips_bound),
        reports,
    ));
    for (k, phase) in ["join", "settle", "send"].into_iter().enumerate() {
        let pick = move |r: &SimReport| r.phases.get(k).cloned().unwrap_or_default();
        out.push(row(
            &format!("{phase}: frames per node per s"),
            |r| format!("{:.2}", pick(r).frames),
            reports,
        ));
        out.push(row(
            &format!("{phase}: links opened per node per s"),
            |r| format!("{:.3}", pick(r).links_opened),
            reports,
        ));
    }
    out.push(row("events simulated", |r| r.events.to_string(), reports));
    out.push(row(
        "virtual time (s)",
        |r| format!("{:.0}", r.virtual_secs),
        reports,
    ));
    out.join("\n")
}

pub(crate) async fn run(args: SimArgs) -> anyhow::Result<()> {
    let rules: Vec<ConnectionRule> = match args.rule {
        RuleArg::Buckets => vec![ConnectionRule::Buckets],
        RuleArg::Closest => vec![ConnectionRule::Closest],
        RuleArg::Both => vec![ConnectionRule::Buckets, ConnectionRule::Closest],
    };
    let mut configs = Vec::new();
    for r in &rules {
        configs.push(config(&args, *r)?);
    }
    let quiet = args.quiet;
    let reports = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<SimReport>> {
        let mut out = Vec::new();
        for cfg in configs {
            let label = match cfg.node.rule {
                ConnectionRule::Buckets => "buckets",
                ConnectionRule::Closest => "closest",
            };
            out.push(run_one(cfg, quiet, label)?);
        }
        Ok(out)
    })
    .await
    .context("the simulation thread failed")??;
    if args.json {
        let text = if reports.len() == 1 {
            serde_json::to_string(&reports[0])?
        } else {
            serde_json::to_string(&reports)?
        };
        println!("{text}");
    } else {
        println!("{}", table(&reports));
    }
    Ok(())
}
