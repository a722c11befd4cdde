-- A usage commit of one record, in under half the database's time (docs/cluster.md, "A
-- commit of one record"). Below a few thousand requests a second a replica's writer
-- commits each record as it comes, so most commits carry one record, and the answer waits
-- for each. Measured in one backend (a loop of calls, each its own transaction): the
-- function of migration 0015 takes about 300 µs per one-record call, of which its
-- statements' execution is about 100; the rest is starting their plans (the UNNEST of
-- nineteen arrays, the groupings, the CTEs) and the memory they take and give back. The
-- same work on the record's fields in plain statements takes 120-160 µs in all.
--
-- The function of 0015 is kept, renamed, for batches of more than one record, where its
-- cost is shared. The one-record path does what it does for one record: the record is
-- inserted unless its request id is in the ledger (exactly once: nothing else is added
-- when it is), the slot is taken the same way, the account and the key are checked with
-- the same errors, and the slot's rows are added to with the same bounds. The store suite
-- runs its exactness, refusal and overflow tests through both paths.

ALTER FUNCTION tollgate_record_usage(TEXT[], BIGINT[], BIGINT[], TEXT[], TEXT[], BIGINT[],
    BIGINT[], BIGINT[], BIGINT[], BIGINT[], BIGINT[], BIGINT[], TEXT[], TEXT[], BIGINT[],
    BOOLEAN[], BIGINT[], TEXT[], TEXT[])
    RENAME TO tollgate_record_usage_batch;

CREATE FUNCTION tollgate_record_usage(
    r_request_id TEXT[], r_account_id BIGINT[], r_key_id BIGINT[], r_model TEXT[],
    r_endpoint TEXT[], r_input_tokens BIGINT[], r_cached_input_tokens BIGINT[],
    r_output_tokens BIGINT[], r_cost BIGINT[], r_status BIGINT[], r_latency_ms BIGINT[],
    r_created_at BIGINT[], r_requested_model TEXT[], r_provider TEXT[], r_attempts BIGINT[],
    r_estimated BOOLEAN[], r_loss BIGINT[], r_day TEXT[], r_lease_id TEXT[])
RETURNS SETOF TEXT LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $fn$
DECLARE
    w_slot SMALLINT;
    s INT;
    inserted INT;
    known_account BOOLEAN;
    known_key BOOLEAN;
BEGIN
    IF cardinality(r_request_id) <> 1 THEN
        RETURN QUERY SELECT tollgate_record_usage_batch(r_request_id, r_account_id, r_key_id,
            r_model, r_endpoint, r_input_tokens, r_cached_input_tokens, r_output_tokens,
            r_cost, r_status, r_latency_ms, r_created_at, r_requested_model, r_provider,
            r_attempts, r_estimated, r_loss, r_day, r_lease_id);
        RETURN;
    END IF;

    INSERT INTO usage_records (request_id, account_id, key_id, model, endpoint,
        input_tokens, cached_input_tokens, output_tokens, cost, status, latency_ms,
        created_at, requested_model, provider, attempts, estimated, loss, lease_id)
    VALUES (r_request_id[1], r_account_id[1], r_key_id[1], r_model[1], r_endpoint[1],
        r_input_tokens[1], r_cached_input_tokens[1], r_output_tokens[1], r_cost[1],
        r_status[1], r_latency_ms[1], r_created_at[1], r_requested_model[1], r_provider[1],
        r_attempts[1], r_estimated[1], r_loss[1], r_lease_id[1])
    ON CONFLICT (request_id) DO NOTHING;
    GET DIAGNOSTICS inserted = ROW_COUNT;
    IF inserted = 0 THEN
        RETURN;
    END IF;

    -- The slot, as in the batch function.
    FOR s IN 0..15 LOOP
        IF pg_try_advisory_xact_lock(1953261415, s) THEN
            w_slot := s;
            EXIT;
        END IF;
    END LOOP;
    w_slot := COALESCE(w_slot, 15);

    SELECT EXISTS (SELECT 1 FROM accounts a WHERE a.id = r_account_id[1]),
        EXISTS (SELECT 1 FROM api_keys k WHERE k.id = r_key_id[1]
                AND k.account_id = r_account_id[1])
    INTO known_account, known_key;
    IF NOT known_account THEN
        RAISE EXCEPTION 'usage for account %, which does not exist', r_account_id[1]
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF NOT known_key THEN
        RAISE EXCEPTION 'usage for key % of account %, which does not exist', r_key_id[1],
            r_account_id[1] USING ERRCODE = 'foreign_key_violation';
    END IF;

    INSERT INTO account_charges AS c (account_id, slot, charged)
    VALUES (r_account_id[1], w_slot, r_cost[1])
    ON CONFLICT (account_id, slot) DO UPDATE SET
        charged = LEAST(GREATEST(c.charged::NUMERIC + excluded.charged, -9223372036854775808), 9223372036854775807)::BIGINT;

    INSERT INTO key_usage AS u (key_id, slot, account_id, usage, last_used_at)
    VALUES (r_key_id[1], w_slot, r_account_id[1], r_cost[1], r_created_at[1])
    ON CONFLICT (key_id, slot) DO UPDATE SET
        usage = LEAST(GREATEST(u.usage::NUMERIC + excluded.usage, -9223372036854775808), 9223372036854775807)::BIGINT,
        last_used_at = GREATEST(u.last_used_at, excluded.last_used_at);

    INSERT INTO usage_daily AS d (account_id, day, key_id, model, slot, requests, cost,
        input_tokens, output_tokens, estimated_requests, fallback_requests)
    VALUES (r_account_id[1], r_day[1], r_key_id[1], r_model[1], w_slot, 1, r_cost[1],
        r_input_tokens[1], r_output_tokens[1], r_estimated[1]::INT,
        (r_requested_model[1] IS NOT NULL)::INT)
    ON CONFLICT (account_id, day, key_id, model, slot) DO UPDATE SET
        requests = LEAST(GREATEST(d.requests::NUMERIC + excluded.requests,
            -9223372036854775808), 9223372036854775807)::BIGINT,
        cost = LEAST(GREATEST(d.cost::NUMERIC + excluded.cost,
            -9223372036854775808), 9223372036854775807)::BIGINT,
        input_tokens = LEAST(GREATEST(d.input_tokens::NUMERIC + excluded.input_tokens,
            -9223372036854775808), 9223372036854775807)::BIGINT,
        output_tokens = LEAST(GREATEST(d.output_tokens::NUMERIC + excluded.output_tokens,
            -9223372036854775808), 9223372036854775807)::BIGINT,
        estimated_requests = LEAST(GREATEST(d.estimated_requests::NUMERIC
            + excluded.estimated_requests, -9223372036854775808), 9223372036854775807)::BIGINT,
        fallback_requests = LEAST(GREATEST(d.fallback_requests::NUMERIC
            + excluded.fallback_requests, -9223372036854775808), 9223372036854775807)::BIGINT;

    RETURN NEXT r_request_id[1];
END
$fn$;
