/**
 * Frames to messages and back, checked against the generated tables of the Python package
 * `protocol/` (schema.generated.ts): exact types, ranges, patterns and lengths as the
 * gateway checks them; unknown fields are dropped, `null` is an absent field.
 */
import { decode as unpack, encode as pack } from "@msgpack/msgpack";
import { ProtocolError } from "./errors.js";
import { CLIENT_TYPES, MAX_FRAME_BYTES, SERVER_TYPES, SHAPES, SUBPROTOCOLS } from "./schema.generated.js";
import type { ClientMessage, ServerMessage } from "./schema.generated.js";

export type Encoding = "msgpack" | "json";
export type Frame = string | Uint8Array;

type Shape =
  | { k: "str"; re?: string; max?: number }
  | { k: "int"; lo?: number; hi?: number }
  | { k: "bool" }
  | { k: "map"; key: Shape; value: Shape }
  | { k: "list"; item: Shape }
  | { k: "obj"; type: string };
interface FieldSpec {
  name: string;
  optional: boolean;
  shape: Shape;
}
const specs = SHAPES as unknown as Record<string, readonly FieldSpec[]>;
const patterns = new Map<string, RegExp>();

export function encodingOf(subprotocol: string): Encoding {
  return subprotocol === SUBPROTOCOLS.msgpack ? "msgpack" : "json";
}

/** The map a message travels as: `t` first, then its fields in table order, no absent ones. */
export function toWire(msg: ClientMessage | ServerMessage): Record<string, unknown> {
  const fields = specs[msg.t];
  if (fields === undefined) throw new TypeError(`unknown message type ${msg.t}`);
  const out: Record<string, unknown> = { t: msg.t };
  const source = msg as unknown as Record<string, unknown>;
  for (const spec of fields) {
    const value = source[spec.name];
    if (value !== undefined && value !== null) out[spec.name] = value;
  }
  return out;
}

export function encode(msg: ClientMessage | ServerMessage, encoding: Encoding): Frame {
  const wire = toWire(msg);
  return encoding === "msgpack" ? pack(wire) : JSON.stringify(wire);
}

const textEncoder = new TextEncoder();

function load(frame: Frame, encoding: Encoding): unknown {
  if (encoding === "msgpack") {
    if (typeof frame === "string") throw new ProtocolError("BAD_FRAME", "this connection expects binary msgpack frames");
    if (frame.byteLength > MAX_FRAME_BYTES) throw new ProtocolError("BAD_FRAME", `frame larger than ${MAX_FRAME_BYTES} bytes`);
    try {
      return unpack(frame);
    } catch {
      throw new ProtocolError("BAD_FRAME", "frame is not valid msgpack");
    }
  }
  if (typeof frame !== "string") throw new ProtocolError("BAD_FRAME", "this connection expects text JSON frames");
  if (frame.length > MAX_FRAME_BYTES || textEncoder.encode(frame).byteLength > MAX_FRAME_BYTES) {
    throw new ProtocolError("BAD_FRAME", `frame larger than ${MAX_FRAME_BYTES} bytes`);
  }
  try {
    return JSON.parse(frame);
  } catch {
    throw new ProtocolError("BAD_FRAME", "frame is not valid JSON");
  }
}

function isMap(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value) && !(value instanceof Uint8Array);
}

function fail(field: string, expected: string, rid: number | undefined): ProtocolError {
  return new ProtocolError("BAD_FIELD", `field '${field}' must be ${expected}`, rid);
}

function parse(shape: Shape, value: unknown, field: string, rid: number | undefined): unknown {
  switch (shape.k) {
    case "str": {
      if (typeof value !== "string") throw fail(field, "of type str", rid);
      if (shape.re !== undefined && shape.max !== undefined) {
        let re = patterns.get(shape.re);
        if (re === undefined) {
          re = new RegExp(`^(?:${shape.re})$`, "u");
          patterns.set(shape.re, re);
        }
        // Lengths are in code points, as in Python.
        if ([...value].length > shape.max || !re.test(value)) {
          throw fail(field, `a string of at most ${shape.max} characters matching ${shape.re}`, rid);
        }
      }
      return value;
    }
    case "int": {
      const range = `an integer from ${shape.lo} to ${shape.hi}`;
      if (typeof value !== "number" || !Number.isSafeInteger(value)) throw fail(field, range, rid);
      if ((shape.lo !== undefined && value < shape.lo) || (shape.hi !== undefined && value > shape.hi)) {
        throw fail(field, range, rid);
      }
      return value;
    }
    case "bool":
      if (typeof value !== "boolean") throw fail(field, "of type bool", rid);
      return value;
    case "map": {
      if (!isMap(value)) throw fail(field, "a map", rid);
      const out: Record<string, unknown> = {};
      for (const [key, item] of Object.entries(value)) {
        out[parse(shape.key, key, field, rid) as string] = parse(shape.value, item, field, rid);
      }
      return out;
    }
    case "list":
      if (!Array.isArray(value)) throw fail(field, "a list", rid);
      return value.map((item, i) => parse(shape.item, item, `${field}[${i}]`, rid));
    case "obj":
      if (!isMap(value)) throw fail(field, "a map", rid);
      return parseFields(shape.type, value, rid, `${field}.`);
  }
}

function parseFields(type: string, raw: Record<string, unknown>, rid: number | undefined, prefix = ""): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const spec of specs[type] ?? []) {
    const value = raw[spec.name];
    if (value === undefined || value === null) {
      if (!spec.optional) throw new ProtocolError("BAD_FIELD", `field '${prefix}${spec.name}' is required`, rid);
      continue;
    }
    out[spec.name] = parse(spec.shape, value, prefix + spec.name, rid);
  }
  return out;
}

function decode<M>(frame: Frame, encoding: Encoding, types: readonly string[]): M {
  const raw = load(frame, encoding);
  if (!isMap(raw)) throw new ProtocolError("BAD_FRAME", "a frame must hold a map");
  const ridValue = raw["rid"];
  const rid = typeof ridValue === "number" && Number.isSafeInteger(ridValue) && ridValue >= 0 ? ridValue : undefined;
  const type = raw["t"];
  if (typeof type !== "string") throw new ProtocolError("BAD_FRAME", "a frame must have a string field 't'", rid);
  if (!types.includes(type)) throw new ProtocolError("UNKNOWN_TYPE", "unknown message type", rid);
  return { t: type, ...parseFields(type, raw, rid) } as M;
}

/** A frame the server sent (the client's side). */
export function decodeServer(frame: Frame, encoding: Encoding): ServerMessage {
  return decode<ServerMessage>(frame, encoding, SERVER_TYPES);
}

/** A frame a client sent (the server's side; for tests and tools). */
export function decodeClient(frame: Frame, encoding: Encoding): ClientMessage {
  return decode<ClientMessage>(frame, encoding, CLIENT_TYPES);
}
