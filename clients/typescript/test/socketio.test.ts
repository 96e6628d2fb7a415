// Socket.IO compatibility (issue 13, acceptance 1): the real `socket.io-client` 4.8 from npm
// against the real `herald` binary, each case over `transports: ["websocket"]`, `["polling"]`
// and the default (polling, then the upgrade to WebSocket). The contract is docs/socketio.md.
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { io } from "socket.io-client";
import WebSocket from "ws";

import { Gateway, sleep, until } from "./helpers/gateway.js";
import { connected, metaOf, MODES, SOCKETIO_CHANNELS, tapped, Tap, FAST, type Mode } from "./helpers/socketio.js";

let gw: Gateway;
const open: Tap[] = [];

beforeAll(async () => {
  gw = await Gateway.start({ channels: SOCKETIO_CHANNELS });
});

afterEach(() => {
  for (const t of open.splice(0)) t.socket.disconnect();
});

afterAll(async () => {
  await gw?.kill();
});

/** A socket of `user` with a valid token, connected (and upgraded, in the default mode). */
async function as(user: string, mode: Mode): Promise<Tap> {
  const t = tapped(gw.http, mode, { auth: { token: gw.token(user) } });
  open.push(t);
  await connected(t, mode);
  return t;
}

const isText = (text: string) => (d: unknown) => (d as { text?: unknown })?.text === text;

