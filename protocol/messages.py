"""Every message of the notecard protocol, as frozen dataclasses.

A message travels as a map whose ``t`` key names its type (``TYPE`` below) and whose
other keys are the fields. Optional fields that are ``None`` are left out on the wire.
Unknown keys are ignored so that a newer peer can add fields without breaking an older one.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from typing import Annotated, ClassVar, TypeVar, dataclass_transform

from .schema import MAX_SAFE_INT, FieldSpec, Pattern, Range, compile_fields

PROTOCOL_VERSION = 1

#: User ids and gift ids: short opaque strings, safe in Redis keys and log lines.
Ident = Annotated[str, Pattern(r"[A-Za-z0-9_.:\-]+", 64)]
#: Card kinds are lower-case names configured by the operator ("note", "gold_note").
CardKind = Annotated[str, Pattern(r"[a-z0-9_]+", 32)]
#: Request ids correlate replies with requests; any JSON-safe non-negative integer.
RequestId = Annotated[int, Range(0, MAX_SAFE_INT)]
#: Whole cards per gift; the operator's per-gift cap is enforced by clearing.
Quantity = Annotated[int, Range(1, 1_000_000)]
Offset = Annotated[int, Range(0, MAX_SAFE_INT)]
Millis = Annotated[int, Range(0, MAX_SAFE_INT)]
Token = Annotated[str, Pattern(r"[A-Za-z0-9_\-.]+", 2048)]
Epoch = Annotated[str, Pattern(r"[A-Za-z0-9_\-]+", 64)]
#: A device fingerprint: an opaque hash the SDK derives from the device (docs/risk.md).
Device = Annotated[str, Pattern(r"[A-Za-z0-9_\-]+", 128)]
#: The id of a data-processing consent text (docs/regions.md): what the user was shown.
ConsentVersion = Annotated[str, Pattern(r"[A-Za-z0-9_.:\-]+", 64)]
#: An eco badge's id, as the user's region defines it (docs/regions.md).
BadgeId = Annotated[str, Pattern(r"[a-z][a-z0-9_]*", 32)]
#: Where in the app a consent was given or withdrawn (``signup``, ``settings``).
ConsentChannel = Annotated[str, Pattern(r"[a-z0-9_.\-]+", 32)]
#: Where a page of a guardian's open requests resumes (``guardian_requests.next``): opaque to
#: clients, who send back what they were given.
GuardianCursor = Annotated[str, Pattern(r"[0-9]{1,16}/[A-Za-z0-9_.:\-]{1,64}/[A-Za-z0-9_.:\-]{1,64}", 160)]


class GiftState(enum.StrEnum):
    """The life of a gift: pending, then exactly one final state."""

    PENDING = "pending"
    ACCEPTED = "accepted"
    DECLINED = "declined"
    EXPIRED = "expired"


class EventKind(enum.StrEnum):
    OFFER = "offer"
    OUTCOME = "outcome"
    #: To a guardian: a gift to their ward (``gift.recipient``) waits for their answer
    #: (``guardian_answer``) until ``gift.expires_at_ms`` (docs/regions.md).
    GUARDIAN = "guardian"
    #: To a guardian: a request they were sent (a ``guardian`` event) is answered, from one of
    #: their devices; ``gift`` as it now stands. Every device drops the request.
    GUARDIAN_DONE = "guardian_done"


class WireObject:
    """Base of every message: its wire type name and its compiled validation table."""

    __slots__ = ()
    TYPE: ClassVar[str]
    FIELDS: ClassVar[tuple[FieldSpec, ...]]


W = TypeVar("W", bound=WireObject)


@dataclass_transform(frozen_default=True)
def message(type_name: str) -> Callable[[type[W]], type[W]]:
    """Make a frozen, slotted message dataclass and compile its validation table."""

    def wrap(cls: type[W]) -> type[W]:
        made = dataclasses.dataclass(frozen=True, slots=True)(cls)
        made.TYPE = type_name
        made.FIELDS = compile_fields(made)
        return made

    return wrap


@message("gift")
class Gift(WireObject):
    """A gift as both users see it. Amounts are integers in minor units."""

    gift_id: Ident
    sender: Ident
    recipient: Ident
    kind: CardKind
    qty: Quantity
    #: What the sender's balance was charged, in minor units (1 card = units_per_card).
    cost: Millis
    state: Annotated[str, Pattern(r"pending|accepted|declined|expired", 16)]
    created_at_ms: Millis
    expires_at_ms: Millis
    #: What the recipient is credited on accept (cost - amount is consumed); absent from
    #: older servers, where it equals cost.
    amount: Millis | None = None
    #: The account charged when it is not the sender (a newcomer's free gift: the promotion).
    payer: Ident | None = None
    #: The festival whose window priced the gift.
    festival: Ident | None = None
    #: The live room (its streamer's id) whose quote priced the gift.
    room: Ident | None = None
    #: The lucky card of an accepted gift in a region with published odds (``GET /odds``):
    #: the table and version drawn from, the draw's seed (HMAC-SHA256, hex), the bonus
    #: drawn and the bonus paid (0 when the promotion account could not), in minor units.
    lucky_table: Ident | None = None
    lucky_version: Annotated[int, Range(1, MAX_SAFE_INT)] | None = None
    lucky_seed: Annotated[str, Pattern(r"[0-9a-f]{64}", 64)] | None = None
    lucky_bonus: Millis | None = None
    lucky_paid: Millis | None = None
    #: The card art (a skin of ``get_skins``) of the recipient's region for this kind;
    #: absent: the default art.
    skin: Ident | None = None
    #: The brand campaign (or ``shop.<shop>``, a purchase) that issued the gift; its sender
    #: is the business, its kind the business's custom kind.
    campaign: Ident | None = None


@message("skin")
class Skin(WireObject):
    """One card art of the catalogue (docs/regions.md "Regional card art")."""

    skin_id: Ident
    kind: CardKind
    name: Annotated[str, Pattern(r"[^\x00]*", 100)]
    image_url: Annotated[str, Pattern(r"https?://[!-~]+", 507)]
    #: False: the user's region shows it for its kind; true: offered for the user to choose.
    optional: bool


@message("rank_entry")
class RankEntry(WireObject):
    """One line of a live room's leaderboard; tied users share a rank."""

    user: Ident
    points: Millis
    rank: Annotated[int, Range(1, MAX_SAFE_INT)]


