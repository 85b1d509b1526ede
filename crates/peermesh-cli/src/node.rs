//! `peermesh node`: a mesh node (peer-relay's wire over WebSocket) driven by JSON lines, with
//! the line contract of `peermesh connect`.
//!
//! ```text
//!   stdin thread ──lines──▶ session loop ──requests──▶ mesh actor (peermesh_mesh::ws)
//!                                 ▲                          │
//!                                 └──────── events ──────────┘
//!   session loop ──lines──▶ stdout thread
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use peermesh_mesh::id::NodeId;
use peermesh_mesh::node::{NodeConfig, NodeEvent};
use peermesh_mesh::wire::peer_relay::{Datagram, RawJson, MAX_DATAGRAM};
use peermesh_mesh::ws::{self, MeshHandle, WsOptions};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::connect::output::{error, ok};
use crate::connect::{spawn_stdin_reader, Input};
use crate::peers::stdout::Stdout;

const AFTER_LONG_HELP: &str = r#"Contract:
  Run one mesh node speaking peer-relay's wire (JSON over WebSocket), driven by JSON lines:
  one command per stdin line, one event per stdout line; logs on stderr (RUST_LOG). Node ids
  are 40 hex digits.
  - The first line out is {"type":"ready","id":"<40 hex>","url":"ws://127.0.0.1:PORT"}
    (url is null without --listen).
  - A command may carry "req" (a non-negative integer), echoed in exactly one answer line
    (ok, peers, stats or error). Without "req", ok is not printed; errors are.
  - A bad line prints {"type":"error","code":"bad_command",...} and changes nothing; unknown
    fields are refused; empty lines are ignored; lines over 4 MiB are refused.
  - At end of input the node closes its links and exits 0.

Commands (stdin):
  {"op":"send","to":"<id>","data":<any JSON>}        send through the mesh (no delivery guarantee)
  {"op":"send_to","to":"<id>","data_hex":"0102","port":7}
                                                     a PeerRelay.Socket datagram
  {"op":"connect","id":"<id>"}                       direct link via a relayed handshake
  {"op":"disconnect","id":"<id>"}
  {"op":"peers","req":1}                             -> {"type":"peers","req":1,"ids":[...]}
  {"op":"stats","req":2}                             -> {"type":"stats","req":2,...counters}

Events (stdout):
  {"type":"message","from":"<id>","data":<the JSON sent>,"path":["<id>",...]}
      path: the nodes that carried it, origin first, as the envelope had it
  {"type":"datagram","from":"<id>","data_hex":"0102","port":7}   (with --datagrams)
  {"type":"peer","id":"<id>"}        a direct link is up
  {"type":"peer_left","id":"<id>"}   a direct link is gone
  {"type":"error","code":"bad_command"|"bad_id"|"too_large"|"closed","message":"...","req":1}

Example:
  peermesh node --listen 127.0.0.1:9001 &
  peermesh node --bootstrap ws://127.0.0.1:9001"#;

/// Arguments of `peermesh node`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Run with --help for the JSON line contract.",
    after_long_help = AFTER_LONG_HELP
)]
pub(crate) struct NodeArgs {
    /// Accept WebSocket links on this address (port 0 picks one); none when absent.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// A node to join the mesh through, ws://HOST:PORT; repeatable.
    #[arg(long = "bootstrap", value_name = "URL")]
    bootstrap: Vec<String>,
    /// URL announced to peers in handshakes [default: ws:// + the bound address].
    #[arg(long, value_name = "URL")]
    advertise: Option<String>,
    /// Links dialled up to (beyond this, only to cover empty k-buckets).
    #[arg(long, default_value_t = 15)]
    target_peers: usize,
    /// Most links, inbound included.
    #[arg(long, default_value_t = 40)]
    max_peers: usize,
    /// Copies a message starts with.
    #[arg(long, default_value_t = 2)]
    fanout: usize,
    /// Copies each relay sends on (peer-relay uses 2).
    #[arg(long, default_value_t = 1)]
    relay_fanout: usize,
    /// Seed of the node's id and random choices (a random one by default).
    #[arg(long)]
    seed: Option<u64>,
    /// Print datagrams (PeerRelay.Socket messages) as `datagram` lines rather than `message`.
    #[arg(long)]
    datagrams: bool,
    /// Pretend port of this node's datagrams.
    #[arg(long, default_value_t = 7000)]
    port: u16,
}

