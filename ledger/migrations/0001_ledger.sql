-- The book of record: every ledger entry and gift event of the Redis ledger streams
-- (docs/ledger.md), written by `notecard ledger` idempotently by id.

-- One double-entry move of `units` of `kind` from account `debit` to account `credit`.
CREATE TABLE ledger_entry (
    id          text PRIMARY KEY,            -- <script call>.<n>: unique over every stream
    entry_kind  text   NOT NULL,
    debit       text   NOT NULL,
    credit      text   NOT NULL,
    kind        text   NOT NULL,             -- a card kind, or 'points'
    units       bigint NOT NULL CHECK (units > 0),
    gift_id     text,
    sender      text,
    cause       text   NOT NULL,
    at_ms       bigint NOT NULL,             -- the script's clock
    stream      text   NOT NULL,             -- where it was read: the Redis stream and entry
    stream_id   text   NOT NULL,
    written_at  timestamptz NOT NULL DEFAULT now(),
    CHECK (debit <> credit)
);
CREATE INDEX ledger_entry_debit ON ledger_entry (debit, kind);
CREATE INDEX ledger_entry_credit ON ledger_entry (credit, kind);
CREATE INDEX ledger_entry_gift ON ledger_entry (sender, gift_id) WHERE gift_id IS NOT NULL;

-- A step of a gift's life, for the platform.
CREATE TABLE gift_event (
    id          text PRIMARY KEY,
    event       text   NOT NULL CHECK (event IN ('sent', 'accepted', 'declined', 'expired')),
    gift_id     text   NOT NULL,
    sender      text   NOT NULL,
    recipient   text   NOT NULL,
    kind        text   NOT NULL,
    qty         bigint NOT NULL,
    cost        bigint NOT NULL,
    amount      bigint NOT NULL,
    payer       text   NOT NULL,
    at_ms       bigint NOT NULL,
    stream      text   NOT NULL,
    stream_id   text   NOT NULL,
    written_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX gift_event_gift ON gift_event (sender, gift_id);

-- Each account's balance per kind: its credits minus its debits.
CREATE VIEW account_balance AS
SELECT account, kind, sum(delta)::bigint AS balance
FROM (SELECT credit AS account, kind, units AS delta FROM ledger_entry
      UNION ALL
      SELECT debit, kind, -units FROM ledger_entry) AS moves
GROUP BY account, kind;
