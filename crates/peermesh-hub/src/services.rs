//! Services (RPC) and their topics: who provides what, and who listens to which topic.
//!
//! ```text
//!   services: ServiceName ──► Arc<Service>
//!     Service: hub provider (in-process handlers, optional)
//!              client providers: [ (conn, sorted methods) ]   (RwLock, read per call)
//!              topics: TopicName ──► Arc<Topic> ──► { conn no. ──► Arc<ConnShared> }
//!   ConnShared: calls_in_flight (as a provider), call_watchers, subscriptions
//! ```
//!
//! A call is routed by the caller's task: [`Services::route`] picks the hub when it provides
//! the method (the hub's answers come first), else the least busy client provider that has the
//! method (`select`), and counts the call in that provider's `calls_in_flight` (an atomic,
//! bounded by `max_calls_per_provider`). The caller keeps the call in its own table
//! (`conn/calls.rs`) and releases the count when the call ends. Nothing here is locked per call
//! but for reading the service's provider list.
//!
//! A service exists while it has a provider: created by the first `provide` (or
//! [`HubHandle::provide`](crate::HubHandle::provide)), removed with its last provider under the
//! same shard lock as creation, so a provider never joins a service that is being removed.
//! Removing a service ends its topics (`topic_ended` with `service_gone`).
//!
//! Topics belong to a service name, so two services' topics never collide. A topic's
//! subscriber map is behind its own `RwLock` (read per publication, which only queues frames
//! and never waits); a subscription is recorded both in the topic and in the subscriber's
//! `ConnShared::subscriptions`, always with the topic's lock taken first.

pub(crate) mod api;
pub(crate) mod builtin;
pub(crate) mod select;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use parking_lot::RwLock;
use peermesh_proto::{ErrorCode, MethodName, ServiceName, TopicEnd, TopicName};

use crate::registry::ConnShared;
use api::Handler;
use select::{pick, Candidate, Pick};

/// A failed service operation: the code and sentence of the `error` frame.
pub(crate) type Refusal = (ErrorCode, String);

/// A client connection that provides a service.
#[derive(Debug)]
pub(crate) struct Provider {
    pub(crate) conn: Arc<ConnShared>,
    /// Sorted, without duplicates.
    methods: Arc<[MethodName]>,
}

/// The hub's own provider of a service.
pub(crate) struct HubProvider {
    /// Identifies one `provide` of the hub (a newer one replaces it).
    pub(crate) id: u64,
    pub(crate) methods: HashMap<MethodName, Handler>,
}

impl std::fmt::Debug for HubProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubProvider")
            .field("id", &self.id)
            .field("methods", &self.methods.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// A topic's subscribers.
#[derive(Debug, Default)]
pub(crate) struct TopicSubs {
    /// False once the topic ended: nobody may subscribe any more.
    alive: bool,
    pub(crate) conns: HashMap<u64, Arc<ConnShared>>,
}

/// A topic of a service.
#[derive(Debug)]
pub(crate) struct Topic {
    pub(crate) service: ServiceName,
    pub(crate) name: TopicName,
    pub(crate) subs: RwLock<TopicSubs>,
}

/// The topics of a service.
#[derive(Debug, Default)]
struct Topics {
    /// True once the service was removed: no topic may be created any more.
    closed: bool,
    map: HashMap<TopicName, Arc<Topic>>,
}

/// One service: its providers and topics.
#[derive(Debug)]
pub(crate) struct Service {
    pub(crate) name: ServiceName,
    hub: RwLock<Option<HubProvider>>,
    providers: RwLock<Vec<Provider>>,
    next: AtomicUsize,
    topics: RwLock<Topics>,
}

impl Service {
    fn new(name: ServiceName) -> Self {
        Self {
            name,
            hub: RwLock::new(None),
            providers: RwLock::new(Vec::new()),
            next: AtomicUsize::new(0),
            topics: RwLock::new(Topics::default()),
        }
    }

    fn is_empty(&self) -> bool {
        self.hub.read().is_none() && self.providers.read().is_empty()
    }

    fn row(&self) -> ServiceRow {
        let providers = self.providers.read();
        let topics = self.topics.read();
        ServiceRow {
            name: self.name.clone(),
            hub: self.hub.read().is_some(),
            providers: providers.len(),
            calls_in_flight: providers
                .iter()
                .map(|p| p.conn.calls_in_flight.load(Ordering::Relaxed) as usize)
                .sum(),
            topics: topics.map.len(),
            subscriptions: topics.map.values().map(|t| t.subs.read().conns.len()).sum(),
        }
    }
}

/// Where a call goes.
pub(crate) enum Route {
    /// The hub answers with this handler.
    Hub(Handler),
    /// This client provider answers; the call is already counted in its `calls_in_flight`.
    Client(Arc<ConnShared>),
}

/// Figures for tests and the status page.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServiceStats {
    /// Services that exist (with at least one provider).
    pub services: usize,
    /// Client connections that provide a service.
    pub client_providers: usize,
    /// Services the hub itself provides.
    pub hub_providers: usize,
    /// Topics of all services.
    pub topics: usize,
    /// Subscriptions to all topics.
    pub subscriptions: usize,
    /// Calls client providers are handling now (sent to them, not yet answered, failed or
    /// timed out).
    pub calls_in_flight: usize,
}

