//! Transports and the tokio shells that drive a [`Host`] or a [`Client`] over them (feature
//! `tokio`).
//!
//! A transport moves datagrams; the sync layer's own acknowledgements and redundancy deal with
//! loss, so no transport needs to be reliable. [`udp`] is for native games; [`memory`] is a
//! lossless in-process network for tests.
//!
//! With feature `hub`, `hub` carries the datagrams as binary messages between clients of a
//! peermesh hub, addressed by client id, for peers that cannot reach each other directly.
//! With feature `mesh`, `mesh` sends them over a `MeshSocket` of the Kademlia relay mesh,
//! addressed by node id, for sessions without a central server.

use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;
use std::io;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::{Instant, MissedTickBehavior};

use crate::client::{Client, ClientEvent};
use crate::host::{Host, HostEvent};
use crate::world::World;

#[cfg(feature = "hub")]
pub mod hub;
pub mod memory;
#[cfg(feature = "mesh")]
pub mod mesh;
pub mod udp;

/// Moves datagrams between a host and its clients.
pub trait Transport: Send + 'static {
    /// How peers are addressed.
    type Addr: Clone + Eq + Hash + Debug + Send + Sync + 'static;

    /// Sends one datagram, best effort.
    fn send(
        &mut self,
        to: &Self::Addr,
        datagram: Bytes,
    ) -> impl Future<Output = io::Result<()>> + Send;

    /// The next datagram received. Cancel-safe: dropping the future loses nothing.
    fn recv(&mut self) -> impl Future<Output = io::Result<(Self::Addr, Bytes)>> + Send;
}

/// How often the shells advance the session's clock (four times a tick at 60 Hz).
pub const POLL_EVERY: Duration = Duration::from_millis(4);

/// Drives a host over a transport until `stop` resolves: datagrams in, ticks, datagrams out.
/// `on_event` sees every event with the host (to spawn a joining client's entities, …) and
/// `on_tick` runs after every poll that stepped the world.
pub async fn run_host<W, T>(
    host: &mut Host<W, T::Addr>,
    transport: &mut T,
    mut on_event: impl FnMut(&mut Host<W, T::Addr>, HostEvent<T::Addr>),
    mut on_tick: impl FnMut(&mut Host<W, T::Addr>),
    stop: impl Future<Output = ()>,
) -> io::Result<()>
where
    W: World,
    T: Transport,
{
    let mut timer = tokio::time::interval(POLL_EVERY);
    timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last = Instant::now();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return Ok(()),
            got = transport.recv() => {
                match got {
                    Ok((from, d)) => host.handle(Instant::now().into_std(), from, &d),
                    Err(e) if is_transient(&e) => {}
                    Err(e) => return Err(e),
                }
            }
            now = timer.tick() => {
                let steps = host.tick(now.into_std(), now - last);
                last = now;
                while let Some(ev) = host.poll_event() {
                    on_event(host, ev);
                }
                if steps > 0 {
                    on_tick(host);
                }
            }
        }
        while let Some((to, d)) = host.poll_transmit() {
            if let Err(e) = transport.send(&to, d).await {
                if !is_transient(&e) {
                    return Err(e);
                }
            }
        }
    }
}

/// Drives a client over a transport until `stop` resolves or the session ends for good
/// (kicked, refused, given up). `on_frame` runs after every poll (render there).
pub async fn run_client<W, T>(
    client: &mut Client<W>,
    transport: &mut T,
    host: T::Addr,
    mut on_event: impl FnMut(&mut Client<W>, &ClientEvent),
    mut on_frame: impl FnMut(&mut Client<W>, std::time::Instant),
    stop: impl Future<Output = ()>,
) -> io::Result<()>
where
    W: World,
    T: Transport,
{
    let mut timer = tokio::time::interval(POLL_EVERY);
    timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last = Instant::now();
    client.connect(last.into_std());
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => {
                client.disconnect();
                flush(client, transport, &host).await?;
                return Ok(());
            }
            got = transport.recv() => {
                match got {
                    Ok((from, d)) if from == host => client.handle(Instant::now().into_std(), &d),
                    Ok(_) => {}
                    Err(e) if is_transient(&e) => {}
                    Err(e) => return Err(e),
                }
            }
            now = timer.tick() => {
                client.tick(now.into_std(), now - last);
                last = now;
                on_frame(client, now.into_std());
            }
        }
        let mut ended = false;
        while let Some(ev) = client.poll_event() {
            ended |= matches!(
                ev,
                ClientEvent::Kicked { .. }
                    | ClientEvent::Refused { .. }
                    | ClientEvent::PermanentlyLost
            );
            on_event(client, &ev);
        }
        flush(client, transport, &host).await?;
        if ended {
            return Ok(());
        }
    }
}

async fn flush<W: World, T: Transport>(
    client: &mut Client<W>,
    transport: &mut T,
    host: &T::Addr,
) -> io::Result<()> {
    while let Some(d) = client.poll_transmit() {
        if let Err(e) = transport.send(host, d).await {
            if !is_transient(&e) {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Errors a datagram transport recovers from by itself (an ICMP unreachable reported on the
/// next call, a full buffer, a peer being reconnected).
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::WouldBlock
            | io::ErrorKind::Interrupted
            | io::ErrorKind::NotConnected
            | io::ErrorKind::TimedOut
    )
}
