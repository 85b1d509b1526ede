// A real headless Chromium and a Rust client chat through a real hub.
//
//   node --test tests/browser/
//
// The hub binary comes from PEERMESH_BIN (default: target/debug/peermesh at the repository
// root); Chromium from CHROMIUM_BIN (default: /usr/bin/chromium, Debian package `chromium`).
// The page (page.html) uses the browser's own WebSocket and the JSON encoding; the Rust side
// is `peermesh connect`, driven through its JSON lines on stdin/stdout.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createServer } from "node:http";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, "..", "..");
const BIN = resolve(repo, process.env.PEERMESH_BIN || "target/debug/peermesh");
const CHROMIUM = process.env.CHROMIUM_BIN || "/usr/bin/chromium";
const STEP_MS = 15_000; // longest wait for any one expected event

/** A child process whose stdout is read as JSON lines, with waits on those lines. */
class LineProcess {
  constructor(name, args) {
    this.name = name;
    this.lines = [];
    this.waiters = [];
    this.stderr = "";
    this.exited = null;
    this.child = spawn(BIN, args, {
      stdio: ["pipe", "pipe", "pipe"],
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG || "warn" },
    });
    let buf = "";
    this.child.stdout.setEncoding("utf8");
    this.child.stdout.on("data", (chunk) => {
      buf += chunk;
      let nl;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl).trim();
        buf = buf.slice(nl + 1);
        if (line) this.push(line);
      }
    });
    this.child.stderr.setEncoding("utf8");
    this.child.stderr.on("data", (chunk) => {
      // Keep the tail only: enough to explain a failure.
      this.stderr = (this.stderr + chunk).slice(-8192);
    });
    this.child.on("exit", (code, signal) => {
      this.exited = { code, signal };
      for (const w of this.waiters.splice(0)) w.fail(new Error(`${this.name} exited (${code ?? signal})`));
    });
  }

  push(line) {
    let value;
    try {
      value = JSON.parse(line);
    } catch {
      value = { unparsed: line };
    }
    this.lines.push(value);
    this.waiters = this.waiters.filter((w) => !(w.pred(value) && (w.done(value), true)));
  }

  /** Resolves with the first line (already seen or future) matching `pred`. */
  waitFor(pred, what, ms = STEP_MS) {
    const seen = this.lines.find(pred);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolvePromise, reject) => {
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== waiter);
        reject(new Error(`${this.name}: no ${what} within ${ms} ms\nstdout: ${this.lines
          .map((l) => JSON.stringify(l)).join("\n        ")}\nstderr: ${this.stderr}`));
      }, ms);
      const waiter = {
        pred,
        done: (v) => { clearTimeout(timer); resolvePromise(v); },
        fail: (e) => { clearTimeout(timer); reject(new Error(`${e.message} waiting for ${what}\nstderr: ${this.stderr}`)); },
      };
      if (this.exited) waiter.fail(new Error(`${this.name} exited (${this.exited.code ?? this.exited.signal})`));
      else this.waiters.push(waiter);
    });
  }

  send(obj) {
    this.child.stdin.write(JSON.stringify(obj) + "\n");
  }

  async stop() {
    if (this.exited) return;
    const gone = new Promise((r) => this.child.once("exit", r));
    this.child.stdin.end();
    this.child.kill("SIGTERM");
    const timer = setTimeout(() => this.child.kill("SIGKILL"), 3000);
    await gone;
    clearTimeout(timer);
  }
}

let hub, rust, server, context, page, profile, pageUrl, wsUrl;

