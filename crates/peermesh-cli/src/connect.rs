//! `peermesh connect`: one hub client driven by JSON lines.
//!
//! ```text
//!   stdin thread ──lines (bounded)──▶ session loop ──Request::send──▶ Client actor ──▶ hub
//!                                         │ spawns one task per answer it waits for
//!   Client listeners (on_any, events) ──▶ forwarders ──┐
//!   answer tasks ──────────────────────────────────────┴──▶ Output (bounded) ──▶ stdout
//! ```
//!
//! Commands are queued to the client in line order (so a `join` reaches the hub before the
//! `emit_room` on the next line) while their answers are awaited concurrently. See
//! `docs/cli.md` for the contract.

mod command;
pub(crate) mod output;
mod pipe;

use std::io::BufRead;
use std::time::Duration;

use anyhow::anyhow;
use peermesh_client::{
    Client, ClientError, ClientOptions, Encoding, FeedEnd, ReconnectPolicy, RoomName, SessionUpdate,
};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use command::Op;
use output::Output;

/// Longest accepted stdin line, in bytes; a longer line is skipped with a `bad_command` error.
const MAX_LINE_BYTES: usize = 4 << 20;
/// Lines read ahead from stdin.
const INPUT_QUEUE_LINES: usize = 64;

/// The contract, shown by `peermesh connect --help` after the options.
const AFTER_LONG_HELP: &str = r#"Contract:
  Drive one hub client with JSON lines: one command per stdin line, one event per stdout line.
  Logs go to stderr (RUST_LOG=peermesh=debug for more).
  - The first line out is {"type":"connected","id":"alice"} (with several hubs also
    "url": the one connected to).
  - Commands name what to do with "op"; events name what happened with "type"; "id" only ever
    names a client.
  - A command may carry a correlation number "req": it is echoed in exactly one answer line
    (ok, ack, result, members or error). Without "req", success prints nothing; errors still
    print.
  - Commands reach the hub in line order; answers print as they come.
  - A line that is not a valid command prints {"type":"error","code":"bad_command",...}
    (with its "req" when readable) and changes nothing.
  - At end of input the client waits for every pending answer, closes, and exits 0.
    It exits 1 when it cannot connect or the connection is lost for good ("lost").

Commands (stdin):
  {"op":"emit","to":"bob","event":"chat","data":{"text":"hi"}}
  {"op":"emit","to":"bob","event":"q","data":1,"ack":true,"req":7}
      bob must answer; optional "timeout_ms" (default --ack-timeout-ms)
  {"op":"reply","ack_id":3,"data":2}
      answers a message line that carried "ack_id"
  {"op":"join","room":"r","req":1}
  {"op":"leave","room":"r","req":2}
  {"op":"emit_room","room":"r","event":"e","data":{},"include_self":false}
  {"op":"members","room":"r","req":3}
  {"op":"provide","service":"calc","methods":["add"],"req":4}
      calls then print as invoke lines; answer each with respond
  {"op":"unprovide","req":9}      no new calls; the service ends with its last provider
  {"op":"respond","call":8589934593,"data":3}    or ..."error":"division by zero"}
  {"op":"call","service":"calc","method":"add","data":[1,2],"req":5}
      optional "timeout_ms" (default 5000); prints a result line
  {"op":"subscribe","service":"calc","topic":"sums","req":6}
  {"op":"unsubscribe","service":"calc","topic":"sums","req":7}
  {"op":"create_topic","topic":"sums","req":8}      (a provider's own service)
  {"op":"publish","topic":"sums","data":3}
  {"op":"destroy_topic","topic":"sums","req":9}
  {"op":"session_join","session":"game","req":10}    (no "session": a new id; "mode":"relay")
      prints a session_state line, then session_event lines
  {"op":"session_create","session":"game","object":"ball","data":{"x":1},"req":11}
      optional "owned" (default true), "on_owner_leave": "authority" | "delete"
  {"op":"session_update","session":"game","object":"ball","data":{"x":2}}
  {"op":"session_patch","session":"game","object":"ball","data":{"y":null}}  (JSON merge patch)
  {"op":"session_delete","session":"game","object":"ball"}
  {"op":"session_transfer","session":"game","object":"ball","to":"bob"}    (no "to": no owner)
  {"op":"session_leave","session":"game","req":12}
  Payloads: "data" holds any JSON value, "bin" bytes in base64; neither means null.

Events (stdout):
  {"type":"connected","id":"alice"}      + "url" when several hub URLs were given
  {"type":"message","from":"alice","event":"chat","data":{"text":"hi"}}
      + "room" for room deliveries, "ack_id" when an answer is expected, "bin" for bytes
  {"type":"ok","req":1}
  {"type":"ack","req":7,"data":2}
  {"type":"members","req":3,"room":"r","members":["alice","bob"]}
  {"type":"invoke","call":8589934593,"from":"alice","service":"calc","method":"add","data":[1,2]}
  {"type":"result","req":5,"data":3}
  {"type":"publication","service":"calc","topic":"sums","data":3}
  {"type":"topic_ended","service":"calc","topic":"sums","reason":"destroyed"}
  {"type":"error","code":"unknown_target","message":"...","req":7}
      codes: the hub's (unknown_target, ack_timeout, peer_left, not_in_room, unknown_service,
      unknown_method, service_error, call_timeout, provider_left, ...) and
      bad_command, invalid_name, not_connected, connection_lost, timeout, closed
  {"type":"member_joined","room":"r","id":"bob"}
  {"type":"member_left","room":"r","id":"bob"}
  {"type":"peer_left","id":"bob"}
  {"type":"connection_lost","reason":"..."}
  {"type":"reconnecting","attempt":1,"delay_ms":200}
  {"type":"reconnected","id":"alice","attempt":1,"rooms":["r"],"url":"ws://127.0.0.1:7070/ws"}
  {"type":"lost","reason":"..."}

