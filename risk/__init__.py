"""The risk engine (docs/risk.md): signals from the gateway, features and a model that score
every gift outside the hot path, the actions the send scripts read in the same step as the
gift rules, and appeals.

Depends on clearing's key schema and topology only; the gateway depends on it, never back.
"""
