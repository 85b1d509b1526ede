//! A real `nats-server` (with JetStream) on a loopback port, for cluster tests.

use std::ffi::OsString;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `nats-server -js` process on `127.0.0.1`, with its own store directory; killed on drop.
///
/// The binary comes from the Debian package `nats-server` (`scripts/test.sh` installs it).
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    program: OsString,
    port: u16,
    jetstream: bool,
    store: tempfile::TempDir,
}

/// A free TCP port on 127.0.0.1 (bound and released; good enough for tests on one machine).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port on 127.0.0.1: {e}"))
}

impl NatsServer {
    /// Starts a server with JetStream on a free port and waits until it listens.
    pub fn start() -> NatsServer {
        NatsServer::start_on(free_port(), true)
    }

    /// Starts a server on `port`, with or without JetStream, and waits until it listens.
    pub fn start_on(port: u16, jetstream: bool) -> NatsServer {
        NatsServer::try_start_on("nats-server", port, jetstream).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts `program` (a `nats-server` executable) with JetStream on a free port and waits
    /// until it listens; an error in words when it cannot run or does not listen within 10 s.
    pub fn try_start(program: impl Into<OsString>) -> Result<NatsServer, String> {
        NatsServer::try_start_on(program, free_port(), true)
    }

    fn try_start_on(
        program: impl Into<OsString>,
        port: u16,
        jetstream: bool,
    ) -> Result<NatsServer, String> {
        let store = tempfile::tempdir().map_err(|e| format!("a temp dir for nats-server: {e}"))?;
        let mut s = NatsServer {
            child: None,
            program: program.into(),
            port,
            jetstream,
            store,
        };
        s.spawn()?;
        Ok(s)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let mut cmd = Command::new(&self.program);
        cmd.args(["-a", "127.0.0.1", "-p", &self.port.to_string()]);
        if self.jetstream {
            cmd.arg("-js").arg("-sd").arg(self.store.path());
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot run {} ({e}); scripts/test.sh installs it (apt-get install -y nats-server)",
                    self.program.to_string_lossy()
                )
            })?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                self.child = None;
                return Err(format!(
                    "nats-server exited ({status}) before listening on port {}",
                    self.port
                ));
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(format!(
                    "nats-server did not listen on port {} within 10 s",
                    self.port
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id (`None` once killed).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The store directory (JetStream data survives a [`NatsServer::restart`]).
    pub fn store(&self) -> PathBuf {
        self.store.path().to_path_buf()
    }

    /// Kills the server (as a crash: no goodbye to the clients).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the server's process (`SIGSTOP`) without closing anything: its clients stay
    /// connected, their messages wait in the sockets, and every request (a key-value
    /// compare-and-set, …) waits for an answer until [`NatsServer::thaw`]. Keep it short: the
    /// hubs' heartbeats stop too, and after 5 s they count each other as dead.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Lets a [frozen](NatsServer::freeze) server run again (`SIGCONT`): what waited is
    /// handled in order.
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let Some(pid) = self.pid() else {
            panic!("nats-server is not running: cannot send it {signal}");
        };
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap_or_else(|e| panic!("cannot run kill {signal} {pid}: {e}"));
        assert!(status.success(), "kill {signal} {pid}: {status}");
    }

    /// Starts the server again on the same port with the same store.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn().unwrap_or_else(|e| panic!("{e}"));
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
