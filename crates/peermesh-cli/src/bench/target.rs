//! The servers under test: a peermesh hub or the Socket.IO reference, spawned as child processes
//! or attached to by URL, and what `/proc` says about them (RSS, CPU time).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use peermesh_proto::Encoding;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::client::Endpoint;
use super::dialect::Dialect;
use super::ws::WsUrl;

/// How to reach (or start) one kind of server.
#[derive(Debug, Clone)]
pub(crate) enum Launch {
    /// Spawn `BIN serve --listen 127.0.0.1:0 ARGS…` and read its `listening` line.
    Hub {
        /// The `peermesh` executable.
        bin: PathBuf,
        /// Extra arguments after `serve`.
        args: Vec<String>,
    },
    /// Spawn `NODE server.js` in the reference directory and read its `listening` line.
    SocketIo {
        /// The node executable.
        node: String,
        /// The directory holding `server.js` and `node_modules`.
        dir: PathBuf,
        /// Start it with `--recovery` (Socket.IO connection state recovery).
        recovery: bool,
    },
    /// A server that is already running.
    Running {
        /// Its WebSocket URL.
        url: String,
        /// Its process id, for RSS and CPU figures.
        pid: Option<u32>,
    },
}

/// A server ready to be measured.
pub(crate) struct Server {
    /// Its WebSocket endpoint (with `?enc=` for peermesh) and protocol.
    pub(crate) endpoint: Endpoint,
    /// Its process id, when known.
    pub(crate) pid: Option<u32>,
    child: Option<Child>,
}

impl Server {
    /// Starts (or attaches to) a server.
    pub(crate) async fn start(
        launch: &Launch,
        dialect: Dialect,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let (ws, pid, child) = match launch {
            Launch::Running { url, pid } => (url.clone(), *pid, None),
            Launch::Hub { bin, args } => {
                let mut cmd = Command::new(bin);
                cmd.arg("serve")
                    .arg("--listen")
                    .arg("127.0.0.1:0")
                    .args(args);
                if std::env::var_os("RUST_LOG").is_none() {
                    cmd.env("RUST_LOG", "warn");
                }
                // A worker-thread setting meant for the load generator is not the hub's.
                cmd.env_remove("TOKIO_WORKER_THREADS");
                let (ws, pid, child) = spawn_and_read_line(cmd, timeout)
                    .await
                    .with_context(|| format!("starting the hub `{} serve`", bin.display()))?;
                (ws, Some(pid), Some(child))
            }
            Launch::SocketIo {
                node,
                dir,
                recovery,
            } => {
                if !dir.join("node_modules").join("socket.io").is_dir() {
                    bail!(
                        "{} has no node_modules/socket.io: run `npm ci` there first \
                         (or pass --no-reference)",
                        dir.display()
                    );
                }
                let mut cmd = Command::new(node);
                cmd.arg("server.js")
                    .arg("--port")
                    .arg("0")
                    .arg("--exit-on-stdin-close")
                    .current_dir(dir);
                if *recovery {
                    cmd.arg("--recovery");
                }
                let (ws, pid, child) = spawn_and_read_line(cmd, timeout)
                    .await
                    .with_context(|| format!("starting `{node} server.js` in {}", dir.display()))?;
                (ws, Some(pid), Some(child))
            }
        };
        let mut url = WsUrl::parse(&ws)?;
        if let Dialect::Peermesh(enc) = dialect {
            let path = url.target.split('?').next().unwrap_or("/ws").to_owned();
            url = url.with_target(&match enc {
                Encoding::Json => path,
                Encoding::MsgPack => format!("{path}?enc=msgpack"),
            });
        }
        Ok(Self {
            endpoint: Endpoint { url, dialect },
            pid,
            child,
        })
    }

    /// The server's resident set size in KiB (`VmRSS`), when its pid is known.
    pub(crate) fn rss_kib(&self) -> Option<u64> {
        self.pid.and_then(rss_kib)
    }

    /// The processes a measurement window reads the CPU time of: this server.
    pub(crate) fn measured(&self) -> Measured {
        Measured {
            servers: self.pid.into_iter().collect(),
            broker: Vec::new(),
        }
    }

    /// Where clients of a scenario connect (this server only), and whose CPU is read.
    pub(crate) fn targets(&self) -> Targets {
        Targets {
            endpoints: vec![self.endpoint.clone()],
            measured: self.measured(),
        }
    }

    /// The address of the server's HTTP side (`/status.json`): the WebSocket's host.
    pub(crate) fn http_host(&self) -> &str {
        &self.endpoint.url.host
    }

    /// Kills a spawned server at once with SIGKILL, as a crash (no goodbye to anyone).
    pub(crate) async fn kill(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
        }
    }

    /// Stops a spawned server (no-op for an attached one).
    pub(crate) async fn stop(mut self) {
        if let Some(mut child) = self.child.take() {
            // Closing stdin stops the Socket.IO server; the hub gets a kill.
            drop(child.stdin.take());
            if tokio::time::timeout(Duration::from_millis(300), child.wait())
                .await
                .is_err()
            {
                let _ = child.start_kill();
                let _ = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
            }
        }
    }
}