#[derive(Deserialize, Debug)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
enum Op {
    Send {
        to: String,
        #[serde(default)]
        data: Value,
        #[serde(default)]
        req: Option<u64>,
    },
    SendTo {
        to: String,
        data_hex: String,
        #[serde(default)]
        port: Option<u16>,
        #[serde(default)]
        req: Option<u64>,
    },
    Connect {
        id: String,
        #[serde(default)]
        req: Option<u64>,
    },
    Disconnect {
        id: String,
        #[serde(default)]
        req: Option<u64>,
    },
    Peers {
        #[serde(default)]
        req: Option<u64>,
    },
    Stats {
        #[serde(default)]
        req: Option<u64>,
    },
}

impl Op {
    fn req(&self) -> Option<u64> {
        match self {
            Op::Send { req, .. }
            | Op::SendTo { req, .. }
            | Op::Connect { req, .. }
            | Op::Disconnect { req, .. }
            | Op::Peers { req }
            | Op::Stats { req } => *req,
        }
    }
}

fn line<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// `{"type":…,"id":…}`: `peer` and `peer_left`.
fn id_line(ty: &'static str, id: NodeId) -> String {
    #[derive(Serialize)]
    struct L {
        #[serde(rename = "type")]
        ty: &'static str,
        id: NodeId,
    }
    line(&L { ty, id })
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn hex_encode(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn event_line(e: NodeEvent, datagrams: bool) -> String {
    match e {
        NodeEvent::Message { from, data, path } => {
            if datagrams {
                if let Some(d) = Datagram::decode(&data) {
                    #[derive(Serialize)]
                    struct L {
                        #[serde(rename = "type")]
                        ty: &'static str,
                        from: NodeId,
                        data_hex: String,
                        port: u16,
                    }
                    return line(&L {
                        ty: "datagram",
                        from,
                        data_hex: hex_encode(&d.buffer),
                        port: d.port,
                    });
                }
            }
            // `data` is printed as the sender's JSON text, unparsed.
            let path: Vec<String> = path.iter().map(|p| p.to_string()).collect();
            format!(
                r#"{{"type":"message","from":"{from}","data":{},"path":{}}}"#,
                data.get(),
                serde_json::to_string(&path).unwrap_or_default()
            )
        }
        NodeEvent::PeerConnected(id) => id_line("peer", id),
        NodeEvent::PeerGone(id) => id_line("peer_left", id),
    }
}

fn parse_id(s: &str, req: Option<u64>) -> Result<NodeId, String> {
    NodeId::from_hex(s).map_err(|e| error("bad_id", &e.to_string(), req))
}

pub(crate) async fn run(args: NodeArgs) -> anyhow::Result<()> {
    let cfg = NodeConfig {
        target_peers: args.target_peers,
        max_peers: args.max_peers,
        fanout: args.fanout,
        relay_fanout: args.relay_fanout,
        reserve_inbound: (args.max_peers / 5).min(args.max_peers.saturating_sub(1)),
        ..NodeConfig::default()
    };
    for b in &args.bootstrap {
        if !(b.starts_with("ws://") || b.starts_with("wss://")) {
            anyhow::bail!("--bootstrap {b:?}: expected a ws:// URL such as ws://127.0.0.1:9001");
        }
    }
    let opts = WsOptions {
        listen: args.listen,
        advertise: args.advertise.clone(),
        bootstrap: args.bootstrap.clone(),
        seed: args.seed,
        ..WsOptions::default()
    };
    let (handle, mut events) = ws::spawn(cfg, opts)
        .await
        .context("cannot start the mesh node")?;
    let (out, writer) = Stdout::spawn()?;
    #[derive(Serialize)]
    struct Ready<'a> {
        #[serde(rename = "type")]
        ty: &'static str,
        id: NodeId,
        url: Option<&'a str>,
    }
    out.line(line(&Ready {
        ty: "ready",
        id: handle.id(),
        url: handle.url(),
    }))
    .await;
    let mut input = spawn_stdin_reader()?;
    loop {
        tokio::select! {
            biased;
            e = events.recv() => match e {
                Some(e) => out.line(event_line(e, args.datagrams)).await,
                None => break,
            },
            i = input.recv() => match i {
                None => break,
                Some(Input::Bad(message)) => out.line(error("bad_command", &message, None)).await,
                Some(Input::Line(text)) => {
                    if let Some(reply) = execute(&handle, &text, &args).await {
                        out.line(reply).await;
                    }
                }
            },
        }
    }
    // Messages already delivered to the node are printed before it goes.
    while let Ok(e) = events.try_recv() {
        out.line(event_line(e, args.datagrams)).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), handle.destroy()).await;
    drop(out);
    let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    Ok(())
}

