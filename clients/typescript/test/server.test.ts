// @herald/server against the real gateway binary: queued while the gateway is down and
// delivered exactly once when it is back, a lost response retried safely under its
// idempotency key, a full queue dropping its oldest with a counted warning, every failure
// resolved (never rejected) unless strict, and local validation from `herald codegen
// jsonschema`. This file is the test of the guarantee "validate, log and drop, never fail the
// domain operation" (docs/clients.md).
import { execFileSync } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { createServer, connect, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import WS from "ws";
import { Herald } from "@herald/client";
import { createPublisher, HeraldPublishError, readSchemas, type Logger, type PublisherOptions } from "@herald/server";

import { API_KEY, Gateway, heraldBin, repoRoot, sleep, until } from "./helpers/gateway.js";

const cleanup: (() => unknown)[] = [];
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f();
});

async function gateway(): Promise<Gateway> {
  const gw = await Gateway.start();
  cleanup.push(() => gw.kill());
  return gw;
}

/** A logger that keeps every line, for asserting what was reported. */
function recorder(): Logger & { lines: Array<{ level: string; message: string; fields?: Record<string, unknown> }> } {
  const lines: Array<{ level: string; message: string; fields?: Record<string, unknown> }> = [];
  const at = (level: string) => (message: string, fields?: Record<string, unknown>) => void lines.push({ level, message, ...(fields ? { fields } : {}) });
  return { lines, debug: at("debug"), info: at("info"), warn: at("warn"), error: at("error") };
}

/** A publisher whose retries only happen on `flush()` (a minute of backoff), so tests decide when. */
function publisher(url: string, opts: Partial<PublisherOptions> = {}) {
  const logger = recorder();
  const p = createPublisher({ url, apiKey: API_KEY, logger, minRetryDelayMs: 60_000, maxRetryDelayMs: 60_000, ...opts });
  cleanup.push(() => p.close(100));
  return { p, logger };
}

async function history(gw: Gateway, channel: string): Promise<Array<{ offset: number; data: { id?: string; title?: string } }>> {
  const res = await fetch(`${gw.http}/v1/channels/${encodeURIComponent(channel)}/history`, { headers: { authorization: `Bearer ${API_KEY}` } });
  return ((await res.json()) as { publications: Array<{ offset: number; data: { title?: string } }> }).publications;
}

/** A subscriber on `blog.article.feed` that records every title it is delivered. */
async function subscriber(gw: Gateway): Promise<string[]> {
  const h = new Herald(gw.ws, { token: gw.token("sub"), WebSocket: WS, transports: ["websocket"] });
  cleanup.push(() => h.disconnect());
  h.connect();
  const seen: string[] = [];
  await h.subscribe("blog.article.feed", (d) => seen.push((d as { title: string }).title)).ready;
  return seen;
}

/** A port where nothing listens (a gateway that is down). */
async function deadPort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((ok) => s.listen(0, "127.0.0.1", ok));
  const port = (s.address() as { port: number }).port;
  await new Promise((ok) => s.close(ok));
  return port;
}

/**
 * A TCP proxy to the gateway that swallows the first HTTP response and cuts that connection:
 * the gateway has published, the publisher never hears so.
 */
async function losesFirstResponse(target: number): Promise<{ port: number; server: Server }> {
  let swallowed = false;
  const server = createServer((client: Socket) => {
    const upstream = connect(target, "127.0.0.1");
    client.on("data", (b) => upstream.write(b));
    upstream.on("data", (b) => {
      if (!swallowed) {
        swallowed = true;
        client.destroy();
        upstream.destroy();
        return;
      }
      client.write(b);
    });
    client.on("close", () => upstream.destroy());
    upstream.on("close", () => client.destroy());
    client.on("error", () => {});
    upstream.on("error", () => {});
  });
  await new Promise<void>((ok) => server.listen(0, "127.0.0.1", ok));
  cleanup.push(() => new Promise((ok) => server.close(ok)));
  return { port: (server.address() as { port: number }).port, server };
}

