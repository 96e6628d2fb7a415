// The publisher: `publish` answers with an outcome and never throws or rejects into the caller
// (unless `strict`). A transient failure (no connection, a timeout, 5xx, 429) puts the
// publication in a bounded in-memory queue that one worker retries in order with jittered
// backoff; a permanent refusal (4xx: invalid payload, unknown channel, bad key) is logged and
// counted, never retried. Every publication carries an idempotency key from its first attempt,
// so a retry after a lost response cannot publish twice: the gateway answers a repeated key with
// the first result (within `limits.idempotency_window`).
import { randomUUID } from "node:crypto";

import { HeraldPublishError } from "./errors.js";
import { LocalValidator } from "./validate.js";
import type {
  AnyChannels,
  BatchItem,
  ChannelMap,
  ChannelName,
  FetchLike,
  Logger,
  PayloadOf,
  PublisherOptions,
  PublisherStats,
  PublishOptions,
  PublishOutcome,
} from "./types.js";

/** One publication on its way: the key is fixed at creation so every attempt repeats it. */
interface Pending {
  channel: string;
  data: unknown;
  key: string;
}

/** The result of one attempt: done (either way), or worth another try. */
type Attempt = { done: true; outcome: PublishOutcome } | { done: false; reason: string; code: string; status?: number };

/** The gateway accepts at most this many publications per batch request. */
const MAX_BATCH = 1000;

/** A segment a user id must fit to become part of a channel name. */
const SEGMENT = /^[A-Za-z0-9_-]{1,255}$/;

const consoleLogger: Logger = {
  warn: (m, f) => console.warn(m, f ?? {}),
  error: (m, f) => console.error(m, f ?? {}),
};

/**
 * A publisher typed by the generated channel maps:
 * `createPublisher<HeraldChannels, HeraldUserChannels>({ url, apiKey })`.
 */
export function createPublisher<C extends ChannelMap = AnyChannels, U extends ChannelMap = AnyChannels>(
  options: PublisherOptions,
): Publisher<C, U> {
  return new Publisher<C, U>(options);
}

export class Publisher<C extends ChannelMap = AnyChannels, U extends ChannelMap = AnyChannels> {
  private readonly base: string;
  private readonly logger: Logger;
  private readonly fetchImpl: FetchLike;
  private readonly makeKey: () => string;
  private readonly validator: LocalValidator | null;
  private readonly queue: Pending[] = [];
  /** The publication the worker is sending now (out of the queue only while in flight). */
  private current: Pending | null = null;
  private attempt = 0;
  private timer: ReturnType<typeof setTimeout> | null = null;
  private working = false;
  private closed = false;
  /** Resolved each time the worker goes idle (queue empty), for `flush`. */
  private idle: Array<() => void> = [];
  private readonly counters = { published: 0, queued: 0, retried: 0, dropped: 0, rejected: 0, invalid: 0 };

  constructor(private readonly options: PublisherOptions) {
    this.base = options.url.replace(/\/+$/, "");
    this.logger = options.logger ?? consoleLogger;
    this.fetchImpl = options.fetch ?? ((input, init) => fetch(input, init));
    this.makeKey = options.idempotencyKey ?? randomUUID;
    this.validator = options.schemas ? new LocalValidator(options.schemas, this.logger) : null;
  }

  /**
   * The logger, made safe: a logger that throws loses its line, never the publication (and
   * never the caller's operation).
   */
  private log(): Required<Logger> {
    const call =
      (f: ((m: string, fields?: Record<string, unknown>) => void) | undefined) =>
      (m: string, fields?: Record<string, unknown>) => {
        try {
          f?.call(this.logger, m, fields);
        } catch {
          // Nothing to do: the outcome still reaches the caller, and the counters still count.
        }
      };
    return { debug: call(this.logger.debug), info: call(this.logger.info), warn: call(this.logger.warn), error: call(this.logger.error) };
  }

  /** Counters since creation, and how many publications wait for retry. */
  get stats(): PublisherStats {
    return { ...this.counters, pending: this.queue.length + (this.current ? 1 : 0) };
  }

  /**
   * Publishes `data` on `channel`. Resolves with what became of it (`published`, `queued`,
   * `rejected`, `invalid`, `dropped`) and never rejects, unless the publisher is `strict`.
   */
  async publish<K extends ChannelName<C>>(channel: K, data: PayloadOf<C, K>, opts: PublishOptions = {}): Promise<PublishOutcome> {
    return this.guard(() => this.one(channel, data, opts.idempotencyKey));
  }

