"""An asyncio client of a node's admin HTTP API (used by ``notecard admin``, tests, drills)."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson


class AdminApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class AdminClient:
    def __init__(self, base_url: str, admin_token: str, *, timeout_s: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {admin_token}"}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> AdminClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession(headers=self._headers, timeout=self._timeout)
        data = orjson.dumps(body) if body is not None else None
        async with self._session.request(method, self.base_url + path, data=data,
                                         headers={"Content-Type": "application/json"}) as resp:
            payload = orjson.loads(await resp.read() or b"null")
            if resp.status >= 400:
                err = payload if isinstance(payload, dict) else {}
                raise AdminApiError(resp.status, str(err.get("error", "HTTP_ERROR")), str(err.get("message", "")))
            return payload

    # Convenience wrappers: one per admin route.
    async def create_user(self, user_id: str, *, verified: bool = True, vip: bool = False, banned: bool = False,
                          created_at_ms: int | None = None, app: str | None = None, region: str | None = None
                          ) -> Any:
        """Create a user, **verified** unless told otherwise, as ``notecard admin create-user``
        does (the HTTP route's own default, for a body without ``verified``, is unverified)."""
        body: dict[str, Any] = {"user_id": user_id, "verified": verified, "vip": vip, "banned": banned}
        if created_at_ms is not None:
            body["created_at_ms"] = created_at_ms
        if app is not None:
            body["app"] = app
        if region is not None:
            body["region"] = region
        return await self.call("POST", "/admin/users", body)

    async def get_user(self, user_id: str) -> Any:
        return await self.call("GET", f"/admin/users/{user_id}")

    async def set_flags(self, user_id: str, **flags: bool | str) -> Any:
        return await self.call("PATCH", f"/admin/users/{user_id}", dict(flags))

    async def link_guardian(self, ward: str, guardian: str | None, operator: str = "admin") -> Any:
        """Link ``guardian`` to ``ward`` (None unlinks); audited (docs/regions.md)."""
        return await self.call("PUT", f"/admin/users/{ward}/guardian", {"guardian": guardian, "operator": operator})

    async def guardian(self, ward: str) -> Any:
        """The ward's guardian and the log of its links, newest first."""
        return await self.call("GET", f"/admin/users/{ward}/guardian")

    async def regions(self) -> Any:
        return await self.call("GET", "/admin/regions")

    async def put_region(self, code: str, rules: dict[str, Any]) -> Any:
        return await self.call("PUT", f"/admin/regions/{code}", rules)

    async def odds(self) -> Any:
        """The published odds (``GET /odds``, which needs no token)."""
        return await self.call("GET", "/odds")

    async def publish_odds(self, table: str, entries: list[dict[str, int]]) -> Any:
        """A new version of an odds table; the one in force is retired and its key revealed."""
        return await self.call("PUT", f"/admin/odds/{table}", {"entries": entries})

    async def mint(self, user_id: str, qty: int, kind: str = "note") -> Any:
        return await self.call("POST", f"/admin/users/{user_id}/mint", {"kind": kind, "qty": qty})

    async def follow(self, follower: str, followee: str, since_ms: int | None = None) -> Any:
        body = {} if since_ms is None else {"since_ms": since_ms}
        return await self.call("PUT", f"/admin/users/{follower}/follows/{followee}", body)

    async def unfollow(self, follower: str, followee: str) -> Any:
        return await self.call("DELETE", f"/admin/users/{follower}/follows/{followee}")

    async def block(self, blocker: str, blocked: str) -> Any:
        return await self.call("PUT", f"/admin/users/{blocker}/blocks/{blocked}")

    async def unblock(self, blocker: str, blocked: str) -> Any:
        return await self.call("DELETE", f"/admin/users/{blocker}/blocks/{blocked}")

    async def gift(self, gift_id: str) -> Any:
        return await self.call("GET", f"/admin/gifts/{gift_id}")

    async def invariant(self) -> Any:
        return await self.call("GET", "/admin/invariant")

    async def scenes(self) -> Any:
        return await self.call("GET", "/admin/scenes")

    async def set_scenes(self, **settings: Any) -> Any:
        return await self.call("PATCH", "/admin/scenes", settings)

    async def put_festival(self, festival_id: str, *, start: str | int, end: str | int, name: str | None = None,
                           multiplier: float | None = None, frame: str | None = None) -> Any:
        body: dict[str, Any] = {"start": start, "end": end, "name": name, "multiplier": multiplier, "frame": frame}
        given = {k: v for k, v in body.items() if v is not None}
        return await self.call("PUT", f"/admin/festivals/{festival_id}", given)

    async def delete_festival(self, festival_id: str) -> Any:
        return await self.call("DELETE", f"/admin/festivals/{festival_id}")

    async def points(self, user_id: str) -> Any:
        return await self.call("GET", f"/admin/users/{user_id}/points")

    async def bind_mentor(self, apprentice: str, mentor: str) -> Any:
        return await self.call("POST", f"/admin/users/{apprentice}/mentor", {"mentor": mentor})

    async def send_gift(self, gift_id: str, sender: str, recipient: str, *, qty: int = 1,
                        kind: str | None = None) -> Any:
        """Send a gift for ``sender`` (idempotent by ``gift_id``: retry with the same one)."""
        body: dict[str, Any] = {"gift_id": gift_id, "sender": sender, "recipient": recipient, "qty": qty}
        if kind is not None:
            body["kind"] = kind
        return await self.call("POST", "/admin/gifts", body)

    async def disconnect(self, user_id: str) -> Any:
        return await self.call("POST", f"/admin/users/{user_id}/disconnect")

    async def bulk_users(self, users: list[dict[str, Any]]) -> Any:
        return await self.call("POST", "/admin/bulk/users", {"users": users})

    async def bulk_follows(self, follows: list[dict[str, Any]]) -> Any:
        return await self.call("POST", "/admin/bulk/follows", {"follows": follows})

    async def appeals(self) -> Any:
        return await self.call("GET", "/admin/appeals")

    async def decide_appeal(self, user_id: str, *, approve: bool, operator: str, note: str = "") -> Any:
        return await self.call("POST", f"/admin/appeals/{user_id}",
                               {"approve": approve, "operator": operator, "note": note})

    async def risk(self, user_id: str) -> Any:
        return await self.call("GET", f"/admin/users/{user_id}/risk")

    async def set_risk(self, user_id: str, tier: str, *, operator: str, device: str = "-", reason: str = "") -> Any:
        return await self.call("PUT", f"/admin/users/{user_id}/risk",
                               {"tier": tier, "operator": operator, "device": device, "reason": reason})

    async def risk_switches(self, operator: str | None = None, **changes: Any) -> Any:
        if not changes:
            return await self.call("GET", "/admin/risk")
        return await self.call("PATCH", "/admin/risk", {"operator": operator, **changes})

    async def befriend(self, a: str, b: str, since_ms: int) -> None:
        """Mutual follows from ``since_ms``: the relationship the gift rules require."""
        await self.follow(a, b, since_ms)
        await self.follow(b, a, since_ms)