# ---------------------------------------------------------------- client to server


@message("hello")
class Hello(WireObject):
    """First frame of a connection: authenticate and, optionally, resume the event stream."""

    v: Annotated[int, Range(0, 1000)]
    token: Token
    #: The stream epoch and last offset the client processed, to receive what it missed.
    epoch: Epoch | None = None
    offset: Offset | None = None
    #: The device's fingerprint (docs/risk.md); a connection without one counts as one
    #: unknown device.
    device: Device | None = None


@message("send_gift")
class SendGift(WireObject):
    rid: RequestId
    #: Chosen by the client before the first try; a retry with the same id is idempotent.
    gift_id: Ident
    to: Ident
    kind: CardKind
    qty: Quantity
    #: A live-room quote (from ``get_quote``) that prices this gift; used up by it.
    quote: Ident | None = None


@message("accept")
class AcceptGift(WireObject):
    rid: RequestId
    gift_id: Ident


@message("decline")
class DeclineGift(WireObject):
    rid: RequestId
    gift_id: Ident


@message("guardian_answer")
class GuardianAnswer(WireObject):
    """The recipient's guardian approves or rejects a gift awaiting them (a ``guardian``
    event): approved, it becomes an offer to the ward; rejected, the sender is refunded.
    Idempotent: the same answer again replies with the gift, another is ALREADY_RESOLVED."""

    rid: RequestId
    gift_id: Ident
    #: The gift's recipient, as the ``guardian`` event names it (``gift.recipient``).
    ward: Ident
    approve: bool


@message("get_balance")
class GetBalance(WireObject):
    rid: RequestId


@message("ping")
class Ping(WireObject):
    rid: RequestId


@message("join_room")
class JoinRoom(WireObject):
    """Watch a live room (named by its streamer's user id); room updates follow."""

    rid: RequestId
    room: Ident


@message("leave_room")
class LeaveRoom(WireObject):
    rid: RequestId
    room: Ident


@message("open_wish")
class OpenWish(WireObject):
    """The streamer opens a gift wish in their own room (replacing an earlier one)."""

    rid: RequestId
    kind: CardKind
    target: Quantity


@message("get_quote")
class GetQuote(WireObject):
    """Price a gift to the room's streamer; the quote is honoured for a short time."""

    rid: RequestId
    room: Ident
    kind: CardKind
    qty: Quantity


@message("get_room")
class GetRoom(WireObject):
    """The room's viewers, wish, top ``top`` contributors and the asker's own rank."""

    rid: RequestId
    room: Ident
    top: Annotated[int, Range(1, 100)]


