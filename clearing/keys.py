"""The Redis key schema, in one place.

Every key starts with the prefix, ``{nc}`` by default. The braces are a Redis Cluster hash
tag: all clearing keys live in one hash slot, so every Lua script may touch any of them in
Cluster mode too (a gift between two users needs both balances in one atomic script).
Channels (pub/sub) are not keys and carry the same prefix only for readability.
"""

from __future__ import annotations

import dataclasses
import re

DEFAULT_PREFIX = "{nc}"

#: User, gift, node and app ids become parts of key names: short, printable, no spaces and
#: no glob characters (the invariant check SCANs with patterns). The wire protocol's
#: ``Ident`` is the same set.
_ID = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")


#: A linked app's name, as client tokens carry it (gateway/auth.py): the scene rules match
#: it against lower-case names, so an account's home app takes the same form.
APP_PATTERN = r"[a-z0-9_]{1,32}"
_APP = re.compile(APP_PATTERN)


def is_valid_id(value: str) -> bool:
    return _ID.fullmatch(value) is not None


def is_valid_app(value: str) -> bool:
    return _APP.fullmatch(value) is not None


@dataclasses.dataclass(frozen=True, slots=True)
class KeySchema:
    prefix: str = DEFAULT_PREFIX

    # ----------------------------------------------------------- accounts
    def user(self, user_id: str) -> str:
        """Hash: verified, vip, banned (0/1), created_ms, app."""
        return f"{self.prefix}:user:{user_id}"

    def users(self) -> str:
        """Set of every user id (the invariant walks it)."""
        return f"{self.prefix}:users"

    def balance(self, user_id: str) -> str:
        """Hash: card kind -> available minor units."""
        return f"{self.prefix}:bal:{user_id}"

    def held(self, user_id: str) -> str:
        """Hash: card kind -> minor units held by the user's pending outgoing gifts."""
        return f"{self.prefix}:held:{user_id}"

    def follows(self, user_id: str) -> str:
        """Hash: followee -> follow start in ms (``user_id`` follows ``followee``)."""
        return f"{self.prefix}:follows:{user_id}"

    def blocks(self, user_id: str) -> str:
        """Set of users ``user_id`` has blocked."""
        return f"{self.prefix}:blocks:{user_id}"

    # ----------------------------------------------------------- totals per kind
    def minted(self) -> str:
        return f"{self.prefix}:minted"

    def holds_total(self) -> str:
        return f"{self.prefix}:holds"

    def consumed(self) -> str:
        return f"{self.prefix}:consumed"

    # ----------------------------------------------------------- gifts
    def gift(self, gift_id: str) -> str:
        """Hash: the gift record (see clearing/scripts/reserve.lua)."""
        return f"{self.prefix}:gift:{gift_id}"

    def gift_pattern(self) -> str:
        return f"{self.prefix}:gift:*"

    def refused(self, gift_id: str) -> str:
        """Hash {code, fp = "sender|recipient|kind|qty"}: a refused send, for
        ``refusal_memory_ms`` (clearing/scripts/reserve.lua)."""
        return f"{self.prefix}:refused:{gift_id}"

    def pending(self) -> str:
        """Sorted set: pending gift id -> expiry ms (the sweeper's queue)."""
        return f"{self.prefix}:pending"

    def inbox(self, user_id: str) -> str:
        """Sorted set: pending gift id addressed to the user -> expiry ms."""
        return f"{self.prefix}:inbox:{user_id}"

    def send_quota(self, day: str, user_id: str) -> str:
        return f"{self.prefix}:q:send:{day}:{user_id}"

    def receive_quota(self, day: str, user_id: str) -> str:
        return f"{self.prefix}:q:recv:{day}:{user_id}"

    def pair_receive_quota(self, day: str, recipient: str, sender: str) -> str:
        # "|" cannot occur in an id, so (a:b, c) and (a, b:c) never share a counter.
        return f"{self.prefix}:q:recvp:{day}:{recipient}|{sender}"

    # ----------------------------------------------------------- events and presence
    def events(self, user_id: str) -> str:
        """Stream: the user's offers and outcomes; entry id ``<offset>-0``."""
        return f"{self.prefix}:ev:{user_id}"

    def event_meta(self, user_id: str) -> str:
        """Hash: epoch (changes when the stream was lost), seq (newest offset)."""
        return f"{self.prefix}:evmeta:{user_id}"

    def presence(self, user_id: str) -> str:
        """Hash: node id -> number of the user's connections on that node."""
        return f"{self.prefix}:presence:{user_id}"

    def rate(self, user_id: str) -> str:
        """String: the user's request-rate state, us (clearing/rates.py); absent when idle."""
        return f"{self.prefix}:rate:{user_id}"

    def nodes(self) -> str:
        """Sorted set: node id -> last heartbeat ms."""
        return f"{self.prefix}:nodes"

    def node_users(self, node_id: str) -> str:
        """Set of users with at least one connection on the node (to clean up after it dies)."""
        return f"{self.prefix}:nodeusers:{node_id}"

    def node_channel(self, node_id: str) -> str:
        """Pub/sub channel every event for a user on that node is published to."""
        return f"{self.prefix}:node:{node_id}"

    # ----------------------------------------------------------- scenes (clearing/scenes.py)
    def scene_config(self) -> str:
        """String: the scene settings as validated JSON (absent: the defaults)."""
        return f"{self.prefix}:scene:config"

    def scene_config_digest(self) -> str:
        """String: the SHA-1 (hex) of the document ``scene_config()`` held when
        ``Scenes.set_config`` wrote both. The scripts read a document off its text only when
        the digest matches (one this code validated and laid out); any other is decoded and
        checked field by field."""
        return f"{self.prefix}:scene:config:sha1"

    def festivals(self) -> str:
        """Hash: festival id -> JSON {name, start_ms, end_ms, permille, frame}."""
        return f"{self.prefix}:festivals"

    def festival_schedule(self) -> str:
        """Sorted set, derived from ``festivals()`` on every write: ``<end_ms>:<permille>:<id>``
        scored by start_ms, plus the empty member at -inf, so that reserve reads the one
        window that can hold now instead of decoding every festival."""
        return f"{self.prefix}:festivals:schedule"

    def free_gifts(self, user_id: str) -> str:
        """Counter: the user's pending and accepted gifts paid by the promotion account."""
        return f"{self.prefix}:free:{user_id}"

    def mentors(self) -> str:
        """Hash: apprentice -> mentor (a binding is made once and never changes)."""
        return f"{self.prefix}:mentors"

    def inventory(self, user_id: str) -> str:
        """Hash: item (``frame:<festival>``) -> expiry ms."""
        return f"{self.prefix}:inv:{user_id}"

    def points(self) -> str:
        """Hash: user -> points total (the ledger's balances)."""
        return f"{self.prefix}:points"

    def point_log(self) -> str:
        """Stream: one entry per award {u, p, g, why, app}, the newest ``points_log_maxlen``
        or fewer; each total is ``point_log_folded()`` plus the sum of its entries here."""
        return f"{self.prefix}:pointlog"

    def point_log_folded(self) -> str:
        """Hash: user -> the points of the user's entries trimmed from ``point_log()`` (the
        script that trims them adds them here in the same run)."""
        return f"{self.prefix}:pointlog:folded"

    def joint_campaign(self) -> str:
        """Set: users eligible for the joint campaign (chat-app perk)."""
        return f"{self.prefix}:campaign:joint"

    # ----------------------------------------------------------- live rooms (clearing/rooms.py)
    def room(self, room: str) -> str:
        """Hash: streamer, wish_kind, wish_target, wish_progress, version."""
        return f"{self.prefix}:room:{room}"

    def room_conns(self, room: str) -> str:
        """Hash: ``node|user`` -> that user's connections in the room on that node."""
        return f"{self.prefix}:roomconn:{room}"

    def room_viewers(self, room: str) -> str:
        """Hash: user -> number of nodes where the user watches (HLEN = viewer count)."""
        return f"{self.prefix}:roomviewers:{room}"

    def node_rooms(self, node_id: str) -> str:
        """Set of ``room|user`` the node holds (to clean up after it dies)."""
        return f"{self.prefix}:noderooms:{node_id}"

    def board(self, room: str) -> str:
        """Sorted set: user -> contribution points in the room."""
        return f"{self.prefix}:board:{room}"

    def quote(self, quote_id: str) -> str:
        """Hash: a live-room price quote {sender, recipient, room, kind, qty, cost, amount, expires_at_ms}."""
        return f"{self.prefix}:quote:{quote_id}"


#: The schema every clearing class uses unless given another prefix.
DEFAULT_KEYS = KeySchema()
