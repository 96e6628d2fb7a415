// Signs in to a gateway's admin API and keeps one dashboard connection subscribed to
// $admin:nodes, as an open /admin page does (used by admin-idle-cpu.sh).
// usage: node scripts/admin-watch.mjs http://127.0.0.1:PORT USER PASSWORD
import { createRequire } from "node:module";
const require = createRequire(new URL("../clients/typescript/package.json", import.meta.url));
const WebSocket = require("ws");

const [base, user, password] = process.argv.slice(2);
const res = await fetch(`${base}/admin/api/login`, {
  method: "POST",
  headers: { "content-type": "application/json" },
  body: JSON.stringify({ user, password }),
});
if (!res.ok) throw new Error(`sign-in: HTTP ${res.status}`);
const cookie = res.headers.get("set-cookie").split(";")[0];
const { csrf } = await res.json();
const { ticket } = await (await fetch(`${base}/admin/api/ticket`, { method: "POST", headers: { cookie, "x-csrf-token": csrf } })).json();
const ws = new WebSocket(`${base.replace("http", "ws")}/v1/ws?token=${ticket}`);
let snapshots = 0;
ws.on("open", () => ws.send(JSON.stringify({ type: "subscribe", id: 1, channel: "$admin:nodes" })));
ws.on("message", (m) => {
  const f = JSON.parse(m.toString());
  if (f.type === "pub") snapshots++;
  if (f.type === "ping") ws.send(JSON.stringify({ type: "pong" }));
});
process.on("SIGTERM", () => {
  console.log(`snapshots received: ${snapshots}`);
  process.exit(0);
});
