/**
 * The SDK's errors, as in the Python SDK:
 *
 *     NotecardError
 *      +-- GiftRefused          the server refused a request; `code` is the protocol's error code
 *      +-- ConnectionRejected   the server closed with a code after which reconnecting cannot help
 *      +-- NotConnected         the client was closed
 *      +-- RequestTimeout       no answer in time (the outcome is unknown; retry with the same gift id)
 *      +-- ProtocolError        a frame that breaks docs/protocol.md (BAD_FRAME, UNKNOWN_TYPE, BAD_FIELD)
 */
import type { Gift } from "./schema.generated.js";

export class NotecardError extends Error {
  override name = "NotecardError";
}

export class GiftRefused extends NotecardError {
  override name = "GiftRefused";
  constructor(
    /** The protocol's error code, e.g. `LIMIT_DAILY_SEND`; codes this SDK does not know are possible. */
    readonly code: string,
    /** The server's short reason, for logs: never parse it. */
    readonly reason: string,
    /** For ALREADY_RESOLVED and GIFT_EXPIRED: the gift as it stands now. */
    readonly gift?: Gift,
    /** For ACCOUNT_FROZEN: when the freeze ends (server clock, ms). */
    readonly untilMs?: number,
  ) {
    super(`${code}: ${reason}`);
  }
}

export class ConnectionRejected extends NotecardError {
  override name = "ConnectionRejected";
  constructor(readonly closeCode: number, message: string) {
    super(message);
  }
}

export class NotConnected extends NotecardError {
  override name = "NotConnected";
}

export class RequestTimeout extends NotecardError {
  override name = "RequestTimeout";
}

export class ProtocolError extends NotecardError {
  override name = "ProtocolError";
  constructor(readonly code: "BAD_FRAME" | "UNKNOWN_TYPE" | "BAD_FIELD", message: string, readonly rid?: number) {
    super(message);
  }
}
