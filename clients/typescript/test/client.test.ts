// @herald/client against the real gateway binary, over each transport (WebSocket and SSE):
// the same API, errors, recovery, refresh and kick behaviour whichever wire carries it.
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import WS from "ws";
import { Herald, HeraldError, type SubscribedInfo, type TransportName, type DisconnectedEvent } from "@herald/client";

import { Gateway, sleep, until } from "./helpers/gateway.js";
import { CuttableProxy, NoWebSocketProxy } from "./helpers/proxy.js";

// Node 20 has no global WebSocket: inject `ws` (the browser build uses the global one). Its
// class fits the option as it is: no cast.
const WebSocket = WS;
let fast: ConstructorParameters<typeof Herald>[1] = { WebSocket, minReconnectDelayMs: 50, maxReconnectDelayMs: 300 };

const cleanup: (() => unknown)[] = [];
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f();
});

async function gateway(opts?: Parameters<typeof Gateway.start>[0]): Promise<Gateway> {
  const gw = await Gateway.start(opts);
  cleanup.push(() => gw.kill());
  return gw;
}

function client<C extends object = Record<string, unknown>>(url: string, opts: ConstructorParameters<typeof Herald>[1]): Herald<C> {
  const h = new Herald<C>(url, { ...fast, ...opts });
  cleanup.push(() => h.disconnect());
  return h;
}

async function connected(h: { connect(): void; readonly connected: boolean }): Promise<void> {
  h.connect();
  await until(() => h.connected, 10_000, "connected");
}

