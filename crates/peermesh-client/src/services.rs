//! Services and topics on the client side: [`Invocation`]s a provider answers, and the
//! [`TopicFeed`] of a subscription.
//!
//! A provider registers with [`Client::provide`](crate::Client::provide) and takes the calls
//! from [`Client::invocations`](crate::Client::invocations) (register the receiver first, so no
//! call arrives before it). A caller uses [`Client::call`](crate::Client::call). Subscribers get
//! a [`TopicFeed`] from [`Client::subscribe`](crate::Client::subscribe).
//!
//! # Limits and drop policy
//!
//! Invocations wait in one queue of [`ClientOptions::invocation_capacity`] (default 256); when
//! it is full, or nobody takes invocations, the actor answers the call at once with an error
//! (`service_error`, "the provider is overloaded" / "has no handler"), so the caller never waits
//! for a call that was never seen. Each feed holds [`ClientOptions::topic_capacity`]
//! publications (default 256); when it is full, publications are dropped for that feed and
//! counted ([`TopicFeed::dropped`]). Dropping a feed unsubscribes (on the next publication).
//!
//! A provider's service is provided again after a reconnect. Subscriptions do not survive a
//! reconnect: their feeds end with [`FeedEnd::ConnectionLost`].
//!
//! [`ClientOptions::invocation_capacity`]: crate::ClientOptions::invocation_capacity
//! [`ClientOptions::topic_capacity`]: crate::ClientOptions::topic_capacity

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use peermesh_proto::{
    ClientId, MethodName, Payload, Publication, ServiceName, TopicEnd, TopicName,
};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use crate::error::ClientError;
use crate::listeners::Replier;
use crate::request::{self, Op, Request};

/// A call this client's service must answer.
#[derive(Debug)]
pub struct Invocation {
    /// The call's id (what [`Client::respond`](crate::Client::respond) takes).
    pub call: u64,
    /// The caller.
    pub from: ClientId,
    /// The service.
    pub service: ServiceName,
    /// The method.
    pub method: MethodName,
    /// The arguments.
    pub payload: Payload,
    pub(crate) replier: Replier,
}

impl Invocation {
    /// Answers the call: `Ok` gives the caller its result, `Err` a `service_error` with the
    /// message. Fails with [`ClientError::ConnectionLost`] when the connection the call came
    /// on has dropped (the hub forgot the call with it).
    pub fn respond(&self, outcome: Result<Payload, String>) -> Request<()> {
        let op = Ok(Op::Respond {
            call: self.call,
            outcome,
            generation: Some(self.replier.generation),
        });
        Request::new(self.replier.tx.upgrade(), op, request::unit)
    }
}

/// The calls this client provides answers to, from [`Client::invocations`](crate::Client::invocations).
/// Only the latest receiver gets them.
#[derive(Debug)]
pub struct Invocations {
    rx: mpsc::Receiver<Invocation>,
}

impl Invocations {
    pub(crate) fn new(rx: mpsc::Receiver<Invocation>) -> Self {
        Self { rx }
    }

    /// The next call; `None` once the client stopped or a newer receiver took over.
    pub async fn recv(&mut self) -> Option<Invocation> {
        self.rx.recv().await
    }
}

/// Why a [`TopicFeed`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FeedEnd {
    /// The hub ended the topic: destroyed, or its service went away.
    Topic(TopicEnd),
    /// [`Client::unsubscribe`](crate::Client::unsubscribe) was called.
    Unsubscribed,
    /// The connection dropped: subscriptions do not survive it.
    ConnectionLost,
    /// The client stopped.
    Closed,
}

/// The publications of one topic this client subscribed to, from
/// [`Client::subscribe`](crate::Client::subscribe). It ends (`None`) after the last queued
/// publication once the subscription is over; [`end`](Self::end) then says why.
#[derive(Debug)]
pub struct TopicFeed {
    service: ServiceName,
    topic: TopicName,
    rx: mpsc::Receiver<Publication>,
    end: Arc<Mutex<Option<FeedEnd>>>,
    dropped: Arc<AtomicU64>,
}

impl TopicFeed {
    /// The service of the topic.
    pub fn service(&self) -> &ServiceName {
        &self.service
    }

