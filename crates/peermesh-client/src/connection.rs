//! Opening a connection: the hub URL, the WebSocket, and the `hello` → `welcome` handshake.
//!
//! The socket is reached through a [`Connector`] so the actor can be driven over in-memory
//! sockets in tests; [`tcp_connector`] is the real one.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::{Sink, SinkExt as _, Stream, StreamExt as _};
use peermesh_proto::{
    decode_server, encode_client, ClientFrame, DecodeError, Encoding, Hello, ServerFrame, Welcome,
};
use tokio_tungstenite::tungstenite;

use crate::error::ClientError;

pub(crate) type WsMessage = tungstenite::Message;
pub(crate) type WsError = tungstenite::Error;

/// A WebSocket as the actor sees it: a stream of messages in, a sink of messages out.
pub(crate) trait Transport:
    Stream<Item = Result<WsMessage, WsError>> + Sink<WsMessage, Error = WsError> + Send + Unpin
{
}

impl<T> Transport for T where
    T: Stream<Item = Result<WsMessage, WsError>> + Sink<WsMessage, Error = WsError> + Send + Unpin
{
}

pub(crate) type BoxTransport = Box<dyn Transport>;

/// Opens a WebSocket to a URL.
pub(crate) type Connector =
    Arc<dyn Fn(String) -> BoxFuture<'static, Result<BoxTransport, ClientError>> + Send + Sync>;

/// The real connector: TCP (Nagle off) and the WebSocket upgrade.
pub(crate) fn tcp_connector() -> Connector {
    Arc::new(|url: String| {
        Box::pin(async move {
            let (ws, _response) =
                tokio_tungstenite::connect_async_with_config(url.as_str(), None, true)
                    .await
                    .map_err(|e| ClientError::WebSocket(e.to_string()))?;
            Ok(Box::new(ws) as BoxTransport)
        })
    })
}

