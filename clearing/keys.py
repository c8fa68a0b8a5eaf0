"""The Redis key schema, in one place (clearing/scripts/lib.lua spells the same names).

Every key is ``<prefix>:{<tag>}:<name>``. The braces are a Redis Cluster hash tag, and the
tag is one of three things:

- a **user id**: everything about one user (account, balances, holds, follows, blocks,
  daily counters, the gifts the user sent and the offers made to the user, inbox, event
  stream, presence, the user's live room) shares the user's slot, so one script can check
  and change it atomically, and users spread over every shard;
- a **slot tag** (``#`` + base 62, see clearing/slots.py): what the users of one slot share,
  per slot: totals per card kind, the expiry and recovery queues, which users and room
  viewers a gateway node holds there; and in the lowest slot of each Redis server, each
  gateway node's pub/sub channel on that server;
- ``nodes`` and ``cfg``: the gateway node registry and the operators' settings, one slot each.

A gift therefore has two halves: the **send half** with its sender (``gift``: idempotency by
the client's gift id, the hold, the sender's counter) and the **offer half** with its
recipient (``offer``: the decision, the window, the recipient's counters, the credit).
docs/architecture.md draws how a gift moves between them.
"""

from __future__ import annotations

import dataclasses
import re

DEFAULT_PREFIX = "nc"

#: User, gift, node and app ids become parts of key names: short, printable, no spaces, no
#: braces (they would change the hash tag) and no glob characters (the invariant check
#: SCANs with patterns). The wire protocol's ``Ident`` is the same set.
_ID = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")
_PREFIX = re.compile(r"[A-Za-z0-9_.:\-]{1,32}")


#: A linked app's name, as client tokens carry it (gateway/auth.py): the scene rules match
#: it against lower-case names, so an account's home app takes the same form.
APP_PATTERN = r"[a-z0-9_]{1,32}"
_APP = re.compile(APP_PATTERN)


def is_valid_id(value: str) -> bool:
    return _ID.fullmatch(value) is not None


#: A device fingerprint (the wire's ``hello.device``).
_DEVICE = re.compile(r"[A-Za-z0-9_\-]{1,128}")


def is_valid_device(value: str) -> bool:
    return _DEVICE.fullmatch(value) is not None


def is_valid_app(value: str) -> bool:
    return _APP.fullmatch(value) is not None