describe.each<TransportName>(["websocket", "sse"])("@herald/client against the gateway over %s", (transport) => {
  beforeEach(() => {
    fast = { WebSocket, minReconnectDelayMs: 50, maxReconnectDelayMs: 300, transports: [transport] };
  });

  it("subscribes, receives and publishes", async () => {
    const gw = await gateway();
    const h = client(gw.ws, { token: gw.token("alice") });
    const states: string[] = [];
    h.on("state", ({ state }) => states.push(state));
    await connected(h);
    expect(h.user).toBe("alice");

    const feed: unknown[] = [];
    const unsub = h.subscribe("blog.article.feed", (d, pub) => feed.push({ ...(d as object), offset: pub.offset }));
    const info = await unsub.ready;
    expect(info).toMatchObject({ channel: "blog.article.feed", resubscribed: false, lost: false });

    await gw.publish("blog.article.feed", { id: "1", title: "Hello" });
    await until(() => feed.length === 1);
    expect(feed[0]).toEqual({ id: "1", title: "Hello", offset: info.offset + 1 });

    // The per-user push surface is there without a subscribe frame.
    const notes: unknown[] = [];
    await h.subscribe("notifications.user.alice", (d) => notes.push(d)).ready;
    await gw.publish("notifications.user.alice", { type: "mention", text: "hi" });
    await gw.publish("notifications.user.bob", { type: "mention", text: "not for alice" });
    await until(() => notes.length === 1);

    // Client publish on a channel that allows it: the reply carries the offset, and the
    // publication comes back to the subscriber.
    const chat: unknown[] = [];
    await h.subscribe("chat.room.lobby", (d) => chat.push(d)).ready;
    const r = await h.publish("chat.room.lobby", { text: "hello room" });
    expect(r.offset).toBe(1);
    expect(typeof r.epoch).toBe("string");
    await until(() => chat.length === 1);
    expect(chat).toEqual([{ text: "hello room" }]);

    // Unsubscribing stops delivery.
    unsub();
    await sleep(100);
    await gw.publish("blog.article.feed", { id: "2", title: "After" });
    await sleep(300);
    expect(feed).toHaveLength(1);
    expect(notes).toHaveLength(1);
    expect(states).toEqual(["connecting", "connected"]);
  });

  it("rejects with the server's error codes", async () => {
    const gw = await gateway();
    const h = client(gw.ws, { token: gw.token("alice") });

    await expect(h.publish("chat.room.lobby", { text: "x" })).rejects.toMatchObject({ code: "not_connected" });
    await connected(h);

    const forbidden = await h.publish("blog.article.feed", { id: "1", title: "x" }).catch((e: unknown) => e);
    expect(forbidden).toBeInstanceOf(HeraldError);
    expect(forbidden).toMatchObject({ code: "forbidden" });

    await expect(h.publish("chat.room.lobby", { text: 5 })).rejects.toMatchObject({
      code: "invalid_payload",
      pointer: "/text",
    });
    await expect(h.publish("no.such.channel", {})).rejects.toMatchObject({ code: "unknown_channel" });

    const errors: HeraldError[] = [];
    const unknown = h.subscribe("nope", () => {}, { onError: (e) => errors.push(e) });
    await expect(unknown.ready).rejects.toMatchObject({ code: "unknown_channel" });
    await expect(h.subscribe("ops.alerts", () => {}, { onError: (e) => errors.push(e) }).ready).rejects.toMatchObject({
      code: "forbidden",
    });
    await expect(h.subscribe("notifications.user.bob", () => {}, { onError: (e) => errors.push(e) }).ready).rejects.toMatchObject({
      code: "forbidden",
    });
    expect(errors.map((e) => e.code)).toEqual(["unknown_channel", "forbidden", "forbidden"]);
    await expect(h.presence("blog.article.feed")).rejects.toBeInstanceOf(HeraldError);

    // An admin may subscribe where alice may not.
    const admin = client(gw.ws, { token: gw.token("root", { roles: ["admin"] }) });
    await connected(admin);
    await admin.subscribe("ops.alerts", () => {}).ready;
  });

  it("reconnects after the socket drops and recovers with no gap and no duplicate", async () => {
    const gw = await gateway();
    const proxy = await CuttableProxy.start(gw.port);
    cleanup.push(() => proxy.close());
    const h = client(proxy.ws, { getToken: () => gw.token("alice") });
    const disconnects: DisconnectedEvent[] = [];
    h.on("disconnected", (e) => disconnects.push(e));
    await connected(h);

    const feed: string[] = [];
    const notes: string[] = [];
    const feedInfo: SubscribedInfo[] = [];
    const noteInfo: SubscribedInfo[] = [];
    await h.subscribe("blog.article.feed", (d) => feed.push((d as { id: string }).id), {
      onSubscribed: (i) => feedInfo.push(i),
    }).ready;
    await h.subscribe("notifications.user.alice", (d) => notes.push((d as { text: string }).text), {
      onSubscribed: (i) => noteInfo.push(i),
    }).ready;

    for (const n of ["1", "2"]) {
      await gw.publish("blog.article.feed", { id: n, title: n });
      await gw.publish("notifications.user.alice", { type: "system", text: n });
    }
    await until(() => feed.length === 2 && notes.length === 2);

    proxy.cut();
    await until(() => h.state !== "connected", 5_000, "the drop to be noticed");
    // Published while the client is away: must be replayed on reconnect.
    for (const n of ["3", "4"]) {
      await gw.publish("blog.article.feed", { id: n, title: n });
      await gw.publish("notifications.user.alice", { type: "system", text: n });
    }
    proxy.unblock();
    await until(() => h.connected, 10_000, "reconnect");
    await until(() => feed.length >= 4 && notes.length >= 4, 5_000, "replay");
    await gw.publish("blog.article.feed", { id: "5", title: "5" });
    await gw.publish("notifications.user.alice", { type: "system", text: "5" });
    await until(() => feed.length >= 5 && notes.length >= 5);
    await sleep(200);

    expect(feed).toEqual(["1", "2", "3", "4", "5"]);
    expect(notes).toEqual(["1", "2", "3", "4", "5"]);
    expect(disconnects.length).toBeGreaterThanOrEqual(1);
    expect(disconnects[0]!.reconnect).toBe(true);
    expect(feedInfo.at(-1)).toMatchObject({ resubscribed: true, recovered: true, lost: false });
    expect(noteInfo.at(-1)).toMatchObject({ resubscribed: true, recovered: true, lost: false });
  });

  it("surfaces recovered:false after a gateway restart", async () => {
    const gw = await gateway();
    const h = client(gw.ws, { getToken: () => gw.token("alice") });
    await connected(h);
    const feed: string[] = [];
    const lost: string[] = [];
    const events: SubscribedInfo[] = [];
    h.on("subscribed", (i) => events.push(i));
    await h.subscribe("blog.article.feed", (d) => feed.push((d as { id: string }).id), {
      onRecoveryFailed: (i) => lost.push(i.channel),
    }).ready;
    await h.subscribe("notifications.user.alice", () => {}, { onRecoveryFailed: (i) => lost.push(i.channel) }).ready;
    await gw.publish("blog.article.feed", { id: "before", title: "x" });
    await until(() => feed.length === 1);

    await gw.restart(); // new process: history gone, new epoch
    await until(() => lost.length === 2, 15_000, "recovery failure to be reported");
    expect(lost.sort()).toEqual(["blog.article.feed", "notifications.user.alice"]);
    expect(events.filter((e) => e.lost).map((e) => e.channel).sort()).toEqual(["blog.article.feed", "notifications.user.alice"]);
    expect(h.connected).toBe(true);

    // Live again on the new epoch.
    await gw.publish("blog.article.feed", { id: "after", title: "y" });
    await until(() => feed.length === 2);
    expect(feed).toEqual(["before", "after"]);
  });

  it("refreshes the token before it expires", async () => {
    const gw = await gateway();
    let calls = 0;
    const h = client(gw.ws, {
      getToken: () => {
        calls++;
        return gw.token("alice", { ttlSeconds: 3 });
      },
    });
    const disconnects: DisconnectedEvent[] = [];
    h.on("disconnected", (e) => disconnects.push(e));
    await connected(h);
    const notes: unknown[] = [];
    await h.subscribe("notifications.user.alice", (d) => notes.push(d)).ready;
    const client0 = h.client;

    await sleep(7_500); // 2.5 lifetimes of the first token
    expect(disconnects).toEqual([]);
    expect(h.client).toBe(client0); // the same connection all along
    expect(calls).toBeGreaterThanOrEqual(3);
    await gw.publish("notifications.user.alice", { type: "system", text: "still here" });
    await until(() => notes.length === 1);

    // Control: without refresh the same token gets the connection closed with 4001.
    const noRefresh = client(gw.ws, { getToken: () => gw.token("bob", { ttlSeconds: 2 }), refreshToken: false });
    const closed: DisconnectedEvent[] = [];
    noRefresh.on("disconnected", (e) => closed.push(e));
    await connected(noRefresh);
    await until(() => closed.length > 0, 8_000, "the 4001 close");
    expect(closed[0]).toMatchObject({ code: 4001, reconnect: true });
    await until(() => noRefresh.connected, 5_000, "reconnect with a fresh token");
  });

  it("answers pings so the gateway keeps the connection", async () => {
    const gw = await gateway({ server: 'ping_interval = "200ms"\npong_timeout = "200ms"' });
    const h = client(gw.ws, { token: gw.token("alice") });
    const disconnects: DisconnectedEvent[] = [];
    h.on("disconnected", (e) => disconnects.push(e));
    await connected(h);
    const id = h.client;
    await sleep(2_000);
    expect(disconnects).toEqual([]);
    expect(h.client).toBe(id);
  });

  it.runIf(transport === "websocket")("connect, disconnect, connect in a row opens one connection (React StrictMode does this)", async () => {
    const gw = await gateway();
    let sockets = 0;
    class Counting extends WS {
      constructor(url: string) {
        super(url);
        sockets++;
      }
    }
    const h = client(gw.ws, {
      getToken: async () => (await sleep(50), gw.token("dave")),
      WebSocket: Counting,
    });
    let welcomes = 0;
    h.on("connected", () => welcomes++);
    h.connect();
    h.disconnect();
    h.connect();
    await until(() => h.connected);
    await h.subscribe("chat.room.strict", () => {}).ready;
    await sleep(300);
    expect(welcomes).toBe(1);
    expect(sockets).toBe(1);
    const present = await h.presence("chat.room.strict");
    expect(present).toHaveLength(1);
  });

  it.runIf(transport === "sse")("connect, disconnect, connect in a row opens one SSE stream (React StrictMode does this)", async () => {
    const gw = await gateway();
    let streams = 0;
    const counting = (input: string, init?: RequestInit) => {
      if ((init?.method ?? "GET") === "GET") streams++;
      return fetch(input, init);
    };
    const h = client(gw.ws, { getToken: async () => (await sleep(50), gw.token("dave")), fetch: counting });
    let welcomes = 0;
    h.on("connected", () => welcomes++);
    h.connect();
    h.disconnect();
    h.connect();
    await until(() => h.connected);
    await h.subscribe("chat.room.strict", () => {}).ready;
    await sleep(300);
    expect(welcomes).toBe(1);
    expect(streams).toBe(1);
    expect(h.transport).toBe("sse");
    expect(await h.presence("chat.room.strict")).toHaveLength(1);
  });

  it("does not reconnect when kicked", async () => {
    const gw = await gateway();
    const h = client(gw.ws, { token: gw.token("carol") });
    const disconnects: DisconnectedEvent[] = [];
    h.on("disconnected", (e) => disconnects.push(e));
    await connected(h);
    const res = await fetch(`${gw.http}/v1/users/carol/disconnect`, {
      method: "POST",
      headers: { authorization: "Bearer test-api-key" },
    });
    expect(res.ok).toBe(true);
    await until(() => disconnects.length === 1);
    expect(disconnects[0]).toMatchObject({ code: 4403, reconnect: false });
    await sleep(500);
    expect(h.state).toBe("disconnected");
  });
});

