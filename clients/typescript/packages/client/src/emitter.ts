// The typed event emitter behind `herald.on(…)`, with the browser's EventTarget semantics.

interface Entry {
  listener: (payload: never) => void;
  removed: boolean;
}

/**
 * A tiny typed event emitter: `Events` maps each event name to its payload type.
 *
 * Listener semantics are those of the DOM's `EventTarget`: adding a listener that is already
 * there does nothing; a listener removed while an event is being dispatched is not called for
 * it (nor for any later one); a listener added during a dispatch is called from the next event
 * on. A throwing listener does not stop the others (the error is rethrown asynchronously).
 */
export class Emitter<Events extends object> {
  private readonly listeners = new Map<keyof Events, Map<(payload: never) => void, Entry>>();

  /** Adds a listener; returns the function that removes it. */
  on<E extends keyof Events>(event: E, listener: (payload: Events[E]) => void): () => void {
    let entries = this.listeners.get(event);
    if (!entries) {
      entries = new Map();
      this.listeners.set(event, entries);
    }
    const fn = listener as (payload: never) => void;
    if (!entries.has(fn)) entries.set(fn, { listener: fn, removed: false });
    return () => this.off(event, listener);
  }

  off<E extends keyof Events>(event: E, listener: (payload: Events[E]) => void): void {
    const entries = this.listeners.get(event);
    const fn = listener as (payload: never) => void;
    const entry = entries?.get(fn);
    if (!entry) return;
    entry.removed = true;
    entries!.delete(fn);
  }

  protected emit<E extends keyof Events>(event: E, payload: Events[E]): void {
    const entries = this.listeners.get(event);
    if (!entries || entries.size === 0) return;
    for (const entry of [...entries.values()]) {
      if (entry.removed) continue;
      try {
        (entry.listener as (payload: Events[E]) => void)(payload);
      } catch (e) {
        // A faulty listener must not break the connection's bookkeeping.
        reportLater(e);
      }
    }
  }
}

/** Rethrows outside the current stack so the error is still visible (console, test runner). */
export function reportLater(e: unknown): void {
  setTimeout(() => {
    throw e;
  }, 0);
}
