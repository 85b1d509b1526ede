//! The results of a run: one JSON object (`--json`) and a summary table side by side with the
//! Socket.IO reference, with the ratios and the targets.

use serde::Serialize;

use super::cluster::ClusterResult;
use super::direct::DirectStep;
use super::drops::DropsResult;
use super::fanout::FanoutResult;
use super::idle::IdleResult;
use super::session::SessionResult;
use super::stats::Rates;
use super::stream::StreamResult;

/// A scenario's figures, or why there are none.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub(crate) enum Outcome<T> {
    /// The scenario ran.
    Ok(T),
    /// The scenario failed.
    Failed {
        /// What went wrong.
        error: String,
    },
}

impl<T> Outcome<T> {
    /// Wraps a scenario's result.
    pub(crate) fn from_result(r: anyhow::Result<T>) -> Self {
        match r {
            Ok(v) => Outcome::Ok(v),
            Err(e) => Outcome::Failed {
                error: format!("{e:#}"),
            },
        }
    }

    pub(crate) fn ok(&self) -> Option<&T> {
        match self {
            Outcome::Ok(v) => Some(v),
            Outcome::Failed { .. } => None,
        }
    }
}

/// The same scenario on both servers.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Side<T> {
    /// The peermesh hub.
    pub(crate) peermesh: Outcome<T>,
    /// The Socket.IO reference (absent with `--no-reference`).
    pub(crate) socketio: Option<Outcome<T>>,
}

/// The drops scenario on the hub and on Socket.IO without and with connection state recovery.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct DropsSides {
    /// The peermesh hub (clients resume).
    pub(crate) peermesh: Outcome<DropsResult>,
    /// Socket.IO as configured by default: a reconnection is a new session.
    pub(crate) socketio: Option<Outcome<DropsResult>>,
    /// Socket.IO with connection state recovery (`server.js --recovery`).
    pub(crate) socketio_recovery: Option<Outcome<DropsResult>>,
}

/// A server's identity in the report.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ServerInfo {
    /// What ran, e.g. `peermesh 0.1.0 (json)` or `socket.io 4.8.3 on node v20`.
    pub(crate) name: String,
    /// How it was reached: `spawned` or a URL.
    pub(crate) how: String,
}

/// The machine.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Machine {
    /// CPU model.
    pub(crate) cpu: String,
    /// Logical cores.
    pub(crate) cores: usize,
}

/// The settings that shape the figures.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Settings {
    /// Client pairs in the direct scenario.
    pub(crate) pairs: usize,
    /// Messages in flight per originator in the `max` step.
    pub(crate) window: u64,
    /// Room members.
    pub(crate) members: usize,
    /// Room messages in flight.
    pub(crate) fanout_window: u64,
    /// Idle connections.
    pub(crate) idle_conns: usize,
    /// Payload string length in bytes.
    pub(crate) payload_bytes: usize,
    /// Warm-up per step, seconds.
    pub(crate) warmup_s: f64,
    /// Measurement per step, seconds.
    pub(crate) duration_s: f64,
}

/// A target from the issue, checked.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Check {
    /// The target in words.
    pub(crate) target: String,
    /// What was measured, in words.
    pub(crate) measured: String,
    /// Whether it was met (absent when it could not be evaluated).
    pub(crate) met: Option<bool>,
}

/// Ratios peermesh : Socket.IO (greater is better for peermesh).
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Ratios {
    /// Direct messages, `max` step throughput, peermesh ÷ Socket.IO.
    pub(crate) direct_throughput: Option<f64>,
    /// Fan-out deliveries per second, peermesh ÷ Socket.IO.
    pub(crate) fanout_deliveries: Option<f64>,
    /// Memory per idle connection, Socket.IO ÷ peermesh.
    pub(crate) idle_memory: Option<f64>,
    /// RPC calls per second, `max` step, peermesh ÷ Socket.IO.
    pub(crate) rpc_throughput: Option<f64>,
}

/// Everything a run measured.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    /// The machine.
    pub(crate) machine: Machine,
    /// The settings.
    pub(crate) settings: Settings,
    /// The hub.
    pub(crate) peermesh: ServerInfo,
    /// The reference.
    pub(crate) socketio: Option<ServerInfo>,
    /// Scenario (a).
    pub(crate) direct: Option<Side<Vec<DirectStep>>>,
    /// Scenario (b).
    pub(crate) fanout: Option<Side<FanoutResult>>,
    /// Scenario (c).
    pub(crate) idle: Option<Side<IdleResult>>,
    /// Scenario (d): the hub against a TCP relay.
    pub(crate) stream: Option<Outcome<StreamResult>>,
    /// Sessions: operations through one session and a late join.
    pub(crate) session: Option<Outcome<SessionResult>>,
    /// Scenario (f): RPC calls (rates and throughput count calls, not messages).
    pub(crate) rpc: Option<Side<Vec<DirectStep>>>,
    /// Scenario (g): delivery under drops.
    pub(crate) drops: Option<DropsSides>,
    /// Scenario (i): a cluster of hubs.
    pub(crate) cluster: Option<Outcome<ClusterResult>>,
    /// Ratios.
    pub(crate) ratios: Ratios,
    /// The targets.
    pub(crate) targets: Vec<Check>,
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (a > 0.0 && b > 0.0).then(|| (a / b * 100.0).round() / 100.0)
}

fn max_step(steps: &[DirectStep]) -> Option<&DirectStep> {
    steps.iter().find(|s| s.offered_msgs_per_s.is_none())
}