Several hubs (e.g. a cluster):
  Give more than one URL (commas, repeated --url, or both; the positional URL comes first).
  The first connection tries them in order until one answers. After a drop, each reconnect
  attempt is a round over every URL, the lost hub first (to resume there), then the others, with the
  backoff delay before each round; "reconnected" names the hub reached. A hub that does not
  know the session starts a fresh one ("resynced").

Pipes (streams):
  --pipe ID opens a stream to ID and joins it to stdin/stdout; --accept-pipe accepts the first
  stream opened to this client. stdout then carries the stream's bytes only (events and logs go
  to stderr); exit 0 once both directions ended cleanly, 1 on refusal, reset or lost connection.

Example:
  peermesh serve &
  peermesh connect ws://127.0.0.1:7070/ws --id bob &
  echo '{"op":"emit","to":"bob","event":"chat","data":"hi"}' | peermesh connect ws://127.0.0.1:7070/ws --id alice
  peermesh connect ws://hub-a:7070/ws,ws://hub-b:7070/ws --id carol
  peermesh connect --url ws://hub-a:7070/ws --url ws://hub-b:7070/ws --id carol

See docs/cli.md for the full contract."#;

/// Arguments of `peermesh connect`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Run with --help for the JSON line contract.",
    after_long_help = AFTER_LONG_HELP
)]
pub(crate) struct ConnectArgs {
    /// Hub WebSocket URL, e.g. ws://127.0.0.1:7070/ws (extra query parameters are metadata).
    /// Several hubs, tried in order: separate them with commas, or use --url.
    #[arg(value_name = "URL", required_unless_present = "urls")]
    url: Option<String>,
    /// Another hub URL, tried after the positional URL and the --url before it (repeatable;
    /// commas separate several).
    #[arg(long = "url", value_name = "URL")]
    urls: Vec<String>,
    /// Client id to ask for [default: one generated by the hub].
    #[arg(long)]
    id: Option<String>,
    /// Room to join in the handshake (repeatable).
    #[arg(long = "room", value_name = "ROOM")]
    rooms: Vec<String>,
    /// Wire encoding.
    #[arg(long, value_enum, default_value_t = Enc::Json)]
    enc: Enc,
    /// Token for hubs that require authentication.
    #[arg(long, env = "PEERMESH_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Acknowledgement timeout of `"ack":true` emits without "timeout_ms", in ms.
    #[arg(long, default_value_t = 5_000)]
    ack_timeout_ms: u64,
    /// Reconnect attempts after the connection drops (0: exit when it drops).
    #[arg(long, default_value_t = 8)]
    reconnect_attempts: u32,
    /// Open a stream to this client and connect it to stdin/stdout (netcat through the hub):
    /// stdout carries the stream's bytes only, events go to stderr.
    #[arg(long, value_name = "ID", conflicts_with = "accept_pipe")]
    pipe: Option<String>,
    /// Accept the first stream another client opens and connect it to stdin/stdout.
    #[arg(long)]
    accept_pipe: bool,
}

