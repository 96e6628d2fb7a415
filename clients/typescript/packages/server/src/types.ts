// The public types of @herald/server: options, outcomes, the logger seam and the counters.

/** A map from channel name to payload type: the `HeraldChannels` that `herald codegen typescript` writes. */
export type ChannelMap = object;

/** The map used when none is given: any channel name, `unknown` payloads. */
export type AnyChannels = Record<string, unknown>;

/** The channel names a map accepts (a literal name matches a template-literal key). */
export type ChannelName<C extends ChannelMap> = keyof C & string;

/** The payload type of channel `K`. */
export type PayloadOf<C extends ChannelMap, K extends string> = K extends keyof C ? C[K] : never;

/**
 * Where failures go. Fields never hold a payload (only channel, key, code, counts), so logs
 * can be shipped anywhere. `console` fits; so do pino and winston loggers.
 */
export interface Logger {
  debug?(message: string, fields?: Record<string, unknown>): void;
  info?(message: string, fields?: Record<string, unknown>): void;
  warn(message: string, fields?: Record<string, unknown>): void;
  error(message: string, fields?: Record<string, unknown>): void;
}

/** `fetch` as the publisher uses it (the global one by default). */
export type FetchLike = (input: string, init?: RequestInit) => Promise<Response>;

/** A channel's JSON Schema by channel name as declared (`notifications.user.{userId}`). */
export type SchemaIndex = Record<string, object | boolean>;

export interface PublisherOptions {
  /** The gateway's base URL, e.g. `http://127.0.0.1:8080`. */
  url: string;
  /** The server API key (`api.key`). */
  apiKey: string;
  /** Failures are reported here (default: `console`). Nothing is ever thrown at the caller. */
  logger?: Logger;
  /**
   * Throw instead: every method rejects with a `HeraldPublishError` on any failure, and
   * nothing is queued. For scripts and tests, never for a request handler.
   */
  strict?: boolean;
  /**
   * Publications kept for retry while the gateway is unreachable (default 1000; the one being
   * sent at that moment is not counted); past it the oldest is dropped.
   */
  maxQueue?: number;
  /** One request's deadline (default 5 s); a timeout is retried like a refused connection. */
  timeoutMs?: number;
  /** Retry backoff: first retry's ceiling (default 250 ms); each delay is between half and all of its ceiling. */
  minRetryDelayMs?: number;
  /** Retry backoff: ceiling of every retry (default 10 s). */
  maxRetryDelayMs?: number;
  /**
   * Check payloads locally before sending (with Ajv): channel name → JSON Schema, e.g.
   * `readSchemas("herald-schemas")` on the output of `herald codegen jsonschema`. An invalid
   * payload is logged and dropped (outcome `invalid`); the gateway validates again anyway.
   */
  schemas?: SchemaIndex;
  /** `fetch` implementation (default: the global one, Node ≥ 20). */
  fetch?: FetchLike;
  /** Makes an idempotency key for a publication that has none (default: `crypto.randomUUID()`). */
  idempotencyKey?: () => string;
}

/** Options of one publication. */
export interface PublishOptions {
  /**
   * The gateway publishes a key at most once per channel within `limits.idempotency_window`
   * (2 min by default), so a retry after a lost response is safe. Default: a fresh UUID.
   */
  idempotencyKey?: string;
}

/** What became of one publication. A promise of it never rejects (unless `strict`). */
export type PublishOutcome =
  /** The gateway accepted it (or had already, under the same idempotency key). */
  | { status: "published"; offset: number; epoch: string }
  /** The gateway could not be reached (or was unavailable): kept and retried in the background. */
  | { status: "queued"; reason: string }
  /** The gateway refused it for good (`invalid_payload`, `unknown_channel`, …): logged, not retried. */
  | { status: "rejected"; code: string; message: string; pointer?: string }
  /** Local schema validation refused it before sending: logged, not sent. */
  | { status: "invalid"; message: string; pointer: string }
  /** Not sent: the publisher is closed. */
  | { status: "dropped"; reason: string };

/** Counters since the publisher was created. */
export interface PublisherStats {
  /** Accepted by the gateway (first try or retry). */
  published: number;
  /** Put in the retry queue. */
  queued: number;
  /** Retry attempts made from the queue. */
  retried: number;
  /** Lost from the queue: the oldest when it was full, what remained at close, publishes after close. */
  dropped: number;
  /** Refused by the gateway for good. */
  rejected: number;
  /** Refused by local schema validation. */
  invalid: number;
  /** Publications waiting for retry now. */
  pending: number;
}

/**
 * One item of `publishBatch`: a union over the channels, so each item's `data` is checked
 * against its own `channel` (not against every payload of the batch).
 */
export type BatchItem<C extends ChannelMap> = {
  [K in ChannelName<C>]: { channel: K; data: C[K]; idempotencyKey?: string };
}[ChannelName<C>];
