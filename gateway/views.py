"""Conversions from clearing's records to the wire protocol's messages."""

from __future__ import annotations

from clearing import GiftRecord, UserEvent
from protocol import Event, Gift


def gift_view(record: GiftRecord) -> Gift:
    return Gift(
        gift_id=record.gift_id,
        sender=record.sender,
        recipient=record.recipient,
        kind=record.kind,
        qty=record.qty,
        cost=record.cost,
        state=record.state.value,
        created_at_ms=record.created_at_ms,
        expires_at_ms=record.expires_at_ms,
    )


def event_view(event: UserEvent) -> Event:
    return Event(epoch=event.epoch, offset=event.offset, event=event.kind.value, gift=gift_view(event.gift))
