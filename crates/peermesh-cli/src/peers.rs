//! `peermesh peers`: a p2p-node peer manager over TCP (`peermesh_mesh::tcp::TcpManager`)
//! driven by JSON lines, with the line contract of `peermesh connect`.
//!
//! ```text
//!   stdin thread ──lines (64)─────────────────────────────┐
//!                                                         ▼
//!   TcpManager ──events (1,024)──▶ pump ──(65,536)──▶ session loop ──batches──▶ stdout thread
//!        ▲                                               │
//!        └──── TcpManagerHandle requests, oneshot replies ┘
//! ```
//!
//! One loop owns both directions. A command's request to the manager is answered at once (the
//! actor never waits on the network for a reply), so the loop awaits it before reading further:
//! commands take effect in line order, and the `sent` line of a selective send is always
//! printed before the first `answer` of its wait. See `docs/cli.md` for the contract.

mod command;
mod output;
pub(crate) mod stdout;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use bytes::Bytes;
use peermesh_mesh::manager::{
    AnswerSpec, HostSpec, ManagerConfig, ManagerEvent, PeerAddr, Selection, Severity, WaitId,
};
use peermesh_mesh::tcp::{TcpManager, TcpManagerError, TcpManagerHandle, TcpOptions};
use peermesh_mesh::wire::p2p_node::{DEFAULT_MAGIC, DEFAULT_MAX_PAYLOAD};
use tokio::sync::mpsc;

use crate::connect::output::{error, ok};
use crate::connect::{spawn_stdin_reader, Input};
use command::Op;
use stdout::Stdout;

/// Most events formatted into one batch of lines, handed to the stdout thread at once.
const EVENT_BATCH: usize = 512;
/// Events the pump holds for the session loop. The manager's own channel holds 1,024 and drops
/// what does not fit; a burst of messages from one fast peer fills it in a millisecond.
const EVENT_QUEUE: usize = 65_536;
/// Least time between two `log` lines about dropped events.
const DROP_REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// How long past the last answer deadline the end of input waits for `answers_done` lines
/// (they only go missing when events were dropped).
const WAIT_GRACE: Duration = Duration::from_secs(1);

/// The contract, shown by `peermesh peers --help` after the options.
const AFTER_LONG_HELP: &str = r#"Contract:
  Run a peer manager speaking the p2p-node TCP framing of the npm p2p-manager package, driven
  by JSON lines: one command per stdin line, one event per stdout line. Logs go to stderr
  (RUST_LOG=peermesh=debug for more). Peers are named "HOST:PORT": the address dialled, or the
  remote address of an inbound connection (an ephemeral port; p2p-node has no handshake).
  - The first line out is {"type":"listening","addr":"127.0.0.1:PORT"} (the real port with :0).
  - Commands name what to do with "op"; events name what happened with "type".
  - A command may carry a correlation number "req": it is echoed in exactly one answer line
    (ok, sent, peers or error). Without "req", ok is not printed; sent, peers and errors are.
  - Commands take effect in line order.
  - A line that is not a valid command prints {"type":"error","code":"bad_command",...}
    (with its "req" when readable) and changes nothing. Unknown fields are refused, empty lines
    ignored, lines over 4 MiB refused.
  - At end of input it waits for every open answer wait (answers_done), closes every
    connection (peer_end lines), and exits 0. It exits 1 when it cannot listen.

Commands (stdin):
  {"op":"send","number":2,"property":"state","values":["connected"],"command":"knock",
   "payload_hex":"01","answer":"answer","timeout_ms":2000,"req":1}
      number random peers whose property equals one of values (number <= 0: all; property
      and values default to state / ["connected"]); with "answer", answers are collected
      until all chosen peers answered or timeout_ms (default --answer-timeout-ms) passed
  {"op":"reply","peer":"127.0.0.1:50123","command":"answer","payload_hex":"02"}
  {"op":"add_pool","hosts":["127.0.0.1:8334",["10.0.0.2",8333],{"host":"h","port":1}]}
  {"op":"add_active","hosts":["127.0.0.1:8334"]}
  {"op":"del_active","peer":"127.0.0.1:8334","reason":"optional"}
  {"op":"set_property","peer":"127.0.0.1:8334","key":"role","value":"miner"}
  {"op":"set_state","peer":"127.0.0.1:8334","state":"handshaked"}
  {"op":"peers","req":2}

