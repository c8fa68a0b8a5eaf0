/**
 * Frames to messages and back, checked against the generated tables of the Python package
 * `protocol/` (schema.generated.ts): exact types, ranges, patterns and lengths as the
 * gateway checks them; unknown fields are dropped, `null` is an absent field.
 */
import { decode as unpack, encode as pack } from "../msgpack/index.mjs";
import { ProtocolError } from "./errors.js";
import { CLIENT_TYPES, MAX_FRAME_BYTES, SERVER_TYPES, SHAPES, SUBPROTOCOLS } from "./schema.generated.js";
const specs = SHAPES;
const patterns = new Map();
export function encodingOf(subprotocol) {
    return subprotocol === SUBPROTOCOLS.msgpack ? "msgpack" : "json";
}
/** The map a message travels as: `t` first, then its fields in table order, no absent ones. */
export function toWire(msg) {
    const fields = specs[msg.t];
    if (fields === undefined)
        throw new TypeError(`unknown message type ${msg.t}`);
    const out = { t: msg.t };
    const source = msg;
    for (const spec of fields) {
        const value = source[spec.name];
        if (value !== undefined && value !== null)
            out[spec.name] = value;
    }
    return out;
}
export function encode(msg, encoding) {
    const wire = toWire(msg);
    return encoding === "msgpack" ? pack(wire) : JSON.stringify(wire);
}
const textEncoder = new TextEncoder();
function load(frame, encoding) {
    if (encoding === "msgpack") {
        if (typeof frame === "string")
            throw new ProtocolError("BAD_FRAME", "this connection expects binary msgpack frames");
        if (frame.byteLength > MAX_FRAME_BYTES)
            throw new ProtocolError("BAD_FRAME", `frame larger than ${MAX_FRAME_BYTES} bytes`);
        try {
            return unpack(frame);
        }
        catch {
            throw new ProtocolError("BAD_FRAME", "frame is not valid msgpack");
        }
    }
    if (typeof frame !== "string")
        throw new ProtocolError("BAD_FRAME", "this connection expects text JSON frames");
    if (frame.length > MAX_FRAME_BYTES || textEncoder.encode(frame).byteLength > MAX_FRAME_BYTES) {
        throw new ProtocolError("BAD_FRAME", `frame larger than ${MAX_FRAME_BYTES} bytes`);
    }
    try {
        return JSON.parse(frame);
    }
    catch {
        throw new ProtocolError("BAD_FRAME", "frame is not valid JSON");
    }
}
function isMap(value) {
    return typeof value === "object" && value !== null && !Array.isArray(value) && !(value instanceof Uint8Array);
}
function fail(field, expected, rid) {
    return new ProtocolError("BAD_FIELD", `field '${field}' must be ${expected}`, rid);
}
function parse(shape, value, field, rid) {
    switch (shape.k) {
        case "str": {
            if (typeof value !== "string")
                throw fail(field, "of type str", rid);
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
            if (typeof value !== "number" || !Number.isSafeInteger(value))
                throw fail(field, range, rid);
            if ((shape.lo !== undefined && value < shape.lo) || (shape.hi !== undefined && value > shape.hi)) {
                throw fail(field, range, rid);
            }
            return value;
        }
        case "bool":
            if (typeof value !== "boolean")
                throw fail(field, "of type bool", rid);
            return value;
        case "map": {
            if (!isMap(value))
                throw fail(field, "a map", rid);
            const out = {};
            for (const [key, item] of Object.entries(value)) {
                out[parse(shape.key, key, field, rid)] = parse(shape.value, item, field, rid);
            }
            return out;
        }
        case "list":
            if (!Array.isArray(value))
                throw fail(field, "a list", rid);
            return value.map((item, i) => parse(shape.item, item, `${field}[${i}]`, rid));
        case "obj":
            if (!isMap(value))
                throw fail(field, "a map", rid);
            return parseFields(shape.type, value, rid, `${field}.`);
    }
}
function parseFields(type, raw, rid, prefix = "") {
    const out = {};
    for (const spec of specs[type] ?? []) {
        const value = raw[spec.name];
        if (value === undefined || value === null) {
            if (!spec.optional)
                throw new ProtocolError("BAD_FIELD", `field '${prefix}${spec.name}' is required`, rid);
            continue;
        }
        out[spec.name] = parse(spec.shape, value, prefix + spec.name, rid);
    }
    return out;
}
function decode(frame, encoding, types) {
    const raw = load(frame, encoding);
    if (!isMap(raw))
        throw new ProtocolError("BAD_FRAME", "a frame must hold a map");
    const ridValue = raw["rid"];
    const rid = typeof ridValue === "number" && Number.isSafeInteger(ridValue) && ridValue >= 0 ? ridValue : undefined;
    const type = raw["t"];
    if (typeof type !== "string")
        throw new ProtocolError("BAD_FRAME", "a frame must have a string field 't'", rid);
    if (!types.includes(type))
        throw new ProtocolError("UNKNOWN_TYPE", "unknown message type", rid);
    return { t: type, ...parseFields(type, raw, rid) };
}
/** A frame the server sent (the client's side). */
export function decodeServer(frame, encoding) {
    return decode(frame, encoding, SERVER_TYPES);
}
/** A frame a client sent (the server's side; for tests and tools). */
export function decodeClient(frame, encoding) {
    return decode(frame, encoding, CLIENT_TYPES);
}
