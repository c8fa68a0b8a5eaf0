// How a conformance step's observation is compared with what the case expects: the same
// rules as tests/conformance/match.py, pinned to the same answers by
// tests/conformance/match_vectors.json.
//   a map expects a subset; a list the same length, item by item; "$any" any present,
//   non-null value; "$absent" a missing or null key; anything else equality with its JSON type.
export const ANY = "$any";
export const ABSENT = "$absent";

const kind = (value) => (value === null || value === undefined ? "null" : Array.isArray(value) ? "list" : typeof value);
const show = (value) => (value === undefined ? "undefined" : JSON.stringify(value));

/** The first difference between `expected` and `actual`, or null when they match. */
export function mismatch(expected, actual, path = "$") {
  if (expected === ANY) return actual !== null && actual !== undefined ? null : `${path}: expected a value, got nothing`;
  if (expected === ABSENT) return actual === null || actual === undefined ? null : `${path}: expected no value, got ${show(actual)}`;
  if (kind(expected) === "object") {
    if (kind(actual) !== "object") return `${path}: expected a map, got ${show(actual)}`;
    for (const [key, want] of Object.entries(expected)) {
      const problem = mismatch(want, Object.hasOwn(actual, key) ? actual[key] : undefined, `${path}.${key}`);
      if (problem !== null) return problem;
    }
    return null;
  }
  if (kind(expected) === "list") {
    if (kind(actual) !== "list") return `${path}: expected a list, got ${show(actual)}`;
    if (expected.length !== actual.length) return `${path}: expected ${expected.length} items, got ${actual.length}: ${show(actual)}`;
    for (let i = 0; i < expected.length; i++) {
      const problem = mismatch(expected[i], actual[i], `${path}[${i}]`);
      if (problem !== null) return problem;
    }
    return null;
  }
  if (kind(expected) === "null" && kind(actual) === "null") return null; // absent and null are alike
  if (kind(expected) !== kind(actual) || expected !== actual) return `${path}: expected ${show(expected)}, got ${show(actual)}`;
  return null;
}
