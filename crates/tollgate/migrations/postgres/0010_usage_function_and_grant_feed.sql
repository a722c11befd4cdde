-- A batch of usage records written in one round trip (docs/cluster.md, "Profile"): the
-- records are inserted (a request id already there is skipped: exactly once), then the
-- account charges, the key usage and the daily roll-up take the newly written ones only.
-- Row locks are taken in one global order (records by request id, then accounts by id,
-- then keys by id, then the roll-up by its primary key), as the statements it replaces
-- did, so concurrent replicas cannot deadlock. Runs as one statement, so it is one
-- transaction: all of it or nothing. Answers the request ids that were new.
-- Every counter is held within BIGINT: past it the batch would be refused.
CREATE TYPE tollgate_new_usage AS (
    account_id BIGINT, key_id BIGINT, model TEXT, day TEXT, cost BIGINT, input_tokens BIGINT,
    output_tokens BIGINT, estimated BIGINT, fallback BIGINT, created_at BIGINT);

CREATE FUNCTION tollgate_record_usage(
    r_request_id TEXT[], r_account_id BIGINT[], r_key_id BIGINT[], r_model TEXT[],
    r_endpoint TEXT[], r_input_tokens BIGINT[], r_cached_input_tokens BIGINT[],
    r_output_tokens BIGINT[], r_cost BIGINT[], r_status BIGINT[], r_latency_ms BIGINT[],
    r_created_at BIGINT[], r_requested_model TEXT[], r_provider TEXT[], r_attempts BIGINT[],
    r_estimated BOOLEAN[], r_loss BIGINT[], r_day TEXT[])
RETURNS SETOF TEXT LANGUAGE plpgsql AS $fn$
DECLARE
    written TEXT[];
    fresh tollgate_new_usage[];
BEGIN
    WITH ins AS (
        INSERT INTO usage_records (request_id, account_id, key_id, model, endpoint,
            input_tokens, cached_input_tokens, output_tokens, cost, status, latency_ms,
            created_at, requested_model, provider, attempts, estimated, loss)
        SELECT * FROM UNNEST(r_request_id, r_account_id, r_key_id, r_model, r_endpoint,
            r_input_tokens, r_cached_input_tokens, r_output_tokens, r_cost, r_status,
            r_latency_ms, r_created_at, r_requested_model, r_provider, r_attempts,
            r_estimated, r_loss)
          AS v(request_id, account_id, key_id, model, endpoint, input_tokens,
            cached_input_tokens, output_tokens, cost, status, latency_ms, created_at,
            requested_model, provider, attempts, estimated, loss)
        ORDER BY request_id
        ON CONFLICT (request_id) DO NOTHING
        RETURNING request_id)
    SELECT array_agg(request_id) INTO written FROM ins;
    IF written IS NULL THEN
        RETURN;
    END IF;

    SELECT array_agg(ROW(n.account_id, n.key_id, n.model, n.day, n.cost, n.input_tokens,
            n.output_tokens, n.estimated::INT, (n.requested_model IS NOT NULL)::INT,
            n.created_at)::tollgate_new_usage)
    INTO fresh
    FROM UNNEST(r_request_id, r_account_id, r_key_id, r_model, r_day, r_cost,
        r_input_tokens, r_output_tokens, r_estimated, r_requested_model, r_created_at)
      AS n(request_id, account_id, key_id, model, day, cost, input_tokens, output_tokens,
        estimated, requested_model, created_at)
    JOIN UNNEST(written) AS w(request_id) ON w.request_id = n.request_id;

    PERFORM 1 FROM accounts
    WHERE id IN (SELECT account_id FROM UNNEST(fresh)) ORDER BY id FOR NO KEY UPDATE;
    UPDATE accounts AS a
    SET charged = LEAST(GREATEST(a.charged::NUMERIC + v.cost, -9223372036854775808),
        9223372036854775807)::BIGINT
    FROM (SELECT account_id, SUM(cost) AS cost FROM UNNEST(fresh) GROUP BY account_id) AS v
    WHERE a.id = v.account_id;

    PERFORM 1 FROM api_keys
    WHERE id IN (SELECT key_id FROM UNNEST(fresh)) ORDER BY id FOR NO KEY UPDATE;
    UPDATE api_keys AS k
    SET usage = LEAST(GREATEST(k.usage::NUMERIC + v.cost, -9223372036854775808),
        9223372036854775807)::BIGINT,
        last_used_at = GREATEST(k.last_used_at, v.last_used_at)
    FROM (SELECT key_id, SUM(cost) AS cost, MAX(created_at) AS last_used_at
          FROM UNNEST(fresh) GROUP BY key_id) AS v
    WHERE k.id = v.key_id;

    INSERT INTO usage_daily (account_id, day, key_id, model, requests, cost, input_tokens,
        output_tokens, estimated_requests, fallback_requests)
    SELECT account_id, day, key_id, model,
        COUNT(*),
        LEAST(SUM(cost), 9223372036854775807)::BIGINT,
        LEAST(SUM(input_tokens), 9223372036854775807)::BIGINT,
        LEAST(SUM(output_tokens), 9223372036854775807)::BIGINT,
        SUM(estimated), SUM(fallback)
    FROM UNNEST(fresh)
    GROUP BY account_id, day, key_id, model
    ORDER BY account_id, day, key_id, model
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

-- The change feed of credit grants (docs/cluster.md): every replica listens on
-- `tollgate_grants` and re-reads only the accounts named, instead of every account
-- every second. A grant, a correction or an expiry changes a row of credit_grants.
CREATE FUNCTION tollgate_notify_grant() RETURNS TRIGGER LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM pg_notify('tollgate_grants', COALESCE(NEW.account_id, OLD.account_id)::TEXT);
    RETURN NULL;
END
$fn$;

CREATE TRIGGER credit_grants_notify AFTER INSERT OR UPDATE OR DELETE ON credit_grants
    FOR EACH ROW EXECUTE FUNCTION tollgate_notify_grant();
