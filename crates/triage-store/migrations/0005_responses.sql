-- Stored responses of the Responses API, for `previous_response_id` (issue 19). A row holds what
-- one response added to its conversation (its request's new input items, then its output items,
-- as a JSON array) and the response it continued; a conversation is the chain of rows back to
-- one without a predecessor. `key_id` is the virtual key that made it (NULL without keys): only
-- that key may continue it. Bounded by age and row count (swept by the gateway).
CREATE TABLE IF NOT EXISTS stored_responses (
    id TEXT PRIMARY KEY,
    previous_id TEXT,
    key_id TEXT,
    created_ms BIGINT NOT NULL,
    items TEXT NOT NULL
);

CREATE INDEX IF NOT EXISTS stored_responses_created ON stored_responses (created_ms);
