//! Requests from handles to the actor, and the futures that wait for their answers.
//!
//! Every operation of [`Client`](crate::Client) returns a [`Request`]. Awaiting it sends the
//! command to the actor and waits for the hub's answer. [`Request::send`] splits the two steps:
//! it returns once the command is queued, so commands queued one after the other reach the hub
//! in that order, and their answers ([`Pending`]) can be awaited concurrently.

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use peermesh_proto::{ClientId, EventName, MethodName, Payload, RoomName, ServiceName, TopicName};
use tokio::sync::{mpsc, oneshot};

use crate::error::ClientError;

/// A command for the actor.
pub(crate) enum Command {
    /// Send a frame; answer through `reply`.
    Request {
        op: Op,
        reply: oneshot::Sender<Result<Answer, ClientError>>,
    },
    /// Report how many requests wait for an answer.
    PendingCount(oneshot::Sender<usize>),
    /// Report how many streams are live on the connection.
    StreamCount(oneshot::Sender<usize>),
}

/// An operation on the hub.
#[derive(Debug)]
pub(crate) enum Op {
    Emit {
        to: ClientId,
        event: EventName,
        payload: Payload,
        /// `Some(timeout)` for an acknowledged emit.
        ack: Option<Duration>,
        /// Whether the hub answers (`req` set); a datagram-like emit asks for nothing.
        answer: bool,
    },
    EmitRoom {
        room: RoomName,
        event: EventName,
        payload: Payload,
        include_self: bool,
    },
    Join(RoomName),
    Leave(RoomName),
    Members(RoomName),
    OpenStream {
        to: ClientId,
        meta: Option<serde_json::Value>,
        window: u64,
    },
    Reply {
        ack_id: u64,
        payload: Payload,
        /// The connection the message arrived on, when known: a reply to a message from an
        /// earlier connection is refused locally, its acknowledgement is gone.
        generation: Option<u64>,
    },
    Provide {
        service: ServiceName,
        methods: Vec<MethodName>,
    },
    Unprovide,
    Call {
        service: ServiceName,
        method: MethodName,
        payload: Payload,
        timeout: Duration,
    },
    /// A provider's answer; like `Reply`, written without waiting for the hub.
    Respond {
        call: u64,
        outcome: Result<Payload, String>,
        generation: Option<u64>,
    },
    CreateTopic(TopicName),
    DestroyTopic(TopicName),
    Publish {
        topic: TopicName,
        payload: Payload,
    },
    Subscribe {
        service: ServiceName,
        topic: TopicName,
    },
    Unsubscribe {
        service: ServiceName,
        topic: TopicName,
    },
    SessionJoin {
        session: Option<peermesh_proto::SessionName>,
        mode: Option<peermesh_proto::SessionMode>,
    },
    SessionLeave(peermesh_proto::SessionName),
    SessionChange {
        session: peermesh_proto::SessionName,
        op: peermesh_proto::SessionOp,
    },
}

/// A successful answer.
#[derive(Debug)]
pub(crate) enum Answer {
    /// `ok` (or the reply frame was written).
    Done,
    /// `ack` with the target's answer.
    Ack(Payload),
    /// `members`.
    Members(Vec<ClientId>),
    /// `stream_accepted`: the open stream.
    Stream(crate::stream::Stream),
    /// `result`: the provider's answer to a call.
    Result(Payload),
    /// `ok` to a `subscribe`: the feed of the topic.
    Feed(crate::services::TopicFeed),
    /// The last `session_state` chunk of a join: the session.
    Session(Box<crate::session::Session>),
}

pub(crate) type MapAnswer<T> = fn(Answer) -> Result<T, ClientError>;

pub(crate) fn unit(_: Answer) -> Result<(), ClientError> {
    Ok(())
}

pub(crate) fn ack_payload(a: Answer) -> Result<Payload, ClientError> {
    match a {
        Answer::Ack(p) => Ok(p),
        other => Err(ClientError::Protocol(format!(
            "expected `ack` for an acknowledged emit, got {other:?}"
        ))),
    }
}

pub(crate) fn call_result(a: Answer) -> Result<Payload, ClientError> {
    match a {
        Answer::Result(p) => Ok(p),
        other => Err(ClientError::Protocol(format!(
            "expected `result` for a call, got {other:?}"
        ))),
    }
}

pub(crate) fn feed(a: Answer) -> Result<crate::services::TopicFeed, ClientError> {
    match a {
        Answer::Feed(f) => Ok(f),
        other => Err(ClientError::Protocol(format!(
            "expected `ok` for a subscribe, got {other:?}"
        ))),
    }
}

pub(crate) fn session(a: Answer) -> Result<crate::session::Session, ClientError> {
    match a {
        Answer::Session(s) => Ok(*s),
        other => Err(ClientError::Protocol(format!(
            "expected `session_state` for a join, got {other:?}"
        ))),
    }
}

pub(crate) fn stream(a: Answer) -> Result<crate::stream::Stream, ClientError> {
    match a {
        Answer::Stream(s) => Ok(s),
        other => Err(ClientError::Protocol(format!(
            "expected `stream_accepted`, got {other:?}"
        ))),
    }
}

pub(crate) fn member_list(a: Answer) -> Result<Vec<ClientId>, ClientError> {
    match a {
        Answer::Members(m) => Ok(m),
        other => Err(ClientError::Protocol(format!(
            "expected `members`, got {other:?}"
        ))),
    }
}

/// An operation ready to be sent: `.await` it for the answer, or [`send`](Self::send) it to
/// queue it now and wait later.
#[must_use = "a request does nothing until it is awaited or sent"]
pub struct Request<T> {
    tx: Option<mpsc::Sender<Command>>,
    op: Result<Op, ClientError>,
    map: MapAnswer<T>,
}

impl<T> Request<T> {
    pub(crate) fn new(
        tx: Option<mpsc::Sender<Command>>,
        op: Result<Op, ClientError>,
        map: MapAnswer<T>,
    ) -> Self {
        Self { tx, op, map }
    }

    /// Queues the command for the actor (waiting while its inbox is full) and returns the
    /// future of its answer. Commands are written to the hub in the order they were queued.
    pub async fn send(self) -> Result<Pending<T>, ClientError> {
        let op = self.op?;
        let tx = self.tx.ok_or(ClientError::Closed)?;
        let (reply, rx) = oneshot::channel();
        tx.send(Command::Request { op, reply })
            .await
            .map_err(|_| ClientError::Closed)?;
        Ok(Pending { rx, map: self.map })
    }
}

impl<T: Send + 'static> IntoFuture for Request<T> {
    type Output = Result<T, ClientError>;
    type IntoFuture = BoxFuture<'static, Result<T, ClientError>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move { self.send().await?.await })
    }
}

impl<T> std::fmt::Debug for Request<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request").field("op", &self.op).finish()
    }
}

/// The answer to a queued [`Request`]. Dropping it does not cancel the operation.
#[must_use = "the answer is lost unless awaited"]
pub struct Pending<T> {
    rx: oneshot::Receiver<Result<Answer, ClientError>>,
    map: MapAnswer<T>,
}

impl<T> Future for Pending<T> {
    type Output = Result<T, ClientError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let answer = ready!(Pin::new(&mut self.rx).poll(cx));
        Poll::Ready(match answer {
            Ok(Ok(a)) => (self.map)(a),
            Ok(Err(e)) => Err(e),
            // The actor dropped the reply sender: it stopped without answering.
            Err(_) => Err(ClientError::Closed),
        })
    }
}

impl<T> std::fmt::Debug for Pending<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").finish_non_exhaustive()
    }
}
