-- Expiring credits (issue 17; src/credits.rs, docs/credits.md).
-- * credit_grants.expires_at: when a grant's remainder leaves the balance (NULL: never).
-- * credit_grants.consumed: demand (charges and debits) allocated to the grant, earliest
--   expiry first; credit_grants.expired: what left the balance when it expired. A grant's
--   remainder is amount - consumed - expired.
-- * accounts.allocated: how much of the account's demand (charged plus debits) has been
--   allocated to grants; accounts.expired: the sum of its grants' expired amounts, so the
--   balance (grants - charged - expired) needs no scan of the grants.
-- Existing rows start with nothing allocated: their demand is allocated on first use.
ALTER TABLE credit_grants ADD COLUMN expires_at INTEGER;
ALTER TABLE credit_grants ADD COLUMN consumed INTEGER NOT NULL DEFAULT 0;
ALTER TABLE credit_grants ADD COLUMN expired INTEGER NOT NULL DEFAULT 0;
ALTER TABLE accounts ADD COLUMN allocated INTEGER NOT NULL DEFAULT 0;
ALTER TABLE accounts ADD COLUMN expired INTEGER NOT NULL DEFAULT 0;

-- Webhooks (issue 17; src/webhooks/, docs/webhooks.md).
-- * webhooks: an account holder's endpoints. The secret signs deliveries (HMAC needs it
--   in the clear); it is never shown again after creation. low_balance in nano-dollars.
-- * webhook_events: one row per event that was emitted, by its de-duplication id
--   (`key:<id>:<window>:<percent>`, `low_balance:<webhook>`, `expiring:<grant>`), so an
--   event is emitted once, also with several replicas.
-- * webhook_deliveries: one row per event and receiver: the delivery log. webhook_id is
--   NULL for an operator webhook (operator_hook: its index in the config file).
--   Times in milliseconds.
CREATE TABLE webhooks (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id   INTEGER NOT NULL REFERENCES accounts(id),
    url          TEXT    NOT NULL,
    secret       TEXT    NOT NULL,
    low_balance  INTEGER,
    created_at   INTEGER NOT NULL,
    deleted_at   INTEGER
);
CREATE INDEX webhooks_account ON webhooks(account_id);

CREATE TABLE webhook_events (
    account_id  INTEGER NOT NULL,
    dedup       TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (account_id, dedup)
);

CREATE TABLE webhook_deliveries (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id       INTEGER NOT NULL,
    webhook_id       INTEGER,
    operator_hook    INTEGER,
    event_id         TEXT    NOT NULL,
    event_type       TEXT    NOT NULL,
    payload          TEXT    NOT NULL,
    status           TEXT    NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER NOT NULL,
    claimed_until    INTEGER,
    last_status      INTEGER,
    last_error       TEXT,
    created_at       INTEGER NOT NULL,
    delivered_at     INTEGER
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries(status, next_attempt_at);
CREATE INDEX webhook_deliveries_hook ON webhook_deliveries(webhook_id, id);
