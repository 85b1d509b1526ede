//! A lossless in-process transport: a hub of bounded channels, one endpoint per peer.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::Transport;

/// Datagrams queued per endpoint; beyond that they are dropped, as a full socket buffer would.
pub const QUEUE: usize = 4096;

type Routes = Arc<Mutex<HashMap<u32, mpsc::Sender<(u32, Bytes)>>>>;

/// Hands out connected endpoints.
#[derive(Debug, Clone, Default)]
pub struct MemoryNet {
    routes: Routes,
}

/// One endpoint of a [`MemoryNet`]; peers are addressed by their number.
#[derive(Debug)]
pub struct Memory {
    me: u32,
    routes: Routes,
    rx: mpsc::Receiver<(u32, Bytes)>,
}

impl MemoryNet {
    /// An empty network.
    pub fn new() -> Self {
        Self::default()
    }

    /// An endpoint numbered `addr` (replacing an earlier one of that number).
    pub fn endpoint(&self, addr: u32) -> Memory {
        let (tx, rx) = mpsc::channel(QUEUE);
        if let Ok(mut r) = self.routes.lock() {
            r.insert(addr, tx);
        }
        Memory {
            me: addr,
            routes: self.routes.clone(),
            rx,
        }
    }
}

impl Transport for Memory {
    type Addr = u32;

    async fn send(&mut self, to: &u32, datagram: Bytes) -> io::Result<()> {
        let tx = self.routes.lock().ok().and_then(|r| r.get(to).cloned());
        if let Some(tx) = tx {
            let _ = tx.try_send((self.me, datagram));
        }
        Ok(())
    }

    async fn recv(&mut self) -> io::Result<(u32, Bytes)> {
        self.rx
            .recv()
            .await
            .ok_or_else(|| io::Error::new(io::ErrorKind::BrokenPipe, "the memory network is gone"))
    }
}
