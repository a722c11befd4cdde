-- A batch's counters no longer look up each record among the inserted ones (docs/cluster.md,
-- "Large batches"). The batch function of migration 0015 (renamed by 0016) adds to the
-- counters only the records its insert wrote, so that a retried record is counted once;
-- each of its three counter statements kept a record by `request_id = ANY(written)`, a
-- scan of the inserted ids for every record: for a batch of n records, 3 n² / 2 string
-- comparisons. For the writer's largest batch (1,024 records) that was half of the
-- function's time (in one backend, paired: 46-54 ms per call, 23-25 ms without it).
--
-- When every record of the batch was inserted (no retry among them, the usual case) the
-- filter keeps them all, so it is not evaluated (a CASE, whose branches PostgreSQL
-- documents it evaluates only as needed; an OR's order is not documented). A batch with
-- a retried record filters as before. Nothing else changes: the same signature (replicas
-- of the previous release use it too; a rolling upgrade), the same slot, checks, order of
-- the rows and bounds.

CREATE OR REPLACE FUNCTION tollgate_record_usage_batch(
    r_request_id TEXT[], r_account_id BIGINT[], r_key_id BIGINT[], r_model TEXT[],
    r_endpoint TEXT[], r_input_tokens BIGINT[], r_cached_input_tokens BIGINT[],
    r_output_tokens BIGINT[], r_cost BIGINT[], r_status BIGINT[], r_latency_ms BIGINT[],
    r_created_at BIGINT[], r_requested_model TEXT[], r_provider TEXT[], r_attempts BIGINT[],
    r_estimated BOOLEAN[], r_loss BIGINT[], r_day TEXT[], r_lease_id TEXT[])
RETURNS SETOF TEXT LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $fn$
DECLARE
    written TEXT[];
    w_slot SMALLINT;
    s INT;
    bad_account BIGINT;
    bad_key BIGINT;
    all_new BOOLEAN;
BEGIN
    WITH ins AS (
        INSERT INTO usage_records (request_id, account_id, key_id, model, endpoint,
            input_tokens, cached_input_tokens, output_tokens, cost, status, latency_ms,
            created_at, requested_model, provider, attempts, estimated, loss, lease_id)
        SELECT * FROM UNNEST(r_request_id, r_account_id, r_key_id, r_model, r_endpoint,
            r_input_tokens, r_cached_input_tokens, r_output_tokens, r_cost, r_status,
            r_latency_ms, r_created_at, r_requested_model, r_provider, r_attempts,
            r_estimated, r_loss, r_lease_id)
          AS v(request_id, account_id, key_id, model, endpoint, input_tokens,
            cached_input_tokens, output_tokens, cost, status, latency_ms, created_at,
            requested_model, provider, attempts, estimated, loss, lease_id)
        ORDER BY request_id
        ON CONFLICT (request_id) DO NOTHING
        RETURNING request_id)
    SELECT array_agg(request_id) INTO written FROM ins;
    IF written IS NULL THEN
        RETURN;
    END IF;

    -- This transaction's slot: the first of 0..15 no other transaction holds. The lock is
    -- held until this transaction ends (after its commit's flush, as its row locks are),
    -- so no two writers in flight add to the same rows. More than 16 at once share the
    -- last slot and take turns on its rows, as every writer did before.
    FOR s IN 0..15 LOOP
        IF pg_try_advisory_xact_lock(1953261415, s) THEN
            w_slot := s;
            EXIT;
        END IF;
    END LOOP;
    w_slot := COALESCE(w_slot, 15);
    -- Every record of the batch was inserted: the filters below keep them all.
    all_new := cardinality(written) = cardinality(r_request_id);

    -- Added to the slot's rows, per account and per key. Each group also checks that its
    -- account exists, and its key is that account's (no foreign keys, migration 0013;
    -- accounts and keys are never deleted, so a plain read is enough); a group that does
    -- not refuses the batch, naming it.
    WITH g AS (
        SELECT n.account_id AS id, SUM(n.cost) AS cost,
            EXISTS (SELECT 1 FROM accounts a WHERE a.id = n.account_id) AS known
        FROM UNNEST(r_request_id, r_account_id, r_cost) AS n(request_id, account_id, cost)
        WHERE CASE WHEN all_new THEN TRUE ELSE n.request_id = ANY(written) END
        GROUP BY n.account_id),
    added AS (
        INSERT INTO account_charges AS c (account_id, slot, charged)
        SELECT g.id, w_slot, LEAST(GREATEST(g.cost, -9223372036854775808), 9223372036854775807)::BIGINT
        FROM g WHERE g.known ORDER BY g.id
        ON CONFLICT (account_id, slot) DO UPDATE SET
            charged = LEAST(GREATEST(c.charged::NUMERIC + excluded.charged, -9223372036854775808), 9223372036854775807)::BIGINT)
    SELECT g.id INTO bad_account FROM g WHERE NOT g.known LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'usage for account %, which does not exist', bad_account
            USING ERRCODE = 'foreign_key_violation';
    END IF;

    WITH g AS (
        SELECT n.key_id AS id, n.account_id AS account, SUM(n.cost) AS cost,
            MAX(n.created_at) AS at,
            EXISTS (SELECT 1 FROM api_keys k WHERE k.id = n.key_id
                    AND k.account_id = n.account_id) AS known
        FROM UNNEST(r_request_id, r_key_id, r_account_id, r_cost, r_created_at)
          AS n(request_id, key_id, account_id, cost, created_at)
        WHERE CASE WHEN all_new THEN TRUE ELSE n.request_id = ANY(written) END
        GROUP BY n.key_id, n.account_id),
    added AS (
        INSERT INTO key_usage AS u (key_id, slot, account_id, usage, last_used_at)
        SELECT g.id, w_slot, g.account, LEAST(GREATEST(g.cost, -9223372036854775808), 9223372036854775807)::BIGINT, g.at
        FROM g WHERE g.known ORDER BY g.id
        ON CONFLICT (key_id, slot) DO UPDATE SET
            usage = LEAST(GREATEST(u.usage::NUMERIC + excluded.usage, -9223372036854775808), 9223372036854775807)::BIGINT,
            last_used_at = GREATEST(u.last_used_at, excluded.last_used_at))
    SELECT g.id, g.account INTO bad_key, bad_account FROM g WHERE NOT g.known LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'usage for key % of account %, which does not exist', bad_key, bad_account
            USING ERRCODE = 'foreign_key_violation';
    END IF;

    INSERT INTO usage_daily (account_id, day, key_id, model, slot, requests, cost, input_tokens,
        output_tokens, estimated_requests, fallback_requests)
    SELECT n.account_id, n.day, n.key_id, n.model, w_slot,
        COUNT(*),
        LEAST(SUM(n.cost), 9223372036854775807)::BIGINT,
        LEAST(SUM(n.input_tokens), 9223372036854775807)::BIGINT,
        LEAST(SUM(n.output_tokens), 9223372036854775807)::BIGINT,
        SUM(n.estimated::INT), SUM((n.requested_model IS NOT NULL)::INT)
    FROM UNNEST(r_request_id, r_account_id, r_day, r_key_id, r_model, r_cost,
        r_input_tokens, r_output_tokens, r_estimated, r_requested_model)
      AS n(request_id, account_id, day, key_id, model, cost, input_tokens, output_tokens,
        estimated, requested_model)
    WHERE CASE WHEN all_new THEN TRUE ELSE n.request_id = ANY(written) END
    GROUP BY n.account_id, n.day, n.key_id, n.model
    ORDER BY n.account_id, n.day, n.key_id, n.model
    ON CONFLICT (account_id, day, key_id, model, slot) DO UPDATE SET
        requests = LEAST(GREATEST(usage_daily.requests::NUMERIC + excluded.requests,
            -9223372036854775808), 9223372036854775807)::BIGINT,
        cost = LEAST(GREATEST(usage_daily.cost::NUMERIC + excluded.cost,
            -9223372036854775808), 9223372036854775807)::BIGINT,
        input_tokens = LEAST(GREATEST(usage_daily.input_tokens::NUMERIC + excluded.input_tokens,
            -9223372036854775808), 9223372036854775807)::BIGINT,
        output_tokens = LEAST(GREATEST(usage_daily.output_tokens::NUMERIC + excluded.output_tokens,
            -9223372036854775808), 9223372036854775807)::BIGINT,
        estimated_requests = LEAST(GREATEST(usage_daily.estimated_requests::NUMERIC
            + excluded.estimated_requests, -9223372036854775808), 9223372036854775807)::BIGINT,
        fallback_requests = LEAST(GREATEST(usage_daily.fallback_requests::NUMERIC
            + excluded.fallback_requests, -9223372036854775808), 9223372036854775807)::BIGINT;

    RETURN QUERY SELECT unnest(written);
END
$fn$;
