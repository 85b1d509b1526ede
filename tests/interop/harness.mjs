// Shared helpers of the interop tests and scripts: child processes that speak JSON lines
// (`peermesh peers`, `peermesh node`, and the peer-relay driver `peer-relay-node.mjs`), awaited
// with deadlines so that a missing line fails instead of hanging, and killed by PID afterwards.
//
// Not a test file itself (node --test only runs *.test.mjs here).

import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { once, EventEmitter } from 'node:events';
import { fileURLToPath } from 'node:url';
import { readFileSync } from 'node:fs';

/** Default wait for one expected line or event. */
export const WAIT_MS = 10_000;
/** The peer-relay driver. */
export const PEER_RELAY_NODE = fileURLToPath(new URL('./peer-relay-node.mjs', import.meta.url));

/** The peermesh binary under test: $PEERMESH_BIN (read when needed). */
export function requireBin() {
  const bin = process.env.PEERMESH_BIN;
  if (!bin) {
    throw new Error('set PEERMESH_BIN to the peermesh binary (e.g. target/debug/peermesh)');
  }
  return bin;
}

/** Cleanup steps of the running test; test files run `cleanUp` in afterEach and after. */
export const cleanups = [];
export async function cleanUp() {
  while (cleanups.length > 0) {
    const step = cleanups.pop();
    try {
      await step();
    } catch (e) {
      console.error('cleanup failed:', e);
    }
  }
}

export function timeoutError(what, ms, detail = '') {
  return new Error(`timed out after ${ms} ms waiting for ${what}${detail}`);
}

/** Resolves with the first `name` event of `emitter`, or fails after `ms`. */
export async function event(emitter, name, ms = WAIT_MS) {
  try {
    return await once(emitter, name, { signal: AbortSignal.timeout(ms) });
  } catch (e) {
    if (e.name === 'AbortError') throw timeoutError(`the "${name}" event`, ms);
    throw e;
  }
}

export const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

/** A small seeded PRNG (mulberry32), so random topologies can be replayed. */
export function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A child process with its stdout as a list of parsed JSON lines. */
export class LineProcess {
  constructor(child, label) {
    this.child = child;
    this.label = label;
    this.lines = [];
    this.cursor = 0;
    this.stderr = '';
    this.exited = null;
    this.news = new EventEmitter();
    this.news.setMaxListeners(0);
    createInterface({ input: child.stdout }).on('line', (text) => {
      let value;
      try {
        value = JSON.parse(text);
      } catch {
        value = { type: '<not json>', text };
      }
      this.lines.push(value);
      this.news.emit('change');
    });
    child.stderr.on('data', (chunk) => {
      this.stderr = (this.stderr + chunk).slice(-20_000);
    });
    child.stdin.on('error', () => {}); // EPIPE once the process is gone: noticed through `exit`
    this.exit = new Promise((resolve) => {
      child.on('exit', (code, signal) => {
        this.exited = { code, signal };
        this.news.emit('change');
        resolve(this.exited);
      });
    });
  }

  /** Spawns `cmd args`; the process is killed (by PID) by the running test's cleanup. */
  static spawn(cmd, args, { label = cmd, env = {}, register = cleanups } = {}) {
    const child = spawn(cmd, args, {
      env: { ...process.env, ...env },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    const p = new this(child, label);
    register.push(() => p.kill());
    return p;
  }

  get pid() {
    return this.child.pid;
  }

  /** SIGKILLs the process (if still running) and waits for it. */
  async kill() {
    if (this.exited === null) {
      this.child.kill('SIGKILL');
      await this.exit;
    }
  }

  send(command) {
    if (this.exited === null) this.child.stdin.write(`${JSON.stringify(command)}\n`);
  }

  /** Writes a raw line (for bad-command tests). */
  sendRaw(text) {
    if (this.exited === null) this.child.stdin.write(`${text}\n`);
  }

  describe() {
    return `${this.label} (pid ${this.child.pid})`;
  }

  /**
   * Resolves with the first line from index `from` on that `pred` accepts, without moving the
   * cursor. Fails on timeout or when the process exits first.
   */
  find(pred, what, ms = WAIT_MS, from = 0) {
    return this.#wait(what, ms, () => {
      for (let i = from; i < this.lines.length; i += 1) {
        if (pred(this.lines[i])) return { line: this.lines[i] };
      }
      return null;
    });
  }

