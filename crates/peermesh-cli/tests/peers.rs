//! End-to-end tests of `peermesh peers`: real processes peering over loopback TCP, driven
//! through stdin and observed through stdout, plus a raw TCP socket for bad input.
//!
//! Every expected line is awaited with a deadline (`PATIENCE`); a line that does not come fails
//! the test with the process's stderr. Nothing synchronises by sleeping.

use std::fs::File;
use std::io::{BufRead as _, BufReader, Read as _, Seek as _, Write as _};
use std::net::TcpStream;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use peermesh_mesh::wire::p2p_node::{encode, DEFAULT_MAGIC};
use serde_json::{json, Value};

const PATIENCE: Duration = Duration::from_secs(15);
const EXE: &str = env!("CARGO_BIN_EXE_peermesh");

/// One `peermesh peers` process.
struct Node {
    label: &'static str,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Receiver<String>,
    stderr: File,
    /// Its listening address, from the first line.
    addr: String,
}

impl Node {
    fn start(label: &'static str, extra: &[&str]) -> Node {
        let stderr = tempfile::tempfile().expect("a temporary file for stderr");
        let mut child = Command::new(EXE)
            .arg("peers")
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .env("RUST_LOG", "peermesh=debug,peermesh_mesh=debug")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr.try_clone().expect("clone the stderr file"))
            .spawn()
            .expect("start peermesh peers");
        let out = child.stdout.take().expect("stdout is piped");
        let (tx, stdout) = channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(out);
            let mut text = String::new();
            while matches!(reader.read_line(&mut text), Ok(n) if n > 0) {
                if tx.send(text.trim_end().to_owned()).is_err() {
                    return;
                }
                text.clear();
            }
        });
        let stdin = child.stdin.take();
        let mut node = Node {
            label,
            child,
            stdin,
            stdout,
            stderr,
            addr: String::new(),
        };
        let first = node.read();
        if first["type"] != "listening" {
            node.die(&format!("the first line is not `listening`: {first}"));
        }
        match first["addr"].as_str() {
            Some(a) if a.starts_with("127.0.0.1:") && !a.ends_with(":0") => {
                a.clone_into(&mut node.addr)
            }
            _ => node.die(&format!("no usable address in {first}")),
        }
        node
    }

    fn die(&mut self, why: &str) -> ! {
        let mut log = String::new();
        let _ = self.stderr.rewind();
        let _ = self.stderr.read_to_string(&mut log);
        panic!(
            "[{}] {why}\n----- stderr of {} -----\n{log}",
            self.label, self.label
        );
    }

    /// Writes one stdin line.
    fn write(&mut self, text: &str) {
        let ok = match self.stdin.as_mut() {
            Some(pipe) => writeln!(pipe, "{text}").and_then(|()| pipe.flush()).is_ok(),
            None => false,
        };
        if !ok {
            self.die(&format!("cannot write {text:?} to stdin"));
        }
    }

    fn cmd(&mut self, command: Value) {
        self.write(&command.to_string());
    }

    /// The next stdout line as JSON, or `None` when stdout ended.
    fn try_read(&mut self, until: Instant) -> Option<Value> {
        let wait = until.saturating_duration_since(Instant::now());
        match self.stdout.recv_timeout(wait) {
            Ok(text) => match serde_json::from_str(&text) {
                Ok(v) => Some(v),
                Err(e) => self.die(&format!("stdout line {text:?} is not JSON: {e}")),
            },
            Err(RecvTimeoutError::Disconnected) => None,
            Err(RecvTimeoutError::Timeout) => self.die("no stdout line in time"),
        }
    }

    fn read(&mut self) -> Value {
        match self.try_read(Instant::now() + PATIENCE) {
            Some(v) => v,
            None => self.die("stdout ended early"),
        }
    }

    /// Reads lines until one of type `ty`, failing on any other type that is not a `log`.
    fn read_type(&mut self, ty: &str) -> Value {
        loop {
            let v = self.read();
            match v["type"].as_str() {
                Some(t) if t == ty => return v,
                Some("log") => {}
                _ => self.die(&format!("expected a {ty:?} line, got {v}")),
            }
        }
    }

    /// Like [`Node::read_type`], also skipping lines of type `skip`.
    fn read_type_skipping(&mut self, ty: &str, skip: &str) -> Value {
        loop {
            let v = self.read();
            match v["type"].as_str() {
                Some(t) if t == ty => return v,
                Some(t) if t == "log" || t == skip => {}
                _ => self.die(&format!("expected a {ty:?} line, got {v}")),
            }
        }
    }

    /// Closes stdin and returns every further line and the exit status.
    fn end(mut self) -> (Vec<Value>, ExitStatus) {
        drop(self.stdin.take());
        let until = Instant::now() + PATIENCE;
        let mut rest = Vec::new();
        while let Some(v) = self.try_read(until) {
            rest.push(v);
        }
        match self.child.wait() {
            Ok(status) => (rest, status),
            Err(e) => self.die(&format!("cannot wait for the process: {e}")),
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn without_logs(lines: Vec<Value>) -> Vec<Value> {
    lines.into_iter().filter(|v| v["type"] != "log").collect()
}

#[test]
fn knock_and_answer_with_a_selective_send() {
    let mut a = Node::start("a", &[]);
    let mut b = Node::start("b", &[]);
    let mut c = Node::start("c", &[]);
    let (b_addr, c_addr) = (b.addr.clone(), c.addr.clone());

    a.cmd(json!({"op": "add_active", "hosts": [b_addr, c_addr], "req": 1}));
    assert_eq!(a.read_type("ok"), json!({"type": "ok", "req": 1}));
    let mut connected = [a.read_type("peer_connect"), a.read_type("peer_connect")];
    connected.sort_by_key(|v| v["peer"].as_str().map(str::to_owned));
    let mut want = [
        json!({"type": "peer_connect", "peer": b_addr}),
        json!({"type": "peer_connect", "peer": c_addr}),
    ];
    want.sort_by_key(|v| v["peer"].as_str().map(str::to_owned));
    assert_eq!(connected, want);
    // Each side names a's connection by its ephemeral port, announced exactly once.
    let a_on_b = b.read_type("peer_connect")["peer"].clone();
    let a_on_c = c.read_type("peer_connect")["peer"].clone();
    assert!(a_on_b.as_str().is_some_and(|p| p.starts_with("127.0.0.1:")));

    a.cmd(
        json!({"op": "set_property", "peer": b_addr, "key": "role", "value": "answerer", "req": 2}),
    );
    assert_eq!(a.read_type("ok"), json!({"type": "ok", "req": 2}));
    a.cmd(json!({"op": "set_property", "peer": c_addr, "key": "role", "value": "quiet", "req": 3}));
    assert_eq!(a.read_type("ok"), json!({"type": "ok", "req": 3}));

    // number 2, but only b has role=answerer: b alone gets the knock.
    a.cmd(
        json!({"op": "send", "number": 2, "property": "role", "values": ["ANSWERER"],
                 "command": "knock", "payload_hex": "0102ff", "answer": "answer",
                 "timeout_ms": 10000, "req": 4}),
    );
    let sent = a.read_type("sent");
    let wait = sent["wait"]
        .as_u64()
        .unwrap_or_else(|| a.die("no wait in `sent`"));
    assert_eq!(
        sent,
        json!({"type": "sent", "req": 4, "peers": [b_addr], "wait": wait})
    );
    assert_eq!(
        b.read_type("message"),
        json!({"type": "message", "peer": a_on_b, "command": "knock", "payload_hex": "0102ff"})
    );
    b.cmd(json!({"op": "reply", "peer": a_on_b, "command": "answer", "payload_hex": "beef", "req": 1}));
    assert_eq!(b.read_type("ok"), json!({"type": "ok", "req": 1}));
    assert_eq!(
        a.read_type("answer"),
        json!({"type": "answer", "wait": wait, "peer": b_addr, "payload_hex": "beef"})
    );
    // The answering frame prints as `answer` only: the next line is the end of the wait.
    assert_eq!(
        a.read_type("answers_done"),
        json!({"type": "answers_done", "wait": wait, "missing": []})
    );

    // To every connected peer; nobody answers, so both are missing after the timeout.
    a.cmd(json!({"op": "send", "command": "knock", "answer": "answer", "timeout_ms": 300}));
    let sent = a.read_type("sent");
    let wait2 = sent["wait"]
        .as_u64()
        .unwrap_or_else(|| a.die("no wait in `sent`"));
    assert_ne!(wait2, wait);
    let mut both = vec![b_addr.clone(), c_addr.clone()];
    both.sort();
    assert_eq!(sent, json!({"type": "sent", "peers": both, "wait": wait2}));
    let empty = json!({"type": "message", "command": "knock", "payload_hex": ""});
    let mut got_b = b.read_type("message");
    let mut got_c = c.read_type("message");
    assert_eq!(got_b["peer"], a_on_b);
    assert_eq!(got_c["peer"], a_on_c);
    for got in [&mut got_b, &mut got_c] {
        if let Some(o) = got.as_object_mut() {
            o.remove("peer");
        }
        assert_eq!(*got, empty);
    }
    assert_eq!(
        a.read_type("answers_done"),
        json!({"type": "answers_done", "wait": wait2, "missing": both})
    );

    // A message that answers nothing prints as a message.
    c.cmd(json!({"op": "reply", "peer": a_on_c, "command": "answer", "payload_hex": "00"}));
    assert_eq!(
        a.read_type("message"),
        json!({"type": "message", "peer": c_addr, "command": "answer", "payload_hex": "00"})
    );

    a.cmd(json!({"op": "peers", "req": 5}));
    let listed = a.read_type("peers");
    assert_eq!(listed["req"], 5);
    let entries = listed["peers"].as_array().cloned().unwrap_or_default();
    let summary: Vec<Value> = entries
        .iter()
        .map(|p| json!([p["peer"], p["state"], p["direction"], p["properties"]]))
        .collect();
    let mut expected = vec![
        json!([b_addr, "connected", "outbound", {"role": "answerer"}]),
        json!([c_addr, "connected", "outbound", {"role": "quiet"}]),
    ];
    expected.sort_by_key(|v| v[0].as_str().map(str::to_owned));
    assert_eq!(summary, expected);
    assert!(entries.iter().all(|p| p["idle_ms"].is_u64()), "{listed}");

    // End of a's input: it closes both connections and says so.
    let (rest, status) = a.end();
    assert!(status.success(), "{status}");
    let mut ends: Vec<Value> = without_logs(rest);
    ends.sort_by_key(|v| v["peer"].as_str().map(str::to_owned));
    let mut want: Vec<Value> = both
        .iter()
        .map(|p| json!({"type": "peer_end", "peer": p, "reason": "shutting down"}))
        .collect();
    want.sort_by_key(|v| v["peer"].as_str().map(str::to_owned));
    assert_eq!(ends, want);
    for (node, a_name) in [(b, a_on_b), (c, a_on_c)] {
        let mut node = node;
        let end = node.read_type("peer_end");
        assert_eq!(end["peer"], a_name);
        let (rest, status) = node.end();
        assert!(status.success(), "{status}");
        assert!(without_logs(rest).is_empty());
    }
}

#[test]
fn bad_lines_and_unknown_peers_get_errors() {
    let mut a = Node::start("a", &[]);
    let long = format!(r#"{{"op":"peers","pad":"{}"}}"#, "x".repeat(4 << 20));
    let lines: Vec<(String, &str, Option<u64>)> = vec![
        ("not json".into(), "bad_command", None),
        (r#"{"op":"fly","req":1}"#.into(), "bad_command", Some(1)),
        (
            r#"{"op":"peers","verbose":true,"req":2}"#.into(),
            "bad_command",
            Some(2),
        ),
        (
            r#"{"op":"send","command":"knock","payload_hex":"0g","req":3}"#.into(),
            "bad_command",
            Some(3),
        ),
        (
            r#"{"op":"send","command":"a_very_long_cmd","req":4}"#.into(),
            "bad_command",
            Some(4),
        ),
        (
            r#"{"op":"reply","peer":"127.0.0.1","command":"x","req":5}"#.into(),
            "bad_command",
            Some(5),
        ),
        (long, "bad_command", None),
        (
            r#"{"op":"reply","peer":"127.0.0.1:9","command":"x","req":6}"#.into(),
            "unknown_peer",
            Some(6),
        ),
        (
            r#"{"op":"set_property","peer":"127.0.0.1:9","key":"k","value":1,"req":7}"#.into(),
            "unknown_peer",
            Some(7),
        ),
        (
            r#"{"op":"set_state","peer":"127.0.0.1:9","state":"x","req":8}"#.into(),
            "unknown_peer",
            Some(8),
        ),
        (
            r#"{"op":"del_active","peer":"127.0.0.1:9"}"#.into(),
            "unknown_peer",
            None,
        ),
    ];
    for (text, _, _) in &lines {
        a.write(text);
    }
    a.write("");
    a.write("   ");
    a.write(r#"{"op":"peers","req":9}"#);
    for (text, code, req) in &lines {
        let e = a.read_type("error");
        let shown: String = text.chars().take(80).collect();
        assert_eq!(e["code"], *code, "{shown}: {e}");
        assert_eq!(e.get("req").and_then(Value::as_u64), *req, "{shown}: {e}");
        assert!(
            e["message"].as_str().is_some_and(|m| m.len() > 10),
            "{shown}: {e}"
        );
    }
    // Nothing was changed and the empty lines printed nothing.
    assert_eq!(
        a.read_type("peers"),
        json!({"type": "peers", "req": 9, "peers": []})
    );
    let (rest, status) = a.end();
    assert!(status.success(), "{status}");
    assert_eq!(without_logs(rest), Vec::<Value>::new());
}

#[test]
fn end_of_input_waits_for_the_answers() {
    let mut a = Node::start("a", &[]);
    let mut b = Node::start("b", &[]);
    let b_addr = b.addr.clone();
    a.cmd(json!({"op": "add_active", "hosts": [b_addr]}));
    assert_eq!(
        a.read_type("peer_connect"),
        json!({"type": "peer_connect", "peer": b_addr})
    );
    a.cmd(
        json!({"op": "send", "command": "q", "payload_hex": "aa", "answer": "a",
                 "timeout_ms": 10000, "req": 1}),
    );
    let sent = a.read_type("sent");
    let wait = sent["wait"].clone();
    drop(a.stdin.take());
    let a_on_b = b.read_type("peer_connect")["peer"].clone();
    let q = b.read_type("message");
    assert_eq!(q["peer"], a_on_b);
    // The answer only goes out after a's input has ended.
    b.cmd(json!({"op": "reply", "peer": q["peer"], "command": "a", "payload_hex": "bb"}));
    let (rest, status) = a.end();
    assert!(status.success(), "{status}");
    assert_eq!(
        without_logs(rest),
        [
            json!({"type": "answer", "wait": wait, "peer": b_addr, "payload_hex": "bb"}),
            json!({"type": "answers_done", "wait": wait, "missing": []}),
            json!({"type": "peer_end", "peer": b_addr, "reason": "shutting down"}),
        ]
    );
    let (rest, status) = b.end();
    assert!(status.success(), "{status}");
    assert_eq!(without_logs(rest)[0]["type"], "peer_end");
}

fn frame(magic: u32, command: &str, payload: &[u8]) -> BytesMut {
    let mut out = BytesMut::new();
    encode(magic, command, payload, &mut out).expect("a valid frame");
    out
}

#[test]
fn raw_peers_frames_checksums_logs_and_status() {
    let mut a = Node::start(
        "a",
        &[
            "--magic",
            "0x0709110B",
            "--status-interval-ms",
            "100",
            "--log-level",
            "warning",
        ],
    );
    let mut sock = TcpStream::connect(&a.addr).expect("connect to a");
    sock.set_read_timeout(Some(PATIENCE)).expect("read timeout");
    let me = sock.local_addr().expect("local address").to_string();
    assert_eq!(
        a.read_type_skipping("peer_connect", "status"),
        json!({"type": "peer_connect", "peer": me})
    );

    // A frame with the configured magic arrives byte-exact, split across writes.
    let good = frame(0x0709_110B, "ping", &[0, 1, 2, 255]);
    sock.write_all(&good[..7]).expect("write");
    sock.flush().expect("flush");
    sock.write_all(&good[7..]).expect("write");
    assert_eq!(
        a.read_type_skipping("message", "status"),
        json!({"type": "message", "peer": me, "command": "ping", "payload_hex": "000102ff"})
    );

    // A corrupted checksum is dropped and reported as a warning naming the peer.
    let mut bad = frame(0x0709_110B, "ping", b"abc");
    bad[20] ^= 0xff;
    sock.write_all(&bad).expect("write");
    let log = a.read_type_skipping("log", "status");
    assert_eq!(log["severity"], "warning", "{log}");
    assert_eq!(log["peer"], me, "{log}");
    assert!(
        log["message"]
            .as_str()
            .is_some_and(|m| m.contains("bad_checksum")),
        "{log}"
    );

    // a replies to the raw peer: the frame on the wire is exactly the encoded one.
    a.cmd(json!({"op": "reply", "peer": me, "command": "pong", "payload_hex": "cafe", "req": 1}));
    assert_eq!(
        a.read_type_skipping("ok", "status"),
        json!({"type": "ok", "req": 1})
    );
    let want = frame(0x0709_110B, "pong", &[0xca, 0xfe]);
    let mut got = vec![0u8; want.len()];
    sock.read_exact(&mut got).expect("the reply frame");
    assert_eq!(got, want.to_vec());

    // Status lines come every 100 ms: one active peer, backed off since its bad frame.
    assert_eq!(
        a.read_type_skipping("status", "log"),
        json!({"type": "status", "active": 1, "pool": 0, "backed_off": 1})
    );

    drop(sock);
    let end = a.read_type_skipping("peer_end", "status");
    assert_eq!(end["peer"], me);
    let (_, status) = a.end();
    assert!(status.success(), "{status}");
}

#[test]
fn a_burst_of_frames_is_printed_whole_and_in_order() {
    const FRAMES: u32 = 20_000;
    let mut a = Node::start("a", &["--log-level", "warning"]);
    let mut sock = TcpStream::connect(&a.addr).expect("connect to a");
    let me = sock.local_addr().expect("local address").to_string();
    assert_eq!(
        a.read_type("peer_connect"),
        json!({"type": "peer_connect", "peer": me})
    );
    // Far more than the manager's event channel holds, written at once.
    let mut burst = BytesMut::new();
    for i in 0..FRAMES {
        encode(DEFAULT_MAGIC, "n", &i.to_be_bytes(), &mut burst).expect("a valid frame");
    }
    sock.write_all(&burst).expect("write the burst");
    for i in 0..FRAMES {
        let line = a.read_type("message");
        let want = format!("{i:08x}");
        if line["payload_hex"] != want.as_str() {
            a.die(&format!("frame {i}: got {line}"));
        }
    }
    drop(sock);
    assert_eq!(a.read_type("peer_end")["peer"], me);
    let (rest, status) = a.end();
    assert!(status.success(), "{status}");
    assert_eq!(rest, Vec::<Value>::new());
}

#[test]
fn a_taken_address_is_an_error_line_and_exit_1() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = holder.local_addr().expect("addr").to_string();
    let out = Command::new(EXE)
        .args(["peers", "--listen", &taken])
        .stdin(Stdio::null())
        .output()
        .expect("run peermesh peers");
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    let line: Value = serde_json::from_str(text.trim()).expect("one JSON line");
    assert_eq!(line["type"], "error");
    assert_eq!(line["code"], "listen_failed");
    assert!(
        line["message"].as_str().is_some_and(|m| m.contains(&taken)),
        "{line}"
    );
}

#[test]
fn help_states_the_contract() {
    let out = Command::new(EXE)
        .args(["peers", "--help"])
        .output()
        .expect("run --help");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        r#""op":"send""#,
        r#""op":"reply""#,
        r#""op":"add_pool""#,
        r#""op":"add_active""#,
        r#""op":"del_active""#,
        r#""op":"set_property""#,
        r#""op":"set_state""#,
        r#""op":"peers""#,
        r#""type":"listening""#,
        r#""type":"peer_connect""#,
        r#""type":"peer_end""#,
        r#""type":"message""#,
        r#""type":"sent""#,
        r#""type":"answer""#,
        r#""type":"answers_done""#,
        r#""type":"status""#,
        r#""type":"log""#,
        "bad_command",
        "unknown_peer",
        "req",
        "exits 0",
        "--seed",
        "--magic",
        "--max-payload",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}:\n{help}");
    }
}
