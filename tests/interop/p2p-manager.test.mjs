// Interop: `peermesh peers` against the real npm p2p-manager@0.1.0 (and its p2p-node@0.1.x
// peers), both directions, on 127.0.0.1 with ephemeral ports.
//
//   PEERMESH_BIN=target/debug/peermesh node --test --test-concurrency=1 tests/interop/
//
// What the package does, read in node_modules/p2p-manager/lib/PeerManager.js and
// node_modules/p2p-node/lib/Peer.js, and what these tests do about it:
// - No handshake: a peer is known by the connection's remote address. peermesh names a Node
//   peer that dialled it "127.0.0.1:<ephemeral port>"; Node names peermesh "127.0.0.1~<port>".
// - The listener calls server.listen(options.port) on every interface. The tests replace
//   options.port by a listen-options object after construction, so it binds 127.0.0.1:0.
// - `_connect` assigns an undeclared `self`, so with several managers in one process the
//   events of dialled peers bubble up to whichever manager dialled last. The tests listen on
//   the Peer objects themselves.
// - Log lines are emitted as 'error' events: every manager needs an 'error' listener.
// - Its answer callback listens for the event named like the answer command, which a Peer
//   never emits (it emits '<command>Message'); the Node side answers from its own listener.
// - A bad checksum makes the Peer throw inside its 'data' handler, so bad input is only
//   tested against peermesh (crates/peermesh-cli/tests/peers.rs).

import { test, afterEach, after } from 'node:test';
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { createRequire } from 'node:module';
import { randomBytes } from 'node:crypto';
import {
  WAIT_MS, cleanups, cleanUp, event, requireBin, timeoutError, LineProcess,
} from './harness.mjs';

const require = createRequire(import.meta.url);
const { PeerManager } = require('p2p-manager');

const TEST_MS = 30_000;

requireBin();
afterEach(cleanUp);
after(cleanUp);

/** A `peermesh peers` child process with its stdout as a list of parsed lines. */
class Peermesh extends LineProcess {
  static async start(args = []) {
    const p = this.spawn(requireBin(), ['peers', '--listen', '127.0.0.1:0', ...args], {
      label: 'peermesh peers',
      env: { RUST_LOG: 'peermesh=debug,peermesh_mesh=debug' },
    });
    const first = await p.next(() => true, 'the first line');
    assert.equal(first.type, 'listening', `first line: ${JSON.stringify(first)}`);
    assert.match(first.addr, /^127\.0\.0\.1:[1-9][0-9]*$/);
    p.addr = first.addr;
    p.port = Number(first.addr.split(':')[1]);
    return p;
  }
}

/** Messages a p2p-node Peer received, awaitable. */
class Inbox {
  constructor(peer) {
    this.messages = [];
    this.news = new EventEmitter();
    peer.on('message', (d) => {
      this.messages.push({ command: d.command, data: Buffer.from(d.data) });
      this.news.emit('message');
    });
  }

  /** Resolves with the first message (from the start) that `pred` accepts. */
  waitFor(pred, what, ms = WAIT_MS) {
    return new Promise((resolve, reject) => {
      const check = () => {
        const found = this.messages.find(pred);
        if (found) {
          clearTimeout(timer);
          this.news.off('message', check);
          resolve(found);
        }
      };
      const timer = setTimeout(() => {
        this.news.off('message', check);
        reject(timeoutError(what, ms, `; got ${JSON.stringify(this.messages.map((m) => m.command))}`));
      }, ms);
      this.news.on('message', check);
      check();
    });
  }

  count(command) {
    return this.messages.filter((m) => m.command === command).length;
  }
}

/**
 * A p2p-manager PeerManager; with `listen`, bound to 127.0.0.1 on an ephemeral port.
 * Resolves once it listens.
 */
async function nodeManager({ listen }) {
  const pm = new PeerManager({ listen: false, minPeers: 0 });
  pm.logs = [];
  pm.on('error', (e) => pm.logs.push(e)); // its log lines; without a listener they throw
  cleanups.push(async () => {
    for (const p of Object.values(pm.activePeers)) {
      if (p.socket) p.socket.destroy();
    }
    pm.shutdown(); // closes the listener; stops it from dialling the pool again
  });
  if (!listen) {
    pm.launch(false);
    return pm;
  }
  pm.options.listen = true;
  pm.options.port = { host: '127.0.0.1', port: 0 };
  pm.launch(false);
  if (!pm.server.listening) await event(pm.server, 'listening');
  pm.port = pm.server.address().port;
  pm.addr = `127.0.0.1:${pm.port}`;
  return pm;
}

/** The Peer of the next connection a listening manager accepts, with its inbox. */
async function nextInbound(pm) {
  const [{ peer }] = await event(pm, 'listenConnect');
  return { peer, inbox: new Inbox(peer) };
}

const hex = (buf) => Buffer.from(buf).toString('hex');

