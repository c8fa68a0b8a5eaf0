export class NotecardError extends Error {
    name = "NotecardError";
}
export class GiftRefused extends NotecardError {
    code;
    reason;
    gift;
    untilMs;
    name = "GiftRefused";
    constructor(
    /** The protocol's error code, e.g. `LIMIT_DAILY_SEND`; codes this SDK does not know are possible. */
    code, 
    /** The server's short reason, for logs: never parse it. */
    reason, 
    /** For ALREADY_RESOLVED and GIFT_EXPIRED: the gift as it stands now. */
    gift, 
    /** For ACCOUNT_FROZEN: when the freeze ends (server clock, ms). */
    untilMs) {
        super(`${code}: ${reason}`);
        this.code = code;
        this.reason = reason;
        this.gift = gift;
        this.untilMs = untilMs;
    }
}
export class ConnectionRejected extends NotecardError {
    closeCode;
    name = "ConnectionRejected";
    constructor(closeCode, message) {
        super(message);
        this.closeCode = closeCode;
    }
}
export class NotConnected extends NotecardError {
    name = "NotConnected";
}
export class RequestTimeout extends NotecardError {
    name = "RequestTimeout";
}
export class ProtocolError extends NotecardError {
    code;
    rid;
    name = "ProtocolError";
    constructor(code, message, rid) {
        super(message);
        this.code = code;
        this.rid = rid;
    }
}
