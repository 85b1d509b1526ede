#!/usr/bin/env node
// One real peer-relay@0.0.2 node (its `Client`, or its `Socket` with --datagrams) driven by the
// JSON-lines contract of `peermesh node` (see `peermesh node --help` and docs/cli.md), so tests
// and scripts drive both implementations the same way.
//
//   node tests/interop/peer-relay-node.mjs [--listen PORT|127.0.0.1:PORT] [--bootstrap URL]...
//                                          [--datagrams] [--port N]
//
// Everything on the wire is peer-relay's own code (Client, Router, WsConnector, WsChannel,
// Socket). What the driver adds around it, reading peer-relay's internals:
// - The listener. peer-relay's WsConnector binds `new WebSocket.Server({port})` on every
//   interface; the driver binds the same ws@1 server on 127.0.0.1 only, hands its connections
//   to the connector's own `_onConnection`, and announces what peer-relay announces,
//   `ws://localhost:PORT`.
// - `path`. peer-relay's API gives (data, from) only; the driver wraps `router._onMessage` to
//   read the envelope's `path` (origin first, as received) of the message being delivered.
// - `peer_left`. peer-relay has no such event; the driver listens for 'removed' on the
//   client's k-bucket of peers.
// - With --datagrams, user messages that are not datagrams are printed as `message` lines
//   instead of being handed to the Socket (its handler throws on them: `new Buffer(undefined)`).
// - Exceptions peer-relay throws from its socket handlers (e.g. "WebSocket is not ready") are
//   logged on stderr and counted in `stats` (`exceptions`) instead of ending the process.
//
// Commands (stdin): send, send_to, connect, disconnect, peers, stats (counters of the driver:
// handled, delivered, relayed, duplicates, exceptions). Events (stdout): ready (first), message,
// datagram (with --datagrams), peer, peer_left, ok, peers, stats, error.

import { createRequire } from 'node:module';
import { createInterface } from 'node:readline';

const require = createRequire(import.meta.url);
const PeerRelay = require('peer-relay');
const WebSocket = require('ws');

const MAX_LINE = 4 * 1024 * 1024;
const MAX_DATAGRAM = 256 * 1024;
const ID_RE = /^[0-9a-fA-F]{40}$/;

function fail(message) {
  process.stderr.write(`error: ${message}\n`);
  process.exit(2);
}

function parseArgs(argv) {
  const args = { listen: null, bootstrap: [], datagrams: false, port: 7000 };
  for (let i = 0; i < argv.length; i += 1) {
    const flag = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) fail(`${flag} needs a value`);
      i += 1;
      return argv[i];
    };
    if (flag === '--listen') {
      const v = value();
      const m = /^(?:(127\.0\.0\.1|localhost):)?(\d{1,5})$/.exec(v);
      if (!m || Number(m[2]) > 65535) fail(`--listen ${v}: expected PORT or 127.0.0.1:PORT`);
      args.listen = Number(m[2]);
    } else if (flag === '--bootstrap') {
      const v = value();
      if (!/^wss?:\/\//.test(v)) fail(`--bootstrap ${v}: expected a ws:// URL`);
      args.bootstrap.push(v);
    } else if (flag === '--datagrams') {
      args.datagrams = true;
    } else if (flag === '--port') {
      const v = Number(value());
      if (!Number.isInteger(v) || v < 0 || v > 65535) fail('--port: expected 0..65535');
      args.port = v;
    } else {
      fail(`unknown argument ${flag}`);
    }
  }
  return args;
}

const args = parseArgs(process.argv.slice(2));

const stats = { handled: 0, delivered: 0, relayed: 0, duplicates: 0, exceptions: 0 };
let stopping = false;

function out(value) {
  if (!stopping) process.stdout.write(`${JSON.stringify(value)}\n`);
}

process.on('uncaughtException', (e) => {
  stats.exceptions += 1;
  process.stderr.write(`peer-relay threw: ${e && e.stack ? e.stack : e}\n`);
});