/// The `--enc` values.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Enc {
    /// JSON text frames.
    Json,
    /// MessagePack binary frames.
    Msgpack,
}

impl ConnectArgs {
    /// Every hub URL in the order given: the positional one first, then each `--url`.
    fn hub_urls(&self) -> Vec<String> {
        self.url
            .iter()
            .chain(&self.urls)
            .flat_map(|list| split_urls(list))
            .collect()
    }

    /// The hub URLs for messages.
    fn describe_urls(&self) -> String {
        self.hub_urls().join(", ")
    }

    fn options(&self) -> ClientOptions {
        let mut urls = self.hub_urls().into_iter();
        // clap requires a URL; an empty one fails as `invalid_url` when connecting.
        let first = urls.next().unwrap_or_default();
        ClientOptions {
            id: self.id.clone(),
            rooms: self.rooms.clone(),
            token: self.token.clone(),
            encoding: match self.enc {
                Enc::Json => Encoding::Json,
                Enc::Msgpack => Encoding::MsgPack,
            },
            ack_timeout: Duration::from_millis(self.ack_timeout_ms),
            reconnect: (self.reconnect_attempts > 0).then(|| ReconnectPolicy {
                max_attempts: self.reconnect_attempts,
                ..ReconnectPolicy::default()
            }),
            ..ClientOptions::new(first).with_fallback_urls(urls)
        }
    }
}

/// Splits a comma-separated list of hub URLs. A comma starts a new URL only when `ws://` or
/// `wss://` follows it, so a comma inside a URL's query (a metadata value) stays there.
fn split_urls(list: &str) -> Vec<String> {
    let mut urls: Vec<String> = Vec::new();
    for piece in list.split(',') {
        let lower = piece.trim_start().to_ascii_lowercase();
        let starts_url = lower.starts_with("ws://") || lower.starts_with("wss://");
        match urls.last_mut() {
            Some(last) if !starts_url => {
                last.push(',');
                last.push_str(piece);
            }
            _ => urls.push(piece.to_owned()),
        }
    }
    urls.iter()
        .map(|u| u.trim().trim_end_matches(',').trim_end().to_owned())
        .filter(|u| !u.is_empty())
        .collect()
}

pub(crate) async fn run(args: ConnectArgs) -> anyhow::Result<()> {
    let role = match (&args.pipe, args.accept_pipe) {
        (Some(to), _) => Some(pipe::Role::Open(to.clone())),
        (None, true) => Some(pipe::Role::Accept),
        (None, false) => None,
    };
    if let Some(role) = role {
        // A stream does not survive a reconnect: the pipe ends with its connection.
        let opts = ClientOptions {
            reconnect: None,
            ..args.options()
        };
        let client = Client::connect(opts)
            .await
            .map_err(|e| anyhow!("cannot connect to {}: {e}", args.describe_urls()))?;
        return pipe::run(client, role).await;
    }
    let (out, writer) = Output::spawn();
    let result = session(&args, out).await;
    // Every `Output` is gone once the session returns: the writer drains and stops.
    if writer.await.is_err() {
        tracing::error!("the stdout writer failed");
    }
    result
}

