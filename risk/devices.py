"""The device verdict, copied where the send scripts read it.

A banned device's mark lives under the device's own tag, a slot the send scripts of its
users do not touch. So whenever the device is seen with an account (at hello, here; when
the scorer bans a device, for every account it saw on it: risk/actions.py) the verdict is
copied onto that account's risk hash, in the account's slot, as ``dev:<fingerprint>``.
The device key has no app in it: a ban holds in every linked app (gift-rules.md section 2).
"""

from __future__ import annotations

from clearing.keys import KeySchema
from clearing.topology import AnyRedis
from risk.signals import NO_DEVICE


async def device_seen(redis: AnyRedis, keys: KeySchema, user: str, device: str) -> bool:
    """Note the account on the device, then copy the device's ban (if any) onto ``user``;
    returns whether the device is banned. The account is noted first, so that a ban or a
    lift from now on (risk/actions.py walks the device's accounts) reaches it."""
    if device == NO_DEVICE:
        return False
    await redis.sadd(keys.device_accounts(device), user)
    if not await redis.exists(keys.device_ban(device)):
        return False
    await redis.hset(keys.risk(user), f"dev:{device}", "1")
    return True
