// The demo page served by `herald serve`, in headless Chromium (Debian's, via playwright-core):
// two users over WebSocket (and through a gateway restart), the same with SSE forced
// (`?transports=sse`), the automatic fallback to SSE behind a proxy that refuses WebSocket, and
// the Socket.IO variant driven by socket.io-client (`?transport=socketio`), and the private room
// that the demo backend (demo/backend.mjs) guards through the subscribe proxy.
// Screenshots of each go to `test-results/` (look at them when the page changes).
import { spawn } from "node:child_process";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { afterAll, beforeAll, describe, expect, it, onTestFailed } from "vitest";
import { chromium, type Browser, type Page } from "playwright-core";

import { Gateway, repoRoot } from "./helpers/gateway.js";
import { NoWebSocketProxy } from "./helpers/proxy.js";

const CHROMIUM = process.env["CHROMIUM_PATH"] ?? "/usr/bin/chromium";
const SHOTS = join(repoRoot, "clients/typescript/test-results");

let browser: Browser;
const cleanup: (() => unknown)[] = [];

beforeAll(async () => {
  mkdirSync(SHOTS, { recursive: true });
  // launch() gives every run a fresh temporary profile (user data dir) and two isolated
  // contexts below: two users with separate storage.
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
    ],
  });
});

afterAll(async () => {
  for (const f of cleanup.splice(0).reverse()) await f();
  await browser?.close();
});

async function gateway(): Promise<Gateway> {
  const gw = await Gateway.start();
  cleanup.push(() => gw.kill());
  return gw;
}

/** The URLs of every request and WebSocket each page opened. */
const requested = new WeakMap<Page, string[]>();
/** Socket.IO traffic of each page (POST bodies, poll answers, WebSocket frames), to print when a test fails. */
const wire = new WeakMap<Page, string[]>();

function recordSocketIo(page: Page, user: string): void {
  const log: string[] = [];
  wire.set(page, log);
  const short = (s: string) => (s.length > 160 ? `${s.slice(0, 160)}…` : s);
  page.on("request", (r) => {
    if (r.url().includes("/socket.io/") && r.method() === "POST") log.push(`${user} POST ${short(r.postData() ?? "")}`);
  });
  page.on("response", (r) => {
    if (r.url().includes("/socket.io/") && r.request().method() === "GET")
      r.text().then((t) => log.push(`${user} GET  ${r.status()} ${short(JSON.stringify(t))}`), () => {});
  });
  page.on("websocket", (ws) => {
    ws.on("framesent", (f) => log.push(`${user} ws > ${short(String(f.payload))}`));
    ws.on("framereceived", (f) => log.push(`${user} ws < ${short(String(f.payload))}`));
  });
}

/** On failure, prints the Socket.IO traffic of `pages`. */
function dumpOnFailure(...pages: Page[]): void {
  onTestFailed(() => {
    for (const p of pages) console.error((wire.get(p) ?? []).join("\n"));
  });
}

/** Opens the demo at `base` + `query` as `user` and waits for the connection. */
async function signIn(base: string, user: string, query = ""): Promise<Page> {
  const context = await browser.newContext({ viewport: { width: 1100, height: 700 } });
  const page = await context.newPage();
  page.on("pageerror", (e) => console.error(`[${user}] page error:`, e));
  const urls: string[] = [];
  requested.set(page, urls);
  page.on("request", (r) => urls.push(r.url()));
  page.on("websocket", (ws) => urls.push(ws.url()));
  if (query.includes("transport=socketio")) recordSocketIo(page, user);
  await page.goto(`${base}/${query}`);
  await page.fill("#user", user);
  await page.click("#connect");
  await expectState(page, "connected");
  return page;
}

async function expectText(page: Page, selector: string, text: string, timeout = 10_000): Promise<void> {
  await page.waitForFunction(
    ([sel, t]) => document.querySelector(sel!)?.textContent?.includes(t!) ?? false,
    [selector, text] as const,
    { timeout, polling: 50 },
  );
}

