// Peer for herald-bench: a plain broadcast hub on the `ws` package, written the way its README
// suggests (iterate the clients, send to each). JWT (HS256) is verified on connect so that the
// connect-rate scenario compares like with like.
//
// PERMESSAGE_DEFLATE=1 turns on ws's `perMessageDeflate` (RFC 7692) with its defaults (the
// server keeps its compression context when the client allows it, as browsers do; zlib's
// default level), except `threshold`, set to Herald's `deflate_min_bytes` default (256;
// DEFLATE_THRESHOLD overrides). Unset: no compression, the peer as it always was.
//
//   GET  /?token=<jwt>          WebSocket; the token's `sub` is the user id
//   POST /publish               body (JSON text) to every connection
//   POST /publish/batch         [{"user","data"}] each to that user's connections
'use strict';
const http = require('http');
const { WebSocketServer } = require('ws');
const jwt = require('jsonwebtoken');

const SECRET = process.env.JWT_SECRET || 'bench-secret';
const PORT = Number(process.env.PORT || 0);
const HOST = process.env.HOST || '127.0.0.1';
const DEFLATE = ['1', 'true'].includes(process.env.PERMESSAGE_DEFLATE || '');
const perMessageDeflate = DEFLATE
  ? { threshold: Number(process.env.DEFLATE_THRESHOLD || 256) }
  : false;

const users = new Map(); // user id -> Set of sockets

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

const server = http.createServer(async (req, res) => {
  if (req.method !== 'POST') {
    res.writeHead(404).end();
    return;
  }
  const body = await readBody(req);
  if (req.url === '/publish') {
    for (const client of wss.clients) {
      if (client.readyState === 1) client.send(body);
    }
  } else if (req.url === '/publish/batch') {
    for (const item of JSON.parse(body)) {
      const set = users.get(item.user);
      if (!set) continue;
      const text = JSON.stringify(item.data);
      for (const s of set) s.send(text);
    }
  } else {
    res.writeHead(404).end();
    return;
  }
  res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
});

const wss = new WebSocketServer({
  server,
  perMessageDeflate,
  verifyClient: (info, done) => {
    const url = new URL(info.req.url, 'http://x');
    try {
      const claims = jwt.verify(url.searchParams.get('token') || '', SECRET, { algorithms: ['HS256'] });
      info.req.user = String(claims.sub);
      done(true);
    } catch {
      done(false, 401);
    }
  },
});

wss.on('connection', (socket, req) => {
  const user = req.user;
  let set = users.get(user);
  if (!set) users.set(user, (set = new Set()));
  set.add(socket);
  socket.on('close', () => {
    set.delete(socket);
    if (set.size === 0) users.delete(user);
  });
  socket.on('error', () => {});
});

server.listen(PORT, HOST, () => {
  const a = server.address();
  console.log(`listening on http://${a.address}:${a.port}`);
});
