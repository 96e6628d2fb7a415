// The numbers and names of protocol v1 that the client acts on: close codes (and which of them
// forbid a reconnect) and error codes. Hand-mirrored from the gateway; `test/codes.test.ts`
// checks them against the "Closing" table and the error-code list of `docs/protocol.md` and the
// constants of `herald-core`'s `protocol.rs`, so a change on either side fails the tests.

/** Close codes the gateway sends (the `code` of `disconnect` and of the WebSocket close). */
export const CloseCode = {
  /** Server shutting down. */
  GoingAway: 1001,
  /** A WebSocket protocol error (bad framing; likely a middlebox: reconnect). */
  ProtocolError: 1002,
  /** A text message that is not valid UTF-8 (reconnect). */
  InvalidUtf8: 1007,
  /** Temporarily unavailable (the broker refused the auto-subscriptions). */
  Unavailable: 1013,
  /** Token expired: `refresh` before `exp` avoids it. */
  TokenExpired: 4001,
  /** Slow consumer: the outbound queue overflowed. */
  SlowConsumer: 4008,
  /** A frame larger than the gateway accepts. */
  FrameTooLarge: 4009,
  /** Too many frames per second. */
  RateLimited: 4029,
  /** Not a JSON object, or a binary frame. */
  BadFrame: 4400,
  /** Kicked by the server API. */
  Kicked: 4403,
  /** No frame from the client within `ping_interval + pong_timeout`. */
  PingTimeout: 4408,
} as const;

/** Close codes after which the server asks the client not to come back. */
export const NO_RECONNECT_CODES: ReadonlySet<number> = new Set([
  CloseCode.FrameTooLarge,
  CloseCode.BadFrame,
  CloseCode.Kicked,
]);

/**
 * Codes the client itself reports in `disconnected` events (never sent by the gateway).
 * WebSocket's own numbers where one fits.
 */
export const ClientCloseCode = {
  /** `disconnect()` was called. */
  Normal: 1000,
  /** The connection broke or could not be opened (no close frame). */
  Abnormal: 1006,
  /** The gateway refused the credentials (or the origin): the client stops. */
  Refused: 1008,
  /** Nothing arrived from the server for `ping_interval_ms + pingGraceMs`. */
  NoFrame: 4408,
} as const;

/** Error codes of `reply` / `error` frames and of the HTTP refusals (`docs/protocol.md`). */
export const ERROR_CODES = [
  "bad_request",
  "unknown_channel",
  "forbidden",
  "invalid_payload",
  "already_subscribed",
  "not_subscribed",
  "too_many_subscriptions",
  "payload_too_large",
  "rate_limited",
  "unavailable",
  "unauthorized",
  "too_many_connections",
  "not_found",
  "method_not_allowed",
  "upgrade_required",
  "rpc_error",
  "internal",
] as const;

export type ServerErrorCode = (typeof ERROR_CODES)[number];