describe.each(MODES)("socket.io-client 4.8 over $name", (mode) => {
  let n = 0;
  /** A user (or room) name no other test uses. */
  const fresh = (name: string) => `${name}-${mode.tag}-${++n}`;

  it("connects with auth {token}; each user gets only their own notifications, as events named by the channel with meta", async () => {
    const alice = fresh("alice");
    const bob = fresh("bob");
    const a = await as(alice, mode);
    // The function form of `auth` (how apps fetch a fresh token on every reconnect).
    const b = tapped(gw.http, mode, { auth: (cb) => cb({ token: gw.token(bob) }) });
    open.push(b);
    await connected(b, mode);
    if (mode.upgrades) expect(a.openedOn[0]).toBe("polling");
    expect(a.transport).toBe(mode.transport);

    const sent = await gw.publish(`notifications.user.${alice}`, { type: "mention", text: "for alice" });
    await gw.publish(`notifications.user.${bob}`, { type: "reply", text: "for bob" });
    const args = await a.next(`notifications.user.${alice}`);
    expect(args[0]).toEqual({ type: "mention", text: "for alice" });
    expect(metaOf(args)).toEqual({ channel: `notifications.user.${alice}`, offset: sent.offset, epoch: sent.epoch, from: { server: true } });
    // The last argument is the recovery cursor socket.io-client sends back on reconnect.
    expect(args).toHaveLength(3);
    expect(typeof args[2]).toBe("string");
    await b.next(`notifications.user.${bob}`);

    // Alice's publication was sent first: had it reached bob, it would be here by now.
    await sleep(100);
    expect(a.names()).toEqual([`notifications.user.${alice}`]);
    expect(b.names()).toEqual([`notifications.user.${bob}`]);
    expect(JSON.stringify(b.events)).not.toContain("for alice");
    expect(a.transport).toBe(mode.transport);
  });

  it("subscribe with an ack answers the v1 reply, then delivers; another user's channel is refused in the ack", async () => {
    const alice = fresh("alice");
    const bob = fresh("bob");
    const a = await as(alice, mode);
    const b = await as(bob, mode);

    const reply = await a.ack("subscribe", { channel: "blog.article.feed" });
    expect(reply).toMatchObject({ ok: true, channel: "blog.article.feed", offset: expect.any(Number), epoch: expect.any(String) });
    expect(await a.ack("subscribe", { channel: `notifications.user.${bob}` })).toMatchObject({
      ok: false,
      error: { code: "forbidden", message: expect.any(String) },
    });
    expect(await a.ack("subscribe", { channel: "no.such.channel" })).toMatchObject({ ok: false, error: { code: "unknown_channel" } });
    expect(await a.ack("subscribe", { channel: "blog.article.feed" })).toMatchObject({ ok: false, error: { code: "already_subscribed" } });

    const article = await gw.publish("blog.article.feed", { id: "1", title: `news for ${alice}` });
    const args = await a.next("blog.article.feed");
    expect(args[0]).toEqual({ id: "1", title: `news for ${alice}` });
    expect(metaOf(args)).toMatchObject({ channel: "blog.article.feed", offset: article.offset, epoch: article.epoch });
    expect(article.offset).toBe((reply["offset"] as number) + 1);

    // The refused subscription delivers nothing: bob's notification reaches bob only.
    await gw.publish(`notifications.user.${bob}`, { type: "system", text: "bob only" });
    await b.next(`notifications.user.${bob}`);
    await sleep(100);
    expect(a.names()).toEqual(["blog.article.feed"]);
    expect(b.names()).toEqual([`notifications.user.${bob}`]);

    // Unsubscribe with an ack: nothing more from the feed.
    expect(await a.ack("unsubscribe", { channel: "blog.article.feed" })).toMatchObject({ ok: true });
    await gw.publish("blog.article.feed", { id: "2", title: "after unsubscribe" });
    await gw.publish(`notifications.user.${alice}`, { type: "system", text: "fence" });
    await a.next(`notifications.user.${alice}`);
    await sleep(100);
    expect(a.all("blog.article.feed")).toHaveLength(1);
    expect(a.transport).toBe(mode.transport);
  });

  it("client publish by both forms, schema errors in the ack, delivered with the vouched sender", async () => {
    const alice = fresh("alice");
    const bob = fresh("bob");
    const room = `chat.room.${fresh("room")}`;
    const a = await as(alice, mode);
    const b = await as(bob, mode);
    expect(await a.ack("subscribe", { channel: room })).toMatchObject({ ok: true });
    expect(await b.ack("subscribe", { channel: room })).toMatchObject({ ok: true });

    // emit("publish", {channel, data}, ack) and emit("<channel>", data, ack).
    const one = await a.ack("publish", { channel: room, data: { text: "one" } });
    expect(one).toMatchObject({ ok: true, offset: expect.any(Number), epoch: expect.any(String) });
    const two = await a.ack(room, { text: "two" });
    expect(two).toMatchObject({ ok: true, offset: (one["offset"] as number) + 1, epoch: one["epoch"] });

    // Gate 3 on every message, answered in the ack.
    expect(await a.ack("publish", { channel: room, data: { text: 5 } })).toMatchObject({
      ok: false,
      error: { code: "invalid_payload", pointer: "/text", message: expect.any(String) },
    });
    expect(await a.ack(room, { words: "no text" })).toMatchObject({ ok: false, error: { code: "invalid_payload" } });
    expect(await a.ack("publish", { channel: "blog.article.feed", data: { id: "1", title: "t" } })).toMatchObject({
      ok: false,
      error: { code: "forbidden" },
    });
    expect(await a.ack("publish", { channel: "no.such.channel", data: {} })).toMatchObject({ ok: false, error: { code: "unknown_channel" } });
    // An event that is neither a command nor a registered channel.
    expect(await a.ack("no-such-event", { text: "x" })).toMatchObject({ ok: false, error: { code: "bad_request" } });
    // Without an ack, the failure arrives as `herald:error`.
    a.socket.emit(room, { text: 7 });
    const err = await a.next("herald:error");
    expect(err[0]).toMatchObject({ type: "error", error: { code: "invalid_payload" } });

    // Bob answers by the channel-named form; everyone sees the accepted messages only, in order,
    // each with who sent it as the gateway authenticated them.
    expect(await b.ack(room, { text: "three" })).toMatchObject({ ok: true, offset: (one["offset"] as number) + 2 });
    await b.next(room, isText("three"));
    await a.next(room, isText("three"));
    await sleep(100);
    for (const t of [a, b]) {
      const got = t.all(room).map((e) => [(e.args[0] as { text: string }).text, metaOf(e.args).offset, metaOf(e.args).from]);
      expect(got).toEqual([
        ["one", one["offset"], { user: alice, client: expect.any(String) }],
        ["two", two["offset"], { user: alice, client: expect.any(String) }],
        ["three", (one["offset"] as number) + 2, { user: bob, client: expect.any(String) }],
      ]);
    }
    expect(a.transport).toBe(mode.transport);
  });

  it("presence: herald:join and herald:leave, and the presence command in an ack", async () => {
    const alice = fresh("alice");
    const bob = fresh("bob");
    const room = `chat.room.${fresh("room")}`;
    const a = await as(alice, mode);
    expect(await a.ack("subscribe", { channel: room })).toMatchObject({ ok: true });
    const b = await as(bob, mode);
    expect(await b.ack("subscribe", { channel: room })).toMatchObject({ ok: true });

    const join = await a.next("herald:join", (f) => (f as { user?: string }).user === bob);
    expect(join[0]).toMatchObject({ type: "join", channel: room, user: bob, client: expect.any(String) });
    const present = await a.ack("presence", { channel: room });
    expect(present).toMatchObject({ ok: true });
    const users = (present["clients"] as { user: string }[]).map((c) => c.user).sort();
    expect(users).toEqual([alice, bob].sort());

    b.socket.disconnect();
    const leave = await a.next("herald:leave", (f) => (f as { user?: string }).user === bob);
    expect(leave[0]).toMatchObject({ type: "leave", channel: room, user: bob, client: (join[0] as { client: string }).client });
    expect(a.transport).toBe(mode.transport);
  });

  it("a kick through the server API ends with 'io server disconnect' and no reconnect", async () => {
    const carol = fresh("carol");
    const c = await as(carol, mode);
    expect(await gw.kick(carol)).toBe(1);
    await until(() => c.disconnects.length > 0, 5_000, "the disconnect");
    expect(c.disconnects).toEqual(["io server disconnect"]);
    const goodbye = await c.next("herald:disconnect");
    expect(goodbye[0]).toMatchObject({ code: 4403, reconnect: false });
    // The app hears why before it hears that the connection ended.
    expect(c.timeline).toEqual(["(connect)", "herald:disconnect", "(disconnect: io server disconnect)"]);
    // Well past the reconnection delay (100-300 ms here): still no attempt.
    await sleep(800);
    expect(c.reconnectAttempts).toEqual([]);
    expect(c.connects).toBe(1);
    expect(c.socket.connected).toBe(false);
    expect(c.socket.active).toBe(false);
  });

  it("connect_error with err.data.code 'unauthorized' for a bad and a missing token, and no event ever", async () => {
    const mallory = fresh("mallory");
    const attempts = [
      { auth: { token: gw.token(mallory, { secret: "not-the-gateway-secret" }) } },
      { auth: { token: "not-a-jwt" } },
      {}, // no auth at all
    ];
    const taps = attempts.map((opts) => tapped(gw.http, mode, opts));
    open.push(...taps);
    for (const t of taps) await until(() => t.connectErrors.length > 0 || t.connects > 0, 10_000, "connect_error");
    // Published after the refusals: had any socket been admitted as mallory, it would get it.
    await gw.publish(`notifications.user.${mallory}`, { type: "system", text: "never delivered" });
    await sleep(300);
    for (const t of taps) {
      expect(t.connects).toBe(0);
      expect(t.socket.connected).toBe(false);
      expect(t.connectErrors).toHaveLength(1);
      const err = t.connectErrors[0]!;
      expect(err.message).toBe("unauthorized");
      expect(err.data).toMatchObject({ code: "unauthorized", message: expect.any(String) });
      expect(t.events).toEqual([]);
    }
  });

  it("after connect_error the app can set a good token and connect() again, as socket.io apps do", async () => {
    const dave = fresh("dave");
    const t = tapped(gw.http, mode, { auth: { token: "expired-or-bad" } });
    open.push(t);
    await until(() => t.connectErrors.length > 0, 10_000, "connect_error");
    expect(t.connectErrors[0]!.message).toBe("unauthorized");
    t.socket.auth = { token: gw.token(dave) };
    t.socket.connect();
    await connected(t, mode);
    await gw.publish(`notifications.user.${dave}`, { type: "system", text: "welcome back" });
    expect((await t.next(`notifications.user.${dave}`))[0]).toEqual({ type: "system", text: "welcome back" });
  });

  it("token expiry lets the client reconnect (a fresh token from its auth function) and recover; refresh in an ack", async () => {
    const erin = fresh("erin");
    const notifications = `notifications.user.${erin}`;
    let tokens = 0;
    // The first token expires in 2 s (to the millisecond: room for connect, publish and delivery
    // on a loaded machine); every later one (the reconnect's) lives an hour.
    const t = tapped(gw.http, mode, { auth: (cb) => cb({ token: gw.token(erin, { ttlSeconds: tokens++ === 0 ? 2 : 3600 }) }) });
    open.push(t);
    await connected(t, mode);
    const sent = await gw.publish(notifications, { type: "system", text: "before expiry" });
    await t.next(notifications);
    await until(() => t.disconnects.length > 0, 5_000, "the disconnect at exp");
    expect(t.disconnects).toEqual(["transport close"]);
    expect((await t.next("herald:disconnect"))[0]).toMatchObject({ code: 4001, reconnect: true });
    await connected(t, mode, 2);
    // The app hears why before it hears that the connection ended (not after the reconnect).
    expect(t.timeline.slice(0, 5)).toEqual([
      "(connect)",
      notifications,
      "herald:disconnect",
      "(disconnect: transport close)",
      "(connect)",
    ]);
    expect(t.recovered).toEqual([false, true]);
    expect(tokens).toBe(2);
    const after = await gw.publish(notifications, { type: "system", text: "after" });
    expect(metaOf(await t.next(notifications, isText("after"))).offset).toBe(sent.offset + 1);
    expect(after.offset).toBe(sent.offset + 1);

    // `refresh` with another user's token is refused; with the same user's, accepted.
    expect(await t.ack("refresh", { token: gw.token(fresh("mallory")) })).toMatchObject({ ok: false });
    expect(await t.ack("refresh", { token: gw.token(erin) })).toMatchObject({ ok: true });
    expect(t.transport).toBe(mode.transport);
  });

  it("events named by the payload's type (socketio.event_from) and by a fixed name (socketio.event)", async () => {
    const alice = fresh("alice");
    const bob = fresh("bob");
    const a = await as(alice, mode);
    const b = await as(bob, mode);
    const orders = `orders.user.${alice}`;
    const updated = await gw.publish(orders, { type: "order.updated", id: "o1" });
    await gw.publish(orders, { type: "notification.created", id: "n1" });
    await gw.publish(orders, { id: "untyped" }); // no string at /type: named by the channel
    await gw.publish(orders, { type: 5, id: "numeric" });
    await gw.publish(`alerts.user.${alice}`, { level: "high" });

    const args = await a.next("order.updated");
    expect(args[0]).toEqual({ type: "order.updated", id: "o1" });
    expect(metaOf(args)).toMatchObject({ channel: orders, offset: updated.offset, epoch: updated.epoch, from: { server: true } });
    await a.next("notification.created");
    await a.next(orders, () => true, 2);
    const alert = await a.next("alert");
    expect(alert[0]).toEqual({ level: "high" });
    expect(metaOf(alert).channel).toBe(`alerts.user.${alice}`);

    // One channel's events arrive in offset order, each under exactly one name.
    const fromOrders = a.events.filter((e) => metaOf(e.args)?.channel === orders);
    expect(fromOrders.map((e) => [e.event, (e.args[0] as { id: string }).id])).toEqual([
      ["order.updated", "o1"],
      ["notification.created", "n1"],
      [orders, "untyped"],
      [orders, "numeric"],
    ]);
    expect(a.events).toHaveLength(5);
    // Typed names are still per user: bob's socket listens to the same names and hears nothing.
    await sleep(100);
    expect(b.events).toEqual([]);
  });
});

