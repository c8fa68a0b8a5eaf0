"""Conformance cases of docs/protocol.md, run against every SDK (see tests/test_conformance.py)."""
