// Interop: `peermesh node` against the real npm peer-relay@0.0.2, in mixed networks of child
// processes on 127.0.0.1: peermesh nodes ("pm") and peer-relay nodes ("pr", one real
// peer-relay Client each, driven by tests/interop/peer-relay-node.mjs with the same JSON-line
// contract).
//
//   PEERMESH_BIN=target/debug/peermesh node --test --test-concurrency=1 tests/interop/
//
// What peer-relay does, read in node_modules/peer-relay/lib/{client,router,ws,wgram}.js, and
// what these tests do about it:
// - A node links to the 15 candidates closest to its own id, learnt only when one of its own
//   links opens (it sends findPeers then). A handshake answer carries the answerer's URL; an
//   offer carries none, so a node without a listener can only link by dialling. The chains and
//   stars below use nodes without a listener at the ends, so the topology stays as built.
// - Its relays send on to the 2 closest links not on the path, with no progress rule, and
//   write `to` and `from` as JSON-encoded Buffers.
// - A duplicate link (both sides dialled) makes it drop the original link too when either
//   closes, and it never reads the second one: the tests wait for the network to settle
//   before they count messages. peermesh therefore never closes a duplicate (it keeps it as a
//   spare and reads frames on both); the random graph checks that no link is one-sided and
//   that every message between connected nodes arrives.
// - It throws on frames that are not JSON, so bad input is only sent to peermesh.
// Every message is sent once: no test retries a send to hide a loss.

import { test, afterEach, after } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { randomBytes } from 'node:crypto';
import {
  cleanups, cleanUp, requireBin, sleep, rng, settle, components, MeshNode, WAIT_MS, timeoutError,
} from './harness.mjs';

const require = createRequire(import.meta.url);
const WebSocket = require('ws'); // ws@1, the version peer-relay depends on

const TEST_MS = 60_000;

requireBin();
afterEach(cleanUp);
after(cleanUp);

const start = (kind, opts) => MeshNode.start(kind, opts);

/** A unique tag for one message. */
let tagCount = 0;
const newTag = () => `t${process.pid}-${(tagCount += 1)}`;

/** Resolves with the message line tagged `tag` at `node` (it must come from `from`). */
async function received(node, from, tag, ms = WAIT_MS) {
  const line = await node.find(
    (l) => l.type === 'message' && l.data && l.data.tag === tag,
    `the message ${tag} from ${from.label}`,
    ms,
  );
  assert.equal(line.from, from.id, `sender of ${tag}`);
  return line;
}

/** Sends `data` from `a` to `b` and checks it arrives exactly, with the given path. */
async function roundTrip(a, b, data, path) {
  const tag = newTag();
  const payload = { tag, ...data };
  a.send({ op: 'send', to: b.id, data: payload });
  const line = await received(b, a, tag);
  assert.deepEqual(line, { type: 'message', from: a.id, data: payload, path: path.map((n) => n.id) });
}

const EXACT = [
  { text: 'héllo wörld ✓ 🚀 "quoted" \\ back\nslash\t\u0001', n: 0 },
  { ints: [0, -1, 1, 2 ** 53 - 1, -(2 ** 31)], floats: [2.5, -0.125, 1e-7], bools: [true, false], nothing: null },
  { nested: { a: { b: { c: [[], {}, [{}], ''] } } }, empty: '' },
  { big: 'x'.repeat(200_000) },
];

async function directLink(first, second) {
  // `second` bootstraps from `first`.
  const a = await start(first);
  const b = await start(second, { bootstrap: [a.url] });
  await a.waitPeer(b.id);
  await b.waitPeer(a.id);
  assert.deepEqual(await a.peers(), [b.id]);
  assert.deepEqual(await b.peers(), [a.id]);
  for (const data of EXACT) {
    await roundTrip(a, b, data, [a]);
    await roundTrip(b, a, data, [b]);
  }
  // Values that are not objects travel too (exact JSON, any type).
  for (const value of ['plain string', 42, -3.5, true, null, [1, 'two', { three: 3 }]]) {
    a.send({ op: 'send', to: b.id, data: value });
    b.send({ op: 'send', to: a.id, data: value });
  }
  const plain = (n, from) => n.all((l) => l.type === 'message' && l.from === from.id && !(l.data && l.data.tag));
  const until = Date.now() + WAIT_MS;
  while (plain(a, b).length < 6 || plain(b, a).length < 6) {
    if (Date.now() > until) throw timeoutError('the plain values', WAIT_MS);
    await sleep(50);
  }
  const values = ['plain string', 42, -3.5, true, null, [1, 'two', { three: 3 }]];
  assert.deepEqual(plain(a, b).map((l) => l.data), values);
  assert.deepEqual(plain(b, a).map((l) => l.data), values);
  // The one that leaves: the other prints peer_left; both exit 0 at end of input.
  const { code } = await b.end();
  assert.equal(code, 0);
  await a.find((l) => l.type === 'peer_left' && l.id === b.id, 'peer_left');
  assert.deepEqual(await a.peers(), []);
  assert.equal((await a.end()).code, 0);
}

