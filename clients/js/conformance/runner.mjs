// Runs conformance cases with the TypeScript SDK against a real gateway: the twin of
// tests/conformance/runner.py (read there what a case and its steps are). Reads
// {"runs": [{"case", "names"}], "urls", "admin", "token_secret"} as JSON on standard input, runs them one
// after the other and writes their reports as one JSON line; {"vectors": [...]} instead checks the comparison rules (match_vectors.json).
import { decode, encode } from "@msgpack/msgpack";
import { WebSocket } from "ws";
import { ConnectionRejected, GiftRefused, NotConnected, NotecardClient, RequestTimeout } from "../dist/index.js";
import { mintToken } from "../support/testbed.mjs";
import { mismatch } from "./match.mjs";

const WAIT_MS = 15_000;

/** An SDK object as the JSON a peer would see: no null or undefined fields. */
function plain(value) {
  if (Array.isArray(value)) return value.map(plain);
  if (value !== null && typeof value === "object") {
    const out = {};
    for (const [key, item] of Object.entries(value)) if (item !== null && item !== undefined) out[key] = plain(item);
    return out;
  }
  return value;
}

function resolve(value, names) {
  if (typeof value === "string" && value.startsWith("$") && Object.hasOwn(names, value.slice(1))) return names[value.slice(1)];
  if (Array.isArray(value)) return value.map((item) => resolve(item, names));
  if (value !== null && typeof value === "object") return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, resolve(v, names)]));
  return value;
}

function pick(observed, path) {
  for (const part of path.split(".")) observed = Array.isArray(observed) ? observed[Number(part)] : observed[part];
  return observed;
}

/** A hand-written frame of a `raw` step as [payload, sent as a text frame] (see runner.py's raw_frame). */
function rawFrame(frame) {
  if (typeof frame === "string") return [frame, true];
  if ("$oversize" in frame) {
    const head = '{"t":"ping","rid":1,"pad":"';
    return [head + "x".repeat(frame.$oversize - head.length - 2) + '"}', true];
  }
  if ("$deep" in frame) return ['{"t":"ping","rid":1,"x":' + "[".repeat(frame.$deep) + "]".repeat(frame.$deep) + "}", true];
  if ("$binary" in frame) return [Buffer.from(frame.$binary, "hex"), false];
  if ("$msgpack" in frame) return [encode(frame.$msgpack), false];
  if ("$text_bytes" in frame) return [Buffer.from(frame.$text_bytes, "hex"), true];
  return [JSON.stringify(frame), true];
}

/** A binary frame from the server: its msgpack map, or its bytes when it is none. */
function unpack(bytes) {
  try {
    return decode(bytes);
  } catch {
    return { $binary: bytes.toString("hex") };
  }
}

class TypeScriptRunner {
  constructor(urls, names, admin, tokenSecret) {
    this.urls = urls;
    this.admin = admin;
    this.tokenSecret = tokenSecret;
    this.names = { ...names };
    this.clients = new Map();
    this.positions = new Map();
  }

  async run(testCase) {
    const steps = [];
    try {
      for (const [index, step] of testCase.steps.entries()) {
        const entry = await this.step(step);
        steps.push({ ...entry, index });
        if (entry.problem !== null) break;
      }
    } finally {
      await Promise.all([...this.clients.values()].map((client) => client.close()));
    }
    return { ok: steps.length === testCase.steps.length && steps.every((s) => s.problem === null), steps };
  }

  async step(step) {
    const expected = step.expect === undefined ? undefined : resolve(step.expect, this.names);
    const deadline = Date.now() + 1000 * (step.until_s ?? 0);
    let observed;
    let problem;
    for (;;) {
      observed = await this.observe(step.as, step.do, resolve(step.args ?? {}, this.names));
      problem = expected === undefined ? null : mismatch(expected, observed);
      if (problem === null || Date.now() >= deadline) break;
      await new Promise((done) => setTimeout(done, 50)); // polling a condition, bounded by until_s
    }
    if (problem === null) for (const [name, path] of Object.entries(step.save ?? {})) this.names[name] = pick(observed, path);
    return { as: step.as, do: step.do, observed: observed ?? null, problem };
  }