impl Report {
    /// Fills in ratios and target checks from the figures.
    pub(crate) fn evaluate(&mut self) {
        let mut r = Ratios::default();
        let mut checks = Vec::new();
        if let Some(side) = &self.fanout {
            let ours = side.peermesh.ok();
            let theirs = side.socketio.as_ref().and_then(Outcome::ok);
            if let (Some(a), Some(b)) = (ours, theirs) {
                r.fanout_deliveries = ratio(a.deliveries_per_s, b.deliveries_per_s);
            }
            checks.push(Check {
                target: format!(
                    "fan-out >= 1,000,000 deliveries/s to {} members",
                    ours.map_or(0, |a| a.members)
                ),
                measured: ours.map_or("not measured".into(), |a| {
                    format!("{} deliveries/s", thousands(a.deliveries_per_s))
                }),
                met: ours.map(|a| a.deliveries_per_s >= 1_000_000.0),
            });
            checks.push(Check {
                target: "fan-out >= 5x Socket.IO".into(),
                measured: r
                    .fanout_deliveries
                    .map_or("not measured".into(), |x| format!("{x}x")),
                met: r.fanout_deliveries.map(|x| x >= 5.0),
            });
        }
        if let Some(side) = &self.direct {
            let ours = side.peermesh.ok();
            let theirs = side.socketio.as_ref().and_then(Outcome::ok);
            if let (Some(a), Some(b)) = (
                ours.and_then(|s| max_step(s)),
                theirs.and_then(|s| max_step(s)),
            ) {
                r.direct_throughput = ratio(a.msgs_per_s, b.msgs_per_s);
            }
            checks.push(Check {
                target: "direct messages >= 5x Socket.IO throughput".into(),
                measured: r
                    .direct_throughput
                    .map_or("not measured".into(), |x| format!("{x}x")),
                met: r.direct_throughput.map(|x| x >= 5.0),
            });
            let at10k = ours.and_then(|s| {
                s.iter()
                    .find(|s| s.offered_msgs_per_s == Some(10_000) && s.rtt.samples > 0)
            });
            checks.push(Check {
                target: "direct p99 <= 1 ms at 10,000 msgs/s".into(),
                measured: at10k.map_or("not measured (no 10000 step)".into(), |s| {
                    format!("p99 {}", fmt_us(s.rtt.p99_us))
                }),
                met: at10k.map(|s| s.rtt.p99_us <= 1000.0),
            });
        }
        if let Some(side) = &self.rpc {
            let ours = side.peermesh.ok();
            let theirs = side.socketio.as_ref().and_then(Outcome::ok);
            if let (Some(a), Some(b)) = (
                ours.and_then(|s| max_step(s)),
                theirs.and_then(|s| max_step(s)),
            ) {
                r.rpc_throughput = ratio(a.msgs_per_s, b.msgs_per_s);
            }
            checks.push(Check {
                target: "RPC calls/s >= 5x Socket.IO emitWithAck".into(),
                measured: r
                    .rpc_throughput
                    .map_or("not measured".into(), |x| format!("{x}x")),
                met: r.rpc_throughput.map(|x| x >= 5.0),
            });
        }
        if let Some(side) = &self.idle {
            let ours = side.peermesh.ok();
            let theirs = side.socketio.as_ref().and_then(Outcome::ok);
            if let (Some(a), Some(b)) = (ours, theirs) {
                r.idle_memory = ratio(b.bytes_per_conn as f64, a.bytes_per_conn.max(1) as f64);
            }
            checks.push(Check {
                target: "idle memory per connection <= 1/5 of Socket.IO".into(),
                measured: match (ours, r.idle_memory) {
                    (Some(a), Some(x)) => {
                        format!("{} per connection, {x}x less", bytes(a.bytes_per_conn))
                    }
                    (Some(a), None) => format!("{} per connection", bytes(a.bytes_per_conn)),
                    _ => "not measured".into(),
                },
                met: r.idle_memory.map(|x| x >= 5.0),
            });
        }
        if let Some(outcome) = &self.stream {
            let ours = outcome.ok();
            checks.push(Check {
                target: "stream throughput >= 50% of a TCP relay".into(),
                measured: ours.map_or("not measured".into(), |a| {
                    format!(
                        "{:.0} MiB/s vs {:.0} MiB/s, {:.0}%",
                        a.hub_mib_per_s,
                        a.relay_mib_per_s,
                        a.ratio * 100.0
                    )
                }),
                met: ours.map(|a| a.ratio >= 0.5),
            });
        }
        if let Some(sides) = &self.drops {
            let ours = sides.peermesh.ok();
            checks.push(Check {
                target: "under drops every message delivered exactly once, in order".into(),
                measured: ours.map_or("not measured".into(), |a| {
                    format!(
                        "{} of {} sent delivered once; {} lost, {} duplicated, {} out of order; \
                         {} cuts",
                        thousands(a.exactly_once as f64),
                        thousands(a.sent as f64),
                        a.lost,
                        a.duplicated,
                        a.out_of_order,
                        thousands(a.cuts as f64)
                    )
                }),
                met: ours.map(|a| {
                    a.sent > 0
                        && a.exactly_once == a.sent
                        && a.lost == 0
                        && a.duplicated == 0
                        && a.out_of_order == 0
                }),
            });
        }
        if let Some(outcome) = &self.cluster {
            cluster_checks(outcome.ok(), &mut checks);
        }
        self.ratios = r;
        self.targets = checks;
    }

