-- Triage's schema, portable between SQLite and PostgreSQL (one code path through sqlx's Any
-- driver). Money is integer nano-dollars; times are RFC 3339 UTC text.

CREATE TABLE IF NOT EXISTS virtual_keys (
    id TEXT PRIMARY KEY,
    key_hash TEXT NOT NULL UNIQUE,
    user_id TEXT NOT NULL,
    team TEXT NOT NULL,
    tiers TEXT NOT NULL,
    models TEXT NOT NULL,
    is_admin INTEGER NOT NULL,
    budget_day_nanos BIGINT,
    budget_month_nanos BIGINT,
    created_at TEXT NOT NULL,
    revoked_at TEXT
);

CREATE TABLE IF NOT EXISTS budget_usage (
    scope TEXT NOT NULL,
    subject TEXT NOT NULL,
    tier TEXT NOT NULL,
    period TEXT NOT NULL,
    period_start TEXT NOT NULL,
    spent_nanos BIGINT NOT NULL,
    reserved_nanos BIGINT NOT NULL,
    PRIMARY KEY (scope, subject, tier, period, period_start)
);

CREATE TABLE IF NOT EXISTS requests (
    request_id TEXT PRIMARY KEY,
    ts TEXT NOT NULL,
    day TEXT NOT NULL,
    key_id TEXT,
    user_id TEXT,
    team TEXT,
    role TEXT,
    endpoint TEXT NOT NULL,
    requested_model TEXT NOT NULL,
    tier TEXT,
    model TEXT,
    provider TEXT,
    route_reason TEXT,
    score DOUBLE PRECISION,
    sensitivity TEXT,
    input_tokens BIGINT NOT NULL,
    cached_input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    reasoning_tokens BIGINT NOT NULL,
    cost_nanos BIGINT NOT NULL,
    baseline_cost_nanos BIGINT NOT NULL,
    usage_estimated INTEGER NOT NULL,
    latency_ms DOUBLE PRECISION NOT NULL,
    ttft_ms DOUBLE PRECISION,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    stream INTEGER NOT NULL
);

CREATE INDEX IF NOT EXISTS requests_day ON requests (day);

CREATE TABLE IF NOT EXISTS attempts (
    request_id TEXT NOT NULL,
    n INTEGER NOT NULL,
    model TEXT NOT NULL,
    provider TEXT NOT NULL,
    outcome TEXT NOT NULL,
    latency_ms DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (request_id, n)
);
