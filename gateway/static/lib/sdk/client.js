/**
 * The notecard client for browsers and Node 20+: one connection, reconnected by itself.
 *
 *     const client = new NotecardClient("ws://127.0.0.1:8765", token);
 *     await client.connect();
 *     const gift = await client.sendGift("bob", { qty: 1 });   // the card is held, the offer sent
 *     client.on("offer", (offer) => client.accept(offer.gift_id));   // on bob's side
 *
 * It behaves as the Python SDK does (docs/protocol.md): full-jitter reconnects that obey the
 * close-code ranges, a gift id chosen before the first try and sent again only while its
 * request is unanswered, resume from the last (epoch, offset) with `recovered`, offers and
 * events never delivered twice. The rules live in the sans-I/O `ClientSession`; this class
 * moves its frames over a WebSocket (the browser's, Node's global one, or the `ws` package
 * on Node 20) and keeps the timers.
 */
import { encodingOf } from "./codec.js";
import { ConnectionRejected, GiftRefused, NotConnected, ProtocolError, RequestTimeout } from "./errors.js";
import { MAX_FRAME_BYTES, REPLIES, SUBPROTOCOLS } from "./schema.generated.js";
import { backoffDelay, ClientSession } from "./session.js";
/** A FIFO whose reader waits; items wait for a reader. Bounded: the oldest go first. */
class Inbox {
    max;
    items = [];
    readers = [];
    constructor(max = 10_000) {
        this.max = max;
    }
    push(item) {
        const reader = this.readers.shift();
        if (reader !== undefined)
            reader(item);
        else {
            this.items.push(item);
            if (this.items.length > this.max)
                this.items.shift();
        }
    }
    next(timeoutMs) {
        const item = this.items.shift();
        if (item !== undefined)
            return Promise.resolve(item);
        return new Promise((resolve, reject) => {
            const reader = (got) => {
                if (timer !== undefined)
                    clearTimeout(timer);
                resolve(got);
            };
            const timer = timeoutMs === undefined
                ? undefined
                : setTimeout(() => {
                    this.readers = this.readers.filter((r) => r !== reader);
                    reject(new RequestTimeout(`nothing within ${timeoutMs} ms`));
                }, timeoutMs);
            this.readers.push(reader);
        });
    }
    get size() {
        return this.items.length;
    }
}
/** A gift id: 32 hex digits from the platform's cryptographic random source. */
export function newGiftId() {
    const bytes = new Uint8Array(16);
    globalThis.crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}
