-- Budgets that match how teams pay (issue 17):
-- * limit_reset: the key's credit_limit starts again every 'daily', 'weekly' or 'monthly'
--   window (00:00 UTC, weeks Monday to Sunday, calendar months); NULL: a lifetime limit.
--   A window's usage is read from usage_daily (the day of a record is the day its request
--   was reserved in), so nothing here resets and no job runs at midnight.
-- * allowed_models: a JSON array of the model ids the key may use; NULL: every model.
-- * previous_key_hash / previous_key_expires_at: after a rotation, the old secret's hash
--   and the end of its grace period (unix seconds); NULL when there is none.
ALTER TABLE api_keys ADD COLUMN limit_reset TEXT
    CHECK (limit_reset IN ('daily', 'weekly', 'monthly'));
ALTER TABLE api_keys ADD COLUMN allowed_models TEXT;
ALTER TABLE api_keys ADD COLUMN previous_key_hash TEXT;
ALTER TABLE api_keys ADD COLUMN previous_key_expires_at INTEGER;
CREATE INDEX api_keys_previous_hash ON api_keys(previous_key_hash)
    WHERE previous_key_hash IS NOT NULL;