    /// The summary table.
    pub(crate) fn table(&self) -> String {
        let mut out = String::new();
        let reference = self
            .socketio
            .as_ref()
            .map_or("no reference".to_owned(), |s| format!("vs {}", s.name));
        out.push_str(&format!(
            "peermesh bench: {} ({} cores); {} {}\n",
            self.machine.cpu, self.machine.cores, self.peermesh.name, reference
        ));
        let s = &self.settings;
        let with_ref = self.socketio.is_some();
        if let Some(side) = &self.direct {
            out.push_str(&format!(
                "\n(a) direct messages: {} pairs; every message is echoed back and msgs/s counts \
                 both legs; {}-byte payload; latency = round trip\n",
                s.pairs, s.payload_bytes
            ));
            steps_table(&mut out, side, with_ref, "peermesh/s", "socket.io/s");
        }
        if let Some(side) = &self.rpc {
            out.push_str(&format!(
                "\n(f) RPC: {} callers, each calling a service of its own provider (Socket.IO: \
                 emitWithAck to a second client through the server, answered by its ack); \
                 calls/s = answered calls; {}-byte argument; latency = call to result\n",
                s.pairs, s.payload_bytes
            ));
            steps_table(&mut out, side, with_ref, "calls/s", "socket.io/s");
        }
        if let Some(side) = &self.fanout {
            out.push_str(&format!(
                "\n(b) room fan-out: 1 sender, {} members, {} room messages in flight; latency = \
                 sender write to member read\n",
                s.members, s.fanout_window
            ));
            let head = [
                "server",
                "deliveries/s",
                "msgs/s",
                "p50",
                "p99",
                "p99.9",
                "lost",
                "cpu%",
                "gen%",
                "others%",
            ];
            let mut rows = Vec::new();
            for (name, x) in [
                ("peermesh", side.peermesh.ok()),
                ("socket.io", side.socketio.as_ref().and_then(Outcome::ok)),
            ] {
                if let Some(x) = x {
                    rows.push(vec![
                        name.to_owned(),
                        thousands(x.deliveries_per_s),
                        thousands(x.room_msgs_per_s),
                        fmt_us(x.latency.p50_us),
                        fmt_us(x.latency.p99_us),
                        fmt_us(x.latency.p999_us),
                        x.lost.to_string(),
                        pct(x.window.server_cpu_pct),
                        pct(x.window.generator_cpu_pct),
                        others([Some(&x.window), None]),
                    ]);
                }
            }
            if let Some(x) = self.ratios.fanout_deliveries {
                let mut row = vec!["ratio".to_owned(), format!("{x}x")];
                row.extend(std::iter::repeat_n(String::new(), head.len() - 2));
                rows.push(row);
            }
            out.push_str(&grid(&head, &rows, &[0]));
            push_failures(&mut out, &side.peermesh, side.socketio.as_ref());
            for (name, x) in [
                ("peermesh", side.peermesh.ok()),
                ("socket.io", side.socketio.as_ref().and_then(Outcome::ok)),
            ] {
                if let Some(x) = x {
                    if let Some(e) = &x.first_error {
                        out.push_str(&format!("  {name}: {} errors, first: {e}\n", x.errors));
                    }
                }
            }
        }
        if let Some(side) = &self.idle {
            out.push_str(&format!(
                "\n(c) idle connections: {} identified clients; server RSS growth per connection\n",
                s.idle_conns
            ));
            let head = [
                "server",
                "conns",
                "RSS before",
                "RSS after",
                "per conn",
                "connects/s",
            ];
            let mut rows = Vec::new();
            for (name, x) in [
                ("peermesh", side.peermesh.ok()),
                ("socket.io", side.socketio.as_ref().and_then(Outcome::ok)),
            ] {
                if let Some(x) = x {
                    rows.push(vec![
                        name.to_owned(),
                        thousands(x.connections as f64),
                        bytes(x.rss_before_kib * 1024),
                        bytes(x.rss_after_kib * 1024),
                        bytes(x.bytes_per_conn),
                        thousands(x.connects_per_s),
                    ]);
                }
            }
            if let Some(x) = self.ratios.idle_memory {
                let mut row = vec!["ratio".to_owned(), String::new(), String::new()];
                row.extend([String::new(), format!("{x}x less"), String::new()]);
                rows.push(row);
            }
            out.push_str(&grid(&head, &rows, &[0]));
            push_failures(&mut out, &side.peermesh, side.socketio.as_ref());
            for (name, x) in [
                ("peermesh", side.peermesh.ok()),
                ("socket.io", side.socketio.as_ref().and_then(Outcome::ok)),
            ] {
                if let Some(x) = x {
                    if let Some(e) = &x.first_error {
                        out.push_str(&format!(
                            "  {name}: {} connections failed, first: {e}\n",
                            x.errors
                        ));
                    }
                }
            }
        }
        if let Some(outcome) = &self.stream {
            match outcome {
                Outcome::Ok(x) => {
                    out.push_str(&format!(
                        "\n(d) stream: {} per transfer, window {}, median of {} rounds each\n",
                        bytes(x.bytes),
                        bytes(x.window),
                        x.rounds
                    ));
                    let head = ["path", "MiB/s", "hub RSS before", "hub RSS growth"];
                    let kib = |v: Option<u64>| v.map_or("?".to_owned(), |k| bytes(k * 1024));
                    let rows = vec![
                        vec![
                            "client → hub → client".to_owned(),
                            format!("{:.0}", x.hub_mib_per_s),
                            kib(x.hub_rss_before_kib),
                            kib(x.hub_rss_growth_kib),
                        ],
                        vec![
                            "client → tokio::io::copy relay → client".to_owned(),
                            format!("{:.0}", x.relay_mib_per_s),
                            String::new(),
                            String::new(),
                        ],
                        vec![
                            "ratio".to_owned(),
                            format!("{:.0}%", x.ratio * 100.0),
                            String::new(),
                            String::new(),
                        ],
                    ];
                    out.push_str(&grid(&head, &rows, &[0]));
                }
                Outcome::Failed { error } => {
                    out.push_str(&format!("\n(d) stream: failed: {error}\n"));
                }
            }
        }
        if let Some(outcome) = &self.session {
            match outcome {
                Outcome::Ok(x) => {
                    out.push_str(&format!(
                        "\n(h) sessions: 1 writer, {} members, {} operations; late join of {} objects\n",
                        x.members, x.ops, x.objects
                    ));
                    let head = ["measure", "value"];
                    let rows = vec![
                        vec![
                            "session operations/s (until every member applied the last)".to_owned(),
                            format!("{:.0}", x.session_ops_per_s),
                        ],
                        vec![
                            "session deliveries/s".to_owned(),
                            format!("{:.0}", x.session_deliveries_per_s),
                        ],
                        vec![
                            "reference: room messages/s, same writer and members".to_owned(),
                            format!("{:.0}", x.room_msgs_per_s),
                        ],
                        vec![
                            format!("fill {} objects (pipelined creates)", x.objects),
                            format!("{:.2} s", x.fill_s),
                        ],
                        vec![
                            "late join: session_join → complete view".to_owned(),
                            format!("{:.1} ms", x.late_join_ms),
                        ],
                        vec![
                            "late join: snapshot bytes on the wire".to_owned(),
                            x.late_join_bytes.map_or("?".to_owned(), bytes),
                        ],
                    ];
                    out.push_str(&grid(&head, &rows, &[0]));
                }
                Outcome::Failed { error } => {
                    out.push_str(&format!("\n(h) sessions: failed: {error}\n"));
                }
            }
        }
        if let Some(sides) = &self.drops {
            drops_table(&mut out, sides);
        }
        if let Some(outcome) = &self.cluster {
            cluster_table(&mut out, outcome);
        }
        if !self.targets.is_empty() {
            out.push_str("\ntargets\n");
            for c in &self.targets {
                let mark = match c.met {
                    Some(true) => "met   ",
                    Some(false) => "MISSED",
                    None => "n/a   ",
                };
                out.push_str(&format!("  [{mark}] {}: {}\n", c.target, c.measured));
            }
        }
        out
    }
}