// An id as peer-relay may hold it: a Buffer, a hex string, or a JSON-decoded Buffer.
function idText(v) {
  if (Buffer.isBuffer(v)) return v.toString('hex');
  if (typeof v === 'string') return v.toLowerCase();
  if (v && v.type === 'Buffer' && Array.isArray(v.data)) return Buffer.from(v.data).toString('hex');
  return String(v);
}

function isDatagram(data) {
  return data != null && typeof data === 'object' && data.buffer != null
    && data.buffer.type === 'Buffer' && Array.isArray(data.buffer.data);
}

const socket = args.datagrams ? new PeerRelay.Socket({}) : null;
const client = socket ? socket.peer : new PeerRelay({});
const me = client.id.toString('hex');
if (socket) socket.bind(args.port);

// The envelope being handled: `router._onMessage` emits the delivery synchronously.
let current = null;
const router = client.router;
const onMessage = router._onMessage;
router._onMessage = function wrapped(msg) {
  const fresh = msg && !(msg.nonce in router._touched);
  if (!fresh) {
    stats.duplicates += 1;
    return onMessage.call(this, msg);
  }
  stats.handled += 1;
  const mine = idText(msg.to) === me;
  if (!mine) stats.relayed += 1;
  const path = Array.isArray(msg.path) ? msg.path.map(idText) : [];
  const outer = current;
  current = { path, from: idText(msg.from) };
  try {
    return onMessage.call(this, msg);
  } finally {
    current = outer;
  }
};

function printMessage(data, from) {
  stats.delivered += 1;
  out({
    type: 'message',
    from: idText(from),
    data: data === undefined ? null : data,
    path: current ? current.path : [],
  });
}

if (socket) {
  // Only datagrams reach the Socket's own handler.
  const [socketHandler] = client.listeners('message');
  client.removeListener('message', socketHandler);
  client.on('message', (data, from) => {
    if (isDatagram(data)) {
      stats.delivered += 1;
      socketHandler(data, from);
    } else {
      printMessage(data, from);
    }
  });
  socket.on('message', (buf, rinfo) => {
    out({
      type: 'datagram',
      from: current ? current.from : idText(rinfo.address),
      data_hex: buf.toString('hex'),
      port: rinfo.port,
    });
  });
} else {
  client.on('message', printMessage);
}

client.on('peer', (id) => out({ type: 'peer', id: idText(id) }));
client.peers.on('removed', (channel) => out({ type: 'peer_left', id: idText(channel.id) }));

async function listen(port) {
  const wss = new WebSocket.Server({ host: '127.0.0.1', port });
  await new Promise((resolve, reject) => {
    wss.once('listening', resolve);
    wss._server.once('error', reject);
  });
  wss.on('connection', (ws) => client.wsConnector._onConnection(ws));
  wss.on('error', (e) => process.stderr.write(`listener error: ${e}\n`));
  client.wsConnector._wss = wss;
  client.wsConnector.url = `ws://localhost:${wss._server.address().port}`;
}

function error(code, message, req) {
  const line = { type: 'error', code, message };
  if (req !== undefined) line.req = req;
  return line;
}

const FIELDS = {
  send: ['to', 'data'],
  send_to: ['to', 'data_hex', 'port'],
  connect: ['id'],
  disconnect: ['id'],
  peers: [],
  stats: [],
};
const REQUIRED = { send: ['to'], send_to: ['to', 'data_hex'], connect: ['id'], disconnect: ['id'] };

