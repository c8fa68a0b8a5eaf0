"""The sans-I/O client session against the sans-I/O server session, in memory, the way h11
pairs its client and server: frames move between the two objects, no socket, no clock.

The server side is :class:`protocol.ServerSession` (the frame rules the gateway uses) with
a toy application behind it: gifts in a dict, one event stream per user. What is checked
is the client's half of docs/protocol.md: hello and resume, the pending list in parts,
same-id resends after a drop, offers and events never yielded twice, close codes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import (
    REPLIES,
    AcceptGift,
    Answered,
    Balance,
    ClientMessage,
    ClientSession,
    CloseCode,
    DeclineGift,
    Disconnect,
    Encoding,
    Error,
    ErrorCode,
    Event,
    FrameIgnored,
    GetBalance,
    Gift,
    GiftResolved,
    GiftSent,
    Hello,
    OfferReceived,
    OutcomeReceived,
    Ping,
    Pong,
    Refuse,
    SendGift,
    ServerError,
    ServerMessage,
    ServerSession,
    ServerState,
    SessionEvent,
    SessionState,
    Welcome,
    Welcomed,
    encode,
    needs_new_token,
    should_reconnect,
)
from protocol.server_session import PENDING_PER_FRAME


class Ledger:
    """The toy application: gifts by id, an event stream per user, live links per user."""

    def __init__(self) -> None:
        self.epoch = "ep1"
        self.gifts: dict[str, Gift] = {}
        self.streams: dict[str, list[Event]] = {}
        self.links: list[Link] = []
        self.requests: list[ClientMessage] = []

    def append(self, user: str, kind: str, gift: Gift) -> None:
        stream = self.streams.setdefault(user, [])
        event = Event(epoch=self.epoch, offset=len(stream) + 1, event=kind, gift=gift)
        stream.append(event)
        for link in self.links:
            if link.user == user and link.server.state is ServerState.SERVING:
                link.to_client.append(link.server_encode(event))

    def pending_for(self, user: str) -> list[Gift]:
        return [g for g in self.gifts.values() if g.recipient == user and g.state == "pending"]

    def gift(self, gift_id: str, sender: str, to: str, qty: int) -> Gift:
        return Gift(gift_id=gift_id, sender=sender, recipient=to, kind="note", qty=qty, cost=10 * qty,
                    state="pending", created_at_ms=1, expires_at_ms=60_001)

    def answer(self, user: str, msg: ClientMessage) -> ServerMessage:
        self.requests.append(msg)
        if isinstance(msg, SendGift):
            known = self.gifts.get(msg.gift_id)
            if known is not None:
                if (known.recipient, known.qty) != (msg.to, msg.qty):
                    return Error(rid=msg.rid, code=ErrorCode.IDEMPOTENCY_CONFLICT, message="conflict")
                return GiftSent(rid=msg.rid, gift=known)
            gift = self.gifts[msg.gift_id] = self.gift(msg.gift_id, user, msg.to, msg.qty)
            self.append(msg.to, "offer", gift)
            return GiftSent(rid=msg.rid, gift=gift)
        if isinstance(msg, AcceptGift | DeclineGift):
            gift = self.gifts[msg.gift_id]
            if gift.state == "pending":
                gift = self.gifts[msg.gift_id] = dataclasses.replace(
                    gift, state="accepted" if isinstance(msg, AcceptGift) else "declined")
                self.append(gift.recipient, "outcome", gift)
                self.append(gift.sender, "outcome", gift)
            return GiftResolved(rid=msg.rid, gift=gift)
        if isinstance(msg, GetBalance):
            return Balance(rid=msg.rid, available={"note": 10}, held={}, units_per_card=10)
        if isinstance(msg, Ping):
            return Pong(rid=msg.rid, server_time_ms=5)
        return Error(rid=getattr(msg, "rid", None), code=ErrorCode.UNKNOWN_TYPE, message="not in the toy")


class Link:
    """One WebSocket connection between a client session and a new server session."""

    def __init__(self, ledger: Ledger, client: ClientSession, user: str) -> None:
        self.ledger = ledger
        self.client = client
        self.user = user
        self.server = ServerSession(client.encoding)
        self.to_client: list[Any] = []
        self.closed: int | None = None
        ledger.links.append(self)
        client.connect(user)  # the toy's token is the user id

    def server_encode(self, msg: ServerMessage) -> Any:
        return encode(msg, self.client.encoding)

    def pump(self) -> list[SessionEvent]:
        """Move frames both ways until neither side has anything to say."""
        events: list[SessionEvent] = []
        while True:
            out = self.client.data_to_send()
            for frame in out:
                self._server_receives(frame)
            back, self.to_client = self.to_client, []
            for frame in back:
                self.client.receive(frame)
            events += self.client.events_received()
            if not out and not back:
                return events

    def _server_receives(self, frame: Any) -> None:
        got = self.server.receive(frame)
        if isinstance(got, Refuse):
            self.to_client.append(self.server_encode(got.error))
            if got.close is not None:
                self.closed = got.close
            return
        if isinstance(got, Hello):
            self._welcome(got)
            return
        reply = self.server.reply(got, self.ledger.answer(self.user, got))
        self.to_client.append(self.server_encode(reply))

    def _welcome(self, hello: Hello) -> None:
        stream = self.ledger.streams.get(self.user, [])
        head = len(stream)
        replay: list[Event] = []
        recovered = True
        if hello.epoch is not None and hello.offset is not None:
            if hello.epoch == self.ledger.epoch:
                replay = stream[hello.offset:]
            else:
                replay, recovered = list(stream), False
        welcome = Welcome(user=self.user, node="mem", epoch=self.ledger.epoch, offset=head, recovered=recovered,
                          pending=(), heartbeat_s=20)
        for msg in self.server.welcome(welcome, self.ledger.pending_for(self.user)):
            self.to_client.append(self.server_encode(msg))
        self.to_client += [self.server_encode(e) for e in replay]

    def drop(self, code: int | None = None) -> Disconnect:
        """The connection ends; frames still on their way are lost with it."""
        self.ledger.links.remove(self)
        self.to_client.clear()
        return self.client.disconnected(code)


def of(events: list[SessionEvent], kind: type) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]


@pytest.fixture(params=list(Encoding), ids=lambda e: e.name)
def encoding(request: pytest.FixtureRequest) -> Encoding:
    return request.param  # type: ignore[no-any-return]


def send(alice: ClientSession, gift_id: str, to: str = "bob", qty: int = 1) -> Any:
    return alice.request(lambda rid: SendGift(rid=rid, gift_id=gift_id, to=to, kind="note", qty=qty))


def test_hello_welcome_and_a_request_answered_by_its_reply(encoding: Encoding) -> None:
    ledger = Ledger()
    alice = ClientSession(encoding)
    assert alice.state is SessionState.IDLE
    link = Link(ledger, alice, "alice")
    assert alice.state is SessionState.AWAITING_WELCOME
    call = alice.request(lambda rid: Ping(rid=rid))  # waits for the welcome
    events = link.pump()
    assert alice.state is SessionState.OPEN
    (welcomed,) = of(events, Welcomed)
    assert welcomed.welcome.user == "alice" and not welcomed.resumed
    (answered,) = of(events, Answered)
    assert answered.call is call and isinstance(answered.reply, Pong) and not answered.unexpected
    assert (alice.epoch, alice.offset) == ("ep1", 0)
    assert [type(m) for m in ledger.requests] == [Ping]


def test_a_long_pending_list_in_parts_gives_each_offer_once_and_requests_wait_for_its_end(
        encoding: Encoding) -> None:
    ledger = Ledger()
    count = 2 * PENDING_PER_FRAME + 5
    for i in range(count):
        ledger.gifts[f"g{i}"] = ledger.gift(f"g{i}", "alice", "bob", 1)
    bob = ClientSession(encoding)
    link = Link(ledger, bob, "bob")
    bob.data_to_send()  # the hello, held back: the welcome arrives in parts below
    link._welcome(Hello(v=1, token="bob"))
    frames = link.to_client
    link.to_client = []
    bob.receive(frames[0])
    assert bob.state is SessionState.RECEIVING_PENDING
    call = bob.request(lambda rid: Ping(rid=rid))
    assert bob.data_to_send() == [], "a request went out before the pending list was complete"
    for frame in frames[1:]:
        bob.receive(frame)
    events = bob.events_received()
    (welcomed,) = of(events, Welcomed)
    assert len(welcomed.welcome.pending) == count and welcomed.welcome.pending_more is None
    assert [e.gift.gift_id for e in of(events, OfferReceived)] == [f"g{i}" for i in range(count)]
    assert len(bob.data_to_send()) == 1 and bob.in_flight == [call]


def test_a_drop_resends_requests_in_flight_with_the_same_ids_and_resumes_the_stream(encoding: Encoding) -> None:
    ledger = Ledger()
    alice, bob = ClientSession(encoding), ClientSession(encoding)
    a, b = Link(ledger, alice, "alice"), Link(ledger, bob, "bob")
    a.pump(), b.pump()
    first = send(alice, "gift-1")
    a.pump()
    offer = of(b.pump(), OfferReceived)
    assert [o.gift.gift_id for o in offer] == ["gift-1"]
    assert bob.offset == 1

    second = send(alice, "gift-2")
    for frame in alice.data_to_send():  # the request reaches the server, the reply is lost
        a._server_receives(frame)
    advice = a.drop(None)
    assert advice.reconnect and not advice.new_token
    assert alice.in_flight == [second]
    b_advice = b.drop(CloseCode.SHUTDOWN)  # bob's node goes away too
    assert b_advice.reconnect
    ledger.gifts["gift-1"] = dataclasses.replace(ledger.gifts["gift-1"], state="expired")
    ledger.append("bob", "outcome", ledger.gifts["gift-1"])  # while bob is away

    a2 = Link(ledger, alice, "alice")
    events = a2.pump()
    (answered,) = of(events, Answered)
    assert answered.call is second and isinstance(answered.reply, GiftSent)
    sends = [m for m in ledger.requests if isinstance(m, SendGift)]
    assert [(m.rid, m.gift_id) for m in sends] == [(first.rid, "gift-1"), (second.rid, "gift-2"),
                                                   (second.rid, "gift-2")], "the resend changed ids"
    assert len([g for g in ledger.gifts if g == "gift-2"]) == 1

    b2 = Link(ledger, bob, "bob")
    events = b2.pump()
    (welcomed,) = of(events, Welcomed)
    assert welcomed.resumed and welcomed.welcome.recovered
    assert [e.gift.gift_id for e in of(events, OfferReceived)] == ["gift-2"]  # gift-1 seen already
    assert [(o.gift.gift_id, o.gift.state) for o in of(events, OutcomeReceived)] == [("gift-1", "expired")]
    assert (bob.epoch, bob.offset) == ("ep1", 3)


def test_a_replayed_event_and_a_repeated_offer_are_not_yielded_again(encoding: Encoding) -> None:
    ledger = Ledger()
    bob = ClientSession(encoding)
    link = Link(ledger, bob, "bob")
    link.pump()
    gift = ledger.gift("g1", "alice", "bob", 1)
    ledger.gifts["g1"] = gift
    ledger.append("bob", "offer", gift)
    events = link.pump()
    again = Event(epoch="ep1", offset=1, event="offer", gift=gift)
    bob.receive(link.server_encode(again))
    bob.receive(link.server_encode(dataclasses.replace(again, offset=2)))  # same gift, new offset
    assert len(of(events, OfferReceived)) == 1 and of(bob.events_received(), OfferReceived) == []
    assert bob.offset == 2


def test_a_new_epoch_is_not_recovered_and_the_position_starts_again(encoding: Encoding) -> None:
    ledger = Ledger()
    bob = ClientSession(encoding, epoch="old", offset=40)
    ledger.append("bob", "outcome", ledger.gift("g1", "bob", "alice", 1))
    events = Link(ledger, bob, "bob").pump()
    (welcomed,) = of(events, Welcomed)
    assert welcomed.resumed and not bob.recovered
    assert [o.gift.gift_id for o in of(events, OutcomeReceived)] == ["g1"]  # every retained event
    assert (bob.epoch, bob.offset) == ("ep1", 1)


def test_an_epoch_without_an_offset_is_no_position_to_resume_from() -> None:
    bob = ClientSession(Encoding.JSON, epoch="e", offset=None)
    bob.connect("t")
    assert bob.data_to_send() == ['{"t":"hello","v":1,"token":"t"}']


@pytest.mark.parametrize("code", [None, 1000, 1001, 1002, 1003, 1006, 1007, 1008, 1009, 1011, 3000, 3001, 3002,
                                  3003, 3004, 3499, 3500, 3501, 3505, 3510, 3511, 3999, 4000])
def test_what_a_close_code_means(code: int | None) -> None:
    session = ClientSession()
    session.connect("t")
    advice = session.disconnected(code)
    assert advice.new_token == needs_new_token(code) == (code == 3501)
    assert advice.reconnect == (should_reconnect(code) or code == 3501)
    assert session.state is (SessionState.IDLE if advice.reconnect else SessionState.CLOSED)


def test_a_retry_takes_a_new_rid_and_keeps_the_gift_id() -> None:
    ledger = Ledger()
    alice = ClientSession()
    link = Link(ledger, alice, "alice")
    link.pump()
    call = send(alice, "same")
    link.pump()
    first_rid = call.rid
    alice.retry(call)
    (answered,) = of(link.pump(), Answered)
    assert call.tries == 2 and call.rid != first_rid and answered.call is call
    assert [m.gift_id for m in ledger.requests if isinstance(m, SendGift)] == ["same", "same"]


def test_a_reply_of_the_wrong_type_is_flagged_and_a_forgotten_call_drops_its_late_reply() -> None:
    alice = ClientSession()
    link = Link(ledger := Ledger(), alice, "alice")
    link.pump()
    call = alice.request(lambda rid: GetBalance(rid=rid))
    alice.data_to_send()
    alice.receive(link.server_encode(Pong(rid=call.rid, server_time_ms=1)))
    (answered,) = of(alice.events_received(), Answered)
    assert answered.unexpected
    late = alice.request(lambda rid: Ping(rid=rid))
    alice.forget(late)
    alice.receive(link.server_encode(Pong(rid=late.rid, server_time_ms=1)))
    assert alice.events_received() == [] and ledger.requests == []


def test_rid_less_errors_and_unknown_frames_are_reported_not_fatal() -> None:
    alice = ClientSession(Encoding.JSON)
    alice.connect("t")
    alice.receive('{"t":"error","code":"INVALID_TOKEN","message":"invalid token"}')
    alice.receive('{"t":"confetti","rid":1}')  # a newer server's message
    first, second = alice.events_received()
    assert isinstance(first, ServerError) and first.error.code == "INVALID_TOKEN"
    assert isinstance(second, FrameIgnored) and second.problem.code is ErrorCode.UNKNOWN_TYPE


# ---------------------------------------------------------------- the server's frame rules


def test_the_first_frame_must_be_a_hello_of_version_one() -> None:
    for frame, close in (('{"t":"ping","rid":1}', CloseCode.NOT_AUTHENTICATED),
                         ('{"t":"hello","v":2,"token":"t"}', CloseCode.UNSUPPORTED_VERSION),
                         ("not json", CloseCode.NOT_AUTHENTICATED)):
        refused = ServerSession(Encoding.JSON).receive(frame)
        assert isinstance(refused, Refuse) and refused.close == close and refused.error.rid is None


def test_malformed_frames_are_answered_and_the_last_one_allowed_closes() -> None:
    server = ServerSession(Encoding.JSON, max_bad_frames=3)
    assert isinstance(server.receive('{"t":"hello","v":1,"token":"t"}'), Hello)
    server.welcome(Welcome(user="u", node="n", epoch="e", offset=0, recovered=True, pending=(), heartbeat_s=1), [])
    first = server.receive('{"t":"ping"}')
    assert isinstance(first, Refuse) and first.close is None and first.error.code == ErrorCode.BAD_FIELD
    assert isinstance(server.receive('{"t":"ping","rid":4}'), Ping)  # a good one between
    second = server.receive('{"t":"nope","rid":5}')
    assert isinstance(second, Refuse) and second.error.rid == 5 and second.close is None
    third = server.receive("[]")
    assert isinstance(third, Refuse) and third.close == CloseCode.PROTOCOL_VIOLATION


@pytest.mark.parametrize("request_type", [cls for cls in REPLIES if cls is not Hello], ids=lambda c: c.TYPE)
def test_a_reply_that_does_not_answer_its_request_becomes_internal(request_type: type[ClientMessage]) -> None:
    server = ServerSession(Encoding.MSGPACK)
    request: Any = dataclasses.replace(SAMPLES[request_type], rid=9)  # type: ignore[type-var]
    wrong: ServerMessage = Pong(rid=9, server_time_ms=1) if REPLIES[request_type] is not Pong else \
        Balance(rid=9, available={}, held={}, units_per_card=10)
    assert server.reply(request, wrong) == Error(rid=9, code=ErrorCode.INTERNAL, message="internal error")
    other_rid = Error(rid=8, code="X", message="x")
    assert server.reply(request, other_rid).code == ErrorCode.INTERNAL  # type: ignore[union-attr]
    refused = Error(rid=9, code="X", message="x")
    assert server.reply(request, refused) is refused


from tests.test_protocol_replies import SAMPLES  # noqa: E402  (one sample request per type)

# ---------------------------------------------------------------- any interleaving


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["gift", "answer", "drop", "lose", "pump"]), min_size=1, max_size=40))
def test_any_interleaving_of_gifts_and_drops_yields_each_offer_and_outcome_once(steps: list[str]) -> None:
    ledger = Ledger()
    alice, bob = ClientSession(), ClientSession()
    links = {"alice": Link(ledger, alice, "alice"), "bob": Link(ledger, bob, "bob")}
    seen: dict[str, list[SessionEvent]] = {"alice": [], "bob": []}
    n = 0

    def pump(user: str) -> None:
        seen[user] += links[user].pump()

    pump("alice"), pump("bob")
    for step in steps:
        if step == "gift":
            n += 1
            send(alice, f"g{n}")
        elif step == "answer":
            pending = ledger.pending_for("bob")
            if pending:
                bob.request(lambda rid, g=pending[0].gift_id: AcceptGift(rid=rid, gift_id=g))
        elif step in ("drop", "lose"):
            user = "bob" if step == "drop" else "alice"
            links[user].drop(None)
            links[user] = Link(ledger, alice if user == "alice" else bob, user)
        for user in ("alice", "bob"):
            pump(user)
    for user in ("alice", "bob", "alice"):  # what bob's last answers sent alice
        pump(user)
    for user, events in seen.items():
        offers = [e.gift.gift_id for e in events if isinstance(e, OfferReceived)]
        outcomes = [e.gift.gift_id for e in events if isinstance(e, OutcomeReceived)]
        assert len(offers) == len(set(offers)), f"{user} saw an offer twice: {offers}"
        assert len(outcomes) == len(set(outcomes)), f"{user} saw an outcome twice: {outcomes}"
    sent = {g for g in ledger.gifts}
    assert {e.gift.gift_id for e in seen["bob"] if isinstance(e, OfferReceived)} == sent
    assert alice.in_flight == [] and bob.in_flight == []
    accepted = {g.gift_id for g in ledger.gifts.values() if g.state == "accepted"}
    assert {e.gift.gift_id for e in seen["alice"] if isinstance(e, OutcomeReceived)} == accepted
