//! [`Client`]: the cheap, cloneable handle of a connection to the hub.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::session::Session;
use peermesh_proto::{
    ClientId, EventName, Hello, MethodName, Payload, RoomName, ServiceName, SessionMode,
    SessionName, SessionOp, TopicName,
};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument as _;

use crate::actor::{ActorParts, ClientActor, Shared};
use crate::connection::{self, Connector};
use crate::error::ClientError;
use crate::listeners::{EventStream, Filter, ListenerId, Once, Subscription};
use crate::options::ClientOptions;
use crate::request::{self, Command, Op, Request};
use crate::services::{self, Invocations, TopicFeed};
use crate::stream::{IncomingStreams, Stream};

/// A connection to a peermesh hub.
///
/// Cloning is cheap: every clone talks to the same actor task, which owns the socket. The
/// actor stops when [`close`](Self::close) is called, when every handle is dropped, or when it
/// gives up reconnecting.
///
/// Operations return a [`Request`]: `.await` it to get the hub's answer, or
/// [`Request::send`] it to queue it now and await the answer later (commands reach the hub in
/// the order they were queued).
#[derive(Clone)]
pub struct Client {
    tx: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    id: ClientId,
    ack_timeout: Duration,
    stream_window: u64,
    incoming_capacity: usize,
    invocation_capacity: usize,
    call_timeout: Duration,
}

impl Client {
    /// Connects to the hub and completes the handshake.
    ///
    /// The first connection is not retried: a refused handshake returns the hub's error
    /// (`id_taken`, `unauthorized`, …), an unreachable hub a [`ClientError::WebSocket`] error.
    /// With [`ClientOptions::fallback_urls`], each URL is tried once in order until one
    /// completes the handshake; the error is the last URL's, unless a hub refuses the client
    /// for good (`unauthorized`, `version_unsupported`, `invalid_id`), which ends the round
    /// there. Every URL is checked first: one that is not `ws://` or `wss://` fails with
    /// [`ClientError::InvalidUrl`] before anything is opened.
    /// Reconnection, if enabled, applies to connections that dropped after this succeeded.
    pub async fn connect(opts: ClientOptions) -> Result<Client, ClientError> {
        Self::connect_with(opts, connection::tcp_connector()).await
    }

    pub(crate) async fn connect_with(
        opts: ClientOptions,
        connector: Connector,
    ) -> Result<Client, ClientError> {
        let id = opts.id.as_deref().map(ClientId::new).transpose()?;
        let rooms = opts
            .rooms
            .iter()
            .map(|r| RoomName::new(r))
            .collect::<Result<Vec<_>, _>>()?;
        let urls = opts
            .hub_urls()
            .map(|u| connection::hub_url(u, opts.encoding, &opts.metadata))
            .collect::<Result<Vec<_>, _>>()?;
        let hello = Hello {
            id,
            version: opts.version.clone(),
            rooms,
            token: opts.token.clone(),
            secret: None,
            resume: opts.resume,
            last_seq: None,
            sessions: Vec::new(),
        };
        let mut opened = None;
        for (index, url) in urls.iter().enumerate() {
            let attempt = connection::open(
                connector.clone(),
                url.clone(),
                opts.encoding,
                hello.clone(),
                opts.connect_timeout,
            )
            .await;
            match attempt {
                Ok(conn) => {
                    opened = Some((index, conn));
                    break;
                }
                Err(e) if !e.is_retryable() || index + 1 == urls.len() => return Err(e),
                Err(e) => {
                    let given = opts.hub_urls().nth(index).unwrap_or_default();
                    tracing::info!(url = given, error = %e, "cannot connect; trying the next hub");
                }
            }
        }
        let Some((index, (ws, welcome))) = opened else {
            // Unreachable: the loop returns the last URL's error.
            return Err(ClientError::InvalidUrl("no hub URL to connect to".into()));
        };
        let id = welcome.id.clone();
        let ack_timeout = opts.ack_timeout;
        let stream_window = opts.stream_window;
        let incoming_capacity = opts.incoming_stream_capacity;
        let invocation_capacity = opts.invocation_capacity;
        let call_timeout = opts.call_timeout;
        let (tx, inbox) = mpsc::channel(opts.command_capacity.max(1));
        let shared = Arc::new(Shared::new(&opts));
        shared.current.store(index, Ordering::Relaxed);
        let parts = ActorParts {
            opts,
            urls,
            connector,
            inbox,
            weak_tx: tx.downgrade(),
            shared: shared.clone(),
        };
        let actor = ClientActor::new(parts, welcome);
        let span = tracing::info_span!("client", id = %id);
        tokio::spawn(actor.run(ws).instrument(span));
        Ok(Client {
            tx,
            shared,
            id,
            ack_timeout,
            stream_window,
            incoming_capacity,
            invocation_capacity,
            call_timeout,
        })
    }

