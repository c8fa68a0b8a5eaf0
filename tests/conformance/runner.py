"""Runs one conformance case with the Python SDK (``notecard_sdk``) against a real gateway.

A case (tests/conformance/cases.json) is a list of steps. Each step names an actor (one SDK
client, or one raw WebSocket), an action, its arguments and the observation it expects.
``$name`` strings in arguments and expectations are replaced from the case's variables:
the users' ids (``$alice``), their tokens (``$alice.token``), fresh gift ids, and values
saved by earlier steps (``"save": {"name": "path.in.observation"}``). A step with
``until_s`` is repeated until it matches (for state the server updates after replying).

Actions (``do``): ``connect`` (``token`` or ``mint``, ``encoding``, ``node``, ``resume``: an
actor whose closed client's position to resume from, or ``epoch`` and ``offset``;
``refresh_token``), ``close``, ``state`` (epoch, offset, recovered, connections), the
requests ``send_gift``, ``accept``, ``decline``, ``balance``, ``ping``, ``open_wish``,
``join_room``, ``leave_room``, ``quote``, ``room``, ``redeem_frame``, ``bind_mentor`` (a
refusal is observed as ``{"error": code, "gift"}``), the pushes ``next_offer``,
``next_outcome``, ``next_room``, ``burst`` (many requests at once), ``admin`` (an
operator's call meanwhile) and ``raw`` (frames written by hand: :func:`raw_frame`).

clients/js/conformance/runner.mjs is the same interpreter over the TypeScript SDK: one
file of cases, two SDKs. The runner stops at the first step that does not match and
reports every step it ran, with what it observed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import json
import time
from typing import Any

import msgpack
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Subprotocol

from gateway import mint_token
from notecard.admin_client import AdminClient
from notecard_sdk import (
    ConnectionRejected,
    Encoding,
    GiftRefused,
    NotConnected,
    NotecardClient,
    RequestTimeout,
    TokenSource,
)
from protocol.messages import SERVER_MESSAGES
from tests.conformance.match import mismatch

#: How long a step may wait for a push (an offer, an outcome) or for ``until_s`` by default.
WAIT_S = 15.0


def plain(value: Any) -> Any:
    """An SDK object as the JSON a peer would see: no ``None`` fields, lists for tuples."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        kind = str(getattr(value, "TYPE", ""))
        head = {"t": kind} if SERVER_MESSAGES.get(kind) is type(value) else {}  # as on the wire
        value = head | {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def resolve(value: Any, names: dict[str, Any]) -> Any:
    """``value`` with every ``$name`` string that names a variable replaced by its value."""
    if isinstance(value, str) and value.startswith("$") and value[1:] in names:
        return names[value[1:]]
    if isinstance(value, dict):
        return {k: resolve(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, names) for v in value]
    return value


def pick(observed: Any, path: str) -> Any:
    for part in path.split("."):
        observed = observed[int(part)] if isinstance(observed, list) else observed[part]
    return observed


def raw_frame(frame: Any) -> tuple[str | bytes, bool]:
    """A hand-written frame of a ``raw`` step as (payload, sent as a text frame):

    a string is sent as it is; ``{"$oversize": n}`` is a ``ping`` padded to n bytes;
    ``{"$deep": n}`` a ``ping`` with n nested lists; ``{"$msgpack": map}`` that map as a
    msgpack binary frame; ``{"$binary": hex}`` a binary frame of those bytes and
    ``{"$text_bytes": hex}`` a text frame of those bytes (invalid UTF-8 is possible); any
    other map is sent as JSON text.
    """
    if isinstance(frame, str):
        return frame, True
    if "$oversize" in frame:
        head = '{"t":"ping","rid":1,"pad":"'
        return head + "x" * (int(frame["$oversize"]) - len(head) - 2) + '"}', True
    if "$deep" in frame:
        depth = int(frame["$deep"])
        return '{"t":"ping","rid":1,"x":' + "[" * depth + "]" * depth + "}", True
    if "$binary" in frame:
        return bytes.fromhex(frame["$binary"]), False
    if "$msgpack" in frame:
        return msgpack.packb(frame["$msgpack"]), False
    if "$text_bytes" in frame:
        return bytes.fromhex(frame["$text_bytes"]), True
    return json.dumps(frame), True


class PythonRunner:
    def __init__(self, urls: list[str], names: dict[str, Any], admin: dict[str, str], token_secret: str) -> None:
        self.urls = urls
        #: The admin API (``url``, ``token``) for ``admin`` steps: what an operator does meanwhile.
        self.admin = admin
        #: For tokens minted during the case (the login service's part).
        self.token_secret = token_secret
        self.names = dict(names)
        self.clients: dict[str, NotecardClient] = {}
        #: The stream position each closed client ended with, for a later resume.
        self.positions: dict[str, tuple[str | None, int | None]] = {}

    async def run(self, case: dict[str, Any]) -> dict[str, Any]:
        report: list[dict[str, Any]] = []
        try:
            for index, step in enumerate(case["steps"]):
                entry = await self._step(step)
                entry["index"] = index
                report.append(entry)
                if entry["problem"] is not None:
                    break
        finally:
            for client in self.clients.values():
                await client.close()
        return {"ok": all(e["problem"] is None for e in report) and len(report) == len(case["steps"]),
                "steps": report}

    async def _step(self, step: dict[str, Any]) -> dict[str, Any]:
        actor = step["as"]
        expected = resolve(step.get("expect"), self.names)
        until = float(step.get("until_s", 0))
        deadline = time.monotonic() + until
        while True:
            observed = await self._observe(actor, step["do"], resolve(step.get("args", {}), self.names))
            problem = None if expected is None else mismatch(expected, observed)
            if problem is None or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.05)  # polling a condition, bounded by until_s
        if problem is None:
            for name, path in step.get("save", {}).items():
                self.names[name] = pick(observed, path)
        return {"as": actor, "do": step["do"], "observed": observed, "problem": problem}

    async def _observe(self, actor: str, action: str, args: dict[str, Any]) -> Any:
        if action == "connect":
            return await self._connect(actor, args)
        if action == "raw":
            return await self._raw(args)
        if action == "admin":
            async with AdminClient(self.admin["url"], self.admin["token"]) as admin:
                path = args["path"] if isinstance(args["path"], str) else "".join(args["path"])  # parts: names inside
                return await admin.call(args["method"], path, args.get("body"))
        client = self.clients[actor]
        if action == "close":
            await client.close()
            self.positions[actor] = (client.epoch, client.offset)
            return {"epoch": client.epoch, "offset": client.offset}
        if action == "state":
            return plain({"epoch": client.epoch, "offset": client.offset, "recovered": client.recovered,
                          "connections": client.connections})
        if action == "burst":
            return await self._burst(client, args)
        if action in ("next_offer", "next_outcome", "next_room", "next_guardian"):
            wait = float(args.get("timeout_s", WAIT_S))
            pushes = {"next_offer": client.next_offer, "next_outcome": client.next_outcome,
                      "next_room": client.next_room_update, "next_guardian": client.next_guardian_request}
            try:
                return plain(await pushes[action](wait))
            except TimeoutError:
                return {"error": "TIMEOUT"}
        try:
            return plain(await self._request(client, action, args))
        except GiftRefused as refused:
            return plain({"error": refused.code, "gift": refused.gift})
        except RequestTimeout:
            return {"error": "TIMEOUT"}
        except ConnectionRejected as rejected:
            return {"error": "CONNECTION_REJECTED", "close": rejected.close_code}
        except NotConnected:
            return {"error": "NOT_CONNECTED"}

    async def _burst(self, client: NotecardClient, args: dict[str, Any]) -> Any:
        """``count`` requests of one kind at once: how many got their reply, and the errors
        of the others by code (the SDK retries RATE_LIMITED by itself)."""
        async def one() -> str | None:
            try:
                await self._request(client, args["request"], args.get("args", {}))
            except GiftRefused as refused:
                return refused.code
            except RequestTimeout:
                return "TIMEOUT"
            return None

        results = await asyncio.gather(*(one() for _ in range(int(args["count"]))))
        errors: dict[str, int] = {}
        for code in results:
            if code is not None:
                errors[code] = errors.get(code, 0) + 1
        return {"answered": results.count(None), "errors": errors}

    async def _request(self, client: NotecardClient, action: str, args: dict[str, Any]) -> Any:
        if action == "send_gift":
            return await client.send_gift(args["to"], qty=args.get("qty", 1), kind=args.get("kind", "note"),
                                          gift_id=args.get("gift_id"), quote=args.get("quote"))
        if action in ("accept", "decline"):
            return await (client.accept if action == "accept" else client.decline)(args["gift_id"])
        if action == "balance":
            return await client.balance()
        if action == "ping":
            return await client.ping()
        if action == "open_wish":
            return await client.open_wish(args.get("kind", "note"), args["target"])
        if action == "join_room":
            return await client.join_room(args["room"])
        if action == "leave_room":
            return await client.leave_room(args["room"])
        if action == "quote":
            return await client.quote(args["room"], qty=args.get("qty", 1), kind=args.get("kind", "note"))
        if action == "room":
            return await client.room(args["room"], top=args.get("top", 10))
        if action == "redeem_frame":
            return await client.redeem_frame(args["festival"])
        if action == "bind_mentor":
            return await client.bind_mentor(args["mentor"])
        if action == "guardian_answer":
            return await client.guardian_answer(args["gift_id"], args["ward"], bool(args["approve"]))
        raise ValueError(f"unknown action {action!r}")

    async def _connect(self, actor: str, args: dict[str, Any]) -> Any:
        epoch, offset = args.get("epoch"), args.get("offset")
        if "resume" in args:
            epoch, offset = self.positions[args["resume"]]
        client = NotecardClient(self.urls[args.get("node", 0)], _token_source(args, self.token_secret),
                                encoding=Encoding[args.get("encoding", "msgpack").upper()], epoch=epoch, offset=offset,
                                backoff_base_s=0.05, backoff_cap_s=0.5, request_timeout_s=WAIT_S,
                                connect_timeout_s=WAIT_S)
        try:
            welcome = await client.connect()
        except ConnectionRejected as rejected:
            return {"error": "CONNECTION_REJECTED", "close": rejected.close_code}
        if actor in self.clients:  # an actor that connects again is one device, one client
            await self.clients[actor].close()
        self.clients[actor] = client
        return plain(welcome)

    async def _raw(self, args: dict[str, Any]) -> Any:
        """Frames written by hand on a WebSocket of its own: what the server answers, and
        how it closes (``close`` is None when the server had not closed after ``read`` frames)."""
        frames: list[Any] = []
        offered = [Subprotocol(p) for p in args.get("subprotocols", ["notecard.v1.json"])]
        try:
            ws = await connect(self.urls[args.get("node", 0)], subprotocols=offered or None, compression=None,
                               max_size=None)
        except InvalidStatus as refused:  # the handshake itself was refused
            return {"refused": refused.response.status_code}
        async with ws:
            for frame in args["frames"]:
                if isinstance(frame, dict) and "$await" in frame:
                    # The server's answers so far, before the next frame.
                    if await _read(ws, frames, int(frame["$await"])) is not None:
                        break
                    continue
                payload, text = raw_frame(frame)
                try:
                    await ws.send(payload, text=text)
                except ConnectionClosed:
                    break
            closed = await _read(ws, frames, int(args.get("read", 1000)))
        return {"subprotocol": ws.subprotocol, "frames": frames, "close": closed}


