// Frames of Herald protocol v1 (docs/protocol.md), the same over every transport. Kept
// structural and minimal: the client only reads the fields it needs and tolerates extra ones.
// Close and error codes are in codes.ts.

export interface ChannelPosition {
  channel: string;
  offset: number;
  epoch: string;
}

export interface ErrorBody {
  code: string;
  message: string;
  /** JSON pointer into `data` for `invalid_payload`. */
  pointer?: string;
}

export interface PresenceClient {
  client: string;
  user: string | null;
}

export interface WelcomeFrame {
  type: "welcome";
  client: string;
  user: string | null;
  ping_interval_ms: number;
  subscriptions: ChannelPosition[];
  /** SSE only: the session that `POST /v1/sse/{session}` commands address. */
  session?: string;
}

export interface ReplyFrame {
  type: "reply";
  id: number;
  ok: boolean;
  error?: ErrorBody;
  [field: string]: unknown;
}

/**
 * Who published a publication, as the gateway authenticated them (never part of `data`, so no
 * payload can forge it): a client connection, or the server (the API, an event source).
 */
export type PublicationFrom = { user: string | null; client: string } | { server: true };

export interface PubFrame {
  type: "pub";
  channel: string;
  offset: number;
  data: unknown;
  from: PublicationFrom;
}

export interface PresenceChangeFrame {
  type: "join" | "leave";
  channel: string;
  user: string | null;
  client: string;
}

export interface UnsubscribedFrame {
  type: "unsubscribed";
  channel: string;
  reason: string;
}

export interface DisconnectFrame {
  type: "disconnect";
  code: number;
  reason: string;
  reconnect: boolean;
}

export type ServerFrame =
  | WelcomeFrame
  | ReplyFrame
  | PubFrame
  | PresenceChangeFrame
  | UnsubscribedFrame
  | DisconnectFrame
  | { type: "ping" }
  | { type: "pong" }
  | { type: "error"; channel?: string; error: ErrorBody };

/** A frame to the server (`id` is added by the client for requests that want a reply). */
export interface ClientFrame {
  type: "subscribe" | "unsubscribe" | "publish" | "presence" | "refresh" | "sub_refresh" | "rpc" | "ping" | "pong";
  id?: number;
  [field: string]: unknown;
}

/** The body of an HTTP refusal (`/v1/ws`, `/v1/sse`, the SSE command endpoint). */
export interface ErrorEnvelope {
  error: ErrorBody;
}

export interface SubscribeReply {
  channel: string;
  offset: number;
  epoch: string;
  recovered: boolean;
  publications: { offset: number; data: unknown; from: PublicationFrom }[];
}

export interface PublishReply {
  offset: number;
  epoch: string;
}
