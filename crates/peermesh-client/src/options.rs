//! [`ClientOptions`]: where to connect, as whom, and every limit of the client.

use std::time::Duration;

use peermesh_proto::{Encoding, PROTOCOL_VERSION};

use crate::backoff::ReconnectPolicy;

/// Configuration of a [`Client`](crate::Client).
///
/// ```
/// use peermesh_client::{ClientOptions, Encoding};
///
/// let opts = ClientOptions {
///     id: Some("alice".into()),
///     rooms: vec!["lobby".into()],
///     encoding: Encoding::MsgPack,
///     ..ClientOptions::new("ws://127.0.0.1:7070/ws")
/// };
/// assert_eq!(opts.ack_timeout.as_secs(), 5);
/// ```
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The hub's WebSocket URL, e.g. `ws://127.0.0.1:7070/ws`. Its query may carry metadata
    /// parameters; the client sets `enc` itself from [`encoding`](Self::encoding).
    /// Defaults to `ws://127.0.0.1:7070/ws`.
    pub url: String,
    /// Further hubs, e.g. the other hubs of a cluster, in order of preference after
    /// [`url`](Self::url). Defaults to none.
    ///
    /// [`Client::connect`](crate::Client::connect) tries `url` and then each of these in turn
    /// until one completes the handshake. After a drop, each reconnect attempt of the
    /// [`reconnect`](Self::reconnect) ladder is a round over every URL, starting with the hub
    /// that was lost (a short cut resumes there) and then the others in order; the backoff delay comes before
    /// each round, none between the URLs of a round. Each new connection presents the
    /// session's secret and last `seq` as usual: a hub that does not know the session answers
    /// with a fresh one ([`ClientEvent::Resynced`](crate::ClientEvent::Resynced)).
    ///
    /// Every URL is checked like `url` (an [`InvalidUrl`](crate::ClientError::InvalidUrl)
    /// error before anything is opened) and gets the same `enc` and
    /// [`metadata`](Self::metadata) parameters.
    pub fallback_urls: Vec<String>,
    /// The client id to ask for. Defaults to `None`: the hub generates one, and the client keeps
    /// it across reconnects.
    pub id: Option<String>,
    /// The protocol version sent in `hello`. Defaults to [`PROTOCOL_VERSION`].
    pub version: String,
    /// Rooms to join in the handshake. Defaults to none.
    pub rooms: Vec<String>,
    /// A JWT for hubs that require authentication. Defaults to `None`.
    pub token: Option<String>,
    /// Extra query parameters, handed to the hub as connection metadata. Defaults to none.
    pub metadata: Vec<(String, String)>,
    /// Wire encoding: JSON text frames or MessagePack binary frames. Defaults to
    /// [`Encoding::Json`].
    pub encoding: Encoding,
    /// How long [`Client::emit_with_ack`](crate::Client::emit_with_ack) waits for the answer
    /// when no timeout is given. Defaults to 5 s.
    pub ack_timeout: Duration,
    /// How long any other request (emit, join, leave, emit_room, members) waits for the hub's
    /// `ok`, `members` or `error`. Defaults to 10 s.
    pub request_timeout: Duration,
    /// Time allowed for one connection attempt: TCP, WebSocket upgrade, `hello` → `welcome`.
    /// Defaults to 10 s.
    pub connect_timeout: Duration,
    /// The connection is considered dead when nothing (frame, ping or pong) arrived for this
    /// long; never less than twice the hub's heartbeat. Defaults to 20 s.
    pub idle_timeout: Duration,
    /// Interval of the client's own WebSocket pings. Defaults to `None`: the `heartbeat_ms`
    /// announced in `welcome`.
    pub ping_interval: Option<Duration>,
    /// Automatic reconnection after a live connection drops. Defaults to
    /// `Some(ReconnectPolicy::default())` (200 ms doubling to 5 s, 8 attempts, 60 s budget);
    /// `None` turns it off. With [`fallback_urls`](Self::fallback_urls), one attempt is one
    /// round over every URL. The first connection is never retried: [`Client::connect`]
    /// tries each URL once and reports the failure.
    ///
    /// [`Client::connect`]: crate::Client::connect
    pub reconnect: Option<ReconnectPolicy>,
    /// Capacity of the actor's command inbox; callers wait when it is full. Defaults to 128.
    pub command_capacity: usize,
    /// Most requests waiting for the hub's answer at once; beyond it the actor stops taking
    /// commands until answers arrive (callers wait, as when the inbox is full). Defaults to
    /// 1,024.
    pub max_pending_requests: usize,
    /// Capacity of each message listener's queue; see [the drop policy](crate::listeners).
    /// Defaults to 256.
    pub listener_capacity: usize,
    /// Capacity of each lifecycle event stream's queue. Defaults to 64.
    pub event_capacity: usize,
    /// The receive window of every stream, in bytes: the most stream data the peer may send
    /// before this client's application reads it (capped by the hub's `max_stream_window`
    /// from `welcome`). Defaults to 1 MiB.
    pub stream_window: u64,
    /// Bytes a stream's writes may buffer before the peer's credit lets them out; a write
    /// waits beyond it. Defaults to 128 KiB.
    pub stream_send_buffer: usize,
    /// Stream requests from other clients waiting in [`IncomingStreams`]; beyond it they are
    /// rejected. Defaults to 16.
    ///
    /// [`IncomingStreams`]: crate::IncomingStreams
    pub incoming_stream_capacity: usize,
    /// Calls waiting in [`Invocations`] for this client's service; beyond it they are answered
    /// with a `service_error` at once. Defaults to 256.
    ///
    /// [`Invocations`]: crate::Invocations
    pub invocation_capacity: usize,
    /// Publications each [`TopicFeed`] holds; beyond it they are dropped for that feed.
    /// Defaults to 256.
    ///
    /// [`TopicFeed`]: crate::TopicFeed
    pub topic_capacity: usize,
    /// Timeout of [`Client::call`](crate::Client::call) when none is given. Defaults to 5 s.
    pub call_timeout: Duration,
    /// Resume after a drop (when the hub allows it): the hub keeps this client's session for
    /// its resume window and replays what it missed; the client sends again what the hub had
    /// not confirmed. Pending requests, rooms, subscriptions and acknowledgements survive;
    /// streams do not. Defaults to `true`.
    pub resume: bool,
    /// Updates each [`Session`](crate::Session) holds that the application has not taken;
    /// beyond it the session ends as lagging. Defaults to 4,096.
    pub session_capacity: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            url: "ws://127.0.0.1:7070/ws".into(),
            fallback_urls: Vec::new(),
            id: None,
            version: PROTOCOL_VERSION.into(),
            rooms: Vec::new(),
            token: None,
            metadata: Vec::new(),
            encoding: Encoding::Json,
            ack_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(20),
            ping_interval: None,
            reconnect: Some(ReconnectPolicy::default()),
            command_capacity: 128,
            max_pending_requests: 1024,
            listener_capacity: 256,
            event_capacity: 64,
            stream_window: peermesh_proto::stream::DEFAULT_WINDOW,
            stream_send_buffer: 128 << 10,
            incoming_stream_capacity: 16,
            invocation_capacity: 256,
            topic_capacity: 256,
            call_timeout: Duration::from_secs(5),
            resume: true,
            session_capacity: 4096,
        }
    }
}

impl ClientOptions {
    /// Default options for the hub at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }

    /// The same options with `id` set.
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// The same options with `urls` tried after [`url`](Self::url) (they replace any
    /// [`fallback_urls`](Self::fallback_urls) set before).
    ///
    /// ```
    /// use peermesh_client::ClientOptions;
    ///
    /// let opts = ClientOptions::new("ws://hub-a:7070/ws")
    ///     .with_fallback_urls(["ws://hub-b:7070/ws", "ws://hub-c:7070/ws"]);
    /// assert_eq!(
    ///     opts.hub_urls().collect::<Vec<_>>(),
    ///     ["ws://hub-a:7070/ws", "ws://hub-b:7070/ws", "ws://hub-c:7070/ws"]
    /// );
    /// ```
    pub fn with_fallback_urls<I, S>(mut self, urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.fallback_urls = urls.into_iter().map(Into::into).collect();
        self
    }

    /// Every hub URL in the order they are tried: [`url`](Self::url), then
    /// [`fallback_urls`](Self::fallback_urls).
    pub fn hub_urls(&self) -> impl Iterator<Item = &str> + '_ {
        std::iter::once(self.url.as_str()).chain(self.fallback_urls.iter().map(String::as_str))
    }
}
