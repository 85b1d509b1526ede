//! A `peermesh` process driven through stdin and read through stdout, line by line, for the
//! end-to-end tests. Every read has a deadline (`LIMIT`): a missing line fails the test with
//! the process's stderr instead of hanging it.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod side;

pub const LIMIT: Duration = Duration::from_secs(15);
pub const BIN: &str = env!("CARGO_BIN_EXE_peermesh");

/// A running `peermesh` process.
pub struct Proc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Proc {
    pub fn spawn(name: &str, args: &[&str]) -> Proc {
        let mut child = Command::new(BIN)
            .args(args)
            .env("RUST_LOG", "peermesh=debug,peermesh_client=debug")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn peermesh");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().expect("piped stderr");
        let sink = stderr.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                sink.lock().expect("stderr buffer").push_str(&text);
            }
        });
        let stdin = child.stdin.take();
        Proc {
            name: name.into(),
            child,
            stdin,
            lines,
            stderr,
        }
    }

    pub fn fail(&self, why: &str) -> ! {
        let stderr = self.stderr.lock().map(|s| s.clone()).unwrap_or_default();
        panic!(
            "{}: {why}\n--- stderr of {} ---\n{stderr}",
            self.name, self.name
        );
    }

    pub fn send(&mut self, line: &str) {
        let Some(stdin) = self.stdin.as_mut() else {
            self.fail("stdin already closed");
        };
        if writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .is_err()
        {
            self.fail(&format!("cannot write {line}"));
        }
    }

    pub fn send_json(&mut self, v: Value) {
        self.send(&v.to_string());
    }

    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// The next stdout line, parsed; `None` at end of output.
    pub fn next(&self, deadline: Instant) -> Option<Value> {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(left) {
            Ok(line) => match serde_json::from_str(&line) {
                Ok(v) => Some(v),
                Err(e) => self.fail(&format!("stdout line is not JSON ({e}): {line}")),
            },
            Err(RecvTimeoutError::Disconnected) => None,
            Err(RecvTimeoutError::Timeout) => self.fail("no line within the time limit"),
        }
    }

    /// The next stdout line, which must exist.
    pub fn line(&self) -> Value {
        match self.next(Instant::now() + LIMIT) {
            Some(v) => v,
            None => self.fail("stdout ended"),
        }
    }

    /// Skips lines until one has `"type": ty`, and returns it.
    pub fn expect_type(&self, ty: &str) -> Value {
        let deadline = Instant::now() + LIMIT;
        loop {
            match self.next(deadline) {
                Some(v) if v["type"] == ty => return v,
                Some(_) => continue,
                None => self.fail(&format!("stdout ended before a {ty:?} line")),
            }
        }
    }

    /// Closes stdin (unless already closed), collects the remaining lines and the exit status.
    pub fn finish(mut self) -> (Vec<Value>, ExitStatus) {
        self.close_stdin();
        let deadline = Instant::now() + LIMIT;
        let mut rest = Vec::new();
        while let Some(v) = self.next(deadline) {
            rest.push(v);
        }
        match self.child.wait() {
            Ok(status) => (rest, status),
            Err(e) => self.fail(&format!("wait failed: {e}")),
        }
    }

    /// Like [`Proc::finish`], also returning everything the process wrote to stderr.
    pub fn finish_keep_stderr(self) -> (Vec<Value>, (ExitStatus, String)) {
        let stderr = self.stderr.clone();
        let (lines, status) = self.finish();
        // The reader thread may still be copying the last bytes: wait for it briefly.
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut text = stderr.lock().map(|s| s.clone()).unwrap_or_default();
        while text.is_empty() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
            text = stderr.lock().map(|s| s.clone()).unwrap_or_default();
        }
        (lines, (status, text))
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill();
        }
    }
}

/// A plain HTTP GET on `addr` (`127.0.0.1:PORT`), returning the body.
pub fn http_get(addr: &str, path: &str) -> String {
    use std::io::Write;
    let mut s =
        std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes())
        .unwrap_or_else(|e| panic!("write: {e}"));
    let mut out = String::new();
    s.read_to_string(&mut out)
        .unwrap_or_else(|e| panic!("read: {e}"));
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}
