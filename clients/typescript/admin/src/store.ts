// The page-wide statistics store, fed from `$admin:nodes` by <StatsFeed> through the
// dashboard's own gateway connection (@herald/react's useChannel).
import { createContext, createElement, useContext, useSyncExternalStore, type ReactNode } from "react";
import { useChannel } from "@herald/react";

import { type Snapshot, StatsStore } from "./stats.js";

/** The internal channel every node publishes its statistics on. */
export const NODES = "$admin:nodes";

const StatsContext = createContext<StatsStore | null>(null);

export function StatsFeed({ store, children }: { store: StatsStore; children?: ReactNode }) {
  useChannel<Record<string, Snapshot>>(NODES, (s) => store.add(s));
  return createElement(StatsContext.Provider, { value: store }, children);
}

/** The store; the component re-renders on every new snapshot and every second. */
export function useStats(): StatsStore {
  const store = useContext(StatsContext);
  if (!store) throw new Error("useStats needs <StatsFeed>");
  useSyncExternalStore(store.subscribe, store.getVersion);
  return store;
}
