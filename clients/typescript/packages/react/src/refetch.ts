// The polling fallback's moving parts: which client `realtimeRefetchInterval` reads, and
// making TanStack Query re-evaluate its intervals when the connection flips. Imported by the
// provider (context.ts) and by query.ts; imports neither, so there is no import circle.
import type { QueryClient } from "@tanstack/react-query";

import type { AnyHerald } from "./types.js";

let current: AnyHerald | null = null;

/** Called by `<HeraldProvider>`: the client `realtimeRefetchInterval` reads. */
export function setCurrentHerald(herald: AnyHerald): () => void {
  current = herald;
  return () => {
    if (current === herald) current = null;
  };
}

/**
 * A `refetchInterval` for TanStack Query: `false` while the realtime connection is up (events
 * keep the data fresh) and `ms` while it is down (polling fallback).
 *
 * `useQuery({ queryKey, queryFn, refetchInterval: realtimeRefetchInterval(5000) })`
 *
 * Reads the client of the mounted `<HeraldProvider>` (or the one given); the provider makes
 * every query re-evaluate its interval when the connection flips.
 */
export function realtimeRefetchInterval(ms: number, herald?: AnyHerald): () => number | false {
  return () => ((herald ?? current)?.connected ? false : ms);
}

/**
 * TanStack Query evaluates a function `refetchInterval` only when a query updates, so a
 * connection that drops while every query is idle would never start polling. On each state
 * flip, ask every observer to recompute its interval.
 */
export function watchRefetchIntervals(herald: AnyHerald, queryClient: QueryClient): () => void {
  return herald.on("state", ({ state, previous }) => {
    if ((state === "connected") === (previous === "connected")) return;
    for (const query of queryClient.getQueryCache().getAll()) {
      for (const observer of query.observers) observer.setOptions(observer.options);
    }
  });
}
