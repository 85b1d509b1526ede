//! Listeners: who receives incoming messages and lifecycle events.
//!
//! Handles register listeners synchronously in a registry shared with the actor, so a
//! listener exists as soon as [`Client::on`](crate::Client::on) returns (no race with a message
//! that arrives right after). The actor matches each incoming message against every listener's
//! filter (event name, sender) and hands a copy to each match.
//!
//! # Limits and drop policy
//!
//! Every listener ([`Subscription`], [`Once`]) and every [`EventStream`] has its own bounded
//! queue: [`ClientOptions::listener_capacity`] messages (default 256) or
//! [`ClientOptions::event_capacity`] events (default 64). The actor never waits for a listener:
//! when a queue is full the new item is **dropped for that listener only**, counted in its
//! [`dropped`](Subscription::dropped) counter, and logged at `warn` (on the 1st, 2nd, 4th, 8th…
//! drop). Other listeners, the socket and pending requests carry on. A dropped message that
//! asked for an acknowledgement is never answered, so its sender sees `ack_timeout`.
//!
//! A listener lives until its handle is dropped, [`Client::off`](crate::Client::off) is called
//! with its id, or (for [`Once`]) its message arrives. When the client stops, every queue is
//! closed: receivers drain what is queued, then get `None`.
//!
//! [`ClientOptions::listener_capacity`]: crate::ClientOptions::listener_capacity
//! [`ClientOptions::event_capacity`]: crate::ClientOptions::event_capacity

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};

use futures_util::Stream;
use parking_lot::Mutex;
use peermesh_proto::{ClientId, EventName, Payload, RoomName};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use crate::error::ClientError;
use crate::event::ClientEvent;
use crate::request::{self, Command, Op, Request};

/// The id of a listener or event stream, for [`Client::off`](crate::Client::off).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenerId(u64);

/// A message from another client, directly or through a room.
#[derive(Debug, Clone)]
pub struct Message {
    /// The sender (stamped by the hub).
    pub from: ClientId,
    /// The event name.
    pub event: EventName,
    /// The payload.
    pub payload: Payload,
    /// The room, for room deliveries.
    pub room: Option<RoomName>,
    /// Present when the sender waits for an answer: see [`Message::reply`].
    pub ack_id: Option<u64>,
    replier: Replier,
}

/// Where a reply goes: the actor (weakly held, so messages kept around do not keep a closed
/// client alive) and the connection the message arrived on.
#[derive(Clone)]
pub(crate) struct Replier {
    pub(crate) tx: mpsc::WeakSender<Command>,
    pub(crate) generation: u64,
}

impl std::fmt::Debug for Replier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replier")
            .field("generation", &self.generation)
            .finish()
    }
}

impl Message {
    pub(crate) fn new(m: peermesh_proto::Message, replier: Replier) -> Self {
        Self {
            from: m.from,
            event: m.event,
            payload: m.payload,
            room: m.room,
            ack_id: m.ack_id,
            replier,
        }
    }

    /// Whether the sender waits for an answer.
    pub fn wants_reply(&self) -> bool {
        self.ack_id.is_some()
    }

    /// Answers a message that carried an `ack_id`; the sender's
    /// [`emit_with_ack`](crate::Client::emit_with_ack) resolves with `payload`.
    ///
    /// Fails with [`ClientError::NoAck`] when the message did not ask for an answer, and with
    /// [`ClientError::ConnectionLost`] when the connection it arrived on has since dropped
    /// (the hub forgot the acknowledgement with it). Answering twice is reported by the hub as
    /// an `unknown_ack` [`ClientEvent::Error`].
    pub fn reply(&self, payload: impl Into<Payload>) -> Request<()> {
        let op = match self.ack_id {
            Some(ack_id) => Ok(Op::Reply {
                ack_id,
                payload: payload.into(),
                generation: Some(self.replier.generation),
            }),
            None => Err(ClientError::NoAck),
        };
        Request::new(self.replier.tx.upgrade(), op, request::unit)
    }

    /// The wire form of the message (without the reply handle).
    pub fn to_proto(&self) -> peermesh_proto::Message {
        peermesh_proto::Message {
            from: self.from.clone(),
            event: self.event.clone(),
            payload: self.payload.clone(),
            room: self.room.clone(),
            ack_id: self.ack_id,
        }
    }
}

/// Which messages a listener wants.
#[derive(Debug, Clone, Default)]
pub(crate) struct Filter {
    pub(crate) event: Option<Box<str>>,
    pub(crate) from: Option<Box<str>>,
}

