-- Production evaluation (issue 15). Eval calls (the reference's answer and the judge's two
-- verdicts) are ledger rows of their own kind, so that spend reports keep them apart; one row
-- per evaluated request holds the outcome and the router's representation of the request (its
-- features, never its text unless store_text is on); feedback is one row per request.
ALTER TABLE requests ADD COLUMN kind TEXT NOT NULL DEFAULT 'request';

CREATE TABLE IF NOT EXISTS evals (
    request_id TEXT PRIMARY KEY,
    ts TEXT NOT NULL,
    day TEXT NOT NULL,
    key_id TEXT,
    user_id TEXT,
    team TEXT,
    role TEXT,
    endpoint TEXT NOT NULL,
    requested_model TEXT NOT NULL,
    reason TEXT NOT NULL,
    tier TEXT NOT NULL,
    model TEXT NOT NULL,
    reference_model TEXT NOT NULL,
    judge_model TEXT NOT NULL,
    outcome TEXT NOT NULL,
    verdict_first TEXT,
    verdict_second TEXT,
    inconsistent INTEGER NOT NULL,
    routed_cost_nanos BIGINT NOT NULL,
    reference_cost_nanos BIGINT NOT NULL,
    judge_cost_nanos BIGINT NOT NULL,
    score DOUBLE PRECISION,
    representation TEXT,
    prompt_text TEXT,
    answer_text TEXT,
    reference_text TEXT,
    error TEXT
);

CREATE INDEX IF NOT EXISTS evals_ts ON evals (ts);

CREATE TABLE IF NOT EXISTS feedback (
    request_id TEXT PRIMARY KEY,
    ts TEXT NOT NULL,
    score DOUBLE PRECISION NOT NULL,
    comment TEXT,
    key_id TEXT
);
