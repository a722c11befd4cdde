-- A key may opt in to having a request its budget cannot pay for sent with a lower output
-- limit (the largest it can pay for) instead of refused with 402.
ALTER TABLE api_keys ADD COLUMN clamp_max_tokens INTEGER NOT NULL DEFAULT 0;
