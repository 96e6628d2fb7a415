// The admin dashboard (/admin) in headless Chromium (Debian's, via playwright-core), against
// two real `herald` nodes sharing one real Redis: sign-in and the API's session and CSRF
// checks, the overview listing both nodes with their connection counts and moving while a
// client publishes, the live tail, the publish form's schema check, and disconnecting a user.
// One browser and one pair of nodes for the whole file (CI time); the cases run in order.
// Screenshots go to `test-results/admin-*.png` (docs/img/ holds copies for docs/operations.md).
import { execFileSync } from "node:child_process";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { chromium, type Browser, type BrowserContext, type Page } from "playwright-core";
import WS from "ws";
import { Herald, type DisconnectedEvent } from "@herald/client";

import { Gateway, heraldBin, repoRoot, until } from "./helpers/gateway.js";
import { RedisServer } from "./helpers/redis.js";

const CHROMIUM = process.env["CHROMIUM_PATH"] ?? "/usr/bin/chromium";
const SHOTS = join(repoRoot, "clients/typescript/test-results");
const PASSWORD = "admin-test-password";

let browser: Browser;
let redis: RedisServer;
let a: Gateway;
let b: Gateway;
let context: BrowserContext;
let page: Page;
const cleanup: (() => unknown)[] = [];

function client(gw: Gateway, user: string): Herald {
  const h = new Herald(gw.ws, { WebSocket: WS, token: gw.token(user), minReconnectDelayMs: 50, maxReconnectDelayMs: 300 });
  cleanup.push(() => h.disconnect());
  return h;
}

async function connected(h: Herald): Promise<void> {
  h.connect();
  await until(() => h.connected, 10_000, "connected");
}

/** The node id of the gateway `h` is connected to (client ids are `<node>-<n>`). */
function nodeOf(h: Herald): string {
  return h.client!.replace(/-\d+$/, "");
}

async function shot(name: string): Promise<void> {
  await page.screenshot({ path: join(SHOTS, `admin-${name}.png`), fullPage: true });
}

beforeAll(async () => {
  mkdirSync(SHOTS, { recursive: true });
  // The credential the way an operator makes one.
  const hash = execFileSync(heraldBin, ["admin", "hash-password"], { input: `${PASSWORD}\n`, encoding: "utf8" }).trim();
  redis = await RedisServer.start();
  cleanup.push(() => redis.kill());
  const sections = `[broker]\nkind = "redis"\nurl = "${redis.url}"\n\n[admin]\nenabled = true\nuser = "ops"\npassword_hash = "${hash}"\nstats_interval = "300ms"\n`;
  [a, b] = await Promise.all([Gateway.start({ sections }), Gateway.start({ sections })]);
  cleanup.push(() => a.kill(), () => b.kill());
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"],
  });
  context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  page = await context.newPage();
});

afterAll(async () => {
  await browser?.close();
  for (const f of cleanup.splice(0).reverse()) await f();
});