test('peermesh bootstraps from peer-relay: a link, exact JSON both ways, peer_left', { timeout: TEST_MS }, async () => {
  await directLink('pr', 'pm');
});

test('peer-relay bootstraps from peermesh: a link, exact JSON both ways, peer_left', { timeout: TEST_MS }, async () => {
  await directLink('pm', 'pr');
});

for (const kinds of [['pm', 'pr', 'pm'], ['pr', 'pm', 'pr']]) {
  test(`a chain ${kinds.join(' – ')}: messages relayed through the middle, both ways`, { timeout: TEST_MS }, async () => {
    // The ends have no listener: they can only link to the middle, which they dial.
    const b = await start(kinds[1]);
    const a = await start(kinds[0], { listen: false, bootstrap: [b.url] });
    const c = await start(kinds[2], { listen: false, bootstrap: [b.url] });
    await Promise.all([a.waitPeer(b.id), c.waitPeer(b.id), b.waitPeer(a.id), b.waitPeer(c.id)]);
    for (const data of EXACT.slice(0, 3)) {
      await roundTrip(a, c, data, [a, b]);
      await roundTrip(c, a, data, [c, b]);
    }
    // Ten more each way at once, each delivered exactly once.
    const tags = [];
    for (let i = 0; i < 10; i += 1) {
      for (const [x, y] of [[a, c], [c, a]]) {
        const tag = newTag();
        tags.push([y, x, tag]);
        x.send({ op: 'send', to: y.id, data: { tag, i } });
      }
    }
    for (const [y, x, tag] of tags) {
      const line = await received(y, x, tag);
      assert.deepEqual(line.path, [x.id, b.id]);
    }
    await sleep(300);
    for (const [y, , tag] of tags) assert.equal(y.messagesTagged(tag).length, 1, `copies of ${tag}`);
    // The topology is what was built.
    assert.deepEqual(await a.peers(), [b.id]);
    assert.deepEqual(await c.peers(), [b.id]);
    assert.deepEqual(await b.peers(), [a.id, c.id].sort());
    const relayed = await b.stats();
    assert.ok(relayed.relayed >= 26, `the middle relayed the messages: ${JSON.stringify(relayed)}`);
  });
}

/** Sends one message between every ordered pair; returns [{from, to, tag}]. */
function sendAllPairs(nodes) {
  const sent = [];
  for (const x of nodes) {
    for (const y of nodes) {
      if (x === y) continue;
      const tag = newTag();
      sent.push({ from: x, to: y, tag });
      x.send({ op: 'send', to: y.id, data: { tag } });
    }
  }
  return sent;
}

/** Waits until every message of `sent` arrived or `ms` passed; returns the missing ones. */
async function collect(sent, ms) {
  const until = Date.now() + ms;
  for (;;) {
    const missing = sent.filter((m) => m.to.messagesTagged(m.tag).length === 0);
    if (missing.length === 0 || Date.now() > until) return missing;
    await sleep(100);
  }
}

function byKinds(sent, missing) {
  const table = {};
  for (const m of sent) {
    const k = `${m.from.kind}→${m.to.kind}`;
    table[k] = table[k] || { sent: 0, delivered: 0 };
    table[k].sent += 1;
    if (!missing.includes(m)) table[k].delivered += 1;
  }
  return table;
}