    /// The client's id (as requested, or generated by the hub); it stays the same across
    /// reconnects.
    pub fn id(&self) -> &ClientId {
        &self.id
    }

    /// The URL of the hub this client is connected to, as given in the options
    /// ([`url`](ClientOptions::url) or one of the
    /// [`fallback_urls`](ClientOptions::fallback_urls)); while reconnecting, the hub it was
    /// last connected to. [`ClientEvent::Reconnected`](crate::ClientEvent::Reconnected) tells
    /// when it changes.
    pub fn current_url(&self) -> &str {
        self.shared.current_url()
    }

    fn request<T>(&self, op: Result<Op, ClientError>, map: request::MapAnswer<T>) -> Request<T> {
        Request::new(Some(self.tx.clone()), op, map)
    }

    /// Sends `event` to the client `to`. Resolves when the hub accepted it; fails with
    /// `unknown_target` when no such client is connected.
    pub fn emit(
        &self,
        to: impl AsRef<str>,
        event: impl AsRef<str>,
        payload: impl Into<Payload>,
    ) -> Request<()> {
        let op = (|| {
            Ok(Op::Emit {
                to: ClientId::new(to.as_ref())?,
                event: EventName::new(event.as_ref())?,
                payload: payload.into(),
                ack: None,
                answer: true,
            })
        })();
        self.request(op, request::unit)
    }

    /// Sends `event` to the client `to` without asking the hub for an answer, as a datagram:
    /// resolves once queued on the connection; a target that is not connected is not
    /// reported, and no request slot is held. For high-rate traffic whose loss the sender
    /// handles itself (game state, telemetry).
    pub fn emit_unanswered(
        &self,
        to: impl AsRef<str>,
        event: impl AsRef<str>,
        payload: impl Into<Payload>,
    ) -> Request<()> {
        let op = (|| {
            Ok(Op::Emit {
                to: ClientId::new(to.as_ref())?,
                event: EventName::new(event.as_ref())?,
                payload: payload.into(),
                ack: None,
                answer: false,
            })
        })();
        self.request(op, request::unit)
    }

    /// Sends `event` to `to` and waits for its answer (see [`Message::reply`]).
    ///
    /// `timeout` defaults to [`ClientOptions::ack_timeout`] (5 s). Fails with
    /// [`ClientError::AckTimeout`] (code `ack_timeout`) when no answer came in time, and with
    /// the hub's `unknown_target` or `peer_left` errors; in every case the request is no longer
    /// pending afterwards.
    ///
    /// [`Message::reply`]: crate::Message::reply
    pub fn emit_with_ack(
        &self,
        to: impl AsRef<str>,
        event: impl AsRef<str>,
        payload: impl Into<Payload>,
        timeout: impl Into<Option<Duration>>,
    ) -> Request<Payload> {
        let timeout = timeout.into().unwrap_or(self.ack_timeout);
        let op = (|| {
            Ok(Op::Emit {
                to: ClientId::new(to.as_ref())?,
                event: EventName::new(event.as_ref())?,
                payload: payload.into(),
                ack: Some(timeout),
                answer: true,
            })
        })();
        self.request(op, request::ack_payload)
    }