/// Formats rows under a header, right-aligned except the first column, with a `|` after each
/// column listed in `bars`.
/// The table of a stepped scenario (direct messages, RPC): one row per offered rate.
fn steps_table(
    out: &mut String,
    side: &Side<Vec<DirectStep>>,
    with_ref: bool,
    ours_head: &'static str,
    theirs_head: &'static str,
) {
    let ours = side.peermesh.ok();
    let theirs = side.socketio.as_ref().and_then(Outcome::ok);
    let mut head = vec!["rate", ours_head, "p50", "p99", "p99.9", "lost", "cpu%"];
    if with_ref {
        head.extend([theirs_head, "p50", "p99", "p99.9", "lost", "cpu%", "ratio"]);
    }
    head.push("others%");
    let n = ours.map_or(0, Vec::len).max(theirs.map_or(0, Vec::len));
    let cells = |x: Option<&DirectStep>| -> Vec<String> {
        match x {
            Some(x) => vec![
                thousands(x.msgs_per_s),
                fmt_us(x.rtt.p50_us),
                fmt_us(x.rtt.p99_us),
                fmt_us(x.rtt.p999_us),
                x.lost.to_string(),
                pct(x.window.server_cpu_pct),
            ],
            None => vec!["-".to_owned(); 6],
        }
    };
    let rows: Vec<Vec<String>> = (0..n)
        .map(|i| {
            let a = ours.and_then(|v| v.get(i));
            let b = theirs.and_then(|v| v.get(i));
            let mut row = vec![a.or(b).map_or("?".to_owned(), |x| x.rate.clone())];
            row.extend(cells(a));
            if with_ref {
                row.extend(cells(b));
                row.push(match (a, b) {
                    (Some(a), Some(b)) => ratio(a.msgs_per_s, b.msgs_per_s)
                        .map_or("-".to_owned(), |x| format!("{x}x")),
                    _ => "-".to_owned(),
                });
            }
            row.push(others([a.map(|x| &x.window), b.map(|x| &x.window)]));
            row
        })
        .collect();
    out.push_str(&grid(
        &head,
        &rows,
        if with_ref { &[0, 6, 12, 13] } else { &[0, 6] },
    ));
    push_failures(out, &side.peermesh, side.socketio.as_ref());
    for (name, steps) in [("peermesh", ours), ("socket.io", theirs)] {
        for st in steps.into_iter().flatten() {
            if let Some(e) = &st.first_error {
                out.push_str(&format!(
                    "  {name} {}: {} errors, first: {e}\n",
                    st.rate, st.errors
                ));
            }
        }
    }
}