Events (stdout):
  {"type":"listening","addr":"127.0.0.1:8333"}
  {"type":"peer_connect","peer":"127.0.0.1:50123"}
  {"type":"peer_end","peer":"127.0.0.1:50123","reason":"the peer closed the connection"}
  {"type":"message","peer":"127.0.0.1:50123","command":"knock","payload_hex":"01"}
  {"type":"sent","req":1,"peers":["127.0.0.1:50123"],"wait":1}
  {"type":"answer","wait":1,"peer":"127.0.0.1:50123","payload_hex":"02"}
      a frame that answers a wait prints as answer, not also as message
  {"type":"answers_done","wait":1,"missing":[]}
  {"type":"peers","req":2,"peers":[{"peer":"...","state":"connected","direction":"inbound",
   "properties":{},"idle_ms":12}]}
  {"type":"ok","req":3}
  {"type":"error","code":"unknown_peer","message":"...","req":4}
      codes: bad_command, unknown_peer, payload_too_large, closed, invalid_option,
      listen_failed
  {"type":"status","active":2,"pool":0,"backed_off":0}
  {"type":"log","severity":"warning","message":"...","peer":"127.0.0.1:50123"}
      severities info < notice < warning < error; --log-level sets the least printed

Example:
  peermesh peers --listen 127.0.0.1:8334 &
  (echo '{"op":"add_active","hosts":["127.0.0.1:8334"]}'; sleep 1
   echo '{"op":"send","command":"knock","payload_hex":"01"}') | peermesh peers --listen 127.0.0.1:0

See docs/cli.md for the full contract."#;

/// Arguments of `peermesh peers`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Run with --help for the JSON line contract.",
    after_long_help = AFTER_LONG_HELP
)]
pub(crate) struct PeersArgs {
    /// Address to accept peers on; port 0 picks a free port (printed in the first line).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Peer to add to the pool at start, HOST:PORT (HOST alone: --default-port); repeatable.
    #[arg(long = "seed", value_name = "HOST:PORT")]
    seeds: Vec<String>,
    /// Frame magic, decimal or 0x-prefixed hex [default: 0xD9B4BEF9, p2p-manager's].
    #[arg(long, value_parser = parse_magic)]
    magic: Option<u32>,
    /// Below this many active peers, connect from the pool at once.
    #[arg(long, default_value_t = 3)]
    min_peers: usize,
    /// Hard limit of active peers (dials and accepted connections).
    #[arg(long, default_value_t = 20)]
    max_peers: usize,
    /// Largest payload received or sent, in bytes [default: 10 MiB, p2p-node's].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    max_payload: Option<u32>,
    /// Port of hosts given without one.
    #[arg(long, default_value_t = 8333)]
    default_port: u16,
    /// Answer wait of a `send` with "answer" but no "timeout_ms", in ms.
    #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(1..=command::MAX_TIMEOUT_MS))]
    answer_timeout_ms: u64,
    /// Interval of `status` lines, in ms.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    status_interval_ms: u64,
    /// Least severity of the manager's `log` lines printed on stdout.
    #[arg(long, value_enum, default_value_t = LogLevel::Notice)]
    log_level: LogLevel,
}

/// The `--log-level` values.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogLevel {
    /// Everything, including routine steps.
    Info,
    /// Refused connections, skipped dials, limits reached, undecodable commands.
    Notice,
    /// Faults of peers (bad frames, failed dials, back-offs) and dropped frames.
    Warning,
    /// Peers that broke a limit and were disconnected.
    Error,
}

impl LogLevel {
    fn severity(self) -> Severity {
        match self {
            LogLevel::Info => Severity::Info,
            LogLevel::Notice => Severity::Notice,
            LogLevel::Warning => Severity::Warning,
            LogLevel::Error => Severity::Error,
        }
    }
}

