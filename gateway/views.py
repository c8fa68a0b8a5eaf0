"""Conversions from clearing's records to the wire protocol's messages."""

from __future__ import annotations

from clearing import GiftRecord, UserEvent
from clearing.model import GiftState
from clearing.rooms import RoomState
from protocol import Event, Gift, RankEntry, Room


def gift_view(record: GiftRecord) -> Gift:
    return Gift(
        gift_id=record.gift_id,
        sender=record.sender,
        recipient=record.recipient,
        kind=record.kind,
        qty=record.qty,
        cost=record.cost,
        # A gift waiting for the recipient's guardian is pending to everyone who sees it.
        state=GiftState.PENDING.value if record.state is GiftState.AWAITING_GUARDIAN else record.state.value,
        created_at_ms=record.created_at_ms,
        expires_at_ms=record.expires_at_ms,
        amount=record.amount,
        payer=record.payer,
        festival=record.festival,
        room=record.room,
        lucky_table=record.lucky_table,
        lucky_version=record.lucky_version,
        lucky_seed=record.lucky_seed,
        lucky_bonus=record.lucky_bonus,
        lucky_paid=record.lucky_paid,
        skin=record.skin,
    )


def event_view(event: UserEvent) -> Event:
    return Event(epoch=event.epoch, offset=event.offset, event=event.kind.value, gift=gift_view(event.gift))


def room_view(state: RoomState, rid: int | None = None) -> Room:
    return Room(
        room=state.room, viewers=state.viewers,
        top=tuple(RankEntry(user=e.user, points=e.points, rank=e.rank) for e in state.top),
        rid=rid, wish_kind=state.wish_kind, wish_target=state.wish_target, wish_progress=state.wish_progress,
        points=state.points, rank=state.rank,
    )