for (const center of ['pr', 'pm']) {
  test(`a star around a ${center} node with 8 mixed leaves: all 72 messages arrive once`, { timeout: TEST_MS }, async (t) => {
    const hub = await start(center, { label: `hub-${center}` });
    const leaves = [];
    for (let i = 0; i < 8; i += 1) {
      leaves.push(await start(i % 2 === 0 ? 'pm' : 'pr', { listen: false, bootstrap: [hub.url] }));
    }
    await Promise.all(leaves.map((l) => l.waitPeer(hub.id)));
    await Promise.all(leaves.map((l) => hub.waitPeer(l.id)));
    const nodes = [hub, ...leaves];
    const sent = sendAllPairs(nodes);
    const missing = await collect(sent, 15_000);
    t.diagnostic(`star(${center}): ${sent.length - missing.length}/${sent.length} delivered; ${JSON.stringify(byKinds(sent, missing))}`);
    assert.deepEqual(missing.map((m) => `${m.from.label}→${m.to.label}`), []);
    await sleep(300);
    for (const m of sent) {
      const lines = m.to.messagesTagged(m.tag);
      assert.equal(lines.length, 1, `copies of ${m.tag}`);
      const want = m.from === hub || m.to === hub ? [m.from.id] : [m.from.id, hub.id];
      assert.deepEqual(lines[0].path, want, `path of ${m.from.label}→${m.to.label}`);
    }
    // Still a star.
    for (const l of leaves) assert.deepEqual(await l.peers(), [hub.id]);
    assert.deepEqual(await hub.peers(), leaves.map((l) => l.id).sort());
  });
}

test('a random graph of 12 mixed nodes: every message between connected nodes arrives', { timeout: TEST_MS }, async (t) => {
  // Each node bootstraps from a random earlier node; all listen (a peer-relay node without a
  // listener is only reachable through the nodes it dialled itself: see docs/mesh.md).
  const seed = Number(process.env.PEERMESH_INTEROP_SEED || 20240611);
  const random = rng(seed);
  const kinds = Array.from({ length: 12 }, (_, i) => (i % 2 === 0 ? 'pm' : 'pr'));
  for (let i = kinds.length - 1; i > 0; i -= 1) {
    const j = Math.floor(random() * (i + 1));
    [kinds[i], kinds[j]] = [kinds[j], kinds[i]];
  }
  const nodes = [];
  for (const [i, kind] of kinds.entries()) {
    const boot = i === 0 ? [] : [nodes[Math.floor(random() * nodes.length)].url];
    nodes.push(await start(kind, { bootstrap: boot, label: `${kind}${i}` }));
  }
  const { views, settledMs, quiet } = await settle(nodes, { quietMs: 2000, ms: 25_000 });
  const ids = nodes.map((n) => n.id);
  const { comp, count, edges } = components(ids, views);
  const sent = sendAllPairs(nodes);
  const reachable = sent.filter((m) => comp.get(m.from.id) === comp.get(m.to.id));
  const missing = await collect(sent, 10_000);
  const lostReachable = missing.filter((m) => reachable.includes(m));
  const delivered = sent.filter((m) => !missing.includes(m)).map((m) => ({ ...m, line: m.to.messagesTagged(m.tag)[0] }));
  const kindOf = (id) => nodes.find((n) => n.id === id)?.kind;
  const crossing = delivered.filter((m) => {
    const k = new Set([...m.line.path, m.to.id].map(kindOf));
    return k.has('pm') && k.has('pr');
  });
  const relayedBy = { pm: 0, pr: 0 };
  for (const m of delivered) for (const id of m.line.path.slice(1)) relayedBy[kindOf(id)] += 1;
  const hops = {};
  for (const m of delivered) hops[m.line.path.length] = (hops[m.line.path.length] || 0) + 1;
  // A link one side lists and the other does not would lose what is sent over it.
  const byId = new Map(nodes.map((n) => [n.id, n]));
  const oneSided = [];
  for (const [id, peers] of views) {
    for (const p of peers) if (views.has(p) && !views.get(p).includes(id)) oneSided.push([byId.get(id), byId.get(p)]);
  }
  t.diagnostic(`random graph (seed ${seed}): ${nodes.map((n) => n.label).join(' ')}`);
  t.diagnostic(`one-sided links (listed by the first only): ${oneSided.map(([a, b]) => `${a.label}→${b.label}`).join(', ') || 'none'}`);
  t.diagnostic(`${edges} links, ${count} component(s), settled ${quiet ? 'after' : 'NOT within'} ${settledMs} ms`);
  t.diagnostic(`delivered ${delivered.length}/${sent.length} (between connected nodes: ${reachable.length - lostReachable.length}/${reachable.length}); hops ${JSON.stringify(hops)}; relays by kind ${JSON.stringify(relayedBy)}; paths crossing both implementations: ${crossing.length}`);
  t.diagnostic(`by kinds: ${JSON.stringify(byKinds(sent, missing))}`);
  assert.ok(quiet, 'the links settled');
  assert.equal(count, 1, 'the nodes form one connected mesh');
  assert.deepEqual(oneSided.map(([a, b]) => `${a.label}→${b.label}`), [], 'no link is one-sided');
  assert.deepEqual(lostReachable.map((m) => `${m.from.label}→${m.to.label}`), [], 'every message between connected nodes arrives');
  assert.ok(crossing.length > 0, 'some paths cross both implementations');
});