  async observe(actor, action, args) {
    if (action === "connect") return this.connect(actor, args);
    if (action === "raw") return this.raw(args);
    if (action === "admin") return this.adminCall(args);
    const client = this.clients.get(actor);
    if (action === "close") {
      await client.close();
      this.positions.set(actor, { epoch: client.epoch, offset: client.offset });
      return plain({ epoch: client.epoch, offset: client.offset });
    }
    if (action === "state") {
      return plain({ epoch: client.epoch, offset: client.offset, recovered: client.recovered, connections: client.connections });
    }
    if (action === "burst") return this.burst(client, args);
    try {
      if (action === "next_offer") return plain(await client.nextOffer(1000 * (args.timeout_s ?? WAIT_MS / 1000)));
      if (action === "next_outcome") return plain(await client.nextOutcome(1000 * (args.timeout_s ?? WAIT_MS / 1000)));
      if (action === "next_room") return plain(await client.nextRoomUpdate(1000 * (args.timeout_s ?? WAIT_MS / 1000)));
      if (action === "next_guardian") return plain(await client.nextGuardianRequest(1000 * (args.timeout_s ?? WAIT_MS / 1000)));
      return plain(await this.request(client, action, args));
    } catch (error) {
      if (error instanceof GiftRefused) return plain({ error: error.code, gift: error.gift });
      if (error instanceof RequestTimeout) return { error: "TIMEOUT" };
      if (error instanceof ConnectionRejected) return { error: "CONNECTION_REJECTED", close: error.closeCode };
      if (error instanceof NotConnected) return { error: "NOT_CONNECTED" };
      throw error;
    }
  }

  /** `count` requests of one kind at once (see runner.py's `_burst`). */
  async burst(client, args) {
    const results = await Promise.all(
      Array.from({ length: args.count }, () =>
        this.request(client, args.request, args.args ?? {}).then(
          () => null,
          (error) => (error instanceof GiftRefused ? error.code : error instanceof RequestTimeout ? "TIMEOUT" : Promise.reject(error)),
        ),
      ),
    );
    const errors = {};
    for (const code of results) if (code !== null) errors[code] = (errors[code] ?? 0) + 1;
    return { answered: results.filter((code) => code === null).length, errors };
  }

  request(client, action, args) {
    switch (action) {
      case "send_gift":
        return client.sendGift(args.to, { qty: args.qty ?? 1, kind: args.kind ?? "note", giftId: args.gift_id, quote: args.quote });
      case "accept":
        return client.accept(args.gift_id);
      case "decline":
        return client.decline(args.gift_id);
      case "balance":
        return client.balance();
      case "ping":
        return client.ping();
      case "open_wish":
        return client.openWish(args.kind ?? "note", args.target);
      case "join_room":
        return client.joinRoom(args.room);
      case "leave_room":
        return client.leaveRoom(args.room);
      case "quote":
        return client.quote(args.room, { qty: args.qty ?? 1, kind: args.kind ?? "note" });
      case "room":
        return client.room(args.room, args.top ?? 10);
      case "redeem_frame":
        return client.redeemFrame(args.festival);
      case "bind_mentor":
        return client.bindMentor(args.mentor);
      case "guardian_answer":
        return client.guardianAnswer(args.gift_id, args.ward, Boolean(args.approve));
      default:
        throw new Error(`unknown action ${action}`);
    }
  }

  /** What an operator does meanwhile, through the admin API. */
  async adminCall(args) {
    const path = typeof args.path === "string" ? args.path : args.path.join(""); // parts: names inside
    const response = await fetch(this.admin.url + path, {
      method: args.method,
      headers: { Authorization: `Bearer ${this.admin.token}`, "Content-Type": "application/json" },
      body: args.body === undefined ? undefined : JSON.stringify(args.body),
    });
    return response.json();
  }

