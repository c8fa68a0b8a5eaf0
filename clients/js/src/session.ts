/**
 * The client's side of a notecard session, sans I/O: the TypeScript twin of the Python
 * `protocol.session.ClientSession`, state for state (docs/protocol.md sections 5 to 11).
 * It owns the hello and resume position, request ids and which reply answers which
 * request, the requests to send again after a reconnect, offsets, epochs and offer
 * de-duplication; the driver (`NotecardClient`) moves frames and keeps the timers.
 */
import { decodeServer, encode } from "./codec.js";
import type { Encoding, Frame } from "./codec.js";
import { ProtocolError } from "./errors.js";
import {
  BACKOFF_BASE_S,
  BACKOFF_CAP_S,
  CLOSE_CODES,
  PROTOCOL_VERSION,
  REPLIES,
  RETRYABLE_CODES,
  SEEN_OFFERS_MAX,
} from "./schema.generated.js";
import type {
  ClientMessage,
  ErrorMessage,
  EventMessage,
  Gift,
  Room,
  ServerMessage,
  Welcome,
} from "./schema.generated.js";

export type SessionState = "idle" | "awaiting_welcome" | "receiving_pending" | "open" | "closed";

/** A request without its rid: the session numbers each try. */
export type RequestBody = DistributiveOmit<Exclude<ClientMessage, { t: "hello" }>, "rid">;
type DistributiveOmit<T, K extends keyof never> = T extends unknown ? Omit<T, K> : never;

/** One request of the application, over one or more tries and connections. */
export interface Call {
  readonly body: RequestBody;
  /** The try in flight. */
  message: ClientMessage & { rid: number };
  tries: number;
}

export type SessionEvent =
  | { type: "welcomed"; welcome: Welcome; resumed: boolean }
  | { type: "offer"; gift: Gift }
  | { type: "outcome"; gift: Gift }
  | { type: "guardian"; gift: Gift }
  | { type: "guardian_done"; gift: Gift }
  | { type: "room"; room: Room }
  | { type: "answered"; call: Call; reply: ServerMessage; retryable: boolean; unexpected: boolean }
  | { type: "server_error"; error: ErrorMessage }
  | { type: "frame_ignored"; problem: ProtocolError };

export interface Disconnect {
  code: number | null;
  reconnect: boolean;
  newToken: boolean;
}

const PERMANENT_STANDARD = new Set([1002, 1003, 1007, 1008]);

/** Whether to reconnect after a close with `code` (null: no close frame), docs/protocol.md section 11. */
export function shouldReconnect(code: number | null): boolean {
  if (code === null) return true;
  if (code === CLOSE_CODES.NORMAL) return false;
  if (code >= 3500 && code <= 3999) return false;
  return !PERMANENT_STANDARD.has(code);
}

export function needsNewToken(code: number | null): boolean {
  return code === CLOSE_CODES.TOKEN_EXPIRED;
}

/** Full-jitter backoff in seconds before try `attempt` (from 0): uniform in [0, min(cap, base * 2^attempt)]. */
export function backoffDelay(attempt: number, baseS: number = BACKOFF_BASE_S, capS: number = BACKOFF_CAP_S, random = Math.random): number {
  return random() * Math.min(capS, baseS * 2 ** Math.min(attempt, 32));
}

/** Whether `reply` answers `request` as protocol.REPLIES says (its reply type or an error, same rid). */
export function answers(request: ClientMessage, reply: ServerMessage): boolean {
  const rid = "rid" in request ? request.rid : undefined;
  const replyRid = "rid" in reply ? reply.rid : undefined;
  if (reply.t === "error") return replyRid === rid;
  return reply.t === REPLIES[request.t] && replyRid === rid;
}

export class ClientSession {
  state: SessionState = "idle";
  /** Position of the last event processed; sent in each hello to resume from there. */
  epoch: string | null;
  offset: number | null;
  /** False after a welcome whose missed events could not all be replayed. */
  recovered = true;
  welcome: Welcome | null = null;
  connections = 0;
  /** Reconnect tries since the last welcome (the driver's backoff attempt). */
  reconnectAttempt = 0;
  private nextRid = 1;
  private readonly inFlight = new Map<number, Call>();
  private readonly seenOffers = new Set<string>();
  private partial: { welcome: Welcome; pending: Gift[] } | null = null;
  private resuming = false;
  private out: Frame[] = [];
  private events: SessionEvent[] = [];

  constructor(
    readonly encoding: Encoding = "msgpack",
    position: { epoch?: string | null; offset?: number | null } = {},
    private readonly seenOffersMax: number = SEEN_OFFERS_MAX,
    /** The device fingerprint every hello carries (docs/risk.md), or null. */
    readonly device: string | null = null,
  ) {
    this.epoch = position.epoch ?? null;
    this.offset = position.offset ?? null;
  }

  // ---------------------------------------------------------- connection
  /** A connection is open (with `encoding`, the negotiated one): queue its hello. */
  connect(token: string, encoding: Encoding = this.encoding): void {
    if (this.state === "closed") throw new Error("session closed");
    (this as { encoding: Encoding }).encoding = encoding;
    this.partial = null;
    this.resuming = this.epoch !== null && this.offset !== null;
    this.state = "awaiting_welcome";
    const device = this.device !== null ? { device: this.device } : {};
    const hello: ClientMessage = this.resuming
      ? { t: "hello", v: PROTOCOL_VERSION, token, epoch: this.epoch!, offset: this.offset!, ...device }
      : { t: "hello", v: PROTOCOL_VERSION, token, ...device };
    this.send(hello);
  }

