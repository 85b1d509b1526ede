//! Scenario (g): delivery under drops.
//!
//! Every client reaches the server through a fault proxy of its own
//! ([`peermesh_testkit::FaultProxy`]), which resets the client's TCP connection (an RST on both
//! sides, no close frame) every `cut_every`, each client at its own phase, and refuses new
//! connections for `down` after each cut. One publisher on a direct, uncut connection sends
//! `rate` messages per second to every client by id. Each payload carries the send timestamp and
//! the client's message number, so every client checks that it gets each message exactly once
//! and in order.
//!
//! ```text
//!   publisher ──emit to d<i>──► server ──► proxy i ──► client d<i>     (× clients)
//!                                          ▲ cut every 15 s, refused 2 s after each cut
//! ```
//!
//! The clients speak the wire protocols themselves:
//!
//! - **peermesh**: `hello` with `"resume": true`; the client keeps the `secret` of its
//!   `welcome` and the `seq` of the last hub frame it handled, confirms frames with `received`
//!   (after 32 frames or 200 ms), and after a reset says
//!   `{"type":"hello","id":…,"resume":true,"secret":…,"last_seq":…}` through its proxy until
//!   the proxy lets it in (retrying every 100–200 ms). Frames whose `seq` is not above the last
//!   handled one are dropped; a `resume_rejected` is counted and the fresh session used.
//! - **Socket.IO**: as `socket.io-client` does: the connect packet carries the client id
//!   (`40{"id":…}`); once a CONNECT ack has given a `pid` (only servers with connection state
//!   recovery send one), every event's last string argument is remembered as the offset, and a
//!   reconnection says `40{"pid":…,"offset":…,"id":…}`. The session was recovered when the new
//!   ack carries the same `pid`; replayed events may come before that ack.
//!
//! The cuts happen only while the publisher sends. Afterwards the scenario waits (bounded)
//! until every client is connected again and nothing has arrived for a second, then counts:
//! messages never delivered are lost. A delivery is a *replay* when its message was sent before
//! the connection that delivered it was opened (it waited out a drop); its latency goes into
//! the replay histogram, every other delivery's into the ordinary one.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use peermesh_proto::{
    decode_server, encode_client, ClientFrame, ClientId, Encoding, Hello, ServerFrame,
    PROTOCOL_VERSION,
};
use peermesh_testkit::FaultProxy;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::client::{open, ConnectOpts};
use super::dialect::{json_str, parse_numbered, Dialect, Incoming, NUMBER_DIGITS, STAMP_DIGITS};
use super::progress::{self, Progress};
use super::stats::{new_histogram, Clock, ErrorLog, Latency, Rates, Recorder, Sample};
use super::target::Server;
use super::ws::{Opcode, WsConn, WsError, WsUrl};

/// Shortest payload string: the timestamp and the message number.
pub(crate) const MIN_PAYLOAD: usize = STAMP_DIGITS + NUMBER_DIGITS;

/// Frames after which a peermesh client confirms what it received (protocol §24.1).
const RECEIPT_FRAMES: u64 = 32;
/// Time after the first unconfirmed frame at which a peermesh client confirms (§24.1).
const RECEIPT_DELAY: Duration = Duration::from_millis(200);
/// Shortest and longest pause between two connection attempts while the proxy refuses.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_JITTER_MS: f64 = 100.0;
/// Attempts at a client's first connection (no cuts happen during setup).
const FIRST_ATTEMPTS: u32 = 3;
/// The end of the run waits until nothing arrived for this long.
const QUIET: Duration = Duration::from_secs(1);
/// Messages the publisher sends at once when it fell behind its schedule.
const MAX_BURST: u64 = 10_000;

/// Settings of the drops scenario.
#[derive(Debug, Clone)]
pub(crate) struct DropsConfig {
    /// Clients, each behind its own fault proxy.
    pub(crate) clients: usize,
    /// How long the publisher sends (and the proxies cut).
    pub(crate) duration: Duration,
    /// Time between two cuts of one client's connection.
    pub(crate) cut_every: Duration,
    /// How long a proxy refuses connections after a cut.
    pub(crate) down: Duration,
    /// Messages per second to each client.
    pub(crate) rate: f64,
    /// Length of the payload string in bytes (at least [`MIN_PAYLOAD`]).
    pub(crate) payload: usize,
    /// Extra time allowed, after the sending and the last refusal, for the clients to come
    /// back and receive what they missed.
    pub(crate) drain: Duration,
    /// Most messages the publisher sends in all.
    pub(crate) max_messages: u64,
    /// Connections opened at the same time during setup.
    pub(crate) concurrency: usize,
    /// Time allowed for one connection attempt (TCP, upgrade, handshake).
    pub(crate) connect_timeout: Duration,
    /// Seed of the cut phases and the retry jitter (the same every run).
    pub(crate) seed: u64,
}

