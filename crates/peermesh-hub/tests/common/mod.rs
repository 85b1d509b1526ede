//! Test fixtures: a hub on a loopback port and a raw WebSocket client speaking the protocol.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use peermesh_hub::{Hub, HubConfig, HubHandle};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const WAIT: Duration = Duration::from_secs(5);

pub struct TestHub {
    pub addr: SocketAddr,
    pub handle: HubHandle,
    pub task: tokio::task::JoinHandle<Result<(), peermesh_hub::HubError>>,
}

impl TestHub {
    pub async fn start(config: HubConfig) -> Self {
        let config = HubConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..config
        };
        let hub = Hub::bind(config).await.unwrap();
        let addr = hub.local_addr();
        let handle = hub.handle();
        let task = tokio::spawn(hub.run());
        Self { addr, handle, task }
    }

    pub async fn default() -> Self {
        Self::start(HubConfig::default()).await
    }

    pub fn url(&self, query: &str) -> String {
        format!("ws://{}/ws{}", self.addr, query)
    }

    /// Connects and says hello as `id`, returning the client and its welcome.
    pub async fn join(&self, id: &str) -> (Raw, Value) {
        let mut c = Raw::connect(&self.url("")).await;
        let w = c.hello(json!({"id": id})).await;
        assert_eq!(w["type"], "welcome", "{w}");
        (c, w)
    }

    pub async fn join_msgpack(&self, id: &str) -> (Raw, Value) {
        let mut c = Raw::connect(&self.url("?enc=msgpack")).await;
        c.msgpack = true;
        let w = c.hello(json!({"id": id})).await;
        assert_eq!(w["type"], "welcome", "{w}");
        (c, w)
    }

    /// A plain HTTP GET on the hub, returning the body.
    pub async fn get(&self, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = TcpStream::connect(self.addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default()
    }
}

pub struct Raw {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub msgpack: bool,
    pub last_seq: u64,
}

impl Raw {
    pub async fn connect(url: &str) -> Self {
        let (ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true)
            .await
            .unwrap();
        Self {
            ws,
            msgpack: false,
            last_seq: 0,
        }
    }

    pub async fn connect_with(
        req: tokio_tungstenite::tungstenite::handshake::client::Request,
    ) -> Self {
        let (ws, _) = tokio_tungstenite::connect_async_with_config(req, None, true)
            .await
            .unwrap();
        Self {
            ws,
            msgpack: false,
            last_seq: 0,
        }
    }

    pub async fn send(&mut self, v: Value) {
        let msg = if self.msgpack {
            Message::Binary(rmp_serde::to_vec_named(&v).unwrap().into())
        } else {
            Message::Text(v.to_string().into())
        };
        self.ws.send(msg).await.unwrap();
    }

    pub async fn send_raw(&mut self, msg: Message) {
        self.ws.send(msg).await.unwrap();
    }

    pub async fn hello(&mut self, extra: Value) -> Value {
        let mut h = json!({"type": "hello", "version": "1.0.0"});
        for (k, v) in extra.as_object().unwrap() {
            h[k] = v.clone();
        }
        self.send(h).await;
        self.recv().await
    }

    /// Next frame as JSON (MessagePack frames are converted); checks `seq` increases by one.
    pub async fn recv(&mut self) -> Value {
        self.try_recv(WAIT)
            .await
            .expect("a frame within the wait time")
    }

    /// Next frame, or `None` on timeout or close.
    pub async fn try_recv(&mut self, wait: Duration) -> Option<Value> {
        loop {
            let msg = tokio::time::timeout(wait, self.ws.next())
                .await
                .ok()??
                .ok()?;
            let v: Value = match msg {
                Message::Text(t) => serde_json::from_str(&t).unwrap(),
                Message::Binary(b) if b.first() == Some(&0x01) => data_to_json(&b),
                Message::Binary(b) => {
                    let v: rmpv::Value = rmp_serde::from_slice(&b).unwrap();
                    msgpack_to_json(v)
                }
                Message::Close(_) => return None,
                _ => continue,
            };
            let seq = v["seq"].as_u64().expect("every hub frame has a seq");
            if seq == 0 && v["type"] == "welcome" && v["resumed"] == true {
                // A resumed welcome stands outside the sequence.
                return Some(v);
            }
            assert_eq!(seq, self.last_seq + 1, "seq must grow by one: {v}");
            self.last_seq = seq;
            return Some(v);
        }
    }

    /// Next frame of the given type, skipping others (presence noise).
    pub async fn recv_type(&mut self, ty: &str) -> Value {
        loop {
            let v = self.recv().await;
            if v["type"] == ty {
                return v;
            }
        }
    }

