//! Server-authoritative tick replication for games and simulations: a host simulates the world
//! at a fixed tick and is the authority; clients predict their own inputs, reconcile against
//! the host's state and interpolate everyone else's entities.
//!
//! This crate is engine-agnostic and sans-IO: it is fed durations, bytes and inputs, and hands
//! back what to send and what to render. This first part holds the foundations every later
//! part builds on:
//!
//! - [`config`]: the session's settings, checked with an error that names the setting and the
//!   fix;
//! - [`schema`]: the registered component and action types, whose registration order fixes
//!   their wire ids and whose [`Schema::hash`] two peers compare before they talk;
//! - [`clock`]: the fixed-timestep loop (`tick(dt)` accumulates, steps at most a bounded
//!   number of times, then tells how far to blend for rendering);
//! - [`quantize`]: fixed-point helpers for floats, vectors and rotations (smallest-three).
//!
//! ```
//! use std::time::Duration;
//! use peermesh_sync::{Clock, Encoding, Schema, SyncConfig};
//!
//! let config = SyncConfig::default(); // 60 Hz, 4 ticks of input delay
//! config.validate()?;
//! let mut schema = Schema::new();
//! let transform = schema.component("transform", Encoding::Fixed(12), true)?;
//! let jump = schema.action("jump", Encoding::Fixed(0))?;
//! schema.freeze();
//! assert_eq!((transform.0, jump.0), (0, 0)); // ids follow registration order, per kind
//! assert!(schema.component("late", Encoding::Var, false).is_err()); // too late
//!
//! let mut clock = Clock::new(&config);
//! let frame = clock.advance(Duration::from_millis(40)); // 2.4 ticks of time
//! assert_eq!(frame.steps, 2);
//! assert!((frame.alpha - 0.4).abs() < 1e-6);
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
pub use clock::{Clock, Frame};
pub use config::{ConfigError, SyncConfig};
pub use dilation::TimeDilation;
pub use ladder::{LadderStep, ReconnectLadder};
pub use netsim::{Delivery, LinkConditions, NetSimError, NetStats, NodeId, SimNet};
pub use render_delay::AdaptiveRenderDelay;
pub use schema::{ActionId, ComponentId, Encoding, Schema, SchemaError};
pub use snapshot::{EntityId, EntityView, PeerId, Snapshot, Value};
pub use world::{Action, EntityStore, PeerInput, Simulated, World};
