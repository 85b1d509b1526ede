//! Helpers for peermesh's tests and benchmarks.
//!
//! [`FaultProxy`] forwards TCP connections from a loopback port to an upstream address and
//! breaks them on demand or on a [`Schedule`]: a cut resets both sides (an RST, as when a
//! network path dies, not a clean close), and for a while afterwards new connections are
//! reset as soon as they are accepted, as when a client's network is down.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! use peermesh_testkit::FaultProxy;
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! // An echo server stands in for the hub.
//! let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let up_addr = upstream.local_addr()?;
//! tokio::spawn(async move {
//!     while let Ok((mut s, _)) = upstream.accept().await {
//!         tokio::spawn(async move {
//!             let (mut r, mut w) = s.split();
//!             let _ = tokio::io::copy(&mut r, &mut w).await;
//!         });
//!     }
//! });
//! let proxy = FaultProxy::start(up_addr, None).await?;
//! let mut c = tokio::net::TcpStream::connect(proxy.addr()).await?;
//! c.write_all(b"ping").await?;
//! let mut buf = [0u8; 4];
//! c.read_exact(&mut buf).await?;
//! assert_eq!(&buf, b"ping");
//! proxy.wait_connections(1).await;
//! assert_eq!(proxy.cut(std::time::Duration::ZERO), 1);
//! assert!(c.read(&mut buf).await.map_or(true, |n| n == 0));
//! # Ok(())
//! # }
//! ```
//!
//! [`NatsServer`] runs a real `nats-server -js` on a loopback port for the cluster tests, and
//! can kill and restart it with its JetStream store intact.
#![deny(missing_docs)]

mod fault;
mod nats;

pub use fault::{FaultProxy, FaultStats, Schedule};
pub use nats::{free_port, NatsServer};
