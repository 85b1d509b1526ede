//! `peermesh connect --pipe ID` and `--accept-pipe`: netcat through the hub.
//!
//! ```text
//!   stdin thread ──chunks (bounded)──▶ stream write ─▶ hub ─▶ peer
//!   stdout ◀── stream read ◀────────────────────────── hub ◀─ peer
//! ```
//!
//! stdout carries the stream's bytes and nothing else; events (`connected`, `stream`,
//! `stream_end`, errors) are JSON lines on stderr, next to the logs. At the end of stdin the
//! stream's write side is shut down (the peer reads EOF); the command exits 0 once both
//! directions have ended cleanly, 1 when the stream is refused, reset or the connection lost.

use std::io::Read as _;

use anyhow::{anyhow, Context as _};
use bytes::Bytes;
use peermesh_client::{Client, Stream};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;

/// Bytes read from stdin at a time.
const CHUNK: usize = 64 << 10;
/// Chunks read ahead from stdin.
const AHEAD: usize = 8;

/// Which end of the pipe this process is.
#[derive(Debug, Clone)]
pub(crate) enum Role {
    /// Open a stream to this client id.
    Open(String),
    /// Accept the first stream another client opens.
    Accept,
}

fn event(v: serde_json::Value) {
    eprintln!("{v}");
}

pub(crate) async fn run(client: Client, role: Role) -> anyhow::Result<()> {
    event(serde_json::json!({"type":"connected","id":client.id()}));
    let result = pipe(&client, role).await;
    client.close().await;
    if let Err(e) = &result {
        event(serde_json::json!({"type":"error","message":format!("{e:#}")}));
    }
    result
}

async fn pipe(client: &Client, role: Role) -> anyhow::Result<()> {
    let stream = match role {
        Role::Open(to) => client
            .open_stream(&to, None)
            .await
            .with_context(|| format!("opening a stream to {to}"))?,
        Role::Accept => {
            let mut incoming = client.incoming_streams();
            let req = tokio::select! {
                r = incoming.recv() => r.ok_or_else(|| anyhow!("the client stopped before a stream arrived"))?,
                _ = client.closed() => return Err(anyhow!("the connection to the hub was lost")),
            };
            req.accept()
        }
    };
    event(serde_json::json!({"type":"stream","peer":stream.peer(),"stream":stream.id()}));
    let (reader, writer) = tokio::io::split(stream);
    let input = spawn_stdin_reader()?;
    let up = upload(input, writer);
    let down = download(reader);
    // The first failure ends both (a reset peer must not leave us waiting for stdin).
    let (writer, reader) = tokio::try_join!(up, down)?;
    let stream: Stream = reader.unsplit(writer);
    event(serde_json::json!({"type":"stream_end","stream":stream.id()}));
    Ok(())
}

/// stdin → stream; shuts the write side down at the end of stdin.
async fn upload(
    mut input: mpsc::Receiver<std::io::Result<Bytes>>,
    mut writer: tokio::io::WriteHalf<Stream>,
) -> anyhow::Result<tokio::io::WriteHalf<Stream>> {
    while let Some(chunk) = input.recv().await {
        let chunk = chunk.context("reading stdin")?;
        writer
            .write_all(&chunk)
            .await
            .context("writing to the stream")?;
    }
    writer
        .shutdown()
        .await
        .context("ending the stream's write side")?;
    Ok(writer)
}

/// stream → stdout, until the peer ends its side.
async fn download(
    mut reader: tokio::io::ReadHalf<Stream>,
) -> anyhow::Result<tokio::io::ReadHalf<Stream>> {
    let mut stdout = tokio::io::stdout();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = reader
            .read(&mut buf)
            .await
            .context("reading from the stream")?;
        if n == 0 {
            break;
        }
        stdout
            .write_all(&buf[..n])
            .await
            .context("writing stdout")?;
    }
    stdout.flush().await.context("writing stdout")?;
    Ok(reader)
}

/// Reads stdin on its own thread (a blocked read must not hold up the runtime's shutdown).
fn spawn_stdin_reader() -> anyhow::Result<mpsc::Receiver<std::io::Result<Bytes>>> {
    let (tx, rx) = mpsc::channel(AHEAD);
    std::thread::Builder::new()
        .name("peermesh-pipe-stdin".into())
        .spawn(move || {
            let mut stdin = std::io::stdin().lock();
            loop {
                let mut buf = vec![0u8; CHUNK];
                match stdin.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        buf.truncate(n);
                        if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        return;
                    }
                }
            }
        })?;
    Ok(rx)
}
