"""Connections per client address on this node: the cap in front of every session.

A client address is the peer's IP, or, when the peer is a trusted proxy (a load balancer
named in ``trusted_proxies``), the last address of its ``X-Forwarded-For``: the one that
proxy appended, so a client cannot choose it by sending the header itself. Behind an
untrusted proxy every client would share the proxy's address, hence the setting.

The count is per node, in memory: it bounds what one address costs this node (sockets,
memory, sessions) at no Redis cost. A cap over all nodes belongs at the load balancer
(HAProxy's stick tables), which sees every connection first. The per-user cap, which must
hold over all nodes, is presence's (clearing/scripts/connect.lua).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from gateway.metrics import NodeMetrics
from protocol import CloseCode, Error, ErrorCode, encode, encoding_for

log = logging.getLogger("notecard.gateway.admission")

Handler = Callable[[ServerConnection], Awaitable[None]]
Networks = tuple[IPv4Network | IPv6Network, ...]


def client_address(ws: ServerConnection, trusted_proxies: Networks) -> str:
    """The address a connection counts against (see the module docstring)."""
    peer = str(ws.remote_address[0]) if ws.remote_address else ""
    peer_ip = _ip(peer)
    if peer_ip is not None and any(peer_ip in net for net in trusted_proxies):
        forwarded = ws.request.headers.get("X-Forwarded-For") if ws.request is not None else None
        last = forwarded.rsplit(",", 1)[-1].strip() if forwarded else ""
        if _ip(last) is not None:
            return last
    return peer


def _ip(address: str) -> IPv4Address | IPv6Address | None:
    try:
        return ip_address(address)
    except ValueError:
        return None


class AddressGate:
    """Wraps the session handler: at most ``cap`` open connections per client address."""

    def __init__(self, handler: Handler, cap: int, trusted_proxies: Networks, metrics: NodeMetrics) -> None:
        self.handler = handler
        self.cap = cap
        self.trusted_proxies = trusted_proxies
        self.metrics = metrics
        self.open: dict[str, int] = {}

    async def __call__(self, ws: ServerConnection) -> None:
        address = client_address(ws, self.trusted_proxies)
        count = self.open.get(address, 0)
        if count >= self.cap:
            await self._turn_away(ws, address)
            return
        self.open[address] = count + 1
        try:
            await self.handler(ws)
        finally:
            left = self.open[address] - 1
            if left:
                self.open[address] = left
            else:
                del self.open[address]

    async def _turn_away(self, ws: ServerConnection, address: str) -> None:
        """The error frame, then the close code: before hello, so it costs no token check."""
        code = CloseCode.ADDRESS_CONNECTION_LIMIT
        log.info("connection refused: address at its cap", extra={"address": address})
        self.metrics.closes.labels(code=str(int(code))).inc()
        self.metrics.refusals_of(ErrorCode.TOO_MANY_CONNECTIONS).inc()
        message = "too many connections from this address; close another one first"
        frame = encode(Error(code=ErrorCode.TOO_MANY_CONNECTIONS, message=message), encoding_for(ws.subprotocol))
        with contextlib.suppress(ConnectionClosed):
            await ws.send(frame)
            await ws.close(int(code), "too many connections from this address")