@dataclasses.dataclass(frozen=True, slots=True)
class KeySchema:
    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not _PREFIX.fullmatch(self.prefix):
            raise ValueError("a key prefix is 1-32 characters of A-Z a-z 0-9 _ . : - (no braces)")

    def _of(self, tag: str, name: str) -> str:
        return f"{self.prefix}:{{{tag}}}:{name}"

    def tag_in(self, key: str) -> str:
        """The hash tag of one of our keys (a user id or a slot tag)."""
        start = len(self.prefix) + 2
        return key[start : key.index("}", start)]

    def pattern(self, name: str) -> str:
        """A SCAN pattern matching ``name`` under every tag (ids hold no glob characters)."""
        return f"{_glob_escape(self.prefix)}:{{*}}:{name}"

    # ----------------------------------------------------------- a user's own keys
    def own(self, user_id: str, name: str) -> str:
        """Any key of the user's own slot by its name (``bal``, ``gift:<id>``): for tools
        that read a whole slot (clearing/erasure.py)."""
        return self._of(user_id, name)

    def user_pattern(self, user_id: str) -> str:
        """A SCAN pattern matching every key of the user's own slot (ids hold no glob characters)."""
        return f"{_glob_escape(self.prefix)}:{{{user_id}}}:*"

    def user(self, user_id: str) -> str:
        """Hash: verified, vip, banned (0/1), created_at_ms, app, region; mentor and joint once set;
        consent, consent_at_ms, consent_channel (the data-processing consent on record,
        clearing/consent.py) and consent_withdrawn_at_ms once given or withdrawn; gender and
        guardian (docs/regions.md) once an operator set them."""
        return self._of(user_id, "user")

    def guardian_log(self, user_id: str) -> str:
        """Stream: each change of the user's guardian (at_ms, operator, from, to), kept
        with the user; the audit of guardian links."""
        return self._of(user_id, "guardian_log")

    def guardian_asked(self, guardian: str, gift_id: str) -> str:
        """String, for the gift's retention: the guardian was asked about the gift
        (guardian_ask.lua asks once)."""
        return self._of(guardian, f"gask:{gift_id}")

    def guardian_open(self, guardian: str) -> str:
        """Sorted set: the requests waiting for the guardian's answer (``<ward>|<gift id>``),
        scored by the end of the guardian's window (guardian_ask.lua adds, guardian_settle.lua
        removes, guardian_open.lua lists; docs/regions.md)."""
        return self._of(guardian, "gopen")

    def guardian_request(self, guardian: str, ward: str, gift_id: str) -> str:
        """String (msgpack), for the gift's retention: an open request as the guardian's
        ``guardian`` event showed it."""
        return self._of(guardian, f"greq:{ward}|{gift_id}")

    def balance(self, user_id: str) -> str:
        """Hash: card kind -> available minor units."""
        return self._of(user_id, "bal")

    def held(self, user_id: str) -> str:
        """Hash: card kind -> minor units held for the user's pending gifts (as their payer)."""
        return self._of(user_id, "held")

    def follows(self, user_id: str) -> str:
        """Hash: followee -> follow start in ms (``user_id`` follows ``followee``)."""
        return self._of(user_id, "follows")

    def blocks(self, user_id: str) -> str:
        """Set of users ``user_id`` has blocked."""
        return self._of(user_id, "blocks")

    def gift(self, sender: str, gift_id: str) -> str:
        """Hash: the send half of a gift (see clearing/scripts/gift.lua)."""
        return self._of(sender, f"gift:{gift_id}")

    def offer(self, recipient: str, gift_id: str) -> str:
        """Hash: the offer half of a gift, which decides its state."""
        return self._of(recipient, f"offer:{gift_id}")

    def sponsorship(self, payer: str, gift_id: str) -> str:
        """Hash: a hold the promotion account placed for a newcomer's free gift."""
        return self._of(payer, f"sponsor:{gift_id}")

    def refused(self, sender: str, gift_id: str) -> str:
        """Hash {code, fp = "recipient|kind|qty"}: a refused send, for ``refusal_memory_ms``
        (gift_send.lua's check_reserve): the gift id is spent meanwhile."""
        return self._of(sender, f"refused:{gift_id}")

    def rate(self, user_id: str) -> str:
        """String: the user's request-rate state, us (clearing/rates.py); absent when idle."""
        return self._of(user_id, "rate")

    def credit(self, user_id: str, transfer_id: str) -> str:
        """Marker: a cross-shard transfer (mentor rewards) credited to the user once."""
        return self._of(user_id, f"credit:{transfer_id}")

    def consents(self, user_id: str) -> str:
        """List: the user's consent history, oldest first, one JSON document per change
        ({action: give | withdraw, version, channel, app, at_ms}); clearing/consent.py."""
        return self._of(user_id, "consents")

    def stats(self, user_id: str) -> str:
        """Hash of counters the eco badges read (clearing/badges.py): accepted (gifts the user
        accepted), given (the user's gifts that were accepted), given:<YYYYMM> (of them, per
        calendar month of the quota day)."""
        return self._of(user_id, "stats")

    def inbox(self, user_id: str) -> str:
        """Sorted set: offers waiting for the user's answer, gift id -> expiry ms."""
        return self._of(user_id, "inbox")

    def send_quota(self, day: str, user_id: str) -> str:
        return self._of(user_id, f"q:send:{day}")

    def receive_quota(self, day: str, user_id: str) -> str:
        return self._of(user_id, f"q:recv:{day}")

    def pair_receive_quota(self, day: str, recipient: str, sender: str) -> str:
        """Kept with the recipient, who is the one limited."""
        return self._of(recipient, f"q:recvp:{day}:{sender}")

    def events(self, user_id: str) -> str:
        """Stream: the user's offers and outcomes; entry id ``<offset>-0``."""
        return self._of(user_id, "ev")

    def event_meta(self, user_id: str) -> str:
        """Hash: epoch (changes when the stream was lost), seq (newest offset), replid."""
        return self._of(user_id, "evmeta")

    def presence(self, user_id: str) -> str:
        """Hash: node id -> number of the user's connections on that node."""
        return self._of(user_id, "presence")

    def free_gifts(self, user_id: str) -> str:
        """Counter: the user's pending and accepted gifts paid by the promotion account."""
        return self._of(user_id, "free")

    def inventory(self, user_id: str) -> str:
        """Hash: item (``frame:<festival>``) -> expiry ms."""
        return self._of(user_id, "inv")

    def points(self, user_id: str) -> str:
        """Hash: total (the user's points), logged (the sum of the retained log entries)."""
        return self._of(user_id, "points")

    def point_log(self, user_id: str) -> str:
        """Stream: the user's awards {p, g, why, app}, bounded."""
        return self._of(user_id, "pointlog")

    # ----------------------------------------------------------- a live room (its streamer's slot)
    def room(self, room: str) -> str:
        """Hash: streamer, wish_kind, wish_target, wish_progress, version."""
        return self._of(room, "room")

    def room_conns(self, room: str) -> str:
        """Hash: ``node|user`` -> that user's connections in the room on that node."""
        return self._of(room, "roomconn")

    def room_viewers(self, room: str) -> str:
        """Hash: user -> number of nodes where the user watches (HLEN = viewer count)."""
        return self._of(room, "roomviewers")

    def board(self, room: str) -> str:
        """Sorted set: user -> contribution points in the room."""
        return self._of(room, "board")

    def quote(self, room: str, quote_id: str) -> str:
        """Hash: a price quote for a gift to the room's streamer."""
        return self._of(room, f"quote:{quote_id}")

    # ----------------------------------------------------------- per slot (slot tags)
    def totals(self, tag: str) -> str:
        """Hash: ``minted:<kind>``, ``holds:<kind>``, ``consumed:<kind>``, ``transit:<kind>``
        of the slot's users; the conservation check sums them over every slot."""
        return self._of(tag, "tot")

    def ledger(self, tag: str) -> str:
        """Stream: the double-entry records of every change of value and the gift events
        (clearing/ledger.py, docs/ledger.md), one per Redis server, in its home slot."""
        return self._of(tag, "ledger")

    def slot_users(self, tag: str) -> str:
        """Set: the users whose keys live in the slot."""
        return self._of(tag, "users")

    def expiry(self, tag: str) -> str:
        """Sorted set: ``<recipient>|<gift id>`` -> expiry ms, for offers in the slot."""
        return self._of(tag, "expiry")

    def due(self, tag: str) -> str:
        """Sorted set: ``<step>|<user>|<id>`` -> deadline ms: a cross-shard step to finish."""
        return self._of(tag, "due")

    def sweep_index(self, home: str) -> str:
        """Sorted set in a Redis server's home slot: slot tag -> the earliest time an entry
        of that slot's expiry or due queue may come due (a lower bound; a slot not listed has
        none, unless its entries moved here with a resharding). What the sweeper reads first,
        so an idle server costs one read per sweep instead of two per slot."""
        return self._of(home, "sweepidx")

    def node_users(self, tag: str, node_id: str) -> str:
        """Set: the slot's users with a connection on the node (dropped when it dies)."""
        return self._of(tag, f"nodeusers:{node_id}")

    def node_rooms(self, tag: str, node_id: str) -> str:
        """Set: ``room|user`` watched through the node, for rooms in the slot."""
        return self._of(tag, f"noderooms:{node_id}")

    def node_channel(self, tag: str, node_id: str) -> str:
        """Sharded pub/sub channel of a gateway node on the Redis server whose home slot
        has this tag: events for the node's users there (clearing/events.py)."""
        return self._of(tag, f"node:{node_id}")

    # ----------------------------------------------------------- deployment-wide, one slot each
    def nodes(self) -> str:
        """Sorted set: gateway node id -> last heartbeat ms."""
        return self._of("nodes", "beats")

    def node_stats(self) -> str:
        """Hash: gateway node id -> JSON snapshot of its counters (gateway/node_stats.py)."""
        return self._of("nodes", "stats")

    def webhooks_dead(self) -> str:
        """List: webhook deliveries that failed every attempt, newest first (JSON each)."""
        return self._of("cfg", "webhooks:dead")

    def webhooks_retry(self) -> str:
        """List: dead letters an operator sent back for delivery (JSON each, as in the dead list)."""
        return self._of("cfg", "webhooks:retry")

    def scene_settings(self) -> str:
        """Hash: the scene settings (clearing/scene_config.py), one field each."""
        return self._of("cfg", "scenes")

    def festivals(self) -> str:
        """Hash: festival id -> JSON {name, start_ms, end_ms, permille, frame}."""
        return self._of("cfg", "festivals")

    def regions(self) -> str:
        """Hash: region code -> JSON of its rules (clearing/regions.py)."""
        return self._of("cfg", "regions")

    def odds(self) -> str:
        """Hash: odds table id -> JSON of its versions (clearing/odds.py)."""
        return self._of("cfg", "odds")

    def payment(self, user_id: str, provider: str, payment_id: str) -> str:
        """Hash: a provider's payment for the user (clearing/purchases.py): state, kind, units,
        and once refunded what was clawed back and what was short."""
        return self._of(user_id, f"pay:{provider}:{payment_id}")

    def skins(self) -> str:
        """Hash: skin id -> JSON of the card art (clearing/skins.py)."""
        return self._of("cfg", "skins")

    def lucky(self, payer: str, recipient: str, gift_id: str) -> str:
        """String: what ``payer`` paid for the lucky bonus of ``recipient``'s gift (once)."""
        return self._of(payer, f"lucky:{recipient}|{gift_id}")

    def settings_channel(self) -> str:
        """Pub/sub channel (classic, cluster-wide): "settings changed, reload"."""
        return self._of("cfg", "changed")

    # ----------------------------------------------------------- the business channel (docs/business.md)
    def business(self, user_id: str) -> str:
        """Hash: business (0/1, verified business), followers (count), shop (0/1, shop window
        enabled), updated_at_ms; a user without it is no business."""
        return self._of(user_id, "biz")

    def fan_group(self, owner: str, group: str) -> str:
        """Hash: member -> fan level (1 and up) in one of ``owner``'s fan groups."""
        return self._of(owner, f"fans:{group}")

    def fan_groups(self, owner: str) -> str:
        """Set: the names of ``owner``'s fan groups that have members."""
        return self._of(owner, "fangroups")

    def campaign(self, brand: str, campaign_id: str) -> str:
        """Hash: a campaign's definition, state, cursor and lease (clearing/campaigns.py)."""
        return self._of(brand, f"camp:{campaign_id}")

    def campaign_recipients(self, brand: str, campaign_id: str) -> str:
        """List: ``<qty> <recipient>`` per recipient, in issuing order."""
        return self._of(brand, f"camp:{campaign_id}:to")

    def campaign_refused(self, brand: str, campaign_id: str) -> str:
        """Hash: recipient -> the refusal code its gift got (banned, blocked, unknown...)."""
        return self._of(brand, f"camp:{campaign_id}:refused")

    def shop_rule(self, shop: str) -> str:
        """Hash: the shop's "spend X, get a card" rule (kind, min_spend, qty, window_ms) and its
        order-signing secret (clearing/shops.py)."""
        return self._of(shop, "shoprule")

    def shop_order(self, shop: str, order_id: str) -> str:
        """Hash: what a shop's order decided: state (paid, below_minimum, refunded), gift, buyer,
        spend, and noted (the last state order_note.lua wrote to the ledger stream)."""
        return self._of(shop, f"order:{order_id}")

    def campaigns(self) -> str:
        """Hash: campaign id -> brand, every campaign (the runners' list of work)."""
        return self._of("cfg", "campaigns")

    def custom_kinds(self) -> str:
        """Hash: custom card kind -> JSON {brand, name, artwork, budget_cards}."""
        return self._of("cfg", "kinds")

    def business_audit(self) -> str:
        """Stream: who changed which business account, fan group, kind or campaign, when."""
        return self._of("cfg", "bizaudit")

    # ----------------------------------------------------------- the risk engine (docs/risk.md)
    # Tags starting with ``~`` can be no user id (``_ID`` has no ``~``) and no slot tag.
    def risk(self, user_id: str) -> str:
        """Hash, in the user's slot so the send scripts read it: frozen_until (ms), limited
        (1), ``dev:<fingerprint>`` (1: that device is banned), tier, reason, since_ms."""
        return self._of(user_id, "risk")

    def risk_features(self, user_id: str) -> str:
        """Hash: the scorer's running features of the user (risk/features.py)."""
        return self._of(user_id, "rfeat")

    def risk_peers(self, user_id: str) -> str:
        """Sorted set: the users this user gave to (score: gifts), for fan-out and cycles."""
        return self._of(user_id, "rpeers")

    def device_accounts(self, device: str) -> str:
        """Set: the accounts seen on the device."""
        return self._of(f"~d{device}", "accts")

    def device_ban(self, device: str) -> str:
        """String: why and when the device was banned, in every linked app (absent: not banned)."""
        return self._of(f"~d{device}", "ban")

    def net_members(self, net: str, what: str) -> str:
        """Set: the accounts (``what`` = accts) or devices (devs) seen in an IP /24 (IPv6 /48)."""
        return self._of(f"~n{net}", what)

    def risk_events(self) -> str:
        """Stream: what every send and answer was, with its device, address and app (risk/signals.py)."""
        return self._of("~risk", "events")

    def risk_audit(self) -> str:
        """Stream: the scorer's decisions and the operators' appeal verdicts."""
        return self._of("~risk", "audit")

    def risk_appeals(self) -> str:
        """Hash: user -> JSON of the user's open appeal."""
        return self._of("~risk", "appeals")

    def risk_switches(self) -> str:
        """Hash: the scorer's switches (shadow, rule:<name>, model), set by operators."""
        return self._of("cfg", "risk")


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


#: The schema every clearing class uses unless given another prefix.
DEFAULT_KEYS = KeySchema()