  async connect(actor, args) {
    let { epoch = null, offset = null } = args;
    if (args.resume !== undefined) ({ epoch, offset } = this.positions.get(args.resume));
    // With refresh_token: a token source giving `token` first, then the refreshed one.
    // `mint`: {user, ttl_s} makes a token now, to expire during the case.
    const given = args.mint === undefined ? args.token : mintToken(this.tokenSecret, args.mint.user, args.mint.ttl_s);
    let first = true;
    const token = args.refresh_token === undefined ? given : () => (first ? ((first = false), given) : args.refresh_token);
    const client = new NotecardClient(this.urls[args.node ?? 0], token, {
      encoding: args.encoding ?? "msgpack", epoch, offset,
      backoffBaseS: 0.05, backoffCapS: 0.5, requestTimeoutMs: WAIT_MS, connectTimeoutMs: WAIT_MS,
    });
    try {
      const welcome = await client.connect();
      await this.clients.get(actor)?.close(); // an actor that connects again is one device, one client
      this.clients.set(actor, client);
      return plain(welcome);
    } catch (error) {
      if (error instanceof ConnectionRejected) return { error: "CONNECTION_REJECTED", close: error.closeCode };
      throw error;
    }
  }

  /** Frames written by hand on a WebSocket of its own (see the Python runner's `_raw`). */
  raw(args) {
    const most = args.read ?? 1000;
    return new Promise((done, fail) => {
      const frames = [];
      let closed = null;
      const ws = new WebSocket(this.urls[args.node ?? 0], args.subprotocols ?? ["notecard.v1.json"], { perMessageDeflate: false });
      const timer = setTimeout(() => ws.terminate(), WAIT_MS);
      let arrived = () => undefined;
      const received = (count) =>
        new Promise((enough) => {
          arrived = () => frames.length >= count && enough();
          arrived();
        });
      ws.on("open", async () => {
        for (const frame of args.frames) {
          if (typeof frame !== "string" && "$await" in frame) {
            await received(frame.$await); // the server's answers so far, before the next frame
            continue;
          }
          const [payload, text] = rawFrame(frame);
          if (ws.readyState === WebSocket.OPEN) ws.send(payload, { binary: !text });
        }
      });
      ws.on("message", (data, binary) => {
        frames.push(binary ? unpack(Buffer.from(data)) : JSON.parse(data.toString("utf8")));
        arrived();
        if (frames.length >= most) ws.close(1000);
      });
      ws.on("close", (code) => {
        clearTimeout(timer);
        arrived = () => undefined;
        // A close this side started (after `read` frames) is no close of the server's.
        done({ subprotocol: ws.protocol || null, frames, close: frames.length >= most ? closed : code === 1006 || code === 1005 ? null : code });
      });
      ws.on("unexpected-response", (request, response) => {
        clearTimeout(timer);
        done({ refused: response.statusCode }); // the handshake itself was refused
        request.destroy();
      });
      ws.on("error", (error) => {
        if (ws.readyState === WebSocket.CONNECTING) fail(error);
      });
    });
  }
}

async function main() {
  let text = "";
  for await (const chunk of process.stdin) text += chunk;
  const input = JSON.parse(text);
  if (input.vectors !== undefined) {
    process.stdout.write(JSON.stringify(input.vectors.map((v) => mismatch(v.expected, v.actual) === null)) + "\n");
    return;
  }
  const reports = [];
  for (const run of input.runs) {
    try {
      reports.push(await new TypeScriptRunner(input.urls, run.names, input.admin, input.token_secret).run(run.case));
    } catch (error) {
      reports.push({ ok: false, steps: [], crash: String(error?.stack ?? error) }); // fails its case, not the others
    }
  }
  process.stdout.write(JSON.stringify(reports) + "\n");
}

await main();
