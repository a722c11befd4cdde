-- usage_daily shaped for GET /v1/account/activity, which sums an account's rows from a day
-- on (one range of the primary key, grouped by hash per day, model and key).
-- The primary key's index now also carries the sums (INCLUDE), so that range is read as
-- an index-only scan: an account's rows sit together in the index but are spread over
-- the table's pages among every other account's, which the scan no longer visits.
-- No index is added: the key is rebuilt in place, under the same name, so upserts still
-- find it by (account_id, day, key_id, model). Updates of the sums can no longer be HOT
-- (they change an indexed column), so each writes a new index entry.
-- Rebuilding takes an exclusive lock on usage_daily while the index is built (about
-- 1.5 s per 650,000 rows): usage batches of other replicas wait for it.

ALTER TABLE usage_daily
    DROP CONSTRAINT usage_daily_pkey,
    ADD CONSTRAINT usage_daily_pkey PRIMARY KEY (account_id, day, key_id, model)
        INCLUDE (requests, cost, input_tokens, output_tokens);
