// The connection's current token and its renewal: when to refresh is taken from the token's own
// lifetime, measured on a monotonic clock from the moment it was received (never `Date.now()`
// against `exp`, see token.ts), and how often is bounded by backoff.
import { HeraldError } from "./errors.js";
import { refreshDelay, tokenLifetime, tokenValidity } from "./token.js";

/** Refreshes never follow each other faster than this, whatever the token says. */
const MIN_REFRESH_MS = 1_000;
/** Ceiling of the pause between refreshes that come due at once, and between failed ones. */
const MAX_REFRESH_BACKOFF_MS = 30_000;

export interface RefreshHooks {
  getToken: () => string | Promise<string>;
  /** Sends `refresh` with `token` on the current connection; rejects when it fails. */
  refresh: (token: string) => Promise<unknown>;
  /** A failed refresh (the client's `error` event). */
  failed: (err: HeraldError) => void;
}

export class TokenKeeper {
  /** The credentials in use (`undefined`: anonymous). */
  token: string | undefined;
  private receivedAt = 0;
  /** How long the token is valid from `receivedAt`; `undefined` without `exp`. */
  private validMs: number | undefined;
  /** When to refresh it, from `receivedAt`. */
  private refreshMs: number | undefined;
  /** Refreshes that came due at once in a row (each doubles the pause before the next). */
  private quick = 0;
  private failures = 0;
  private timer: ReturnType<typeof setTimeout> | undefined;
  /** Bumped by `stop()`: a refresh in flight for an ended connection stops there. */
  private generation = 0;

  /** Takes a new token; its lifetime is counted from now. */
  received(token: string | undefined): void {
    this.token = token;
    this.receivedAt = monotonic();
    const lifetime = token === undefined ? undefined : tokenLifetime(token);
    this.validMs = lifetime ? tokenValidity(lifetime) : undefined;
    this.refreshMs = lifetime ? refreshDelay(lifetime) : undefined;
  }

  /** Starts renewing the token on the connection that just opened; `stop()` ends it. */
  start(hooks: RefreshHooks): void {
    this.schedule(hooks);
  }

  stop(): void {
    this.generation++;
    clearTimeout(this.timer);
  }

  /**
   * Bounded: a refresh that comes due at once (a token without `iat` read against a wrong
   * clock, or a lifetime under ~2 s) waits 1 s, 2 s, 4 s … up to 30 s; a failed one is retried
   * with jittered backoff while the token still has time by its own lifetime.
   */
  private schedule(hooks: RefreshHooks, retryInMs?: number): void {
    clearTimeout(this.timer);
    if (this.refreshMs === undefined) return;
    let delay: number;
    if (retryInMs !== undefined) {
      delay = retryInMs;
    } else {
      delay = this.receivedAt + this.refreshMs - monotonic();
      if (delay < MIN_REFRESH_MS) {
        delay = backoffStep(this.quick++);
      } else {
        this.quick = 0;
      }
    }
    const generation = this.generation;
    this.timer = setTimeout(() => {
      void (async () => {
        try {
          const token = await hooks.getToken();
          if (generation !== this.generation) return;
          await hooks.refresh(token);
          if (generation !== this.generation) return;
          this.received(token);
          this.failures = 0;
          this.schedule(hooks);
        } catch (e) {
          if (generation !== this.generation) return;
          hooks.failed(e instanceof HeraldError ? e : new HeraldError("token", `token refresh failed: ${String(e)}`));
          // When the time runs out the server closes with 4001 and the reconnect fetches a
          // fresh token anyway.
          const step = backoffStep(this.failures++);
          const wait = step / 2 + Math.random() * (step / 2);
          const left = this.receivedAt + (this.validMs ?? 0) - monotonic();
          if (left - wait > MIN_REFRESH_MS) this.schedule(hooks, wait);
        }
      })();
    }, delay);
  }
}

function backoffStep(n: number): number {
  return Math.min(MAX_REFRESH_BACKOFF_MS, MIN_REFRESH_MS * 2 ** Math.min(n, 10));
}

/** A clock that only moves forward: durations, never dates. */
function monotonic(): number {
  return typeof performance !== "undefined" ? performance.now() : Date.now();
}
