// Socket.IO 4 reference server for `peermesh bench`.
//
// It implements the same semantics as the peermesh hub for the benchmark scenarios, so both can be
// driven by the same load generator in the same run:
//
// - identity: the client sends its id in the Socket.IO connect packet (`40{"id":"c1"}`, i.e.
//   `io(url, { auth: { id } })`); the server keeps a map clientId -> socket.
// - direct message: `42["emit", to, event, data]` delivers `42["message", from, event, data]` to
//   the socket registered under `to` (dropped silently when there is none, like a fire-and-forget
//   emit).
// - rooms: `42<ack>["join", room]` joins and acknowledges with `43<ack>["ok"]`;
//   `42["emit_room", room, event, data]` delivers `42["message", from, event, data, room]` to every
//   other member (the sender must be a member, as on the hub).
// - RPC: `42<ack>["call", to, method, data]` (the caller's `emitWithAck`) is forwarded to the
//   socket registered under `to` as `42<ack'>["invoke", from, method, data]` with an ack of its
//   own; that client's ack answer `43<ack'>[result]` is passed back as `43<ack>[result]`.
//   Unknown targets are answered with `43<ack>[null]` at once.
//
// Configuration: WebSocket transport only, no HTTP long-polling, no permessage-deflate.
//
// --recovery turns on Socket.IO's connection state recovery (the drops scenario runs the server
// once without and once with it):
//   new Server(httpServer, { connectionStateRecovery: { maxDisconnectionDuration: 30000,
//                                                      skipMiddlewares: true } })
// The server then appends an offset to every event packet it sends (`42["message",…,"OFFSET"]`)
// and keeps the packets of the last 30 s. A client that dropped reconnects with
// `40{"pid":PID,"offset":OFFSET,"id":…}` (PID from its first CONNECT ack `40{"sid":…,"pid":…}`,
// OFFSET the last one it received); if the server still has that session it replays the missed
// packets (before the CONNECT ack) and the socket keeps its id and rooms (`socket.recovered`).
// To store what is sent to a client while it is away, a direct message to a client that dropped
// less than 30 s ago is sent to its socket id's room (`io.to(sid)`), which the recovered socket
// joins again. Without --recovery a message to a client that is away is dropped, as before.
// In both modes the clientId -> socket map points at the newest connection of each id.
//
// Usage: node server.js [--host 127.0.0.1] [--port 0] [--recovery] [--exit-on-stdin-close]
// The first line on stdout is
//   {"type":"listening","addr":"127.0.0.1:PORT","ws":"ws://127.0.0.1:PORT/socket.io/?EIO=4&transport=websocket","pid":PID}

'use strict';

const http = require('node:http');
const { Server } = require('socket.io');

function parseArgs(argv) {
  const opts = {
    host: '127.0.0.1',
    port: Number(process.env.PORT || 0),
    exitOnStdinClose: false,
    recovery: false,
  };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--host') opts.host = argv[++i];
    else if (arg === '--port') opts.port = Number(argv[++i]);
    else if (arg === '--exit-on-stdin-close') opts.exitOnStdinClose = true;
    else if (arg === '--recovery') opts.recovery = true;
    else if (arg === '--help' || arg === '-h') {
      process.stdout.write(
        'usage: node server.js [--host 127.0.0.1] [--port 0] [--recovery] [--exit-on-stdin-close]\n',
      );
      process.exit(0);
    } else {
      process.stderr.write(`unknown argument: ${arg}\n`);
      process.exit(2);
    }
  }
  if (!Number.isInteger(opts.port) || opts.port < 0 || opts.port > 65535) {
    process.stderr.write(`invalid port: ${opts.port}\n`);
    process.exit(2);
  }
  return opts;
}

const opts = parseArgs(process.argv.slice(2));

const httpServer = http.createServer((req, res) => {
  res.writeHead(404, { 'content-type': 'text/plain' });
  res.end('Socket.IO reference server for peermesh bench\n');
});

/** How long a dropped session can be recovered (--recovery), ms. */
const MAX_DISCONNECTION_MS = 30000;

const io = new Server(httpServer, {
  transports: ['websocket'],
  perMessageDeflate: false,
  httpCompression: false,
  serveClient: false,
  cors: undefined,
  ...(opts.recovery
    ? {
        connectionStateRecovery: {
          maxDisconnectionDuration: MAX_DISCONNECTION_MS,
          skipMiddlewares: true,
        },
      }
    : {}),
});

/** Disconnect reasons after which socket.io keeps the session (socket.io/dist/socket.js). */
const RECOVERABLE_REASONS = new Set([
  'transport error',
  'transport close',
  'forced close',
  'ping timeout',
  'server shutting down',
  'forced server close',
]);

/** clientId -> socket of its newest connection */
const clients = new Map();
/** clientId -> { sid, since } of a client that dropped and may recover (--recovery only) */
const away = new Map();

if (opts.recovery) {
  // Forget clients whose recovery window is over (the adapter drops their sessions too).
  setInterval(() => {
    const threshold = Date.now() - MAX_DISCONNECTION_MS;
    for (const [id, entry] of away) {
      if (entry.since < threshold) away.delete(id);
    }
  }, 5000).unref();
}

/** Sends an event to client `to`: its live socket, else (--recovery) its session's room. */
function deliver(to, ...args) {
  const target = clients.get(to);
  if (target !== undefined) {
    target.emit(...args);
  } else if (opts.recovery) {
    const entry = away.get(to);
    // Stored by the session-aware adapter and replayed if the client recovers its session.
    if (entry !== undefined) io.to(entry.sid).emit(...args);
  }
}

io.on('connection', (socket) => {
  const auth = socket.handshake.auth || {};
  const id = typeof auth.id === 'string' && auth.id.length > 0 ? auth.id : socket.id;
  // A reconnection (recovered or not) replaces the entry of the id's earlier connection.
  clients.set(id, socket);
  away.delete(id);

  socket.on('emit', (to, event, data) => {
    deliver(to, 'message', id, event, data);
  });

  socket.on('join', (room, ack) => {
    if (typeof room === 'string' && room.length > 0) {
      socket.join(room);
      if (typeof ack === 'function') ack('ok');
    } else if (typeof ack === 'function') {
      ack('invalid_field');
    }
  });

  socket.on('emit_room', (room, event, data) => {
    if (socket.rooms.has(room)) socket.to(room).emit('message', id, event, data, room);
  });

  socket.on('call', (to, method, data, ack) => {
    if (typeof ack !== 'function') return;
    const target = clients.get(to);
    if (target === undefined) return ack(null);
    target.emit('invoke', id, method, data, (result) => ack(result));
  });

  socket.on('disconnect', (reason) => {
    if (clients.get(id) !== socket) return;
    clients.delete(id);
    // The adapter keeps the session of a socket that dropped, not of one that left on purpose.
    if (opts.recovery && RECOVERABLE_REASONS.has(reason)) {
      away.set(id, { sid: socket.id, since: Date.now() });
    }
  });
});

httpServer.listen(opts.port, opts.host, () => {
  const { address, port } = httpServer.address();
  const line = {
    type: 'listening',
    addr: `${address}:${port}`,
    ws: `ws://${address}:${port}/socket.io/?EIO=4&transport=websocket`,
    pid: process.pid,
  };
  process.stdout.write(JSON.stringify(line) + '\n');
});

function shutdown() {
  io.close();
  httpServer.close();
  process.exit(0);
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
if (opts.exitOnStdinClose) {
  process.stdin.on('end', shutdown);
  process.stdin.on('error', shutdown);
  process.stdin.resume();
}