async fn session(args: &ConnectArgs, out: Output) -> anyhow::Result<()> {
    let client = match Client::connect(args.options()).await {
        Ok(c) => c,
        Err(e) => {
            out.line(output::client_error(&e, None)).await;
            return Err(anyhow!("cannot connect to {}: {e}", args.describe_urls()));
        }
    };
    // Listen before saying `connected`: whoever reads that line and then breaks the
    // connection must see every event after it (a `reconnecting` could otherwise come before
    // the event stream exists, and be missed).
    let mut messages = client.on_any();
    let mut events = client.events();
    let mut invocations = client.invocations();
    let url = client.current_url();
    tracing::info!(id = %client.id(), url, "connected");
    let several = args.hub_urls().len() > 1;
    out.line(output::connected(client.id(), several.then_some(url)))
        .await;
    let forward_invocations = {
        let out = out.clone();
        tokio::spawn(async move {
            while let Some(inv) = invocations.recv().await {
                out.line(output::invoke(&inv)).await;
            }
        })
    };
    let forward_messages = {
        let out = out.clone();
        tokio::spawn(async move {
            while let Some(m) = messages.recv().await {
                out.line(output::message(&m)).await;
            }
            if messages.dropped() > 0 {
                tracing::warn!(
                    dropped = messages.dropped(),
                    "messages dropped (stdout too slow)"
                );
            }
        })
    };
    let forward_events = {
        let out = out.clone();
        tokio::spawn(async move {
            while let Some(e) = events.recv().await {
                if let Some(l) = output::event(e) {
                    out.line(l).await;
                }
            }
        })
    };

    let mut input = spawn_stdin_reader()?;
    let mut answers = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = client.closed() => break,
            Some(done) = answers.join_next(), if !answers.is_empty() => {
                if let Err(e) = done {
                    tracing::error!(error = %e, "an answer task failed");
                }
            }
            item = input.recv() => match item {
                None => break,
                Some(Input::Bad(message)) => {
                    out.line(output::error("bad_command", &message, None)).await;
                }
                Some(Input::Line(line)) => execute(&client, &out, &mut answers, &line).await,
            },
        }
    }
    tracing::debug!(
        pending = answers.len(),
        "end of input: waiting for pending answers"
    );
    while let Some(done) = answers.join_next().await {
        if let Err(e) = done {
            tracing::error!(error = %e, "an answer task failed");
        }
    }
    let lost = client.is_closed();
    client.close().await;
    drop(client);
    // Listeners end with the client; their queued lines are printed first.
    let _ = forward_messages.await;
    let _ = forward_events.await;
    let _ = forward_invocations.await;
    if lost {
        return Err(anyhow!("the connection to the hub was lost for good"));
    }
    Ok(())
}

