"""The codes and states clearing produces exist on the wire under the same names.

The gateway maps a clearing refusal to an ``error`` frame by value
(``ErrorCode(refusal.code.value)``) and a gift record to a wire ``Gift`` by its state's
value; a refusal or state without a wire twin would turn a clean refusal into INTERNAL.
``protocol`` does not import ``clearing`` (dependencies point one way), so the agreement is
checked here.
"""

from __future__ import annotations

import pytest

from clearing.errors import Refusal
from clearing.model import VISIBLE_STATES, transitions
from clearing.model import GiftState as LedgerState
from protocol import ErrorCode, Gift, GiftState, ProtocolError

#: Refusals of the admin API only; never sent to a WebSocket client.
ADMIN_ONLY = {"USER_EXISTS", "BAD_REQUEST", "ERASE_PENDING"}


def test_every_client_facing_refusal_is_an_error_code() -> None:
    client_facing = {r.value for r in Refusal} - ADMIN_ONLY
    assert client_facing <= {c.value for c in ErrorCode}


def test_gift_states_agree() -> None:
    """The states a client sees are the wire's; the saga's own (admitted, void) never reach it,
    and a gift awaiting a guardian is shown as pending (gateway/views.py)."""
    assert sorted(s.value for s in VISIBLE_STATES) == sorted(s.value for s in GiftState)
    assert {s.value for s in LedgerState} - {s.value for s in VISIBLE_STATES} == {"admitted", "void",
                                                                                   "awaiting_guardian"}
    # Each state a client can be shown passes the wire Gift's validation.
    for state in VISIBLE_STATES:
        spec = next(s for s in Gift.FIELDS if s.name == "state")
        assert spec.parse(state.value, "state", None) == state.value


def test_transition_table_is_the_documented_one() -> None:
    """admitted -> pending (offered) | void | awaiting_guardian; awaiting_guardian -> pending
    (approved) | declined (rejected) | expired; pending -> accepted | declined | expired; every
    final state is final (docs/architecture.md)."""
    assert {s.value: sorted(t.value for t in targets) for s, targets in transitions().items()} == {
        "admitted": ["awaiting_guardian", "pending", "void"],
        "awaiting_guardian": ["declined", "expired", "pending"],
        "pending": ["accepted", "declined", "expired"],
        "accepted": [],
        "declined": [],
        "expired": [],
        "void": [],
    }


def test_an_unknown_state_is_refused_on_the_wire() -> None:
    spec = next(s for s in Gift.FIELDS if s.name == "state")
    with pytest.raises(ProtocolError) as err:
        spec.parse("held", "state", 3)
    assert (err.value.code, err.value.rid) == (ErrorCode.BAD_FIELD, 3)
