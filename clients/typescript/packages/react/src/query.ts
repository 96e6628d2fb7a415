import { useQueryClient, type QueryClient, type QueryKey } from "@tanstack/react-query";
import type { ChannelMap, ChannelName, PayloadOf, PublicationContext } from "@herald/client";

import type { AnyHerald } from "./context.js";

import { useChannel } from "./hooks.js";
import { useRealtimeConnected } from "./hooks.js";

/**
 * Invalidates a TanStack Query key when a publication arrives on `channel`: pass the smallest
 * key the event touches (`["article", id]` rather than `["articles"]`), or compute it from the
 * event. Queries under that key refetch; nothing else does. When a reconnect could not recover
 * missed publications the key is invalidated too (pass `lostKey` when `key` is a function).
 */
export function useInvalidateOnEvent<C extends ChannelMap = Record<string, unknown>, K extends ChannelName<C> = ChannelName<C>>(
  channel: K | null | undefined,
  key: QueryKey | ((data: PayloadOf<C, K>, pub: PublicationContext) => QueryKey | null | undefined),
  lostKey?: QueryKey,
): void {
  const queryClient = useQueryClient();
  useChannel<C, K>(
    channel,
    (data, pub) => {
      const queryKey = typeof key === "function" ? key(data, pub) : key;
      if (queryKey) void queryClient.invalidateQueries({ queryKey });
    },
    {
      onRecoveryFailed: () => {
        const queryKey = typeof key === "function" ? lostKey : key;
        if (queryKey) void queryClient.invalidateQueries({ queryKey });
      },
    },
  );
}

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

/** The hook form of `realtimeRefetchInterval`: `false` while connected, `ms` otherwise. */
export function useRealtimeRefetchInterval(ms: number): number | false {
  return useRealtimeConnected() ? false : ms;
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