test('a Node PeerManager dials peermesh; commands both ways arrive byte-exact', { timeout: TEST_MS }, async () => {
  const mesh = await Peermesh.start();
  const pm = await nodeManager({ listen: false });
  pm.addActive([{ host: '127.0.0.1', port: mesh.port }]);
  const peer = pm.activePeers[`127.0.0.1~${mesh.port}`];
  assert.ok(peer, `addActive registers the peer by host~port: ${Object.keys(pm.activePeers)}`);
  const inbox = new Inbox(peer);
  await event(peer, 'connect');

  // peermesh names the Node peer by its ephemeral port (no handshake in p2p-node).
  const nodeName = `127.0.0.1:${peer.socket.localPort}`;
  assert.deepEqual(await mesh.nextType('peer_connect'), { type: 'peer_connect', peer: nodeName });

  // Node → peermesh: a small payload, an empty one, a 12-character command with 64 KiB.
  const big = randomBytes(64 * 1024);
  peer.send('hello', Buffer.from([0, 1, 2, 0xfe, 0xff]));
  peer.send('empty');
  peer.send('twelve_chars', big);
  assert.deepEqual(await mesh.nextType('message'), {
    type: 'message', peer: nodeName, command: 'hello', payload_hex: '000102feff',
  });
  assert.deepEqual(await mesh.nextType('message'), {
    type: 'message', peer: nodeName, command: 'empty', payload_hex: '',
  });
  assert.deepEqual(await mesh.nextType('message'), {
    type: 'message', peer: nodeName, command: 'twelve_chars', payload_hex: hex(big),
  });

  // peermesh → Node, by name, byte-exact; the req gets its ok.
  const back = randomBytes(40_000);
  mesh.send({ op: 'reply', peer: nodeName, command: 'world', payload_hex: 'c0ffee', req: 1 });
  mesh.send({ op: 'reply', peer: nodeName, command: 'blob', payload_hex: hex(back), req: 2 });
  mesh.send({ op: 'reply', peer: nodeName, command: 'nothing', req: 3 });
  for (const req of [1, 2, 3]) {
    assert.deepEqual(await mesh.nextType('ok'), { type: 'ok', req });
  }
  const world = await inbox.waitFor((m) => m.command === 'world', 'world');
  assert.deepEqual(world.data, Buffer.from('c0ffee', 'hex'));
  const blob = await inbox.waitFor((m) => m.command === 'blob', 'blob');
  assert.ok(blob.data.equals(back), 'the 40,000-byte payload arrives unchanged');
  const nothing = await inbox.waitFor((m) => m.command === 'nothing', 'nothing');
  assert.equal(nothing.data.length, 0);
  assert.deepEqual(inbox.messages.map((m) => m.command), ['world', 'blob', 'nothing']);

  // The Node side hangs up: peermesh reports the end of that peer.
  pm.delActive(peer, 'test over');
  assert.deepEqual(await mesh.nextType('peer_end'), {
    type: 'peer_end', peer: nodeName, reason: 'the peer closed the connection',
  });
  const { code } = await mesh.end();
  assert.equal(code, 0);
});

test('peermesh dials a listening Node PeerManager; Node sends with its selective send', { timeout: TEST_MS }, async () => {
  const pm = await nodeManager({ listen: true });
  const mesh = await Peermesh.start();
  const accepted = nextInbound(pm);
  mesh.send({ op: 'add_active', hosts: [pm.addr], req: 1 });
  assert.deepEqual(await mesh.nextType('ok'), { type: 'ok', req: 1 });
  assert.deepEqual(await mesh.nextType('peer_connect'), { type: 'peer_connect', peer: pm.addr });
  const { peer, inbox } = await accepted;
  assert.equal(peer.state, 'connected');
  assert.equal(pm.activePeerCount, 1);
  assert.equal(peer.getUUID(), `127.0.0.1~${peer.socket.remotePort}`);

  // p2p-manager's own send: one peer whose state == 'connected'.
  const payload = randomBytes(300);
  const sentTo = pm.send(1, 'state', 'connected', 'ping', payload);
  assert.deepEqual(Object.keys(sentTo), [peer.getUUID()]);
  assert.deepEqual(await mesh.nextType('message'), {
    type: 'message', peer: pm.addr, command: 'ping', payload_hex: hex(payload),
  });

  mesh.send({ op: 'reply', peer: pm.addr, command: 'pong', payload_hex: '00ff00ff' });
  const pong = await inbox.waitFor((m) => m.command === 'pong', 'pong');
  assert.deepEqual(pong.data, Buffer.from([0, 0xff, 0, 0xff]));

  // peermesh's end of input closes the connection; Node sees the peer end.
  const ended = event(pm, 'peerEnd');
  const { code, rest } = await mesh.end();
  assert.equal(code, 0);
  assert.deepEqual(
    rest.filter((l) => l.type !== 'log'),
    [{ type: 'peer_end', peer: pm.addr, reason: 'shutting down' }],
  );
  await ended;
});

