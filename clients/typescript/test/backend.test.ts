// @herald/client and the backend in charge, against the real gateway binary: subscription
// tokens from `getSubscriptionToken` (subscribe, renewal before exp with `sub_refresh`, a new
// token after `token_expired`) over each transport, and `rpc` answered by a real backend
// process (crates/herald-server/tests/backend/backend.mjs, the Rust tests' backend).
import { spawn, type ChildProcess } from "node:child_process";
import { createHmac } from "node:crypto";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { afterEach, describe, expect, it } from "vitest";
import WS from "ws";
import { Herald, HeraldError, type TransportName } from "@herald/client";

import { Gateway, SECRET, repoRoot, until } from "./helpers/gateway.js";
import { nowNumericDate } from "./helpers/jwt.js";

const cleanup: (() => unknown)[] = [];
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f();
});

/** A subscription token: `channel`, `sub`, `iat`, `exp` (HS256 with the gateway's secret). */
function subscriptionToken(user: string, channel: string, ttlSeconds: number): string {
  const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const now = nowNumericDate();
  const head = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ sub: user, channel, iat: now, exp: now + ttlSeconds })}`;
  return `${head}.${createHmac("sha256", SECRET).update(head).digest("base64url")}`;
}

const TOKEN_CHANNEL = `
[[channel]]
name = "private.room.{roomId}"
scope = "token"
schema = { type = "object" }
`;

describe.each<TransportName>(["websocket", "sse"])("subscription tokens over %s", (transport) => {
  it("subscribes with getSubscriptionToken, renews before exp, and only asks for token channels", async () => {
    const gw = await Gateway.start({ sections: TOKEN_CHANNEL });
    cleanup.push(() => gw.kill());
    const asked: string[] = [];
    const h = new Herald(gw.ws, {
      WebSocket: WS,
      transports: [transport],
      token: gw.token("alice"),
      // Short-lived on purpose: renewed (sub_refresh) a quarter of its life before exp.
      getSubscriptionToken: async (channel) => {
        asked.push(channel);
        return channel.startsWith("private.") ? subscriptionToken("alice", channel, 4) : undefined;
      },
    });
    cleanup.push(() => h.disconnect());
    const errors: HeraldError[] = [];
    h.on("error", (e) => errors.push(e));
    const subscribed: string[] = [];
    h.on("subscribed", (info) => subscribed.push(info.channel));
    h.connect();
    const got: unknown[] = [];
    await h.subscribe("private.room.1", (d) => got.push(d)).ready;
    await h.subscribe("blog.article.feed", () => {}).ready;
    expect(asked).toEqual(["private.room.1", "blog.article.feed"]);
    await gw.publish("private.room.1", { n: 1 });
    await until(() => got.length === 1, 5_000, "the first publication");
    // Past the first token's exp: still subscribed, because it was renewed.
    await until(() => asked.filter((c) => c === "private.room.1").length >= 2, 6_000, "a renewal");
    await new Promise((r) => setTimeout(r, 4_200 - 3_000));
    await gw.publish("private.room.1", { n: 2 });
    await until(() => got.length === 2, 5_000, "a publication after the first token's exp");
    expect(errors).toEqual([]);
    // Renewed in place (sub_refresh), not ended and subscribed again.
    expect(subscribed.filter((c) => c === "private.room.1")).toEqual(["private.room.1"]);
    expect(asked.filter((c) => c === "private.room.1").length).toBe(2);
  }, 20_000);

  it("refused subscription tokens reject `ready` with the gateway's code", async () => {
    const gw = await Gateway.start({ sections: TOKEN_CHANNEL });
    cleanup.push(() => gw.kill());
    const h = new Herald(gw.ws, {
      WebSocket: WS,
      transports: [transport],
      token: gw.token("alice"),
      getSubscriptionToken: (channel) => subscriptionToken("bob", channel, 60),
    });
    cleanup.push(() => h.disconnect());
    h.connect();
    const err = await h.subscribe("private.room.1", () => {}, { onError: () => {} }).ready.catch((e: unknown) => e);
    expect(err).toBeInstanceOf(HeraldError);
    expect((err as HeraldError).code).toBe("forbidden");
  });
});

/** The typed rpc map of the test config, as `herald codegen typescript` writes it. */
interface TestRpc {
  "room.invite": { request: { room: string; user: string }; response: { invited: string; room: string; by: string } };
}

describe("rpc", () => {
  it("returns the backend's answer, typed, and rejects with rpc_error", async () => {
    const backend = spawn(process.execPath, [join(repoRoot, "crates/herald-server/tests/backend/backend.mjs"), "backend-secret"], {
      stdio: ["ignore", "pipe", "inherit"],
    });
    cleanup.push(() => backend.kill());
    const port = await new Promise<number>((resolve) => {
      createInterface({ input: (backend as ChildProcess).stdout! }).once("line", (l) => resolve(Number(l.split(" ")[1])));
    });
    const gw = await Gateway.start({
      sections: `
[backend]
secret = "backend-secret"

[[proxy]]
name = "app"
url = "http://127.0.0.1:${port}/rpc"

[[rpc]]
method = "room.invite"
proxy = "app"
request = { type = "object", required = ["room", "user"], properties = { room = { type = "string" }, user = { type = "string" } } }
response = { type = "object", required = ["invited"], properties = { invited = { type = "string" } } }
`,
    });
    cleanup.push(() => gw.kill());
    const h = new Herald<Record<string, unknown>, TestRpc>(gw.ws, { WebSocket: WS, token: gw.token("alice") });
    cleanup.push(() => h.disconnect());
    h.connect();
    await until(() => h.connected, 10_000, "connected");
    const answer = await h.rpc("room.invite", { room: "1", user: "bob" });
    expect(answer).toEqual({ invited: "bob", room: "1", by: "alice" });
    const by: string = answer.by;
    expect(by).toBe("alice");
    const err = await h.rpc("room.invite", { room: "1", user: "mallory" }).catch((e: unknown) => e);
    expect((err as HeraldError).code).toBe("rpc_error");
    expect((err as HeraldError).message).toContain("mallory is banned");
    // @ts-expect-error: the request type comes from the map
    await h.rpc("room.invite", { room: 1 }).catch(() => {});
  });
});
