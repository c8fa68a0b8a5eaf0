"""PostgreSQL as the book of record of the ledger streams (docs/ledger.md "PostgreSQL").

- :mod:`ledger.migrate`: the schema, as versioned SQL files in ``ledger/migrations``.
- :mod:`ledger.books`: writing records to PostgreSQL idempotently by id, and reading
  balances and entries back.
- :mod:`ledger.consumer`: ``notecard ledger``, a consumer group member that writes every
  stream's records in batches and acknowledges them only after the commit.
- :mod:`ledger.reconcile`: balances per account and kind, PostgreSQL's against Redis's.
- :mod:`ledger.restore`: Redis's balances, holds and totals rebuilt from PostgreSQL.
- :mod:`ledger.cli`: the ``notecard ledger`` command.
"""