/// One service as the status page shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct ServiceRow {
    pub(crate) name: ServiceName,
    /// The hub itself provides it.
    pub(crate) hub: bool,
    /// Client connections that provide it.
    pub(crate) providers: usize,
    /// Calls its client providers handle now.
    pub(crate) calls_in_flight: usize,
    pub(crate) topics: usize,
    pub(crate) subscriptions: usize,
}

/// Every service of one hub.
#[derive(Debug, Default)]
pub(crate) struct Services {
    map: DashMap<ServiceName, Arc<Service>>,
    /// Woken when what this hub offers changed (a service or topic came or went), so a
    /// cluster advertises it at once rather than at the next heartbeat.
    pub(crate) offer_changed: tokio::sync::Notify,
}

impl Services {
    /// Adds a client provider; returns its service.
    pub(crate) fn provide(
        &self,
        name: &ServiceName,
        methods: &[MethodName],
        conn: &Arc<ConnShared>,
    ) -> Arc<Service> {
        let mut methods: Vec<MethodName> = methods.to_vec();
        methods.sort();
        methods.dedup();
        let entry = self
            .map
            .entry(name.clone())
            .or_insert_with(|| Arc::new(Service::new(name.clone())));
        entry.providers.write().push(Provider {
            conn: conn.clone(),
            methods: methods.into(),
        });
        self.offer_changed.notify_one();
        entry.value().clone()
    }

    /// Installs the hub's own provider of a service; `false` if the hub already provides it.
    pub(crate) fn provide_hub(&self, name: &ServiceName, p: HubProvider) -> Option<Arc<Service>> {
        let entry = self
            .map
            .entry(name.clone())
            .or_insert_with(|| Arc::new(Service::new(name.clone())));
        let mut hub = entry.hub.write();
        if hub.is_some() {
            return None;
        }
        *hub = Some(p);
        drop(hub);
        self.offer_changed.notify_one();
        Some(entry.value().clone())
    }

    /// Removes a client provider; when it was the last provider, removes the service and
    /// returns its topics, closed (the router tells their subscribers).
    pub(crate) fn unprovide(&self, service: &Arc<Service>, conn: u64) -> Vec<Closed> {
        service.providers.write().retain(|p| p.conn.conn != conn);
        self.offer_changed.notify_one();
        self.remove_if_empty(service)
    }

    /// Removes the hub's provider `id` of a service.
    pub(crate) fn unprovide_hub(&self, service: &Arc<Service>, id: u64) -> Vec<Closed> {
        {
            let mut hub = service.hub.write();
            if hub.as_ref().is_some_and(|h| h.id == id) {
                *hub = None;
            }
        }
        self.offer_changed.notify_one();
        self.remove_if_empty(service)
    }

    fn remove_if_empty(&self, service: &Arc<Service>) -> Vec<Closed> {
        let removed = self.map.remove_if(&service.name, |_, s| {
            Arc::ptr_eq(s, service) && s.is_empty()
        });
        if removed.is_none() {
            return Vec::new();
        }
        let topics: Vec<Arc<Topic>> = {
            let mut t = service.topics.write();
            t.closed = true;
            t.map.drain().map(|(_, v)| v).collect()
        };
        topics
            .into_iter()
            .map(|t| close_topic(t, TopicEnd::ServiceGone))
            .collect()
    }

