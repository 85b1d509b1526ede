//! Cluster membership and cluster-unique client ids for peermesh hubs, on NATS.
//!
//! Several `peermesh serve` processes act as one hub by meeting on a NATS server (never a
//! home-made gossip protocol). This crate holds the two things every hub of a cluster needs
//! first:
//!
//! - **membership**: every node publishes a heartbeat each second on
//!   `peermesh.cluster.heartbeat`; a node unheard for `dead_after` (5 s by default) is dead;
//! - **client ids unique across the cluster**: a hub claims an id with a JetStream key-value
//!   *create* (the server accepts exactly one create of a key, so when two hubs claim the same
//!   id at the same moment exactly one wins), releases it when the client leaves, and the ids
//!   of a dead node are purged by the first live node in name order, so they are free again
//!   within `dead_after` plus a heartbeat (≤ 7 s by default).
//!
//! ```no_run
//! use peermesh_cluster::{Claim, Cluster, ClusterConfig};
//!
//! # async fn demo() -> Result<(), peermesh_cluster::ClusterError> {
//! let a = Cluster::join(ClusterConfig::new("nats://127.0.0.1:4222", "hub-a")).await?;
//! let b = Cluster::join(ClusterConfig::new("nats://127.0.0.1:4222", "hub-b")).await?;
//! assert_eq!(a.claim("alice").await?, Claim::Won);
//! assert_eq!(b.claim("alice").await?, Claim::Taken { node: "hub-a".into() });
//! a.release("alice").await?;
//! assert_eq!(b.claim("alice").await?, Claim::Won);
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

mod cluster;
mod config;

pub use async_nats;
pub use cluster::{
    Claim, Cluster, Event, Member, Services, HEARTBEAT_SUBJECT, MAX_ADVERTISED_SERVICES,
    SESSION_KEY_GRACE,
};
pub use config::{ClusterConfig, ClusterError};