fn parse_magic(text: &str) -> Result<u32, String> {
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|e| format!("not a 32-bit number (decimal or 0x hex): {e}"))
}

impl PeersArgs {
    /// The manager's and the shell's options, and the seeds; a sentence when they are wrong.
    fn config(&self) -> Result<(ManagerConfig, TcpOptions, Vec<HostSpec>), String> {
        let cfg = ManagerConfig {
            min_peers: self.min_peers,
            max_peers: self.max_peers,
            status_interval: Duration::from_millis(self.status_interval_ms),
            default_port: self.default_port,
            ..ManagerConfig::default()
        };
        cfg.validate().map_err(|e| e.to_string())?;
        let opts = TcpOptions {
            listen: Some(self.listen),
            magic: self.magic.unwrap_or(DEFAULT_MAGIC),
            max_payload: usize::try_from(self.max_payload.unwrap_or(DEFAULT_MAX_PAYLOAD))
                .unwrap_or(usize::MAX),
            seed: rand_seed(),
        };
        let seeds = self
            .seeds
            .iter()
            .map(|s| {
                let addr = HostSpec::Text(s.clone())
                    .resolve(self.default_port)
                    .map_err(|e| format!("--seed: {e}"))?;
                Ok(HostSpec::Pair(addr.host, addr.port))
            })
            .collect::<Result<_, String>>()?;
        Ok((cfg, opts, seeds))
    }
}

/// A seed for the manager's random choice of peers: different in every run.
fn rand_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    // Fold the 128-bit count into 64 bits, mixing in the pid so parallel runs differ.
    (nanos as u64) ^ ((nanos >> 64) as u64) ^ u64::from(std::process::id()).rotate_left(32)
}

pub(crate) async fn run(args: PeersArgs) -> anyhow::Result<()> {
    let (out, writer) = Stdout::spawn()?;
    let result = session(&args, out).await;
    // Every `Stdout` is gone once the session returns: the thread writes the rest and stops.
    match tokio::task::spawn_blocking(move || writer.join()).await {
        Ok(Ok(())) => {}
        _ => tracing::error!("the stdout thread failed"),
    }
    result
}

async fn session(args: &PeersArgs, out: Stdout) -> anyhow::Result<()> {
    let (cfg, opts, seeds) = match args.config() {
        Ok(c) => c,
        Err(message) => {
            out.line(error("invalid_option", &message, None)).await;
            return Err(anyhow!(message));
        }
    };
    let (handle, events) = match TcpManager::spawn(cfg, opts) {
        Ok(spawned) => spawned,
        Err(e) => {
            let message = format!("cannot listen on {}: {e}", args.listen);
            out.line(error("listen_failed", &message, None)).await;
            return Err(anyhow!(message));
        }
    };
    let Some(local) = handle.local_addr() else {
        return Err(anyhow!(
            "the peer manager did not report its listening address"
        ));
    };
    tracing::info!(%local, "listening for p2p-node peers");
    out.line(output::listening(local)).await;

    let pump_lost = Arc::new(AtomicU64::new(0));
    let mut events = spawn_pump(events, pump_lost.clone());
    let mut session = Session {
        handle,
        pump_lost,
        out,
        waits: HashMap::new(),
        answered: None,
        dropped_seen: 0,
        dropped_reported: None,
        log_level: args.log_level.severity(),
        answer_timeout: Duration::from_millis(args.answer_timeout_ms),
        default_port: args.default_port,
    };
    if session.handle.launch(seeds).await.is_err() {
        return Err(anyhow!("the peer manager stopped at start"));
    }
    let mut input = spawn_stdin_reader()?;
    let mut input_open = true;
    loop {
        let grace_end = if input_open {
            None
        } else if session.waits.is_empty() {
            break;
        } else {
            session.waits.values().max().map(|d| *d + WAIT_GRACE)
        };
        let drop_report = session.drop_report_due();
        tokio::select! {
            event = events.recv() => match event {
                Some(event) => session.events(event, &mut events).await,
                None => return Err(anyhow!("the peer manager stopped unexpectedly")),
            },
            item = input.recv(), if input_open => match item {
                None => {
                    tracing::debug!(open_waits = session.waits.len(), "end of input");
                    input_open = false;
                }
                Some(Input::Bad(message)) => {
                    session.out.line(error("bad_command", &message, None)).await;
                }
                Some(Input::Line(text)) => session.execute(&text).await,
            },
            () = sleep_until(drop_report) => session.report_dropped(true).await,
            () = sleep_until(grace_end) => {
                tracing::warn!(
                    open_waits = session.waits.len(),
                    "answer waits never reported their end (events were dropped); giving up on them"
                );
                session.waits.clear();
            }
        }
    }
    // Close every connection; the event channel ends when the manager's actor does, after
    // the peer_end of each connection.
    if session.handle.shutdown().await.is_err() {
        tracing::debug!("the peer manager had already stopped");
    }
    while let Some(event) = events.recv().await {
        session.events(event, &mut events).await;
    }
    session.report_dropped(true).await;
    Ok(())
}

