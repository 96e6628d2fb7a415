// The error strict mode throws (and the shape of every failure the lenient mode logs).

/** A publication that did not reach the gateway, or that the gateway refused. */
export class HeraldPublishError extends Error {
  override readonly name = "HeraldPublishError";
  constructor(
    /** The gateway's error code (`invalid_payload`, `unknown_channel`, `unauthorized`, …) or the publisher's: `unreachable`, `timeout`, `unavailable`, `invalid_payload` (local), `closed`. */
    readonly code: string,
    message: string,
    /** For `invalid_payload`: the JSON pointer of the failing value. */
    readonly pointer?: string,
    /** The HTTP status, when there was a response. */
    readonly status?: number,
  ) {
    super(message);
  }
}