describe("socket.io-client 4.8 on the Socket.IO endpoint itself", () => {
  // The exchange socket.io-client 4.8 had in Chromium when the demo page subscribed at connect
  // (two `subscribe` POSTs while the engine probed WebSocket, then `5`), replayed packet by
  // packet so its timing is deterministic: every command the gateway answered 200 must be
  // answered, on whichever transport is current.
  it("commands POSTed while the engine upgrades are all answered after the upgrade", async () => {
    const base = `${gw.http}/socket.io/?EIO=4&transport=polling`;
    const open = await (await fetch(base)).text();
    const sid = (JSON.parse(open.slice(1)) as { sid: string }).sid;
    const post = async (body: string) => (await fetch(`${base}&sid=${sid}`, { method: "POST", body })).status;
    expect(await post(`40${JSON.stringify({ token: gw.token("upgrader") })}`)).toBe(200);
    expect(await (await fetch(`${base}&sid=${sid}`)).text()).toMatch(/^40\{"sid":/);

    const ws = new WebSocket(`ws://127.0.0.1:${gw.port}/socket.io/?EIO=4&transport=websocket&sid=${sid}`);
    const received: string[] = [];
    ws.on("message", (m) => received.push(String(m)));
    await new Promise((ok, fail) => (ws.once("open", ok), ws.once("error", fail)));
    try {
      const pending = fetch(`${base}&sid=${sid}`).then((r) => r.text());
      ws.send("2probe");
      await until(() => received.includes("3probe"), 5_000, "3probe");
      expect(await pending).toBe("6"); // the pending poll ends with a noop
      expect(await post('420["subscribe",{"channel":"chat.room.upgrade-a"}]')).toBe(200);
      expect(await post('421["subscribe",{"channel":"chat.room.upgrade-b"}]')).toBe(200);
      await sleep(50);
      ws.send("5");
      const acks = () => received.filter((p) => p.startsWith("43"));
      await until(() => acks().length >= 2, 3_000, `both acks (got ${JSON.stringify(received)})`).catch(() => {});
      expect(acks().map((p) => JSON.parse(p.replace(/^43\d+/, ""))[0].channel)).toEqual(["chat.room.upgrade-a", "chat.room.upgrade-b"]);
    } finally {
      ws.close();
    }
  });

  it("another namespace gets connect_error 'Invalid namespace'", async () => {
    const s = io(`${gw.http}/other`, { forceNew: true, transports: ["websocket"], auth: { token: gw.token("nsp-user") }, ...FAST });
    const t = new Tap(s);
    open.push(t);
    await until(() => t.connectErrors.length > 0 || t.connects > 0, 5_000, "connect_error");
    expect(t.connects).toBe(0);
    expect(t.connectErrors[0]!.message).toBe("Invalid namespace");
  });
});