/// The processes whose CPU time a measurement window reads.
#[derive(Debug, Clone, Default)]
pub(crate) struct Measured {
    /// The servers under test (several hubs of a cluster are summed).
    pub(crate) servers: Vec<u32>,
    /// A message broker they use (the cluster's nats-server), reported apart.
    pub(crate) broker: Vec<u32>,
}

impl Measured {
    /// User and system CPU time of the servers, summed (`None` when none can be read).
    pub(crate) fn server_cpu(&self) -> Option<(Duration, Duration)> {
        sum_cpu(&self.servers)
    }

    /// User + system CPU time of the broker (`None` without one).
    pub(crate) fn broker_cpu(&self) -> Option<Duration> {
        sum_cpu(&self.broker).map(|(u, s)| u + s)
    }
}

fn sum_cpu(pids: &[u32]) -> Option<(Duration, Duration)> {
    pids.iter()
        .filter_map(|p| cpu_times(&p.to_string()))
        .fold(None, |acc, (u, s)| {
            let (au, as_) = acc.unwrap_or_default();
            Some((au + u, as_ + s))
        })
}

/// Where the clients of a scenario connect, and whose CPU time is measured: one server, or
/// the hubs of a cluster (clients are spread over `endpoints` as the scenario says).
#[derive(Debug, Clone)]
pub(crate) struct Targets {
    /// The servers' endpoints (all in the same dialect).
    pub(crate) endpoints: Vec<Endpoint>,
    /// The processes measured.
    pub(crate) measured: Measured,
}

impl Targets {
    /// The protocol the servers speak.
    pub(crate) fn dialect(&self) -> Dialect {
        self.endpoints
            .first()
            .map_or(Dialect::Peermesh(Encoding::Json), |e| e.dialect)
    }

    /// The endpoint of client number `i` when clients go round robin over the servers,
    /// starting `shift` servers further.
    pub(crate) fn endpoint(&self, i: usize, shift: usize) -> &Endpoint {
        &self.endpoints[(i + shift) % self.endpoints.len()]
    }
}

/// A plain HTTP/1.0 GET on loopback; the body.
pub(crate) async fn http_get(host: &str, path: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(host).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf);
    Ok(text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default())
}

async fn spawn_and_read_line(
    mut cmd: Command,
    timeout: Duration,
) -> anyhow::Result<(String, u32, Child)> {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let mut child = cmd.spawn().context("spawning the server")?;
    let pid = child.id().context("the server exited at once")?;
    let stdout = child.stdout.take().context("no stdout pipe")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = match tokio::time::timeout(timeout, lines.next_line()).await {
        Ok(Ok(Some(line))) => line,
        Ok(Ok(None)) => bail!("the server exited before printing its address"),
        Ok(Err(e)) => bail!("reading the server's stdout: {e}"),
        Err(_) => bail!("the server printed no address within {timeout:?}"),
    };
    // Keep draining stdout so the server never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let v: serde_json::Value = serde_json::from_str(&line)
        .with_context(|| format!("the server's first line is not JSON: {line:?}"))?;
    if v["type"] != "listening" {
        bail!("the server's first line is not a `listening` event: {line}");
    }
    let ws = match (v["ws"].as_str(), v["addr"].as_str()) {
        (Some(ws), _) => ws.to_owned(),
        (None, Some(addr)) => format!("ws://{addr}/ws"),
        _ => bail!("the `listening` line has neither `ws` nor `addr`: {line}"),
    };
    Ok((ws, pid, child))
}

/// `VmRSS` of a process in KiB.
pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// User + system CPU time of a process (`self` for this one), from `/proc/PID/stat`.
pub(crate) fn cpu_time(pid: &str) -> Option<Duration> {
    cpu_times(pid).map(|(user, sys)| user + sys)
}

/// User and system CPU time of a process (`self` for this one), from `/proc/PID/stat`.
pub(crate) fn cpu_times(pid: &str) -> Option<(Duration, Duration)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let mut fields = rest.split(' ');
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after ") ".
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // USER_HZ is 100 on every Linux architecture this runs on.
    Some((
        Duration::from_millis(utime * 10),
        Duration::from_millis(stime * 10),
    ))
}

/// Finds the Socket.IO reference directory: the flag, `./bench/socketio`, or the source tree's.
pub(crate) fn socketio_dir(flag: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    let cwd = PathBuf::from("bench/socketio");
    if cwd.join("server.js").is_file() {
        return cwd;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/socketio")
}

/// A short description of the machine: CPU model and core count.
pub(crate) fn machine() -> (String, usize) {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (model, cores)
}

/// The version printed by `node --version`, if node runs.
pub(crate) async fn node_version(node: &str) -> Option<String> {
    let out = Command::new(node).arg("--version").output().await.ok()?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The installed socket.io version, from its package.json.
pub(crate) fn socketio_version(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("node_modules/socket.io/package.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["version"].as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_stats() {
        let me = std::process::id();
        assert!(rss_kib(me).is_some_and(|k| k > 0));
        assert!(cpu_time("self").is_some());
    }
}
