-- What a usage record says beyond its charge (issues 13 and 14):
-- * requested_model: the model the client asked for, when another one served it (a
--   fallback); NULL when the model that served is the one asked for.
-- * provider: the provider that served (or was tried last, for a failure).
-- * attempts: upstream attempts made.
-- * estimated: true when the usage charged was counted by the gateway (the provider
--   reported none, or broke off), false when the provider reported it.
-- * loss: what the provider reported beyond the reservation, not charged (nano-dollars).
-- Adding columns with constant defaults rewrites nothing (PostgreSQL 11 and later): old rows read the defaults.
ALTER TABLE usage_records ADD COLUMN requested_model TEXT;
ALTER TABLE usage_records ADD COLUMN provider TEXT;
ALTER TABLE usage_records ADD COLUMN attempts BIGINT NOT NULL DEFAULT 1;
ALTER TABLE usage_records ADD COLUMN estimated BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE usage_records ADD COLUMN loss BIGINT NOT NULL DEFAULT 0;
-- The daily roll-up counts them, so that activity can show them.
ALTER TABLE usage_daily ADD COLUMN estimated_requests BIGINT NOT NULL DEFAULT 0;
ALTER TABLE usage_daily ADD COLUMN fallback_requests BIGINT NOT NULL DEFAULT 0;