    /// Reads until the close frame; returns it (code, reason) and the frames before it.
    pub async fn recv_close(&mut self) -> (Option<(u16, String)>, Vec<Value>) {
        let mut frames = Vec::new();
        loop {
            match tokio::time::timeout(WAIT, self.ws.next()).await {
                Ok(Some(Ok(Message::Close(f)))) => {
                    return (f.map(|f| (u16::from(f.code), f.reason.to_string())), frames)
                }
                Ok(Some(Ok(Message::Text(t)))) => frames.push(serde_json::from_str(&t).unwrap()),
                Ok(Some(Ok(Message::Binary(b)))) => {
                    frames.push(msgpack_to_json(rmp_serde::from_slice(&b).unwrap()))
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(_))) | Ok(None) => return (None, frames),
                Err(_) => panic!("no close within {WAIT:?}; got {frames:?}"),
            }
        }
    }

    /// Asserts nothing but pings arrives for a while.
    pub async fn expect_silence(&mut self, wait: Duration) {
        if let Some(v) = self.try_recv(wait).await {
            panic!("expected silence, got {v}");
        }
    }
}

pub fn msgpack_to_json(v: rmpv::Value) -> Value {
    use rmpv::Value as M;
    match v {
        M::Nil => Value::Null,
        M::Boolean(b) => json!(b),
        M::Integer(i) => i
            .as_u64()
            .map(|u| json!(u))
            .or_else(|| i.as_i64().map(|n| json!(n)))
            .unwrap(),
        M::F32(f) => json!(f),
        M::F64(f) => json!(f),
        M::String(s) => json!(s.into_str().unwrap()),
        M::Binary(b) => json!({"$bin": b}),
        M::Array(a) => Value::Array(a.into_iter().map(msgpack_to_json).collect()),
        M::Map(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| (k.as_str().unwrap().to_string(), msgpack_to_json(v)))
                .collect(),
        ),
        M::Ext(..) => panic!("ext"),
    }
}

/// A binary data frame as JSON: `{"seq":…,"type":"$data","stream":…,"data":"<utf-8 lossy>","len":…}`.
pub fn data_to_json(b: &[u8]) -> Value {
    assert!(b.len() > 17, "a data frame has a 17-byte header and data");
    let seq = u64::from_be_bytes(b[1..9].try_into().unwrap());
    let stream = u64::from_be_bytes(b[9..17].try_into().unwrap());
    json!({"seq": seq, "type": "$data", "stream": stream,
           "data": String::from_utf8_lossy(&b[17..]), "len": b.len() - 17})
}

/// A client data frame: tag, seq 0, stream id, bytes.
pub fn data_frame(stream: u64, data: &[u8]) -> Message {
    let mut v = vec![0x01];
    v.extend_from_slice(&0u64.to_be_bytes());
    v.extend_from_slice(&stream.to_be_bytes());
    v.extend_from_slice(data);
    Message::Binary(v.into())
}

/// `a` opens a stream to `to` (its client `b`) with `req`, its own window `wa`, and metadata;
/// `b` accepts with window `wb`. Returns (a's id, b's id) of the stream.
pub async fn open_stream(
    a: &mut Raw,
    b: &mut Raw,
    to: &str,
    req: u64,
    wa: u64,
    wb: u64,
) -> (u64, u64) {
    let meta = json!({"file": "x.bin", "n": [1, 2.5]});
    a.send(json!({"type":"stream_open","req":req,"to":to,"meta":meta,"window":wa}))
        .await;
    let r = b.recv_type("stream_request").await;
    assert_eq!((&r["meta"], &r["window"]), (&meta, &json!(wa)), "{r}");
    let sb = r["stream"].as_u64().unwrap();
    b.send(json!({"type":"stream_accept","stream":sb,"window":wb}))
        .await;
    let acc = a.recv_type("stream_accepted").await;
    assert_eq!(
        (&acc["req"], &acc["window"]),
        (&json!(req), &json!(wb)),
        "{acc}"
    );
    (acc["stream"].as_u64().unwrap(), sb)
}

/// `a` (client `from`) opens a stream to `to` (its client `b`) with `req`, `b` rejects it
/// with a reason: `a` gets `stream_rejected` with that reason.
pub async fn rejected_open(a: &mut Raw, b: &mut Raw, from: &str, to: &str, req: u64) {
    a.send(json!({"type":"stream_open","req":req,"to":to}))
        .await;
    let r = b.recv_type("stream_request").await;
    assert_eq!(r["from"], from);
    b.send(json!({"type":"stream_reject","stream":r["stream"],"reason":"not you"}))
        .await;
    let e = a.recv_type("error").await;
    assert_eq!(
        (&e["code"], &e["req"], &e["message"]),
        (&json!("stream_rejected"), &json!(req), &json!("not you"))
    );
}
