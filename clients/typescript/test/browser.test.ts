// The demo page served by `herald serve`, in headless Chromium (Debian's, via playwright-core).
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { chromium, type Browser, type Page } from "playwright-core";

import { Gateway } from "./helpers/gateway.js";

const CHROMIUM = process.env["CHROMIUM_PATH"] ?? "/usr/bin/chromium";

let gw: Gateway;
let browser: Browser;

beforeAll(async () => {
  gw = await Gateway.start();
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
  await browser?.close();
  await gw?.kill();
});

async function signIn(user: string): Promise<Page> {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.on("pageerror", (e) => console.error(`[${user}] page error:`, e));
  await page.goto(`${gw.http}/`);
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

/** Waits until the connection badge reads exactly `state` ("disconnected" contains "connected"). */
async function expectState(page: Page, state: string, timeout = 10_000): Promise<void> {
  await page.waitForFunction((s) => document.querySelector("#state")?.textContent === s, state, { timeout, polling: 50 });
}

const text = (page: Page, selector: string) => page.$eval(selector, (el) => el.textContent ?? "");

describe("demo page in Chromium", () => {
  it("two users: own notifications, shared chat with presence, reconnect after a gateway restart", async () => {
    const alice = await signIn("alice");
    const bob = await signIn("bob");

    // Per-user push: each sees only their own notifications.
    await gw.publish("notifications.user.alice", { type: "mention", text: "for-alice" });
    await gw.publish("notifications.user.bob", { type: "reply", text: "for-bob" });
    await expectText(alice, "#notifications", "mention: for-alice");
    await expectText(bob, "#notifications", "reply: for-bob");
    await gw.publish("blog.article.feed", { id: "1", title: "Public news" });
    await expectText(alice, "#feed", "Public news (1)");
    await expectText(bob, "#feed", "Public news (1)");
    expect(await text(alice, "#notifications")).not.toContain("for-bob");
    expect(await text(bob, "#notifications")).not.toContain("for-alice");

    // Presence: each sees the other in the room.
    await expectText(alice, "#presence", "bob");
    await expectText(bob, "#presence", "alice");

    // Chat flows both ways (client publish through the gateway).
    await alice.fill("#chat-text", "hello bob");
    await alice.press("#chat-text", "Enter");
    await expectText(bob, "#chat", "alice: hello bob");
    await bob.fill("#chat-text", "hi alice");
    await bob.press("#chat-text", "Enter");
    await expectText(alice, "#chat", "bob: hi alice");
    await expectText(alice, "#chat", "alice: hello bob");

    // Stop the gateway: both pages show it.
    await gw.kill();
    await expectState(alice, "disconnected");
    await expectState(bob, "disconnected");

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
    await bob.fill("#chat-text", "back again");
    await bob.press("#chat-text", "Enter");
    await expectText(alice, "#chat", "bob: back again");
    expect(await text(bob, "#notifications")).not.toContain("after-restart");
  });
});