    /// Answers the message whose `ack_id` is given (for callers that keep ids rather than
    /// [`Message`](crate::Message)s, like the CLI). Prefer [`Message::reply`], which also
    /// refuses replies to messages from an earlier connection.
    ///
    /// [`Message::reply`]: crate::Message::reply
    pub fn reply(&self, ack_id: u64, payload: impl Into<Payload>) -> Request<()> {
        let op = Ok(Op::Reply {
            ack_id,
            payload: payload.into(),
            generation: None,
        });
        self.request(op, request::unit)
    }

    /// Joins `room`; the client rejoins it after a reconnect until it leaves.
    pub fn join(&self, room: impl AsRef<str>) -> Request<()> {
        let op = RoomName::new(room.as_ref())
            .map(Op::Join)
            .map_err(Into::into);
        self.request(op, request::unit)
    }

    /// Leaves `room`.
    pub fn leave(&self, room: impl AsRef<str>) -> Request<()> {
        let op = RoomName::new(room.as_ref())
            .map(Op::Leave)
            .map_err(Into::into);
        self.request(op, request::unit)
    }

    /// Sends `event` to every member of `room` (which this client must be in), itself included
    /// when `include_self` is true.
    pub fn emit_room(
        &self,
        room: impl AsRef<str>,
        event: impl AsRef<str>,
        payload: impl Into<Payload>,
        include_self: bool,
    ) -> Request<()> {
        let op = (|| {
            Ok(Op::EmitRoom {
                room: RoomName::new(room.as_ref())?,
                event: EventName::new(event.as_ref())?,
                payload: payload.into(),
                include_self,
            })
        })();
        self.request(op, request::unit)
    }

    /// The members of `room` (which this client must be in), sorted.
    pub fn members(&self, room: impl AsRef<str>) -> Request<Vec<ClientId>> {
        let op = RoomName::new(room.as_ref())
            .map(Op::Members)
            .map_err(Into::into);
        self.request(op, request::member_list)
    }

    /// Messages named `event`, from anyone.
    pub fn on(&self, event: impl AsRef<str>) -> Subscription {
        Subscription::new(&self.shared.registry, filter(Some(event.as_ref()), None))
    }

    /// Every message, from anyone.
    pub fn on_any(&self) -> Subscription {
        Subscription::new(&self.shared.registry, Filter::default())
    }

    /// The first message named `event`; see [`Once`].
    pub fn once(&self, event: impl AsRef<str>) -> Once {
        Once::new(&self.shared.registry, filter(Some(event.as_ref()), None))
    }