test('connect(id) across implementations: peermesh → peer-relay and peer-relay → peermesh', { timeout: TEST_MS }, async () => {
  // X (peermesh, --max-peers 5) dials on its own only up to 4 links (one is kept for inbound
  // ones) and has 4: it does not re-dial Y after a disconnect. Y (peer-relay) looks for peers
  // only when a link of its own opens: nothing re-links them but `connect`.
  const x = await start('pm', { args: ['--max-peers', '5'], label: 'X' });
  const ms = [];
  for (let i = 0; i < 4; i += 1) ms.push(await start('pm', { bootstrap: [x.url], label: `M${i}` }));
  await Promise.all(ms.map((m) => x.waitPeer(m.id)));
  const y = await start('pr', { bootstrap: [ms[0].url], label: 'Y' });
  await settle([x, y, ...ms], { quietMs: 2000, ms: 20_000 });

  // Unlink X and Y (Y links to X on its own when it joins).
  const unlink = async (by, other) => {
    const from = [x.lines.length, y.lines.length];
    if ((await by.peers()).includes(other.id)) {
      by.send({ op: 'disconnect', id: other.id });
      await x.find((l) => l.type === 'peer_left' && l.id === y.id, 'peer_left Y at X', WAIT_MS, from[0]);
      await y.find((l) => l.type === 'peer_left' && l.id === x.id, 'peer_left X at Y', WAIT_MS, from[1]);
    }
    await x.waitLinked(y.id, false);
    await y.waitLinked(x.id, false);
    // Nothing links them again on its own (repairs and refreshes run meanwhile).
    await sleep(3000);
    assert.ok(!(await x.peers()).includes(y.id), 'X stays unlinked from Y');
    assert.ok(!(await y.peers()).includes(x.id), 'Y stays unlinked from X');
  };
  const link = async (by, other) => {
    const from = [x.lines.length, y.lines.length];
    const answer = await by.request({ op: 'connect', id: other.id });
    assert.equal(answer.type, 'ok', JSON.stringify(answer));
    await x.find((l) => l.type === 'peer' && l.id === y.id, 'peer Y at X', WAIT_MS, from[0]);
    await y.find((l) => l.type === 'peer' && l.id === x.id, 'peer X at Y', WAIT_MS, from[1]);
    assert.ok((await x.peers()).includes(y.id));
    assert.ok((await y.peers()).includes(x.id));
    await roundTrip(x, y, { over: 'the new link' }, [x]);
    await roundTrip(y, x, { over: 'the new link' }, [y]);
  };
  await unlink(x, y);
  await link(x, y); // peermesh connects to peer-relay
  await unlink(y, x);
  await link(y, x); // peer-relay connects to peermesh
});