/** Waits until the connection badge reads exactly `state` (or starts with it, `prefix`). */
async function expectState(page: Page, state: string, timeout = 10_000, prefix = false): Promise<void> {
  await page.waitForFunction(
    ([s, p]) => {
      const t = document.querySelector("#state")?.textContent ?? "";
      return p ? t.startsWith(s!) : t === s;
    },
    [state, prefix] as const,
    { timeout, polling: 50 },
  );
}

const text = (page: Page, selector: string) => page.$eval(selector, (el) => el.textContent ?? "");
const items = (page: Page, selector: string) => page.$$eval(`${selector} li`, (els) => els.map((el) => el.textContent ?? ""));
const shot = (page: Page, name: string) => page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });

async function say(page: Page, message: string): Promise<void> {
  await page.fill("#chat-text", message);
  await page.press("#chat-text", "Enter");
}

/** Two users: own notifications only, the public feed, chat both ways, presence. */
async function twoUsers(gw: Gateway, alice: Page, bob: Page): Promise<void> {
  await gw.publish("notifications.user.alice", { type: "mention", text: "for-alice" });
  await gw.publish("notifications.user.bob", { type: "reply", text: "for-bob" });
  await expectText(alice, "#notifications", "mention: for-alice");
  await expectText(bob, "#notifications", "reply: for-bob");
  await gw.publish("blog.article.feed", { id: "1", title: "Public news" });
  await expectText(alice, "#feed", "Public news (1)");
  await expectText(bob, "#feed", "Public news (1)");
  expect(await text(alice, "#notifications")).not.toContain("for-bob");
  expect(await text(bob, "#notifications")).not.toContain("for-alice");

  await expectText(alice, "#presence", "bob");
  await expectText(bob, "#presence", "alice");

  await say(alice, "hello bob");
  await expectText(bob, "#chat", "alice: hello bob");
  await say(bob, "hi alice");
  await expectText(alice, "#chat", "bob: hi alice");
  await expectText(bob, "#chat", "bob: hi alice");
  // A conversation reads top to bottom: oldest first, newest at the bottom.
  expect(await items(alice, "#chat")).toEqual(["alice: hello bob", "bob: hi alice"]);
  expect(await items(bob, "#chat")).toEqual(["alice: hello bob", "bob: hi alice"]);
}

