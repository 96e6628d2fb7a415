// The public types of @herald/client: channel maps, options, subscription info and events.
import type { HeraldError } from "./errors.js";
import type { ChannelPosition, PublicationFrom } from "./protocol.js";
import type { TransportName } from "./transport.js";
import type { WebSocketConstructor } from "./transport-websocket.js";

/**
 * A map from channel name to payload type, e.g. the `HeraldChannels` interface that
 * `herald codegen typescript` writes. Template channels are template-literal keys
 * (`[channel: \`notifications.user.${string}\`]: Notification`).
 */
export type ChannelMap = object;

/**
 * A map from rpc method to its request and response types, e.g. the `HeraldRpc` interface that
 * `herald codegen typescript` writes (`{ "room.invite": { request: …; response: … } }`).
 */
export type RpcMap = object;

/** The rpc map used when none is given: any method, `unknown` data. */
export type AnyRpc = Record<string, { request: unknown; response: unknown }>;

/** The request type of rpc method `M`. */
export type RpcRequestOf<R extends RpcMap, M extends string> = M extends keyof R
  ? R[M] extends { request: infer Q }
    ? Q
    : never
  : never;

/** The response type of rpc method `M`. */
export type RpcResponseOf<R extends RpcMap, M extends string> = M extends keyof R
  ? R[M] extends { response: infer A }
    ? A
    : never
  : never;

/** The channel map used when none is given: any name, `unknown` payloads. */
export type AnyChannels = Record<string, unknown>;

/** The channel names a map accepts (a literal name matches a template-literal key). */
export type ChannelName<C extends ChannelMap> = keyof C & string;

/** The payload type of channel `K`. */
export type PayloadOf<C extends ChannelMap, K extends string> = K extends keyof C ? C[K] : never;

export type ConnectionState = "disconnected" | "connecting" | "connected";

/** `fetch` as the SSE transport and the refusal probe use it (the global one by default). */
export type FetchLike = (input: string, init?: RequestInit) => Promise<Response>;

export interface HeraldOptions {
  /** A fixed token (no refresh possible). */
  token?: string;
  /** Called before every connection attempt and before the token expires. */
  getToken?: () => string | Promise<string>;
  /**
   * The transports to try, in order (default `["websocket", "sse"]`). When one cannot be opened
   * (and the gateway did not refuse the credentials) the next is tried at once; the one that
   * worked last is tried first on the next reconnect.
   */
  transports?: TransportName[];
  /**
   * The SSE endpoint; default: the URL given to the constructor with `ws(s):` → `http(s):` and
   * its last path segment `ws` → `sse` (`wss://rt.example.com/v1/ws` → `https://rt.example.com/v1/sse`).
   */
  sseUrl?: string;
  /** WebSocket implementation; default: the global `WebSocket`. In Node < 22 pass `ws`. */
  WebSocket?: WebSocketConstructor;
  /** `fetch` implementation (SSE and the refusal probe); default: the global `fetch`. */
  fetch?: FetchLike;
  /** Reconnect backoff: first retry's ceiling (default 500 ms). */
  minReconnectDelayMs?: number;
  /** Reconnect backoff: ceiling of every retry (default 20 s). */
  maxReconnectDelayMs?: number;
  /** How long a request waits for its reply (default 10 s). */
  requestTimeoutMs?: number;
  /**
   * The watchdog closes and reconnects a connection on which nothing arrived for
   * `ping_interval_ms` (from `welcome`) plus this (default 10 s).
   */
  pingGraceMs?: number;
  /** Renew the identity with `getToken()` before the token runs out (default true). */
  refreshToken?: boolean;
  /**
   * A subscription token for `channel` (channels with `scope = "token"`, typed as
   * `HeraldTokenChannel` by codegen), usually fetched from your backend; return `undefined`
   * for channels that need none. Called before every subscribe (reconnects included) and
   * again before the token runs out, to renew the subscription with `sub_refresh`.
   */
  getSubscriptionToken?: (channel: string) => string | undefined | null | Promise<string | undefined | null>;
}

/** Where a publication sits in its channel's history, and who published it. */
export interface PublicationContext extends ChannelPosition {
  /** Who published it, vouched for by the gateway (never taken from the payload). */
  from: PublicationFrom;
}

/** Reported each time a subscription is (re)established. */
export interface SubscribedInfo extends ChannelPosition {
  /** True when this restores an earlier subscription (after a reconnect or a server request). */
  resubscribed: boolean;
  /** True when nothing was missed (or everything missed was replayed). */
  recovered: boolean;
  /**
   * `resubscribed && !recovered`: publications may have been missed (history gone, epoch
   * changed after a gateway restart). Refetch the state from your backend.
   */
  lost: boolean;
}

export interface PresenceEvent {
  type: "join" | "leave";
  channel: string;
  user: string | null;
  client: string;
}

export interface SubscribeOptions {
  /** Every (re)subscription, with its recovery outcome. */
  onSubscribed?: (info: SubscribedInfo) => void;
  /** A resubscription could not recover what was missed: refetch from your backend. */
  onRecoveryFailed?: (info: SubscribedInfo) => void;
  /** The subscription was refused (`forbidden`, `unknown_channel`, …) or removed by the server. */
  onError?: (error: HeraldError) => void;
  /** `join` / `leave` on presence channels. */
  onPresence?: (event: PresenceEvent) => void;
}

/** Removes the handler; the channel is left when its last handler goes. */
export interface Unsubscribe {
  (): void;
  /** Settles with the first subscription outcome (rejects with the server's error). */
  readonly ready: Promise<SubscribedInfo>;
}

export interface DisconnectedEvent {
  code: number;
  reason: string;
  /** False when the client will not reconnect by itself (kicked, refused, `disconnect()`). */
  reconnect: boolean;
  /** Why the client stopped, when the gateway refused it (`unauthorized`, `forbidden`). */
  error?: HeraldError;
}

export interface HeraldEvents {
  state: { state: ConnectionState; previous: ConnectionState };
  connected: { client: string; user: string | null; transport: TransportName };
  disconnected: DisconnectedEvent;
  subscribed: SubscribedInfo;
  error: HeraldError;
}
