// Regression tests for issue 20's client classes, each against the real gateway binary:
// 6. token refresh independent of the local clock, with bounded retries;
// 7. a refused connection ("unauthorized") told apart from an unreachable gateway;
// 8. listener semantics of the browser's EventTarget (a removed listener is not called again,
//    not even for the event being dispatched).
import { afterEach, describe, expect, it, vi } from "vitest";
import WS from "ws";
import { Herald, type DisconnectedEvent, type HeraldError } from "@herald/client";

import { Gateway, sleep, until } from "./helpers/gateway.js";
import { realNow } from "./helpers/jwt.js";

const WebSocket = WS;
const fast = { WebSocket, minReconnectDelayMs: 50, maxReconnectDelayMs: 300 };

const cleanup: (() => unknown)[] = [];
afterEach(async () => {
  vi.restoreAllMocks();
  for (const f of cleanup.splice(0).reverse()) await f();
});

async function gateway(opts?: Parameters<typeof Gateway.start>[0]): Promise<Gateway> {
  const gw = await Gateway.start(opts);
  cleanup.push(() => gw.kill());
  return gw;
}

function client(url: string, opts: ConstructorParameters<typeof Herald>[1]): Herald {
  const h = new Herald(url, { ...fast, ...opts });
  cleanup.push(() => h.disconnect());
  return h;
}

/** Moves the client's clock (`Date.now`) by `offsetMs`; tokens are still minted on the real one. */
function skewClock(offsetMs: number): void {
  vi.spyOn(Date, "now").mockImplementation(() => realNow() + offsetMs);
}

describe("class 6: token refresh does not trust the local clock", () => {
  for (const [label, skew] of [
    ["10 minutes ahead", 10 * 60_000],
    ["30 seconds behind", -30_000],
    ["1 hour behind", -3_600_000],
  ] as const) {
    it(`keeps one connection with 3 s tokens when the client clock is ${label}`, async () => {
      const gw = await gateway();
      skewClock(skew);
      let calls = 0;
      const h = client(gw.ws, {
        getToken: () => {
          calls++;
          return gw.token("alice", { ttlSeconds: 3 });
        },
      });
      const disconnects: DisconnectedEvent[] = [];
      h.on("disconnected", (e) => disconnects.push(e));
      h.connect();
      await until(() => h.connected, 10_000, "connected");
      const first = h.client;
      await sleep(7_500); // 2.5 token lifetimes
      expect(disconnects).toEqual([]);
      expect(h.client).toBe(first);
      // One token per ~2 s (refresh a quarter-lifetime early, at least 1 s early), not thousands.
      expect(calls).toBeGreaterThanOrEqual(3);
      expect(calls).toBeLessThanOrEqual(8);
    });
  }

  it("bounds refresh attempts when the gateway refuses every refresh", async () => {
    const gw = await gateway();
    skewClock(10 * 60_000);
    let calls = 0;
    const h = client(gw.ws, {
      getToken: () => {
        calls++;
        // The first token connects; every later one is for another user, so `refresh` fails.
        return gw.token(calls === 1 ? "alice" : "mallory", { ttlSeconds: 4 });
      },
    });
    const errors: HeraldError[] = [];
    h.on("error", (e) => errors.push(e));
    h.connect();
    await until(() => h.connected, 10_000, "connected");
    await sleep(3_500);
    // Retries with backoff while the token lives: a handful, never a storm.
    expect(calls).toBeGreaterThanOrEqual(2);
    expect(calls).toBeLessThanOrEqual(6);
    expect(errors.length).toBeGreaterThanOrEqual(1);
  });

  it("a token without iat is refreshed with bounded attempts even with a skewed clock", async () => {
    const gw = await gateway();
    skewClock(10 * 60_000);
    let calls = 0;
    const h = client(gw.ws, {
      getToken: () => {
        calls++;
        return gw.token("alice", { ttlSeconds: 60, noIat: true });
      },
    });
    const disconnects: DisconnectedEvent[] = [];
    h.on("disconnected", (e) => disconnects.push(e));
    h.connect();
    await until(() => h.connected, 10_000, "connected");
    await sleep(4_000);
    expect(disconnects).toEqual([]);
    // Without `iat` the lifetime is unknown; the clock says "expired", so the client refreshes,
    // but with a growing pause (1 s, 2 s, …), never in a loop.
    expect(calls).toBeLessThanOrEqual(5);
  });
});

