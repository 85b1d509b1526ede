//! The fault proxy: one listener, a task per forwarded connection, and an optional schedule.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Cut every connection `period` after the previous cut (the first at `first`), then refuse
/// new connections for `down`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Time from the proxy's start to the first cut (spread clients by giving each its own).
    pub first: Duration,
    /// Time between cuts.
    pub period: Duration,
    /// How long new connections are refused after each cut.
    pub down: Duration,
}

/// Counts of what the proxy did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// Connections forwarded.
    pub accepted: u64,
    /// Connections reset by a cut.
    pub cut: u64,
    /// Connections reset at accept because the proxy was down.
    pub refused: u64,
}

#[derive(Default)]
struct State {
    conns: Mutex<HashMap<u64, CancellationToken>>,
    down_until: Mutex<Option<Instant>>,
    next: AtomicU64,
    accepted: AtomicU64,
    cut: AtomicU64,
    refused: AtomicU64,
    changed: Notify,
}

/// A TCP proxy on 127.0.0.1 that can reset its connections; see the [crate docs](crate).
/// Dropping it stops the listener and resets every connection.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<State>,
    stop: CancellationToken,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("conns", &self.conns.lock().len())
            .finish()
    }
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream`; with a schedule, cuts on it.
    pub async fn start(upstream: SocketAddr, schedule: Option<Schedule>) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::default());
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(listener, upstream, state.clone(), stop.clone()));
        if let Some(s) = schedule {
            tokio::spawn(run_schedule(s, state.clone(), stop.clone()));
        }
        Ok(Self { addr, state, stop })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Resets every forwarded connection now and refuses new ones for `down`; returns how many
    /// were reset.
    pub fn cut(&self, down: Duration) -> usize {
        cut(&self.state, down)
    }

    /// Connections being forwarded now.
    pub fn connections(&self) -> usize {
        self.state.conns.lock().len()
    }

    /// Waits until at least `n` connections are being forwarded.
    pub async fn wait_connections(&self, n: usize) {
        loop {
            let changed = self.state.changed.notified();
            if self.connections() >= n {
                return;
            }
            changed.await;
        }
    }

    /// What the proxy did so far.
    pub fn stats(&self) -> FaultStats {
        FaultStats {
            accepted: self.state.accepted.load(Ordering::Relaxed),
            cut: self.state.cut.load(Ordering::Relaxed),
            refused: self.state.refused.load(Ordering::Relaxed),
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        cut(&self.state, Duration::ZERO);
    }
}

fn cut(state: &State, down: Duration) -> usize {
    if !down.is_zero() {
        *state.down_until.lock() = Some(Instant::now() + down);
    }
    let conns: Vec<CancellationToken> = state.conns.lock().drain().map(|(_, t)| t).collect();
    for t in &conns {
        t.cancel();
    }
    state.cut.fetch_add(conns.len() as u64, Ordering::Relaxed);
    state.changed.notify_waiters();
    conns.len()
}

async fn run_schedule(s: Schedule, state: Arc<State>, stop: CancellationToken) {
    let mut next = Instant::now() + s.first;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(next) => {}
        }
        cut(&state, s.down);
        next += s.period.max(Duration::from_millis(1));
    }
}

fn is_down(state: &State) -> bool {
    state
        .down_until
        .lock()
        .is_some_and(|until| Instant::now() < until)
}

/// Resets a socket: SO_LINGER 0, then drop (the peer sees a connection reset).
fn reset(s: TcpStream) {
    if let Err(e) = s.set_zero_linger() {
        tracing::debug!(error = %e, "could not set SO_LINGER 0; closing instead");
    }
    drop(s);
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    state: Arc<State>,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let client = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::debug!(error = %e, "fault proxy: accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if is_down(&state) {
            state.refused.fetch_add(1, Ordering::Relaxed);
            reset(client);
            continue;
        }
        let id = state.next.fetch_add(1, Ordering::Relaxed);
        let token = stop.child_token();
        state.conns.lock().insert(id, token.clone());
        state.accepted.fetch_add(1, Ordering::Relaxed);
        state.changed.notify_waiters();
        tokio::spawn(forward(client, upstream, token, state.clone(), id));
    }
}

async fn forward(
    mut client: TcpStream,
    upstream: SocketAddr,
    token: CancellationToken,
    state: Arc<State>,
    id: u64,
) {
    let _ = client.set_nodelay(true);
    let server = tokio::select! {
        _ = token.cancelled() => None,
        s = TcpStream::connect(upstream) => s.ok(),
    };
    if let Some(mut server) = server {
        let _ = server.set_nodelay(true);
        let copied = tokio::select! {
            _ = token.cancelled() => None,
            r = tokio::io::copy_bidirectional(&mut client, &mut server) => Some(r),
        };
        if copied.is_none() {
            reset(server);
            reset(client);
        }
    } else {
        reset(client);
    }
    state.conns.lock().remove(&id);
    state.changed.notify_waiters();
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn echo() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = l.local_addr().unwrap_or_else(|e| panic!("{e}"));
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn roundtrip(addr: SocketAddr) -> io::Result<()> {
        let mut c = TcpStream::connect(addr).await?;
        c.write_all(b"x").await?;
        let mut b = [0u8; 1];
        c.read_exact(&mut b).await?;
        Ok(())
    }

    #[tokio::test]
    async fn a_cut_resets_and_refuses_for_a_while() {
        let proxy = FaultProxy::start(echo().await, None)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut c = TcpStream::connect(proxy.addr())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        c.write_all(b"a").await.unwrap_or_else(|e| panic!("{e}"));
        let mut b = [0u8; 1];
        c.read_exact(&mut b).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(proxy.cut(Duration::from_millis(300)), 1);
        let r = c.read(&mut b).await;
        assert!(
            matches!(&r, Err(e) if e.kind() == io::ErrorKind::ConnectionReset)
                || matches!(r, Ok(0)),
            "{r:?}"
        );
        assert!(roundtrip(proxy.addr()).await.is_err(), "refused while down");
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert!(roundtrip(proxy.addr()).await.is_ok(), "back up");
        let st = proxy.stats();
        assert_eq!((st.cut, st.refused), (1, 1));
    }

    #[tokio::test]
    async fn a_schedule_cuts_periodically() {
        let s = Schedule {
            first: Duration::from_millis(50),
            period: Duration::from_millis(100),
            down: Duration::from_millis(10),
        };
        let proxy = FaultProxy::start(echo().await, Some(s))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut cuts = 0;
        while cuts < 3 {
            let mut c = match TcpStream::connect(proxy.addr()).await {
                Ok(c) => c,
                Err(_) => continue,
            };
            let mut b = [0u8; 1];
            if c.write_all(b"a").await.is_ok() && c.read_exact(&mut b).await.is_ok() {
                // Wait for the cut.
                let _ = c.read(&mut b).await;
                cuts += 1;
            } else {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        assert!(proxy.stats().cut >= 3);
    }
}
