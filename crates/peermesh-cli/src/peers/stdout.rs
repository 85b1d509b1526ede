//! The stdout of `peermesh peers`: lines written by a thread of its own.
//!
//! Messages from peers can arrive far faster than a hub's events, and the manager drops
//! events its application does not take in time. So stdout must not cost a hand-off to
//! tokio's blocking pool per flush (`tokio::io::stdout`, what `peermesh connect` uses): this
//! thread owns the locked std stdout behind a 64 KiB buffer, writes whatever is queued, and
//! flushes only when the queue is empty.

use std::io::Write as _;
use std::thread::JoinHandle;

use tokio::sync::mpsc;

/// Lines (or batches of lines) waiting for the thread; producers wait when it is full.
const QUEUE: usize = 1024;
/// The write buffer in front of stdout.
const BUFFER_BYTES: usize = 64 * 1024;

/// A handle to the stdout thread; clones share it.
#[derive(Clone)]
pub(crate) struct Stdout {
    tx: mpsc::Sender<String>,
}

impl Stdout {
    /// Starts the thread; it ends once every handle is dropped and the queue is written.
    pub(crate) fn spawn() -> std::io::Result<(Stdout, JoinHandle<()>)> {
        let (tx, mut rx) = mpsc::channel::<String>(QUEUE);
        let thread = std::thread::Builder::new()
            .name("peermesh-stdout".into())
            .spawn(move || {
                let mut out =
                    std::io::BufWriter::with_capacity(BUFFER_BYTES, std::io::stdout().lock());
                while let Some(text) = rx.blocking_recv() {
                    let mut item = Some(text);
                    while let Some(text) = item.take() {
                        if out
                            .write_all(text.as_bytes())
                            .and_then(|()| out.write_all(b"\n"))
                            .is_err()
                        {
                            tracing::error!("stdout is closed; nothing more is printed");
                            return;
                        }
                        item = rx.try_recv().ok();
                    }
                    if out.flush().is_err() {
                        tracing::error!("stdout is closed; nothing more is printed");
                        return;
                    }
                }
            })?;
        Ok((Stdout { tx }, thread))
    }

    /// Queues one line, or several joined by newlines (waits while the queue is full). An
    /// empty string prints nothing.
    pub(crate) async fn line(&self, text: String) {
        if text.is_empty() {
            return;
        }
        if self.tx.send(text).await.is_err() {
            tracing::debug!("the stdout thread has stopped; line dropped");
        }
    }
}
