"""The signature check shared by payment notifications and shop orders
(gateway/signed_requests.py), as pure logic: which refusal each route gives, in its own
order (one for both routes), when a request is unsigned, forged, stale or both. The routes themselves are
tested on a real node in tests/test_purchases.py and tests/test_shop_orders.py."""

from __future__ import annotations

import pytest

from gateway.admin_json import AdminError
from gateway.payments_http import PaymentsHttp
from gateway.payments_http import sign as provider_sign
from gateway.shop_orders import ShopOrdersAdmin
from gateway.signed_requests import SignedRequests, hmac_signature

BODY = b'{"type":"refund","payment_id":"p1","user":"ana"}'
KEY = b"provider key"
NOW_S = 1_800_000_000
NOW_MS = NOW_S * 1000


def payments() -> SignedRequests:
    return PaymentsHttp(purchases=None, secrets={}, window_s=300).signed  # type: ignore[arg-type]


def shop_orders() -> SignedRequests:
    return ShopOrdersAdmin(shops=None, replay_s=60).signed  # type: ignore[arg-type]


def refusal(check: SignedRequests, headers: dict[str, str], secret: bytes | None,
            now: float) -> tuple[int, str] | None:
    try:
        check.verify(headers, BODY, secret, now)
    except AdminError as exc:
        return exc.status, exc.code
    return None


def provider_headers(stamp: str, key: bytes = KEY) -> dict[str, str]:
    return {"Notecard-Timestamp": stamp, "Notecard-Signature": provider_sign(key, stamp, BODY)}


def shop_headers(stamp_ms: int, secret: str = "s3cret") -> dict[str, str]:
    signature = hmac_signature(secret.encode(), str(stamp_ms), BODY)
    return {"X-Notecard-Timestamp": str(stamp_ms), "X-Notecard-Signature": signature}


@pytest.mark.parametrize(("headers", "secret", "code"), [
    (provider_headers(str(NOW_S)), KEY, None),
    (provider_headers(str(NOW_S - 300)), KEY, None),  # at the window's edge
    (provider_headers(str(NOW_S - 301)), KEY, "STALE_NOTIFICATION"),
    (provider_headers(str(NOW_S + 301)), KEY, "STALE_NOTIFICATION"),
    (provider_headers(str(NOW_S), b"another key"), KEY, "BAD_SIGNATURE"),
    (provider_headers(str(NOW_S - 301), b"another key"), KEY, "BAD_SIGNATURE"),  # the signature first
    (provider_headers(str(NOW_S + 301), b"another key"), KEY, "BAD_SIGNATURE"),
    ({"Notecard-Signature": provider_sign(KEY, str(NOW_S), BODY)}, KEY, "STALE_NOTIFICATION"),  # no timestamp
    (provider_headers("1e9"), KEY, "STALE_NOTIFICATION"),
    (provider_headers("\u0661\u0668" + str(NOW_S)[2:]), KEY, "STALE_NOTIFICATION"),  # Arabic-Indic digits
    (provider_headers("1" * 13), KEY, "STALE_NOTIFICATION"),  # too long to be read
])
def test_a_payment_notification_is_signed_then_fresh(headers: dict[str, str], secret: bytes,
                                                      code: str | None) -> None:
    assert refusal(payments(), headers, secret, NOW_S) == (code and (401, code))


@pytest.mark.parametrize(("headers", "secret", "code"), [
    (shop_headers(NOW_MS), b"s3cret", None),
    (shop_headers(NOW_MS + 60_000), b"s3cret", None),  # at the window's edge
    (shop_headers(NOW_MS - 60_001), b"s3cret", "STALE_ORDER"),
    (shop_headers(NOW_MS, "forged"), b"s3cret", "BAD_SIGNATURE"),
    (shop_headers(NOW_MS - 60_001, "forged"), b"s3cret", "BAD_SIGNATURE"),  # the signature first
    (shop_headers(NOW_MS + 60_001, "forged"), b"s3cret", "BAD_SIGNATURE"),
    (shop_headers(NOW_MS), None, "BAD_SIGNATURE"),  # the shop has no secret
    # no timestamp
    ({"X-Notecard-Signature": hmac_signature(b"s3cret", str(NOW_MS), BODY)}, b"s3cret", "BAD_SIGNATURE"),
    ({**shop_headers(NOW_MS), "X-Notecard-Timestamp": "-" + str(NOW_MS)}, b"s3cret", "BAD_SIGNATURE"),
])
def test_a_shop_order_is_signed_then_fresh(headers: dict[str, str], secret: bytes | None, code: str | None) -> None:
    assert refusal(shop_orders(), headers, secret, NOW_MS) == (code and (401, code))


def test_the_messages_say_what_is_wrong_without_internal_detail() -> None:
    with pytest.raises(AdminError) as stale:
        payments().verify(provider_headers(str(NOW_S - 301)), BODY, KEY, NOW_S)
    assert stale.value.message == "Notecard-Timestamp is missing or outside the replay window"
    with pytest.raises(AdminError) as forged:
        shop_orders().verify(shop_headers(NOW_MS, "forged"), BODY, b"s3cret", NOW_MS)
    assert forged.value.message == "the signature does not match the shop's secret"