/// The table of the drops scenario: one row per server, delivery then latency and resources.
fn drops_table(out: &mut String, sides: &DropsSides) {
    let servers = [
        ("peermesh (resume)", Some(&sides.peermesh)),
        ("socket.io", sides.socketio.as_ref()),
        ("socket.io + CSR", sides.socketio_recovery.as_ref()),
    ];
    let Some(s) = servers.iter().find_map(|(_, o)| o.and_then(Outcome::ok)) else {
        out.push_str("\n(g) delivery under drops\n");
        push_drops_failures(out, &servers);
        return;
    };
    out.push_str(&format!(
        "\n(g) delivery under drops: {} clients, each behind a fault proxy that resets its \
         connection every {} s (phases spread) and refuses it for {} s; 1 publisher on an uncut \
         connection sends {}/s to each for {} s; replay = a message sent before the connection \
         that delivered it was opened (send to delivery); CSR = connection state recovery\n",
        thousands(s.clients as f64),
        s.cut_every_s,
        s.down_s,
        s.rate_per_client,
        s.duration_s
    ));
    let head = [
        "server",
        "sent",
        "once",
        "lost",
        "dup",
        "order",
        "cuts",
        "reconnects",
        "resumed",
        "not resumed",
        "unsettled",
    ];
    let rows: Vec<Vec<String>> = servers
        .iter()
        .filter_map(|(name, o)| o.and_then(Outcome::ok).map(|x| (name, x)))
        .map(|(name, x)| {
            vec![
                (*name).to_owned(),
                thousands(x.sent as f64),
                thousands(x.exactly_once as f64),
                thousands(x.lost as f64),
                thousands(x.duplicated as f64),
                thousands(x.out_of_order as f64),
                thousands(x.cuts as f64),
                thousands(x.reconnects as f64),
                thousands(x.resumed as f64),
                thousands(x.not_resumed as f64),
                x.unsettled.to_string(),
            ]
        })
        .collect();
    out.push_str(&grid(&head, &rows, &[0]));
    let head = [
        "server",
        "p50",
        "p99",
        "replays",
        "replay p50",
        "replay p99",
        "replay max",
        "RSS before",
        "RSS peak",
        "cpu%",
        "gen%",
        "others%",
    ];
    let kib = |v: Option<u64>| v.map_or("?".to_owned(), |k| bytes(k * 1024));
    let rows: Vec<Vec<String>> = servers
        .iter()
        .filter_map(|(name, o)| o.and_then(Outcome::ok).map(|x| (name, x)))
        .map(|(name, x)| {
            vec![
                (*name).to_owned(),
                fmt_us(x.latency.p50_us),
                fmt_us(x.latency.p99_us),
                thousands(x.replay.samples as f64),
                fmt_us(x.replay.p50_us),
                fmt_us(x.replay.p99_us),
                fmt_us(x.replay.max_us),
                kib(x.rss_before_kib),
                kib(x.rss_peak_kib),
                pct(x.window.server_cpu_pct),
                pct(x.window.generator_cpu_pct),
                others([Some(&x.window)]),
            ]
        })
        .collect();
    out.push_str(&grid(&head, &rows, &[0]));
    for (name, o) in &servers {
        if let Some(x) = o.and_then(Outcome::ok) {
            if !x.resume_rejected.is_empty() {
                let reasons: Vec<String> = x
                    .resume_rejected
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect();
                out.push_str(&format!(
                    "  {name}: resume_rejected: {}\n",
                    reasons.join(", ")
                ));
            }
            if x.reconnects_without_offset > 0 {
                out.push_str(&format!(
                    "  {name}: {} reconnections had no offset to recover from (no event received \
                     since the session began)\n",
                    x.reconnects_without_offset
                ));
            }
            if x.seq_gaps > 0 || x.seq_repeats > 0 {
                out.push_str(&format!(
                    "  {name}: {} seq gaps, {} repeated seqs dropped\n",
                    x.seq_gaps, x.seq_repeats
                ));
            }
            if let Some(e) = &x.first_error {
                out.push_str(&format!("  {name}: {} errors, first: {e}\n", x.errors));
            }
        }
    }
    push_drops_failures(out, &servers);
}