    /// Who on this hub offers `service.method` (busy or not): `Some(true)` the hub itself,
    /// `Some(false)` client providers only, `None` no one.
    pub(crate) fn offers(&self, service: &ServiceName, method: &MethodName) -> Option<bool> {
        let s = self.map.get(service).map(|s| s.value().clone())?;
        if s.hub
            .read()
            .as_ref()
            .is_some_and(|h| h.methods.contains_key(method))
        {
            return Some(true);
        }
        let any = s
            .providers
            .read()
            .iter()
            .any(|p| p.methods.binary_search(method).is_ok());
        any.then_some(false)
    }

    /// Every service of this hub with the methods someone offers, for the other hubs of a
    /// cluster.
    pub(crate) fn offered(&self) -> std::collections::BTreeMap<String, Vec<String>> {
        let mut out = std::collections::BTreeMap::new();
        for s in self.map.iter() {
            let mut methods: Vec<String> = Vec::new();
            if let Some(h) = s.hub.read().as_ref() {
                methods.extend(h.methods.keys().map(|m| m.as_str().to_owned()));
            }
            for p in s.providers.read().iter() {
                methods.extend(p.methods.iter().map(|m| m.as_str().to_owned()));
            }
            methods.sort();
            methods.dedup();
            if !methods.is_empty() {
                out.insert(s.name.as_str().to_owned(), methods);
            }
        }
        out
    }

    /// Every topic of this hub's services (sorted names), for the other hubs of a cluster.
    pub(crate) fn topics_offered(&self) -> std::collections::BTreeMap<String, Vec<String>> {
        let mut out = std::collections::BTreeMap::new();
        for s in self.map.iter() {
            let mut names: Vec<String> = s
                .topics
                .read()
                .map
                .keys()
                .map(|t| t.as_str().to_owned())
                .collect();
            if !names.is_empty() {
                names.sort();
                out.insert(s.name.as_str().to_owned(), names);
            }
        }
        out
    }

