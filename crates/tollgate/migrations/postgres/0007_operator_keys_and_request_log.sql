-- Operator keys and the indexes of the request log (issue 18;
-- mirrors migrations/sqlite).
CREATE TABLE operator_keys (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT   NOT NULL,
    key_hash    TEXT   NOT NULL UNIQUE,
    hint        TEXT   NOT NULL,
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);

-- GET /v1/account/requests: newest first by (created_at, id), from a cursor.
CREATE INDEX usage_records_account_time ON usage_records(account_id, created_at, id);
CREATE INDEX usage_records_key_time ON usage_records(key_id, created_at, id);
CREATE INDEX usage_records_account_model_time ON usage_records(account_id, model, created_at, id);

DROP INDEX credit_grants_account;
CREATE INDEX credit_grants_account ON credit_grants(account_id, id);
