// Full-jitter exponential backoff for reconnects.
export interface BackoffOptions {
  /** First retry's ceiling, in ms (default 500). */
  minDelayMs?: number;
  /** Ceiling of every retry, in ms (default 20 000). */
  maxDelayMs?: number;
}

/**
 * Full-jitter exponential backoff (AWS architecture blog, "Exponential Backoff And Jitter"):
 * a uniform delay in `[0, min(max, min * 2^attempt))`, so a fleet of clients that lost the same
 * node does not come back in lockstep.
 */
export function fullJitter(attempt: number, opts: BackoffOptions = {}, random: () => number = Math.random): number {
  const min = opts.minDelayMs ?? 500;
  const max = opts.maxDelayMs ?? 20_000;
  const ceiling = Math.min(max, min * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * ceiling);
}
