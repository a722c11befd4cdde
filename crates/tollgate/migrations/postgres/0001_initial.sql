-- Accounts, credit grants, keys and the usage ledger (PostgreSQL; mirrors migrations/sqlite).
-- Money is BIGINT nano-dollars; times are BIGINT unix seconds (UTC); days are 'YYYY-MM-DD'.
-- credit_grants and usage_records are append-only; accounts.charged, api_keys.usage and
-- usage_daily are derived from usage_records in the same transaction that appends to it.

CREATE TABLE accounts (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT   NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL,
    charged     BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE credit_grants (
    id          BIGSERIAL PRIMARY KEY,
    account_id  BIGINT NOT NULL REFERENCES accounts(id),
    amount      BIGINT NOT NULL,
    note        TEXT,
    created_at  BIGINT NOT NULL
);
CREATE INDEX credit_grants_account ON credit_grants(account_id);

CREATE TABLE api_keys (
    id              BIGSERIAL PRIMARY KEY,
    account_id      BIGINT  NOT NULL REFERENCES accounts(id),
    kind            TEXT    NOT NULL CHECK (kind IN ('inference', 'provisioning')),
    name            TEXT    NOT NULL,
    key_hash        TEXT    NOT NULL UNIQUE,
    hint            TEXT    NOT NULL,
    created_at      BIGINT  NOT NULL,
    updated_at      BIGINT  NOT NULL,
    expires_at      BIGINT,
    is_enabled      BOOLEAN NOT NULL DEFAULT TRUE,
    credit_limit    BIGINT,
    usage           BIGINT  NOT NULL DEFAULT 0,
    last_used_at    BIGINT,
    deleted_at      BIGINT,
    rate_limit_rpm  BIGINT
);
CREATE INDEX api_keys_account ON api_keys(account_id, kind);

CREATE TABLE usage_records (
    id                   BIGSERIAL PRIMARY KEY,
    request_id           TEXT   NOT NULL UNIQUE,
    account_id           BIGINT NOT NULL REFERENCES accounts(id),
    key_id               BIGINT NOT NULL REFERENCES api_keys(id),
    model                TEXT   NOT NULL,
    endpoint             TEXT   NOT NULL,
    input_tokens         BIGINT NOT NULL,
    cached_input_tokens  BIGINT NOT NULL,
    output_tokens        BIGINT NOT NULL,
    cost                 BIGINT NOT NULL,
    status               BIGINT NOT NULL,
    latency_ms           BIGINT NOT NULL,
    created_at           BIGINT NOT NULL
);
CREATE INDEX usage_records_account_time ON usage_records(account_id, created_at);

CREATE TABLE usage_daily (
    account_id     BIGINT NOT NULL,
    day            TEXT   NOT NULL,
    key_id         BIGINT NOT NULL,
    model          TEXT   NOT NULL,
    requests       BIGINT NOT NULL,
    cost           BIGINT NOT NULL,
    input_tokens   BIGINT NOT NULL,
    output_tokens  BIGINT NOT NULL,
    PRIMARY KEY (account_id, day, key_id, model)
);