/// Runs one command line; the line to print, if any.
async fn execute(handle: &MeshHandle, text: &str, args: &NodeArgs) -> Option<String> {
    if text.trim().is_empty() {
        return None;
    }
    let op: Op = match serde_json::from_str(text) {
        Ok(op) => op,
        Err(e) => {
            let req = serde_json::from_str::<Value>(text)
                .ok()
                .and_then(|v| v.get("req").and_then(Value::as_u64));
            return Some(error("bad_command", &e.to_string(), req));
        }
    };
    let req = op.req();
    let done = |r: Result<(), ws::MeshError>| match r {
        Ok(()) => req.map(ok),
        Err(e) => Some(error("closed", &e.to_string(), req)),
    };
    match op {
        Op::Send { to, data, .. } => {
            let to = match parse_id(&to, req) {
                Ok(t) => t,
                Err(line) => return Some(line),
            };
            done(handle.send(to, RawJson::from_value(&data)).await)
        }
        Op::SendTo {
            to, data_hex, port, ..
        } => {
            let to = match parse_id(&to, req) {
                Ok(t) => t,
                Err(line) => return Some(line),
            };
            let Some(bytes) = hex_decode(&data_hex) else {
                return Some(error(
                    "bad_command",
                    "data_hex must be an even number of hex digits",
                    req,
                ));
            };
            if bytes.len() > MAX_DATAGRAM {
                let m = format!(
                    "a datagram is at most {MAX_DATAGRAM} bytes; this one has {}",
                    bytes.len()
                );
                return Some(error("too_large", &m, req));
            }
            let d = Datagram {
                buffer: bytes,
                address: handle.id().to_string(),
                port: port.unwrap_or(args.port),
            };
            done(handle.send(to, d.encode()).await)
        }
        Op::Connect { id, .. } => match parse_id(&id, req) {
            Ok(id) => done(handle.connect(id).await),
            Err(line) => Some(line),
        },
        Op::Disconnect { id, .. } => match parse_id(&id, req) {
            Ok(id) => done(handle.disconnect(id).await),
            Err(line) => Some(line),
        },
        Op::Peers { .. } => match handle.peers().await {
            Ok(ids) => {
                #[derive(Serialize)]
                struct L {
                    #[serde(rename = "type")]
                    ty: &'static str,
                    #[serde(skip_serializing_if = "Option::is_none")]
                    req: Option<u64>,
                    ids: Vec<NodeId>,
                }
                Some(line(&L {
                    ty: "peers",
                    req,
                    ids,
                }))
            }
            Err(e) => Some(error("closed", &e.to_string(), req)),
        },
        Op::Stats { .. } => match handle.stats().await {
            Ok(s) => {
                let mut v = serde_json::json!({
                    "type": "stats",
                    "frames_in": s.frames_in,
                    "frames_out": s.frames_out,
                    "handled": s.handled,
                    "delivered": s.delivered,
                    "relayed": s.relayed,
                    "duplicates": s.duplicates,
                    "hop_limit": s.hop_limit,
                    "no_route": s.no_route,
                    "malformed": s.malformed,
                    "queued": s.queued,
                    "queue_dropped": s.queue_dropped,
                    "offers": s.offers,
                    "links_refused": s.links_refused,
                    "dropped_frames": handle.dropped_frames(),
                    "dropped_events": handle.dropped_events(),
                });
                if let Some(r) = req {
                    v["req"] = r.into();
                }
                Some(line(&v))
            }
            Err(e) => Some(error("closed", &e.to_string(), req)),
        },
    }
}
