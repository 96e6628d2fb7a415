// Peer for herald-bench: Socket.IO 4.8 with rooms, the way Socket.IO apps push. Every
// connection joins the broadcast room and its own user room; the JWT (HS256) is verified in a
// connection middleware, like an app would.
//
//   /socket.io/?EIO=4&transport=websocket&token=<jwt>
//   POST /publish          body (JSON) emitted as event "pub" to room "bench.fanout"
//   POST /publish/batch    [{"user","data"}] each emitted to room "user:<user>"
'use strict';
const http = require('http');
const { Server } = require('socket.io');
const jwt = require('jsonwebtoken');

const SECRET = process.env.JWT_SECRET || 'bench-secret';
const PORT = Number(process.env.PORT || 0);
const HOST = process.env.HOST || '127.0.0.1';
const ROOM = process.env.ROOM || 'bench.fanout';

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

const server = http.createServer(async (req, res) => {
  // Socket.IO handles its own path; everything else is the publish trigger.
  if (req.url.startsWith('/socket.io/')) return;
  if (req.method !== 'POST') {
    res.writeHead(404).end();
    return;
  }
  const body = await readBody(req);
  if (req.url === '/publish') {
    io.to(ROOM).emit('pub', JSON.parse(body));
  } else if (req.url === '/publish/batch') {
    for (const item of JSON.parse(body)) io.to(`user:${item.user}`).emit('pub', item.data);
  } else {
    res.writeHead(404).end();
    return;
  }
  res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
});

const io = new Server(server, { serveClient: false });

io.use((socket, next) => {
  const token = socket.handshake.auth?.token || socket.handshake.query.token || '';
  try {
    const claims = jwt.verify(token, SECRET, { algorithms: ['HS256'] });
    socket.data.user = String(claims.sub);
    next();
  } catch {
    next(new Error('unauthorized'));
  }
});

io.on('connection', (socket) => {
  socket.join(ROOM);
  socket.join(`user:${socket.data.user}`);
});

server.listen(PORT, HOST, () => {
  const a = server.address();
  console.log(`listening on http://${a.address}:${a.port}`);
});