/// The URL to open: `base` with `enc` set to `enc` and `metadata` appended to its query.
pub(crate) fn hub_url(
    base: &str,
    enc: Encoding,
    metadata: &[(String, String)],
) -> Result<String, ClientError> {
    let lower = base.to_ascii_lowercase();
    if !(lower.starts_with("ws://") || lower.starts_with("wss://")) {
        return Err(ClientError::InvalidUrl(format!(
            "{base:?} is not a ws:// or wss:// URL"
        )));
    }
    let (base, fragment) = match base.split_once('#') {
        Some((b, _)) => (b, true),
        None => (base, false),
    };
    if fragment {
        tracing::debug!("ignoring the URL fragment");
    }
    let (path, query) = base.split_once('?').unwrap_or((base, ""));
    let mut params: Vec<String> = query
        .split('&')
        .filter(|p| !p.is_empty() && *p != "enc" && !p.starts_with("enc="))
        .map(str::to_owned)
        .collect();
    params.push(format!("enc={}", enc.as_str()));
    for (k, v) in metadata {
        params.push(format!("{}={}", percent_encode(k), percent_encode(v)));
    }
    Ok(format!("{path}?{}", params.join("&")))
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A client frame as a WebSocket message: text for JSON, binary for MessagePack.
pub(crate) fn encode(enc: Encoding, frame: &ClientFrame) -> WsMessage {
    let bytes = encode_client(enc, frame);
    match enc {
        // serde_json always writes UTF-8; fall back to a binary frame rather than panic.
        Encoding::Json => match tungstenite::Utf8Bytes::try_from(bytes.clone()) {
            Ok(text) => WsMessage::Text(text),
            Err(_) => WsMessage::Binary(bytes),
        },
        Encoding::MsgPack => WsMessage::Binary(bytes),
    }
}

/// The length of a data message's payload.
pub(crate) fn wire_len(msg: &WsMessage) -> usize {
    match msg {
        WsMessage::Text(t) => t.len(),
        WsMessage::Binary(b) => b.len(),
        _ => 0,
    }
}

/// Decodes a data message (text: JSON, binary: MessagePack); `None` for control messages.
pub(crate) fn decode(msg: &WsMessage) -> Option<Result<(u64, ServerFrame), DecodeError>> {
    match msg {
        WsMessage::Text(t) => Some(decode_server(Encoding::Json, t.as_bytes())),
        WsMessage::Binary(b) => Some(decode_server(Encoding::MsgPack, b)),
        _ => None,
    }
}

/// Describes a close frame for people.
pub(crate) fn close_reason(frame: Option<&tungstenite::protocol::CloseFrame>) -> String {
    match frame {
        Some(f) if !f.reason.is_empty() => {
            format!(
                "the hub closed the connection ({}: {})",
                u16::from(f.code),
                f.reason
            )
        }
        Some(f) => format!("the hub closed the connection ({})", u16::from(f.code)),
        None => "the hub closed the connection".to_owned(),
    }
}

/// Opens a connection and completes the handshake within `timeout`.
pub(crate) async fn open(
    connector: Connector,
    url: String,
    enc: Encoding,
    hello: Hello,
    timeout: Duration,
) -> Result<(BoxTransport, Welcome), ClientError> {
    let attempt = async move {
        let mut ws = connector(url).await?;
        let welcome = handshake(&mut ws, enc, hello).await?;
        Ok((ws, welcome))
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| ClientError::ConnectTimeout(timeout))?
}

/// Sends `hello` and waits for `welcome`, or the `error` that refuses the connection.
async fn handshake(
    ws: &mut BoxTransport,
    enc: Encoding,
    hello: Hello,
) -> Result<Welcome, ClientError> {
    ws.send(encode(enc, &ClientFrame::Hello(hello)))
        .await
        .map_err(|e| ClientError::WebSocket(e.to_string()))?;
    loop {
        let msg = match ws.next().await {
            Some(Ok(msg)) => msg,
            Some(Err(e)) => return Err(ClientError::WebSocket(e.to_string())),
            None => return Err(ClientError::Protocol(close_reason(None))),
        };
        if let WsMessage::Close(frame) = &msg {
            return Err(ClientError::Protocol(format!(
                "{} during the handshake",
                close_reason(frame.as_ref())
            )));
        }
        match decode(&msg) {
            None => continue,
            Some(Ok((_, ServerFrame::Welcome(w)))) => return Ok(w),
            Some(Ok((_, ServerFrame::Error(e)))) => {
                return Err(ClientError::Hub {
                    code: e.code,
                    message: e.message,
                })
            }
            Some(Ok((_, other))) => {
                tracing::debug!(frame = other.type_name(), "frame before welcome, ignored");
            }
            Some(Err(e)) => {
                return Err(ClientError::Protocol(format!(
                    "undecodable frame during the handshake: {e}"
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_get_their_encoding_and_metadata() {
        let m = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        assert_eq!(
            hub_url("ws://h:1/ws", Encoding::Json, &[]).ok().as_deref(),
            Some("ws://h:1/ws?enc=json")
        );
        assert_eq!(
            hub_url(
                "ws://h:1/ws?enc=json&team=red#frag",
                Encoding::MsgPack,
                &[m("name", "A b&c")]
            )
            .ok()
            .as_deref(),
            Some("ws://h:1/ws?team=red&enc=msgpack&name=A%20b%26c")
        );
        assert!(matches!(
            hub_url("http://h/ws", Encoding::Json, &[]),
            Err(ClientError::InvalidUrl(_))
        ));
    }

    #[test]
    fn frames_use_text_for_json_and_binary_for_msgpack() {
        let f = ClientFrame::Ping { req: Some(1) };
        assert!(matches!(encode(Encoding::Json, &f), WsMessage::Text(_)));
        assert!(matches!(
            encode(Encoding::MsgPack, &f),
            WsMessage::Binary(_)
        ));
    }
}