    /// The topic.
    pub fn topic(&self) -> &TopicName {
        &self.topic
    }

    /// The next publication; `None` once the subscription is over and the queue drained.
    pub async fn recv(&mut self) -> Option<Publication> {
        self.rx.recv().await
    }

    /// Why the feed ended, once it did.
    pub fn end(&self) -> Option<FeedEnd> {
        *self.end.lock()
    }

    /// Publications dropped because this feed's queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

struct Sink {
    tx: mpsc::Sender<Publication>,
    end: Arc<Mutex<Option<FeedEnd>>>,
    dropped: Arc<AtomicU64>,
}

/// What the actor should do after a publication.
pub(crate) enum Delivered {
    /// Queued, dropped (full), or no feed: nothing to do.
    Done,
    /// The feed was dropped by its owner: unsubscribe.
    Unsubscribe(ServiceName, TopicName),
}

/// The feeds of the live connection, owned by the actor.
pub(crate) struct Feeds {
    sinks: HashMap<(ServiceName, TopicName), Sink>,
    capacity: usize,
}

impl Feeds {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            sinks: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// A new feed for `service/topic` (replacing an older one, which ends as unsubscribed).
    pub(crate) fn open(&mut self, service: ServiceName, topic: TopicName) -> TopicFeed {
        let (tx, rx) = mpsc::channel(self.capacity);
        let end = Arc::new(Mutex::new(None));
        let dropped = Arc::new(AtomicU64::new(0));
        let sink = Sink {
            tx,
            end: end.clone(),
            dropped: dropped.clone(),
        };
        if let Some(old) = self.sinks.insert((service.clone(), topic.clone()), sink) {
            *old.end.lock() = Some(FeedEnd::Unsubscribed);
        }
        TopicFeed {
            service,
            topic,
            rx,
            end,
            dropped,
        }
    }

    /// Hands a publication to its feed.
    pub(crate) fn deliver(&mut self, p: Publication) -> Delivered {
        let key = (p.service.clone(), p.topic.clone());
        let Some(sink) = self.sinks.get(&key) else {
            return Delivered::Done;
        };
        match sink.tx.try_send(p) {
            Ok(()) => Delivered::Done,
            Err(TrySendError::Full(_)) => {
                let n = sink.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    tracing::warn!(service = %key.0, topic = %key.1, dropped = n,
                        "topic feed full: dropping publications (slow consumer)");
                }
                Delivered::Done
            }
            Err(TrySendError::Closed(_)) => {
                self.sinks.remove(&key);
                Delivered::Unsubscribe(key.0, key.1)
            }
        }
    }

    /// Ends the feed of `service/topic`.
    pub(crate) fn end(&mut self, service: &ServiceName, topic: &TopicName, why: FeedEnd) {
        if let Some(sink) = self.sinks.remove(&(service.clone(), topic.clone())) {
            *sink.end.lock() = Some(why);
        }
    }

    /// Ends every feed.
    pub(crate) fn end_all(&mut self, why: FeedEnd) {
        for (_, sink) in self.sinks.drain() {
            *sink.end.lock() = Some(why);
        }
    }
}

/// Where invocations go: the latest [`Invocations`] receiver.
pub(crate) type InvocationSink = Arc<Mutex<Option<mpsc::Sender<Invocation>>>>;

/// Hands an invocation to the application; `Err` with the error to answer the call with.
pub(crate) fn offer(sink: &InvocationSink, inv: Invocation) -> Result<(), String> {
    let guard = sink.lock();
    let Some(tx) = guard.as_ref() else {
        return Err("the provider has no handler for calls".into());
    };
    match tx.try_send(inv) {
        Ok(()) => Ok(()),
        Err(TrySendError::Full(_)) => Err("the provider is overloaded; try again".into()),
        Err(TrySendError::Closed(_)) => Err("the provider has no handler for calls".into()),
    }
}

/// Builds the `Op` of a subscription request; the names are checked here.
pub(crate) fn names(service: &str, topic: &str) -> Result<(ServiceName, TopicName), ClientError> {
    Ok((ServiceName::new(service)?, TopicName::new(topic)?))
}
