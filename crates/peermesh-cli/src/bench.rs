//! `peermesh bench`: a load generator that measures a peermesh hub and, in the same run and on
//! the same machine, a Socket.IO 4 reference server, and prints both side by side.
//!
//! Scenarios: (a) direct messages between client pairs at fixed offered rates and at the
//! maximum, with round-trip percentiles; (b) room fan-out from one sender to N members; (c) the
//! server's memory per idle connection; (d) stream throughput between two clients through the
//! hub against a plain TCP relay; (f) RPC calls through the hub against Socket.IO's
//! `emitWithAck` answered by a second client; (g) delivery under drops: clients behind fault
//! proxies that reset them periodically, against Socket.IO with and without connection state
//! recovery; (i) a cluster of hubs on its own nats-server: direct messages on one hub against
//! across hubs, room fan-out spread over the hubs against one hub, and the time until a
//! killed hub's ids are accepted elsewhere. `docs/benchmarks.md` explains the method and holds
//! measured figures.
//!
//! ```text
//!  run ──► for each scenario ──► for each server (peermesh, socket.io)
//!            │                      start (or attach) ─► scenario::run ─► stop
//!            └─► Report ─► table (stdout, or stderr with --json) + JSON (stdout)
//! ```
//!
//! # Layout
//!
//! - `ws`: a minimal allocation-free WebSocket client (batched, masked-in-place writes).
//! - `dialect`: the peermesh and Socket.IO wire formats; frame templates encoded once.
//! - `client`: opening clients from several loopback source addresses.
//! - `target`: spawning/attaching servers; RSS and CPU time from `/proc`.
//! - `stats`: clock, measurement windows, histograms, error logs.
//! - `direct`, `fanout`, `idle`, `stream`, `session`, `drops`, `cluster`: the scenarios
//!   (`cluster_sessions`: the cluster's busy session and the takeover of a dead hub's session).
//! - `report`: JSON and the summary table.
//! - `progress`: indicatif bars.

mod client;
mod cluster;
mod cluster_sessions;
mod dialect;
mod direct;
mod drops;
mod fanout;
mod idle;
mod nats_floor;
mod progress;
mod report;
mod session;
mod stats;
mod stream;
mod target;
mod ws;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use peermesh_proto::Encoding;

use client::ConnectOpts;
use cluster::ClusterConfig;
use dialect::Dialect;
use direct::{DirectConfig, Flavor, Rate};
use drops::DropsConfig;
use fanout::FanoutConfig;
use idle::IdleConfig;
use progress::Progress;
use report::{DropsSides, Machine, Outcome, Report, ServerInfo, Settings, Side};
use stats::Clock;
use target::{Launch, Server};

/// Arguments of `peermesh bench`.
///
/// Measures a hub (a running one at URL, or one it spawns with --spawn; the cluster scenario
/// always spawns its own) and, unless
/// --no-reference, a Socket.IO 4 server (bench/socketio, started with node) through the same
/// scenarios, then prints a table of both side by side. Every step is bounded in time
/// (--warmup + --duration + --drain) and in count (--max-messages).
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
    peermesh bench --spawn\n  \
    peermesh bench --spawn --no-reference --scenarios fanout --members 2000\n  \
    peermesh bench --spawn --scenario drops --clients 2000 --duration 60s\n  \
    peermesh bench ws://127.0.0.1:7070/ws --hub-pid 1234 --json\n  \
    peermesh bench --scenarios cluster --cluster-rate 10000 --duration 10s\n\n\
The drops scenario (not in the default list): every client reaches the server through a TCP \
fault proxy of its own that resets the connection every --cut-every (each client at its own \
phase) and refuses it for --down after each cut; one publisher on a direct connection sends \
--rate messages per second to each client by id for --duration. peermesh clients resume \
(hello with resume, secret and last_seq; receipts; frames deduplicated by seq); the Socket.IO \
clients run twice, against the default server (a reconnection is a new session) and against \
one with connection state recovery (reconnect with pid and offset). Reported per server: \
messages sent, delivered exactly once, lost, duplicated, out of order, cuts, reconnects, \
resumed or not, latency of ordinary deliveries and of replays (messages sent while their \
client was away), server RSS and CPU.\n\n\
The cluster scenario (not in the default list; needs nats-server): starts nats-server -js and \
--cluster-hubs `peermesh serve --cluster` processes of --hub-bin, then measures direct-message \
round trips with both ends of every pair on one hub against ends on different hubs (--pairs, \
--cluster-rate, --duration [default 10s]), room fan-out of --cluster-senders to \
--cluster-members spread over the hubs against all on one hub and against a hub without \
--cluster (deliveries/s, hub CPU per delivery), one busy session with --session-members \
spread over the hubs against one hub (--session-ops; ops/s, hub CPU per operation), and, after \
a hub is killed with SIGKILL, the time until its --cluster-ids ids are accepted by another hub \
and until its session of --cluster-session-objects objects is taken over with all of them.")]
pub(crate) struct BenchArgs {
    /// WebSocket URL of a running hub, e.g. ws://127.0.0.1:7070/ws (or use --spawn; not
    /// needed when only the cluster scenario runs).
    #[arg(conflicts_with = "spawn")]
    url: Option<String>,

