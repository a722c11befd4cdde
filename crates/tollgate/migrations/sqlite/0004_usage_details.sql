-- What a usage record says beyond its charge (issues 13 and 14):
-- * requested_model: the model the client asked for, when another one served it (a
--   fallback); NULL when the model that served is the one asked for.
-- * provider: the provider that served (or was tried last, for a failure).
-- * attempts: upstream attempts made.
-- * estimated: 1 when the usage charged was counted by the gateway (the provider
--   reported none, or broke off), 0 when the provider reported it.
-- * loss: what the provider reported beyond the reservation, not charged (nano-dollars).
-- Adding columns with constant defaults rewrites nothing: old rows read the defaults.
ALTER TABLE usage_records ADD COLUMN requested_model TEXT;
ALTER TABLE usage_records ADD COLUMN provider TEXT;
ALTER TABLE usage_records ADD COLUMN attempts INTEGER NOT NULL DEFAULT 1;
ALTER TABLE usage_records ADD COLUMN estimated INTEGER NOT NULL DEFAULT 0;
ALTER TABLE usage_records ADD COLUMN loss INTEGER NOT NULL DEFAULT 0;
-- The daily roll-up counts them, so that activity can show them.
ALTER TABLE usage_daily ADD COLUMN estimated_requests INTEGER NOT NULL DEFAULT 0;
ALTER TABLE usage_daily ADD COLUMN fallback_requests INTEGER NOT NULL DEFAULT 0;