impl Filter {
    fn matches(&self, m: &Message) -> bool {
        self.event.as_deref().is_none_or(|e| e == m.event.as_str())
            && self.from.as_deref().is_none_or(|f| f == m.from.as_str())
    }
}

struct Listener {
    filter: Filter,
    once: bool,
    tx: mpsc::Sender<Message>,
    dropped: Arc<AtomicU64>,
}

struct EventSink {
    tx: mpsc::Sender<ClientEvent>,
    dropped: Arc<AtomicU64>,
}

/// The listeners of one client, shared by its handles and its actor.
pub(crate) struct Registry {
    next_id: u64,
    listeners: BTreeMap<u64, Listener>,
    streams: BTreeMap<u64, EventSink>,
    connected: Option<ClientId>,
    closed: bool,
    listener_capacity: usize,
    event_capacity: usize,
}

pub(crate) type SharedRegistry = Arc<Mutex<Registry>>;

fn note_drop(counter: &AtomicU64, what: &str, id: u64) {
    let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
    if n.is_power_of_two() {
        tracing::warn!(
            listener = id,
            dropped = n,
            "{what} queue full: dropping (slow consumer)"
        );
    }
}

impl Registry {
    pub(crate) fn new(listener_capacity: usize, event_capacity: usize) -> Self {
        Self {
            next_id: 1,
            listeners: BTreeMap::new(),
            streams: BTreeMap::new(),
            connected: None,
            closed: false,
            listener_capacity: listener_capacity.max(1),
            event_capacity: event_capacity.max(1),
        }
    }

    fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Adds a message listener and returns its id and receiving end.
    pub(crate) fn listen(
        &mut self,
        filter: Filter,
        once: bool,
    ) -> (u64, mpsc::Receiver<Message>, Arc<AtomicU64>) {
        let id = self.next_id();
        let capacity = if once { 1 } else { self.listener_capacity };
        let (tx, rx) = mpsc::channel(capacity);
        let dropped = Arc::new(AtomicU64::new(0));
        if !self.closed {
            let l = Listener {
                filter,
                once,
                tx,
                dropped: dropped.clone(),
            };
            self.listeners.insert(id, l);
        }
        (id, rx, dropped)
    }

    /// Adds an event stream; it opens with `Connected` when the client is connected.
    pub(crate) fn subscribe(&mut self) -> (u64, mpsc::Receiver<ClientEvent>, Arc<AtomicU64>) {
        let id = self.next_id();
        let (tx, rx) = mpsc::channel(self.event_capacity);
        let dropped = Arc::new(AtomicU64::new(0));
        if !self.closed {
            if let Some(id) = &self.connected {
                // A fresh channel has room for at least one item.
                let _ = tx.try_send(ClientEvent::Connected { id: id.clone() });
            }
            let sink = EventSink {
                tx,
                dropped: dropped.clone(),
            };
            self.streams.insert(id, sink);
        }
        (id, rx, dropped)
    }

    /// Removes a listener or event stream; `false` when there was none with this id.
    pub(crate) fn remove(&mut self, id: u64) -> bool {
        self.listeners.remove(&id).is_some() || self.streams.remove(&id).is_some()
    }

    /// Hands a copy of `msg` to every matching listener; returns how many took it.
    pub(crate) fn dispatch(&mut self, msg: &Message) -> usize {
        let mut delivered = 0;
        self.listeners.retain(|id, l| {
            if !l.filter.matches(msg) {
                return true;
            }
            match l.tx.try_send(msg.clone()) {
                Ok(()) => {
                    delivered += 1;
                    !l.once
                }
                Err(TrySendError::Full(_)) => {
                    note_drop(&l.dropped, "listener", *id);
                    true
                }
                Err(TrySendError::Closed(_)) => false,
            }
        });
        delivered
    }

    /// Hands a copy of `event` to every event stream.
    pub(crate) fn emit(&mut self, event: ClientEvent) {
        self.streams
            .retain(|id, s| match s.tx.try_send(event.clone()) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    note_drop(&s.dropped, "event stream", *id);
                    true
                }
                Err(TrySendError::Closed(_)) => false,
            });
    }

    /// Records whether the client is connected (and as whom), for new event streams.
    pub(crate) fn set_connected(&mut self, id: Option<ClientId>) {
        self.connected = id;
    }

    /// Closes every queue; later registrations get closed queues.
    pub(crate) fn close(&mut self) {
        self.closed = true;
        self.connected = None;
        self.listeners.clear();
        self.streams.clear();
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.listeners.len() + self.streams.len()
    }
}