    /// Listeners restricted to messages from the client `id`.
    pub fn from(&self, id: impl AsRef<str>) -> FromPeer<'_> {
        FromPeer {
            client: self,
            from: id.as_ref().into(),
        }
    }

    /// Removes a listener or event stream; its receiver then ends after what is queued.
    /// Returns `false` when it was already gone.
    pub fn off(&self, id: ListenerId) -> bool {
        self.shared.registry.lock().remove(id.get())
    }

    /// Lifecycle and presence events; see [`ClientEvent`](crate::ClientEvent).
    pub fn events(&self) -> EventStream {
        EventStream::events(&self.shared.registry)
    }

    /// Opens a byte stream to the client `to`, with optional metadata for it. Resolves once
    /// the target accepted; fails with `stream_rejected` (the message is the target's
    /// reason), `unknown_target`, `stream_timeout`, `too_many_streams` or `peer_left`.
    pub fn open_stream(
        &self,
        to: impl AsRef<str>,
        meta: Option<serde_json::Value>,
    ) -> Request<Stream> {
        let window = self.stream_window;
        let op = ClientId::new(to.as_ref())
            .map(|to| Op::OpenStream {
                to,
                meta: meta.filter(|m| !m.is_null()),
                window,
            })
            .map_err(Into::into);
        self.request(op, request::stream)
    }

    /// The streams other clients open to this one. Only the latest receiver gets them (an
    /// earlier one ends); without a receiver, or when its queue is full, requests are
    /// rejected.
    pub fn incoming_streams(&self) -> IncomingStreams {
        let (tx, rx) = tokio::sync::mpsc::channel(self.incoming_capacity.max(1));
        *self.shared.incoming.lock() = Some(tx);
        IncomingStreams::new(rx)
    }

    /// Provides the service `service` with `methods` from this client (one service per
    /// connection: a second `provide` fails with `already_providing`). Calls arrive in
    /// [`invocations`](Self::invocations), which should be taken first. The service is
    /// provided again after a reconnect. Several clients may provide the same service: the hub
    /// shares the calls among them (the least busy first).
    pub fn provide<I, S>(&self, service: impl AsRef<str>, methods: I) -> Request<()>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let op = (|| {
            Ok(Op::Provide {
                service: ServiceName::new(service.as_ref())?,
                methods: methods
                    .into_iter()
                    .map(|m| MethodName::new(m.as_ref()))
                    .collect::<Result<Vec<_>, _>>()?,
            })
        })();
        self.request(op, request::unit)
    }

    /// Stops providing this client's service: no new call comes (calls already received may
    /// still be answered), and it is not provided again after a reconnect. When this was the
    /// service's last provider, the service and its topics end. Fails with `not_provider`
    /// when the client provides nothing.
    pub fn unprovide(&self) -> Request<()> {
        self.request(Ok(Op::Unprovide), request::unit)
    }

    /// The calls of this client's service. Only the latest receiver gets them (an earlier one
    /// ends); without a receiver, or when its queue is full, calls are answered with a
    /// `service_error` at once.
    pub fn invocations(&self) -> Invocations {
        let (tx, rx) = tokio::sync::mpsc::channel(self.invocation_capacity.max(1));
        *self.shared.invocations.lock() = Some(tx);
        Invocations::new(rx)
    }

    /// Calls `service.method(args)` and waits up to `timeout` (default
    /// [`ClientOptions::call_timeout`], 5 s) for the provider's answer. Fails with the hub's
    /// `unknown_service`, `unknown_method`, `service_error` (the provider's message),
    /// `call_timeout`, `provider_left`, `service_busy` or `too_many_calls`.
    pub fn call(
        &self,
        service: impl AsRef<str>,
        method: impl AsRef<str>,
        args: impl Into<Payload>,
        timeout: impl Into<Option<Duration>>,
    ) -> Request<Payload> {
        let timeout = timeout.into().unwrap_or(self.call_timeout);
        let op = (|| {
            Ok(Op::Call {
                service: ServiceName::new(service.as_ref())?,
                method: MethodName::new(method.as_ref())?,
                payload: args.into(),
                timeout,
            })
        })();
        self.request(op, request::call_result)
    }

    /// Answers the call `call` (for callers that keep ids rather than
    /// [`Invocation`](crate::Invocation)s, like the CLI): `Err` sends a `service_error` with
    /// the message.
    pub fn respond(&self, call: u64, outcome: Result<Payload, String>) -> Request<()> {
        let op = Ok(Op::Respond {
            call,
            outcome,
            generation: None,
        });
        self.request(op, request::unit)
    }

    /// Joins a session (a new one with a generated id when `session` is `None`; `mode` applies
    /// when the join creates it). Resolves with the [`Session`](crate::Session) once the hub's
    /// snapshot arrived whole. Fails with `too_many_sessions` or `too_many_members`.
    pub fn join_session(&self, session: Option<&str>, mode: SessionMode) -> Request<Session> {
        let op = session
            .map(SessionName::new)
            .transpose()
            .map(|session| Op::SessionJoin {
                session,
                mode: Some(mode),
            })
            .map_err(Into::into);
        self.request(op, request::session)
    }

    /// Applies an operation to a session's objects; resolves once the hub accepted it.
    pub fn session_op(&self, session: impl AsRef<str>, op: SessionOp) -> Request<()> {
        let op = SessionName::new(session.as_ref())
            .map(|session| Op::SessionChange { session, op })
            .map_err(Into::into);
        self.request(op, request::unit)
    }

    /// Leaves a session (its [`Session`](crate::Session) ends).
    pub fn leave_session(&self, session: impl AsRef<str>) -> Request<()> {
        let op = SessionName::new(session.as_ref())
            .map(Op::SessionLeave)
            .map_err(Into::into);
        self.request(op, request::unit)
    }

    /// Subscribes to `topic` of `service`; resolves with its feed. Fails with
    /// `unknown_service`, `unknown_topic` or `too_many_subscriptions`.
    pub fn subscribe(
        &self,
        service: impl AsRef<str>,
        topic: impl AsRef<str>,
    ) -> Request<TopicFeed> {
        let op = services::names(service.as_ref(), topic.as_ref())
            .map(|(service, topic)| Op::Subscribe { service, topic });
        self.request(op, request::feed)
    }

    /// Ends a subscription (its feed ends); `not_subscribed` if there was none.
    pub fn unsubscribe(&self, service: impl AsRef<str>, topic: impl AsRef<str>) -> Request<()> {
        let op = services::names(service.as_ref(), topic.as_ref())
            .map(|(service, topic)| Op::Unsubscribe { service, topic });
        self.request(op, request::unit)
    }

    /// Creates a topic of this client's service (`not_provider` without one).
    pub fn create_topic(&self, topic: impl AsRef<str>) -> Request<()> {
        let op = TopicName::new(topic.as_ref())
            .map(Op::CreateTopic)
            .map_err(Into::into);
        self.request(op, request::unit)
    }

    /// Publishes to a topic of this client's service.
    pub fn publish(&self, topic: impl AsRef<str>, payload: impl Into<Payload>) -> Request<()> {
        let op = TopicName::new(topic.as_ref())
            .map(|topic| Op::Publish {
                topic,
                payload: payload.into(),
            })
            .map_err(Into::into);
        self.request(op, request::unit)
    }

    /// Destroys a topic of this client's service; its subscribers are told.
    pub fn destroy_topic(&self, topic: impl AsRef<str>) -> Request<()> {
        let op = TopicName::new(topic.as_ref())
            .map(Op::DestroyTopic)
            .map_err(Into::into);
        self.request(op, request::unit)
    }

    /// How many streams are live on the current connection (diagnostics).
    pub async fn stream_count(&self) -> Result<usize, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::StreamCount(tx))
            .await
            .map_err(|_| ClientError::Closed)?;
        rx.await.map_err(|_| ClientError::Closed)
    }

    /// How many requests wait for an answer from the hub (diagnostics).
    pub async fn pending_requests(&self) -> Result<usize, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::PendingCount(tx))
            .await
            .map_err(|_| ClientError::Closed)?;
        rx.await.map_err(|_| ClientError::Closed)
    }

    /// Whether the actor has stopped (closed or lost).
    pub fn is_closed(&self) -> bool {
        self.shared.finished.is_cancelled()
    }

    /// Closes the connection and stops the actor: pending requests fail with
    /// [`ClientError::Closed`], listeners and event streams end. Resolves once the actor has
    /// stopped; closing twice is harmless.
    pub async fn close(&self) {
        self.shared.cancel.cancel();
        self.shared.finished.cancelled().await;
    }

    /// Resolves when the actor has stopped, whatever the reason.
    pub async fn closed(&self) {
        self.shared.finished.cancelled().await;
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("id", &self.id)
            .field("closed", &self.is_closed())
            .finish()
    }
}

fn filter(event: Option<&str>, from: Option<&str>) -> Filter {
    Filter {
        event: event.map(Into::into),
        from: from.map(Into::into),
    }
}

/// Listeners for the messages of one sender, from [`Client::from`].
#[derive(Debug)]
pub struct FromPeer<'a> {
    client: &'a Client,
    from: Box<str>,
}

impl FromPeer<'_> {
    /// Messages named `event` from this sender.
    pub fn on(&self, event: impl AsRef<str>) -> Subscription {
        Subscription::new(
            &self.client.shared.registry,
            filter(Some(event.as_ref()), Some(&self.from)),
        )
    }

    /// Every message from this sender.
    pub fn on_any(&self) -> Subscription {
        Subscription::new(&self.client.shared.registry, filter(None, Some(&self.from)))
    }

    /// The first message named `event` from this sender.
    pub fn once(&self, event: impl AsRef<str>) -> Once {
        Once::new(
            &self.client.shared.registry,
            filter(Some(event.as_ref()), Some(&self.from)),
        )
    }
}