/// Queues one command line and, when it has an answer to wait for, a task that prints it.
async fn execute(client: &Client, out: &Output, answers: &mut JoinSet<()>, line: &str) {
    let line = line.trim();
    if line.is_empty() {
        return;
    }
    let cmd = match command::parse(line) {
        Ok(cmd) => cmd,
        Err(bad) => {
            out.line(output::error("bad_command", &bad.message, bad.req))
                .await;
            return;
        }
    };
    let req = cmd.req;
    let ok_line = move |()| req.map(output::ok);
    match cmd.op {
        Op::Emit {
            to,
            event,
            payload,
            ack: None,
        } => {
            let request = client.emit(to, event, payload);
            submit(answers, out, req, request, ok_line).await;
        }
        Op::Emit {
            to,
            event,
            payload,
            ack: Some(timeout_ms),
        } => {
            let timeout = timeout_ms.map(Duration::from_millis);
            let request = client.emit_with_ack(to, event, payload, timeout);
            let ack_line = move |p| req.map(|r| output::ack(r, p));
            submit(answers, out, req, request, ack_line).await;
        }
        Op::Reply { ack_id, payload } => {
            submit(answers, out, req, client.reply(ack_id, payload), ok_line).await;
        }
        Op::Join { room } => submit(answers, out, req, client.join(room), ok_line).await,
        Op::Leave { room } => submit(answers, out, req, client.leave(room), ok_line).await,
        Op::EmitRoom {
            room,
            event,
            payload,
            include_self,
        } => {
            let request = client.emit_room(room, event, payload, include_self);
            submit(answers, out, req, request, ok_line).await;
        }
        Op::Provide { service, methods } => {
            submit(answers, out, req, client.provide(service, methods), ok_line).await;
        }
        Op::Unprovide => submit(answers, out, req, client.unprovide(), ok_line).await,
        Op::Call {
            service,
            method,
            payload,
            timeout_ms,
        } => {
            let timeout = timeout_ms.map(Duration::from_millis);
            let request = client.call(service, method, payload, timeout);
            let result_line = move |p| req.map(|r| output::result(r, p));
            submit(answers, out, req, request, result_line).await;
        }
        Op::Respond { call, outcome } => {
            submit(answers, out, req, client.respond(call, outcome), ok_line).await;
        }
        Op::Subscribe { service, topic } => {
            let request = client.subscribe(service, topic);
            match request.send().await {
                Err(e) => out.line(output::client_error(&e, req)).await,
                Ok(pending) => {
                    let out = out.clone();
                    // The `ok` line is printed before any publication of the feed.
                    answers.spawn(async move {
                        match pending.await {
                            Err(e) => out.line(output::client_error(&e, req)).await,
                            Ok(mut feed) => {
                                if let Some(r) = req {
                                    out.line(output::ok(r)).await;
                                }
                                tokio::spawn(async move {
                                    while let Some(p) = feed.recv().await {
                                        out.line(output::publication(p)).await;
                                    }
                                    if let Some(FeedEnd::Topic(reason)) = feed.end() {
                                        let (s, t) = (feed.service().clone(), feed.topic().clone());
                                        out.line(output::topic_ended(s, t, reason)).await;
                                    }
                                });
                            }
                        }
                    });
                }
            }
        }
        Op::SessionJoin { session, mode } => {
            let request = client.join_session(session.as_deref(), mode);
            match request.send().await {
                Err(e) => out.line(output::client_error(&e, req)).await,
                Ok(pending) => {
                    let out = out.clone();
                    answers.spawn(async move {
                        match pending.await {
                            Err(e) => out.line(output::client_error(&e, req)).await,
                            Ok(session) => follow_session(session, req, out),
                        }
                    });
                }
            }
        }
        Op::SessionLeave { session } => {
            submit(answers, out, req, client.leave_session(session), ok_line).await;
        }
        Op::SessionChange { session, op } => {
            submit(answers, out, req, client.session_op(session, op), ok_line).await;
        }
        Op::Unsubscribe { service, topic } => {
            submit(
                answers,
                out,
                req,
                client.unsubscribe(service, topic),
                ok_line,
            )
            .await;
        }
        Op::CreateTopic { topic } => {
            submit(answers, out, req, client.create_topic(topic), ok_line).await;
        }
        Op::DestroyTopic { topic } => {
            submit(answers, out, req, client.destroy_topic(topic), ok_line).await;
        }
        Op::Publish { topic, payload } => {
            submit(answers, out, req, client.publish(topic, payload), ok_line).await;
        }
        Op::Members { room } => match RoomName::new(&room) {
            Ok(room) => {
                let request = client.members(&room);
                let members_line = move |m| Some(output::members(req, room, m));
                submit(answers, out, req, request, members_line).await;
            }
            Err(e) => {
                out.line(output::client_error(&ClientError::from(e), req))
                    .await;
            }
        },
    }
}

/// Queues `request` now (in line order) and prints its answer when it comes.
/// Prints a joined session's state, then each of its events, as lines.
fn follow_session(mut session: peermesh_client::Session, req: Option<u64>, out: Output) {
    tokio::spawn(async move {
        out.line(output::session_state(&session, req)).await;
        while let Some(update) = session.next().await {
            let line = match update {
                SessionUpdate::Event { rev, by, change } => {
                    output::session_event(session.name().clone(), rev, by, change)
                }
                _ => output::session_state(&session, None),
            };
            out.line(line).await;
        }
        if let Some(end) = session.end() {
            out.line(output::session_ended(session.name(), end)).await;
        }
    });
}

async fn submit<T: Send + 'static>(
    answers: &mut JoinSet<()>,
    out: &Output,
    req: Option<u64>,
    request: peermesh_client::Request<T>,
    on_ok: impl FnOnce(T) -> Option<String> + Send + 'static,
) {
    match request.send().await {
        Err(e) => out.line(output::client_error(&e, req)).await,
        Ok(pending) => {
            let out = out.clone();
            answers.spawn(async move {
                let line = match pending.await {
                    Ok(v) => on_ok(v),
                    Err(e) => Some(output::client_error(&e, req)),
                };
                if let Some(line) = line {
                    out.line(line).await;
                }
            });
        }
    }
}

/// One item read from stdin.
#[derive(Debug, PartialEq)]
pub(crate) enum Input {
    /// A complete line, without its line ending.
    Line(String),
    /// A line that cannot be a command (too long, not UTF-8).
    Bad(String),
}