def _token_source(args: dict[str, Any], secret: str) -> TokenSource:
    """The token (``mint``: {user, ttl_s} makes one now, to expire during the case), or with
    ``refresh_token`` a function giving it first and then the refreshed one (what an app's
    login service does after TOKEN_EXPIRED)."""
    mint = args.get("mint")
    token = str(args["token"]) if mint is None else mint_token(secret, mint["user"], ttl_s=int(mint["ttl_s"]))
    if "refresh_token" not in args:
        return token
    tokens = [token]

    async def source() -> str:
        return tokens.pop() if tokens else str(args["refresh_token"])

    return source


def _unpack(frame: bytes) -> Any:
    """A binary frame from the server: its msgpack map, or its bytes when it is none."""
    try:
        return msgpack.unpackb(frame)
    except ValueError:
        return {"$binary": frame.hex()}


async def _read(ws: ClientConnection, frames: list[Any], most: int) -> int | None:
    try:
        async with asyncio.timeout(WAIT_S):
            while len(frames) < most:
                frame = await ws.recv()
                frames.append(json.loads(frame) if isinstance(frame, str) else _unpack(frame))
    except (ConnectionClosed, TimeoutError):
        pass
    received = ws.protocol.close_rcvd  # the server's close frame, if it sent one
    return None if received is None else received.code