/// Moves the manager's events into a queue of [`EVENT_QUEUE`] as fast as they come, so that
/// the manager's own small channel does not overflow while the session formats a burst.
fn spawn_pump(
    mut from: mpsc::Receiver<ManagerEvent>,
    lost: Arc<AtomicU64>,
) -> mpsc::Receiver<ManagerEvent> {
    let (to, rx) = mpsc::channel(EVENT_QUEUE);
    tokio::spawn(async move {
        let mut batch = Vec::with_capacity(1024);
        while from.recv_many(&mut batch, 1024).await > 0 {
            for event in batch.drain(..) {
                match to.try_send(event) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        lost.fetch_add(1, Ordering::Relaxed);
                    }
                    // The session has ended.
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                }
            }
        }
    });
    rx
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// The state of one run: the manager's handle and what the lines printed so far promise.
struct Session {
    handle: TcpManagerHandle,
    out: Stdout,
    /// Answer waits announced in a `sent` line and not yet ended, with their deadlines.
    waits: HashMap<WaitId, Instant>,
    /// The peer and payload of the last `answer` printed: the `message` event of the same
    /// frame follows it (after the `answers_done` it may have completed) and is not printed.
    answered: Option<(PeerAddr, Bytes)>,
    /// Events the pump dropped because its queue was full.
    pump_lost: Arc<AtomicU64>,
    /// Dropped events already reported, and when.
    dropped_seen: u64,
    dropped_reported: Option<Instant>,
    log_level: Severity,
    answer_timeout: Duration,
    default_port: u16,
}

