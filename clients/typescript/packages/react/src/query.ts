// TanStack Query helpers: invalidate the smallest key on an event, and the polling fallback.
import { useQueryClient, type QueryKey } from "@tanstack/react-query";
import type { ChannelMap, ChannelName, PayloadOf, PublicationContext } from "@herald/client";

import { useChannel, useRealtimeConnected } from "./hooks.js";
export { realtimeRefetchInterval } from "./refetch.js";

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

/** The hook form of `realtimeRefetchInterval`: `false` while connected, `ms` otherwise. */
export function useRealtimeRefetchInterval(ms: number): number | false {
  return useRealtimeConnected() ? false : ms;
}

