"""Account bans reach open connections: a banned user's connections close on every node.
An operator's disconnect (``ctl:kick:<user>``) takes the same way, without the ban.

An operator's ban (``PATCH /admin/users/{user}`` with ``banned``) publishes a control
message to each live node holding the user's connections, in the same script that sets the
flag; the node closes them with ACCOUNT_BANNED (3505), and a new ``hello`` is refused
(presence's connect script checks the flag). Pub/sub is at most once, so after its
subscriber was down a node checks the flag of every user it holds.
"""

from __future__ import annotations

import asyncio
import logging

from clearing import Accounts, ClearingError, banned_user, kicked_user
from gateway.hub import Hub
from protocol import CloseCode, ErrorCode

log = logging.getLogger("notecard.gateway.bans")

#: Users whose flag is read in one round trip by :meth:`BanEnforcer.recheck`.
_RECHECK_BATCH = 500


class BanEnforcer:
    def __init__(self, hub: Hub, accounts: Accounts) -> None:
        self.hub = hub
        self.accounts = accounts
        self._recheck: asyncio.Task[None] | None = None

    def recheck_soon(self) -> None:
        """Start :meth:`recheck` in the background unless one is running (called whenever
        the subscriber may have missed messages)."""
        if self._recheck is None or self._recheck.done():
            self._recheck = asyncio.create_task(self.recheck())

    async def close(self) -> None:
        """Stop a recheck still running (the node is stopping)."""
        task = self._recheck
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def on_control(self, payload: bytes) -> None:
        """A control message from the node's channel."""
        user = banned_user(payload)
        if user is not None:
            self._close(user)
            return
        kicked = kicked_user(payload)
        if kicked is not None:
            closed = self.hub.close_user(kicked, CloseCode.SESSION_ENDED, ErrorCode.SESSION_ENDED,
                                         "session ended by the platform")
            if closed:
                log.info("user disconnected by an operator", extra={"user": kicked, "connections": closed})

    async def recheck(self) -> None:
        """Close the connections of every local user banned meanwhile (after the subscriber
        was down and may have missed a ban)."""
        users = list(self.hub.users)
        try:
            for start in range(0, len(users), _RECHECK_BATCH):
                for user in await self.accounts.banned_among(users[start : start + _RECHECK_BATCH]):
                    self._close(user)
        except ClearingError:
            log.warning("ban check after resubscribing failed; bans still refuse the next hello")

    def _close(self, user: str) -> None:
        closed = self.hub.close_banned(user)
        if closed:
            log.info("banned account disconnected", extra={"user": user, "connections": closed})