/// The cluster scenario's targets.
fn cluster_checks(c: Option<&ClusterResult>, checks: &mut Vec<Check>) {
    let direct = c.map(|c| &c.direct);
    let same = direct.and_then(|d| d.same_hub.ok());
    let cross = direct.and_then(|d| d.cross_hub.ok());
    checks.push(Check {
        target: format!(
            "cluster: cross-hub direct p99 <= 2x same-hub p99 at {} msgs/s",
            direct.map_or("?".to_owned(), |d| thousands(d.offered_msgs_per_s as f64))
        ),
        measured: match (same, cross, direct.and_then(|d| d.p99_ratio)) {
            (Some(s), Some(x), Some(r)) => format!(
                "p99 {} cross vs {} same, {r}x{}{}",
                fmt_us(x.rtt.p99_us),
                fmt_us(s.rtt.p99_us),
                direct
                    .and_then(|d| d.median_round_ratio)
                    .map_or(String::new(), |m| format!(
                        "; median of {} alternating rounds {m}x",
                        direct.map_or(0, |d| d.rounds.len())
                    )),
                direct
                    .and_then(|d| d.nats_alone.ok())
                    .map_or(String::new(), |n| format!(
                        " (nats-server alone, no hub: p99 {})",
                        fmt_us(n.rtt.p99_us)
                    ))
            ),
            _ => "not measured".into(),
        },
        // The rounds' median when there are rounds: one long pair of steps is at the mercy of
        // the machine's drift between them.
        met: direct
            .and_then(|d| d.median_round_ratio.or(d.p99_ratio))
            .map(|r| r <= 2.0),
    });
    let fanout = c.map(|c| &c.fanout);
    let spread = fanout.and_then(|f| f.cluster_spread.ok());
    let single = fanout.and_then(|f| f.single_hub.ok());
    let ratio = fanout.and_then(|f| f.cpu_ratio);
    checks.push(Check {
        target: "cluster: fan-out hub CPU per delivery (members on every hub) <= 2x a single hub"
            .into(),
        measured: match (spread, single, ratio) {
            (Some(a), Some(b), Some(r)) => format!(
                "{} vs {} per delivery, {r}x",
                fmt_cpu_us(a.server_cpu_us_per_delivery),
                fmt_cpu_us(b.server_cpu_us_per_delivery)
            ),
            _ => "not measured".into(),
        },
        met: ratio.map(|r| r <= 2.0),
    });
    let dead = c.and_then(|c| c.dead_hub.ok());
    checks.push(Check {
        target: "cluster: a killed hub's ids accepted by another hub within 10 s".into(),
        measured: dead.map_or("not measured".into(), |d| match d.all_s {
            Some(s) => format!("all {} ids after {s:.2} s", d.clients),
            None => format!("{} of {} ids accepted", d.accepted, d.clients),
        }),
        met: dead.map(|d| d.all_s.is_some_and(|s| s <= 10.0)),
    });
}

