// Frames of Herald protocol v1 (docs/protocol.md). Kept structural and minimal: the client
// only reads the fields it needs and tolerates extra ones.

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
}

export interface ReplyFrame {
  type: "reply";
  id: number;
  ok: boolean;
  error?: ErrorBody;
  [field: string]: unknown;
}

export interface PubFrame {
  type: "pub";
  channel: string;
  offset: number;
  data: unknown;
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
  | { type: "error"; error: ErrorBody };

export interface SubscribeReply {
  channel: string;
  offset: number;
  epoch: string;
  recovered: boolean;
  publications: { offset: number; data: unknown }[];
}

export interface PublishReply {
  offset: number;
  epoch: string;
}

/** Close codes after which the server asks the client not to come back. */
export const NO_RECONNECT_CODES: ReadonlySet<number> = new Set([4009, 4400, 4403]);