  disconnected(code: number | null): Disconnect {
    this.partial = null;
    this.out = [];
    const advice = { code, reconnect: shouldReconnect(code) || needsNewToken(code), newToken: needsNewToken(code) };
    if (this.state !== "closed") this.state = advice.reconnect ? "idle" : "closed";
    return advice;
  }

  close(): Call[] {
    this.state = "closed";
    this.out = [];
    const calls = [...this.inFlight.values()];
    this.inFlight.clear();
    return calls;
  }

  // ---------------------------------------------------------- requests
  request(body: RequestBody): Call {
    if (this.state === "closed") throw new Error("session closed");
    const call: Call = { body, message: this.build(body), tries: 1 };
    this.inFlight.set(call.message.rid, call);
    if (this.state === "open") this.send(call.message);
    return call;
  }

  retry(call: Call): void {
    this.inFlight.delete(call.message.rid);
    call.message = this.build(call.body);
    call.tries += 1;
    this.inFlight.set(call.message.rid, call);
    if (this.state === "open") this.send(call.message);
  }

  forget(call: Call): void {
    if (this.inFlight.get(call.message.rid) === call) this.inFlight.delete(call.message.rid);
  }

  get callsInFlight(): Call[] {
    return [...this.inFlight.values()];
  }

  // ---------------------------------------------------------- frames
  dataToSend(): Frame[] {
    const out = this.out;
    this.out = [];
    return out;
  }

  eventsReceived(): SessionEvent[] {
    const events = this.events;
    this.events = [];
    return events;
  }

  receive(frame: Frame): void {
    let msg: ServerMessage;
    try {
      msg = decodeServer(frame, this.encoding);
    } catch (problem) {
      if (!(problem instanceof ProtocolError)) throw problem;
      this.events.push({ type: "frame_ignored", problem });
      return;
    }
    this.receiveMessage(msg);
  }

  receiveMessage(msg: ServerMessage): void {
    if (this.partial !== null) {
      if (msg.t === "pending") {
        this.partial.pending.push(...msg.gifts);
        if (!msg.more) this.completeWelcome();
        return;
      }
      this.completeWelcome(); // the server moved on: take the list as it came
    }
    switch (msg.t) {
      case "welcome":
        if (msg.pending_more) {
          this.partial = { welcome: msg, pending: [...msg.pending] };
          this.state = "receiving_pending";
        } else {
          this.welcomed(msg);
        }
        return;
      case "event":
        this.event(msg);
        return;
      case "pending":
        for (const gift of msg.gifts) this.offer(gift);
        return;
      case "room":
        if (msg.rid === undefined) {
          this.events.push({ type: "room", room: msg });
          return;
        }
        break;
      case "error":
        if (msg.rid === undefined) {
          this.events.push({ type: "server_error", error: msg });
          return;
        }
        break;
    }
    const rid = (msg as { rid?: number }).rid;
    if (rid === undefined) return;
    const call = this.inFlight.get(rid);
    if (call === undefined) return;
    this.inFlight.delete(rid);
    const retryable = msg.t === "error" && (RETRYABLE_CODES as readonly string[]).includes(msg.code);
    this.events.push({ type: "answered", call, reply: msg, retryable, unexpected: !answers(call.message, msg) });
  }

  // ---------------------------------------------------------- inside
  private build(body: RequestBody): ClientMessage & { rid: number } {
    return { ...body, rid: this.nextRid++ } as ClientMessage & { rid: number };
  }

  private send(msg: ClientMessage): void {
    this.out.push(encode(msg, this.encoding));
  }

  private completeWelcome(): void {
    const { welcome, pending } = this.partial!;
    this.partial = null;
    const whole: Welcome = { ...welcome, pending };
    delete whole.pending_more;
    this.welcomed(whole);
  }

  private welcomed(welcome: Welcome): void {
    const resumed = this.resuming;
    this.welcome = welcome;
    this.connections += 1;
    this.reconnectAttempt = 0;
    this.recovered = welcome.recovered;
    if (!resumed) {
      this.epoch = welcome.epoch;
      this.offset = welcome.offset;
    } else if (!welcome.recovered || welcome.epoch !== this.epoch) {
      // History was lost: take whatever the server replays next, and rely on the pending list.
      this.epoch = welcome.epoch;
      this.offset = null;
    }
    this.state = "open";
    this.events.push({ type: "welcomed", welcome, resumed });
    for (const gift of welcome.pending) this.offer(gift);
    for (const call of this.inFlight.values()) this.send(call.message);
  }

  private offer(gift: Gift): void {
    if (this.seenOffers.has(gift.gift_id)) return;
    this.seenOffers.add(gift.gift_id);
    if (this.seenOffers.size > this.seenOffersMax) {
      const oldest = this.seenOffers.values().next().value;
      if (oldest !== undefined) this.seenOffers.delete(oldest);
    }
    this.events.push({ type: "offer", gift });
  }

  private event(event: EventMessage): void {
    if (event.epoch === this.epoch && this.offset !== null && event.offset <= this.offset) return;
    this.epoch = event.epoch;
    this.offset = event.offset;
    if (event.event === "offer") this.offer(event.gift);
    else if (event.event === "guardian") this.events.push({ type: "guardian", gift: event.gift });
    else if (event.event === "guardian_done") this.events.push({ type: "guardian_done", gift: event.gift });
    else this.events.push({ type: "outcome", gift: event.gift });
  }
}