describe("class 7: refused is not unreachable", () => {
  it("a refused token is retried once with a fresh token, then surfaced as unauthorized", async () => {
    const gw = await gateway();
    let calls = 0;
    const h = client(gw.ws, {
      getToken: () => {
        calls++;
        return gw.token("alice", { secret: "not-the-gateway-secret" });
      },
    });
    const errors: HeraldError[] = [];
    const disconnects: DisconnectedEvent[] = [];
    h.on("error", (e) => errors.push(e));
    h.on("disconnected", (e) => disconnects.push(e));
    h.connect();
    await until(() => errors.some((e) => e.code === "unauthorized"), 10_000, "unauthorized to be surfaced");
    await sleep(1_000);
    expect(calls).toBe(2); // the first token, then one fresh one
    expect(h.state).toBe("disconnected");
    expect(disconnects.at(-1)).toMatchObject({ reconnect: false });
    const unauthorized = errors.find((e) => e.code === "unauthorized")!;
    expect(unauthorized.message).toMatch(/token/i);
  });

  it("over SSE alone, a refused token is surfaced the same way (the stream's 401 is visible)", async () => {
    const gw = await gateway();
    let calls = 0;
    const h = client(gw.ws, {
      transports: ["sse"],
      getToken: () => {
        calls++;
        return gw.token("alice", { secret: "not-the-gateway-secret" });
      },
    });
    const errors: HeraldError[] = [];
    h.on("error", (e) => errors.push(e));
    h.connect();
    await until(() => errors.some((e) => e.code === "unauthorized"), 10_000, "unauthorized to be surfaced");
    await sleep(500);
    expect(calls).toBe(2);
    expect(h.state).toBe("disconnected");
  });

  it("an expired token is refused the same way", async () => {
    const gw = await gateway();
    const h = client(gw.ws, { getToken: () => gw.token("alice", { ttlSeconds: -60 }) });
    const errors: HeraldError[] = [];
    h.on("error", (e) => errors.push(e));
    h.connect();
    await until(() => errors.some((e) => e.code === "unauthorized"), 10_000, "unauthorized to be surfaced");
    expect(h.state).toBe("disconnected");
  });

  it("a refused token followed by a good one connects without surfacing anything", async () => {
    const gw = await gateway();
    let calls = 0;
    const h = client(gw.ws, {
      getToken: () => (++calls === 1 ? gw.token("alice", { secret: "wrong" }) : gw.token("alice")),
    });
    const errors: HeraldError[] = [];
    h.on("error", (e) => errors.push(e));
    h.connect();
    await until(() => h.connected, 10_000, "connected with the fresh token");
    expect(calls).toBe(2);
    expect(errors.filter((e) => e.code === "unauthorized")).toEqual([]);
  });

  it("a refused origin stops with forbidden (no retry loop)", async () => {
    const gw = await gateway({ server: 'allowed_origins = ["https://app.example"]' });
    let streams = 0;
    const fromElsewhere = (input: string, init?: RequestInit) => {
      if ((init?.method ?? "GET") === "GET") streams++;
      return fetch(input, { ...init, headers: { ...(init?.headers as Record<string, string>), origin: "https://evil.example" } });
    };
    const h = client(gw.ws, { transports: ["sse"], getToken: () => gw.token("alice"), fetch: fromElsewhere });
    const disconnects: DisconnectedEvent[] = [];
    h.on("disconnected", (e) => disconnects.push(e));
    h.connect();
    await until(() => disconnects.length > 0, 10_000, "the refusal");
    await sleep(500);
    expect(disconnects).toHaveLength(1);
    expect(disconnects[0]).toMatchObject({ reconnect: false, error: { code: "forbidden" } });
    expect(streams).toBe(1);
    expect(h.state).toBe("disconnected");
  });

  it("too many connections is reported and retried, not taken for a refused token", async () => {
    const gw = await gateway({ sections: "[limits]\nmax_connections_per_user = 1" });
    const first = client(gw.ws, { token: gw.token("alice") });
    first.connect();
    await until(() => first.connected);
    let calls = 0;
    const second = client(gw.ws, {
      getToken: () => {
        calls++;
        return gw.token("alice");
      },
    });
    const errors: HeraldError[] = [];
    second.on("error", (e) => errors.push(e));
    second.connect();
    await until(() => errors.some((e) => e.code === "too_many_connections"), 10_000, "too_many_connections to be reported");
    await until(() => calls >= 3, 10_000, "retries");
    expect(errors.filter((e) => e.code === "unauthorized")).toEqual([]);
    // It keeps trying, and gets in once the first connection leaves.
    first.disconnect();
    await until(() => second.connected, 10_000, "the second connection once there is room");
  });

  it("an unreachable gateway is retried with backoff and never called unauthorized", async () => {
    const gw = await gateway();
    const port = gw.port;
    await gw.kill(); // nothing listens there any more
    let calls = 0;
    const h = client(`ws://127.0.0.1:${port}/v1/ws`, {
      getToken: () => {
        calls++;
        return gw.token("alice");
      },
    });
    const errors: HeraldError[] = [];
    h.on("error", (e) => errors.push(e));
    h.connect();
    await sleep(2_000);
    expect(calls).toBeGreaterThanOrEqual(3);
    expect(errors.filter((e) => e.code === "unauthorized")).toEqual([]);
    expect(h.state).not.toBe("connected");
  });
});

