-- Budget slices (docs/cluster.md, "Budget leases"): a replica with steady traffic on a key
-- reserves a slice of its budget in Redis and serves the key's next requests from it in
-- memory. Each record served from a slice names it, so that the check of a budget can ask
-- the ledger how much of a slice is already committed (the sum of its records), as it asks
-- whether a single request's record is. Most records are not served from a slice: the
-- index holds only those that are.
ALTER TABLE usage_records ADD COLUMN lease_id TEXT;
CREATE INDEX usage_records_lease_id ON usage_records (lease_id) WHERE lease_id IS NOT NULL;

-- The usage function with the slice of each record. The function of migration 0013 (one
-- argument fewer, records without a slice) stays for replicas of the previous release
-- during a rolling upgrade.
CREATE FUNCTION tollgate_record_usage(
    r_request_id TEXT[], r_account_id BIGINT[], r_key_id BIGINT[], r_model TEXT[],
    r_endpoint TEXT[], r_input_tokens BIGINT[], r_cached_input_tokens BIGINT[],
    r_output_tokens BIGINT[], r_cost BIGINT[], r_status BIGINT[], r_latency_ms BIGINT[],
    r_created_at BIGINT[], r_requested_model TEXT[], r_provider TEXT[], r_attempts BIGINT[],
    r_estimated BOOLEAN[], r_loss BIGINT[], r_day TEXT[], r_lease_id TEXT[])
RETURNS SETOF TEXT LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $fn$
DECLARE
    written TEXT[];
    g RECORD;
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

    FOR g IN SELECT n.account_id AS id, SUM(n.cost) AS cost
        FROM UNNEST(r_request_id, r_account_id, r_cost) AS n(request_id, account_id, cost)
        WHERE n.request_id = ANY(written)
        GROUP BY n.account_id ORDER BY n.account_id
    LOOP
        UPDATE accounts
        SET charged = LEAST(GREATEST(charged::NUMERIC + g.cost, -9223372036854775808),
            9223372036854775807)::BIGINT
        WHERE id = g.id;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'usage for account %, which does not exist', g.id
                USING ERRCODE = 'foreign_key_violation';
        END IF;
    END LOOP;

    FOR g IN SELECT n.key_id AS id, n.account_id AS account, SUM(n.cost) AS cost,
            MAX(n.created_at) AS at
        FROM UNNEST(r_request_id, r_key_id, r_account_id, r_cost, r_created_at)
          AS n(request_id, key_id, account_id, cost, created_at)
        WHERE n.request_id = ANY(written)
        GROUP BY n.key_id, n.account_id ORDER BY n.key_id, n.account_id
    LOOP
        UPDATE api_keys
        SET usage = LEAST(GREATEST(usage::NUMERIC + g.cost, -9223372036854775808),
            9223372036854775807)::BIGINT,
            last_used_at = GREATEST(last_used_at, g.at)
        WHERE id = g.id AND account_id = g.account;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'usage for key % of account %, which does not exist', g.id, g.account
                USING ERRCODE = 'foreign_key_violation';
        END IF;
    END LOOP;

    INSERT INTO usage_daily (account_id, day, key_id, model, requests, cost, input_tokens,
        output_tokens, estimated_requests, fallback_requests)
    SELECT n.account_id, n.day, n.key_id, n.model,
        COUNT(*),
        LEAST(SUM(n.cost), 9223372036854775807)::BIGINT,
        LEAST(SUM(n.input_tokens), 9223372036854775807)::BIGINT,
        LEAST(SUM(n.output_tokens), 9223372036854775807)::BIGINT,
        SUM(n.estimated::INT), SUM((n.requested_model IS NOT NULL)::INT)
    FROM UNNEST(r_request_id, r_account_id, r_day, r_key_id, r_model, r_cost,
        r_input_tokens, r_output_tokens, r_estimated, r_requested_model)
      AS n(request_id, account_id, day, key_id, model, cost, input_tokens, output_tokens,
        estimated, requested_model)
    WHERE n.request_id = ANY(written)
    GROUP BY n.account_id, n.day, n.key_id, n.model
    ORDER BY n.account_id, n.day, n.key_id, n.model
    ON CONFLICT (account_id, day, key_id, model) DO UPDATE SET
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
