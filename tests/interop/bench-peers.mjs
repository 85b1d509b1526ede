// Side-by-side figures: `peermesh peers` against a p2p-manager@0.1.0 / p2p-node@0.1.x peer
// (Node), on the same machine in the same run.
//
//   cargo build --release -p peermesh-cli
//   node tests/interop/bench-peers.mjs --bin target/release/peermesh [--connections 1000]
//        [--concurrency 100] [--frames 200000] [--payload 32] [--rounds 3] [--json]
//
// Both peers run as child processes that print one JSON line per event on stdout, in the same
// shapes (`listening`, `peer_connect`, `message` with `payload_hex`, `peer_end`): peermesh is
// the real CLI, the Node peer is this file run with `--serve-node` (a PeerManager listening
// on 127.0.0.1:0 that prints the same lines, batched into one stdout write per event-loop
// turn). One load generator, this process, drives both the same way with raw sockets:
//
// - connections/s: open --connections TCP connections in bursts of --concurrency (the next
//   burst once the peer printed a `peer_connect` line for each connection of the last) and
//   time the whole; then close them and wait for every `peer_end`.
// - frames/s: one connection, --frames frames of --payload random bytes written as fast as
//   the socket takes them; time from the first byte written to the last `message` line.
//
// Each figure is the median of --rounds rounds; a fresh peer process serves each round.

import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import { fileURLToPath } from 'node:url';

const HERE = fileURLToPath(import.meta.url);
const LIMIT_MS = 120_000;
const MAGIC = 0xd9b4bef9;

function option(name, fallback) {
  const i = process.argv.indexOf(name);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

// ---------------------------------------------------------------- the Node peer under test

function serveNode() {
  const require = createRequire(import.meta.url);
  const { PeerManager } = require('p2p-manager');
  const pm = new PeerManager({ listen: false, minPeers: 0, maxPeers: 1_000_000 });
  pm.on('error', () => {}); // p2p-manager reports its log lines as 'error' events
  let pending = [];
  const print = (line) => {
    if (pending.length === 0) {
      setImmediate(() => {
        process.stdout.write(pending.join(''));
        pending = [];
      });
    }
    pending.push(`${JSON.stringify(line)}\n`);
  };
  pm.on('listenConnect', ({ peer }) => {
    const name = `${peer.host.host}:${peer.host.port}`;
    print({ type: 'peer_connect', peer: name });
    peer.on('message', (d) => {
      print({ type: 'message', peer: name, command: d.command, payload_hex: d.data.toString('hex') });
    });
    peer.socket.on('close', () => print({ type: 'peer_end', peer: name, reason: 'closed' }));
  });
  // p2p-manager listens on options.port on every interface; a listen-options object binds
  // 127.0.0.1 and an ephemeral port instead.
  pm.options.listen = true;
  pm.options.port = { host: '127.0.0.1', port: 0 };
  pm.launch(false);
  pm.server.on('listening', () => {
    print({ type: 'listening', addr: `127.0.0.1:${pm.server.address().port}` });
  });
  process.stdin.resume();
  process.stdin.on('end', () => process.exit(0));
}

// ---------------------------------------------------------------- the load generator

/** A peer process whose stdout lines are counted by kind (no JSON parsing on the hot path). */
class Target {
  constructor(kind, bin) {
    this.kind = kind;
    const [cmd, args] = kind === 'peermesh'
      ? [bin, ['peers', '--listen', '127.0.0.1:0', '--min-peers', '0', '--max-peers', '1000000',
        '--log-level', 'error']]
      : [process.execPath, [HERE, '--serve-node']];
    this.child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'inherit'] });
    this.counts = { peer_connect: 0, peer_end: 0, message: 0, other: 0 };
    this.dropped = 0;
    this.lastLine = '';
    this.waiters = [];
    let partial = '';
    this.child.stdout.setEncoding('utf8');
    this.child.stdout.on('data', (chunk) => {
      const parts = (partial + chunk).split('\n');
      partial = parts.pop();
      for (const line of parts) this.see(line);
      this.wake();
    });
    this.child.on('exit', (code) => {
      this.exited = code;
      this.wake();
    });
  }

  see(line) {
    this.lastLine = line;
    if (line.startsWith('{"type":"message"')) {
      this.counts.message += 1;
      this.lastMessage = line;
    }
    else if (line.startsWith('{"type":"peer_connect"')) this.counts.peer_connect += 1;
    else if (line.startsWith('{"type":"peer_end"')) this.counts.peer_end += 1;
    else if (line.startsWith('{"type":"listening"')) this.addr = JSON.parse(line).addr;
    else {
      this.counts.other += 1;
      const lost = /\((\d+) so far\)/.exec(line);
      if (lost) this.dropped = Number(lost[1]);
      else process.stderr.write(`[${this.kind}] ${line}\n`);
    }
  }

  wake() {
    this.waiters = this.waiters.filter((w) => !w());
  }

  /** Resolves when `done()` holds; fails after LIMIT_MS or when the process exits. */
  until(done, what) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${this.kind}: no ${what} within ${LIMIT_MS} ms`)), LIMIT_MS);
      const check = () => {
        if (done()) {
          clearTimeout(timer);
          resolve();
          return true;
        }
        if (this.exited !== undefined) {
          clearTimeout(timer);
          reject(new Error(`${this.kind} exited (${this.exited}) before ${what}`));
          return true;
        }
        return false;
      };
      if (!check()) this.waiters.push(check);
    });
  }

  async start() {
    await this.until(() => this.addr !== undefined, 'listening line');
    const [host, port] = this.addr.split(':');
    this.host = host;
    this.port = Number(port);
    return this;
  }

  /** CPU time of the process so far, in ms (Linux /proc). */
  cpuMs() {
    try {
      const stat = readFileSync(`/proc/${this.child.pid}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      return (Number(fields[11]) + Number(fields[12])) * 10; // utime + stime, 100 Hz ticks
    } catch {
      return NaN;
    }
  }

  async stop() {
    this.child.stdin.end();
    const exited = this.until(() => this.exited !== undefined, 'exit').catch(() => this.child.kill('SIGKILL'));
    await exited;
  }
}

