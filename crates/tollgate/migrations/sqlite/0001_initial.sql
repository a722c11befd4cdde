-- Accounts, credit grants, keys and the usage ledger.
-- Money is INTEGER nano-dollars; times are INTEGER unix seconds (UTC).
-- credit_grants and usage_records are append-only; accounts.charged, api_keys.usage and
-- usage_daily are derived from usage_records in the same transaction that appends to it.

CREATE TABLE accounts (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT    NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL,
    charged     INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE credit_grants (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id  INTEGER NOT NULL REFERENCES accounts(id),
    amount      INTEGER NOT NULL,
    note        TEXT,
    created_at  INTEGER NOT NULL
);
CREATE INDEX credit_grants_account ON credit_grants(account_id);

CREATE TABLE api_keys (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id      INTEGER NOT NULL REFERENCES accounts(id),
    kind            TEXT    NOT NULL CHECK (kind IN ('inference', 'provisioning')),
    name            TEXT    NOT NULL,
    key_hash        TEXT    NOT NULL UNIQUE,
    hint            TEXT    NOT NULL,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    expires_at      INTEGER,
    is_enabled      INTEGER NOT NULL DEFAULT 1,
    credit_limit    INTEGER,
    usage           INTEGER NOT NULL DEFAULT 0,
    last_used_at    INTEGER,
    deleted_at      INTEGER,
    rate_limit_rpm  INTEGER
);
CREATE INDEX api_keys_account ON api_keys(account_id, kind);

CREATE TABLE usage_records (
    id                   INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id           TEXT    NOT NULL UNIQUE,
    account_id           INTEGER NOT NULL REFERENCES accounts(id),
    key_id               INTEGER NOT NULL REFERENCES api_keys(id),
    model                TEXT    NOT NULL,
    endpoint             TEXT    NOT NULL,
    input_tokens         INTEGER NOT NULL,
    cached_input_tokens  INTEGER NOT NULL,
    output_tokens        INTEGER NOT NULL,
    cost                 INTEGER NOT NULL,
    status               INTEGER NOT NULL,
    latency_ms           INTEGER NOT NULL,
    created_at           INTEGER NOT NULL
);
CREATE INDEX usage_records_account_time ON usage_records(account_id, created_at);

CREATE TABLE usage_daily (
    account_id     INTEGER NOT NULL,
    day            TEXT    NOT NULL,
    key_id         INTEGER NOT NULL,
    model          TEXT    NOT NULL,
    requests       INTEGER NOT NULL,
    cost           INTEGER NOT NULL,
    input_tokens   INTEGER NOT NULL,
    output_tokens  INTEGER NOT NULL,
    PRIMARY KEY (account_id, day, key_id, model)
);