async function defaultWebSocket() {
    const global = globalThis.WebSocket;
    if (global !== undefined)
        return global;
    // Node 20 has no global WebSocket unless flagged: the `ws` package stands in.
    const module = (await import("ws"));
    return module.WebSocket;
}
export class NotecardClient {
    token;
    urls;
    session;
    urlIndex = 0;
    options;
    webSocketClass;
    ws = null;
    runner = null;
    closed = false;
    failure = null;
    firstWelcome = null;
    waiting = new Map();
    listeners = new Map();
    offers = new Inbox();
    outcomes = new Inbox();
    guardianInbox = new Inbox();
    guardianSettled = new Inbox();
    roomUpdates = new Inbox();
    lastHeard = 0;
    watchdog = null;
    dropConnection = null;
    wakeSleeper = null;
    constructor(url, token, options = {}) {
        this.token = token;
        this.urls = typeof url === "string" ? [url] : [...url];
        if (this.urls.length === 0)
            throw new TypeError("at least one gateway URL is required");
        this.options = {
            encoding: options.encoding ?? "msgpack",
            reconnect: options.reconnect ?? true,
            backoffBaseS: options.backoffBaseS ?? 0.5,
            backoffCapS: options.backoffCapS ?? 20,
            requestTimeoutMs: options.requestTimeoutMs ?? 30_000,
            connectTimeoutMs: options.connectTimeoutMs ?? 10_000,
        };
        this.webSocketClass = options.WebSocket;
        this.session = new ClientSession(this.options.encoding, { epoch: options.epoch ?? null, offset: options.offset ?? null }, undefined, options.device ?? null);
    }
    // ---------------------------------------------------------- state
    get welcome() {
        return this.session.welcome;
    }
    get user() {
        return this.session.welcome?.user ?? null;
    }
    get node() {
        return this.session.welcome?.node ?? null;
    }
    get epoch() {
        return this.session.epoch;
    }
    get offset() {
        return this.session.offset;
    }
    /** False after a reconnect whose missed events could not all be replayed: refetch state. */
    get recovered() {
        return this.session.recovered;
    }
    get connections() {
        return this.session.connections;
    }
    get connected() {
        return this.session.state === "open";
    }
    /** The URL the client is (or will next be) connected to. */
    get url() {
        return this.urls[this.urlIndex];
    }
    // ---------------------------------------------------------- life
    /** Connect and authenticate; resolves with the first welcome, or rejects (ConnectionRejected, RequestTimeout). */
    connect() {
        if (this.runner !== null)
            return Promise.reject(new Error("already connected"));
        const welcomed = new Promise((resolve, reject) => {
            this.firstWelcome = { resolve, reject };
        });
        this.runner = this.run();
        let timer;
        const timeout = new Promise((_, reject) => {
            timer = setTimeout(() => reject(new RequestTimeout(`not welcomed within ${this.options.connectTimeoutMs} ms`)), this.options.connectTimeoutMs);
        });
        return Promise.race([welcomed, timeout]).then((welcome) => {
            clearTimeout(timer);
            return welcome;
        }, async (error) => {
            clearTimeout(timer);
            await this.close();
            throw error;
        });
    }
    async close() {
        this.closed = true;
        this.session.close();
        this.failPending(new NotConnected("client closed"));
        this.firstWelcome?.reject(new NotConnected("client closed before it was welcomed"));
        this.firstWelcome = null;
        this.wakeSleeper?.();
        const ws = this.ws;
        if (ws !== null)
            ws.close(1000, "client closed");
        this.dropConnection?.();
        await this.runner?.catch(() => undefined);
    }
    on(type, listener) {
        let set = this.listeners.get(type);
        if (set === undefined)
            this.listeners.set(type, (set = new Set()));
        set.add(listener);
        return () => set.delete(listener);
    }
    emit(type, value) {
        for (const listener of this.listeners.get(type) ?? []) {
            try {
                listener(value);
            }
            catch (error) {
                console.error("notecard listener failed", error);
            }
        }
    }
    // ---------------------------------------------------------- requests
    /**
     * Give `qty` cards of `kind` to `to`; resolves with the held gift (state `pending`). Rejects
     * with GiftRefused and the rule's code. `giftId` defaults to a new one, so every call is a
     * new attempt: pass your own (stored before the call) only to repeat a call whose outcome
     * you did not learn (RequestTimeout, NotConnected, a reload); a refused id is spent.
     */
    async sendGift(to, opts = {}) {
        const body = { t: "send_gift", gift_id: opts.giftId ?? newGiftId(), to, kind: opts.kind ?? "note", qty: opts.qty ?? 1 };
        if (opts.quote !== undefined)
            body.quote = opts.quote;
        return (await this.request(body)).gift;
    }
    async accept(giftId) {
        return (await this.request({ t: "accept", gift_id: giftId })).gift;
    }
    async decline(giftId) {
        return (await this.request({ t: "decline", gift_id: giftId })).gift;
    }
    /**
     * As the recipient's guardian (docs/regions.md): approve (the gift becomes the ward's
     * offer; returned pending) or reject (the sender is refunded; returned declined) a gift
     * from nextGuardianRequest(). The same answer again returns the gift as it stands.
     */
    async guardianAnswer(giftId, ward, approve) {
        return (await this.request({ t: "guardian_answer", gift_id: giftId, ward, approve })).gift;
    }
    /** The next gift to a ward of this user waiting for their answer (live or replayed). */
    nextGuardianRequest(timeoutMs) {
        return this.guardianInbox.next(timeoutMs);
    }
    /** The next request of this guardian answered (by any of their devices), as it then stood. */
    nextGuardianSettled(timeoutMs) {
        return this.guardianSettled.next(timeoutMs);
    }
    /**
     * Every request still waiting for this guardian's answer, soonest end of their window
     * first, read a page at a time: what a device lists after connecting, since a device
     * without a stream position is not replayed the `guardian` events sent before.
     */
    async guardianRequests() {
        const gifts = [];
        let after;
        for (;;) {
            const page = await this.request(after === undefined ? { t: "get_guardian_requests" } : { t: "get_guardian_requests", after });
            gifts.push(...page.gifts);
            if (page.next == null)
                return gifts;
            after = page.next;
        }
    }
    balance() {
        return this.request({ t: "get_balance" });
    }
    ping() {
        return this.request({ t: "ping" });
    }
    /** The card art this user's region may see: its own per kind (`optional` false: what offers
     *  and balances name in `skin` / `skins`) and the optional ones. */
    async skins() {
        return [...(await this.request({ t: "get_skins" })).skins];
    }
    /** Watch a live room; its pushes arrive as `room` events and through nextRoomUpdate(). */
    joinRoom(room) {
        return this.request({ t: "join_room", room });
    }
    leaveRoom(room) {
        return this.request({ t: "leave_room", room });
    }
    /** As a streamer: open a gift wish for `target` cards of `kind` in your own room. */
    openWish(kind, target) {
        return this.request({ t: "open_wish", kind, target });
    }
    /** The price of a gift to the room's streamer; pass `quote_id` to sendGift within its validity. */
    quote(room, opts = {}) {
        return this.request({ t: "get_quote", room, kind: opts.kind ?? "note", qty: opts.qty ?? 1 });
    }
    /** The room's viewers, wish, top contributors and your own rank. */
    room(room, top = 10) {
        return this.request({ t: "get_room", room, top });
    }
    redeemFrame(festival) {
        return this.request({ t: "redeem_frame", festival });
    }
    bindMentor(mentor) {
        return this.request({ t: "bind_mentor", mentor });
    }
    /** Appeal the risk engine's action on this account (docs/risk.md). */
    appeal(kind, evidence) {
        return this.request({ t: "appeal", kind, evidence });
    }
    /** Give data-processing consent to the text `version` the user was shown (the welcome's
     * `consent_needed` names the one the user's region asks for; docs/regions.md). */
    giveConsent(version, channel = "sdk") {
        return this.request({ t: "give_consent", version, channel });
    }
    /** Withdraw the consent on record: where the region asks for it, no gift moves any more. */
    withdrawConsent(channel = "sdk") {
        return this.request({ t: "withdraw_consent", channel });
    }
    /** The next offer addressed to this user (each once, including those pending at connect). */
    nextOffer(timeoutMs) {
        return this.offers.next(timeoutMs);
    }
    /** The next final state of a gift this user sent or received. */
    nextOutcome(timeoutMs) {
        return this.outcomes.next(timeoutMs);
    }
    nextRoomUpdate(timeoutMs) {
        return this.roomUpdates.next(timeoutMs);
    }
    /** Send any request; resolves with the reply protocol.REPLIES names for it. */
    async request(body) {
        if (this.failure !== null)
            throw this.failure;
        if (this.closed)
            throw new NotConnected("client closed");
        const deadline = Date.now() + this.options.requestTimeoutMs;
        const call = this.session.request(body);
        try {
            for (;;) {
                this.flush();
                const reply = await this.answerOf(call, deadline);
                if (reply.t === "error") {
                    const retryable = reply.code === "RATE_LIMITED" || reply.code === "UNAVAILABLE";
                    if (retryable && Date.now() < deadline) {
                        await this.sleep(backoffDelay(call.tries, this.options.backoffBaseS, this.options.backoffCapS) * 1000);
                        if (this.closed)
                            throw new NotConnected("client closed");
                        this.session.retry(call);
                        continue;
                    }
                    throw new GiftRefused(reply.code, reply.message, reply.gift, reply.until_ms);
                }
                if (reply.t !== REPLIES[body.t]) {
                    throw new ProtocolError("BAD_FRAME", `unexpected reply ${reply.t} to ${body.t}`);
                }
                return reply;
            }
        }
        finally {
            this.waiting.delete(call);
            this.session.forget(call);
        }
    }
    answerOf(call, deadline) {
        return new Promise((resolve, reject) => {
            const timer = setTimeout(() => {
                this.waiting.delete(call);
                reject(new RequestTimeout(`no answer to ${call.message.t} within ${this.options.requestTimeoutMs} ms`));
            }, Math.max(0, deadline - Date.now()));
            this.waiting.set(call, {
                resolve: (reply) => {
                    clearTimeout(timer);
                    resolve(reply);
                },
                reject: (error) => {
                    clearTimeout(timer);
                    reject(error);
                },
            });
        });
    }
    // ---------------------------------------------------------- connection loop
    async run() {
        while (!this.closed) {
            let code = null;
            try {
                code = await this.connection();
            }
            catch (error) {
                this.emit("warning", `connection attempt failed: ${String(error)}`);
            }
            if (this.closed)
                return;
            const advice = this.session.disconnected(code);
            if (!advice.reconnect || (advice.newToken && typeof this.token === "string")) {
                this.fail(new ConnectionRejected(code ?? 1001, `server closed the connection with ${code}`));
                return;
            }
            if (!this.options.reconnect) {
                this.fail(new ConnectionRejected(code ?? 1001, "disconnected"));
                return;
            }
            this.urlIndex = (this.urlIndex + 1) % this.urls.length;
            const attempt = this.session.reconnectAttempt++;
            await this.sleep(backoffDelay(attempt, this.options.backoffBaseS, this.options.backoffCapS) * 1000);
        }
    }
    sleep(ms) {
        return new Promise((resolve) => {
            const timer = setTimeout(done, ms);
            const previous = this.wakeSleeper;
            function done() {
                clearTimeout(timer);
                resolve();
            }
            this.wakeSleeper = () => {
                previous?.();
                done();
            };
        });
    }
    /** One connection from hello to close; resolves with the close code (null: none came). */
    async connection() {
        const WS = this.webSocketClass ?? (await defaultWebSocket());
        const token = typeof this.token === "string" ? this.token : await this.token();
        if (this.closed)
            return null;
        return new Promise((resolve) => {
            const ws = new WS(this.url, [SUBPROTOCOLS[this.options.encoding]], { maxPayload: MAX_FRAME_BYTES, perMessageDeflate: false });
            ws.binaryType = "arraybuffer";
            let ended = false;
            const end = (code) => {
                if (ended)
                    return;
                ended = true;
                clearTimeout(openTimer);
                this.stopWatchdog();
                ws.onopen = ws.onmessage = ws.onclose = null;
                // Not null: the `ws` package throws an error event that has no listener, and a socket
                // given up on (closed while connecting) still reports its end as one.
                ws.onerror = () => undefined;
                if (this.ws === ws)
                    this.ws = null;
                this.dropConnection = null;
                if (this.session.state === "open")
                    this.emit("connected", false);
                resolve(code);
            };
            const openTimer = setTimeout(() => {
                ws.close();
                end(null);
            }, this.options.connectTimeoutMs);
            this.dropConnection = () => {
                // Also a socket still connecting: left open, it would connect (or fail) for nobody.
                try {
                    ws.close();
                }
                catch {
                    // already closing
                }
                end(null);
            };
            ws.onopen = () => {
                clearTimeout(openTimer);
                this.ws = ws;
                this.lastHeard = Date.now();
                this.session.connect(token, encodingOf(ws.protocol));
                this.flush();
            };
            ws.onmessage = (event) => {
                this.lastHeard = Date.now();
                const data = event.data;
                const frame = typeof data === "string" ? data : new Uint8Array(data);
                this.session.receive(frame);
                this.handleEvents(this.session.eventsReceived());
                this.flush();
            };
            ws.onclose = (event) => end(event.code === 1006 || event.code === 1005 ? null : event.code);
            ws.onerror = () => undefined; // a close event follows
        });
    }
    flush() {
        const frames = this.session.dataToSend();
        const ws = this.ws;
        if (ws === null)
            return; // the session sends every request in flight again after the next welcome
        for (const frame of frames) {
            try {
                ws.send(frame);
            }
            catch {
                return;
            }
        }
    }
    handleEvents(events) {
        for (const event of events) {
            switch (event.type) {
                case "answered":
                    this.waiting.get(event.call)?.resolve(event.reply);
                    break;
                case "offer":
                    this.offers.push(event.gift);
                    this.emit("offer", event.gift);
                    break;
                case "outcome":
                    this.outcomes.push(event.gift);
                    this.emit("outcome", event.gift);
                    break;
                case "guardian":
                    this.guardianInbox.push(event.gift);
                    this.emit("guardian", event.gift);
                    break;
                case "guardian_done":
                    this.guardianSettled.push(event.gift);
                    this.emit("guardian_done", event.gift);
                    break;
                case "room":
                    this.roomUpdates.push(event.room);
                    this.emit("room", event.room);
                    break;
                case "welcomed":
                    this.startWatchdog(event.welcome.heartbeat_s);
                    this.firstWelcome?.resolve(event.welcome);
                    this.firstWelcome = null;
                    this.emit("welcome", event.welcome);
                    this.emit("connected", true);
                    break;
                case "server_error":
                    this.emit("warning", `server error ${event.error.code}: ${event.error.message}`);
                    break;
                case "frame_ignored":
                    this.emit("warning", `unreadable frame from the server ignored: ${event.problem.message}`);
                    break;
            }
        }
    }
    /**
     * Browsers do not show WebSocket pings, so silence is measured on frames: after
     * `heartbeat_s` of it the client sends a `ping` request; after `2 * heartbeat_s + 10` s
     * (docs/protocol.md section 12) the connection counts as dead and is replaced.
     */
    startWatchdog(heartbeatS) {
        this.stopWatchdog();
        const quietMs = heartbeatS * 1000;
        const deadMs = (2 * heartbeatS + 10) * 1000;
        this.watchdog = setInterval(() => {
            const silent = Date.now() - this.lastHeard;
            if (silent >= deadMs) {
                this.ws?.close(4000, "no frames from the server");
                this.dropConnection?.();
            }
            else if (silent >= quietMs) {
                this.ping().catch(() => undefined);
            }
        }, Math.max(1000, quietMs / 2));
    }
    stopWatchdog() {
        if (this.watchdog !== null)
            clearInterval(this.watchdog);
        this.watchdog = null;
    }
    fail(error) {
        this.failure = error;
        this.session.close();
        this.failPending(error);
        this.firstWelcome?.reject(error);
        this.firstWelcome = null;
        this.emit("failed", error);
    }
    failPending(error) {
        for (const waiter of this.waiting.values())
            waiter.reject(error);
        this.waiting.clear();
    }
}
