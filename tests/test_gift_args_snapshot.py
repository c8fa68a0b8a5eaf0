"""The settings' part of a gift's script arguments is built once per settings snapshot
(clearing/snapshot_args.py), as a node reads its settings: kept for ``max_age_s``, read again
at once after a write is announced. A rule stored after gifts were sent applies to the very
next send and answer, as when the arguments were built for every call. Real Redis (one and
a 3-shard cluster); the conservation invariant is checked after each test."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable

import pytest

from clearing import GiftRules, GiftState, Refusal, Refused
from clearing.consent import Consents
from clearing.rules import DAY_MS
from clearing.scene_config import SceneConfig
from clearing.scenes import Scenes
from clearing.settings import SettingsSnapshot
from clearing.snapshot_args import ART_KINDS_KEPT, SnapshotArgs
from clearing.testing import World
from clearing.topology import Topology

EU = {"name": "Europe", "consent_required": True, "consent_version": "privacy-v2"}
_ids = itertools.count(1)


@pytest.fixture
async def w(store: Topology) -> AsyncIterator[World]:
    world = await World.build(store, GiftRules(daily_send_limit=50, daily_receive_limit=50))
    # As on a node: a snapshot serves every gift until a write is announced.
    world.settings.max_age_s = 3600.0
    yield world
    report = await world.check()
    assert report.ok, report.violations


async def _friends_in_eu(w: World, *users: str) -> None:
    for user in users:
        await w.accounts.create_user(user, verified=True, created_at_ms=w.clock() - 30 * DAY_MS, region="eu")
        await w.accounts.mint(user, "note", 10)
        await w.presence.connect(user, w.node)
    await w.befriend(users[0], users[1])


async def _refusal(call: Awaitable[object]) -> Refusal:
    with pytest.raises(Refused) as info:
        await call
    return info.value.code


async def _give(w: World) -> str:
    gift_id = f"snap{next(_ids)}"
    await w.clearing.reserve(gift_id, "ann", "bob", "note", 1)
    return gift_id


async def test_a_consent_rule_stored_after_gifts_were_sent_applies_to_the_next_send_and_accept(w: World) -> None:
    await _friends_in_eu(w, "ann", "bob")
    scenes = Scenes(w.topology, w.rules, w.keys, w.clock, settings=w.settings)
    consents = Consents(w.topology, w.rules, w.keys, w.clock, settings=w.settings)
    pending = await _give(w)
    declined = await _give(w)  # the second gift of the same snapshot
    await scenes.put_region("eu", EU)
    assert await _refusal(_give(w)) is Refusal.CONSENT_REQUIRED
    assert await _refusal(w.clearing.accept(pending, "bob")) is Refusal.CONSENT_REQUIRED
    for user in ("ann", "bob"):
        await consents.give(user, "privacy-v2", "signup")
    assert (await w.clearing.accept(pending, "bob")).gift.state is GiftState.ACCEPTED
    await scenes.delete_region("eu")
    assert (await w.clearing.decline(declined, "bob")).gift.state is GiftState.DECLINED
    await _give(w)  # no rule any more


async def test_perks_changed_after_an_accept_apply_to_the_next_accept(w: World) -> None:
    await _friends_in_eu(w, "ann", "bob")
    scenes = Scenes(w.topology, w.rules, w.keys, w.clock, settings=w.settings)
    await w.clearing.accept(await _give(w), "bob")
    earned = (await scenes.points("bob")).points
    assert earned > 0
    await scenes.set_config({"points_per_card": 0})
    await w.clearing.accept(await _give(w), "bob")
    assert (await scenes.points("bob")).points == earned


async def test_the_arguments_are_built_once_per_snapshot_and_again_for_the_next(w: World) -> None:
    await _friends_in_eu(w, "ann", "bob")
    await _give(w)
    snapshot = await w.settings.get()
    held = w.clearing._args_of(snapshot)
    await _give(w)
    assert w.clearing._args_of(await w.settings.get()) is held
    w.settings.invalidate()  # what an announced write does
    fresh = await w.settings.get()
    assert fresh is not snapshot and w.clearing._args_of(fresh) is not held


def test_a_snapshot_without_regions_adds_nothing_to_the_rules_constants() -> None:
    built = SnapshotArgs(SettingsSnapshot(scenes=SceneConfig()), {"send_limit": 7}, {"saga_ms": 1})
    assert built.send == {"send_limit": 7}  # no consent, no guardian rule
    assert built.accept == built.answer == {"saga_ms": 1, "perks": built.answer["perks"]}
    assert built.answer["perks"]["per_card"] == SceneConfig().points_per_card
    assert built.art("note") is built.art("note")


def test_the_art_kept_per_snapshot_is_bounded_whatever_kinds_are_sent() -> None:
    built = SnapshotArgs(SettingsSnapshot(scenes=SceneConfig()), {}, {})
    for n in range(3 * ART_KINDS_KEPT):
        assert built.art(f"kind{n}") == {}
    assert len(built._art) == ART_KINDS_KEPT