describe("the admin dashboard", () => {
  it("refuses a wrong credential, and its API refuses calls without the session or the CSRF token", async () => {
    await page.goto(`${a.http}/admin`);
    await page.fill("#login-user", "ops");
    await page.fill("#login-password", "not-the-password");
    await page.click("#login-submit");
    await page.waitForSelector("#login-error");
    expect(await page.textContent("#login-error")).toContain("wrong user or password");
    await shot("signin-refused");

    // No session: nothing of the API answers.
    const anonymous = await page.evaluate(async () => (await fetch("/admin/api/overview")).status);
    expect(anonymous).toBe(401);

    await page.fill("#login-password", PASSWORD);
    await page.click("#login-submit");
    await page.waitForSelector("#live-state.connected", { timeout: 10_000 });
    // The session cookie is HttpOnly: the page's script cannot read it.
    expect(await page.evaluate(() => document.cookie)).toBe("");
    const cookie = (await context.cookies()).find((c) => c.name === "herald_admin");
    expect(cookie).toMatchObject({ httpOnly: true, sameSite: "Strict", path: "/admin" });
    // Signed in, but without the CSRF token: refused.
    const noCsrf = await page.evaluate(async () => {
      const r = await fetch("/admin/api/users/nobody/disconnect", { method: "POST" });
      return { status: r.status, body: (await r.json()) as { error: { code: string } } };
    });
    expect(noCsrf).toEqual({ status: 403, body: { error: expect.objectContaining({ code: "forbidden" }) } });
    // From outside the browser: no cookie, no answer.
    const res = await fetch(`${a.http}/admin/api/registry`);
    expect(res.status).toBe(401);
  });

  it("lists both nodes with their connection counts, and its numbers move while a client publishes", async () => {
    const onA = client(a, "alice");
    const onB1 = client(b, "bob");
    const onB2 = client(b, "bob");
    await Promise.all([connected(onA), connected(onB1), connected(onB2)]);
    const nodeA = nodeOf(onA);
    const nodeB = nodeOf(onB1);
    expect(nodeA).not.toBe(nodeB);
    await page.goto(`${a.http}/admin#/overview`);
    const count = (node: string) => page.locator(`tr[data-node="${node}"] .node-connections`);
    // Node A: alice and the dashboard's own connection; node B: bob twice.
    await expect.poll(() => count(nodeB).textContent(), { timeout: 10_000 }).toBe("2");
    await expect.poll(() => count(nodeA).textContent(), { timeout: 10_000 }).toBe("2");
    expect(await page.textContent("#stat-nodes b")).toBe("2");

    const feed: unknown[] = [];
    onB1.subscribe("blog.article.feed", (d) => feed.push(d));
    const totalBefore = Number(await page.textContent("#stat-published-total b"));
    // One refused publication shows under refusals, by gate and code.
    await expect(b.publish("blog.article.feed", { id: 1, title: "x" })).rejects.toThrow(/422/);
    // A client's backend publishing through node B until the rates have moved.
    let n = 0;
    let publishing = true;
    const publisher = (async () => {
      while (publishing) {
        await b.publish("blog.article.feed", { id: String(++n), title: `update ${n}` });
        await new Promise((ok) => setTimeout(ok, 50));
      }
    })();
    try {
      await expect.poll(async () => Number(await page.textContent("#stat-publications b")), { timeout: 10_000 }).toBeGreaterThan(0);
      await expect.poll(async () => Number(await page.textContent("#stat-deliveries b")), { timeout: 10_000 }).toBeGreaterThan(0);
      // Long enough for the charts to show the traffic.
      await new Promise((ok) => setTimeout(ok, 2_000));
      await shot("overview");
    } finally {
      publishing = false;
      await publisher;
    }
    await expect.poll(async () => Number(await page.textContent("#stat-published-total b")), { timeout: 5_000 }).toBeGreaterThanOrEqual(totalBefore + n);
    await expect.poll(() => page.textContent("#rejects"), { timeout: 5_000 }).toContain("invalid_payload");
    await until(() => feed.length === n, 5_000, "every publication reached the subscriber");
    expect(feed.length).toBe(n);

    await page.click("#nav-channels");
    await page.waitForSelector("#channels a:has-text('blog.article.feed')");
    await shot("channels");
  });

  it("tails a channel live: a publication made through the server API appears", async () => {
    await page.goto(`${a.http}/admin#/channel/blog.article.feed`);
    await expect.poll(() => page.textContent("#tail-state"), { timeout: 10_000 }).toBe("live");
    // Through the other node: the tail is fed by the broker's fan-out.
    await b.publish("blog.article.feed", { id: "tail-1", title: "seen in the tail" });
    await page.waitForSelector("#tail :text('seen in the tail')", { timeout: 5_000 });
  });

  it("refuses a payload that breaks the schema with its pointer, and sends a good one", async () => {
    const reader = client(a, "reader");
    await connected(reader);
    const got: unknown[] = [];
    await reader.subscribe("blog.article.feed", (d) => got.push(d)).ready;
    const publishes: string[] = [];
    page.on("request", (r) => {
      if (r.url().endsWith("/publish")) publishes.push(r.url());
    });
    await page.fill("#publish-data", '{"id": 7, "title": "x"}');
    await page.click("#publish-send");
    await page.waitForSelector("#publish-pointer");
    expect(await page.textContent("#publish-pointer")).toBe("/id");
    expect(publishes).toEqual([]);
    await shot("channel");

    await page.fill("#publish-data", '{"id": "from-admin", "title": "published by the operator"}');
    await page.click("#publish-send");
    await page.waitForSelector("#publish-result");
    expect(publishes.length).toBe(1);
    await until(() => got.length === 1, 5_000, "the subscribed client receives it");
    expect(got[0]).toEqual({ id: "from-admin", title: "published by the operator" });
  });

  it("disconnecting a user closes that user's client with 4403 and no other", async () => {
    const carol = client(a, "carol");
    const dave = client(a, "dave");
    await Promise.all([connected(carol), connected(dave)]);
    const closed: DisconnectedEvent[] = [];
    carol.on("disconnected", (e) => closed.push(e));
    const daveClosed: DisconnectedEvent[] = [];
    dave.on("disconnected", (e) => daveClosed.push(e));
    await page.goto(`${a.http}/admin#/users`);
    await page.fill("#user-search", "ca");
    await page.click("#users a:text('carol')");
    await page.waitForSelector("#connections td:text('websocket')");
    expect(await page.textContent("#connections")).toContain("notifications.user.carol");
    await shot("users");
    await page.click("#disconnect-all");
    await until(() => closed.length === 1, 5_000, "carol is disconnected");
    expect(closed[0]).toMatchObject({ code: 4403, reconnect: false });
    await page.waitForSelector("#action-result");
    await new Promise((ok) => setTimeout(ok, 300));
    expect(daveClosed).toEqual([]);
    expect(dave.connected).toBe(true);

    await page.click("#nav-registry");
    await page.waitForSelector(".descriptor");
    await shot("registry");
  });
});
