"""The TypeScript SDK reads the protocol's tables from a file generated from protocol/:
the committed file is what ``python -m protocol.export`` gives today (a change to the wire
format fails here until the generated file, and so the SDK's checks, follow)."""

from __future__ import annotations

from protocol import export


def test_the_generated_schema_of_the_typescript_sdk_is_current() -> None:
    assert export.TARGET.read_text(encoding="utf-8") == export.render(), "run python -m protocol.export"


def test_the_schema_names_every_message_and_the_reply_table() -> None:
    text = export.render()
    names = ("send_gift", "gift_sent", "pending_more", "RETRYABLE_CODES", "ACCOUNT_BANNED", '"bind_mentor": "done"')
    for name in names:
        assert name in text
