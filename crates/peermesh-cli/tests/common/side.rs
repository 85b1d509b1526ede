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

/// `bob` (on `bob_url`) accepts a pipe from `alice` (on `alice_url`); 3 MiB of `Gen(seed)`
/// bytes go to bob and 15 KB back, both must arrive byte for byte and both ends exit 0.
/// Returns alice's stderr.
pub fn exchange(alice_url: &str, bob_url: &str, seed: u64) -> String {
    let mut bob = Side::spawn(bob_url, &["--id", "bob", "--accept-pipe"]);
    bob.wait_for("\"type\":\"connected\"");
    let mut alice = Side::spawn(alice_url, &["--id", "alice", "--pipe", "bob"]);
    let mut to_bob = vec![0u8; 3 << 20];
    Gen(seed).fill(&mut to_bob);
    let to_alice = b"thanks, got it\n".repeat(1000);
    let w1 = feed(&mut alice, to_bob.clone());
    let w2 = feed(&mut bob, to_alice.clone());
    let at_bob = collect(&mut bob);
    let at_alice = collect(&mut alice);
    assert_eq!(alice.exit_code(), 0, "alice's stderr:\n{}", alice.stderr());
    assert_eq!(bob.exit_code(), 0, "bob's stderr:\n{}", bob.stderr());
    w1.join().expect("writer");
    w2.join().expect("writer");
    assert!(
        at_bob.join().expect("reader") == to_bob,
        "bob's stdout is exactly alice's stdin"
    );
    assert_eq!(at_alice.join().expect("reader"), to_alice);
    alice.stderr()
}