describe("class 8: EventTarget listener semantics", () => {
  it("a publication handler removed during a dispatch is not called for it", async () => {
    const gw = await gateway();
    const h = client(gw.ws, { token: gw.token("alice") });
    h.connect();
    await until(() => h.connected);
    const calls: string[] = [];
    let offB: () => void = () => {};
    const offA = h.subscribe("blog.article.feed", (d) => {
      calls.push(`a:${(d as { id: string }).id}`);
      offB();
    });
    offB = h.subscribe("blog.article.feed", (d) => calls.push(`b:${(d as { id: string }).id}`));
    await offA.ready;
    // A handler added during a dispatch is not called for it either (but for the next one).
    let added = false;
    h.subscribe("blog.article.feed", () => {
      if (added) return;
      added = true;
      h.subscribe("blog.article.feed", (d) => calls.push(`c:${(d as { id: string }).id}`));
    });
    await gw.publish("blog.article.feed", { id: "1", title: "one" });
    await gw.publish("blog.article.feed", { id: "2", title: "two" });
    await until(() => calls.includes("a:2"));
    await sleep(100);
    expect(calls).toEqual(["a:1", "a:2", "c:2"]);
  });

  it("a state listener removed during a dispatch is not called for it", async () => {
    const gw = await gateway();
    const h = client(gw.ws, { token: gw.token("alice") });
    const seen: string[] = [];
    let offB: () => void = () => {};
    h.on("state", ({ state }) => {
      seen.push(`a:${state}`);
      offB();
    });
    offB = h.on("state", ({ state }) => seen.push(`b:${state}`));
    h.connect();
    await until(() => h.connected);
    expect(seen).toEqual(["a:connecting", "a:connected"]);
  });

  it("presence and subscribed callbacks removed during a dispatch are not called", async () => {
    const gw = await gateway();
    const h = client(gw.ws, { token: gw.token("alice") });
    h.connect();
    await until(() => h.connected);
    const seen: string[] = [];
    let offB: () => void = () => {};
    const offA = h.subscribe("chat.room.x", () => {}, {
      onSubscribed: () => {
        seen.push("a:subscribed");
        offB();
      },
      onPresence: (e) => seen.push(`a:${e.type}:${e.user}`),
    });
    offB = h.subscribe("chat.room.x", () => {}, {
      onSubscribed: () => seen.push("b:subscribed"),
      onPresence: (e) => seen.push(`b:${e.type}:${e.user}`),
    });
    await offA.ready;
    const bob = client(gw.ws, { token: gw.token("bob") });
    bob.connect();
    await until(() => bob.connected);
    await bob.subscribe("chat.room.x", () => {}).ready;
    await until(() => seen.includes("a:join:bob"));
    await sleep(100);
    expect(seen).toEqual(["a:subscribed", "a:join:bob"]);
  });
});
