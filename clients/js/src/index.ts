export { NotecardClient, newGiftId } from "./client.js";
export type { ClientEvents, ClientOptions, TokenSource, WebSocketClass, WebSocketLike } from "./client.js";
export { decodeClient, decodeServer, encode, encodingOf, toWire } from "./codec.js";
export type { Encoding, Frame } from "./codec.js";
export { ConnectionRejected, GiftRefused, NotConnected, NotecardError, ProtocolError, RequestTimeout } from "./errors.js";
export { answers, backoffDelay, ClientSession, needsNewToken, shouldReconnect } from "./session.js";
export type { Call, Disconnect, RequestBody, SessionEvent, SessionState } from "./session.js";
export * from "./schema.generated.js";
