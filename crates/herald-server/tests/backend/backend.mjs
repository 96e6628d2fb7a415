// A small application backend for Herald's proxy tests: a real HTTP process, Node builtins
// only (no npm install). It verifies every request's signature exactly as docs/backend.md tells
// a backend to (HMAC-SHA256 of "<timestamp>.<body>", constant-time compare, timestamp within
// 5 minutes), and answers 401 when it does not verify.
//
// Routes (POST, JSON):
//   /rooms       subscribe proxy: room "1" admits alice and carol, others are "not invited";
//                room "open" admits everyone with info {"role":"guest"}
//   /connect     connect proxy: cookie session=s3cret-alice is alice (roles ["member"], the
//                x-tenant header echoed as a role "tenant:<x-tenant>"); session=short-bob is
//                bob for 2 s; anything else is refused
//   /publish     publish proxy: text containing "spam" is refused ("no spam"), "as-is" is
//                allowed unchanged, "break" is replaced by data that breaks the schema, anything
//                else is replaced by {text, author: <user>}
//   /rpc         rpc: room.invite answers {invited, room} or, for user "mallory", an error;
//                bad.answer answers data that breaks the response schema; slow.op waits 3 s
//   /hooks       webhooks: 200
//   /flaky       webhooks: 500 for the first two requests, then 200
//   /slow        waits 3 s, then allows
//   /status500   500
//   /malformed   200 with a body that is not the answer's shape
// GET /requests  every request seen so far: [{path, headers, body (raw text), verified}]
//
// Usage: node backend.mjs <secret>; prints "listening <port>" once ready.
import http from "node:http";
import crypto from "node:crypto";

const secret = process.argv[2];
const seen = [];
let flaky = 0;

function verify(req, raw) {
  const ts = req.headers["herald-timestamp"];
  const sig = req.headers["herald-signature"] || "";
  if (!ts || Math.abs(Date.now() / 1000 - Number(ts)) > 300) return false;
  const expected = "v1=" + crypto.createHmac("sha256", secret).update(`${ts}.${raw}`).digest("hex");
  const a = Buffer.from(sig);
  const b = Buffer.from(expected);
  return a.length === b.length && crypto.timingSafeEqual(a, b);
}

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    const raw = Buffer.concat(chunks).toString("utf8");
    const send = (status, body) => {
      res.writeHead(status, { "content-type": "application/json" });
      res.end(typeof body === "string" ? body : JSON.stringify(body));
    };
    if (req.method === "GET" && req.url === "/requests") return send(200, seen);
    const verified = verify(req, raw);
    seen.push({ path: req.url, headers: req.headers, body: raw, verified });
    if (!verified) return send(401, { error: "bad signature" });
    const ask = JSON.parse(raw);
    switch (req.url) {
      case "/rooms": {
        const room = ask.params.roomId;
        if (room === "open") return send(200, { allow: true, info: { role: "guest" } });
        const invited = room === "1" && ["alice", "carol"].includes(ask.user);
        return send(200, invited ? { allow: true } : { allow: false, reason: `${ask.user} is not invited to room ${room}` });
      }
      case "/connect": {
        const session = ask.cookies.session;
        if (session === "s3cret-alice") {
          const roles = ["member"];
          if (ask.headers["x-tenant"]) roles.push(`tenant:${ask.headers["x-tenant"]}`);
          return send(200, { allow: true, user: "alice", roles });
        }
        if (session === "short-bob") return send(200, { allow: true, user: "bob", roles: [], expires_at: Date.now() / 1000 + 2 });
        return send(200, { allow: false, reason: "no valid session" });
      }
      case "/publish": {
        const text = ask.data.text;
        if (text.includes("spam")) return send(200, { allow: false, reason: "no spam" });
        if (text === "as-is") return send(200, { allow: true });
        if (text === "break") return send(200, { allow: true, data: { text: 42 } });
        return send(200, { allow: true, data: { text, author: ask.user } });
      }
      case "/rpc":
        switch (ask.method) {
          case "room.invite":
            if (ask.data.user === "mallory") return send(200, { error: "mallory is banned" });
            return send(200, { data: { invited: ask.data.user, room: ask.data.room, by: ask.user } });
          case "bad.answer":
            return send(200, { data: { invited: 7 } });
          case "slow.op":
            return setTimeout(() => send(200, { data: {} }), 3000);
          default:
            return send(404, { error: "no such method" });
        }
      case "/hooks":
        return send(200, {});
      case "/flaky":
        flaky += 1;
        return send(flaky <= 2 ? 500 : 200, {});
      case "/slow":
        return setTimeout(() => send(200, { allow: true }), 3000);
      case "/status500":
        return send(500, { error: "boom" });
      case "/malformed":
        return send(200, "<html>not json</html>");
      default:
        return send(404, { error: "no such route" });
    }
  });
});
server.keepAliveTimeout = 65000;
server.listen(0, "127.0.0.1", () => {
  console.log(`listening ${server.address().port}`);
});