/// The tables of the cluster scenario: direct messages, fan-out, a killed hub's ids.
fn cluster_table(out: &mut String, outcome: &Outcome<ClusterResult>) {
    let c = match outcome {
        Outcome::Ok(c) => c,
        Outcome::Failed { error } => {
            out.push_str(&format!("\n(i) cluster: failed: {error}\n"));
            return;
        }
    };
    out.push_str(&format!(
        "\n(i) cluster: {} hubs (`peermesh serve --cluster`) on one {} (-js), all on this \
         machine; {} s per step; nats% = nats-server's CPU, apart from the hubs'\n",
        c.hubs, c.nats_server, c.duration_s
    ));
    let d = &c.direct;
    out.push_str(&format!(
        "direct messages: {} pairs spread over the hubs, {} msgs/s offered (both legs); \
         latency = round trip, timed by the originator (one clock); relayed = messages the \
         hubs published to each other; nats-server alone = two async-nats clients, a round \
         trip through the broker at the same rate (the two crossings a cross-hub round trip \
         makes, without the hubs)\n",
        d.pairs,
        thousands(d.offered_msgs_per_s as f64)
    ));
    let head = [
        "pair ends",
        "msgs/s",
        "p50",
        "p99",
        "p99.9",
        "lost",
        "relayed",
        "hubs cpu%",
        "nats%",
        "gen%",
        "others%",
    ];
    let mut rows = Vec::new();
    for (name, step, relayed) in [
        ("single hub, no cluster", &d.single_hub, None),
        ("cluster, same hub", &d.same_hub, d.same_hub_relayed),
        ("cluster, different hubs", &d.cross_hub, d.cross_hub_relayed),
    ] {
        match step {
            Outcome::Ok(x) => rows.push(vec![
                name.to_owned(),
                thousands(x.msgs_per_s),
                fmt_us(x.rtt.p50_us),
                fmt_us(x.rtt.p99_us),
                fmt_us(x.rtt.p999_us),
                x.lost.to_string(),
                relayed.map_or("-".to_owned(), |v| thousands(v as f64)),
                pct(x.window.server_cpu_pct),
                pct(x.window.broker_cpu_pct),
                pct(x.window.generator_cpu_pct),
                others([Some(&x.window)]),
            ]),
            Outcome::Failed { error } => {
                let mut row = vec![name.to_owned(), format!("failed: {error}")];
                row.extend(std::iter::repeat_n(String::new(), head.len() - 2));
                rows.push(row);
            }
        }
    }
    match &d.nats_alone {
        Outcome::Ok(x) => rows.push(vec![
            "nats-server alone, no hub".to_owned(),
            thousands(x.msgs_per_s),
            fmt_us(x.rtt.p50_us),
            fmt_us(x.rtt.p99_us),
            fmt_us(x.rtt.p999_us),
            x.lost.to_string(),
            "-".to_owned(),
            pct(x.window.server_cpu_pct),
            pct(x.window.broker_cpu_pct),
            pct(x.window.generator_cpu_pct),
            others([Some(&x.window)]),
        ]),
        Outcome::Failed { error } => {
            let mut row = vec!["nats-server alone".to_owned(), format!("failed: {error}")];
            row.extend(std::iter::repeat_n(String::new(), head.len() - 2));
            rows.push(row);
        }
    }
    for (name, ratio) in [
        ("p99 different / same hub", d.p99_ratio),
        (
            "p99 different hubs / no cluster",
            d.cross_vs_single_p99_ratio,
        ),
    ] {
        if let Some(r) = ratio {
            let mut row = vec![name.to_owned(), String::new(), String::new()];
            row.push(format!("{r}x"));
            row.extend(std::iter::repeat_n(String::new(), head.len() - 4));
            rows.push(row);
        }
    }
    out.push_str(&grid(&head, &rows, &[0]));
    if !d.rounds.is_empty() {
        let each: Vec<String> = d
            .rounds
            .iter()
            .map(|r| {
                format!(
                    "{}x ({} / {})",
                    r.ratio,
                    fmt_us(r.cross_p99_us),
                    fmt_us(r.same_p99_us)
                )
            })
            .collect();
        out.push_str(&format!(
            "p99 different / same hub in {} alternating rounds: {}; median {}\n",
            d.rounds.len(),
            each.join(", "),
            d.median_round_ratio
                .map_or("-".to_owned(), |m| format!("{m}x"))
        ));
    }
    for (name, step) in [
        ("single hub", &d.single_hub),
        ("same hub", &d.same_hub),
        ("different hubs", &d.cross_hub),
    ] {
        if let Some(x) = step.ok() {
            if let Some(e) = &x.first_error {
                out.push_str(&format!("  {name}: {} errors, first: {e}\n", x.errors));
            }
        }
    }
    let f = &c.fanout;
    let shape = [&f.cluster_spread, &f.cluster_one_hub, &f.single_hub]
        .into_iter()
        .find_map(Outcome::ok);
    out.push_str(&format!(
        "room fan-out: {} members, {} senders, {} room messages in flight; CPU per delivery = \
         user+system time of the hubs (summed) / deliveries\n",
        shape.map_or("?".to_owned(), |x| x.members.to_string()),
        shape.map_or("?".to_owned(), |x| x.senders.to_string()),
        shape.map_or("?".to_owned(), |x| x.in_flight.to_string()),
    ));
    let head = [
        "layout",
        "deliveries/s",
        "p50",
        "p99",
        "lost",
        "hubs cpu%",
        "nats%",
        "hub CPU/delivery",
        "+nats",
        "gen%",
        "others%",
    ];
    let mut rows = Vec::new();
    let spread_name = format!("cluster, spread over {} hubs", c.hubs);
    for (name, o) in [
        ("single hub, no cluster", &f.single_hub),
        ("cluster, all on hub 1", &f.cluster_one_hub),
        (spread_name.as_str(), &f.cluster_spread),
    ] {
        match o {
            Outcome::Ok(x) => rows.push(vec![
                name.to_owned(),
                thousands(x.deliveries_per_s),
                fmt_us(x.latency.p50_us),
                fmt_us(x.latency.p99_us),
                x.lost.to_string(),
                pct(x.window.server_cpu_pct),
                pct(x.window.broker_cpu_pct),
                fmt_cpu_us(x.server_cpu_us_per_delivery),
                fmt_cpu_us(x.with_broker_cpu_us_per_delivery),
                pct(x.window.generator_cpu_pct),
                others([Some(&x.window)]),
            ]),
            Outcome::Failed { error } => {
                let mut row = vec![name.to_owned(), format!("failed: {error}")];
                row.extend(std::iter::repeat_n(String::new(), head.len() - 2));
                rows.push(row);
            }
        }
    }
    if let Some(r) = f.cpu_ratio {
        let mut row = vec!["CPU/delivery ratio, spread / single".to_owned()];
        row.extend(std::iter::repeat_n(String::new(), 6));
        row.push(format!("{r}x"));
        row.extend(std::iter::repeat_n(String::new(), head.len() - 8));
        rows.push(row);
    }
    out.push_str(&grid(&head, &rows, &[0]));
    for (name, o) in [
        ("single hub", &f.single_hub),
        ("cluster, one hub", &f.cluster_one_hub),
        ("cluster, spread", &f.cluster_spread),
    ] {
        if let Some(x) = o.ok() {
            if let Some(e) = &x.first_error {
                out.push_str(&format!("  {name}: {} errors, first: {e}\n", x.errors));
            }
        }
    }
    session_table(out, c);
    match &c.dead_hub {
        Outcome::Failed { error } => out.push_str(&format!("  dead hub: failed: {error}\n")),
        Outcome::Ok(d) => {
            out.push_str(&format!(
                "dead hub: {} clients on hub {}, kill -9; hellos with their ids to the other hubs \
                 every {} ms until accepted; seconds from the kill\n",
                d.clients, c.hubs, d.poll_ms
            ));
            let head = [
                "clients", "accepted", "first", "half", "all", "hellos", "id_taken", "errors",
            ];
            let s = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2} s"));
            let rows = vec![vec![
                d.clients.to_string(),
                d.accepted.to_string(),
                s(d.first_s),
                s(d.median_s),
                s(d.all_s),
                thousands(d.hellos as f64),
                thousands(d.refused as f64),
                d.errors.to_string(),
            ]];
            out.push_str(&grid(&head, &rows, &[]));
            if let Some(e) = &d.first_error {
                out.push_str(&format!("  dead hub: first error: {e}\n"));
            }
        }
    }
}

