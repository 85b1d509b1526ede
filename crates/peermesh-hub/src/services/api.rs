//! The hub's own services: the Rust API to provide a service from the hub process.
//!
//! ```no_run
//! # async fn demo(hub: peermesh_hub::HubHandle) -> Result<(), Box<dyn std::error::Error>> {
//! use peermesh_hub::{ServiceError, ServiceSpec};
//! use peermesh_proto::Payload;
//!
//! let spec = ServiceSpec::new("calc")?
//!     .method("add", |call| async move {
//!         let args = call.payload.as_json().cloned().unwrap_or_default();
//!         match (args[0].as_i64(), args[1].as_i64()) {
//!             (Some(a), Some(b)) => Ok(Payload::Json((a + b).into())),
//!             _ => Err(ServiceError::new("add takes two integers")),
//!         }
//!     })?;
//! let calc = hub.provide(spec)?;
//! calc.create_topic("sums")?;
//! calc.publish("sums", Payload::Json(3.into()))?;
//! # Ok(()) }
//! ```
//!
//! Clients call the hub's services exactly like client-provided ones. When the hub and clients
//! provide the same service, a call of a method the hub provides is answered by the hub; other
//! methods go to the client providers (see `docs/protocol.md` §23).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures_util::future::BoxFuture;
use peermesh_proto::{ClientId, MethodName, NameError, Payload, ServiceName, TopicName};

use super::{HubProvider, Service, Services};
use crate::HubInner;

/// A call handled by the hub.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// The caller.
    pub from: ClientId,
    /// The service.
    pub service: ServiceName,
    /// The method.
    pub method: MethodName,
    /// The arguments.
    pub payload: Payload,
}

/// A handler's refusal: the caller receives `service_error` with this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ServiceError {
    /// The message for the caller.
    pub message: String,
}

impl ServiceError {
    /// An error with this message for the caller.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

/// A method's handler, as stored.
pub(crate) type Handler =
    Arc<dyn Fn(Invocation) -> BoxFuture<'static, Result<Payload, ServiceError>> + Send + Sync>;

/// A service for [`HubHandle::provide`](crate::HubHandle::provide): a name and its methods.
pub struct ServiceSpec {
    pub(crate) name: ServiceName,
    pub(crate) methods: HashMap<MethodName, Handler>,
}

impl std::fmt::Debug for ServiceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceSpec")
            .field("name", &self.name)
            .field("methods", &self.methods.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl ServiceSpec {
    /// A service named `name` (a valid service name), without methods yet.
    pub fn new(name: &str) -> Result<Self, NameError> {
        Ok(Self {
            name: ServiceName::new(name)?,
            methods: HashMap::new(),
        })
    }

    /// Adds (or replaces) the method `name`, answered by `handler`. The handler runs on its own
    /// task; the caller's timeout applies, and a handler that panics leaves the call to time
    /// out.
    pub fn method<F, Fut>(mut self, name: &str, handler: F) -> Result<Self, NameError>
    where
        F: Fn(Invocation) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Payload, ServiceError>> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |inv| Box::pin(handler(inv)));
        self.methods.insert(MethodName::new(name)?, handler);
        Ok(self)
    }

    /// The service's name.
    pub fn name(&self) -> &ServiceName {
        &self.name
    }
}

/// Why an operation on the hub's services failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceApiError {
    /// The hub already provides a service of this name.
    #[error("already_providing: the hub already provides service {0:?}")]
    AlreadyProvided(String),
    /// A service needs at least one method.
    #[error("invalid_field: a service needs at least one method")]
    NoMethods,
    /// A name is not valid.
    #[error("invalid_field: {0}")]
    InvalidName(#[from] NameError),
    /// The topic operation was refused; `code` is the protocol's error code
    /// (`unknown_topic`, `too_many_topics`, `not_provider`).
    #[error("{code}: {message}")]
    Refused {
        /// The stable code.
        code: peermesh_proto::ErrorCode,
        /// A sentence for people.
        message: String,
    },
}

impl From<super::Refusal> for ServiceApiError {
    fn from((code, message): super::Refusal) -> Self {
        ServiceApiError::Refused { code, message }
    }
}

static NEXT_HUB_PROVIDER: AtomicU64 = AtomicU64::new(1);

/// A service the hub provides. Dropping it (or [`withdraw`](Self::withdraw)) withdraws the
/// service: calls of its methods then go to client providers, if any; when none is left, the
/// service goes away and its topics' subscribers receive `topic_ended` (`service_gone`).
pub struct ServiceHandle {
    hub: Arc<HubInner>,
    service: Arc<Service>,
    id: u64,
}

impl std::fmt::Debug for ServiceHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceHandle")
            .field("service", &self.service.name)
            .finish()
    }
}

impl ServiceHandle {
    pub(crate) fn provide(hub: Arc<HubInner>, spec: ServiceSpec) -> Result<Self, ServiceApiError> {
        if spec.methods.is_empty() {
            return Err(ServiceApiError::NoMethods);
        }
        let id = NEXT_HUB_PROVIDER.fetch_add(1, Ordering::Relaxed);
        let services: &Services = &hub.router.services;
        let provider = HubProvider {
            id,
            methods: spec.methods,
        };
        match services.provide_hub(&spec.name, provider) {
            Some(service) => Ok(Self { hub, service, id }),
            None => Err(ServiceApiError::AlreadyProvided(spec.name.to_string())),
        }
    }

    /// The service's name.
    pub fn name(&self) -> &ServiceName {
        &self.service.name
    }

    /// Creates a topic of this service (nothing changes if it exists).
    pub fn create_topic(&self, topic: &str) -> Result<(), ServiceApiError> {
        let topic = TopicName::new(topic)?;
        let max = self.hub.config.max_topics_per_service;
        Ok(self
            .hub
            .router
            .services
            .create_topic(&self.service, &topic, max)?)
    }

    /// Publishes to a topic of this service; returns how many subscribers it reached.
    pub fn publish(&self, topic: &str, payload: Payload) -> Result<usize, ServiceApiError> {
        let topic = TopicName::new(topic)?;
        let t = Services::own_topic(&self.service, &topic)?;
        Ok(self.hub.router.to_topic(&t, payload)?)
    }

    /// Destroys a topic of this service; its subscribers receive `topic_ended` (`destroyed`).
    pub fn destroy_topic(&self, topic: &str) -> Result<(), ServiceApiError> {
        let topic = TopicName::new(topic)?;
        let closed = self
            .hub
            .router
            .services
            .destroy_topic(&self.service, &topic)?;
        self.hub.router.topics_ended(vec![closed]);
        Ok(())
    }

    /// Withdraws the service (the same as dropping the handle).
    pub fn withdraw(self) {}
}

impl Drop for ServiceHandle {
    fn drop(&mut self) {
        let closed = self
            .hub
            .router
            .services
            .unprovide_hub(&self.service, self.id);
        self.hub.router.topics_ended(closed);
    }
}
