// A real local deployment for the tests: `python -m notecard.testbed` (a redis-server and
// gateway nodes on free loopback ports, fresh secrets), stopped when the test ends.
import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

const repo = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");

export function python() {
  if (process.env.NOTECARD_PYTHON) return process.env.NOTECARD_PYTHON;
  const venv = join(repo, ".venv", "bin", "python");
  return existsSync(venv) ? venv : "python3";
}

/** Start a testbed with `nodes` gateway nodes; resolves once every node is ready. `args`:
 * more of `python -m notecard.testbed`'s flags (`--dashboards SEED:RECIPIENTS`). */
export async function startTestbed(nodes = 2, args = []) {
  const child = spawn(python(), ["-m", "notecard.testbed", "--nodes", String(nodes), ...args], {
    cwd: repo,
    stdio: ["pipe", "pipe", "inherit"],
  });
  const lines = createInterface({ input: child.stdout });
  const info = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("the testbed did not start within 60 s")), 60_000);
    child.once("exit", (code) => reject(new Error(`the testbed exited with ${code} before it was ready`)));
    lines.once("line", (line) => {
      clearTimeout(timer);
      resolve(JSON.parse(line));
    });
  });
  return {
    ...info,
    tokenFor: (user, ttlS = 3600) => mintToken(info.token_secret, user, ttlS),
    admin: (method, path, body) => admin(info.nodes[0].admin_url, info.admin_token, method, path, body),
    /** SIGKILL one node (a process this testbed started): a crash, no clean-up. */
    kill(index) {
      process.kill(info.nodes[index].pid, "SIGKILL");
    },
    async stop() {
      child.stdin.end();
      await new Promise((resolve) => (child.exitCode !== null ? resolve() : child.once("exit", resolve)));
    },
  };
}

/** A client token as docs/protocol.md section 13 defines it: an HS256 JWT for the audience
 * `notecard` (the gateway only verifies it; in production the login service mints it). */
export function mintToken(secret, user, ttlS = 3600) {
  const now = Math.floor(Date.now() / 1000);
  const part = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const signed = `${part({ alg: "HS256", typ: "JWT" })}.${part({ sub: user, aud: "notecard", iat: now, exp: now + ttlS, app: "main" })}`;
  return `${signed}.${createHmac("sha256", secret).update(signed).digest("base64url")}`;
}

export async function admin(base, token, method, path, body) {
  const response = await fetch(base + path, {
    method,
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await response.json();
  if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${JSON.stringify(data)}`);
  return data;
}

/** Verified users who follow each other (for 4 days, past the 3-day rule), `cards` each. */
export async function befriend(bed, users, cards = 10) {
  const since = Date.now() - 4 * 86_400_000;
  for (const user of users) {
    await bed.admin("POST", "/admin/users", { user_id: user, verified: true });
    if (cards) await bed.admin("POST", `/admin/users/${user}/mint`, { qty: cards });
  }
  for (const a of users) for (const b of users) if (a !== b) await bed.admin("PUT", `/admin/users/${a}/follows/${b}`, { since_ms: since });
}

export async function waitFor(condition, timeoutMs = 20_000, what = "condition") {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await condition()) return;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(`timed out waiting for ${what}`);
}

export const unique = (prefix) => `${prefix}-${Math.random().toString(36).slice(2, 8)}`;