describe("demo page in Chromium", () => {
  it("two users over WebSocket: notifications, chat, presence, a long word, reconnect after a gateway restart", async () => {
    const gw = await gateway();
    const alice = await signIn(gw.http, "alice");
    const bob = await signIn(gw.http, "bob");
    await twoUsers(gw, alice, bob);
    expect(await text(alice, "#transport")).toBe("via WebSocket");

    // A long word wraps inside its card instead of overflowing it.
    await say(alice, `https://example.com/${"a".repeat(300)}`);
    await expectText(bob, "#chat", "aaaaaaaaaa");
    const overflow = await bob.$eval("#chat", (ul) => {
      const li = ul.lastElementChild as HTMLElement;
      const card = ul.closest("section")!.getBoundingClientRect();
      return { li: li.scrollWidth - li.clientWidth, card: card.right - document.documentElement.clientWidth };
    });
    expect(overflow.li).toBeLessThanOrEqual(0);
    expect(overflow.card).toBeLessThanOrEqual(0);
    await shot(bob, "websocket-bob");

    // Stop the gateway: both pages say they are retrying, with the attempt.
    await gw.kill();
    await expectState(alice, "reconnecting (attempt ", 10_000, true);
    await expectState(bob, "reconnecting (attempt ", 10_000, true);
    await shot(alice, "websocket-alice-reconnecting");

    // Start it again on the same port: the pages reconnect by themselves.
    await gw.restart();
    await expectState(alice, "connected", 20_000);
    await expectState(bob, "connected", 20_000);
    // A restarted gateway has lost its history: the page says so instead of pretending.
    await expectText(alice, "main", "older notifications may be missing");

    // Live again: push, chat and presence after the reconnect.
    await gw.publish("notifications.user.alice", { type: "system", text: "after-restart" });
    await expectText(alice, "#notifications", "system: after-restart");
    await expectText(alice, "#presence", "bob");
    await say(bob, "back again");
    await expectText(alice, "#chat", "bob: back again");
    expect((await items(alice, "#chat")).at(-1)).toBe("bob: back again");
    expect(await text(bob, "#notifications")).not.toContain("after-restart");
    await shot(alice, "websocket-alice-after-restart");
  });

  it("works with SSE forced (?transports=sse): two users, notifications, chat, presence", async () => {
    const gw = await gateway();
    const alice = await signIn(gw.http, "alice", "?transports=sse");
    const bob = await signIn(gw.http, "bob", "?transports=sse");
    expect(await text(alice, "#transport")).toBe("via SSE");
    expect(await text(bob, "#transport")).toBe("via SSE");
    await twoUsers(gw, alice, bob);
    await shot(alice, "sse-forced-alice");
    await shot(bob, "sse-forced-bob");

    // Recovery over SSE too: a restart is noticed, reported and recovered from.
    await gw.kill();
    await expectState(alice, "reconnecting (attempt ", 10_000, true);
    await expectState(bob, "reconnecting (attempt ", 10_000, true);
    await gw.restart();
    await expectState(alice, "connected", 20_000);
    await expectState(bob, "connected", 20_000);
    expect(await text(alice, "#transport")).toBe("via SSE");
    await expectText(alice, "main", "older notifications may be missing");
    await expectText(alice, "#presence", "bob");
    await say(bob, "still here over SSE");
    await expectText(alice, "#chat", "bob: still here over SSE");
    await shot(alice, "sse-forced-alice-after-restart");
  });

  it("falls back to SSE by itself behind a proxy that refuses WebSocket upgrades", async () => {
    const gw = await gateway();
    const proxy = await NoWebSocketProxy.start(gw.port);
    cleanup.push(() => proxy.close());
    // Default transports (websocket, then sse): the page is not told anything.
    const alice = await signIn(proxy.http, "alice");
    const bob = await signIn(proxy.http, "bob");
    expect(proxy.refusedUpgrades).toBeGreaterThanOrEqual(2);
    expect(await text(alice, "#transport")).toBe("via SSE");
    expect(await text(bob, "#transport")).toBe("via SSE");
    await twoUsers(gw, alice, bob);
    await shot(alice, "sse-fallback-alice");
  });

  it("the Socket.IO variant (?transport=socketio): two users over socket.io-client, upgraded to WebSocket, through a gateway restart", async () => {
    const gw = await gateway();
    const alice = await signIn(gw.http, "alice", "?transport=socketio");
    const bob = await signIn(gw.http, "bob", "?transport=socketio");
    dumpOnFailure(alice, bob);
    // socket.io-client's default: polling first, then the upgrade.
    await expectText(alice, "#transport", "via Socket.IO (websocket)");
    await expectText(bob, "#transport", "via Socket.IO (websocket)");
    for (const page of [alice, bob]) {
      const urls = requested.get(page)!;
      expect(urls.some((u) => u.includes("/socket.io/?EIO=4&transport=polling"))).toBe(true);
      expect(urls.some((u) => u.startsWith("ws://") && u.includes("/socket.io/?EIO=4&transport=websocket"))).toBe(true);
      expect(urls.filter((u) => u.includes("/v1/ws") || u.includes("/v1/sse"))).toEqual([]);
    }
    await twoUsers(gw, alice, bob);
    await shot(alice, "socketio-alice");
    await shot(bob, "socketio-bob");

    // Stop the gateway: both pages say they are retrying, with the attempt.
    await gw.kill();
    await expectState(alice, "reconnecting (attempt ", 10_000, true);
    await expectState(bob, "reconnecting (attempt ", 10_000, true);
    await shot(alice, "socketio-alice-reconnecting");

    // Start it again on the same port: socket.io-client reconnects by itself (a fresh token from
    // its `auth` function), the gateway cannot recover (`recovered` false) and the page says so.
    await gw.restart();
    await expectState(alice, "connected", 20_000);
    await expectState(bob, "connected", 20_000);
    await expectText(alice, "main", "older notifications may be missing");
    await gw.publish("notifications.user.alice", { type: "system", text: "after-restart" });
    await expectText(alice, "#notifications", "system: after-restart");
    await expectText(alice, "#presence", "bob");
    await say(bob, "back again");
    await expectText(alice, "#chat", "bob: back again");
    expect((await items(alice, "#chat")).at(-1)).toBe("bob: back again");
    expect(await text(bob, "#notifications")).not.toContain("after-restart");
    await gw.publish("blog.article.feed", { id: "2", title: "Fresh news" });
    await expectText(bob, "#feed", "Fresh news (2)");
    await shot(alice, "socketio-alice-after-restart");
  });

  it("the Socket.IO variant over polling only, chatting with a @herald/client user over WebSocket", async () => {
    const gw = await gateway();
    const alice = await signIn(gw.http, "alice", "?transport=socketio&transports=polling");
    const bob = await signIn(gw.http, "bob");
    dumpOnFailure(alice);
    expect(await text(alice, "#transport")).toBe("via Socket.IO (polling)");
    expect(await text(bob, "#transport")).toBe("via WebSocket");
    await twoUsers(gw, alice, bob);
    expect(requested.get(alice)!.filter((u) => u.includes("transport=websocket") || u.includes("/v1/"))).toEqual([]);
    expect(await text(alice, "#transport")).toBe("via Socket.IO (polling)");
    await shot(alice, "socketio-polling-alice");
  });

  it("private room: the demo backend admits the invited users only, through the subscribe proxy", async () => {
    const backend = spawn(process.execPath, [join(repoRoot, "clients/typescript/demo/backend.mjs")], {
      env: { ...process.env, DEMO_BACKEND_PORT: "0", HERALD_BACKEND_SECRET: "demo-secret" },
      stdio: ["ignore", "pipe", "inherit"],
    });
    cleanup.push(() => backend.kill());
    const port = await new Promise<number>((resolve) => {
      createInterface({ input: backend.stdout! }).once("line", (l) => resolve(Number(l.split(" ")[1])));
    });
    const gw = await Gateway.start({
      sections: `
[backend]
secret = "demo-secret"

[[proxy]]
name = "demo-rooms"
url = "http://127.0.0.1:${port}/herald/subscribe"

[[channel]]
name = "vip.room.{roomId}"
scope = { proxy = "demo-rooms" }
publish = "authenticated"
presence = true
schema = { type = "object", required = ["text"], properties = { text = { type = "string" } } }
`,
    });
    cleanup.push(() => gw.kill());
    const alice = await signIn(gw.http, "alice");
    const bob = await signIn(gw.http, "bob");
    const carol = await signIn(gw.http, "carol");
    await expectText(alice, "#vip-status", "entered");
    await expectText(carol, "#vip-status", "entered");
    // The backend's reason reaches the refused user.
    await expectText(bob, "#vip-status", "forbidden: bob is not invited to the vip room");

    await alice.fill("#vip-text", "for invited eyes");
    await alice.press("#vip-text", "Enter");
    await expectText(carol, "#vip", "alice: for invited eyes");
    await expectText(alice, "#vip", "alice: for invited eyes");
    await gw.publish("vip.room.vip", { text: "from the server" });
    await expectText(carol, "#vip", "server: from the server");
    expect(await items(bob, "#vip")).toEqual([]);
    expect(await bob.$("#vip-text")).toBeNull();
    await shot(bob, "private-room-bob-refused");
    await shot(carol, "private-room-carol");
  });
});
