// Hooks over a Herald client: connection state and channel subscriptions tied to a component.
import { useEffect, useRef, useSyncExternalStore } from "react";
import type {
  ChannelMap,
  ChannelName,
  ConnectionState,
  PayloadOf,
  PublicationContext,
  SubscribeOptions,
} from "@herald/client";

import { useHerald } from "./context.js";

/** The connection state; re-renders when it changes. */
export function useConnectionState(): ConnectionState {
  const herald = useHerald();
  return useSyncExternalStore(
    (onChange) => herald.on("state", onChange),
    () => herald.state,
    () => "disconnected" as const,
  );
}

/** True while the connection is up (the `welcome` was received). */
export function useRealtimeConnected(): boolean {
  return useConnectionState() === "connected";
}

/**
 * Calls `handler` with every publication on `channel` while the component is mounted. The
 * latest `handler` and options are used without resubscribing; changing `channel` does.
 */
export function useChannel<C extends ChannelMap = Record<string, unknown>, K extends ChannelName<C> = ChannelName<C>>(
  channel: K | null | undefined,
  handler: (data: PayloadOf<C, K>, pub: PublicationContext) => void,
  options: SubscribeOptions = {},
): void {
  const herald = useHerald<C>();
  const latest = useRef({ handler, options });
  latest.current = { handler, options };
  useEffect(() => {
    if (!channel) return;
    return herald.subscribe(channel, (data, pub) => latest.current.handler(data, pub), {
      onSubscribed: (info) => latest.current.options.onSubscribed?.(info),
      onRecoveryFailed: (info) => latest.current.options.onRecoveryFailed?.(info),
      onError: (err) => latest.current.options.onError?.(err),
      onPresence: (ev) => latest.current.options.onPresence?.(ev),
    });
  }, [herald, channel]);
}