    /// Start `peermesh serve --listen 127.0.0.1:0` as a child process, a fresh one per
    /// scenario, with generous limits (see --hub-arg to add flags).
    #[arg(long)]
    spawn: bool,

    /// Process id of the hub at URL: needed for the idle scenario (RSS) and CPU figures.
    #[arg(long, value_name = "PID")]
    hub_pid: Option<u32>,

    /// The peermesh executable that --spawn starts [default: this executable].
    #[arg(long, value_name = "PATH")]
    hub_bin: Option<PathBuf>,

    /// Extra argument passed to the spawned `peermesh serve` (repeatable), e.g.
    /// --hub-arg=--config=peermesh.toml.
    #[arg(long = "hub-arg", value_name = "ARG", allow_hyphen_values = true)]
    hub_args: Vec<String>,

    /// Do not add the generous --max-clients/--rate-per-sec/--rate-burst limits to the
    /// spawned hub's command line.
    #[arg(long)]
    no_hub_limits: bool,

    /// Encoding between the clients and the hub (Socket.IO always uses its JSON text format).
    #[arg(long, value_enum, default_value_t = EncodingArg::Json)]
    encoding: EncodingArg,

    /// Scenarios to run, comma-separated: direct, fanout, idle, stream, rpc, session, drops,
    /// cluster.
    #[arg(
        long,
        alias = "scenario",
        value_enum,
        value_delimiter = ',',
        default_value = "direct,fanout,idle,stream,rpc"
    )]
    scenarios: Vec<Scenario>,

    /// RPC scenario: offered calls per second, comma-separated; `max` keeps --window calls in
    /// flight per caller instead.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "10000,max",
        value_parser = Rate::parse,
        value_name = "RATES"
    )]
    rpc_rates: Vec<Rate>,

    /// Stream scenario: MiB per transfer.
    #[arg(long, default_value_t = 512, value_name = "MIB")]
    stream_mib: u64,

    /// Stream scenario: receive window of both clients, KiB (the client's default).
    #[arg(long, default_value_t = peermesh_proto::stream::DEFAULT_WINDOW >> 10, value_name = "KIB")]
    stream_window_kib: u64,

    /// Stream scenario: transfers through the hub and through the TCP relay (alternating);
    /// the median of each is reported.
    #[arg(long, default_value_t = 3, value_name = "N")]
    stream_rounds: usize,

    /// Session and cluster scenarios: members besides the writer (in the cluster, round robin
    /// over the hubs, the writer on the first).
    #[arg(long, default_value_t = 10, value_name = "N")]
    session_members: usize,

    /// Session and cluster scenarios: operations (and, for the session scenario's reference,
    /// room messages) the writer sends.
    #[arg(long, default_value_t = 50_000, value_name = "N")]
    session_ops: usize,

    /// Session scenario: objects in the late-join session.
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    session_objects: usize,

    /// Cluster scenario: hubs in the cluster.
    #[arg(long, default_value_t = 3, value_name = "N", value_parser = clap::value_parser!(u8).range(2..=16))]
    cluster_hubs: u8,

    /// Cluster scenario: offered messages per second (both legs of every round trip) of the
    /// same-hub and the cross-hub direct steps.
    #[arg(long, default_value = "10000", value_parser = parse_fixed_rate, value_name = "RATE")]
    cluster_rate: u64,

    /// Cluster scenario: after the same-hub and the cross-hub direct steps, this many
    /// alternating rounds of both (each of --duration / N), reported with the median of their
    /// p99 ratios, which the target is checked against; 0 for none
    #[arg(long, default_value_t = 5, value_name = "N")]
    cluster_rounds: usize,

    /// Cluster scenario: room members, spread round robin over the hubs (or all on one).
    #[arg(long, default_value_t = 300, value_name = "N")]
    cluster_members: usize,

    /// Cluster scenario: room senders (one per hub by default), sharing --fanout-window.
    #[arg(long, default_value_t = 3, value_name = "N")]
    cluster_senders: usize,

    /// Cluster scenario: clients on the hub that is killed (their ids must be accepted by
    /// another hub).
    #[arg(long, default_value_t = 200, value_name = "N")]
    cluster_ids: usize,

    /// Cluster scenario: objects of the session held by the hub that is killed (another hub
    /// must take it over with all of them).
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    cluster_session_objects: usize,

    /// Cluster scenario: the nats-server executable (started with -js on a free port).
    #[arg(long, default_value = "nats-server", value_name = "PATH")]
    nats_server: PathBuf,

    /// Skip the Socket.IO reference server.
    #[arg(long)]
    no_reference: bool,

    /// Directory of the Socket.IO reference server (server.js; run `npm ci` there first)
    /// [default: ./bench/socketio, else the source tree's].
    #[arg(long, value_name = "DIR")]
    socketio_dir: Option<PathBuf>,

    /// Node.js executable that runs the reference server.
    #[arg(long, default_value = "node", value_name = "PATH")]
    node: String,

    /// URL of an already running reference server (ws://HOST:PORT/socket.io/?EIO=4&transport=websocket)
    /// instead of spawning one.
    #[arg(long, value_name = "URL")]
    socketio_url: Option<String>,

    /// Process id of the reference server at --socketio-url (for RSS and CPU figures).
    #[arg(long, value_name = "PID")]
    socketio_pid: Option<u32>,

    /// Direct scenario: originator/echoer client pairs.
    #[arg(long, default_value_t = 50, value_name = "N")]
    pairs: usize,

    /// Direct scenario: offered rates in messages per second through the server (a round trip
    /// is two messages), comma-separated; `max` keeps --window messages in flight instead.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1000,10000,50000,max",
        value_parser = Rate::parse,
        value_name = "RATES"
    )]
    rates: Vec<Rate>,

    /// Direct scenario: messages in flight per originator during the `max` step.
    #[arg(long, default_value_t = 16, value_name = "N")]
    window: u64,

    /// Fan-out scenario: members of the room (receivers; the sender is extra).
    #[arg(long, default_value_t = 1000, value_name = "N")]
    members: usize,

    /// Fan-out scenario: room messages in flight (each reaches every member); the sender sends
    /// message k once the members together received (k - N) x members deliveries.
    #[arg(long, default_value_t = 64, value_name = "N")]
    fanout_window: u64,

    /// Idle scenario: connections to open.
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    idle_conns: usize,

    /// Idle scenario: wait after the last handshake before reading the server's RSS.
    #[arg(long, default_value = "2s", value_parser = parse_duration, value_name = "DURATION")]
    settle: Duration,

    /// Length of every message's payload string in bytes (it starts with the 20-digit send
    /// timestamp; minimum 20).
    #[arg(long, default_value_t = 32, value_name = "BYTES")]
    payload_bytes: usize,

    /// Measurement time per step (direct rate, fan-out); in the drops scenario, how long the
    /// publisher sends and the proxies cut [default: 5s; drops: 60s].
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    duration: Option<Duration>,

    /// Drops scenario: clients, each behind a fault proxy of its own.
    #[arg(long, default_value_t = 2000, value_name = "N")]
    clients: usize,

    /// Drops scenario: time between two resets of one client's connection (each client has
    /// its own phase, spread over this period).
    #[arg(long, default_value = "15s", value_parser = parse_duration, value_name = "DURATION")]
    cut_every: Duration,

    /// Drops scenario: how long a client's proxy refuses connections after each reset.
    #[arg(long, default_value = "2s", value_parser = parse_duration, value_name = "DURATION")]
    down: Duration,

    /// Drops scenario: messages per second the publisher sends to each client.
    #[arg(long, default_value_t = 2.0, value_name = "PER_SEC")]
    rate: f64,

    /// Warm-up before each measurement (sent, not counted).
    #[arg(long, default_value = "1s", value_parser = parse_duration, value_name = "DURATION")]
    warmup: Duration,

    /// After a step, how long to wait for messages still in flight before counting them lost
    /// (drops scenario: the final wait for every client is at most --down + --drain + 10s).
    #[arg(long, default_value = "2s", value_parser = parse_duration, value_name = "DURATION")]
    drain: Duration,

    /// Most messages one sender originates in one step: a count bound on every send loop.
    #[arg(long, default_value_t = 100_000_000, value_name = "N")]
    max_messages: u64,

    /// Tasks driving the client connections; each drives many connections.
    #[arg(long, default_value_t = 4, value_name = "N")]
    tasks: usize,

    /// Connections opened at the same time during setup.
    #[arg(long, default_value_t = 128, value_name = "N")]
    connect_concurrency: usize,

    /// Time allowed for one connection's TCP connect, upgrade and handshake, and for a server
    /// to print its address.
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    connect_timeout: Duration,

    /// Spread client connections over the source addresses 127.0.0.1 ..= 127.0.0.N
    /// (bind before connect; each address has its own ~28,000 ephemeral ports).
    #[arg(long, default_value_t = 4, value_name = "N", value_parser = clap::value_parser!(u8).range(1..=254))]
    source_ips: u8,

    /// Print one JSON object with every figure on stdout (the table goes to stderr).
    #[arg(long)]
    json: bool,

    /// No progress bars.
    #[arg(long)]
    quiet: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum EncodingArg {
    /// JSON in text frames.
    Json,
    /// MessagePack in binary frames (`?enc=msgpack`).
    Msgpack,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    /// Direct messages between client pairs.
    Direct,
    /// One sender, N room members.
    Fanout,
    /// Server memory per idle connection.
    Idle,
    /// Stream throughput through the hub against a TCP relay.
    Stream,
    /// RPC calls through the hub against Socket.IO emitWithAck.
    Rpc,
    /// Operations through one busy session and a late join (against the hub's room relay).
    Session,
    /// Delivery under drops: clients behind fault proxies that reset their connections
    /// periodically, one publisher sending to each by id; against Socket.IO without and with
    /// connection state recovery.
    Drops,
    /// A cluster of hubs on a nats-server it starts: direct messages on one hub against
    /// across hubs, fan-out and one busy session spread against one hub, a killed hub's ids
    /// and session.
    Cluster,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Direct => "direct",
            Scenario::Fanout => "fanout",
            Scenario::Idle => "idle",
            Scenario::Stream => "stream",
            Scenario::Rpc => "rpc",
            Scenario::Session => "session",
            Scenario::Drops => "drops",
            Scenario::Cluster => "cluster",
        }
    }
}

