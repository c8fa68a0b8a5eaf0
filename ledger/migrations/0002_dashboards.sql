-- What the business dashboards read besides the ledger (docs/dashboards.md): recipients'
-- profiles, fan-group levels, campaigns and the gifts they issued, purchases and activity.
-- The features that know these facts write them (idempotently: every table has a natural
-- key, so a writer retries with INSERT ... ON CONFLICT); the dashboards only read.

-- A user's profile attributes, as the platform knows them.
CREATE TABLE profile (
    user_id     text PRIMARY KEY,
    region      text,                        -- a region code, e.g. 'north'; NULL when unknown
    birth_year  integer CHECK (birth_year BETWEEN 1900 AND 2100),
    app         text,                        -- the app the user signed up in ([a-z0-9_]{1,32})
    updated_ms  bigint NOT NULL
);

-- A member of a fan group (a brand's, a shop's or a community's) and the member's level.
CREATE TABLE fan_member (
    owner       text    NOT NULL,            -- the account that owns the group: a gift's sender
    user_id     text    NOT NULL,
    level       integer NOT NULL CHECK (level >= 0),
    since_ms    bigint  NOT NULL,
    PRIMARY KEY (owner, user_id)
);

-- A campaign: a brand's batch of cards. unit_cents prices one minor unit of the card kind
-- for the ROI (what the brand paid for its budget); 0 when not known.
CREATE TABLE campaign (
    id          text PRIMARY KEY,
    brand       text   NOT NULL,             -- the account that sends (and pays for) the cards
    name        text   NOT NULL,
    kind        text   NOT NULL,             -- the card kind issued
    unit_cents  bigint NOT NULL DEFAULT 0 CHECK (unit_cents >= 0),
    started_ms  bigint NOT NULL
);

-- One card of a campaign: which gift (the ledger's sender + gift id) went to which recipient.
CREATE TABLE campaign_issue (
    campaign    text NOT NULL REFERENCES campaign (id),
    recipient   text NOT NULL,
    sender      text NOT NULL,
    gift_id     text NOT NULL,
    at_ms       bigint NOT NULL,
    PRIMARY KEY (campaign, recipient),       -- one card per (campaign, recipient)
    UNIQUE (sender, gift_id)
);

-- A purchase in a shop (the e-commerce orders); a refunded order does not count.
CREATE TABLE purchase (
    order_id    text PRIMARY KEY,
    shop        text    NOT NULL,            -- the account that sells: a campaign's brand
    buyer       text    NOT NULL,
    amount_cents bigint NOT NULL CHECK (amount_cents >= 0),
    at_ms       bigint  NOT NULL,
    refunded    boolean NOT NULL DEFAULT false
);
CREATE INDEX purchase_buyer ON purchase (buyer, shop, at_ms);

-- A user was active (connected, sent, answered a gift...): one row per user, moment and what.
CREATE TABLE activity (
    user_id     text   NOT NULL,
    at_ms       bigint NOT NULL,
    what        text   NOT NULL,
    PRIMARY KEY (user_id, at_ms, what)
);