  /**
   * The first line after the previous match of `next` that `pred` accepts; lines in between
   * are skipped.
   */
  next(pred, what, ms = WAIT_MS) {
    return this.#wait(what, ms, () => {
      while (this.cursor < this.lines.length) {
        const line = this.lines[this.cursor];
        this.cursor += 1;
        if (pred(line)) return { line };
      }
      return null;
    });
  }

  /** The next line of type `type` (other types skipped). */
  nextType(type, ms = WAIT_MS) {
    return this.next((l) => l.type === type, `a "${type}" line`, ms);
  }

  /** Lines (from the start) that `pred` accepts. */
  all(pred) {
    return this.lines.filter(pred);
  }

  #wait(what, ms, check) {
    return new Promise((resolve, reject) => {
      const run = () => {
        const found = check();
        if (found) {
          finish();
          resolve(found.line);
        } else if (this.exited !== null) {
          finish();
          reject(new Error(`${this.describe()} exited (${JSON.stringify(this.exited)}) before ${what}\n${this.stderr}`));
        }
      };
      const timer = setTimeout(() => {
        finish();
        const tail = this.lines.slice(-30).map((l) => JSON.stringify(l)).join('\n');
        reject(timeoutError(`${what} from ${this.describe()}`, ms, `\nlast stdout lines:\n${tail}\nstderr:\n${this.stderr.slice(-4000)}`));
      }, ms);
      const finish = () => {
        clearTimeout(timer);
        this.news.off('change', run);
      };
      this.news.on('change', run);
      run();
    });
  }

  /** Closes stdin; resolves with the exit code and the lines not yet matched by `next`. */
  async end(ms = WAIT_MS) {
    this.child.stdin.end();
    let timer;
    const limit = new Promise((_, reject) => {
      timer = setTimeout(() => reject(timeoutError(`${this.describe()} to exit`, ms, `\n${this.stderr}`)), ms);
    });
    try {
      const { code } = await Promise.race([this.exit, limit]);
      return { code, rest: this.lines.slice(this.cursor) };
    } finally {
      clearTimeout(timer);
    }
  }

  /** Resident memory in KiB (Linux), or null. */
  rssKiB() {
    try {
      const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${this.child.pid}/status`, 'utf8'));
      return m ? Number(m[1]) : null;
    } catch {
      return null;
    }
  }
}

/**
 * A mesh node on JSON lines: `peermesh node` (kind "pm") or the peer-relay driver (kind "pr").
 * Both speak the contract of `peermesh node --help`.
 */
export class MeshNode extends LineProcess {
  /**
   * Starts a node and waits for its `ready` line. `listen`: bind 127.0.0.1 on a free port.
   * `args`: further flags (e.g. `--max-peers 5` for peermesh).
   */
  static async start(kind, { listen = true, bootstrap = [], datagrams = false, port, args = [], label, register = cleanups, env = {} } = {}) {
    const flags = [];
    if (listen) flags.push('--listen', kind === 'pm' ? '127.0.0.1:0' : '0');
    for (const url of bootstrap) flags.push('--bootstrap', url);
    if (datagrams) flags.push('--datagrams');
    if (port !== undefined) flags.push('--port', String(port));
    flags.push(...args);
    let node;
    if (kind === 'pm') {
      node = this.spawn(requireBin(), ['node', ...flags], {
        label: label || 'peermesh node',
        env: { RUST_LOG: 'peermesh=debug,peermesh_mesh=debug', ...env },
        register,
      });
    } else if (kind === 'pr') {
      node = this.spawn(process.execPath, ['--no-deprecation', PEER_RELAY_NODE, ...flags], {
        label: label || 'peer-relay node',
        env,
        register,
      });
    } else {
      throw new Error(`unknown kind ${kind}`);
    }
    node.kind = kind;
    node.nextReq = 1;
    const ready = await node.next(() => true, 'the ready line');
    if (ready.type !== 'ready' || !/^[0-9a-f]{40}$/.test(ready.id)) {
      throw new Error(`${node.describe()}: the first line is not ready: ${JSON.stringify(ready)}\n${node.stderr}`);
    }
    node.id = ready.id;
    node.url = ready.url;
    node.label = `${label || kind} ${ready.id.slice(0, 8)}`;
    return node;
  }

  /** Sends `command` with a fresh `req` and resolves with the line answering it. */
  request(command, ms = WAIT_MS) {
    const req = this.nextReq;
    this.nextReq += 1;
    const from = this.lines.length;
    this.send({ ...command, req });
    return this.find((l) => l.req === req, `the answer to ${JSON.stringify(command)}`, ms, from);
  }

  async peers(ms = WAIT_MS) {
    const answer = await this.request({ op: 'peers' }, ms);
    if (answer.type !== 'peers') throw new Error(`${this.describe()}: peers answered ${JSON.stringify(answer)}`);
    return answer.ids;
  }

  async stats(ms = WAIT_MS) {
    const answer = await this.request({ op: 'stats' }, ms);
    if (answer.type !== 'stats') throw new Error(`${this.describe()}: stats answered ${JSON.stringify(answer)}`);
    return answer;
  }

  /** Resolves once a `peer` line names `id` (from the start of the output). */
  waitPeer(id, ms = WAIT_MS) {
    return this.find((l) => l.type === 'peer' && l.id === id, `a peer line for ${id.slice(0, 8)}`, ms);
  }

  /** Resolves once `peers` lists (or, with `linked` false, no longer lists) `id`. */
  async waitLinked(id, linked = true, ms = WAIT_MS) {
    const until = Date.now() + ms;
    for (;;) {
      const ids = await this.peers();
      if (ids.includes(id) === linked) return ids;
      if (Date.now() > until) {
        throw timeoutError(`${this.describe()} to ${linked ? 'list' : 'drop'} ${id.slice(0, 8)}`, ms, `; peers: ${ids}`);
      }
      await sleep(100);
    }
  }

  /** The `message` lines whose data carries `tag` as `data.tag`. */
  messagesTagged(tag) {
    return this.all((l) => l.type === 'message' && l.data && l.data.tag === tag);
  }
}

/**
 * Polls `peers` of every node until no view changes over `quietMs` (or `ms` passes); returns
 * the views as a Map id → ids.
 */
export async function settle(nodes, { quietMs = 2000, ms = 30_000, pollMs = 500 } = {}) {
  const start = Date.now();
  let last = null;
  let quietSince = Date.now();
  for (;;) {
    const views = await Promise.all(nodes.map((n) => n.peers()));
    const key = JSON.stringify(views);
    if (key !== last) {
      last = key;
      quietSince = Date.now();
    } else if (Date.now() - quietSince >= quietMs) {
      return { views: new Map(nodes.map((n, i) => [n.id, views[i]])), settledMs: Date.now() - start, quiet: true };
    }
    if (Date.now() - start > ms) {
      return { views: new Map(nodes.map((n, i) => [n.id, views[i]])), settledMs: Date.now() - start, quiet: false };
    }
    await sleep(pollMs);
  }
}

/** Connected components of the undirected graph of the views (an edge if either side lists it). */
export function components(ids, views) {
  const adj = new Map(ids.map((id) => [id, new Set()]));
  for (const [id, peers] of views) {
    for (const p of peers) {
      if (adj.has(p)) {
        adj.get(id).add(p);
        adj.get(p).add(id);
      }
    }
  }
  const comp = new Map();
  let n = 0;
  for (const id of ids) {
    if (comp.has(id)) continue;
    const stack = [id];
    comp.set(id, n);
    while (stack.length > 0) {
      const cur = stack.pop();
      for (const p of adj.get(cur)) {
        if (!comp.has(p)) {
          comp.set(p, n);
          stack.push(p);
        }
      }
    }
    n += 1;
  }
  const edges = [...adj.values()].reduce((s, set) => s + set.size, 0) / 2;
  return { comp, count: n, edges, adj };
}
