-- Expiring credits (issue 17; src/credits.rs, docs/credits.md).
-- * credit_grants.expires_at: when a grant's remainder leaves the balance (NULL: never).
-- * credit_grants.consumed: demand (charges and debits) allocated to the grant, earliest
--   expiry first; credit_grants.expired: what left the balance when it expired. A grant's
--   remainder is amount - consumed - expired.
-- * accounts.allocated: how much of the account's demand (charged plus debits) has been
--   allocated to grants; accounts.expired: the sum of its grants' expired amounts, so the
--   balance (grants - charged - expired) needs no scan of the grants.
-- Existing rows start with nothing allocated: their demand is allocated on first use.
ALTER TABLE credit_grants ADD COLUMN expires_at BIGINT;
ALTER TABLE credit_grants ADD COLUMN consumed BIGINT NOT NULL DEFAULT 0;
ALTER TABLE credit_grants ADD COLUMN expired BIGINT NOT NULL DEFAULT 0;
ALTER TABLE accounts ADD COLUMN allocated BIGINT NOT NULL DEFAULT 0;
ALTER TABLE accounts ADD COLUMN expired BIGINT NOT NULL DEFAULT 0;
