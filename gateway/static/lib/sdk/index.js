export { NotecardClient, newGiftId } from "./client.js";
export { decodeClient, decodeServer, encode, encodingOf, toWire } from "./codec.js";
export { ConnectionRejected, GiftRefused, NotConnected, NotecardError, ProtocolError, RequestTimeout } from "./errors.js";
export { answers, backoffDelay, ClientSession, needsNewToken, shouldReconnect } from "./session.js";
export * from "./schema.generated.js";
