"""Requests signed by a third party over the admin HTTP port: a payment provider's
notifications (gateway/payments_http.py) and a shop's order notifications
(gateway/shop_orders.py).

Both carry a timestamp header and a signature header, ``sha256=<hex>`` of
HMAC-SHA256(secret, ``<timestamp>.<raw body>``) with the timestamp as sent, compared in
constant time; a timestamp further than the replay window from the node's clock refuses
the request, so that a captured request cannot be played again later. Each route keeps
its own headers, timestamp unit, codes and messages; the order of the checks is one for
both:

1. the timestamp header is plain ASCII digits of a readable length (else the route's
   ``unreadable`` refusal);
2. the signature matches the route's secret (else ``mismatch``; also when there is no
   secret);
3. the timestamp is within the replay window (else ``stale``).

The signature comes before the window so that a sender without the secret learns nothing
but "not signed" (not which instants the node would accept), while a genuine sender whose
clock drifted, or a replay of a request it really signed, hears that the time is wrong.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from collections.abc import Mapping

from gateway.admin_json import AdminError


def hmac_signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """The signature header's value for ``body`` sent at ``timestamp`` (the header's text)."""
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


@dataclasses.dataclass(frozen=True, slots=True)
class Refusal:
    """What a refused request is answered (an AdminError's status, code and message)."""

    status: int
    code: str
    message: str

    def error(self) -> AdminError:
        return AdminError(self.status, self.code, self.message)


@dataclasses.dataclass(frozen=True, slots=True)
class SignedRequests:
    """One route's signature check: :meth:`verify` raises the route's refusal or returns."""

    timestamp_header: str
    signature_header: str
    #: The longest timestamp read (more digits cannot be a time near the node's clock).
    max_digits: int
    #: The replay window, in the timestamp's unit.
    window: float
    #: The timestamp is missing or not plain digits.
    unreadable: Refusal
    #: The timestamp is outside the replay window.
    stale: Refusal
    #: The secret is unknown or the signature does not match.
    mismatch: Refusal

    def verify(self, headers: Mapping[str, str], body: bytes, secret: bytes | None, now: float) -> None:
        """``now`` is the node's clock in the timestamp's unit."""
        stamp = headers.get(self.timestamp_header, "")
        # ASCII only: int() also reads other scripts' digits, which no sender signs.
        if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= self.max_digits):
            raise self.unreadable.error()
        signature = headers.get(self.signature_header, "")
        if secret is None or not hmac.compare_digest(signature, hmac_signature(secret, stamp, body)):
            raise self.mismatch.error()
        if abs(now - int(stamp)) > self.window:
            raise self.stale.error()
