-- Budget reservations with an owner and an expiry (issue 18). A reservation was one counter
-- (`budget_usage.reserved_nanos`) with no owner: a gateway killed with requests in flight, or a
-- request dropped between its per-line updates, left it reserved until the period rolled over.
--
-- Now every reservation is also one row per budget line, written in the same transaction as the
-- counters, owned by a gateway instance whose lease (`expires_ms`) its heartbeat renews. Settling
-- deletes the rows and moves the amount in one transaction; a reservation whose owner's lease
-- has expired (a crashed or frozen gateway) is released by any live gateway's sweeper.

CREATE TABLE IF NOT EXISTS gateway_instances (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid BIGINT NOT NULL,
    started_ms BIGINT NOT NULL,
    heartbeat_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL
);

CREATE TABLE IF NOT EXISTS budget_reservations (
    reservation_id TEXT NOT NULL,
    n INTEGER NOT NULL,
    scope TEXT NOT NULL,
    subject TEXT NOT NULL,
    tier TEXT NOT NULL,
    period TEXT NOT NULL,
    period_start TEXT NOT NULL,
    amount_nanos BIGINT NOT NULL,
    instance_id TEXT NOT NULL,
    request_id TEXT NOT NULL,
    key_id TEXT,
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (reservation_id, n)
);

CREATE INDEX IF NOT EXISTS budget_reservations_instance ON budget_reservations (instance_id);
CREATE INDEX IF NOT EXISTS budget_reservations_line ON budget_reservations (scope, subject, tier, period, period_start);
CREATE INDEX IF NOT EXISTS budget_reservations_key ON budget_reservations (key_id);

-- Reservations made before this migration have no owner and can never be told apart from a
-- crashed gateway's: they are dropped. A request still in flight in an older gateway during the
-- upgrade settles its real cost as before.
UPDATE budget_usage SET reserved_nanos = 0;
