//! The writer half of a connection: drains the outbound queue into the socket.
//!
//! It assigns each frame its `seq`, batches whatever is queued into one flush, sends the
//! heartbeat pings, and on close writes the reason as an `error` frame and a close frame.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use bytes::BytesMut;
use futures_util::stream::SplitSink;
use futures_util::SinkExt;
use peermesh_proto::{EncodedBody, Encoding, ErrorCode, ErrorFrame, ServerFrame};
use tokio::sync::mpsc;

use crate::metrics::Metrics;
use crate::registry::ConnShared;

/// Most frames written per flush.
const BATCH: usize = 128;
/// Time allowed to write the final error and close frames.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// Chunk from which consecutive outgoing frames are carved (one allocation per chunk).
const CHUNK: usize = 16 << 10;

pub(crate) struct Writer {
    pub(crate) sink: SplitSink<WebSocket, Message>,
    pub(crate) rx: mpsc::Receiver<EncodedBody>,
    pub(crate) conn: Arc<ConnShared>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) seq: u64,
    pub(crate) heartbeat: Duration,
}

/// The WebSocket close code for a fatal error.
pub(crate) fn close_code(code: ErrorCode) -> u16 {
    match code {
        ErrorCode::ShuttingDown => 1001,
        ErrorCode::FrameTooLarge => 1009,
        ErrorCode::Internal => 1011,
        _ => 1008,
    }
}

/// A close frame whose reason fits the 123-byte limit.
pub(crate) fn close_frame(code: ErrorCode, message: &str) -> Message {
    let mut reason = if code == ErrorCode::ShuttingDown {
        "server shutting down".to_string()
    } else {
        format!("{code}: {message}")
    };
    if reason.len() > 123 {
        let mut cut = 123;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
    }
    Message::Close(Some(CloseFrame {
        code: close_code(code),
        reason: Utf8Bytes::from(reason),
    }))
}

impl Writer {
    fn message(&mut self, body: &EncodedBody, buf: &mut BytesMut) -> Option<Message> {
        self.seq += 1;
        if buf.capacity() - buf.len() < body.encoded_len() {
            buf.reserve(body.encoded_len().max(CHUNK));
        }
        body.write_with_seq(self.seq, buf);
        let frame = buf.split().freeze();
        self.metrics.inc_bytes_out(frame.len() as u64);
        self.conn
            .stats
            .bytes_out
            .fetch_add(frame.len() as u64, std::sync::atomic::Ordering::Relaxed);
        match body.encoding() {
            Encoding::Json => Utf8Bytes::try_from(frame).ok().map(Message::Text),
            Encoding::MsgPack => Some(Message::Binary(frame)),
        }
    }

    pub(crate) async fn run(mut self) {
        let mut batch: Vec<EncodedBody> = Vec::with_capacity(BATCH);
        let mut buf = BytesMut::new();
        let start = tokio::time::Instant::now() + self.heartbeat;
        let mut ping = tokio::time::interval_at(start, self.heartbeat);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let cancel = self.conn.cancel.clone();
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                n = self.rx.recv_many(&mut batch, BATCH) => {
                    if n == 0 {
                        break;
                    }
                    let written = tokio::select! {
                        biased;
                        _ = cancel.cancelled() => false,
                        ok = self.write_batch(&mut batch, &mut buf) => ok,
                    };
                    if !written {
                        break;
                    }
                    // Give the chunk back when idle: an idle connection holds no buffer.
                    if self.rx.is_empty() {
                        buf = BytesMut::new();
                    }
                }
                _ = ping.tick() => {
                    let sent = tokio::select! {
                        biased;
                        _ = cancel.cancelled() => false,
                        r = self.sink.send(Message::Ping(bytes::Bytes::new())) => r.is_ok(),
                    };
                    if !sent {
                        break;
                    }
                }
            }
        }
        self.finish().await;
    }

    async fn write_batch(&mut self, batch: &mut Vec<EncodedBody>, buf: &mut BytesMut) -> bool {
        let n = batch.len() as u64;
        for body in batch.drain(..) {
            let len = body.encoded_len();
            let msg = self.message(&body, buf);
            self.conn.dequeued(len);
            let Some(msg) = msg else {
                tracing::error!("an encoded JSON frame was not UTF-8; dropped");
                continue;
            };
            if self.sink.feed(msg).await.is_err() {
                return false;
            }
        }
        self.metrics.inc_frames_out(n);
        self.conn
            .stats
            .frames_out
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        self.sink.flush().await.is_ok()
    }

    /// Writes the close reason, if there is one, then the close frame.
    async fn finish(mut self) {
        let reason = self.conn.close_reason().cloned();
        let fut = async {
            if let Some(r) = &reason {
                let frame = ServerFrame::Error(ErrorFrame::new(r.code, r.message.clone(), None));
                let body = EncodedBody::encode(self.conn.encoding, &frame);
                let mut buf = BytesMut::new();
                if let Some(msg) = self.message(&body, &mut buf) {
                    self.sink.send(msg).await.ok()?;
                }
                self.sink.send(close_frame(r.code, &r.message)).await.ok()?;
            }
            self.sink.close().await.ok()
        };
        let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, fut).await;
    }
}