/** Runs one command line; returns the line to print, if any. */
function execute(text) {
  if (text.trim() === '') return null;
  if (text.length > MAX_LINE) return error('bad_command', `a line is at most ${MAX_LINE} bytes`);
  let cmd;
  try {
    cmd = JSON.parse(text);
  } catch (e) {
    return error('bad_command', e.message);
  }
  if (cmd === null || typeof cmd !== 'object' || Array.isArray(cmd)) {
    return error('bad_command', 'a command is a JSON object');
  }
  let req;
  if ('req' in cmd) {
    if (!Number.isSafeInteger(cmd.req) || cmd.req < 0) {
      return error('bad_command', '`req` is a non-negative integer');
    }
    req = cmd.req;
  }
  const fields = FIELDS[cmd.op];
  if (!fields) return error('bad_command', `unknown op ${JSON.stringify(cmd.op)}`, req);
  for (const k of Object.keys(cmd)) {
    if (k !== 'op' && k !== 'req' && !fields.includes(k)) {
      return error('bad_command', `unknown field \`${k}\``, req);
    }
  }
  for (const k of REQUIRED[cmd.op] || []) {
    if (!(k in cmd)) return error('bad_command', `missing field \`${k}\``, req);
  }
  const ok = () => (req === undefined ? null : { type: 'ok', req });
  const id = (v) => (typeof v === 'string' && ID_RE.test(v) ? Buffer.from(v, 'hex') : null);
  const badId = (v) => error('bad_id', `a node id is 40 hex digits (160 bits); got ${JSON.stringify(v)}`, req);
  switch (cmd.op) {
    case 'send': {
      const to = id(cmd.to);
      if (!to) return badId(cmd.to);
      client.send(to, cmd.data === undefined ? null : cmd.data);
      return ok();
    }
    case 'send_to': {
      const to = id(cmd.to);
      if (!to) return badId(cmd.to);
      if (typeof cmd.data_hex !== 'string' || !/^([0-9a-fA-F]{2})*$/.test(cmd.data_hex)) {
        return error('bad_command', 'data_hex must be an even number of hex digits', req);
      }
      if ('port' in cmd && (!Number.isInteger(cmd.port) || cmd.port < 0 || cmd.port > 65535)) {
        return error('bad_command', 'port is 0..65535', req);
      }
      const buf = Buffer.from(cmd.data_hex, 'hex');
      if (buf.length > MAX_DATAGRAM) {
        return error('too_large', `a datagram is at most ${MAX_DATAGRAM} bytes; this one has ${buf.length}`, req);
      }
      const port = 'port' in cmd ? cmd.port : args.port;
      if (socket) {
        // PeerRelay.Socket writes its own port into the datagram.
        const own = socket._port;
        socket._port = port;
        try {
          socket.send(buf, 0, buf.length, port, cmd.to.toLowerCase());
        } finally {
          socket._port = own;
        }
      } else {
        client.send(to, { buffer: buf, address: me, port });
      }
      return ok();
    }
    case 'connect': {
      const target = id(cmd.id);
      if (!target) return badId(cmd.id);
      client.connect(target);
      return ok();
    }
    case 'disconnect': {
      const target = id(cmd.id);
      if (!target) return badId(cmd.id);
      client.disconnect(target);
      return ok();
    }
    case 'peers': {
      const ids = client.peers.toArray().map((c) => idText(c.id)).sort();
      const line = { type: 'peers' };
      if (req !== undefined) line.req = req;
      line.ids = ids;
      return line;
    }
    case 'stats': {
      const line = { type: 'stats', ...stats, peers: client.peers.count() };
      if (req !== undefined) line.req = req;
      return line;
    }
    default:
      return error('bad_command', 'unreachable', req);
  }
}

function shutdown() {
  if (stopping) return;
  stopping = true;
  const exit = () => process.exit(0);
  setTimeout(exit, 2000).unref();
  try {
    client.destroy(() => setTimeout(exit, 50));
  } catch (e) {
    process.stderr.write(`destroy failed: ${e}\n`);
    exit();
  }
}

if (args.listen !== null) {
  try {
    await listen(args.listen);
  } catch (e) {
    out(error('listen_failed', String(e.message || e)));
    process.exit(1);
  }
}
out({ type: 'ready', id: me, url: client.wsConnector.url });
for (const url of args.bootstrap) client.wsConnector.connect(url);

const input = createInterface({ input: process.stdin, crlfDelay: Infinity });
input.on('line', (text) => {
  if (stopping) return;
  let line;
  try {
    line = execute(text);
  } catch (e) {
    stats.exceptions += 1;
    line = error('closed', `peer-relay threw: ${e.message}`);
  }
  if (line) out(line);
});
input.on('close', shutdown);
process.on('SIGTERM', shutdown);