describe("@herald/client transport fallback", () => {
  it("falls back to SSE behind a proxy that refuses WebSocket, recovers over SSE, and keeps SSE first", async () => {
    const gw = await gateway();
    const proxy = await NoWebSocketProxy.start(gw.port);
    cleanup.push(() => proxy.close());
    const h = new Herald(proxy.ws, { WebSocket, minReconnectDelayMs: 50, maxReconnectDelayMs: 300, getToken: () => gw.token("alice") });
    cleanup.push(() => h.disconnect());
    const connectedVia: string[] = [];
    h.on("connected", (e) => connectedVia.push(e.transport));
    h.connect();
    await until(() => h.connected, 10_000, "connected");
    expect(h.transport).toBe("sse");
    expect(proxy.refusedUpgrades).toBe(1);

    const feed: string[] = [];
    await h.subscribe("blog.article.feed", (d) => feed.push((d as { id: string }).id)).ready;
    await gw.publish("blog.article.feed", { id: "1", title: "1" });
    await until(() => feed.length === 1);

    // The drop is counted as it happens: the client reconnects within 50–300 ms, so polling
    // `h.connected` can miss the moment on a busy machine.
    let drops = 0;
    h.on("state", (e) => {
      if (e.previous === "connected") drops++;
    });
    proxy.cut();
    await until(() => drops >= 1, 5_000, "the drop");
    await gw.publish("blog.article.feed", { id: "2", title: "2" });
    await until(() => h.connected, 10_000, "reconnect");
    await gw.publish("blog.article.feed", { id: "3", title: "3" });
    await until(() => feed.length >= 3, 5_000, "replay and live");
    expect(feed).toEqual(["1", "2", "3"]);
    // The transport that worked is tried first: no second WebSocket attempt.
    expect(proxy.refusedUpgrades).toBe(1);
    expect(connectedVia).toEqual(["sse", "sse"]);
  });
});
