"""Close codes and the advice a client draws from them (docs/protocol.md, "Close codes")."""

from __future__ import annotations

import pytest

from protocol import CloseCode, needs_new_token, should_reconnect

#: code -> (reconnect?, new token first?): the table of the specification, one row per code.
ADVICE: dict[int, tuple[bool, bool]] = {
    CloseCode.NORMAL: (False, False),
    CloseCode.GOING_AWAY: (True, False),
    CloseCode.PROTOCOL_ERROR: (False, False),
    CloseCode.INVALID_PAYLOAD: (False, False),
    CloseCode.MESSAGE_TOO_BIG: (True, False),
    CloseCode.INTERNAL_ERROR: (True, False),
    CloseCode.SHUTDOWN: (True, False),
    CloseCode.SLOW_CONSUMER: (True, False),
    CloseCode.TOO_MANY_REQUESTS: (True, False),
    CloseCode.AUTH_TIMEOUT: (True, False),
    CloseCode.SERVICE_UNAVAILABLE: (True, False),
    CloseCode.INVALID_TOKEN: (False, False),
    CloseCode.TOKEN_EXPIRED: (False, True),
    CloseCode.PROTOCOL_VIOLATION: (False, False),
    CloseCode.UNSUPPORTED_VERSION: (False, False),
    CloseCode.NOT_AUTHENTICATED: (False, False),
    CloseCode.ACCOUNT_BANNED: (False, False),
    CloseCode.SESSION_ENDED: (False, False),
    CloseCode.USER_CONNECTION_LIMIT: (False, False),
    CloseCode.ADDRESS_CONNECTION_LIMIT: (False, False),
}


def test_every_close_code_has_advice() -> None:
    assert set(ADVICE) == {int(c) for c in CloseCode}


def test_close_code_values() -> None:
    assert {c.name: int(c) for c in CloseCode} == {
        "NORMAL": 1000, "GOING_AWAY": 1001, "PROTOCOL_ERROR": 1002, "INVALID_PAYLOAD": 1007,
        "MESSAGE_TOO_BIG": 1009, "INTERNAL_ERROR": 1011,
        "SHUTDOWN": 3000, "SLOW_CONSUMER": 3001, "TOO_MANY_REQUESTS": 3002, "AUTH_TIMEOUT": 3003,
        "SERVICE_UNAVAILABLE": 3004, "INVALID_TOKEN": 3500, "TOKEN_EXPIRED": 3501, "PROTOCOL_VIOLATION": 3502,
        "UNSUPPORTED_VERSION": 3503, "NOT_AUTHENTICATED": 3504, "ACCOUNT_BANNED": 3505,
        "SESSION_ENDED": 3506, "USER_CONNECTION_LIMIT": 3510, "ADDRESS_CONNECTION_LIMIT": 3511,
    }


@pytest.mark.parametrize(("code", "advice"), ADVICE.items(), ids=[CloseCode(c).name for c in ADVICE])
def test_advice_per_code(code: int, advice: tuple[bool, bool]) -> None:
    assert (should_reconnect(code), needs_new_token(code)) == advice
    # Plain ints (what a WebSocket library reports) behave like the enum members.
    assert (should_reconnect(int(code)), needs_new_token(int(code))) == advice


def test_dropped_without_a_close_frame_reconnects() -> None:
    # None: the TCP connection died; 1006 is what browsers report for the same thing.
    assert should_reconnect(None) is True
    assert should_reconnect(1006) is True
    assert needs_new_token(None) is False


@pytest.mark.parametrize("code", [3000, 3001, 3100, 3250, 3499])
def test_3000_to_3499_reconnect(code: int) -> None:
    assert should_reconnect(code) is True
    assert needs_new_token(code) is False


@pytest.mark.parametrize("code", [3500, 3502, 3505, 3700, 3999])
def test_3500_to_3999_do_not_reconnect(code: int) -> None:
    assert should_reconnect(code) is False


@pytest.mark.parametrize("code", [1002, 1003, 1007, 1008])
def test_permanent_standard_codes(code: int) -> None:
    """Protocol error, unacceptable data, invalid payload, policy violation: a client bug."""
    assert should_reconnect(code) is False


@pytest.mark.parametrize("code", [1001, 1005, 1006, 1009, 1011, 1012, 1013, 1014, 4000, 4999])
def test_other_codes_reconnect_with_backoff(code: int) -> None:
    assert should_reconnect(code) is True
    assert needs_new_token(code) is False


def test_only_token_expired_asks_for_a_new_token() -> None:
    assert [c for c in range(1000, 5000) if needs_new_token(c)] == [CloseCode.TOKEN_EXPIRED]
