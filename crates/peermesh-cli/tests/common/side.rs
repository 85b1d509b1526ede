//! A `peermesh connect --pipe` / `--accept-pipe` process: bytes on stdin and stdout, event
//! lines on stderr (collected and watched).

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::BIN;

/// The longest a pipe test waits for a line or an exit.
const LIMIT: Duration = Duration::from_secs(120);

/// A deterministic byte source (xorshift).
pub struct Gen(pub u64);

impl Gen {
    pub fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            *b = self.0 as u8;
        }
    }
}

/// A `peermesh connect` process whose stderr is collected and watched for lines.
pub struct Side {
    pub child: Child,
    stderr: Arc<Mutex<String>>,
    lines: mpsc::Receiver<String>,
}

impl Side {
    pub fn spawn(url: &str, args: &[&str]) -> Side {
        let mut child = Command::new(BIN)
            .arg("connect")
            .arg(url)
            .args(args)
            .env("RUST_LOG", "peermesh=info")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn peermesh connect");
        let err = child.stderr.take().expect("piped stderr");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, lines) = mpsc::channel();
        let sink = stderr.clone();
        thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                sink.lock()
                    .expect("stderr buffer")
                    .push_str(&format!("{line}\n"));
                let _ = tx.send(line);
            }
        });
        Side {
            child,
            stderr,
            lines,
        }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Waits for a stderr line containing `needle`.
    pub fn wait_for(&self, needle: &str) {
        let deadline = Instant::now() + LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return,
                Ok(_) => {}
                Err(_) => panic!("no {needle:?} on stderr; got:\n{}", self.stderr()),
            }
        }
    }

    /// Waits for the exit, failing the test after `LIMIT`.
    pub fn exit_code(&mut self) -> i32 {
        let deadline = Instant::now() + LIMIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the process did not exit; stderr:\n{}", self.stderr());
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Writes `data` to the side's stdin on a thread, then closes it.
pub fn feed(side: &mut Side, data: Vec<u8>) -> thread::JoinHandle<()> {
    let mut stdin = side.child.stdin.take().expect("piped stdin");
    thread::spawn(move || {
        let _ = stdin.write_all(&data);
    })
}

/// Reads the side's whole stdout on a thread.
pub fn collect(side: &mut Side) -> thread::JoinHandle<Vec<u8>> {
    let mut stdout = side.child.stdout.take().expect("piped stdout");
    thread::spawn(move || {
        let mut all = Vec::new();
        let _ = stdout.read_to_end(&mut all);
        all
    })
}