impl Session {
    /// Prints `first` and the events queued behind it (up to [`EVENT_BATCH`]) in one write.
    async fn events(&mut self, first: ManagerEvent, rx: &mut mpsc::Receiver<ManagerEvent>) {
        let mut batch = Vec::new();
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(event) = next {
            self.append_line(&mut batch, event);
            taken += 1;
            next = if taken < EVENT_BATCH {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        // Each line ends with a newline, and the writer adds one: drop the last.
        if batch.last() == Some(&b'\n') {
            batch.pop();
        }
        match String::from_utf8(batch) {
            // An empty batch prints nothing.
            Ok(text) => self.out.line(text).await,
            Err(e) => tracing::error!(error = %e, "a batch of lines is not UTF-8; not printed"),
        }
        self.report_dropped(false).await;
    }

    /// Appends the line of one manager event to `out`, if it gets one, with its newline.
    fn append_line(&mut self, out: &mut Vec<u8>, event: ManagerEvent) {
        // The manager reports one answering frame as its answers (each maybe followed by the
        // end of its wait), then as a message.
        let answered = match &event {
            ManagerEvent::AnswersDone { .. } => None,
            _ => self.answered.take(),
        };
        let line = match event {
            ManagerEvent::PeerConnect(peer) => Some(output::peer_connect(&peer)),
            ManagerEvent::PeerEnd { peer, reason } => Some(output::peer_end(&peer, &reason)),
            ManagerEvent::Message {
                peer,
                command,
                payload,
            } => {
                let echo = answered.is_some_and(|(p, b)| p == peer && b == payload);
                if !echo {
                    output::message_into(out, &peer, &command, &payload);
                    out.push(b'\n');
                }
                None
            }
            ManagerEvent::Answer {
                wait,
                peer,
                payload,
            } => {
                let line = output::answer(wait, &peer, &payload);
                self.answered = Some((peer, payload));
                Some(line)
            }
            ManagerEvent::AnswersDone { wait, missing } => {
                self.waits.remove(&wait);
                Some(output::answers_done(wait, &missing))
            }
            ManagerEvent::Status {
                active,
                pool,
                backed_off,
            } => Some(output::status(active, pool, backed_off)),
            ManagerEvent::Log {
                severity,
                message,
                peer,
            } => {
                (severity >= self.log_level).then(|| output::log(severity, &message, peer.as_ref()))
            }
        };
        if let Some(line) = line {
            out.extend_from_slice(line.as_bytes());
            out.push(b'\n');
        }
    }

    /// Events lost so far, by the manager or the pump.
    fn dropped(&self) -> u64 {
        self.handle.dropped_events() + self.pump_lost.load(Ordering::Relaxed)
    }

    /// When unreported dropped events should be reported, if there are any.
    fn drop_report_due(&self) -> Option<Instant> {
        (self.dropped() > self.dropped_seen).then(|| {
            self.dropped_reported
                .map_or_else(Instant::now, |t| t + DROP_REPORT_INTERVAL)
        })
    }

    /// Prints a warning when the manager dropped events since the last report, at most once
    /// per [`DROP_REPORT_INTERVAL`] unless `now`.
    async fn report_dropped(&mut self, now: bool) {
        let total = self.dropped();
        let due = now
            || self
                .dropped_reported
                .is_none_or(|t| t.elapsed() >= DROP_REPORT_INTERVAL);
        if total > self.dropped_seen && due {
            self.dropped_reported = Some(Instant::now());
            let sentence = output::dropped_sentence(total, total - self.dropped_seen);
            self.dropped_seen = total;
            tracing::warn!("{sentence}");
            self.out
                .line(output::log(Severity::Warning, &sentence, None))
                .await;
        }
    }

    /// Carries out one stdin line.
    async fn execute(&mut self, text: &str) {
        let text = text.trim();
        if text.is_empty() {
            return;
        }
        let line = match command::parse(text, self.default_port) {
            Ok(line) => line,
            Err(refusal) => {
                let e = error("bad_command", &refusal.message, refusal.req);
                self.out.line(e).await;
                return;
            }
        };
        let req = line.req;
        let printed = match self.apply(line.op, req).await {
            Ok(Some(text)) => text,
            Ok(None) => match req {
                Some(r) => ok(r),
                None => return,
            },
            Err((code, message)) => error(code, &message, req),
        };
        self.out.line(printed).await;
    }

    /// Asks the manager; `Ok(None)` means "print `ok` when there is a `req`".
    async fn apply(
        &mut self,
        op: Op,
        req: Option<u64>,
    ) -> Result<Option<String>, (&'static str, String)> {
        let h = &self.handle;
        let unknown = |peer: &PeerAddr| ("unknown_peer", format!("no active peer {peer}"));
        match op {
            Op::Send {
                number,
                property,
                values,
                command,
                payload,
                answer,
            } => {
                let answer = answer.map(|(command, timeout)| AnswerSpec {
                    command,
                    timeout: timeout.unwrap_or(self.answer_timeout),
                });
                let deadline = answer.as_ref().map(|a| Instant::now() + a.timeout);
                let selection = Selection::new(number, &property, values);
                let outcome = h
                    .send(selection, &command, payload, answer)
                    .await
                    .map_err(manager_error)?;
                if let (Some(wait), Some(deadline)) = (outcome.wait, deadline) {
                    self.waits.insert(wait, deadline);
                }
                Ok(Some(output::sent(req, &outcome.peers, outcome.wait)))
            }
            Op::Reply {
                peer,
                command,
                payload,
            } => match h.send_to(peer.clone(), &command, payload).await {
                Ok(true) => Ok(None),
                Ok(false) => Err(unknown(&peer)),
                Err(e) => Err(manager_error(e)),
            },
            Op::AddPool(hosts) => h
                .add_pool(specs(hosts))
                .await
                .map(|()| None)
                .map_err(manager_error),
            Op::AddActive(hosts) => h
                .add_active(specs(hosts))
                .await
                .map(|()| None)
                .map_err(manager_error),
            Op::DelActive { peer, reason } => {
                let active = h.peers().await.map_err(manager_error)?;
                if !active.iter().any(|p| p.addr == peer) {
                    return Err(unknown(&peer));
                }
                let reason = reason.as_deref().unwrap_or("closed by the application");
                h.del_active(peer, reason).await.map_err(manager_error)?;
                Ok(None)
            }
            Op::SetProperty { peer, key, value } => {
                match h.set_property(peer.clone(), &key, value).await {
                    Ok(true) => Ok(None),
                    Ok(false) => Err(unknown(&peer)),
                    Err(e) => Err(manager_error(e)),
                }
            }
            Op::SetState { peer, state } => match h.set_state(peer.clone(), state).await {
                Ok(true) => Ok(None),
                Ok(false) => Err(unknown(&peer)),
                Err(e) => Err(manager_error(e)),
            },
            Op::Peers => {
                let infos = h.peers().await.map_err(manager_error)?;
                Ok(Some(output::peers(req, infos, Instant::now())))
            }
        }
    }
}

fn specs(hosts: Vec<PeerAddr>) -> Vec<HostSpec> {
    hosts
        .into_iter()
        .map(|a| HostSpec::Pair(a.host, a.port))
        .collect()
}

/// The error code and sentence of a failed manager request.
fn manager_error(e: TcpManagerError) -> (&'static str, String) {
    let code = match &e {
        TcpManagerError::Closed => "closed",
        TcpManagerError::Command(_) => "bad_command",
        TcpManagerError::PayloadTooLarge { .. } => "payload_too_large",
        _ => "error",
    };
    (code, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: PeersArgs,
    }

    fn args(list: &[&str]) -> PeersArgs {
        use clap::Parser as _;
        let mut all = vec!["peers"];
        all.extend_from_slice(list);
        Cli::parse_from(all).args
    }

    #[test]
    fn flags_become_options() {
        let a = args(&[
            "--listen",
            "127.0.0.1:0",
            "--seed",
            "10.0.0.1:7",
            "--seed",
            "example.org",
            "--magic",
            "0x0709110B",
            "--min-peers",
            "1",
            "--max-peers",
            "4",
            "--max-payload",
            "1024",
            "--default-port",
            "9000",
        ]);
        let (cfg, opts, seeds) = a.config().expect("valid options");
        assert_eq!(
            (cfg.min_peers, cfg.max_peers, cfg.default_port),
            (1, 4, 9000)
        );
        assert_eq!(opts.magic, 0x0709_110B);
        assert_eq!(opts.max_payload, 1024);
        assert_eq!(
            seeds,
            [
                HostSpec::Pair("10.0.0.1".into(), 7),
                HostSpec::Pair("example.org".into(), 9000)
            ]
        );
        let (_, opts, seeds) = args(&[]).config().expect("defaults");
        assert_eq!(opts.magic, DEFAULT_MAGIC);
        assert_eq!(opts.max_payload, 10 * 1024 * 1024);
        assert!(seeds.is_empty());
    }

    #[test]
    fn wrong_options_are_explained() {
        let e = args(&["--min-peers", "5", "--max-peers", "2"])
            .config()
            .expect_err("min > max");
        assert!(e.contains("min_peers"), "{e}");
        let e = args(&["--seed", "h:0"]).config().expect_err("port 0");
        assert!(e.contains("--seed"), "{e}");
        assert_eq!(parse_magic("3652501241"), Ok(0xD9B4_BEF9));
        assert!(parse_magic("0xzz").is_err());
    }
}
