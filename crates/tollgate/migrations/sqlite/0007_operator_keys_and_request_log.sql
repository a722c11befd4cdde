-- Operator keys and the indexes of the request log (issue 18).
--
-- operator_keys: the keys of /v1/admin/* (`tollgate operator-keys create`). Like the
-- account keys, only the SHA-256 of the secret is kept, with a hint; a revoked key keeps
-- its row (revoked_at set) so its id is never reused.
CREATE TABLE operator_keys (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT    NOT NULL,
    key_hash    TEXT    NOT NULL UNIQUE,
    hint        TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);

-- GET /v1/account/requests reads an account's records newest first, by (created_at, id),
-- a page at a time from a cursor; filtered by key or model it reads those indexes
-- instead. Each index costs every usage commit an insertion (migration 0003 dropped the
-- first one when nothing read it); the request log needs them to stay fast on millions
-- of rows. In SQLite every index ends with the rowid (`id`), the cursor's tie-breaker.
CREATE INDEX usage_records_account_time ON usage_records(account_id, created_at);
CREATE INDEX usage_records_key_time ON usage_records(key_id, created_at);
CREATE INDEX usage_records_account_model_time ON usage_records(account_id, model, created_at);

-- The grants of an account in order (GET /v1/admin/accounts/{id}/grants).
DROP INDEX credit_grants_account;
CREATE INDEX credit_grants_account ON credit_grants(account_id, id);