/** Busy CPU time of the whole machine and of this process, in ms (Linux /proc/stat). */
function machineCpu() {
  const cpu = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal: busy is everything but idle and iowait.
  const busy = cpu[0] + cpu[1] + cpu[2] + cpu[5] + cpu[6] + (cpu[7] || 0);
  const self = process.cpuUsage();
  return { busyMs: busy * 10, selfMs: (self.user + self.system) / 1000 };
}

/** CPU used by every other process during the window, in % of one core. */
function othersPct(start, peerMs, seconds) {
  const end = machineCpu();
  const others = end.busyMs - start.busyMs - (end.selfMs - start.selfMs) - peerMs;
  return Math.max(0, (others / 1000 / seconds) * 100);
}

function frameOf(command, payload) {
  const out = Buffer.alloc(24 + payload.length);
  out.writeUInt32LE(MAGIC, 0);
  out.write(command, 4, 'latin1');
  out.writeUInt32LE(payload.length, 16);
  const sum = createHash('sha256').update(createHash('sha256').update(payload).digest()).digest();
  sum.copy(out, 20, 0, 4);
  payload.copy(out, 24);
  return out;
}

function connect(target) {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: target.host, port: target.port });
    s.setNoDelay(true);
    s.once('connect', () => resolve(s));
    s.once('error', reject);
  });
}

async function connectionsRound(target, total, concurrency) {
  const sockets = [];
  const base = target.counts.peer_connect;
  const endBase = target.counts.peer_end;
  const cpu0 = target.cpuMs();
  const stat0 = machineCpu();
  const t0 = process.hrtime.bigint();
  // Bursts of `concurrency` connections; the next burst starts once the peer has announced
  // every connection of this one. A client counts a connection as open before the peer has
  // accept()ed it, so without the wait the listen backlog (128 for peermesh, 511 for Node)
  // overflows and the kernel drops SYNs, which cost a 1 s retransmission each.
  for (let opened = 0; opened < total;) {
    const burst = Math.min(concurrency, total - opened);
    sockets.push(...(await Promise.all(Array.from({ length: burst }, () => connect(target)))));
    opened += burst;
    await target.until(() => target.counts.peer_connect - base >= opened, `${opened} peer_connect lines`);
  }
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const cpu = target.cpuMs() - cpu0;
  const others = othersPct(stat0, cpu, seconds);
  for (const s of sockets) s.destroy();
  await target.until(() => target.counts.peer_end - endBase >= total, `${total} peer_end lines`);
  return { rate: total / seconds, cpuPct: (cpu / 1000 / seconds) * 100, othersPct: others };
}