@message("redeem_frame")
class RedeemFrame(WireObject):
    """Redeem the running festival's limited-time avatar frame."""

    rid: RequestId
    festival: Ident


@message("bind_mentor")
class BindMentor(WireObject):
    """A newcomer binds to a mentor, once; both are rewarded."""

    rid: RequestId
    mentor: Ident


@message("get_guardian_requests")
class GetGuardianRequests(WireObject):
    """The requests still waiting for this user's answer as a guardian (docs/regions.md), a
    page at a time. Answered by ``guardian_requests``."""

    rid: RequestId
    #: The ``next`` of the page before; absent for the first page.
    after: GuardianCursor | None = None


@message("get_skins")
class GetSkins(WireObject):
    """The card art the user's region may see. Answered by ``skins``."""

    rid: RequestId


@message("appeal")
class Appeal(WireObject):
    """Appeal the risk engine's action on the user's account (docs/risk.md): the kind of
    evidence the action's tier asks for, and a reference to it."""

    rid: RequestId
    #: face_verification, carrier_bill or notarised_document (another: APPEAL_KIND).
    kind: Annotated[str, Pattern(r"[a-z_]+", 32)]
    #: Where the operator finds the evidence (an upload id of the app); no file travels here.
    evidence: Annotated[str, Pattern(r"[^\x00]*", 256)]


@message("give_consent")
class GiveConsent(WireObject):
    """Give data-processing consent to the text ``version`` the user was shown (its id, as
    the welcome's ``consent_needed`` names it), from ``channel`` (default ``sdk``)."""

    rid: RequestId
    version: ConsentVersion
    channel: ConsentChannel | None = None


@message("withdraw_consent")
class WithdrawConsent(WireObject):
    """Withdraw the data-processing consent on record (gifts stop where the region asks for it)."""

    rid: RequestId
    channel: ConsentChannel | None = None


# ---------------------------------------------------------------- server to client


@message("welcome")
class Welcome(WireObject):
    """Reply to ``hello``. Missed events follow as ``event`` frames, then live ones."""

    user: Ident
    node: Annotated[str, Pattern(r"[A-Za-z0-9_.:\-]+", 128)]
    epoch: Epoch
    #: The offset of the newest event in the user's stream when the connection started.
    offset: Offset
    #: False when the client asked to resume but events it had not seen were trimmed or lost.
    recovered: bool
    #: Offers still waiting for this user's answer, newest state from clearing (the first
    #: of them when ``pending_more``).
    pending: tuple[Gift, ...]
    heartbeat_s: Annotated[int, Range(1, 3600)]
    #: True when the list did not fit one frame: the rest follows in ``pending`` frames.
    pending_more: bool | None = None
    #: The consent text version the user's region asks for, when the user has no consent
    #: to it on record: no gift moves until ``give_consent`` names it (docs/regions.md).
    consent_needed: ConsentVersion | None = None
    #: The eco badges the user holds, when the user's region has any (docs/regions.md).
    badges: tuple[BadgeId, ...] | None = None


@message("pending")
class Pending(WireObject):
    """More offers of the welcome's ``pending`` list, sent right after it when the whole
    list would not fit one frame."""

    gifts: tuple[Gift, ...]
    #: True when another ``pending`` frame follows.
    more: bool | None = None


@message("gift_sent")
class GiftSent(WireObject):
    """The card left the sender and is held; the offer is on its way."""

    rid: RequestId
    gift: Gift


@message("gift_resolved")
class GiftResolved(WireObject):
    """Reply to ``accept`` or ``decline`` (the gift's final state) and to ``guardian_answer``
    (approved: the gift, pending as offered to the ward; rejected: declined)."""

    rid: RequestId
    gift: Gift


@message("balance")
class Balance(WireObject):
    rid: RequestId
    #: Spendable amount per card kind, in minor units.
    available: dict[CardKind, Millis]
    #: Amount per card kind held by the user's pending outgoing gifts.
    held: dict[CardKind, Millis]
    units_per_card: Annotated[int, Range(1, 1_000_000)]
    #: The user's total in the points ledger (linked-app perks).
    points: Millis | None = None
    #: The card art of the user's region per card kind (skin ids of ``get_skins``); a kind not
    #: here shows the default art; absent when the region has none.
    skins: dict[CardKind, Ident] | None = None


