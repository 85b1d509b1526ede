//! End-to-end tests of `peermesh node`: real mesh nodes (processes) linked over loopback
//! WebSockets, driven through stdin and observed through stdout.
//!
//! Mesh events (`peer`, `peer_left`, `message`) come in any order, so every process keeps all
//! its stdout lines and a test waits, with a deadline (`PATIENCE`), for the first line from a
//! given index on that matches. A line that does not come fails the test with the process's
//! stderr. Nothing synchronises by sleeping, except where a test checks that nothing happens.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const PATIENCE: Duration = Duration::from_secs(15);
const EXE: &str = env!("CARGO_BIN_EXE_peermesh");

/// One `peermesh node` process.
struct Node {
    label: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Receiver<String>,
    /// Every stdout line so far, parsed.
    seen: Vec<Value>,
    stderr: Arc<Mutex<String>>,
    id: String,
    url: Option<String>,
    next_req: u64,
    ended: bool,
}

impl Node {
    /// Starts `peermesh node ARGS` and reads its `ready` line.
    fn start(label: &str, args: &[&str]) -> Node {
        let mut child = Command::new(EXE)
            .arg("node")
            .args(args)
            .env("RUST_LOG", "peermesh=debug,peermesh_mesh=debug")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start peermesh node");
        let out = child.stdout.take().expect("stdout is piped");
        let (tx, stdout) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().expect("stderr is piped");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&String::from_utf8_lossy(&buf[..n]));
                    if s.len() > 200_000 {
                        let cut = s.len() - 100_000;
                        let cut = (cut..s.len()).find(|i| s.is_char_boundary(*i)).unwrap_or(0);
                        s.drain(..cut);
                    }
                }
            }
        });
        let stdin = child.stdin.take();
        let mut node = Node {
            label: label.to_owned(),
            child,
            stdin,
            stdout,
            seen: Vec::new(),
            stderr,
            id: String::new(),
            url: None,
            next_req: 1,
            ended: false,
        };
        let ready = node.wait_from(0, "the ready line", |_| true);
        let keys: Vec<&String> = ready
            .as_object()
            .map(|o| o.keys().collect())
            .unwrap_or_default();
        if ready["type"] != "ready" || keys.len() != 3 {
            node.die(&format!("the first line is not a ready line: {ready}"));
        }
        match ready["id"].as_str() {
            Some(id) if is_id(id) => id.clone_into(&mut node.id),
            _ => node.die(&format!("no id in {ready}")),
        }
        node.url = ready["url"].as_str().map(str::to_owned);
        node
    }

    fn die(&self, why: &str) -> ! {
        let log = self.stderr.lock().map(|s| s.clone()).unwrap_or_default();
        let tail: Vec<String> = self
            .seen
            .iter()
            .rev()
            .take(20)
            .rev()
            .map(Value::to_string)
            .collect();
        panic!(
            "[{}] {why}\n----- last stdout lines -----\n{}\n----- stderr of {} -----\n{log}",
            self.label,
            tail.join("\n"),
            self.label
        );
    }

    fn url(&self) -> String {
        match &self.url {
            Some(u) => u.clone(),
            None => self.die("this node has no listener"),
        }
    }

    /// Writes one stdin line.
    fn write(&mut self, text: &str) {
        let ok = match self.stdin.as_mut() {
            Some(pipe) => writeln!(pipe, "{text}").and_then(|()| pipe.flush()).is_ok(),
            None => false,
        };
        if !ok {
            self.die(&format!("cannot write {:.200} to stdin", text));
        }
    }

    fn cmd(&mut self, command: Value) {
        self.write(&command.to_string());
    }

    /// Receives one more line into `seen`; `false` once stdout ended.
    fn pull(&mut self, until: Instant, what: &str) -> bool {
        let wait = until.saturating_duration_since(Instant::now());
        match self.stdout.recv_timeout(wait) {
            Ok(text) => match serde_json::from_str(&text) {
                Ok(v) => {
                    self.seen.push(v);
                    true
                }
                Err(e) => self.die(&format!("stdout line {text:?} is not JSON: {e}")),
            },
            Err(RecvTimeoutError::Disconnected) => false,
            Err(RecvTimeoutError::Timeout) => self.die(&format!("no {what} in time")),
        }
    }

    /// The first line from index `from` on that `pred` accepts (waiting for it).
    fn wait_from(&mut self, from: usize, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let until = Instant::now() + PATIENCE;
        let mut i = from;
        loop {
            while i < self.seen.len() {
                if pred(&self.seen[i]) {
                    return self.seen[i].clone();
                }
                i += 1;
            }
            if !self.pull(until, what) {
                self.die(&format!("stdout ended before {what}"));
            }
        }
    }

    /// Sends `command` with a fresh `req`; returns the line that answers it.
    fn request(&mut self, mut command: Value) -> Value {
        let req = self.next_req;
        self.next_req += 1;
        command["req"] = json!(req);
        let from = self.seen.len();
        self.cmd(command.clone());
        self.wait_from(from, &format!("the answer to {command}"), |l| {
            l["req"] == json!(req)
        })
    }

    fn peers(&mut self) -> Vec<String> {
        let answer = self.request(json!({"op": "peers"}));
        if answer["type"] != "peers" {
            self.die(&format!("peers answered {answer}"));
        }
        answer["ids"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits until `peers` lists `n` ids or more.
    fn wait_peer_count(&mut self, n: usize) -> Vec<String> {
        let until = Instant::now() + PATIENCE;
        loop {
            let ids = self.peers();
            if ids.len() >= n {
                return ids;
            }
            if Instant::now() > until {
                self.die(&format!("fewer than {n} peers in time: {ids:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for a line of type `ty` naming `id`, from index `from` on.
    fn wait_id_line(&mut self, from: usize, ty: &str, id: &str) -> Value {
        let what = format!("a {ty} line for {id}");
        self.wait_from(from, &what, |l| l["type"] == ty && l["id"] == id)
    }

    /// Closes stdin; returns the lines not seen yet and the exit status.
    fn end(mut self) -> (Vec<Value>, ExitStatus) {
        drop(self.stdin.take());
        let until = Instant::now() + PATIENCE;
        let from = self.seen.len();
        while self.pull(until, "end of output") {}
        self.ended = true;
        let rest = self.seen[from..].to_vec();
        match self.child.wait() {
            Ok(status) => (rest, status),
            Err(e) => self.die(&format!("cannot wait for the process: {e}")),
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if !self.ended {
            if let Ok(None) = self.child.try_wait() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

/// Polls `peers` of every node until no list changed for 1.5 s.
fn settle(nodes: &mut [&mut Node]) {
    let until = Instant::now() + PATIENCE;
    let mut last = Vec::new();
    let mut quiet_since = Instant::now();
    loop {
        let now: Vec<Vec<String>> = nodes.iter_mut().map(|n| n.peers()).collect();
        if now != last {
            last = now;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= Duration::from_millis(1500) {
            return;
        }
        if Instant::now() > until {
            nodes[0].die(&format!("the links did not settle: {last:?}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn is_id(s: &str) -> bool {
    s.len() == 40
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn a_chain_delivers_messages_with_their_path() {
    let mut a = Node::start("a", &["--listen", "127.0.0.1:0"]);
    let url = a.url();
    assert!(
        url.starts_with("ws://127.0.0.1:") && !url.ends_with(":0"),
        "{url}"
    );
    // b and c have no listener: they link to a only (nobody can dial them, and neither has a
    // URL to give the other in a handshake).
    let mut b = Node::start("b", &["--bootstrap", &url]);
    let mut c = Node::start("c", &["--bootstrap", &url]);
    assert_eq!(b.url, None, "no listener, no url");
    let (aid, bid, cid) = (a.id.clone(), b.id.clone(), c.id.clone());
    b.wait_id_line(0, "peer", &aid);
    c.wait_id_line(0, "peer", &aid);
    a.wait_id_line(0, "peer", &bid);
    a.wait_id_line(0, "peer", &cid);
    assert_eq!(a.peers(), sorted(vec![bid.clone(), cid.clone()]));
    assert_eq!(b.peers(), vec![aid.clone()]);

    // b → c through a, and back; the path lists the origin and the relay.
    let data = json!({"text": "héllo ✓", "n": [1, -2, 2.5], "nested": {"ok": true, "none": null}});
    b.cmd(json!({"op": "send", "to": cid, "data": data, "req": 1}));
    assert_eq!(
        b.wait_from(0, "ok", |l| l["type"] == "ok"),
        json!({"type": "ok", "req": 1})
    );
    let got = c.wait_from(0, "the message", |l| l["type"] == "message");
    assert_eq!(
        got,
        json!({"type": "message", "from": bid, "data": data, "path": [bid, aid]})
    );
    c.cmd(json!({"op": "send", "to": bid, "data": "pong"}));
    let got = b.wait_from(0, "the answer", |l| l["type"] == "message");
    assert_eq!(
        got,
        json!({"type": "message", "from": cid, "data": "pong", "path": [cid, aid]})
    );
    // A direct message: the path is the origin alone; no data means null.
    a.cmd(json!({"op": "send", "to": bid}));
    let got = b.wait_from(0, "a's message", |l| {
        l["type"] == "message" && l["from"] == aid
    });
    assert_eq!(
        got,
        json!({"type": "message", "from": aid, "data": null, "path": [aid]})
    );

    let stats = a.request(json!({"op": "stats"}));
    assert_eq!(stats["type"], "stats");
    assert!(stats["relayed"].as_u64() >= Some(2), "{stats}");
    assert_eq!(stats["malformed"], 0, "{stats}");

    // c leaves: a prints peer_left; every process exits 0 at the end of its input.
    let from = a.seen.len();
    let (_, status) = c.end();
    assert!(status.success(), "c exited with {status}");
    a.wait_id_line(from, "peer_left", &cid);
    assert_eq!(a.peers(), vec![bid.clone()]);
    let (_, status) = b.end();
    assert!(status.success(), "b exited with {status}");
    let (_, status) = a.end();
    assert!(status.success(), "a exited with {status}");
}

#[test]
fn connect_and_disconnect_link_two_nodes_that_would_not_link_on_their_own() {
    // x and y allow 5 links and dial on their own only up to 4 (one is kept for inbound links).
    // Both have 4 links (their bootstrap nodes m0..m3), so only `connect` links them.
    let mut ms = Vec::new();
    let mut urls: Vec<String> = Vec::new();
    for i in 0..4 {
        let mut args = vec!["--listen".to_owned(), "127.0.0.1:0".to_owned()];
        if let Some(first) = urls.first() {
            args.extend(["--bootstrap".to_owned(), first.clone()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let m = Node::start(&format!("m{i}"), &args);
        urls.push(m.url());
        ms.push(m);
    }
    let mut args = vec!["--listen", "127.0.0.1:0", "--max-peers", "5"];
    for u in &urls {
        args.extend(["--bootstrap", u]);
    }
    let mut x = Node::start("x", &args);
    x.wait_peer_count(4);
    let mut y = Node::start("y", &args);
    let (xid, yid) = (x.id.clone(), y.id.clone());
    // y may link to x on its way in (it hears of x while its bootstrap links open), and both
    // are among each other's nearest nodes, which a node links past its dial limit: once the
    // links stopped changing, x disconnects y, which keeps x from linking y again on its own.
    y.wait_peer_count(4);
    settle(&mut [&mut x, &mut y]);
    let linked = y.peers().contains(&xid) || x.peers().contains(&yid);
    let (fx, fy) = (x.seen.len(), y.seen.len());
    assert_eq!(
        x.request(json!({"op": "disconnect", "id": yid})),
        json!({"type": "ok", "req": x.next_req - 1})
    );
    if linked {
        x.wait_id_line(fx, "peer_left", &yid);
        y.wait_id_line(fy, "peer_left", &xid);
    }
    // Nothing links them again (x refuses y's links and offers; repairs run meanwhile).
    std::thread::sleep(Duration::from_secs(3));
    let (xp, yp) = (x.peers(), y.peers());
    assert!(
        !xp.contains(&yid) && !yp.contains(&xid),
        "x and y stay unlinked: x {xp:?}, y {yp:?}"
    );

    // x connects to y: both print peer, both list the other.
    let (fx, fy) = (x.seen.len(), y.seen.len());
    x.cmd(json!({"op": "connect", "id": yid, "req": 50}));
    assert_eq!(
        x.wait_from(fx, "ok", |l| l["req"] == 50),
        json!({"type": "ok", "req": 50})
    );
    x.wait_id_line(fx, "peer", &yid);
    y.wait_id_line(fy, "peer", &xid);
    assert!(x.peers().contains(&yid));
    assert!(y.peers().contains(&xid));
    let from = y.seen.len();
    x.cmd(json!({"op": "send", "to": yid, "data": {"over": "the new link"}}));
    let got = y.wait_from(from, "the message", |l| l["type"] == "message");
    assert_eq!(got["path"], json!([xid]), "{got}");

    // y disconnects: both print peer_left; then y connects back.
    let (fx, fy) = (x.seen.len(), y.seen.len());
    y.cmd(json!({"op": "disconnect", "id": xid}));
    x.wait_id_line(fx, "peer_left", &yid);
    y.wait_id_line(fy, "peer_left", &xid);
    assert!(!x.peers().contains(&yid));
    let (fx, fy) = (x.seen.len(), y.seen.len());
    y.cmd(json!({"op": "connect", "id": xid}));
    x.wait_id_line(fx, "peer", &yid);
    y.wait_id_line(fy, "peer", &xid);
    assert!(y.peers().contains(&xid));

    // Disconnecting from a node that is not linked, or connecting to one that is, changes
    // nothing and is not an error.
    let unknown = "00".repeat(20);
    assert_eq!(
        y.request(json!({"op": "disconnect", "id": unknown})),
        json!({"type": "ok", "req": y.next_req - 1})
    );
    assert_eq!(
        y.request(json!({"op": "connect", "id": xid})),
        json!({"type": "ok", "req": y.next_req - 1})
    );
    assert!(y.peers().contains(&xid));

    for n in [x, y].into_iter().chain(ms) {
        let label = n.label.clone();
        let (_, status) = n.end();
        assert!(status.success(), "{label} exited with {status}");
    }
}

#[test]
fn bad_command_lines_are_answered_and_change_nothing() {
    let mut a = Node::start("a", &["--listen", "127.0.0.1:0"]);
    let id = "ab".repeat(20);
    let cases: Vec<(String, &str, Option<u64>)> = vec![
        ("not json".into(), "bad_command", None),
        ("[1,2]".into(), "bad_command", None),
        (r#"{"op":"fly","req":3}"#.into(), "bad_command", Some(3)),
        (r#"{"req":4}"#.into(), "bad_command", Some(4)),
        (
            format!(r#"{{"op":"send","to":"{id}","data":1,"colour":"red","req":5}}"#),
            "bad_command",
            Some(5),
        ),
        (
            r#"{"op":"send","data":1,"req":6}"#.into(),
            "bad_command",
            Some(6),
        ),
        (r#"{"op":"peers","req":-1}"#.into(), "bad_command", None),
        (
            r#"{"op":"send","to":"abc","data":1,"req":7}"#.into(),
            "bad_id",
            Some(7),
        ),
        (
            format!(r#"{{"op":"send","to":"{}","req":8}}"#, "g".repeat(40)),
            "bad_id",
            Some(8),
        ),
        (
            format!(r#"{{"op":"connect","id":"{id}00","req":9}}"#),
            "bad_id",
            Some(9),
        ),
        (
            r#"{"op":"disconnect","id":42,"req":10}"#.into(),
            "bad_command",
            Some(10),
        ),
        (
            r#"{"op":"disconnect","id":"","req":11}"#.into(),
            "bad_id",
            Some(11),
        ),
        (
            format!(r#"{{"op":"send_to","to":"{id}","data_hex":"abc","req":12}}"#),
            "bad_command",
            Some(12),
        ),
        (
            format!(r#"{{"op":"send_to","to":"{id}","data_hex":"zz","req":13}}"#),
            "bad_command",
            Some(13),
        ),
        (
            r#"{"op":"send_to","to":"x","data_hex":"00","req":14}"#.into(),
            "bad_id",
            Some(14),
        ),
        (
            format!(
                r#"{{"op":"send_to","to":"{id}","data_hex":"{}","req":15}}"#,
                "00".repeat(256 * 1024 + 1)
            ),
            "too_large",
            Some(15),
        ),
        (
            format!(
                r#"{{"op":"send","to":"{id}","data":"{}"}}"#,
                "x".repeat(4 * 1024 * 1024 + 10)
            ),
            "bad_command",
            None,
        ),
    ];
    for (line, code, req) in &cases {
        let from = a.seen.len();
        a.write(line);
        // An empty line is ignored: the next line out answers the peers request.
        a.write("");
        let got = a.wait_from(from, "the error", |_| true);
        assert_eq!(got["type"], "error", "{got} for {:.100}", line);
        assert_eq!(got["code"], *code, "{got} for {:.100}", line);
        assert!(
            got["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{got}"
        );
        match req {
            Some(r) => assert_eq!(got["req"], json!(r), "{got}"),
            None => assert!(got.get("req").is_none(), "{got}"),
        }
        let answer = a.request(json!({"op": "peers"}));
        assert_eq!(
            a.seen.len(),
            from + 2,
            "one error line, then the answer: {answer}"
        );
    }
    // Nothing was sent, and the node still works.
    let stats = a.request(json!({"op": "stats"}));
    assert_eq!(stats["queued"], 0, "{stats}");
    assert_eq!(stats["frames_out"], 0, "{stats}");
    assert_eq!(a.peers(), Vec::<String>::new());
    let (rest, status) = a.end();
    assert!(status.success(), "exit {status}");
    assert_eq!(rest, Vec::<Value>::new());
}

#[test]
fn a_node_without_peers_exits_zero_at_end_of_input_and_bad_flags_fail() {
    let a = Node::start("a", &[]);
    assert_eq!(a.url, None);
    let (rest, status) = a.end();
    assert!(status.success(), "exit {status}");
    assert_eq!(rest, Vec::<Value>::new());

    let out = Command::new(EXE)
        .args(["node", "--bootstrap", "http://127.0.0.1:1"])
        .stdin(Stdio::null())
        .output()
        .expect("run peermesh node");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ws://"));
}
