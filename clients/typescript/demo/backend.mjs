// The demo's backend: decides who may enter the private room through Herald's subscribe proxy.
// Node builtins only: `node clients/typescript/demo/backend.mjs` (port 8090 by default, the
// `[[proxy]] url` of the example herald.toml). It verifies every request's signature as
// docs/backend.md describes, and admits the invited users only.
//
// Environment: DEMO_BACKEND_PORT (default 8090; 0 for a free one), HERALD_BACKEND_SECRET (the
// gateway's `backend.secret`, default the example config's). Prints "listening <port>".
import http from "node:http";
import crypto from "node:crypto";

const secret = process.env.HERALD_BACKEND_SECRET ?? "dev-backend-secret-change-me";
const port = Number(process.env.DEMO_BACKEND_PORT ?? 8090);

/** Who is invited to which private room: your own database, in a real application. */
const invited = { vip: ["alice", "carol"] };

function verified(req, raw) {
  const ts = req.headers["herald-timestamp"];
  const sig = req.headers["herald-signature"] ?? "";
  if (!ts || Math.abs(Date.now() / 1000 - Number(ts)) > 300) return false;
  const expected = "v1=" + crypto.createHmac("sha256", secret).update(`${ts}.${raw}`).digest("hex");
  return sig.length === expected.length && crypto.timingSafeEqual(Buffer.from(sig), Buffer.from(expected));
}

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    const raw = Buffer.concat(chunks).toString("utf8");
    const answer = (status, body) => {
      res.writeHead(status, { "content-type": "application/json" });
      res.end(JSON.stringify(body));
    };
    if (req.method !== "POST" || req.url !== "/herald/subscribe") return answer(404, { error: "not found" });
    if (!verified(req, raw)) return answer(401, { error: "bad signature" });
    const { user, params } = JSON.parse(raw);
    const room = params.roomId;
    if ((invited[room] ?? []).includes(user)) return answer(200, { allow: true });
    return answer(200, { allow: false, reason: `${user ?? "anonymous"} is not invited to the ${room} room` });
  });
});
server.listen(port, "127.0.0.1", () => console.log(`listening ${server.address().port}`));