/// The figures of the drops scenario on one server.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct DropsResult {
    /// Clients.
    pub(crate) clients: usize,
    /// Seconds the publisher sent.
    pub(crate) duration_s: f64,
    /// Seconds between two cuts of one client.
    pub(crate) cut_every_s: f64,
    /// Seconds a proxy refused connections after a cut.
    pub(crate) down_s: f64,
    /// Messages per second to each client.
    pub(crate) rate_per_client: f64,
    /// Messages the publisher sent.
    pub(crate) sent: u64,
    /// Messages delivered at least once.
    pub(crate) delivered: u64,
    /// Messages delivered exactly once.
    pub(crate) exactly_once: u64,
    /// Messages never delivered.
    pub(crate) lost: u64,
    /// Deliveries of a message its client already had.
    pub(crate) duplicated: u64,
    /// First deliveries of a message after a later message of the same client.
    pub(crate) out_of_order: u64,
    /// Client connections the proxies reset.
    pub(crate) cuts: u64,
    /// Connection attempts the proxies refused (reset at accept while down).
    pub(crate) refused: u64,
    /// Connection attempts that failed (refusals, timeouts, errors during the handshake).
    pub(crate) failed_attempts: u64,
    /// Successful reconnections (handshakes after each client's first).
    pub(crate) reconnects: u64,
    /// Reconnections that resumed the session (peermesh `resumed`, Socket.IO `recovered`).
    pub(crate) resumed: u64,
    /// Reconnections that started a fresh session (peermesh: answered by
    /// `resume_rejected`; Socket.IO: a new `pid`, or none).
    pub(crate) not_resumed: u64,
    /// peermesh `resume_rejected` frames by reason.
    pub(crate) resume_rejected: BTreeMap<String, u64>,
    /// Socket.IO: reconnections with a `pid` but no offset yet (the client had received no
    /// event since its session began), which connection state recovery cannot recover.
    pub(crate) reconnects_without_offset: u64,
    /// peermesh frames whose `seq` was not one more than the last handled one (a gap).
    pub(crate) seq_gaps: u64,
    /// peermesh frames whose `seq` was not above the last handled one (dropped, not applied).
    pub(crate) seq_repeats: u64,
    /// Latency of deliveries sent while their connection was open (send to delivery).
    pub(crate) latency: Latency,
    /// Latency of deliveries sent before the connection that delivered them was opened: the
    /// messages that waited out a drop (send to delivery).
    pub(crate) replay: Latency,
    /// Clients not connected when the final wait ended.
    pub(crate) unsettled: u64,
    /// Seconds from the end of the sending until every client was back and quiet.
    pub(crate) settle_s: f64,
    /// Seconds spent opening the clients.
    pub(crate) setup_s: f64,
    /// Server RSS before the sending, KiB.
    pub(crate) rss_before_kib: Option<u64>,
    /// Largest server RSS sampled during the sending and the final wait, KiB.
    pub(crate) rss_peak_kib: Option<u64>,
    /// CPU use and distinct deliveries during the sending.
    pub(crate) window: Rates,
    /// Errors (frames the server should not have sent, failed connections during setup).
    pub(crate) errors: u64,
    /// The first of them.
    pub(crate) first_error: Option<String>,
}

/// State shared by the clients, the publisher and the controller.
struct Shared {
    clock: Clock,
    dialect: Dialect,
    /// Clients with an open, greeted connection.
    connected: AtomicU64,
    /// Clients that completed their first handshake.
    ready: AtomicU64,
    /// Messages delivered for the first time.
    delivered: AtomicU64,
    /// Clock ns of the last delivery or handshake.
    last_event_ns: AtomicU64,
    errors: ErrorLog,
    /// Latencies of ordinary deliveries and of replays.
    normal: Recorder,
    replay: Recorder,
    /// Stops every client.
    finish: CancellationToken,
    /// Highest message number a client accepts, plus one.
    cap_per_client: u64,
    connect_timeout: Duration,
}

impl Shared {
    fn touch(&self) {
        self.last_event_ns
            .fetch_max(self.clock.ns(Instant::now()), Ordering::Relaxed);
    }
}

/// What one client counted.
#[derive(Debug, Default)]
struct Tally {
    delivered: u64,
    dup_msgs: u64,
    duplicated: u64,
    out_of_order: u64,
    reconnects: u64,
    resumed: u64,
    not_resumed: u64,
    rejected: BTreeMap<String, u64>,
    without_offset: u64,
    seq_gaps: u64,
    seq_repeats: u64,
    failed_attempts: u64,
}

/// Which messages one client got: a bitset of numbers seen, and of numbers seen twice.
struct Track {
    seen: Vec<u64>,
    duped: Vec<u64>,
    /// One more than the highest number delivered so far.
    next_hi: u64,
    cap: u64,
}

enum Verdict {
    /// First delivery of this message.
    New,
    /// The client already had it.
    Duplicate,
}

impl Track {
    fn new(cap: u64) -> Self {
        Self {
            seen: Vec::new(),
            duped: Vec::new(),
            next_hi: 0,
            cap,
        }
    }

    fn deliver(&mut self, n: u64, tally: &mut Tally) -> Result<Verdict, String> {
        if n >= self.cap {
            return Err(format!(
                "message number {n} is beyond the {} this client can get",
                self.cap
            ));
        }
        // `n < cap`, and `cap` is bounded by the message cap of the run.
        let word = (n / 64) as usize;
        let bit = 1u64 << (n % 64);
        if self.seen.len() <= word {
            self.seen.resize(word + 1, 0);
            self.duped.resize(word + 1, 0);
        }
        if self.seen[word] & bit != 0 {
            tally.duplicated += 1;
            if self.duped[word] & bit == 0 {
                self.duped[word] |= bit;
                tally.dup_msgs += 1;
            }
            return Ok(Verdict::Duplicate);
        }
        self.seen[word] |= bit;
        tally.delivered += 1;
        if n < self.next_hi {
            tally.out_of_order += 1;
        }
        self.next_hi = self.next_hi.max(n + 1);
        Ok(Verdict::New)
    }
}