impl BenchArgs {
    /// The measurement time of a direct or fan-out step.
    fn step_duration(&self) -> Duration {
        self.duration.unwrap_or(Duration::from_secs(5))
    }
}

/// A rate flag that must be a number: `10000` or `10k`.
fn parse_fixed_rate(s: &str) -> Result<u64, String> {
    match Rate::parse(s)? {
        Rate::Fixed(n) => Ok(n),
        Rate::Max => Err("expected a number of messages per second, e.g. 10000 or 10k".into()),
    }
}

/// A duration flag: `250ms`, `5s`, `2m`, or a bare number of seconds (0 to 24 h).
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 250ms, 5s, 2m"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" => v,
        "m" | "min" => v * 60.0,
        _ => return Err(format!("invalid duration unit in {s:?}: use ms, s or m")),
    };
    if !(0.0..=86_400.0).contains(&secs) {
        return Err(format!("duration {s:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Runs the benchmark.
pub(crate) async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.pairs == 0 || args.members == 0 {
        bail!("--pairs and --members must be at least 1");
    }
    if args.rates.is_empty() || args.rpc_rates.is_empty() {
        bail!("--rates and --rpc-rates need at least one rate");
    }
    let encoding = match args.encoding {
        EncodingArg::Json => Encoding::Json,
        EncodingArg::Msgpack => Encoding::MsgPack,
    };
    let scenarios: Vec<Scenario> = [
        Scenario::Direct,
        Scenario::Fanout,
        Scenario::Idle,
        Scenario::Stream,
        Scenario::Rpc,
        Scenario::Session,
        Scenario::Drops,
        Scenario::Cluster,
    ]
    .into_iter()
    .filter(|s| args.scenarios.contains(s))
    .collect();
    if args.url.is_none() && !args.spawn && scenarios.iter().any(|s| *s != Scenario::Cluster) {
        bail!(
            "give the URL of a running hub, or --spawn to start one (only the cluster scenario \
             starts hubs by itself)"
        );
    }
    let with_cluster = scenarios.contains(&Scenario::Cluster);
    if with_cluster && (args.cluster_members == 0 || args.cluster_senders == 0) {
        bail!("--cluster-members and --cluster-senders must be at least 1");
    }
    if with_cluster && (args.cluster_ids == 0 || args.pairs == 0) {
        bail!("--cluster-ids and --pairs must be at least 1");
    }

    let drops = scenarios.contains(&Scenario::Drops);
    if drops && args.clients == 0 {
        bail!("--clients must be at least 1");
    }
    if drops && !(args.rate > 0.0 && args.rate.is_finite()) {
        bail!("--rate must be a positive number of messages per second");
    }
    if drops && args.cut_every.is_zero() {
        bail!("--cut-every must be longer than 0");
    }
    // The most clients any selected scenario connects at once.
    let cluster_clients = if with_cluster {
        (args.cluster_members + args.cluster_senders)
            .max(args.cluster_ids)
            .max(2 * args.pairs)
    } else {
        0
    };
    let most_clients = (args.idle_conns.max(args.members) + 2 * args.pairs).max(cluster_clients);
    // Every connection is a file descriptor here, and in a spawned server (which inherits it);
    // a drops client also holds its proxy's listener and the proxy's two sockets.
    let drops_fds = if drops { 4 * args.clients } else { 0 };
    let wanted_fds = (most_clients.max(drops_fds) + 1024) as u64;
    match rlimit::increase_nofile_limit(wanted_fds) {
        Ok(n) if n < wanted_fds => eprintln!(
            "warning: the open-files limit is {n} (hard limit), below the {wanted_fds} this run \
             needs; raise it with `ulimit -Hn` as root"
        ),
        Ok(_) => {}
        Err(e) => eprintln!("warning: cannot raise the open-files limit: {e}"),
    }

    // How a hub is spawned: by --spawn, and by the cluster scenario (always).
    let hub_bin = match &args.hub_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?,
    };
    let mut hub_args = Vec::new();
    if !args.no_hub_limits {
        // Twice the clients: hubs of this version count the reader and writer tasks of
        // a connection against the limit while accepting new ones.
        let clients = 2 * most_clients.max(if drops { args.clients } else { 0 }) + 2048;
        hub_args.extend([
            format!("--max-clients={clients}"),
            "--rate-per-sec=100000000".to_owned(),
            "--rate-burst=100000000".to_owned(),
        ]);
    }
    hub_args.extend(args.hub_args.iter().cloned());
    let hub_launch = match &args.url {
        Some(url) => Launch::Running {
            url: url.clone(),
            pid: args.hub_pid,
        },
        None => Launch::Hub {
            bin: hub_bin.clone(),
            args: hub_args.clone(),
        },
    };
    let sio_dir = target::socketio_dir(args.socketio_dir.as_deref());
    // Only these scenarios run against Socket.IO too.
    let with_reference = scenarios.iter().any(|s| {
        matches!(
            s,
            Scenario::Direct | Scenario::Fanout | Scenario::Idle | Scenario::Rpc | Scenario::Drops
        )
    });
    let sio_launch = if args.no_reference || !with_reference {
        None
    } else if let Some(url) = &args.socketio_url {
        Some(Launch::Running {
            url: url.clone(),
            pid: args.socketio_pid,
        })
    } else {
        Some(Launch::SocketIo {
            node: args.node.clone(),
            dir: sio_dir.clone(),
            recovery: false,
        })
    };

    let (cpu, cores) = target::machine();
    let peermesh_info = ServerInfo {
        name: format!(
            "peermesh {} ({})",
            env!("CARGO_PKG_VERSION"),
            encoding.as_str()
        ),
        how: args.url.clone().unwrap_or_else(|| "spawned".to_owned()),
    };
    let socketio_info = match &sio_launch {
        None => None,
        Some(launch) => {
            let node = target::node_version(&args.node)
                .await
                .unwrap_or_else(|| "?".into());
            let version = target::socketio_version(&sio_dir).unwrap_or_else(|| "4.x".into());
            Some(ServerInfo {
                name: format!("socket.io {version} on node {node}"),
                how: match launch {
                    Launch::Running { url, .. } => url.clone(),
                    _ => "spawned".to_owned(),
                },
            })
        }
    };

    let sides = 1 + u64::from(sio_launch.is_some());
    let steps_per_side: u64 = scenarios
        .iter()
        .map(|s| match s {
            Scenario::Direct => args.rates.len() as u64,
            Scenario::Rpc => args.rpc_rates.len() as u64,
            Scenario::Fanout | Scenario::Idle => 1,
            // Measured on the hub only (the relay, or its own rooms, is the reference).
            Scenario::Stream | Scenario::Session => 0,
            Scenario::Drops => 1,
            // Measured once, on its own hubs.
            Scenario::Cluster => 0,
        })
        .sum::<u64>()
        + u64::from(scenarios.contains(&Scenario::Stream))
        + u64::from(scenarios.contains(&Scenario::Session));
    // The drops scenario runs Socket.IO twice (without and with connection state recovery).
    let extra_steps =
        u64::from(drops && sio_launch.is_some()) + if with_cluster { cluster::STEPS } else { 0 };
    let progress = Progress::new(steps_per_side * sides + extra_steps, args.quiet);
    let clock = Clock::new();

    let mut report = Report {
        machine: Machine { cpu, cores },
        settings: Settings {
            pairs: args.pairs,
            window: args.window,
            members: args.members,
            fanout_window: args.fanout_window,
            idle_conns: args.idle_conns,
            payload_bytes: args.payload_bytes.max(dialect::STAMP_DIGITS),
            warmup_s: args.warmup.as_secs_f64(),
            duration_s: args.step_duration().as_secs_f64(),
        },
        peermesh: peermesh_info,
        socketio: socketio_info,
        direct: None,
        fanout: None,
        idle: None,
        stream: None,
        session: None,
        rpc: None,
        drops: None,
        cluster: None,
        ratios: Default::default(),
        targets: Vec::new(),
    };

    let servers: Vec<(Launch, Dialect)> =
        std::iter::once((hub_launch, Dialect::Peermesh(encoding)))
            .chain(sio_launch.map(|l| (l, Dialect::SocketIo)))
            .collect();
    let mut run_no = 0u32;
    for scenario in scenarios {
        if scenario == Scenario::Drops {
            report.drops = Some(run_drops(&servers, &args, clock, &progress, &mut run_no).await);
            continue;
        }
        if scenario == Scenario::Cluster {
            run_no += 1;
            let tag = format!("r{}x{run_no}-", std::process::id());
            let cfg = ClusterConfig {
                hubs: usize::from(args.cluster_hubs),
                nats_server: args.nats_server.clone(),
                hub_bin: hub_bin.clone(),
                hub_args: hub_args.clone(),
                encoding,
                pairs: args.pairs,
                rate: args.cluster_rate,
                rounds: args.cluster_rounds,
                members: args.cluster_members,
                senders: args.cluster_senders,
                fanout_window: args.fanout_window,
                ids: args.cluster_ids,
                session: session::SessionConfig {
                    members: args.session_members.max(1),
                    ops: args.session_ops.max(1),
                    window: usize::try_from(args.window.max(1)).unwrap_or(256),
                    objects: args.cluster_session_objects,
                    encoding,
                    connect_timeout: args.connect_timeout,
                },
                takeover_objects: args.cluster_session_objects,
                poll: Duration::from_millis(100),
                release_timeout: Duration::from_secs(30),
                payload: args.payload_bytes.max(dialect::STAMP_DIGITS),
                warmup: args.warmup,
                duration: args.duration.unwrap_or(Duration::from_secs(10)),
                drain: args.drain,
                max_messages: args.max_messages,
                tasks: args.tasks,
                concurrency: args.connect_concurrency,
                source_ips: args.source_ips,
                connect_timeout: args.connect_timeout,
            };
            let r = cluster::run(&cfg, clock, &progress, &tag).await;
            if let Err(e) = &r {
                progress.println(&format!("cluster failed: {e:#}"));
            }
            report.cluster = Some(Outcome::from_result(r));
            continue;
        }
        let mut outcomes = Vec::new();
        // The stream scenario's reference is a TCP relay, not Socket.IO.
        let runs = if matches!(scenario, Scenario::Stream | Scenario::Session) {
            1
        } else {
            servers.len()
        };
        for (launch, dialect) in servers.iter().take(runs) {
            run_no += 1;
            let tag = format!("r{}x{run_no}-", std::process::id());
            progress.set_step(&format!("{}: starting", dialect.label()));
            let outcome = match Server::start(launch, *dialect, args.connect_timeout).await {
                Err(e) => Err(e),
                Ok(server) => {
                    let r = run_scenario(scenario, &server, &args, clock, &progress, &tag).await;
                    server.stop().await;
                    r
                }
            };
            if let Err(e) = &outcome {
                progress.println(&format!(
                    "{} {} failed: {e:#}",
                    dialect.label(),
                    scenario.name()
                ));
            }
            outcomes.push(outcome);
        }
        let mut it = outcomes.into_iter();
        let ours = it.next().unwrap_or_else(|| Err(anyhow::anyhow!("not run")));
        let theirs = it.next();
        match scenario {
            Scenario::Direct => {
                report.direct = Some(side(ours, theirs, |r| match r {
                    ScenarioResult::Direct(v) => Some(v),
                    _ => None,
                }))
            }
            Scenario::Rpc => {
                report.rpc = Some(side(ours, theirs, |r| match r {
                    ScenarioResult::Direct(v) => Some(v),
                    _ => None,
                }))
            }
            Scenario::Fanout => {
                report.fanout = Some(side(ours, theirs, |r| match r {
                    ScenarioResult::Fanout(v) => Some(*v),
                    _ => None,
                }))
            }
            Scenario::Idle => {
                report.idle = Some(side(ours, theirs, |r| match r {
                    ScenarioResult::Idle(v) => Some(v),
                    _ => None,
                }))
            }
            Scenario::Stream => {
                report.stream = Some(Outcome::from_result(ours.and_then(|r| match r {
                    ScenarioResult::Stream(v) => Ok(v),
                    _ => Err(anyhow::anyhow!("internal: scenario returned another kind")),
                })))
            }
            Scenario::Session => {
                report.session = Some(Outcome::from_result(ours.and_then(|r| match r {
                    ScenarioResult::Session(v) => Ok(v),
                    _ => Err(anyhow::anyhow!("internal: scenario returned another kind")),
                })))
            }
            // Run above.
            Scenario::Drops | Scenario::Cluster => {}
        }
    }
    progress.finish();
    report.evaluate();
    let table = report.table();
    if args.json {
        eprint!("{table}");
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{table}");
    }
    Ok(())
}

/// The drops scenario on the hub, then on Socket.IO without and with connection state
/// recovery.
async fn run_drops(
    servers: &[(Launch, Dialect)],
    args: &BenchArgs,
    clock: Clock,
    progress: &Progress,
    run_no: &mut u32,
) -> DropsSides {
    let cfg = DropsConfig {
        clients: args.clients,
        duration: args.duration.unwrap_or(Duration::from_secs(60)),
        cut_every: args.cut_every,
        down: args.down,
        rate: args.rate,
        payload: args.payload_bytes.max(drops::MIN_PAYLOAD),
        drain: args.drain,
        max_messages: args.max_messages,
        concurrency: args.connect_concurrency,
        connect_timeout: args.connect_timeout,
        seed: 0x5eed_d809,
    };
    // (launch or why it cannot run, dialect, label)
    let mut runs: Vec<(Result<Launch, String>, Dialect, &str)> = Vec::new();
    for (launch, dialect) in servers {
        match dialect {
            Dialect::Peermesh(_) => runs.push((Ok(launch.clone()), *dialect, "peermesh")),
            Dialect::SocketIo => {
                runs.push((Ok(launch.clone()), *dialect, "socket.io"));
                let recovering = match launch {
                    Launch::SocketIo { node, dir, .. } => Ok(Launch::SocketIo {
                        node: node.clone(),
                        dir: dir.clone(),
                        recovery: true,
                    }),
                    _ => Err(
                        "not run: the server at --socketio-url runs one configuration; \
                              the connection state recovery run needs a spawned server"
                            .to_owned(),
                    ),
                };
                runs.push((recovering, *dialect, "socket.io+CSR"));
            }
        }
    }
    let mut outcomes = Vec::new();
    for (launch, dialect, label) in runs {
        *run_no += 1;
        let tag = format!("r{}x{run_no}-", std::process::id());
        progress.set_step(&format!("{label}: starting"));
        let outcome = match launch {
            Err(why) => Err(anyhow::anyhow!(why)),
            Ok(launch) => match Server::start(&launch, dialect, args.connect_timeout).await {
                Err(e) => Err(e),
                Ok(server) => {
                    let r = drops::run(&server, &cfg, clock, progress, &tag, label).await;
                    server.stop().await;
                    r
                }
            },
        };
        if let Err(e) = &outcome {
            progress.println(&format!("{label} drops failed: {e:#}"));
        }
        outcomes.push(Outcome::from_result(outcome));
    }
    let mut it = outcomes.into_iter();
    DropsSides {
        peermesh: it.next().unwrap_or_else(|| Outcome::Failed {
            error: "not run".into(),
        }),
        socketio: it.next(),
        socketio_recovery: it.next(),
    }
}

enum ScenarioResult {
    Direct(Vec<direct::DirectStep>),
    Fanout(Box<fanout::FanoutResult>),
    Idle(idle::IdleResult),
    Stream(stream::StreamResult),
    Session(session::SessionResult),
}

fn side<T>(
    ours: anyhow::Result<ScenarioResult>,
    theirs: Option<anyhow::Result<ScenarioResult>>,
    pick: impl Fn(ScenarioResult) -> Option<T>,
) -> Side<T> {
    let conv = |r: anyhow::Result<ScenarioResult>| {
        Outcome::from_result(r.and_then(|v| {
            pick(v).ok_or_else(|| anyhow::anyhow!("internal: scenario returned another kind"))
        }))
    };
    Side {
        peermesh: conv(ours),
        socketio: theirs.map(conv),
    }
}

async fn run_scenario(
    scenario: Scenario,
    server: &Server,
    args: &BenchArgs,
    clock: Clock,
    progress: &Progress,
    tag: &str,
) -> anyhow::Result<ScenarioResult> {
    let connect = ConnectOpts::new(&server.endpoint.url, args.source_ips, args.connect_timeout);
    let payload = args.payload_bytes.max(dialect::STAMP_DIGITS);
    Ok(match scenario {
        Scenario::Direct | Scenario::Rpc => {
            let (flavor, rates) = match scenario {
                Scenario::Rpc => (Flavor::Rpc, args.rpc_rates.clone()),
                _ => (Flavor::Direct, args.rates.clone()),
            };
            let cfg = DirectConfig {
                flavor,
                pairs: args.pairs,
                rates,
                window: args.window,
                payload,
                warmup: args.warmup,
                duration: args.step_duration(),
                drain: args.drain,
                max_messages: args.max_messages,
                tasks: args.tasks,
                connect,
                echo_shift: 0,
                label: scenario.name().to_owned(),
            };
            ScenarioResult::Direct(
                direct::run(&server.targets(), &cfg, clock, progress, tag).await?,
            )
        }
        Scenario::Fanout => {
            let cfg = FanoutConfig {
                members: args.members,
                senders: 1,
                room: fanout::ROOM.to_owned(),
                window: args.fanout_window,
                payload,
                warmup: args.warmup,
                duration: args.step_duration(),
                drain: args.drain,
                max_messages: args.max_messages,
                settle: Duration::from_millis(300),
                tasks: args.tasks,
                concurrency: args.connect_concurrency,
                connect,
            };
            ScenarioResult::Fanout(Box::new(
                fanout::run(&server.targets(), &cfg, clock, progress, tag).await?,
            ))
        }
        Scenario::Idle => {
            let cfg = IdleConfig {
                connections: args.idle_conns,
                concurrency: args.connect_concurrency,
                settle: args.settle,
                tasks: args.tasks,
                connect,
            };
            ScenarioResult::Idle(idle::run(server, &cfg, progress, tag).await?)
        }
        Scenario::Stream => {
            progress.set_step("peermesh stream: hub vs TCP relay");
            let cfg = stream::StreamConfig {
                bytes: args.stream_mib.max(1) << 20,
                window: args.stream_window_kib.max(1) << 10,
                rounds: args.stream_rounds,
                encoding: match server.endpoint.dialect {
                    Dialect::Peermesh(e) => e,
                    Dialect::SocketIo => Encoding::Json,
                },
                connect_timeout: args.connect_timeout,
            };
            let r = stream::run(server, &cfg).await?;
            progress.step_done();
            ScenarioResult::Stream(r)
        }
        Scenario::Session => {
            progress.set_step("peermesh session: ops through one session, late join");
            let cfg = session::SessionConfig {
                members: args.session_members.max(1),
                ops: args.session_ops.max(1),
                window: usize::try_from(args.window.max(1)).unwrap_or(256),
                objects: args.session_objects.max(1),
                encoding: match server.endpoint.dialect {
                    Dialect::Peermesh(e) => e,
                    Dialect::SocketIo => Encoding::Json,
                },
                connect_timeout: args.connect_timeout,
            };
            let r = session::run(server, &cfg).await?;
            progress.step_done();
            ScenarioResult::Session(r)
        }
        Scenario::Drops | Scenario::Cluster => {
            bail!("internal: the drops and cluster scenarios run by themselves")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("abc").is_err());
    }
}