    /// Chooses who answers `service.method`; see the [module docs](self).
    pub(crate) fn route(
        &self,
        service: &ServiceName,
        method: &MethodName,
        max_per_provider: u32,
    ) -> Result<Route, Refusal> {
        let Some(s) = self.map.get(service).map(|s| s.value().clone()) else {
            return Err((
                ErrorCode::UnknownService,
                format!("no provider offers service {:?}", service.as_str()),
            ));
        };
        if let Some(h) = s.hub.read().as_ref() {
            if let Some(handler) = h.methods.get(method) {
                return Ok(Route::Hub(handler.clone()));
            }
        }
        let providers = s.providers.read();
        let mut cands: Vec<Candidate> = Vec::with_capacity(providers.len());
        // A provider may be chosen and fill up concurrently: retry with fresh loads.
        for _ in 0..providers.len().max(1) {
            cands.clear();
            cands.extend(providers.iter().map(|p| Candidate {
                has_method: p.methods.binary_search(method).is_ok(),
                in_flight: p.conn.calls_in_flight.load(Ordering::Relaxed),
                away: p.conn.away.load(Ordering::Relaxed),
            }));
            let start = s.next.fetch_add(1, Ordering::Relaxed);
            match pick(&cands, start, max_per_provider) {
                Pick::Chosen(i) => {
                    let conn = &providers[i].conn;
                    let took = conn
                        .calls_in_flight
                        .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                            (n < max_per_provider).then_some(n + 1)
                        })
                        .is_ok();
                    if took {
                        return Ok(Route::Client(conn.clone()));
                    }
                }
                Pick::NoMethod => {
                    return Err((
                        ErrorCode::UnknownMethod,
                        format!(
                            "service {:?} has no method {:?}",
                            service.as_str(),
                            method.as_str()
                        ),
                    ))
                }
                Pick::AllBusy => break,
            }
        }
        Err((
            ErrorCode::ServiceBusy,
            format!(
                "every provider of {:?} has {max_per_provider} calls in flight \
                 (max_calls_per_provider)",
                service.as_str()
            ),
        ))
    }

    /// Creates a topic of `service` (nothing changes if it exists).
    pub(crate) fn create_topic(
        &self,
        service: &Service,
        topic: &TopicName,
        max_topics: usize,
    ) -> Result<(), Refusal> {
        let mut t = service.topics.write();
        if t.closed {
            return Err((
                ErrorCode::NotProvider,
                format!("service {:?} is gone", service.name.as_str()),
            ));
        }
        if t.map.contains_key(topic) {
            return Ok(());
        }
        if t.map.len() >= max_topics {
            return Err((
                ErrorCode::TooManyTopics,
                format!(
                    "service {:?} already has {max_topics} topics (max_topics_per_service)",
                    service.name.as_str()
                ),
            ));
        }
        let new = Topic {
            service: service.name.clone(),
            name: topic.clone(),
            subs: RwLock::new(TopicSubs {
                alive: true,
                conns: HashMap::new(),
            }),
        };
        t.map.insert(topic.clone(), Arc::new(new));
        self.offer_changed.notify_one();
        Ok(())
    }

    /// Destroys a topic of `service`; returns it closed (the router tells its subscribers,
    /// `topic_ended` with `destroyed`).
    pub(crate) fn destroy_topic(
        &self,
        service: &Service,
        topic: &TopicName,
    ) -> Result<Closed, Refusal> {
        let removed = service.topics.write().map.remove(topic);
        self.offer_changed.notify_one();
        match removed {
            Some(t) => Ok(close_topic(t, TopicEnd::Destroyed)),
            None => Err(unknown_topic(&service.name, topic)),
        }
    }

    /// The live topic `service/topic`.
    pub(crate) fn topic(
        &self,
        service: &ServiceName,
        topic: &TopicName,
    ) -> Result<Arc<Topic>, Refusal> {
        let Some(s) = self.map.get(service).map(|s| s.value().clone()) else {
            return Err((
                ErrorCode::UnknownService,
                format!("no provider offers service {:?}", service.as_str()),
            ));
        };
        let t = s.topics.read().map.get(topic).cloned();
        t.ok_or_else(|| unknown_topic(service, topic))
    }

    /// A topic of a service the caller holds.
    pub(crate) fn own_topic(service: &Service, topic: &TopicName) -> Result<Arc<Topic>, Refusal> {
        let t = service.topics.read().map.get(topic).cloned();
        t.ok_or_else(|| unknown_topic(&service.name, topic))
    }

    /// Subscribes `conn` to `service/topic` (already subscribed: nothing changes).
    pub(crate) fn subscribe(
        &self,
        service: &ServiceName,
        topic: &TopicName,
        conn: &Arc<ConnShared>,
        max_subscriptions: usize,
    ) -> Result<(), Refusal> {
        let t = self.topic(service, topic)?;
        let mut subs = t.subs.write();
        subscribe_locked(&t, &mut subs, conn, max_subscriptions)
    }

    /// Ends `conn`'s subscription to `service/topic`.
    pub(crate) fn unsubscribe(
        &self,
        service: &ServiceName,
        topic: &TopicName,
        conn: &ConnShared,
    ) -> Result<(), Refusal> {
        let key = (service.clone(), topic.clone());
        let held = conn
            .peek()
            .and_then(|k| k.subscriptions.lock().remove(&key));
        match held {
            Some(t) => {
                t.subs.write().conns.remove(&conn.conn);
                Ok(())
            }
            None => Err((
                ErrorCode::NotSubscribed,
                format!(
                    "not subscribed to topic {:?} of service {:?}",
                    topic.as_str(),
                    service.as_str()
                ),
            )),
        }
    }

    /// Ends every subscription of a connection that is going away.
    pub(crate) fn unsubscribe_all(&self, conn: &ConnShared) {
        let held: Vec<Arc<Topic>> = conn
            .peek()
            .map(|k| k.subscriptions.lock().drain().map(|(_, t)| t).collect())
            .unwrap_or_default();
        for t in held {
            t.subs.write().conns.remove(&conn.conn);
        }
    }

    /// Counts for tests, the status page and `/metrics`.
    pub(crate) fn stats(&self) -> ServiceStats {
        let mut st = ServiceStats::default();
        for s in self.map.iter() {
            let row = s.row();
            st.services += 1;
            st.hub_providers += usize::from(row.hub);
            st.client_providers += row.providers;
            st.calls_in_flight += row.calls_in_flight;
            st.topics += row.topics;
            st.subscriptions += row.subscriptions;
        }
        st
    }

    /// The services with the most providers (then by name), at most `limit`.
    pub(crate) fn rows(&self, limit: usize) -> Vec<ServiceRow> {
        let mut rows: Vec<ServiceRow> = self.map.iter().map(|s| s.row()).collect();
        rows.sort_by(|a, b| {
            (b.providers + usize::from(b.hub))
                .cmp(&(a.providers + usize::from(a.hub)))
                .then_with(|| a.name.cmp(&b.name))
        });
        rows.truncate(limit);
        rows
    }
}

