"""The business dashboards (docs/dashboards.md): recipients' profile breakdown, conversion
and ROI per campaign, and a retention heat map, computed in SQL on the PostgreSQL book of
record (the ledger's ``gift_event`` and ``ledger_entry`` tables, and the tables of
``ledger/migrations/0002_dashboards.sql``).

:mod:`dashboards.queries` runs them, :mod:`dashboards.export` shapes them as JSON and CSV,
:mod:`dashboards.generate` writes a reproducible data set, :mod:`dashboards.render` draws
them (matplotlib, the ``dashboards`` extra), :mod:`dashboards.cli` is ``notecard dashboards``.
"""