test('datagrams: MeshSocket and PeerRelay.Socket both ways, and relayed', { timeout: TEST_MS }, async () => {
  const b = await start('pr', { datagrams: true, port: 4343, label: 'B' });
  const a = await start('pm', { listen: false, datagrams: true, port: 4242, bootstrap: [b.url], label: 'A' });
  const c = await start('pm', { listen: false, datagrams: true, port: 4444, bootstrap: [b.url], label: 'C' });
  await Promise.all([a.waitPeer(b.id), c.waitPeer(b.id)]);
  const payloads = ['', '00', 'deadbeef', randomBytes(1000).toString('hex'), randomBytes(64 * 1024).toString('hex')];
  const datagram = (node, from, hex) => node.find(
    (l) => l.type === 'datagram' && l.from === from.id && l.data_hex === hex,
    `a datagram of ${hex.length / 2} bytes from ${from.label}`,
  );
  for (const hex of payloads) {
    a.send({ op: 'send_to', to: b.id, data_hex: hex });
    assert.deepEqual(await datagram(b, a, hex), { type: 'datagram', from: a.id, data_hex: hex, port: 4242 });
    b.send({ op: 'send_to', to: a.id, data_hex: hex });
    assert.deepEqual(await datagram(a, b, hex), { type: 'datagram', from: b.id, data_hex: hex, port: 4343 });
    // A to C through the peer-relay node.
    a.send({ op: 'send_to', to: c.id, data_hex: hex, port: 99 });
    assert.deepEqual(await datagram(c, a, hex), { type: 'datagram', from: a.id, data_hex: hex, port: 99 });
  }
  // Plain messages still print as messages in datagram mode, on both sides.
  await roundTrip(a, b, { not: 'a datagram' }, [a]);
  await roundTrip(b, a, { not: 'a datagram' }, [b]);
  // Over the datagram limit: refused by both, nothing sent.
  const huge = '00'.repeat(256 * 1024 + 1);
  for (const n of [a, b]) {
    const answer = await n.request({ op: 'send_to', to: c.id, data_hex: huge });
    assert.equal(answer.type, 'error');
    assert.equal(answer.code, 'too_large');
  }
});

/** A raw WebSocket client on `url` that greets with `greeting`; resolves once open. */
async function rawClient(url, greeting) {
  const ws = new WebSocket(url);
  ws.frames = [];
  ws.on('message', (data) => ws.frames.push(String(data)));
  ws.closed = new Promise((resolve) => { ws.on('close', resolve); });
  ws.on('error', () => {});
  cleanups.push(() => ws.terminate());
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(timeoutError('the raw WebSocket to open', WAIT_MS)), WAIT_MS);
    ws.on('open', () => { clearTimeout(timer); resolve(); });
    ws.on('error', (e) => { clearTimeout(timer); reject(e); });
  });
  if (greeting !== undefined) ws.send(greeting);
  return ws;
}

const sendFrame = (ws, data, options = {}) => new Promise((resolve, reject) => {
  ws.send(data, options, (e) => (e ? reject(e) : resolve()));
});

/** Polls `stats` until `field` reaches `want`; returns the stats. */
async function statsReach(node, field, want, ms = 20_000) {
  const until = Date.now() + ms;
  for (;;) {
    const s = await node.stats();
    if (s[field] >= want) return s;
    if (Date.now() > until) throw timeoutError(`${field} to reach ${want}`, ms, `; stats: ${JSON.stringify(s)}`);
    await sleep(100);
  }
}

