"""The README demo: two SDK clients, on two nodes where there are two, give and accept a card."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence

from gateway.auth import mint_token
from notecard.admin_client import AdminClient
from notecard.secrets import Secrets
from notecard_sdk import NotecardClient
from protocol import Balance

DAY_MS = 86_400_000
DEMO_CARDS = 10
#: Long enough to be clearly within the default confirmation window.
WAIT_S = 10.0


def _cards(balance: Balance, kind: str = "note") -> str:
    units = balance.units_per_card
    return f"{balance.available.get(kind, 0) / units:g} available, {balance.held.get(kind, 0) / units:g} held"


async def run_demo(ws_urls: Sequence[str], admin_url: str, keys: Secrets, say: Callable[[str], None] = print) -> None:
    tag = secrets.token_hex(2)
    alice, bob = f"alice-{tag}", f"bob-{tag}"
    now = int(time.time() * 1000)
    async with AdminClient(admin_url, keys.admin_token) as admin:
        for user in (alice, bob):
            await admin.create_user(user, verified=True)
        # The rules need a mutual follow at least 3 days old.
        await admin.befriend(alice, bob, since_ms=now - 4 * DAY_MS)
        await admin.mint(alice, DEMO_CARDS)
        say(f"created {alice} (verified, {DEMO_CARDS} cards) and {bob}, following each other for 4 days")

        sender = NotecardClient(ws_urls[0], mint_token(keys.token_secret, alice))
        recipient = NotecardClient(ws_urls[-1], mint_token(keys.token_secret, bob))
        async with sender, recipient:
            say(f"{alice} is connected to node {sender.node} ({ws_urls[0]})")
            say(f"{bob} is connected to node {recipient.node} ({ws_urls[-1]})")
            say(f"before:  {alice}: {_cards(await sender.balance())} | {bob}: {_cards(await recipient.balance())}")
            gift = await sender.send_gift(bob, qty=1)
            say(f"{alice} gives 1 card to {bob}: gift {gift.gift_id} is {gift.state}, the card is held")
            say(f"held:    {alice}: {_cards(await sender.balance())}")
            offer = await recipient.next_offer(WAIT_S)
            say(f"{bob} sees the offer live: {offer.qty} {offer.kind} card from {offer.sender}")
            accepted = await recipient.accept(offer.gift_id)
            say(f"{bob} accepts: gift is {accepted.state}")
            outcome = await sender.next_outcome(WAIT_S)
            say(f"{alice} is told the outcome: {outcome.state}")
            say(f"after:   {alice}: {_cards(await sender.balance())} | {bob}: {_cards(await recipient.balance())}")
        report = await admin.invariant()
        say(f"conservation check (minted = balances + holds + consumed): {'ok' if report['ok'] else report}")
