"""One table says which reply answers which request (protocol.REPLIES): it covers every
client message, docs/protocol.md section 5 says the same, the gateway's dispatch has one
row per message, and a real node answers every request type with the reply the table
names or with an error that is not INTERNAL."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from websockets.asyncio.client import connect

from gateway import GatewayNode
from gateway.requests import RequestHandler
from loadtest import fuzz
from notecard.admin_client import AdminClient
from protocol import (
    CLIENT_MESSAGES,
    REPLIES,
    REPLY_NAMES,
    REQUESTS,
    SERVER_MESSAGES,
    AcceptGift,
    Appeal,
    BindMentor,
    ClientMessage,
    DeclineGift,
    Encoding,
    Error,
    ErrorCode,
    GetBalance,
    GetGuardianRequests,
    GetQuote,
    GetRoom,
    GetSkins,
    GiveConsent,
    GuardianAnswer,
    Hello,
    JoinRoom,
    LeaveRoom,
    OpenWish,
    Ping,
    RedeemFrame,
    SendGift,
    WithdrawConsent,
    answers,
    decode_server,
    encode,
)
from tests.gateway_fixtures import ADMIN_TOKEN, befriend_all, token_for

DOC = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text(encoding="utf-8")

#: One well-formed request of each type (rid 1).
SAMPLES: dict[type[ClientMessage], ClientMessage] = {
    SendGift: SendGift(rid=1, gift_id="rp-g1", to="rp-bob", kind="note", qty=1),
    AcceptGift: AcceptGift(rid=1, gift_id="rp-g1"),
    DeclineGift: DeclineGift(rid=1, gift_id="rp-g1"),
    GetBalance: GetBalance(rid=1),
    Ping: Ping(rid=1),
    JoinRoom: JoinRoom(rid=1, room="rp-alice"),
    LeaveRoom: LeaveRoom(rid=1, room="rp-alice"),
    OpenWish: OpenWish(rid=1, kind="note", target=5),
    GetQuote: GetQuote(rid=1, room="rp-alice", kind="note", qty=1),
    GetRoom: GetRoom(rid=1, room="rp-alice", top=3),
    RedeemFrame: RedeemFrame(rid=1, festival="none"),
    BindMentor: BindMentor(rid=1, mentor="rp-bob"),
    Appeal: Appeal(rid=1, kind="face_verification", evidence="upload-1"),
    GiveConsent: GiveConsent(rid=1, version="privacy-v1"),
    WithdrawConsent: WithdrawConsent(rid=1),
    GuardianAnswer: GuardianAnswer(rid=1, gift_id="g-1", ward="wafa", approve=True),
    GetSkins: GetSkins(rid=1),
    GetGuardianRequests: GetGuardianRequests(rid=1),
}


def test_the_table_has_a_row_for_every_client_message_and_only_server_replies() -> None:
    assert set(REPLIES) == set(CLIENT_MESSAGES.values())
    assert set(REPLIES.values()) <= set(SERVER_MESSAGES.values())
    assert set(REQUESTS) == set(SAMPLES) == set(CLIENT_MESSAGES.values()) - {Hello}


def test_the_gateway_dispatch_has_one_row_per_client_message() -> None:
    assert set(RequestHandler.HANDLERS) == set(CLIENT_MESSAGES.values())


def test_the_fuzzer_expects_the_tables_replies() -> None:
    assert fuzz.REPLIES is REPLIES


def test_section_5_lists_the_same_table() -> None:
    match = re.search(r"^## 5\. Requests and replies$(.*?)^## 6\.", DOC, re.M | re.S)
    assert match
    rows = re.findall(r"^\| `(\w+)` \| `(\w+)`", match.group(1), re.M)
    assert dict(rows) == dict(REPLY_NAMES)
    assert len(rows) == len(REPLY_NAMES)


async def test_a_node_answers_every_request_type_with_the_tables_reply_or_an_error(node: GatewayNode) -> None:
    async with AdminClient(node.admin_url, ADMIN_TOKEN) as admin:
        await befriend_all(admin, "rp-alice", "rp-bob")
    answered: dict[str, str] = {}
    async with connect(node.url, subprotocols=[Encoding.MSGPACK.subprotocol]) as ws:  # type: ignore[list-item]
        await ws.send(encode(Hello(v=1, token=token_for("rp-alice")), Encoding.MSGPACK))
        assert decode_server(await ws.recv(), Encoding.MSGPACK).TYPE == "welcome"
        for rid, sample in enumerate(SAMPLES.values(), start=1):
            request = dataclasses.replace(sample, rid=rid)  # type: ignore[type-var]
            await ws.send(encode(request, Encoding.MSGPACK))
            while True:
                reply = decode_server(await ws.recv(), Encoding.MSGPACK)
                if getattr(reply, "rid", None) == rid:
                    break
            assert answers(request, reply), (request, reply)
            assert not (isinstance(reply, Error) and reply.code == ErrorCode.INTERNAL), (request, reply)
            answered[request.TYPE] = reply.code if isinstance(reply, Error) else reply.TYPE
    assert len(answered) == len(SAMPLES)
    assert answered["open_wish"] == "room" and answered["ping"] == "pong"
    assert answered["send_gift"] == "RECIPIENT_OFFLINE"