test('bad input from a raw WebSocket client: peermesh drops and counts it, and keeps serving', { timeout: TEST_MS }, async (t) => {
  const a = await start('pm', { label: 'A' });
  const b = await start('pr', { bootstrap: [a.url], label: 'B' });
  await a.waitPeer(b.id);
  const rid = randomBytes(20).toString('hex');
  const raw = await rawClient(a.url, JSON.stringify(Buffer.from(rid, 'hex')));
  await a.waitPeer(rid);
  assert.equal(raw.frames.length >= 1, true);
  assert.deepEqual(JSON.parse(raw.frames[0]), JSON.parse(JSON.stringify(Buffer.from(a.id, 'hex'))), 'A greets with its id as a Buffer');
  const rssBefore = a.rssKiB();
  const base = await a.stats();

  let nonce = 1_000;
  const env = (fields) => JSON.stringify({
    to: a.id, from: rid, path: [rid], nonce: String((nonce += 1)), data: { type: 'user', data: 1 }, ...fields,
  });
  const drop = (o, k) => {
    const c = JSON.parse(o);
    delete c[k];
    return JSON.stringify(c);
  };
  const bad = [
    'not json at all',
    '{"to":',
    '[]',
    '42',
    env({ to: 'abc' }),
    env({ to: 'z'.repeat(40) }),
    env({ from: `${rid}00` }),
    env({ to: { type: 'Buffer', data: [1, 2, 3] } }),
    env({ path: ['1234'] }),
    env({ path: Array(65).fill(rid) }),
    env({ nonce: '' }),
    env({ nonce: 'n'.repeat(100) }),
    env({ nonce: { n: 1 } }),
    drop(env({}), 'to'),
    drop(env({}), 'from'),
    drop(env({}), 'nonce'),
    drop(env({}), 'data'),
    env({ data: { type: 'no-such-type' } }),
    env({ data: 5 }),
    env({ data: { type: 'findPeers', data: 'xyz' } }),
    env({ data: { type: 'findPeers' } }),
    env({ data: { type: 'foundPeers', data: 5 } }),
    env({ data: { type: 'handshake-answer', data: { ws: 'http://127.0.0.1:1' } } }),
  ];
  for (const frame of bad) await sendFrame(raw, frame);
  await sendFrame(raw, Buffer.from([0xff, 0x00, 0xfe]), { binary: true });
  let want = base.malformed + bad.length + 1;
  await statsReach(a, 'malformed', want);

  // Oversized: 1.5 MiB is read and dropped (counted); the link stays up.
  await sendFrame(raw, env({ data: { type: 'user', data: 'x'.repeat(1.5 * 1024 * 1024) } }));
  want += 1;
  await statsReach(a, 'malformed', want);

  // A flood of 10,000 garbage frames.
  const flood = 10_000;
  for (let i = 0; i < flood; i += 1) raw.send(`garbage ${i} {`);
  await sendFrame(raw, 'last garbage');
  want += flood + 1;
  const after = await statsReach(a, 'malformed', want, 30_000);
  assert.equal(after.malformed, want, 'each bad frame is counted once');
  assert.equal(after.delivered, base.delivered, 'nothing bad was delivered');

  // The link of the raw client is still up and a good frame from it is delivered.
  const good = env({ data: { type: 'user', data: { tag: 'raw-ok' } } });
  await sendFrame(raw, good);
  const line = await a.find((l) => l.type === 'message' && l.data && l.data.tag === 'raw-ok', 'the good frame');
  assert.deepEqual(line, { type: 'message', from: rid, data: { tag: 'raw-ok' }, path: [rid] });

  // Others are served: the peer-relay node and A exchange messages.
  await roundTrip(b, a, { after: 'the flood' }, [b]);
  await roundTrip(a, b, { after: 'the flood' }, [a]);

  // Over the WebSocket limit (4 × 1 MiB): the link is closed, the node goes on.
  await sendFrame(raw, 'y'.repeat(5 * 1024 * 1024)).catch(() => {});
  await Promise.race([raw.closed, sleep(WAIT_MS).then(() => { throw timeoutError('the raw link to close', WAIT_MS); })]);
  await a.find((l) => l.type === 'peer_left' && l.id === rid, 'peer_left of the raw client');

  // Bad greetings: not JSON, an id of the wrong length, a Buffer of 3 bytes. Each link is
  // refused and counted.
  const refusedBefore = (await a.stats()).links_refused;
  for (const greeting of ['hello', JSON.stringify('abcd'), JSON.stringify({ type: 'Buffer', data: [1, 2, 3] })]) {
    const r = await rawClient(a.url, greeting);
    await Promise.race([r.closed, sleep(WAIT_MS).then(() => { throw timeoutError(`a close after the greeting ${greeting}`, WAIT_MS); })]);
  }
  const end = await statsReach(a, 'links_refused', refusedBefore + 3);
  assert.equal(end.malformed, want + 3);
  await roundTrip(b, a, { after: 'bad greetings' }, [b]);

  const rssAfter = a.rssKiB();
  t.diagnostic(`malformed counted: ${end.malformed - base.malformed}; RSS ${rssBefore} KiB → ${rssAfter} KiB`);
  if (rssBefore !== null && rssAfter !== null) {
    assert.ok(rssAfter < rssBefore + 64 * 1024, `memory stays bounded: ${rssBefore} → ${rssAfter} KiB`);
  }
  assert.equal((await a.end()).code, 0);
});