before(async () => {
  assert.ok(existsSync(BIN), `no peermesh binary at ${BIN}: run \`cargo build -p peermesh-cli\` or set PEERMESH_BIN`);
  assert.ok(existsSync(CHROMIUM), `no Chromium at ${CHROMIUM}: apt-get install chromium, or set CHROMIUM_BIN`);

  // 1. The hub, on a free loopback port; its first stdout line says where.
  hub = new LineProcess("hub", ["serve", "--listen", "127.0.0.1:0"]);
  const listening = await hub.waitFor((l) => l.type === "listening", "`listening` line");
  wsUrl = listening.ws;
  assert.match(wsUrl, /^ws:\/\/127\.0\.0\.1:\d+\/ws$/);

  // 2. The page, served over HTTP on a free loopback port (a real origin, as in production).
  const html = readFileSync(join(here, "page.html"));
  server = createServer((req, res) => {
    if (req.url.split("?")[0] === "/page.html") {
      res.writeHead(200, { "content-type": "text/html; charset=utf-8", "cache-control": "no-store" });
      res.end(html);
    } else {
      res.writeHead(404).end();
    }
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const { port } = server.address();
  pageUrl = `http://127.0.0.1:${port}/page.html?hub=${encodeURIComponent(wsUrl)}&id=browser`;

  // 3. Chromium with a fresh profile, nothing talking to the outside world.
  profile = mkdtempSync(join(tmpdir(), "peermesh-chromium-"));
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  page = context.pages()[0] ?? (await context.newPage());
  page.on("console", (m) => { if (m.type() === "error") console.error(`[page] ${m.text()}`); });
});

after(async () => {
  await context?.close().catch(() => {});
  if (profile) rmSync(profile, { recursive: true, force: true });
  await rust?.stop();
  await hub?.stop();
  await new Promise((r) => (server ? server.close(r) : r()));
});

test("the page connects to the hub as `browser`", async () => {
  await page.goto(pageUrl);
  await page.locator("#status", { hasText: "connected as browser" }).waitFor({ timeout: STEP_MS });
});

test("a Rust client connects as `rust`", async () => {
  rust = new LineProcess("peermesh connect", ["connect", wsUrl, "--id", "rust"]);
  const first = await rust.waitFor(() => true, "first line");
  assert.deepEqual(first, { type: "connected", id: "rust" });
});

test("Rust → browser direct message shows in the DOM", async () => {
  rust.send({ op: "emit", to: "browser", event: "chat", data: { text: "hi from rust" } });
  const li = page.locator('#log li.msg[data-from="rust"][data-event="chat"]', { hasText: "hi from rust" });
  await li.waitFor({ timeout: STEP_MS });
  assert.equal(await li.getAttribute("data-room"), null, "a direct message has no room");
});

test("browser → Rust direct message reaches the CLI", async () => {
  await page.fill("#to", "rust");
  await page.fill("#text", "hello from chromium");
  await page.click("#send");
  const msg = await rust.waitFor(
    (l) => l.type === "message" && l.from === "browser" && l.data?.text === "hello from chromium",
    "direct message from browser",
  );
  assert.equal(msg.event, "chat");
  assert.equal(msg.room, undefined);
  // The hub answered the page's `req` with `ok`: the sent line is logged only after it.
  await page.locator('#log li.sent[data-to="rust"]').waitFor({ timeout: STEP_MS });
});

test("room messages flow both ways, with presence", async () => {
  await page.fill("#room", "lobby");
  await page.click("#join");
  await page.locator('#log li.joined[data-room="lobby"]').waitFor({ timeout: STEP_MS });

  rust.send({ op: "join", room: "lobby" });
  // The page learns of the new member through `member_joined`.
  await page
    .locator('#log li.presence[data-kind="member_joined"][data-id="rust"][data-room="lobby"]')
    .waitFor({ timeout: STEP_MS });
  await page.locator("#members", { hasText: "browser, rust" }).waitFor({ timeout: STEP_MS });

  rust.send({ op: "emit_room", room: "lobby", event: "chat", data: { text: "rust to the room" } });
  await page
    .locator('#log li.msg[data-from="rust"][data-room="lobby"]', { hasText: "rust to the room" })
    .waitFor({ timeout: STEP_MS });

  await page.fill("#room-text", "browser to the room");
  await page.click("#send-room");
  const msg = await rust.waitFor(
    (l) => l.type === "message" && l.from === "browser" && l.room === "lobby" && l.data?.text === "browser to the room",
    "room message from browser",
  );
  assert.equal(msg.event, "chat");
});

test("the page saw every hub frame in seq order and no error", async () => {
  assert.match(await page.textContent("#seq-check"), /^seq ok \(\d+\)$/);
  assert.equal(await page.locator("#log li.error").count(), 0);
  assert.equal(rust.lines.filter((l) => l.type === "error").length, 0,
    `the CLI reported errors: ${JSON.stringify(rust.lines)}`);
});

test("closing the page tells the Rust client: member_left and peer_left", async () => {
  await page.close();
  // rust is in `lobby` with the page, and sent it a direct message a moment ago.
  await rust.waitFor(
    (l) => l.type === "member_left" && l.room === "lobby" && l.id === "browser",
    "member_left for browser",
  );
  await rust.waitFor((l) => l.type === "peer_left" && l.id === "browser", "peer_left for browser");
});
