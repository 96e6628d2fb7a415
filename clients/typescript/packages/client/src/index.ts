// @herald/client's public API (the barrel): the client, its types, and the building blocks
// an application may want on its own (backoff, token lifetime, codes, the SSE parser).
export { Herald } from "./herald.js";
export type {
  AnyChannels,
  AnyRpc,
  ChannelMap,
  ChannelName,
  ConnectionState,
  DisconnectedEvent,
  FetchLike,
  HeraldEvents,
  HeraldOptions,
  PayloadOf,
  PresenceEvent,
  PublicationContext,
  RpcMap,
  RpcRequestOf,
  RpcResponseOf,
  SubscribedInfo,
  SubscribeOptions,
  Unsubscribe,
} from "./types.js";
export { HeraldError } from "./errors.js";
export { Emitter } from "./emitter.js";
export { fullJitter, type BackoffOptions } from "./backoff.js";
export { tokenLifetime, tokenValidity, refreshDelay, type TokenLifetime } from "./token.js";
export { CloseCode, ClientCloseCode, NO_RECONNECT_CODES, ERROR_CODES, type ServerErrorCode } from "./codes.js";
export type { Transport, TransportClose, TransportEvents, TransportName, Refusal } from "./transport.js";
export type { WebSocketConstructor, WebSocketLike } from "./transport-websocket.js";
export { SseParser, type SseEvent } from "./transport-sse.js";
export type { ChannelPosition, ClientFrame, ErrorBody, PresenceClient, PublicationFrom, PublishReply } from "./protocol.js";