/// splitmix64: the cut phases and retry jitter, reproducible from a seed.
fn next_rand(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A uniform number in [0, 1).
fn unit(state: &mut u64) -> f64 {
    (next_rand(state) >> 11) as f64 / (1u64 << 53) as f64
}

/// Runs the scenario against `server`.
pub(crate) async fn run(
    server: &Server,
    cfg: &DropsConfig,
    clock: Clock,
    progress: &Progress,
    tag: &str,
    label: &str,
) -> anyhow::Result<DropsResult> {
    if cfg.clients == 0 {
        bail!("--clients must be at least 1");
    }
    if cfg.rate <= 0.0 || !cfg.rate.is_finite() {
        bail!("--rate must be a positive number of messages per second");
    }
    if cfg.cut_every.is_zero() {
        bail!("--cut-every must be longer than 0");
    }
    let dialect = server.endpoint.dialect;
    let n = cfg.clients as u64;
    let payload = cfg.payload.max(MIN_PAYLOAD);
    // Messages the publisher may send in all, and to one client.
    let planned = (cfg.rate * n as f64 * cfg.duration.as_secs_f64()).ceil() as u64 + n;
    let total_cap = planned.min(cfg.max_messages.max(1));
    let cap_per_client = total_cap / n + 1;
    if cap_per_client >= 10u64.pow(NUMBER_DIGITS as u32) {
        bail!("too many messages per client for a {NUMBER_DIGITS}-digit message number");
    }
    let shared = Arc::new(Shared {
        clock,
        dialect,
        connected: AtomicU64::new(0),
        ready: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        last_event_ns: AtomicU64::new(0),
        errors: ErrorLog::default(),
        normal: Recorder::new(),
        replay: Recorder::new(),
        finish: CancellationToken::new(),
        cap_per_client,
        connect_timeout: cfg.connect_timeout,
    });

    // Setup: a proxy per client (no schedule: the cuts are driven below, only while the
    // publisher sends), then the clients through them.
    progress.set_step(&format!("{label}: drops setup"));
    let setup_start = Instant::now();
    let upstream = server.endpoint.url.addr;
    let mut proxies = Vec::with_capacity(cfg.clients);
    for i in 0..cfg.clients {
        let proxy = FaultProxy::start(upstream, None)
            .await
            .with_context(|| format!("starting fault proxy {i}"))?;
        proxies.push(proxy);
    }
    let bar = progress.counter("connecting clients through fault proxies", n);
    let permits = Arc::new(Semaphore::new(cfg.concurrency.max(1)));
    let mut rng = cfg.seed;
    let mut tasks = Vec::with_capacity(cfg.clients);
    for (i, proxy) in proxies.iter().enumerate() {
        let url = WsUrl {
            addr: proxy.addr(),
            host: proxy.addr().to_string(),
            target: server.endpoint.url.target.clone(),
        };
        let ctx = ClientCtx {
            shared: shared.clone(),
            id: client_id(tag, i),
            url,
            rng: next_rand(&mut rng),
        };
        let permits = permits.clone();
        let bar = bar.clone();
        tasks.push(tokio::spawn(async move { client(ctx, permits, bar).await }));
    }
    let setup_deadline = Instant::now() + cfg.connect_timeout + Duration::from_secs(60);
    loop {
        let ready = shared.ready.load(Ordering::SeqCst);
        if ready >= n {
            break;
        }
        if shared.errors.count() > 0 || Instant::now() >= setup_deadline {
            shared.finish.cancel();
            for t in tasks {
                let _ = t.await;
            }
            progress::done(&bar);
            bail!(
                "only {ready} of {n} clients connected: {}",
                shared
                    .errors
                    .first()
                    .unwrap_or_else(|| "setup timed out".into())
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    progress::done(&bar);
    let connect = ConnectOpts {
        timeout: cfg.connect_timeout,
        source_ips: Vec::new(),
    };
    let publisher_id = format!("{tag}pub");
    let publisher_conn = match open(&server.endpoint, &publisher_id, 0, 64 << 10, &connect).await {
        Ok(c) => c,
        Err(e) => {
            shared.finish.cancel();
            for t in tasks {
                let _ = t.await;
            }
            return Err(anyhow::Error::new(e).context("opening the publisher"));
        }
    };
    let setup_s = setup_start.elapsed().as_secs_f64();
    // Let the handshakes' side effects settle before the clock starts.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The run: the publisher sends, the proxies cut, each client at its phase.
    progress.set_step(&format!(
        "{label}: drops, {n} clients, a cut every {:?} for {:?}",
        cfg.cut_every, cfg.down
    ));
    let bar = progress.timed("sending under drops", cfg.duration);
    let rss_before = server.rss_kib();
    let mut rss_peak = rss_before;
    let first = Sample::take(&shared.delivered, &server.measured());
    let start = Instant::now();
    let end = start + cfg.duration;
    let templates: Vec<_> = (0..cfg.clients)
        .map(|i| dialect.direct_template(&client_id(tag, i), payload))
        .collect();
    let sent = Arc::new(AtomicU64::new(0));
    let (sent_tx, sent_rx) = tokio::sync::oneshot::channel();
    let publisher = tokio::spawn(publish(
        publisher_conn,
        templates,
        shared.clone(),
        sent.clone(),
        Schedule {
            start,
            end,
            per_sec: cfg.rate * n as f64,
            cap: total_cap,
        },
        sent_tx,
    ));
    let proxies = Arc::new(proxies);
    let phases: Vec<Duration> = (0..cfg.clients)
        .map(|_| cfg.cut_every.mul_f64(unit(&mut rng)))
        .collect();
    let cutter = tokio::spawn(cut_on_schedule(
        proxies.clone(),
        phases,
        start,
        end,
        cfg.cut_every,
        cfg.down,
    ));
    let sample_rss = |peak: &mut Option<u64>| {
        if let Some(r) = server.rss_kib() {
            *peak = Some(peak.map_or(r, |p| p.max(r)));
        }
    };
    tokio::pin!(sent_rx);
    loop {
        tokio::select! {
            _ = &mut sent_rx => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => sample_rss(&mut rss_peak),
        }
    }
    let last = Sample::take(&shared.delivered, &server.measured());
    let sent_total = sent.load(Ordering::SeqCst);
    progress::done(&bar);

    // The final wait: every client back, and nothing new for a second.
    progress.set_step(&format!("{label}: drops, waiting for every client"));
    let settle_start = Instant::now();
    let settle_deadline = settle_start + cfg.down + cfg.drain + Duration::from_secs(10);
    let bar = progress.counter("clients connected", n);
    loop {
        let now = Instant::now();
        let connected = shared.connected.load(Ordering::SeqCst);
        bar.set_position(connected.min(n));
        let quiet_for = Duration::from_nanos(
            clock
                .ns(now)
                .saturating_sub(shared.last_event_ns.load(Ordering::Relaxed)),
        );
        let all_in = shared.delivered.load(Ordering::SeqCst) >= sent_total;
        if connected >= n && (all_in || quiet_for >= QUIET) {
            break;
        }
        if now >= settle_deadline {
            break;
        }
        sample_rss(&mut rss_peak);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let settle_s = settle_start.elapsed().as_secs_f64();
    let unsettled = n.saturating_sub(shared.connected.load(Ordering::SeqCst));
    progress::done(&bar);
    progress.step_done();

    shared.finish.cancel();
    let mut tally = Tally::default();
    for t in tasks {
        match t.await {
            Ok(c) => merge(&mut tally, c),
            Err(e) => shared.errors.record(format!("a client task failed: {e}")),
        }
    }
    match publisher.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => shared.errors.record(format!("publisher: {e}")),
        Err(e) => shared
            .errors
            .record(format!("the publisher task failed: {e}")),
    }
    let cuts = cutter.await.unwrap_or(0);
    let refused = proxies.iter().map(|p| p.stats().refused).sum();
    drop(proxies);

    let mut normal = new_histogram();
    shared.normal.merge_into(&mut normal);
    let mut replay = new_histogram();
    shared.replay.merge_into(&mut replay);
    Ok(DropsResult {
        clients: cfg.clients,
        duration_s: cfg.duration.as_secs_f64(),
        cut_every_s: cfg.cut_every.as_secs_f64(),
        down_s: cfg.down.as_secs_f64(),
        rate_per_client: cfg.rate,
        sent: sent_total,
        delivered: tally.delivered,
        exactly_once: tally.delivered.saturating_sub(tally.dup_msgs),
        lost: sent_total.saturating_sub(tally.delivered),
        duplicated: tally.duplicated,
        out_of_order: tally.out_of_order,
        cuts,
        refused,
        failed_attempts: tally.failed_attempts,
        reconnects: tally.reconnects,
        resumed: tally.resumed,
        not_resumed: tally.not_resumed,
        resume_rejected: tally.rejected,
        reconnects_without_offset: tally.without_offset,
        seq_gaps: tally.seq_gaps,
        seq_repeats: tally.seq_repeats,
        latency: Latency::of(&normal),
        replay: Latency::of(&replay),
        unsettled,
        settle_s: (settle_s * 100.0).round() / 100.0,
        setup_s: (setup_s * 100.0).round() / 100.0,
        rss_before_kib: rss_before,
        rss_peak_kib: rss_peak,
        window: first.rates(&last),
        errors: shared.errors.count(),
        first_error: shared.errors.first(),
    })
}

fn client_id(tag: &str, i: usize) -> String {
    format!("{tag}d{i}")
}

fn merge(into: &mut Tally, t: Tally) {
    into.delivered += t.delivered;
    into.dup_msgs += t.dup_msgs;
    into.duplicated += t.duplicated;
    into.out_of_order += t.out_of_order;
    into.reconnects += t.reconnects;
    into.resumed += t.resumed;
    into.not_resumed += t.not_resumed;
    for (k, v) in t.rejected {
        *into.rejected.entry(k).or_default() += v;
    }
    into.without_offset += t.without_offset;
    into.seq_gaps += t.seq_gaps;
    into.seq_repeats += t.seq_repeats;
    into.failed_attempts += t.failed_attempts;
}

/// Cuts client `i`'s connection at `start + phase[i] + k * period` for every k while before
/// `end`; returns how many connections were reset.
async fn cut_on_schedule(
    proxies: Arc<Vec<FaultProxy>>,
    phases: Vec<Duration>,
    start: Instant,
    end: Instant,
    period: Duration,
    down: Duration,
) -> u64 {
    let mut order: Vec<usize> = (0..phases.len()).collect();
    order.sort_by_key(|&i| phases[i]);
    let mut cuts = 0u64;
    for round in 0u32.. {
        let base = start + period * round;
        if base >= end {
            break;
        }
        for &i in &order {
            let at = base + phases[i];
            if at >= end {
                break;
            }
            tokio::time::sleep_until(at.into()).await;
            cuts += proxies[i].cut(down) as u64;
        }
    }
    cuts
}

/// When and how much the publisher sends.
struct Schedule {
    start: Instant,
    end: Instant,
    /// Messages per second in all (round robin over the clients).
    per_sec: f64,
    cap: u64,
}

/// Sends message `k` of the run to client `k % n` as that client's message `k / n`, on
/// schedule, until the end; then keeps reading (pings, notifications) until the run finishes.
async fn publish(
    mut conn: WsConn,
    templates: Vec<super::dialect::Template>,
    shared: Arc<Shared>,
    sent: Arc<AtomicU64>,
    s: Schedule,
    done: tokio::sync::oneshot::Sender<()>,
) -> Result<(), WsError> {
    let n = templates.len() as u64;
    let mut total: u64 = 0;
    let mut done = Some(done);
    let mut ticker = tokio::time::interval_at(s.start.into(), Duration::from_millis(5));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result: Result<(), WsError> = async {
        loop {
            tokio::select! {
                biased;
                _ = shared.finish.cancelled() => return Ok(()),
                r = conn.read_some() => {
                    r?;
                    publisher_frames(&mut conn, &shared)?;
                }
                _ = ticker.tick(), if done.is_some() => {
                    let now = Instant::now();
                    if now >= s.end || total >= s.cap {
                        if let Some(tx) = done.take() {
                            let _ = tx.send(());
                        }
                    } else {
                        let elapsed = now.saturating_duration_since(s.start).as_secs_f64();
                        let due = ((elapsed * s.per_sec) as u64 + 1).min(s.cap);
                        let burst = due.saturating_sub(total).min(MAX_BURST);
                        let stamp = shared.clock.ns(now);
                        for k in total..total + burst {
                            // `k % n` is below the number of templates.
                            templates[(k % n) as usize].queue_numbered(&mut conn, stamp, k / n);
                        }
                        total += burst;
                        sent.store(total, Ordering::SeqCst);
                    }
                }
            }
            conn.flush().await?;
        }
    }
    .await;
    // A failed publisher still ends the sending (with what it sent).
    if let Some(tx) = done.take() {
        let _ = tx.send(());
    }
    conn.close().await;
    result
}

/// Handles what the server sent the publisher: pings, notifications, errors.
fn publisher_frames(conn: &mut WsConn, shared: &Shared) -> Result<(), WsError> {
    while let Some((op, payload)) = conn.next_message()? {
        match shared.dialect {
            Dialect::Peermesh(enc) => match decode_server(enc, payload) {
                Ok((_, ServerFrame::Error(e))) => shared
                    .errors
                    .record(format!("publisher got error {}: {}", e.code, e.message)),
                Ok(_) => {}
                Err(e) => shared
                    .errors
                    .record(format!("publisher: undecodable frame: {e}")),
            },
            Dialect::SocketIo => match shared.dialect.parse(op, payload) {
                Incoming::EnginePing => shared.dialect.pong(conn),
                Incoming::Error(e) => shared.errors.record(format!("publisher: {e}")),
                _ => {}
            },
        }
    }
    Ok(())
}

/// One client's identity and path.
struct ClientCtx {
    shared: Arc<Shared>,
    id: String,
    /// The client's proxy, with the server's request target.
    url: WsUrl,
    /// Seed of its retry jitter.
    rng: u64,
}

/// How a connection ended.
enum Ended {
    /// The run is over; the connection was closed cleanly.
    Finished,
    /// The connection broke (a cut, a refusal, an error).
    Dropped,
}

/// The protocol state a client keeps across its connections.
enum Proto {
    Peermesh(PmState),
    SocketIo(SioState),
}

struct PmState {
    enc: Encoding,
    id: ClientId,
    /// The secret of the session's `welcome`.
    secret: Option<String>,
    /// `seq` of the last hub frame handled in the session.
    last_seq: u64,
    /// Frames handled since the last receipt, and when the receipt is due.
    unconfirmed: u64,
    receipt_due: Option<Instant>,
    /// Whether this connection's hello asked to resume.
    resuming: bool,
}

struct SioState {
    /// The id in the connect packet's auth.
    id: String,
    /// The session's `pid`, from the last CONNECT ack (only with connection state recovery).
    pid: Option<String>,
    /// The offset of the last event received while a `pid` was known.
    offset: Option<String>,
    /// Whether this connection's connect packet was sent.
    connect_sent: bool,
}

/// A decoded incoming frame, owned (the connection's buffer is free again).
enum Event {
    /// peermesh `welcome`.
    Welcome {
        seq: u64,
        resumed: bool,
        secret: String,
    },
    /// Another peermesh frame with its `seq`.
    Framed { seq: u64, item: Item },
    /// Socket.IO: the Engine.IO open packet.
    EngineOpen,
    /// Socket.IO: the CONNECT ack and its `pid`.
    ConnectAck { pid: Option<String> },
    /// Socket.IO: an event; the delivery in it and its last string argument.
    Emitted {
        item: Item,
        last_str: Option<String>,
    },
    /// Socket.IO: an Engine.IO ping.
    EnginePing,
    /// The server ended the session (Socket.IO disconnect, connect error, Engine.IO close).
    Closed(String),
    /// A frame that could not be decoded.
    Bad(String),
    /// Nothing to do.
    Ignore,
}

/// What a frame carried.
enum Item {
    /// A benchmark message: its timestamp and number.
    Delivery { stamp: u64, number: u64 },
    /// peermesh `resume_rejected` with its reason.
    Rejected(String),
    /// Something that should not happen.
    Error(String),
    /// Nothing the benchmark counts.
    Other,
}

impl Proto {
    fn new(dialect: Dialect, id: &str) -> Result<Self, String> {
        Ok(match dialect {
            Dialect::Peermesh(enc) => Proto::Peermesh(PmState {
                enc,
                id: ClientId::new(id).map_err(|e| format!("invalid client id {id:?}: {e}"))?,
                secret: None,
                last_seq: 0,
                unconfirmed: 0,
                receipt_due: None,
                resuming: false,
            }),
            Dialect::SocketIo => Proto::SocketIo(SioState {
                id: id.to_owned(),
                pid: None,
                offset: None,
                connect_sent: false,
            }),
        })
    }

    /// Queues what a fresh connection sends first.
    fn on_open(&mut self, conn: &mut WsConn) {
        match self {
            Proto::Peermesh(st) => {
                st.unconfirmed = 0;
                st.receipt_due = None;
                st.resuming = st.secret.is_some();
                let hello = ClientFrame::Hello(Hello {
                    id: Some(st.id.clone()),
                    version: PROTOCOL_VERSION.to_owned(),
                    resume: true,
                    secret: st.secret.clone(),
                    last_seq: st.secret.as_ref().map(|_| st.last_seq),
                    ..Hello::default()
                });
                queue_pm(conn, st.enc, &hello);
            }
            // Socket.IO waits for the open packet.
            Proto::SocketIo(st) => st.connect_sent = false,
        }
    }

    fn receipt_due(&self) -> Option<Instant> {
        match self {
            Proto::Peermesh(st) => st.receipt_due,
            Proto::SocketIo(_) => None,
        }
    }

    /// Queues a peermesh receipt for everything handled so far.
    fn send_receipt(&mut self, conn: &mut WsConn) {
        if let Proto::Peermesh(st) = self {
            if st.unconfirmed > 0 {
                queue_pm(conn, st.enc, &ClientFrame::Received { seq: st.last_seq });
            }
            st.unconfirmed = 0;
            st.receipt_due = None;
        }
    }

    fn decode(&self, op: Opcode, payload: &[u8]) -> Event {
        match self {
            Proto::Peermesh(st) => decode_pm(st.enc, payload),
            Proto::SocketIo(_) => decode_sio(op, payload),
        }
    }
}

fn queue_pm(conn: &mut WsConn, enc: Encoding, frame: &ClientFrame) {
    let bytes = encode_client(enc, frame);
    let op = match enc {
        Encoding::Json => Opcode::Text,
        Encoding::MsgPack => Opcode::Binary,
    };
    conn.queue(op, &[&bytes]);
}

fn delivery_of(data: Option<&str>) -> Item {
    match data.and_then(|s| parse_numbered(s.as_bytes())) {
        Some((stamp, number)) => Item::Delivery { stamp, number },
        None => Item::Error(format!(
            "a message without a numbered payload: {:?}",
            data.map(|s| s.chars().take(60).collect::<String>())
        )),
    }
}

fn decode_pm(enc: Encoding, payload: &[u8]) -> Event {
    let (seq, frame) = match decode_server(enc, payload) {
        Ok(v) => v,
        Err(e) => return Event::Bad(format!("undecodable frame: {e}")),
    };
    let item = match frame {
        ServerFrame::Welcome(w) => {
            return Event::Welcome {
                seq,
                resumed: w.resumed,
                secret: w.secret,
            }
        }
        ServerFrame::Message(m) => delivery_of(m.payload.as_json().and_then(|v| v.as_str())),
        ServerFrame::ResumeRejected { reason, .. } => Item::Rejected(reason.as_str().to_owned()),
        ServerFrame::Error(e) => Item::Error(format!("error {}: {}", e.code, e.message)),
        _ => Item::Other,
    };
    Event::Framed { seq, item }
}

fn decode_sio(op: Opcode, payload: &[u8]) -> Event {
    if op != Opcode::Text {
        return Event::Closed("a binary frame from the Socket.IO server".into());
    }
    match payload {
        b"2" => return Event::EnginePing,
        b"1" => return Event::Closed("engine.io close packet".into()),
        b"41" => return Event::Closed("socket.io disconnect packet".into()),
        _ => {}
    }
    if let Some(rest) = payload.strip_prefix(b"42") {
        let args: Vec<serde_json::Value> = match serde_json::from_slice(rest) {
            Ok(a) => a,
            Err(e) => {
                return Event::Emitted {
                    item: Item::Error(format!("an event that is not a JSON array: {e}")),
                    last_str: None,
                }
            }
        };
        let last_str = args.last().and_then(|v| v.as_str()).map(str::to_owned);
        let item = if args.first().and_then(|v| v.as_str()) == Some("message") {
            delivery_of(args.get(3).and_then(|v| v.as_str()))
        } else {
            Item::Other
        };
        return Event::Emitted { item, last_str };
    }
    if let Some(rest) = payload.strip_prefix(b"40") {
        let pid = serde_json::from_slice::<serde_json::Value>(rest)
            .ok()
            .and_then(|v| v.get("pid").and_then(|p| p.as_str()).map(str::to_owned));
        return Event::ConnectAck { pid };
    }
    if let Some(rest) = payload.strip_prefix(b"44") {
        return Event::Closed(format!(
            "socket.io connect error: {}",
            String::from_utf8_lossy(&rest[..rest.len().min(200)])
        ));
    }
    if payload.first() == Some(&b'0') {
        return Event::EngineOpen;
    }
    Event::Ignore
}

/// Latencies of one read batch, recorded together.
struct Batch {
    normal: Vec<u64>,
    replay: Vec<u64>,
}

/// One client: connect (through its proxy), run the connection until it breaks, reconnect,
/// until the run finishes.
async fn client(ctx: ClientCtx, permits: Arc<Semaphore>, bar: indicatif::ProgressBar) -> Tally {
    let sh = ctx.shared.clone();
    let mut tally = Tally::default();
    let mut proto = match Proto::new(sh.dialect, &ctx.id) {
        Ok(p) => p,
        Err(e) => {
            sh.errors.record(e);
            return tally;
        }
    };
    let mut track = Track::new(sh.cap_per_client);
    let mut rng = ctx.rng;
    let mut greeted_once = false;
    loop {
        let attempt = if greeted_once {
            connect_until_open(&ctx, &mut rng, &mut tally).await
        } else {
            let Ok(_permit) = permits.acquire().await else {
                return tally;
            };
            match connect_first(&ctx, &mut tally).await {
                Ok(v) => v,
                Err(e) => {
                    sh.errors.record(format!("client {}: {e}", ctx.id));
                    return tally;
                }
            }
        };
        let Some((mut conn, opened)) = attempt else {
            return tally;
        };
        let opened_ns = sh.clock.ns(opened);
        let mut greeted = false;
        let ended = connection(
            &ctx,
            &mut conn,
            &mut proto,
            &mut track,
            &mut tally,
            opened_ns,
            &mut greeted,
            &mut greeted_once,
            &bar,
        )
        .await;
        if greeted {
            sh.connected.fetch_sub(1, Ordering::SeqCst);
        }
        match ended {
            Ended::Finished => {
                conn.close().await;
                return tally;
            }
            Ended::Dropped => {
                if !greeted_once {
                    // No cuts happen during setup: a first connection must not break.
                    sh.errors.record(format!(
                        "client {}: the first connection broke during its handshake",
                        ctx.id
                    ));
                    return tally;
                }
                if !greeted {
                    tally.failed_attempts += 1;
                    if !pause(&sh, &mut rng).await {
                        return tally;
                    }
                }
            }
        }
    }
}

/// The pause between two attempts while the proxy refuses: 100–200 ms. False when the run
/// finished meanwhile.
async fn pause(sh: &Shared, rng: &mut u64) -> bool {
    let wait = RETRY_MIN + Duration::from_secs_f64(unit(rng) * RETRY_JITTER_MS / 1000.0);
    tokio::select! {
        _ = sh.finish.cancelled() => false,
        _ = tokio::time::sleep(wait) => true,
    }
}

/// The first connection (setup, no cuts yet): a few attempts, then an error.
async fn connect_first(
    ctx: &ClientCtx,
    tally: &mut Tally,
) -> Result<Option<(WsConn, Instant)>, WsError> {
    let mut attempt = 0;
    loop {
        let opened = Instant::now();
        let r = tokio::select! {
            _ = ctx.shared.finish.cancelled() => return Ok(None),
            r = WsConn::connect(&ctx.url, None, 4 << 10, ctx.shared.connect_timeout) => r,
        };
        match r {
            Ok(conn) => return Ok(Some((conn, opened))),
            Err(e) => {
                attempt += 1;
                tally.failed_attempts += 1;
                if attempt >= FIRST_ATTEMPTS {
                    return Err(e);
                }
                tokio::time::sleep(RETRY_MIN).await;
            }
        }
    }
}

/// A reconnection: at once, then every 100–200 ms while the proxy refuses. `None` when the
/// run finished first.
async fn connect_until_open(
    ctx: &ClientCtx,
    rng: &mut u64,
    tally: &mut Tally,
) -> Option<(WsConn, Instant)> {
    loop {
        let opened = Instant::now();
        let r = tokio::select! {
            _ = ctx.shared.finish.cancelled() => return None,
            r = WsConn::connect(&ctx.url, None, 4 << 10, ctx.shared.connect_timeout) => r,
        };
        match r {
            Ok(conn) => return Some((conn, opened)),
            Err(_) => {
                tally.failed_attempts += 1;
                if !pause(&ctx.shared, rng).await {
                    return None;
                }
            }
        }
    }
}

/// Runs one connection: handshake, deliveries, receipts, until it breaks or the run ends.
#[allow(clippy::too_many_arguments)]
async fn connection(
    ctx: &ClientCtx,
    conn: &mut WsConn,
    proto: &mut Proto,
    track: &mut Track,
    tally: &mut Tally,
    opened_ns: u64,
    greeted: &mut bool,
    greeted_once: &mut bool,
    bar: &indicatif::ProgressBar,
) -> Ended {
    let sh = &*ctx.shared;
    proto.on_open(conn);
    if conn.flush().await.is_err() {
        return Ended::Dropped;
    }
    // A handshake that does not finish in time counts as a failed attempt.
    let handshake_deadline = Instant::now() + sh.connect_timeout;
    let mut batch = Batch {
        normal: Vec::with_capacity(16),
        replay: Vec::with_capacity(16),
    };
    loop {
        // Frames may already be buffered (Socket.IO's open packet can come with the upgrade
        // response), so handle what is there before waiting for more.
        let now_ns = sh.clock.ns(Instant::now());
        loop {
            let event = match conn.next_message() {
                Ok(Some((op, payload))) => proto.decode(op, payload),
                Ok(None) => break,
                Err(_) => return Ended::Dropped,
            };
            let step = apply(
                ctx,
                conn,
                proto,
                track,
                tally,
                event,
                Stamp { opened_ns, now_ns },
                &mut batch,
            );
            match step {
                Step::Continue => {}
                Step::Greeted { resumed } => {
                    *greeted = true;
                    if *greeted_once {
                        tally.reconnects += 1;
                        if resumed {
                            tally.resumed += 1;
                        } else {
                            tally.not_resumed += 1;
                        }
                    } else {
                        *greeted_once = true;
                        sh.ready.fetch_add(1, Ordering::SeqCst);
                        bar.inc(1);
                    }
                    sh.connected.fetch_add(1, Ordering::SeqCst);
                    sh.touch();
                }
                Step::Close => return Ended::Dropped,
            }
        }
        if !batch.normal.is_empty() || !batch.replay.is_empty() {
            sh.touch();
        }
        sh.normal.record(&mut batch.normal);
        sh.replay.record(&mut batch.replay);
        if let Proto::Peermesh(st) = proto {
            if st.unconfirmed >= RECEIPT_FRAMES {
                proto.send_receipt(conn);
            } else if st.unconfirmed > 0 && st.receipt_due.is_none() {
                st.receipt_due = Some(Instant::now() + RECEIPT_DELAY);
            }
        }
        if conn.flush().await.is_err() {
            return Ended::Dropped;
        }
        let receipt = proto.receipt_due();
        let far = Instant::now() + Duration::from_secs(3600);
        tokio::select! {
            biased;
            _ = sh.finish.cancelled() => return Ended::Finished,
            _ = tokio::time::sleep_until(receipt.unwrap_or(far).into()), if receipt.is_some() => {
                proto.send_receipt(conn);
            }
            _ = tokio::time::sleep_until(handshake_deadline.into()), if !*greeted => {
                sh.errors.record(format!(
                    "client {}: no handshake within {:?}",
                    ctx.id, sh.connect_timeout
                ));
                return Ended::Dropped;
            }
            r = conn.read_some() => {
                if r.is_err() {
                    return Ended::Dropped;
                }
            }
        }
    }
}

/// When the connection was opened and when this batch was read, in clock ns.
#[derive(Clone, Copy)]
struct Stamp {
    opened_ns: u64,
    now_ns: u64,
}

/// What [`apply`] asks of the connection loop.
enum Step {
    Continue,
    /// The handshake completed on this connection; `resumed`: it continued the session of
    /// the previous connection.
    Greeted {
        resumed: bool,
    },
    /// The server ended the session: reconnect.
    Close,
}

/// Applies one incoming event to the client's state.
#[allow(clippy::too_many_arguments)]
fn apply(
    ctx: &ClientCtx,
    conn: &mut WsConn,
    proto: &mut Proto,
    track: &mut Track,
    tally: &mut Tally,
    event: Event,
    at: Stamp,
    batch: &mut Batch,
) -> Step {
    let sh = &*ctx.shared;
    let item = match (proto, event) {
        (
            Proto::Peermesh(st),
            Event::Welcome {
                seq,
                resumed,
                secret,
            },
        ) => {
            if !resumed {
                // A fresh session numbers its frames from its welcome.
                st.last_seq = seq;
            }
            st.secret = Some(secret);
            return Step::Greeted {
                resumed: st.resuming && resumed,
            };
        }
        (Proto::Peermesh(st), Event::Framed { seq, item }) => {
            if seq <= st.last_seq {
                tally.seq_repeats += 1;
                return Step::Continue;
            }
            if seq != st.last_seq + 1 {
                tally.seq_gaps += 1;
            }
            st.last_seq = seq;
            st.unconfirmed += 1;
            item
        }
        (Proto::SocketIo(st), Event::EngineOpen) => {
            if !st.connect_sent {
                st.connect_sent = true;
                let mut packet = String::from("40{");
                if let Some(pid) = &st.pid {
                    packet.push_str(&format!("\"pid\":{},", json_str(pid)));
                    match &st.offset {
                        Some(offset) => {
                            packet.push_str(&format!("\"offset\":{},", json_str(offset)))
                        }
                        None => tally.without_offset += 1,
                    }
                }
                packet.push_str(&format!("\"id\":{}}}", json_str(&st.id)));
                conn.queue(Opcode::Text, &[packet.as_bytes()]);
            }
            return Step::Continue;
        }
        (Proto::SocketIo(st), Event::ConnectAck { pid }) => {
            if !st.connect_sent {
                sh.errors.record(format!(
                    "client {}: a CONNECT ack before connecting",
                    ctx.id
                ));
                return Step::Continue;
            }
            // As socket.io-client: recovered when the server kept the pid.
            let recovered = pid.is_some() && pid == st.pid;
            st.pid = pid;
            return Step::Greeted { resumed: recovered };
        }
        (Proto::SocketIo(st), Event::Emitted { item, last_str }) => {
            // As socket.io-client: with a pid, the last string argument is the offset.
            if st.pid.is_some() {
                if let Some(s) = last_str {
                    st.offset = Some(s);
                }
            }
            item
        }
        (Proto::SocketIo(_), Event::EnginePing) => {
            conn.queue(Opcode::Text, &[b"3"]);
            return Step::Continue;
        }
        (_, Event::Closed(why)) => {
            sh.errors.record(format!("client {}: {why}", ctx.id));
            return Step::Close;
        }
        (_, Event::Bad(why)) => {
            sh.errors.record(format!("client {}: {why}", ctx.id));
            return Step::Continue;
        }
        (_, Event::Ignore) => return Step::Continue,
        (_, _) => {
            sh.errors
                .record(format!("client {}: a frame of the other protocol", ctx.id));
            return Step::Continue;
        }
    };
    match item {
        Item::Delivery { stamp, number } => match track.deliver(number, tally) {
            Ok(Verdict::New) => {
                sh.delivered.fetch_add(1, Ordering::Relaxed);
                let latency = at.now_ns.saturating_sub(stamp);
                if stamp < at.opened_ns {
                    batch.replay.push(latency);
                } else {
                    batch.normal.push(latency);
                }
            }
            Ok(Verdict::Duplicate) => {}
            Err(e) => sh.errors.record(format!("client {}: {e}", ctx.id)),
        },
        Item::Rejected(reason) => {
            *tally.rejected.entry(reason).or_default() += 1;
        }
        Item::Error(e) => sh.errors.record(format!("client {}: {e}", ctx.id)),
        Item::Other => {}
    }
    Step::Continue
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn track_counts_duplicates_and_disorder() {
        let mut t = Tally::default();
        let mut track = Track::new(200);
        for n in [0, 1, 3, 2, 2, 130, 2] {
            assert!(track.deliver(n, &mut t).is_ok());
        }
        assert_eq!(t.delivered, 5);
        assert_eq!((t.duplicated, t.dup_msgs), (2, 1));
        assert_eq!(t.out_of_order, 1, "2 after 3");
        assert!(track.deliver(200, &mut t).is_err());
    }

    #[test]
    fn socketio_packets_decode() {
        let open = br#"0{"sid":"x","upgrades":[],"pingInterval":25000,"pingTimeout":20000}"#;
        assert!(matches!(decode_sio(Opcode::Text, open), Event::EngineOpen));
        assert!(matches!(
            decode_sio(Opcode::Text, br#"40{"sid":"s1","pid":"p1"}"#),
            Event::ConnectAck { pid: Some(p) } if p == "p1"
        ));
        assert!(matches!(
            decode_sio(Opcode::Text, br#"40{"sid":"s1"}"#),
            Event::ConnectAck { pid: None }
        ));
        let ev = br#"42["message","pub","e","000000000000000012340000000007xx","MTc2-3"]"#;
        match decode_sio(Opcode::Text, ev) {
            Event::Emitted {
                item: Item::Delivery { stamp, number },
                last_str,
            } => {
                assert_eq!((stamp, number), (1234, 7));
                assert_eq!(last_str.as_deref(), Some("MTc2-3"));
            }
            _ => panic!("not a delivery"),
        }
        assert!(matches!(decode_sio(Opcode::Text, b"2"), Event::EnginePing));
        assert!(matches!(
            decode_sio(Opcode::Text, br#"44{"message":"no"}"#),
            Event::Closed(_)
        ));
        assert!(matches!(
            decode_sio(Opcode::Text, b"42[\"message\""),
            Event::Emitted {
                item: Item::Error(_),
                ..
            }
        ));
    }

    #[test]
    fn peermesh_frames_decode() {
        let m = br#"{"seq":9,"type":"message","from":"p","event":"e","data":"000000000000000000050000000003xx"}"#;
        assert!(matches!(
            decode_pm(Encoding::Json, m),
            Event::Framed {
                seq: 9,
                item: Item::Delivery {
                    stamp: 5,
                    number: 3
                }
            }
        ));
        let r = br#"{"seq":2,"type":"resume_rejected","reason":"expired","message":"gone"}"#;
        assert!(matches!(
            decode_pm(Encoding::Json, r),
            Event::Framed { seq: 2, item: Item::Rejected(reason) } if reason == "expired"
        ));
        assert!(matches!(decode_pm(Encoding::Json, b"{"), Event::Bad(_)));
    }
}
