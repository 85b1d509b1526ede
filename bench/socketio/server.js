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
// Usage: node server.js [--host 127.0.0.1] [--port 0] [--exit-on-stdin-close]
// The first line on stdout is
//   {"type":"listening","addr":"127.0.0.1:PORT","ws":"ws://127.0.0.1:PORT/socket.io/?EIO=4&transport=websocket","pid":PID}

'use strict';

const http = require('node:http');
const { Server } = require('socket.io');

function parseArgs(argv) {
  const opts = { host: '127.0.0.1', port: Number(process.env.PORT || 0), exitOnStdinClose: false };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--host') opts.host = argv[++i];
    else if (arg === '--port') opts.port = Number(argv[++i]);
    else if (arg === '--exit-on-stdin-close') opts.exitOnStdinClose = true;
    else if (arg === '--help' || arg === '-h') {
      process.stdout.write('usage: node server.js [--host 127.0.0.1] [--port 0] [--exit-on-stdin-close]\n');
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

const io = new Server(httpServer, {
  transports: ['websocket'],
  perMessageDeflate: false,
  httpCompression: false,
  serveClient: false,
  cors: undefined,
});

/** clientId -> socket */
const clients = new Map();

io.on('connection', (socket) => {
  const auth = socket.handshake.auth || {};
  const id = typeof auth.id === 'string' && auth.id.length > 0 ? auth.id : socket.id;
  clients.set(id, socket);

  socket.on('emit', (to, event, data) => {
    const target = clients.get(to);
    if (target !== undefined) target.emit('message', id, event, data);
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

  socket.on('disconnect', () => {
    if (clients.get(id) === socket) clients.delete(id);
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