  /**
   * Publishes on a user-scoped template (`notifications.user.{userId}`, as declared), filling
   * its placeholder with `userId`. Same outcomes as `publish`.
   */
  async publishToUser<K extends keyof U & string>(userId: string, template: K, data: U[K], opts: PublishOptions = {}): Promise<PublishOutcome> {
    return this.guard(async () => {
      const holes = template.match(/\{[^}]*\}/g) ?? [];
      if (holes.length !== 1 || !SEGMENT.test(userId)) {
        const message =
          holes.length !== 1
            ? `${JSON.stringify(template)} is not a template with exactly one placeholder`
            : "the user id cannot be a channel name segment ([A-Za-z0-9_-], at most 255 bytes)";
        this.counters.rejected++;
        this.log().error("herald: publication refused before sending", { channel: template, code: "bad_request", reason: message });
        return { status: "rejected", code: "bad_request", message };
      }
      return this.one(template.replace(holes[0]!, userId), data, opts.idempotencyKey);
    });
  }

  /**
   * Publishes several publications in one request per 1000, in order. Resolves with one
   * outcome per item; items the gateway could not take now are queued like `publish`'s.
   */
  async publishBatch(items: ReadonlyArray<BatchItem<C>>): Promise<PublishOutcome[]> {
    const outcomes: PublishOutcome[] = [];
    for (let i = 0; i < items.length; i += MAX_BATCH) {
      const chunk = items.slice(i, i + MAX_BATCH);
      try {
        outcomes.push(...(await this.batch(chunk)));
      } catch (e) {
        outcomes.push(...chunk.map(() => this.internal(e)));
      }
    }
    if (this.options.strict) outcomes.forEach((o) => this.settle(o));
    return outcomes;
  }

  /**
   * Waits until every queued publication was delivered (or refused), at most `timeoutMs`
   * (default 5 s): retries are made at once, not after their backoff. Resolves with how many
   * are still pending; never rejects.
   */
  async flush(timeoutMs = 5_000): Promise<{ pending: number }> {
    const deadline = Date.now() + timeoutMs;
    const sleep = (ms: number) => new Promise<void>((ok) => setTimeout(ok, Math.max(0, ms)));
    while (this.stats.pending > 0 && Date.now() < deadline) {
      if (this.working) {
        // The background worker is sending: wait until it goes idle (or a short while).
        await new Promise<void>((ok) => {
          const t = setTimeout(ok, Math.min(100, Math.max(1, deadline - Date.now())));
          this.idle.push(() => (clearTimeout(t), ok()));
        });
      } else {
        this.clearTimer();
        await this.work();
      }
      // A retry that failed again: a short pause, not a tight loop against a gateway that is down.
      if (this.stats.pending > 0) await sleep(Math.min(50, deadline - Date.now()));
    }
    return { pending: this.stats.pending };
  }

  /**
   * For shutdown: flushes (at most `timeoutMs`), then stops. What is still queued is logged
   * and counted as dropped; publishing afterwards drops at once (`dropped`).
   */
  async close(timeoutMs = 5_000): Promise<{ pending: number }> {
    const { pending } = await this.flush(timeoutMs);
    this.closed = true;
    this.clearTimer();
    const lost = this.queue.length + (this.current ? 1 : 0);
    if (lost > 0) {
      this.counters.dropped += lost;
      this.log().error("herald: publisher closed with publications still queued; they are lost", { lost });
      this.queue.length = 0;
      this.current = null;
    }
    return { pending };
  }

  /**
   * Runs one publication so that nothing escapes: an unexpected error (a logger that throws, a
   * bug) becomes a `rejected` outcome. Only strict mode turns failures into rejections.
   */
  private async guard(run: () => Promise<PublishOutcome>): Promise<PublishOutcome> {
    let outcome: PublishOutcome;
    try {
      outcome = await run();
    } catch (e) {
      outcome = this.internal(e);
    }
    return this.settle(outcome);
  }

  private internal(e: unknown): PublishOutcome {
    this.counters.rejected++;
    const message = `the publisher failed: ${e instanceof Error ? e.message : String(e)}`;
    this.log().error("herald: publication failed inside the publisher", { code: "internal", reason: message });
    return { status: "rejected", code: "internal", message };
  }

  /** Strict mode turns every failed outcome into a rejection. */
  private settle(outcome: PublishOutcome): PublishOutcome {
    if (!this.options.strict || outcome.status === "published") return outcome;
    throw outcome.status === "rejected"
      ? new HeraldPublishError(outcome.code, outcome.message, outcome.pointer)
      : outcome.status === "invalid"
        ? new HeraldPublishError("invalid_payload", outcome.message, outcome.pointer)
        : new HeraldPublishError(outcome.status === "queued" ? "unreachable" : "closed", outcome.reason);
  }

  private async one(channel: string, data: unknown, key: string | undefined): Promise<PublishOutcome> {
    if (this.closed) return this.drop(channel);
    const refused = this.checkLocally(channel, data);
    if (refused) return refused;
    const item: Pending = { channel, data, key: key ?? this.makeKey() };
    // Behind a non-empty queue a direct send would overtake it: keep the order.
    if (this.stats.pending > 0 && !this.options.strict) return this.enqueue(item, "earlier publications are still queued");
    const attempt = await this.send(item);
    if (attempt.done) return attempt.outcome;
    if (this.options.strict) return { status: "rejected", code: attempt.code, message: attempt.reason };
    return this.enqueue(item, attempt.reason);
  }

  private async batch(items: ReadonlyArray<BatchItem<C>>): Promise<PublishOutcome[]> {
    const outcomes: Array<PublishOutcome | null> = [];
    const sendable: Array<{ index: number; item: Pending }> = [];
    for (const it of items) {
      const refused = this.closed ? this.drop(it.channel) : this.checkLocally(it.channel, it.data);
      if (refused) {
        outcomes.push(refused);
        continue;
      }
      sendable.push({ index: outcomes.length, item: { channel: it.channel, data: it.data, key: it.idempotencyKey ?? this.makeKey() } });
      outcomes.push(null);
    }
    if (sendable.length > 0 && this.stats.pending > 0 && !this.options.strict) {
      for (const s of sendable) outcomes[s.index] = this.enqueue(s.item, "earlier publications are still queued");
    } else if (sendable.length > 0) {
      const body = { publications: sendable.map((s) => ({ channel: s.item.channel, data: s.item.data, idempotency_key: s.item.key })) };
      const res = await this.request("/v1/publish/batch", body);
      if (!res.ok) {
        const transient = this.transient(res.status);
        for (const s of sendable) {
          outcomes[s.index] = transient && !this.options.strict
            ? this.enqueue(s.item, res.reason)
            : this.refused(s.item, res.code, res.reason, res.pointer, res.status);
        }
      } else {
        const results = (res.body as { results?: Array<{ offset?: number; epoch?: string; error?: { code: string; message: string; pointer?: string } }> }).results ?? [];
        sendable.forEach((s, i) => {
          const r = results[i];
          if (r && r.error === undefined && typeof r.offset === "number") {
            this.counters.published++;
            outcomes[s.index] = { status: "published", offset: r.offset, epoch: String(r.epoch) };
          } else if (r?.error?.code === "unavailable" && !this.options.strict) {
            outcomes[s.index] = this.enqueue(s.item, r.error.message);
          } else {
            outcomes[s.index] = this.refused(s.item, r?.error?.code ?? "internal", r?.error?.message ?? "no result for this item", r?.error?.pointer);
          }
        });
      }
    }
    return outcomes as PublishOutcome[];
  }

  private checkLocally(channel: string, data: unknown): PublishOutcome | null {
    const verdict = this.validator?.check(channel, data);
    if (!verdict || verdict.ok) return null;
    this.counters.invalid++;
    this.log().error("herald: payload refused by local validation; not sent", { channel, code: verdict.code, pointer: verdict.pointer, reason: verdict.message });
    return { status: "invalid", message: verdict.message, pointer: verdict.pointer };
  }

  private drop(channel: string): PublishOutcome {
    this.counters.dropped++;
    this.log().warn("herald: publisher is closed; publication dropped", { channel });
    return { status: "dropped", reason: "the publisher is closed" };
  }

  private refused(item: Pending, code: string, message: string, pointer?: string, status?: number): PublishOutcome {
    this.counters.rejected++;
    this.log().error("herald: publication refused by the gateway; not retried", { channel: item.channel, key: item.key, code, status, pointer, reason: message });
    return pointer === undefined ? { status: "rejected", code, message } : { status: "rejected", code, message, pointer };
  }

  private enqueue(item: Pending, reason: string): PublishOutcome {
    const max = Math.max(1, this.options.maxQueue ?? 1000);
    while (this.queue.length >= max) {
      const oldest = this.queue.shift()!;
      this.counters.dropped++;
      this.log().warn(`herald: retry queue full (${max}); dropped the oldest publication (${this.counters.dropped} dropped so far)`, {
        channel: oldest.channel,
        key: oldest.key,
        dropped: this.counters.dropped,
      });
    }
    this.queue.push(item);
    this.counters.queued++;
    if (!this.working && !this.timer) this.schedule();
    this.log().warn("herald: gateway unreachable; publication queued for retry", { channel: item.channel, key: item.key, reason, pending: this.stats.pending });
    return { status: "queued", reason };
  }

  /**
   * The next retry after exponential backoff with jitter: between half and all of the ceiling
   * (`minRetryDelayMs` doubling up to `maxRetryDelayMs`), so many publishers coming back after
   * an outage spread out, and no retry comes sooner than half the minimum.
   */
  private schedule(): void {
    const min = this.options.minRetryDelayMs ?? 250;
    const max = this.options.maxRetryDelayMs ?? 10_000;
    const ceiling = Math.min(max, min * 2 ** Math.min(this.attempt, 30));
    this.timer = setTimeout(
      () => {
        this.timer = null;
        void this.work();
      },
      ceiling / 2 + (Math.random() * ceiling) / 2,
    );
    // A pending retry must not keep the process alive: shutdown calls `close()` to flush.
    this.timer.unref?.();
  }

  private clearTimer(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }

  /** The worker: retries the queue in order until it is empty or an attempt fails again. */
  private async work(): Promise<void> {
    if (this.working) return;
    this.working = true;
    try {
      for (;;) {
        const item = this.queue.shift();
        if (!item) break;
        this.current = item;
        this.counters.retried++;
        const attempt = await this.send(item);
        this.current = null;
        if (!attempt.done) {
          // Back at the head, so it counts against `maxQueue` like any waiting publication
          // (unless `close()` gave up on everything meanwhile).
          if (!this.closed) this.queue.unshift(item);
          this.attempt++;
          this.log().debug?.("herald: retry failed; backing off", { channel: item.channel, key: item.key, reason: attempt.reason, attempt: this.attempt });
          if (!this.closed) this.schedule();
          return;
        }
        this.attempt = 0;
      }
    } finally {
      this.working = false;
      const waiting = this.idle;
      this.idle = [];
      waiting.forEach((f) => f());
    }
  }

  /** One attempt of one publication. Never throws. */
  private async send(item: Pending): Promise<Attempt> {
    const res = await this.request("/v1/publish", { channel: item.channel, data: item.data, idempotency_key: item.key });
    if (res.ok) {
      const body = res.body as { offset: number; epoch: string };
      this.counters.published++;
      return { done: true, outcome: { status: "published", offset: body.offset, epoch: body.epoch } };
    }
    if (this.transient(res.status)) return { done: false, reason: res.reason, code: res.code, ...(res.status ? { status: res.status } : {}) };
    return { done: true, outcome: this.refused(item, res.code, res.reason, res.pointer, res.status) };
  }

  /** No response, a timeout, 408, 429 and 5xx are worth retrying; any other 4xx is final. */
  private transient(status: number | undefined): boolean {
    return status === undefined || status === 408 || status === 429 || status >= 500;
  }

  private async request(
    path: string,
    body: unknown,
  ): Promise<{ ok: true; body: unknown } | { ok: false; status?: number; code: string; reason: string; pointer?: string }> {
    let text: string;
    try {
      text = JSON.stringify(body);
    } catch (e) {
      return { ok: false, status: 400, code: "bad_request", reason: `the payload cannot be encoded as JSON: ${e instanceof Error ? e.message : String(e)}` };
    }
    let res: Response;
    try {
      res = await this.fetchImpl(`${this.base}${path}`, {
        method: "POST",
        headers: { authorization: `Bearer ${this.options.apiKey}`, "content-type": "application/json" },
        body: text,
        signal: AbortSignal.timeout(this.options.timeoutMs ?? 5_000),
      });
    } catch (e) {
      const timeout = e instanceof Error && (e.name === "TimeoutError" || e.name === "AbortError");
      const cause = e instanceof Error && e.cause instanceof Error ? `: ${e.cause.message}` : "";
      return { ok: false, code: timeout ? "timeout" : "unreachable", reason: timeout ? "the gateway did not answer in time" : `cannot reach the gateway${cause}` };
    }
    let parsed: unknown = null;
    try {
      parsed = await res.json();
    } catch {
      // A proxy's HTML error page, or a body cut short: the status says enough.
    }
    if (res.ok) return { ok: true, body: parsed };
    const err = (parsed as { error?: { code?: string; message?: string; pointer?: string } } | null)?.error;
    const out = { ok: false as const, status: res.status, code: err?.code ?? `http_${res.status}`, reason: err?.message ?? `HTTP ${res.status}` };
    return err?.pointer === undefined ? out : { ...out, pointer: err.pointer };
  }
}