/**
 * `count` listening Node managers connected from `mesh`; each answers `knock` with `answer`
 * (its payload followed by the manager's index) unless its index is in `silent`.
 */
async function connectedNodes(mesh, count, silent = []) {
  const nodes = [];
  for (let i = 0; i < count; i += 1) {
    const pm = await nodeManager({ listen: true });
    const accepted = nextInbound(pm);
    mesh.send({ op: 'add_active', hosts: [pm.addr] });
    assert.deepEqual(await mesh.nextType('peer_connect'), { type: 'peer_connect', peer: pm.addr });
    const { peer, inbox } = await accepted;
    if (!silent.includes(i)) {
      peer.on('knockMessage', (d) => peer.send('answer', Buffer.concat([d.data, Buffer.from([i])])));
    }
    nodes.push({ pm, peer, inbox, index: i, name: pm.addr });
  }
  return nodes;
}

test('knock → answer: peermesh sends to 2 of 3 Node peers matching a property; all answer', { timeout: TEST_MS }, async () => {
  const mesh = await Peermesh.start();
  const nodes = await connectedNodes(mesh, 4);
  const members = nodes.slice(0, 3);
  for (const [i, n] of nodes.entries()) {
    mesh.send({ op: 'set_property', peer: n.name, key: 'role', value: i < 3 ? 'member' : 'other', req: 10 + i });
    assert.deepEqual(await mesh.nextType('ok'), { type: 'ok', req: 10 + i });
  }

  mesh.send({
    op: 'send', number: 2, property: 'role', values: ['member'], command: 'knock',
    payload_hex: '0a0b', answer: 'answer', timeout_ms: 5000, req: 1,
  });
  const sent = await mesh.nextType('sent');
  assert.deepEqual(Object.keys(sent).sort(), ['peers', 'req', 'type', 'wait']);
  assert.equal(sent.req, 1);
  assert.equal(sent.peers.length, 2);
  assert.deepEqual(sent.peers, [...sent.peers].sort(), 'peers are sorted');
  const chosen = members.filter((n) => sent.peers.includes(n.name));
  assert.equal(chosen.length, 2, `both chosen peers are members: ${sent.peers}`);

  const answers = [];
  for (let k = 0; k < 2; k += 1) {
    answers.push(await mesh.next((l) => l.type === 'answer' || l.type === 'answers_done', 'an answer'));
  }
  answers.sort((x, y) => (x.peer < y.peer ? -1 : 1));
  assert.deepEqual(
    answers,
    chosen.map((n) => ({
      type: 'answer', wait: sent.wait, peer: n.name, payload_hex: `0a0b0${n.index}`,
    })).sort((x, y) => (x.peer < y.peer ? -1 : 1)),
  );
  assert.deepEqual(await mesh.nextType('answers_done'), { type: 'answers_done', wait: sent.wait, missing: [] });

  // A marker to every peer, after the knock on each connection: once all have it, any knock
  // would have arrived. Exactly the two chosen peers got one.
  mesh.send({ op: 'send', number: 0, property: 'role', values: ['member', 'other'], command: 'marker' });
  await mesh.nextType('sent');
  for (const n of nodes) await n.inbox.waitFor((m) => m.command === 'marker', `marker at ${n.name}`);
  for (const n of nodes) {
    const want = chosen.includes(n) ? 1 : 0;
    assert.equal(n.inbox.count('knock'), want, `knocks at ${n.name}`);
  }
  const knock = chosen[0].inbox.messages.find((m) => m.command === 'knock');
  assert.deepEqual(knock.data, Buffer.from([0x0a, 0x0b]));

  const { code } = await mesh.end();
  assert.equal(code, 0);
});

test('knock → answer: a Node peer that does not answer is named in missing', { timeout: TEST_MS }, async () => {
  const mesh = await Peermesh.start();
  const [talker, mute] = await connectedNodes(mesh, 2, [1]);
  mesh.send({
    op: 'send', number: 0, property: 'state', values: ['connected'], command: 'knock',
    payload_hex: 'ff', answer: 'answer', timeout_ms: 1500,
  });
  const sent = await mesh.nextType('sent');
  assert.deepEqual(sent, { type: 'sent', peers: [talker.name, mute.name].sort(), wait: sent.wait });
  assert.deepEqual(await mesh.nextType('answer'), {
    type: 'answer', wait: sent.wait, peer: talker.name, payload_hex: 'ff00',
  });
  assert.deepEqual(await mesh.nextType('answers_done'), {
    type: 'answers_done', wait: sent.wait, missing: [mute.name],
  });
  // The silent peer did get the knock.
  const knock = await mute.inbox.waitFor((m) => m.command === 'knock', 'the knock at the silent peer');
  assert.deepEqual(knock.data, Buffer.from([0xff]));
  const { code } = await mesh.end();
  assert.equal(code, 0);
});
