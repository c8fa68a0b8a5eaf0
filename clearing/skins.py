"""Regional card art (docs/regions.md "Regional card art"): a catalogue of skins, each the
artwork of one card kind for the regions that may see it (South-East Asia's animals instead
of notes, optional religious-theme skins for the Middle East).

The catalogue is an operators' setting like the others (``KeySchema.skins()``: skin id ->
JSON, in the ``{cfg}`` slot, read by every node's SettingsCache). For each region and card
kind at most one skin is the region's own (``optional`` false): the one a client shows for
that kind. A gift carries the skin of its recipient's region (written on the offer half when
the recipient's side admits it, so every later view of the gift agrees), a balance the skin
of its owner's region per kind; ``get_skins`` lists every skin the user's region may see,
optional ones included, for a client that lets its user choose.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from clearing.guard import guarded
from clearing.keys import KeySchema, is_valid_id
from clearing.regions import DEFAULT_REGION, is_valid_region
from clearing.scene_config import SceneConfigError

#: Skins at most (every node holds the catalogue).
MAX_SKINS = 200
#: Skins one region may see: a ``skins`` reply lists them all and must fit one frame
#: (protocol MAX_FRAME_BYTES, 64 KiB; a skin at its longest is about 1.3 KB of JSON).
MAX_REGION_SKINS = 40
#: Regions one skin may name.
MAX_SKIN_REGIONS = 64
_URL = re.compile(r"https?://[!-~]{1,500}")
_KIND = re.compile(r"[a-z0-9_]{1,32}")


@dataclasses.dataclass(frozen=True, slots=True)
class Skin:
    skin_id: str
    #: The card kind it draws.
    kind: str
    name: str
    #: Where a client loads the artwork (http or https, printable ASCII, at most 507 characters).
    image_url: str
    #: The regions whose users may see it.
    regions: tuple[str, ...]
    #: True: offered for a user to choose; false: the region's own art for the kind.
    optional: bool = False

    def __post_init__(self) -> None:
        if not is_valid_id(self.skin_id):
            raise SceneConfigError("a skin id is 1-64 characters of A-Z a-z 0-9 _ . : -")
        if not isinstance(self.kind, str) or not _KIND.fullmatch(self.kind):
            raise SceneConfigError("kind is a card kind ([a-z0-9_], 1-32 characters)")
        if not isinstance(self.name, str) or not 1 <= len(self.name) <= 100:
            raise SceneConfigError("a skin's name is text of 1 to 100 characters")
        if not isinstance(self.image_url, str) or not _URL.fullmatch(self.image_url):
            raise SceneConfigError("image_url is an http(s) URL of printable ASCII")
        if (not isinstance(self.regions, tuple) or not 1 <= len(self.regions) <= MAX_SKIN_REGIONS
                or not all(is_valid_region(r) for r in self.regions) or len(set(self.regions)) != len(self.regions)):
            raise SceneConfigError(f"regions is a list of 1 to {MAX_SKIN_REGIONS} distinct region codes")
        if type(self.optional) is not bool:
            raise SceneConfigError("optional is a boolean")

    def plain(self) -> dict[str, Any]:
        return {"skin_id": self.skin_id, "kind": self.kind, "name": self.name, "image_url": self.image_url,
                "regions": list(self.regions), "optional": self.optional}

    def stored(self) -> bytes:
        return orjson.dumps({k: v for k, v in self.plain().items() if k != "skin_id"})

    @classmethod
    def from_plain(cls, skin_id: str, body: Mapping[str, Any]) -> Skin:
        known = {"kind", "name", "image_url", "regions", "optional"}
        unknown = sorted(set(body) - known)
        if unknown:
            raise SceneConfigError(f"unknown skin field(s): {', '.join(unknown)}")
        missing = sorted({"kind", "name", "image_url", "regions"} - set(body))
        if missing:
            raise SceneConfigError(f"a skin needs {', '.join(missing)}")
        regions = body["regions"]
        if not isinstance(regions, list):
            raise SceneConfigError("regions is a list of region codes")
        return cls(skin_id, body["kind"], body["name"], body["image_url"], tuple(regions),
                   body.get("optional", False))


def clash(skins: Iterable[Skin], new: Skin) -> str | None:
    """Why ``new`` cannot join the others: a region would have two skins of its own for one
    kind (then no client could tell which to show). None when it can."""
    if new.optional:
        return None
    for other in skins:
        if other.skin_id != new.skin_id and not other.optional and other.kind == new.kind:
            shared = sorted(set(other.regions) & set(new.regions))
            if shared:
                return f"skin {other.skin_id!r} is already the {new.kind} art of {', '.join(shared)}"
    return None


def decode_skins(raw: Mapping[str, str]) -> tuple[dict[str, Skin], list[str]]:
    """The stored skins that decode, validate and do not clash, and a problem for each other."""
    skins: dict[str, Skin] = {}
    problems: list[str] = []
    for skin_id, text in sorted(raw.items()):
        try:
            body = orjson.loads(text)
            if not isinstance(body, dict):
                raise SceneConfigError("not an object")
            skin = Skin.from_plain(skin_id, body)
            why = clash(skins.values(), skin)
            if why:
                raise SceneConfigError(why)
            skins[skin_id] = skin
        except orjson.JSONDecodeError:
            problems.append(f"skin {skin_id!r}: not JSON; not shown")
        except SceneConfigError as exc:
            problems.append(f"skin {skin_id!r}: {exc}; not shown")
    return skins, problems


def region_art(skins: Mapping[str, Skin], region: str) -> dict[str, str]:
    """Card kind -> the skin id the region shows for it (kinds without one: the default art)."""
    return {s.kind: s.skin_id for s in skins.values() if not s.optional and region in s.regions}


def kind_art(skins: Mapping[str, Skin], kind: str) -> dict[str, str]:
    """Region -> the skin id it shows for ``kind``: what a send hands its script, which picks
    the recipient's region's."""
    return {region: s.skin_id for s in skins.values() if s.kind == kind and not s.optional for region in s.regions}


def visible(skins: Mapping[str, Skin], region: str) -> list[Skin]:
    """Every skin a user of ``region`` may see, by kind then id (the first
    :data:`MAX_REGION_SKINS`: more is refused when stored, but a hand edit could add them)."""
    shown = sorted((s for s in skins.values() if region in s.regions), key=lambda s: (s.kind, s.skin_id))
    return shown[:MAX_REGION_SKINS]


def crowded(skins: Iterable[Skin], new: Skin) -> str:
    """Why storing ``new`` would give a region more skins than one reply can carry, or ""."""
    for region in new.regions:
        count = sum(1 for s in skins if s.skin_id != new.skin_id and region in s.regions)
        if count >= MAX_REGION_SKINS:
            return f"region {region!r} already sees {MAX_REGION_SKINS} skins, the most one reply carries"
    return ""


async def region_of(redis: Any, keys: KeySchema, user_id: str) -> str:
    """The user's region (an account without one, or with a code that does not read: the
    default region, as everywhere else)."""
    raw = await guarded(redis.hget(keys.user(user_id), "region"))
    code = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
    return code if is_valid_region(code) else DEFAULT_REGION


__all__ = ["MAX_REGION_SKINS", "MAX_SKINS", "Skin", "clash", "crowded", "decode_skins", "kind_art", "region_art",
           "region_of", "visible"]