/// Reads stdin on its own thread (a blocked read must not hold up the runtime's shutdown).
pub(crate) fn spawn_stdin_reader() -> anyhow::Result<mpsc::Receiver<Input>> {
    let (tx, rx) = mpsc::channel(INPUT_QUEUE_LINES);
    std::thread::Builder::new()
        .name("peermesh-stdin".into())
        .spawn(move || {
            let stdin = std::io::stdin();
            let mut reader = stdin.lock();
            loop {
                match read_line(&mut reader, MAX_LINE_BYTES) {
                    Ok(Some(item)) => {
                        if tx.blocking_send(item).is_err() {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot read stdin");
                        return;
                    }
                }
            }
        })?;
    Ok(rx)
}

/// Reads one line of at most `max` bytes; `None` at end of input.
fn read_line(r: &mut impl BufRead, max: usize) -> std::io::Result<Option<Input>> {
    let mut buf = Vec::new();
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    let n = std::io::Read::take(&mut *r, limit).read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
    } else if buf.len() > max {
        // Skip the rest of the oversized line.
        loop {
            let chunk = r.fill_buf()?;
            if chunk.is_empty() {
                break;
            }
            if let Some(i) = chunk.iter().position(|b| *b == b'\n') {
                r.consume(i + 1);
                break;
            }
            let len = chunk.len();
            r.consume(len);
        }
        return Ok(Some(Input::Bad(format!(
            "the line is longer than {max} bytes"
        ))));
    }
    Ok(Some(match String::from_utf8(buf) {
        Ok(line) => Input::Line(line),
        Err(_) => Input::Bad("the line is not valid UTF-8".into()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_bounded_and_checked() {
        let text = b"one\r\ntwo\n0123456789abc\nok\n\xff\nlast";
        let mut r = std::io::Cursor::new(&text[..]);
        let mut got = Vec::new();
        while let Some(item) = read_line(&mut r, 10).expect("in-memory reads") {
            got.push(item);
        }
        assert_eq!(
            got,
            [
                Input::Line("one".into()),
                Input::Line("two".into()),
                Input::Bad("the line is longer than 10 bytes".into()),
                Input::Line("ok".into()),
                Input::Bad("the line is not valid UTF-8".into()),
                Input::Line("last".into()),
            ]
        );
    }

    #[test]
    fn options_follow_the_flags() {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: ConnectArgs,
        }
        let cli = Cli::parse_from([
            "x",
            "ws://h:1/ws",
            "--id",
            "alice",
            "--room",
            "a",
            "--room",
            "b",
            "--enc",
            "msgpack",
            "--reconnect-attempts",
            "0",
        ]);
        let o = cli.args.options();
        assert_eq!(o.url, "ws://h:1/ws");
        assert!(o.fallback_urls.is_empty());
        assert_eq!(o.id.as_deref(), Some("alice"));
        assert_eq!(o.rooms, ["a", "b"]);
        assert_eq!(o.encoding, Encoding::MsgPack);
        assert_eq!(o.ack_timeout, Duration::from_secs(5));
        assert!(o.reconnect.is_none());
    }

    #[test]
    fn several_urls_from_commas_and_repeated_flags() {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: ConnectArgs,
        }
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("x").chain(args.iter().copied()))
                .map(|c| c.args.options())
        };
        let o = parse(&[
            "ws://a/ws,wss://b/ws?tags=x,y",
            "--url",
            "ws://c/ws",
            "--url",
            " WS://d/ws , ws://e/ws,",
        ])
        .expect("valid flags");
        assert_eq!(
            o.hub_urls().collect::<Vec<_>>(),
            [
                "ws://a/ws",
                "wss://b/ws?tags=x,y",
                "ws://c/ws",
                "WS://d/ws",
                "ws://e/ws"
            ]
        );
        // --url alone is enough.
        let o = parse(&["--url", "ws://a/ws", "--url", "ws://b/ws"]).expect("valid flags");
        assert_eq!(o.url, "ws://a/ws");
        assert_eq!(o.fallback_urls, ["ws://b/ws"]);
        // A single URL keeps its commas.
        let o = parse(&["ws://a/ws?list=1,2"]).expect("valid flags");
        assert_eq!(o.hub_urls().collect::<Vec<_>>(), ["ws://a/ws?list=1,2"]);
        // At least one URL is required.
        assert!(parse(&["--id", "alice"]).is_err());
    }
}
