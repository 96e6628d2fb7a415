// HeraldError: the one error type the client rejects and reports with (a stable `code`).
import type { ErrorBody } from "./protocol.js";

/**
 * An error from the gateway (`code` is the protocol's error code: `forbidden`,
 * `invalid_payload`, …) or from the client itself (`not_connected`, `disconnected`, `timeout`).
 */
export class HeraldError extends Error {
  readonly code: string;
  /** JSON pointer into the payload, for `invalid_payload`. */
  readonly pointer: string | undefined;

  constructor(code: string, message: string, pointer?: string) {
    super(message);
    this.name = "HeraldError";
    this.code = code;
    this.pointer = pointer;
  }

  static from(body: ErrorBody): HeraldError {
    return new HeraldError(body.code, body.message, body.pointer);
  }
}