@message("skins")
class Skins(WireObject):
    """Every skin the user's region may see, its own and the optional ones, by kind."""

    rid: RequestId
    skins: tuple[Skin, ...]


@message("guardian_requests")
class GuardianRequests(WireObject):
    """A page of the requests waiting for this user's ``guardian_answer``, soonest end of the
    guardian's window first, each gift as its ``guardian`` event shows it."""

    rid: RequestId
    gifts: tuple[Gift, ...]
    #: Present when more requests follow: send it as ``after`` for the next page.
    next: GuardianCursor | None = None


@message("pong")
class Pong(WireObject):
    rid: RequestId
    server_time_ms: Millis


@message("error")
class Error(WireObject):
    """A refused request (``rid`` set) or a refused frame (``rid`` absent)."""

    code: Annotated[str, Pattern(r"[A-Z0-9_]+", 64)]
    message: Annotated[str, Pattern(r"[^\x00]*", 512)]
    rid: RequestId | None = None
    #: For ALREADY_RESOLVED and GIFT_EXPIRED: the gift as it now stands.
    gift: Gift | None = None
    #: For ACCOUNT_FROZEN and RECIPIENT_FROZEN: when the freeze ends.
    until_ms: Millis | None = None


@message("event")
class Event(WireObject):
    """A push from the user's event stream: an offer to answer, a gift's outcome, or (to a
    guardian) a gift to their ward awaiting their answer."""

    epoch: Epoch
    offset: Offset
    event: Annotated[str, Pattern(r"offer|outcome|guardian|guardian_done", 16)]
    gift: Gift


@message("room")
class Room(WireObject):
    """A live room: the reply to the room requests, and pushed (no ``rid``) to its viewers
    when it changes, at most once per push interval."""

    room: Ident
    viewers: Offset
    top: tuple[RankEntry, ...]
    rid: RequestId | None = None
    wish_kind: CardKind | None = None
    wish_target: Quantity | None = None
    wish_progress: Offset | None = None
    #: The asker's own points and rank (replies only, once they contributed).
    points: Millis | None = None
    rank: Annotated[int, Range(1, MAX_SAFE_INT)] | None = None


@message("quote")
class QuoteReply(WireObject):
    """A price for a live-room gift; send it as ``send_gift.quote`` before it expires."""

    rid: RequestId
    quote_id: Ident
    room: Ident
    cost: Millis
    amount: Millis
    viewers: Offset
    expires_at_ms: Millis


@message("done")
class Done(WireObject):
    """Reply to ``redeem_frame`` (``item``, ``expires_at_ms``) and ``bind_mentor``
    (``item`` = the mentor, ``reward`` = the apprentice's reward)."""

    rid: RequestId
    item: Ident
    expires_at_ms: Millis | None = None
    reward: Millis | None = None


@message("consent")
class ConsentReply(WireObject):
    """Reply to ``give_consent`` and ``withdraw_consent``: the consent on record now (no
    ``version`` after a withdrawal), and ``changed`` false when it was already so."""

    rid: RequestId
    changed: bool
    version: ConsentVersion | None = None
    at_ms: Millis | None = None
    channel: ConsentChannel | None = None


ClientMessage = (Hello | SendGift | AcceptGift | DeclineGift | GetBalance | Ping | JoinRoom | LeaveRoom | OpenWish
                 | GetQuote | GetRoom | RedeemFrame | BindMentor | Appeal | GiveConsent | WithdrawConsent
                 | GuardianAnswer | GetSkins | GetGuardianRequests)
ServerMessage = (Welcome | GiftSent | GiftResolved | Balance | Pong | Error | Event | Room | QuoteReply | Done
                 | Pending | ConsentReply | Skins | GuardianRequests)
Message = ClientMessage | ServerMessage

CLIENT_MESSAGES: dict[str, type[ClientMessage]] = {
    cls.TYPE: cls
    for cls in (Hello, SendGift, AcceptGift, DeclineGift, GetBalance, Ping, JoinRoom, LeaveRoom, OpenWish,
                GetQuote, GetRoom, RedeemFrame, BindMentor, Appeal, GiveConsent, WithdrawConsent,
                GuardianAnswer, GetSkins, GetGuardianRequests)
}
SERVER_MESSAGES: dict[str, type[ServerMessage]] = {
    cls.TYPE: cls
    for cls in (Welcome, GiftSent, GiftResolved, Balance, Pong, Error, Event, Room, QuoteReply, Done, Pending,
                ConsentReply, Skins, GuardianRequests)
}
