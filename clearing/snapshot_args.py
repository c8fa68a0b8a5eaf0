"""The parts of a gift's script arguments that follow from the settings alone, built once
per settings snapshot.

Every send and every answer hands its script what the stored settings say (the regions'
consent versions and guardian rules, the apps' perks, the newcomer promotion, the card art,
the published odds). A node reads the settings at most once per ``max_age_s``
(clearing/settings.py) and each read is a new :class:`SettingsSnapshot`, so whatever is
derived from one snapshot is the same for every gift until the next read: it is derived
here once, and a new snapshot (a settings write announced, or the next periodic read) gets
a new :class:`SnapshotArgs`. Only what depends on the gift itself (the lucky draw, which
signs the recipient and the gift id) is computed per call.

The maps handed out are shared by every call of the snapshot: callers copy the top level
into their own argument map and never change what they are given.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from clearing.odds import Draw, OddsTable, draw
from clearing.regions import consent_versions, guardian_args
from clearing.settings import SettingsSnapshot
from clearing.skins import kind_art
from clearing.slots import tag_of

#: Card kinds whose art one snapshot remembers: a send names any kind (an unknown one is
#: refused by its script), so what is kept is bounded.
ART_KINDS_KEPT = 64


def perks_of(snapshot: SettingsSnapshot) -> dict[str, Any]:
    """The ``perks`` argument of an answer: points per card and each app's perks."""
    scenes = snapshot.scenes
    return {"per_card": scenes.points_per_card,
            "apps": {app: [p.sender_bonus_permille, p.recipient_multiplier_permille, int(p.joint_campaign)]
                     for app, p in scenes.apps.items()}}


def consent_of(snapshot: SettingsSnapshot) -> dict[str, Any]:
    """The ``consent`` argument of a send or an accept (gift.lua lacks_consent): region ->
    the consent version its users need; nothing when no region asks for consent."""
    versions = consent_versions(snapshot.regions)
    return {"consent": versions} if versions else {}


def lucky_of(snapshot: SettingsSnapshot, tables: list[tuple[str, OddsTable]], recipient: str, gift_id: str,
             units_per_card: int) -> dict[str, Any]:
    """The lucky card's draw for each region with published odds (``tables``: region code
    and its table, see :func:`lucky_tables`): the script picks the recipient's region's,
    records it with the decision and pays it. Empty when no region has the rule or no
    promotion account could pay."""
    promo = snapshot.scenes.promo_account
    if not tables or not promo or promo == recipient:
        return {}
    draws: dict[str, Draw] = {}  # regions sharing a table share its one draw
    lucky: dict[str, list[Any]] = {}
    for code, table in tables:
        drawn = draws.get(table.table_id)
        if drawn is None:
            drawn = draws[table.table_id] = draw(table, recipient, gift_id)
        lucky[code] = [drawn.table, drawn.version, drawn.seed, drawn.bonus * units_per_card]
    return {"lucky": lucky, "lpromo": promo, "lptag": tag_of(promo)}


def lucky_tables(snapshot: SettingsSnapshot) -> list[tuple[str, OddsTable]]:
    """Each region whose lucky-card rule names a published table, with that table, in the
    order of the regions."""
    found: list[tuple[str, OddsTable]] = []
    for code, rules in snapshot.regions.items():
        table = snapshot.odds.get(rules.lucky_odds) if rules.lucky_odds else None
        if table is not None:
            found.append((code, table))
    return found


class SnapshotArgs:
    """What one settings snapshot contributes to the arguments of sends and answers."""

    __slots__ = ("_art", "_lucky", "accept", "answer", "promo", "promo_account", "send", "snapshot")

    def __init__(self, snapshot: SettingsSnapshot, send_constant: Mapping[str, Any],
                 answer_constant: Mapping[str, Any]) -> None:
        self.snapshot = snapshot
        consent = consent_of(snapshot)
        guard = guardian_args(snapshot.regions)
        #: A send's arguments before the gift's own: the rules' constants, consent, guardians.
        self.send: dict[str, Any] = {**send_constant, **consent, **({"guard": guard} if guard else {})}
        #: An answer's (decline, expiry, a guardian's rejection) before the gift's own.
        self.answer: dict[str, Any] = {**answer_constant, "perks": perks_of(snapshot)}
        #: An accept's: an answer's and the consent versions.
        self.accept: dict[str, Any] = {**self.answer, **consent}
        scenes = snapshot.scenes
        self.promo_account = scenes.promo_account
        #: The newcomer promotion's arguments of a send (None: off), for a gift between
        #: two users neither of whom is the promotion account.
        self.promo: dict[str, Any] | None = (
            {"promo": scenes.promo_account, "ptag": tag_of(scenes.promo_account), "nc_age": scenes.newcomer_age_ms,
             "nc_free": scenes.newcomer_free_gifts}
            if scenes.newcomer_free_gifts > 0 else None)
        self._lucky = lucky_tables(snapshot)
        #: Card kind -> region -> skin id, filled as kinds are sent.
        self._art: dict[str, dict[str, str]] = {}

    def art(self, kind: str) -> dict[str, str]:
        """Region -> the skin id it shows for ``kind`` (empty: the default art everywhere)."""
        found = self._art.get(kind)
        if found is None:
            skins = self.snapshot.skins
            found = kind_art(skins, kind) if skins else {}
            if len(self._art) < ART_KINDS_KEPT:
                self._art[kind] = found
        return found

    def lucky(self, recipient: str, gift_id: str, units_per_card: int) -> dict[str, Any]:
        """The lucky draws of an accept (see :func:`lucky_of`)."""
        return lucky_of(self.snapshot, self._lucky, recipient, gift_id, units_per_card)


__all__ = ["ART_KINDS_KEPT", "SnapshotArgs", "consent_of", "lucky_of", "lucky_tables", "perks_of"]
