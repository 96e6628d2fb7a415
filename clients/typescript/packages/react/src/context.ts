// <HeraldProvider> and useHerald(): the client for the hooks below the provider.
import { createContext, createElement, useContext, useEffect, type ReactNode } from "react";
import { QueryClientContext } from "@tanstack/react-query";
import type { Herald, ChannelMap } from "@herald/client";

import { setCurrentHerald, watchRefetchIntervals } from "./refetch.js";
import type { AnyHerald } from "./types.js";

export type { AnyHerald } from "./types.js";

const HeraldContext = createContext<AnyHerald | null>(null);

export interface HeraldProviderProps {
  /** The client; the provider connects it on mount and disconnects it on unmount. */
  client: AnyHerald;
  /** Leave connecting and disconnecting to the caller (default false). */
  manual?: boolean;
  children?: ReactNode;
}

/** Makes a Herald client available to the hooks below it. */
export function HeraldProvider({ client, manual = false, children }: HeraldProviderProps) {
  const queryClient = useContext(QueryClientContext);
  useEffect(() => {
    if (manual) return;
    client.connect();
    return () => client.disconnect();
  }, [client, manual]);
  useEffect(() => setCurrentHerald(client), [client]);
  useEffect(() => (queryClient ? watchRefetchIntervals(client, queryClient) : undefined), [client, queryClient]);
  return createElement(HeraldContext.Provider, { value: client }, children);
}

/** The client from the nearest `<HeraldProvider>`. */
export function useHerald<C extends ChannelMap = Record<string, unknown>>(): Herald<C> {
  const client = useContext(HeraldContext);
  if (!client) throw new Error("useHerald must be used inside <HeraldProvider>");
  return client as Herald<C>;
}