/// The cluster's busy session in both layouts.
fn session_table(out: &mut String, c: &ClusterResult) {
    let sess = &c.sessions;
    let shape = [&sess.cluster_spread, &sess.single_hub]
        .into_iter()
        .find_map(Outcome::ok);
    out.push_str(&format!(
        "one busy session: a writer updating its objects ({} operations, pipelined) and {} \
         members; the writer's hub holds the session; ops/s until every member applied the \
         last; CPU per operation = user+system time of the hubs (summed) / operations\n",
        shape.map_or("?".to_owned(), |x| thousands(x.ops as f64)),
        shape.map_or("?".to_owned(), |x| x.members.to_string()),
    ));
    let head = [
        "layout",
        "members elsewhere",
        "ops/s",
        "deliveries/s",
        "hubs cpu%",
        "nats%",
        "NATS msgs/op",
        "hub CPU/op",
    ];
    let mut rows = Vec::new();
    let spread_name = format!("cluster, spread over {} hubs", c.hubs);
    for (name, o) in [
        ("single hub, no cluster", &sess.single_hub),
        (spread_name.as_str(), &sess.cluster_spread),
    ] {
        match o {
            Outcome::Ok(x) => rows.push(vec![
                name.to_owned(),
                x.members_elsewhere.to_string(),
                thousands(x.ops_per_s),
                thousands(x.deliveries_per_s),
                pct(x.hubs_cpu_pct),
                pct(x.nats_cpu_pct),
                x.nats_msgs_per_op
                    .map_or_else(|| "-".to_owned(), |m| format!("{m:.2}")),
                fmt_cpu_us(x.hub_cpu_us_per_op),
            ]),
            Outcome::Failed { error } => {
                let mut row = vec![name.to_owned(), format!("failed: {error}")];
                row.extend(std::iter::repeat_n(String::new(), head.len() - 2));
                rows.push(row);
            }
        }
    }
    if let Some(r) = sess.cpu_ratio {
        let mut row = vec!["CPU/op ratio, spread / single".to_owned()];
        row.extend(std::iter::repeat_n(String::new(), head.len() - 2));
        row.push(format!("{r}x"));
        rows.push(row);
    }
    out.push_str(&grid(&head, &rows, &[0]));
    match &c.takeover {
        Outcome::Failed { error } => {
            out.push_str(&format!("  session of the killed hub: failed: {error}\n"));
        }
        Outcome::Ok(t) => out.push_str(&format!(
            "session of the killed hub ({} objects, a member on two other hubs): its creator gone \
             for both after {:.2} s; next operation {:.1} ms; objects kept {}/{}; same revision \
             for both: {}\n",
            thousands(t.objects as f64),
            t.gone_s,
            t.next_op_ms,
            thousands(t.objects_kept as f64),
            thousands(t.objects as f64),
            if t.same_revision { "yes" } else { "NO" },
        )),
    }
}

/// CPU microseconds per delivery, e.g. `1.23µs`.
fn fmt_cpu_us(v: Option<f64>) -> String {
    v.map_or("-".to_owned(), |v| format!("{v:.2}µs"))
}

fn push_drops_failures(out: &mut String, servers: &[(&str, Option<&Outcome<DropsResult>>)]) {
    for (name, o) in servers {
        if let Some(Outcome::Failed { error }) = o {
            out.push_str(&format!("  {name} FAILED: {error}\n"));
        }
    }
}

fn grid(head: &[&str], rows: &[Vec<String>], bars: &[usize]) -> String {
    let cols = head.len();
    let mut width: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, c) in row.iter().enumerate().take(cols) {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            let pad = width[i].saturating_sub(c.chars().count());
            if i == 0 {
                l.push_str(c);
                l.push_str(&" ".repeat(pad));
            } else {
                l.push(' ');
                l.push_str(&" ".repeat(pad));
                l.push_str(c);
            }
            if bars.contains(&i) && i + 1 < cols {
                l.push_str(" |");
            }
        }
        l.trim_end().to_owned() + "\n"
    };
    let mut out = line(head.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// The busiest "other processes" figure among the windows.
fn others<'a>(windows: impl IntoIterator<Item = Option<&'a Rates>>) -> String {
    let worst = windows
        .into_iter()
        .flatten()
        .filter_map(|w| w.other_cpu_pct)
        .fold(None, |acc: Option<f64>, v| {
            Some(acc.map_or(v, |a| a.max(v)))
        });
    pct(worst)
}

fn push_failures<T>(out: &mut String, ours: &Outcome<T>, theirs: Option<&Outcome<T>>) {
    if let Outcome::Failed { error } = ours {
        out.push_str(&format!("  peermesh FAILED: {error}\n"));
    }
    if let Some(Outcome::Failed { error }) = theirs {
        out.push_str(&format!("  socket.io FAILED: {error}\n"));
    }
}

fn pct(p: Option<f64>) -> String {
    p.map_or("-".to_owned(), |p| format!("{p:.0}"))
}

/// `1234567.0` → `1,234,567`.
pub(crate) fn thousands(v: f64) -> String {
    let n = v.round().max(0.0) as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Microseconds as `85µs` or `1.23ms`.
pub(crate) fn fmt_us(us: f64) -> String {
    if us <= 0.0 {
        "-".to_owned()
    } else if us < 1000.0 {
        format!("{us:.0}µs")
    } else if us < 1_000_000.0 {
        format!("{:.2}ms", us / 1000.0)
    } else {
        format!("{:.2}s", us / 1_000_000.0)
    }
}

/// Bytes as `812 B`, `3.1 KiB` or `45.2 MiB`.
pub(crate) fn bytes(b: u64) -> String {
    if b < 1024 {
        format!("{b} B")
    } else if b < 1024 * 1024 {
        format!("{:.1} KiB", b as f64 / 1024.0)
    } else {
        format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatting() {
        assert_eq!(thousands(1_234_567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(fmt_us(85.2), "85µs");
        assert_eq!(fmt_us(1234.0), "1.23ms");
        assert_eq!(bytes(3 * 1024 + 100), "3.1 KiB");
        assert_eq!(ratio(10.0, 2.0), Some(5.0));
        assert_eq!(ratio(10.0, 0.0), None);
    }
}