async function framesRound(target, frames, payloadLen) {
  const sock = await connect(target);
  await target.until(() => target.counts.peer_connect >= 1, 'peer_connect line');
  const one = frameOf('bench', randomBytes(payloadLen));
  const batch = Buffer.concat(Array.from({ length: 1000 }, () => one));
  const base = target.counts.message;
  const cpu0 = target.cpuMs();
  const stat0 = machineCpu();
  const t0 = process.hrtime.bigint();
  for (let sent = 0; sent < frames; sent += 1000) {
    const n = Math.min(1000, frames - sent);
    const chunk = n === 1000 ? batch : batch.subarray(0, n * one.length);
    if (!sock.write(chunk)) await new Promise((r) => sock.once('drain', r));
  }
  await target.until(
    () => target.counts.message + target.dropped - base >= frames,
    `${frames} message lines`,
  );
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const cpu = target.cpuMs() - cpu0;
  const others = othersPct(stat0, cpu, seconds);
  const last = JSON.parse(target.lastMessage);
  if (last.command !== 'bench' || last.payload_hex !== one.subarray(24).toString('hex')) {
    throw new Error(`${target.kind}: unexpected message line ${target.lastMessage.slice(0, 200)}`);
  }
  sock.destroy();
  const delivered = target.counts.message - base;
  return {
    rate: delivered / seconds,
    lost: frames - delivered,
    cpuPct: (cpu / 1000 / seconds) * 100,
    othersPct: others,
  };
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
};

async function measure(kind, bin, cfg) {
  const conns = [];
  const frames = [];
  for (let r = 0; r < cfg.rounds; r += 1) {
    let t = await new Target(kind, bin).start();
    conns.push(await connectionsRound(t, cfg.connections, cfg.concurrency));
    await t.stop();
    t = await new Target(kind, bin).start();
    frames.push(await framesRound(t, cfg.frames, cfg.payload));
    await t.stop();
  }
  return {
    connectionsPerSec: median(conns.map((c) => c.rate)),
    connectionsCpuPct: median(conns.map((c) => c.cpuPct)),
    framesPerSec: median(frames.map((f) => f.rate)),
    framesCpuPct: median(frames.map((f) => f.cpuPct)),
    framesLost: median(frames.map((f) => f.lost)),
    othersPct: median([...conns, ...frames].map((x) => x.othersPct)),
    rounds: { connections: conns, frames },
  };
}

async function main() {
  const cfg = {
    bin: option('--bin', process.env.PEERMESH_BIN),
    connections: Number(option('--connections', '1000')),
    concurrency: Number(option('--concurrency', '100')),
    frames: Number(option('--frames', '200000')),
    payload: Number(option('--payload', '32')),
    rounds: Number(option('--rounds', '3')),
  };
  if (!cfg.bin) throw new Error('pass --bin path/to/peermesh (or set PEERMESH_BIN)');
  const mesh = await measure('peermesh', cfg.bin, cfg);
  const node = await measure('node', cfg.bin, cfg);
  if (process.argv.includes('--json')) {
    console.log(JSON.stringify({ config: cfg, peermesh: mesh, node }, null, 2));
    return;
  }
  const n = (x) => (Number.isFinite(x) ? Math.round(x).toLocaleString('en-US') : '-');
  const ratio = (a, b) => (Number.isFinite(a) && Number.isFinite(b) ? `${(a / b).toFixed(2)}x` : '-');
  const rows = [
    [`connections established/s (${cfg.connections}, bursts of ${cfg.concurrency})`,
      n(mesh.connectionsPerSec), n(node.connectionsPerSec), ratio(mesh.connectionsPerSec, node.connectionsPerSec)],
    ['  CPU of the peer, % of one core', n(mesh.connectionsCpuPct), n(node.connectionsCpuPct), ''],
    [`frames/s through one connection (${cfg.frames} x ${cfg.payload} B)`,
      n(mesh.framesPerSec), n(node.framesPerSec), ratio(mesh.framesPerSec, node.framesPerSec)],
    ['  CPU of the peer, % of one core', n(mesh.framesCpuPct), n(node.framesCpuPct), ''],
    ['  frames not printed (events dropped)', n(mesh.framesLost), n(node.framesLost), ''],
    ['others% (CPU of all other processes)', n(mesh.othersPct), n(node.othersPct), ''],
  ];
  const head = ['', 'peermesh peers', 'p2p-manager (Node)', 'ratio'];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const fmt = (r) => r.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ');
  console.log(fmt(head));
  for (const r of rows) console.log(fmt(r));
  console.log(`median of ${cfg.rounds} rounds; Node ${process.version}; frames/s counts the frames printed`);
}

// Last, once every class and constant above is defined.
if (process.argv.includes('--serve-node')) {
  serveNode();
} else {
  await main();
}
