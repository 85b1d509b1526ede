//! Server-authoritative tick replication for games and simulations: a host simulates the world
//! at a fixed tick and is the authority; clients predict their own inputs, reconcile against
//! the host's state and interpolate everyone else's entities.
//!
//! This crate is engine-agnostic and sans-IO: it is fed datagrams and `Instant`s, and hands
//! back datagrams, events and what to draw. The game plugs its world in through [`World`]
//! (or uses [`EntityStore`]); the [`transport`] module (feature `tokio`) drives a [`Host`] or
//! a [`Client`] over UDP or another transport. See `docs/sync.md` for the whole design.
//!
//! - [`config`], [`schema`]: settings and registered types (their hash is checked at connect);
//! - [`host`]: the authority (input buffer, per-client deltas against acknowledged states,
//!   fragmented initial sync, resume within a grace window, kick);
//! - [`client`]: prediction, reconciliation with smoothing, time dilation, interpolation at
//!   an adaptive render delay, reconnect ladder;
//! - [`snapshot`], [`delta`], [`bits`], [`packet`]: the state and the wire;
//! - [`clock`], [`dilation`], [`render_delay`], [`ladder`], [`quantize`], [`scope`]: parts;
//! - [`netsim`], [`demo`]: a seeded in-memory network and a complete demo session.
//!
//! A host and a client over a simulated link with 60 ms of round trip, in virtual time:
//!
//! ```
//! use std::time::{Duration, Instant};
//! use peermesh_sync::demo::{self, bot_input};
//! use peermesh_sync::{Client, Host, LinkConditions, PeerId, SimNet, SyncConfig};
//!
//! let start = Instant::now();
//! let mut net = SimNet::new(1, LinkConditions::with_rtt(Duration::from_millis(60), Duration::ZERO, 0.0));
//! let (h, c) = (net.add_node(), net.add_node());
//! let mut host = Host::new(SyncConfig::default(), demo::schema(), demo::world(1, 100, true), 1)?;
//! let mut client = Client::new(SyncConfig::default(), demo::schema(), demo::world(1, 0, false), 2, start)?;
//! client.set_sampler(|tick, actions| actions.push(bot_input(PeerId(1), tick)));
//! client.connect(start);
//! let step = Duration::from_millis(4);
//! let mut now = start;
//! for _ in 0..500 {
//!     now += step;
//!     while let Some(d) = net.poll(now) {
//!         if d.to == h { host.handle(d.at, d.from, &d.payload) } else { client.handle(d.at, &d.payload) }
//!     }
//!     host.tick(now, step);
//!     client.tick(now, step);
//!     while let Some((to, bytes)) = host.poll_transmit() { net.send(now, h, to, bytes); }
//!     while let Some(bytes) = client.poll_transmit() { net.send(now, c, h, bytes); }
//!     while host.poll_event().is_some() {}
//!     let _frame = client.render(now); // blended lanes of every entity, to draw
//! }
//! assert!(client.is_live());
//! assert_eq!(client.stats().mispredictions, 0);
//! let newest = client.latest().expect("a state");
//! assert_eq!(host.state_at(newest.tick()).map(|s| s.digest()), Some(newest.digest()));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]

pub mod bits;
pub mod client;
pub mod clock;
pub mod config;
pub mod delta;
pub mod demo;
pub mod dilation;
pub mod host;
pub mod ladder;
pub mod netsim;
pub mod packet;
pub mod quantize;
pub mod render_delay;
pub mod schema;
pub mod scope;
pub mod snapshot;
#[doc(hidden)]
pub mod testing;
#[cfg(feature = "tokio")]
pub mod transport;
pub mod world;

pub use bits::WireError;
pub use client::{Client, ClientEvent, ClientStats, Rendered};
pub use clock::{Clock, Frame};
pub use config::{ConfigError, SyncConfig};
pub use dilation::TimeDilation;
pub use host::{Host, HostError, HostEvent, PeerStats};
pub use ladder::{LadderStep, ReconnectLadder};
pub use netsim::{Delivery, LinkConditions, NetSimError, NetStats, NodeId, SimNet};
pub use render_delay::AdaptiveRenderDelay;
pub use schema::{ActionId, ComponentId, Encoding, Schema, SchemaError};
pub use scope::{OwnerAwareScope, Scope};
pub use snapshot::{EntityId, EntityView, PeerId, Snapshot, Value};
pub use world::{Action, EntityStore, PeerInput, Simulated, World};