fn unregister(registry: &Weak<Mutex<Registry>>, id: u64) {
    if let Some(r) = registry.upgrade() {
        r.lock().remove(id);
    }
}

/// A bounded queue fed by the client's actor: the messages of one listener
/// ([`Subscription`]) or the client's lifecycle events ([`EventStream`]).
///
/// Receive with [`recv`](Self::recv) or as a [`Stream`]. It ends (`None`) once the listener was
/// removed or the client stopped and every queued item was received. Dropping it removes the
/// listener. See [the drop policy](self).
pub struct Feed<T> {
    id: u64,
    rx: mpsc::Receiver<T>,
    dropped: Arc<AtomicU64>,
    registry: Weak<Mutex<Registry>>,
}

/// The messages that match a listener's filter, from [`Client::on`](crate::Client::on) and
/// its relatives.
pub type Subscription = Feed<Message>;

/// The client's [`ClientEvent`]s, from [`Client::events`](crate::Client::events).
pub type EventStream = Feed<ClientEvent>;

impl Feed<Message> {
    pub(crate) fn new(registry: &SharedRegistry, filter: Filter) -> Self {
        let (id, rx, dropped) = registry.lock().listen(filter, false);
        Self::from_parts(registry, id, rx, dropped)
    }
}

impl Feed<ClientEvent> {
    pub(crate) fn events(registry: &SharedRegistry) -> Self {
        let (id, rx, dropped) = registry.lock().subscribe();
        Self::from_parts(registry, id, rx, dropped)
    }
}

impl<T> Feed<T> {
    fn from_parts(
        registry: &SharedRegistry,
        id: u64,
        rx: mpsc::Receiver<T>,
        dropped: Arc<AtomicU64>,
    ) -> Self {
        Self {
            id,
            rx,
            dropped,
            registry: Arc::downgrade(registry),
        }
    }

    /// The listener's id, for [`Client::off`](crate::Client::off).
    pub fn id(&self) -> ListenerId {
        ListenerId(self.id)
    }

    /// The next item; `None` once the listener was removed or the client stopped, and every
    /// queued item was received.
    pub async fn recv(&mut self) -> Option<T> {
        self.rx.recv().await
    }

    /// A queued item, if there is one, without waiting.
    pub fn try_recv(&mut self) -> Option<T> {
        self.rx.try_recv().ok()
    }

    /// How many items were dropped because this queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl<T> Stream for Feed<T> {
    type Item = T;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        self.rx.poll_recv(cx)
    }
}

impl<T> Drop for Feed<T> {
    fn drop(&mut self) {
        unregister(&self.registry, self.id);
    }
}

impl<T> std::fmt::Debug for Feed<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed")
            .field("id", &self.id)
            .field("dropped", &self.dropped())
            .finish()
    }
}

/// A future resolving with the first message that matches, after which the listener is gone.
///
/// Resolves to `None` when the listener was removed with [`Client::off`](crate::Client::off)
/// or the client stopped first. Dropping it removes the listener.
#[must_use = "a `Once` listener does nothing unless awaited"]
pub struct Once {
    id: u64,
    rx: mpsc::Receiver<Message>,
    registry: Weak<Mutex<Registry>>,
}

impl Once {
    pub(crate) fn new(registry: &SharedRegistry, filter: Filter) -> Self {
        let (id, rx, _) = registry.lock().listen(filter, true);
        Self {
            id,
            rx,
            registry: Arc::downgrade(registry),
        }
    }

    /// The listener's id, for [`Client::off`](crate::Client::off).
    pub fn id(&self) -> ListenerId {
        ListenerId(self.id)
    }
}

impl Future for Once {
    type Output = Option<Message>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for Once {
    fn drop(&mut self) {
        unregister(&self.registry, self.id);
    }
}

impl std::fmt::Debug for Once {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Once").field("id", &self.id).finish()
    }
}

