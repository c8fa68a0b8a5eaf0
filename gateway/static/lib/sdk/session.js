/**
 * The client's side of a notecard session, sans I/O: the TypeScript twin of the Python
 * `protocol.session.ClientSession`, state for state (docs/protocol.md sections 5 to 11).
 * It owns the hello and resume position, request ids and which reply answers which
 * request, the requests to send again after a reconnect, offsets, epochs and offer
 * de-duplication; the driver (`NotecardClient`) moves frames and keeps the timers.
 */
import { decodeServer, encode } from "./codec.js";
import { ProtocolError } from "./errors.js";
import { BACKOFF_BASE_S, BACKOFF_CAP_S, CLOSE_CODES, PROTOCOL_VERSION, REPLIES, RETRYABLE_CODES, SEEN_OFFERS_MAX, } from "./schema.generated.js";
const PERMANENT_STANDARD = new Set([1002, 1003, 1007, 1008]);
/** Whether to reconnect after a close with `code` (null: no close frame), docs/protocol.md section 11. */
export function shouldReconnect(code) {
    if (code === null)
        return true;
    if (code === CLOSE_CODES.NORMAL)
        return false;
    if (code >= 3500 && code <= 3999)
        return false;
    return !PERMANENT_STANDARD.has(code);
}
export function needsNewToken(code) {
    return code === CLOSE_CODES.TOKEN_EXPIRED;
}
/** Full-jitter backoff in seconds before try `attempt` (from 0): uniform in [0, min(cap, base * 2^attempt)]. */
export function backoffDelay(attempt, baseS = BACKOFF_BASE_S, capS = BACKOFF_CAP_S, random = Math.random) {
    return random() * Math.min(capS, baseS * 2 ** Math.min(attempt, 32));
}
/** Whether `reply` answers `request` as protocol.REPLIES says (its reply type or an error, same rid). */
export function answers(request, reply) {
    const rid = "rid" in request ? request.rid : undefined;
    const replyRid = "rid" in reply ? reply.rid : undefined;
    if (reply.t === "error")
        return replyRid === rid;
    return reply.t === REPLIES[request.t] && replyRid === rid;
}
export class ClientSession {
    encoding;
    seenOffersMax;
    device;
    state = "idle";
    /** Position of the last event processed; sent in each hello to resume from there. */
    epoch;
    offset;
    /** False after a welcome whose missed events could not all be replayed. */
    recovered = true;
    welcome = null;
    connections = 0;
    /** Reconnect tries since the last welcome (the driver's backoff attempt). */
    reconnectAttempt = 0;
    nextRid = 1;
    inFlight = new Map();
    seenOffers = new Set();
    partial = null;
    resuming = false;
    out = [];
    events = [];
    constructor(encoding = "msgpack", position = {}, seenOffersMax = SEEN_OFFERS_MAX, 
    /** The device fingerprint every hello carries (docs/risk.md), or null. */
    device = null) {
        this.encoding = encoding;
        this.seenOffersMax = seenOffersMax;
        this.device = device;
        this.epoch = position.epoch ?? null;
        this.offset = position.offset ?? null;
    }
    // ---------------------------------------------------------- connection
    /** A connection is open (with `encoding`, the negotiated one): queue its hello. */
    connect(token, encoding = this.encoding) {
        if (this.state === "closed")
            throw new Error("session closed");
        this.encoding = encoding;
        this.partial = null;
        this.resuming = this.epoch !== null && this.offset !== null;
        this.state = "awaiting_welcome";
        const device = this.device !== null ? { device: this.device } : {};
        const hello = this.resuming
            ? { t: "hello", v: PROTOCOL_VERSION, token, epoch: this.epoch, offset: this.offset, ...device }
            : { t: "hello", v: PROTOCOL_VERSION, token, ...device };
        this.send(hello);
    }
    disconnected(code) {
        this.partial = null;
        this.out = [];
        const advice = { code, reconnect: shouldReconnect(code) || needsNewToken(code), newToken: needsNewToken(code) };
        if (this.state !== "closed")
            this.state = advice.reconnect ? "idle" : "closed";
        return advice;
    }
    close() {
        this.state = "closed";
        this.out = [];
        const calls = [...this.inFlight.values()];
        this.inFlight.clear();
        return calls;
    }
    // ---------------------------------------------------------- requests
    request(body) {
        if (this.state === "closed")
            throw new Error("session closed");
        const call = { body, message: this.build(body), tries: 1 };
        this.inFlight.set(call.message.rid, call);
        if (this.state === "open")
            this.send(call.message);
        return call;
    }
    retry(call) {
        this.inFlight.delete(call.message.rid);
        call.message = this.build(call.body);
        call.tries += 1;
        this.inFlight.set(call.message.rid, call);
        if (this.state === "open")
            this.send(call.message);
    }
    forget(call) {
        if (this.inFlight.get(call.message.rid) === call)
            this.inFlight.delete(call.message.rid);
    }
    get callsInFlight() {
        return [...this.inFlight.values()];
    }
    // ---------------------------------------------------------- frames
    dataToSend() {
        const out = this.out;
        this.out = [];
        return out;
    }
    eventsReceived() {
        const events = this.events;
        this.events = [];
        return events;
    }
    receive(frame) {
        let msg;
        try {
            msg = decodeServer(frame, this.encoding);
        }
        catch (problem) {
            if (!(problem instanceof ProtocolError))
                throw problem;
            this.events.push({ type: "frame_ignored", problem });
            return;
        }
        this.receiveMessage(msg);
    }
    receiveMessage(msg) {
        if (this.partial !== null) {
            if (msg.t === "pending") {
                this.partial.pending.push(...msg.gifts);
                if (!msg.more)
                    this.completeWelcome();
                return;
            }
            this.completeWelcome(); // the server moved on: take the list as it came
        }
        switch (msg.t) {
            case "welcome":
                if (msg.pending_more) {
                    this.partial = { welcome: msg, pending: [...msg.pending] };
                    this.state = "receiving_pending";
                }
                else {
                    this.welcomed(msg);
                }
                return;
            case "event":
                this.event(msg);
                return;
            case "pending":
                for (const gift of msg.gifts)
                    this.offer(gift);
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
        const rid = msg.rid;
        if (rid === undefined)
            return;
        const call = this.inFlight.get(rid);
        if (call === undefined)
            return;
        this.inFlight.delete(rid);
        const retryable = msg.t === "error" && RETRYABLE_CODES.includes(msg.code);
        this.events.push({ type: "answered", call, reply: msg, retryable, unexpected: !answers(call.message, msg) });
    }
    // ---------------------------------------------------------- inside
    build(body) {
        return { ...body, rid: this.nextRid++ };
    }
    send(msg) {
        this.out.push(encode(msg, this.encoding));
    }
    completeWelcome() {
        const { welcome, pending } = this.partial;
        this.partial = null;
        const whole = { ...welcome, pending };
        delete whole.pending_more;
        this.welcomed(whole);
    }
    welcomed(welcome) {
        const resumed = this.resuming;
        this.welcome = welcome;
        this.connections += 1;
        this.reconnectAttempt = 0;
        this.recovered = welcome.recovered;
        if (!resumed) {
            this.epoch = welcome.epoch;
            this.offset = welcome.offset;
        }
        else if (!welcome.recovered || welcome.epoch !== this.epoch) {
            // History was lost: take whatever the server replays next, and rely on the pending list.
            this.epoch = welcome.epoch;
            this.offset = null;
        }
        this.state = "open";
        this.events.push({ type: "welcomed", welcome, resumed });
        for (const gift of welcome.pending)
            this.offer(gift);
        for (const call of this.inFlight.values())
            this.send(call.message);
    }
    offer(gift) {
        if (this.seenOffers.has(gift.gift_id))
            return;
        this.seenOffers.add(gift.gift_id);
        if (this.seenOffers.size > this.seenOffersMax) {
            const oldest = this.seenOffers.values().next().value;
            if (oldest !== undefined)
                this.seenOffers.delete(oldest);
        }
        this.events.push({ type: "offer", gift });
    }
    event(event) {
        if (event.epoch === this.epoch && this.offset !== null && event.offset <= this.offset)
            return;
        this.epoch = event.epoch;
        this.offset = event.offset;
        if (event.event === "offer")
            this.offer(event.gift);
        else if (event.event === "guardian")
            this.events.push({ type: "guardian", gift: event.gift });
        else if (event.event === "guardian_done")
            this.events.push({ type: "guardian_done", gift: event.gift });
        else
            this.events.push({ type: "outcome", gift: event.gift });
    }
}
