export {
  Herald,
  type AnyChannels,
  type ChannelMap,
  type ChannelName,
  type ConnectionState,
  type DisconnectedEvent,
  type HeraldEvents,
  type HeraldOptions,
  type PayloadOf,
  type PresenceEvent,
  type PublicationContext,
  type SubscribedInfo,
  type SubscribeOptions,
  type Unsubscribe,
} from "./herald.js";
export { HeraldError } from "./errors.js";
export { Emitter } from "./emitter.js";
export { fullJitter, type BackoffOptions } from "./backoff.js";
export { tokenLifetime, refreshDelay, type TokenLifetime } from "./token.js";
export type { WebSocketConstructor, WebSocketLike } from "./transport-websocket.js";
export type { ErrorBody, PresenceClient, PublishReply } from "./protocol.js";