impl ListenerId {
    pub(crate) fn get(self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(from: &str, event: &str, tx: &mpsc::Sender<Command>) -> Message {
        let m = peermesh_proto::Message {
            from: ClientId::new(from).expect("valid id"),
            event: EventName::new(event).expect("valid event"),
            payload: Payload::Json(serde_json::json!(1)),
            room: None,
            ack_id: None,
        };
        Message::new(
            m,
            Replier {
                tx: tx.downgrade(),
                generation: 0,
            },
        )
    }

    fn filter(event: Option<&str>, from: Option<&str>) -> Filter {
        Filter {
            event: event.map(Into::into),
            from: from.map(Into::into),
        }
    }

    #[test]
    fn filters_select_by_event_and_sender() {
        let (tx, _rx) = mpsc::channel(1);
        let reg: SharedRegistry = Arc::new(Mutex::new(Registry::new(8, 8)));
        let mut chat = Subscription::new(&reg, filter(Some("chat"), None));
        let mut any = Subscription::new(&reg, filter(None, None));
        let mut bob_chat = Subscription::new(&reg, filter(Some("chat"), Some("bob")));
        let mut bob_any = Subscription::new(&reg, filter(None, Some("bob")));

        assert_eq!(reg.lock().dispatch(&msg("alice", "chat", &tx)), 2);
        assert_eq!(reg.lock().dispatch(&msg("bob", "chat", &tx)), 4);
        assert_eq!(reg.lock().dispatch(&msg("bob", "move", &tx)), 2);

        let drain = |s: &mut Subscription| {
            std::iter::from_fn(|| s.try_recv())
                .map(|m| format!("{}:{}", m.from, m.event))
                .collect::<Vec<_>>()
        };
        assert_eq!(drain(&mut chat), ["alice:chat", "bob:chat"]);
        assert_eq!(drain(&mut any), ["alice:chat", "bob:chat", "bob:move"]);
        assert_eq!(drain(&mut bob_chat), ["bob:chat"]);
        assert_eq!(drain(&mut bob_any), ["bob:chat", "bob:move"]);
    }

    #[test]
    fn full_queues_drop_and_count_without_blocking() {
        let (tx, _rx) = mpsc::channel(1);
        let reg: SharedRegistry = Arc::new(Mutex::new(Registry::new(2, 8)));
        let mut slow = Subscription::new(&reg, Filter::default());
        let mut fast = Subscription::new(&reg, Filter::default());
        for _ in 0..5 {
            reg.lock().dispatch(&msg("a", "e", &tx));
            // `fast` keeps up, `slow` never reads.
            assert!(fast.try_recv().is_some());
        }
        assert_eq!(slow.dropped(), 3);
        assert_eq!(fast.dropped(), 0);
        assert!(slow.try_recv().is_some());
        assert!(slow.try_recv().is_some());
        assert!(slow.try_recv().is_none());
    }

    #[test]
    fn once_fires_once_and_unregisters() {
        let (tx, _rx) = mpsc::channel(1);
        let reg: SharedRegistry = Arc::new(Mutex::new(Registry::new(8, 8)));
        let mut once = Once::new(&reg, filter(Some("go"), None));
        assert_eq!(reg.lock().dispatch(&msg("a", "stay", &tx)), 0);
        assert_eq!(reg.lock().dispatch(&msg("a", "go", &tx)), 1);
        assert_eq!(reg.lock().dispatch(&msg("a", "go", &tx)), 0);
        assert_eq!(reg.lock().len(), 0);
        let got = once.rx.try_recv().expect("delivered");
        assert_eq!(got.event.as_str(), "go");
    }

    #[test]
    fn dropping_or_removing_unregisters() {
        let reg: SharedRegistry = Arc::new(Mutex::new(Registry::new(8, 8)));
        let a = Subscription::new(&reg, Filter::default());
        let mut b = Subscription::new(&reg, Filter::default());
        let e = EventStream::events(&reg);
        assert_eq!(reg.lock().len(), 3);
        drop(a);
        assert_eq!(reg.lock().len(), 2);
        assert!(reg.lock().remove(b.id().get()));
        assert!(!reg.lock().remove(b.id().get()));
        assert!(b.try_recv().is_none());
        drop(e);
        assert_eq!(reg.lock().len(), 0);
    }

    #[test]
    fn event_streams_open_with_connected_and_close_with_the_client() {
        let reg: SharedRegistry = Arc::new(Mutex::new(Registry::new(8, 8)));
        let mut before = EventStream::events(&reg);
        let alice = ClientId::new("alice").expect("valid id");
        reg.lock().set_connected(Some(alice.clone()));
        let mut after = EventStream::events(&reg);
        reg.lock().emit(ClientEvent::PeerLeft { id: alice.clone() });
        assert_eq!(
            after.try_recv(),
            Some(ClientEvent::Connected { id: alice.clone() })
        );
        assert_eq!(
            after.try_recv(),
            Some(ClientEvent::PeerLeft { id: alice.clone() })
        );
        assert_eq!(before.try_recv(), Some(ClientEvent::PeerLeft { id: alice }));
        reg.lock().close();
        assert!(after.rx.is_closed());
        let mut late = Subscription::new(&reg, Filter::default());
        assert!(late.rx.is_closed());
        assert!(late.try_recv().is_none());
    }
}
