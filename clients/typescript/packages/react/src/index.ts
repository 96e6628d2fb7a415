// @herald/react's public API (the barrel).
export { HeraldProvider, useHerald, type AnyHerald, type HeraldProviderProps } from "./context.js";
export { useChannel, useConnectionState, useRealtimeConnected } from "./hooks.js";
export {
  realtimeRefetchInterval,
  useInvalidateOnEvent,
  useRealtimeRefetchInterval,
} from "./query.js";
