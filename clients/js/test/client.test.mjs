// The client's own connection handling, against real sockets and no gateway.
import assert from "node:assert/strict";
import { once } from "node:events";
import net from "node:net";
import { test } from "node:test";
import { NotConnected, NotecardClient } from "../dist/index.js";

test("closing a client while it is still connecting ends connect() at once and raises nothing afterwards", async () => {
  // A server that takes the TCP connection and never answers the WebSocket handshake: the
  // client's attempt stays in flight until the test ends it.
  const accepted = [];
  const server = net.createServer((socket) => accepted.push(socket));
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const uncaught = [];
  const record = (error) => uncaught.push(error);
  process.on("uncaughtException", record);
  try {
    const { port } = server.address();
    const client = new NotecardClient(`ws://127.0.0.1:${port}/ws`, "token", { backoffBaseS: 0.05, backoffCapS: 0.1 });
    const connecting = client.connect().catch((error) => error);
    while (accepted.length === 0) await new Promise((resolve) => setTimeout(resolve, 5));
    await client.close();
    // connect() ends with the close, not at its own timeout.
    assert.ok((await connecting) instanceof NotConnected);
    // The half-open connection breaks now: a socket the client still listened to would
    // report it as an error event that nobody handles.
    const closed = once(accepted[0], "close");
    accepted[0].destroy();
    await closed;
    for (let turn = 0; turn < 20; turn++) await new Promise((resolve) => setImmediate(resolve));
    assert.deepEqual(uncaught.map(String), []);
  } finally {
    process.off("uncaughtException", record);
    server.close();
  }
});