fn unknown_topic(service: &ServiceName, topic: &TopicName) -> Refusal {
    (
        ErrorCode::UnknownTopic,
        format!(
            "service {:?} has no topic {:?}",
            service.as_str(),
            topic.as_str()
        ),
    )
}

/// Subscribes `conn` to `topic`, whose write lock the caller holds (`subs`).
pub(crate) fn subscribe_locked(
    t: &Arc<Topic>,
    subs: &mut TopicSubs,
    conn: &Arc<ConnShared>,
    max_subscriptions: usize,
) -> Result<(), Refusal> {
    if !subs.alive {
        return Err(unknown_topic(&t.service, &t.name));
    }
    {
        let key = (t.service.clone(), t.name.clone());
        let mut mine = conn.cold().subscriptions.lock();
        if mine.get(&key).is_some_and(|held| Arc::ptr_eq(held, t)) {
            return Ok(());
        }
        if mine.len() >= max_subscriptions {
            return Err((
                ErrorCode::TooManySubscriptions,
                format!(
                    "already subscribed to {max_subscriptions} topics \
                     (max_subscriptions_per_client)"
                ),
            ));
        }
        mine.insert(key, t.clone());
    }
    subs.conns.insert(conn.conn, conn.clone());
    Ok(())
}

/// A topic that ended and why; its subscribers are told by [`Topic::end`] (the router's
/// `topics_ended`).
#[derive(Debug)]
pub(crate) struct Closed {
    pub(crate) topic: Arc<Topic>,
    pub(crate) reason: TopicEnd,
}

/// Ends a topic: nobody may subscribe any more (its subscribers stay until [`Topic::end`]
/// tells them).
fn close_topic(topic: Arc<Topic>, reason: TopicEnd) -> Closed {
    topic.subs.write().alive = false;
    Closed { topic, reason }
}

impl Topic {
    /// Runs `f` over the subscribers, under the read lock; `None` once the topic ended.
    pub(crate) fn with_subscribers<T>(
        &self,
        f: impl FnOnce(&HashMap<u64, Arc<ConnShared>>) -> T,
    ) -> Option<T> {
        let subs = self.subs.read();
        subs.alive.then(|| f(&subs.conns))
    }

    /// Tells the subscribers of an ended topic, as one step under its write lock: `f` gets
    /// them (and, in a cluster, numbers and publishes the end for the other hubs in the same
    /// step); then each subscriber's record of the topic goes.
    pub(crate) fn end(self: &Arc<Self>, f: impl FnOnce(&[Arc<ConnShared>])) {
        let mut subs = self.subs.write();
        subs.alive = false;
        let gone: Vec<Arc<ConnShared>> = subs.conns.drain().map(|(_, c)| c).collect();
        f(&gone);
        let key = (self.service.clone(), self.name.clone());
        for conn in &gone {
            let mut mine = conn.cold().subscriptions.lock();
            // The subscriber may hold a newer topic of the same name: leave that one alone.
            if mine.get(&key).is_some_and(|held| Arc::ptr_eq(held, self)) {
                mine.remove(&key);
            }
        }
    }

    /// The refusal for a topic that ended.
    pub(crate) fn gone(&self) -> Refusal {
        unknown_topic(&self.service, &self.name)
    }
}