describe("@herald/server against the gateway", () => {
  it("publishes, to a user, and in batches", async () => {
    const gw = await gateway();
    const { p } = publisher(gw.http);
    await expect(p.publish("blog.article.feed", { id: "1", title: "one" })).resolves.toMatchObject({ status: "published", offset: 1 });
    await expect(p.publishToUser("alice", "notifications.user.{userId}", { type: "mention", text: "hi" })).resolves.toMatchObject({ status: "published" });
    expect((await history(gw, "notifications.user.alice")).map((x) => x.data)).toEqual([{ type: "mention", text: "hi" }]);
    const batch = await p.publishBatch([
      { channel: "blog.article.feed", data: { id: "2", title: "two" } },
      { channel: "blog.article.feed", data: { id: 3, title: "bad" } },
      { channel: "blog.article.feed", data: { id: "4", title: "four" } },
    ]);
    expect(batch.map((o) => o.status)).toEqual(["published", "rejected", "published"]);
    expect(batch[1]).toMatchObject({ code: "invalid_payload", pointer: "/id" });
    expect((await history(gw, "blog.article.feed")).map((x) => x.data.title)).toEqual(["one", "two", "four"]);
    expect(p.stats).toMatchObject({ published: 4, rejected: 1, queued: 0, pending: 0 });
  });

  it("a publish while the gateway is down is queued, then delivered exactly once when it is back", async () => {
    const gw = await gateway();
    await gw.kill();
    const { p, logger } = publisher(gw.http);
    const outcome = await p.publish("blog.article.feed", { id: "1", title: "while down" });
    expect(outcome).toMatchObject({ status: "queued" });
    expect(logger.lines.some((l) => l.level === "warn" && /queued for retry/.test(l.message))).toBe(true);
    expect(p.stats).toMatchObject({ queued: 1, pending: 1, published: 0 });

    await gw.restart();
    const seen = await subscriber(gw);
    await expect(p.flush()).resolves.toEqual({ pending: 0 });
    await until(() => seen.length >= 1);
    await sleep(300);
    expect(seen).toEqual(["while down"]);
    expect((await history(gw, "blog.article.feed")).map((x) => x.data.title)).toEqual(["while down"]);
    expect(p.stats).toMatchObject({ published: 1, pending: 0 });
  });

  it("retries by itself with backoff until the gateway is back", async () => {
    const gw = await gateway();
    await gw.kill();
    const { p } = publisher(gw.http, { minRetryDelayMs: 50, maxRetryDelayMs: 200 });
    await expect(p.publish("blog.article.feed", { id: "1", title: "later" })).resolves.toMatchObject({ status: "queued" });
    await sleep(400);
    expect(p.stats.retried).toBeGreaterThanOrEqual(1);
    await gw.restart();
    await until(() => p.stats.pending === 0, 5_000, "the queue to drain");
    expect((await history(gw, "blog.article.feed")).map((x) => x.data.title)).toEqual(["later"]);
    expect(p.stats).toMatchObject({ published: 1, queued: 1 });
  });

  it("a retry after a lost response publishes once: the idempotency key", async () => {
    const gw = await gateway();
    const seen = await subscriber(gw);
    const proxy = await losesFirstResponse(gw.port);
    const { p } = publisher(`http://127.0.0.1:${proxy.port}`);
    // The gateway published it; the publisher only saw the connection cut.
    await expect(p.publish("blog.article.feed", { id: "1", title: "once" })).resolves.toMatchObject({ status: "queued" });
    await until(() => seen.length === 1);
    await expect(p.flush()).resolves.toEqual({ pending: 0 });
    await sleep(300);
    expect(seen).toEqual(["once"]);
    expect(await history(gw, "blog.article.feed")).toHaveLength(1);
    expect(p.stats).toMatchObject({ queued: 1, retried: 1, published: 1 });
  });

  it("a full queue drops the oldest with a counted warning, and delivers the rest in order", async () => {
    const gw = await gateway();
    await gw.kill();
    const { p, logger } = publisher(gw.http, { maxQueue: 3 });
    for (const n of [1, 2, 3, 4, 5]) {
      await expect(p.publish("blog.article.feed", { id: String(n), title: `t${n}` })).resolves.toMatchObject({ status: "queued" });
    }
    const drops = logger.lines.filter((l) => l.level === "warn" && /dropped the oldest/.test(l.message));
    expect(drops.map((l) => l.fields?.["dropped"])).toEqual([1, 2]);
    expect(drops[1]!.message).toContain("2 dropped so far");
    expect(p.stats).toMatchObject({ queued: 5, dropped: 2, pending: 3 });

    await gw.restart();
    await expect(p.flush()).resolves.toEqual({ pending: 0 });
    expect((await history(gw, "blog.article.feed")).map((x) => x.data.title)).toEqual(["t3", "t4", "t5"]);
  });

  it("publish never rejects: every failure resolves with an outcome and is logged and counted", async () => {
    const gw = await gateway();
    const { p, logger } = publisher(gw.http);
    const any = p as unknown as { publish(c: string, d: unknown): Promise<unknown> };
    await expect(any.publish("blog.article.feed", { id: 7, title: "x" })).resolves.toMatchObject({ status: "rejected", code: "invalid_payload", pointer: "/id" });
    await expect(any.publish("no.such.channel", {})).resolves.toMatchObject({ status: "rejected", code: "unknown_channel" });
    await expect(any.publish("blog.article.feed", { id: "1", title: 10n })).resolves.toMatchObject({ status: "rejected", code: "bad_request" });
    await expect(p.publishToUser("not a segment", "notifications.user.{userId}", { type: "reply" })).resolves.toMatchObject({ status: "rejected" });
    expect(p.stats).toMatchObject({ rejected: 4, published: 0, queued: 0 });
    expect(logger.lines.filter((l) => l.level === "error")).toHaveLength(4);
    // No payload in the logs: only channel, key, code and reasons.
    expect(JSON.stringify(logger.lines)).not.toContain('"title"');

    const wrongKey = publisher(gw.http, { apiKey: "wrong" }).p;
    await expect(wrongKey.publish("blog.article.feed", { id: "1", title: "x" })).resolves.toMatchObject({ status: "rejected", code: "unauthorized" });

    // A gateway that accepts the connection and never answers: a timeout, queued for retry.
    const held: Socket[] = [];
    const silent = createServer((s) => void held.push(s));
    await new Promise<void>((ok) => silent.listen(0, "127.0.0.1", ok));
    cleanup.push(() => new Promise((ok) => (silent.close(ok), held.forEach((s) => s.destroy()))));
    const slow = publisher(`http://127.0.0.1:${(silent.address() as { port: number }).port}`, { timeoutMs: 200 }).p;
    await expect(slow.publish("blog.article.feed", { id: "1", title: "x" })).resolves.toMatchObject({ status: "queued", reason: "the gateway did not answer in time" });

    // Nothing listening; a logger that itself throws.
    const down = `http://127.0.0.1:${await deadPort()}`;
    const throwing = createPublisher({ url: down, apiKey: API_KEY, logger: { warn: () => { throw new Error("logger down"); }, error: () => { throw new Error("logger down"); } } });
    cleanup.push(() => throwing.close(10));
    await expect(throwing.publish("blog.article.feed", { id: "1", title: "x" })).resolves.toMatchObject({ status: "queued" });
    await expect(throwing.publishBatch([{ channel: "blog.article.feed", data: { id: "1", title: "x" } }])).resolves.toMatchObject([{ status: "queued" }]);
    expect(throwing.stats).toMatchObject({ queued: 2, pending: 2 });

    // Closed: dropped, still resolved.
    const closed = publisher(down).p;
    await expect(closed.publish("blog.article.feed", { id: "1", title: "x" })).resolves.toMatchObject({ status: "queued" });
    await expect(closed.close(50)).resolves.toEqual({ pending: 1 });
    await expect(closed.publish("blog.article.feed", { id: "1", title: "x" })).resolves.toMatchObject({ status: "dropped" });
    expect(closed.stats).toMatchObject({ dropped: 2, pending: 0 });
    const batch = await closed.publishBatch([{ channel: "blog.article.feed", data: { id: "1", title: "x" } }]);
    expect(batch).toEqual([{ status: "dropped", reason: "the publisher is closed" }]);
  });

  it("validates locally against `herald codegen jsonschema` output: invalid payloads are logged and never sent", async () => {
    const gw = await gateway();
    const dir = mkdtempSync(join(tmpdir(), "herald-schemas-"));
    execFileSync(heraldBin, ["codegen", "jsonschema", "--config", join(repoRoot, "herald.toml"), "--out-dir", dir], { env: { PATH: process.env["PATH"] ?? "" } });
    const { p, logger } = publisher(gw.http, { schemas: readSchemas(dir) });
    const any = p as unknown as { publish(c: string, d: unknown): Promise<unknown> };
    await expect(any.publish("blog.article.feed", { id: "1" })).resolves.toMatchObject({ status: "invalid", pointer: "" });
    await expect(any.publish("notifications.user.bob", { type: "shout" })).resolves.toMatchObject({ status: "invalid", pointer: "/type" });
    await expect(any.publish("nope", {})).resolves.toMatchObject({ status: "invalid" });
    await expect(p.publish("notifications.user.bob", { type: "reply" })).resolves.toMatchObject({ status: "published" });
    expect(p.stats).toMatchObject({ invalid: 3, published: 1 });
    expect(logger.lines.filter((l) => /local validation/.test(l.message))).toHaveLength(3);
    expect(await history(gw, "blog.article.feed")).toHaveLength(0);
  });

  it("strict mode throws instead", async () => {
    const gw = await gateway();
    const { p } = publisher(gw.http, { strict: true });
    const any = p as unknown as { publish(c: string, d: unknown): Promise<unknown> };
    await expect(p.publish("blog.article.feed", { id: "1", title: "ok" })).resolves.toMatchObject({ status: "published" });
    const refused = await any.publish("blog.article.feed", { id: 1 }).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(HeraldPublishError);
    expect(refused).toMatchObject({ code: "invalid_payload" });
    const down = publisher(`http://127.0.0.1:${await deadPort()}`, { strict: true }).p;
    await expect(down.publish("blog.article.feed", { id: "1", title: "x" })).rejects.toMatchObject({ code: "unreachable" });
    expect(down.stats.pending).toBe(0);
  });
});
