-- Prompt-cache writes, priced apart from other input tokens (Anthropic bills them at 1.25x input).
ALTER TABLE requests ADD COLUMN cache_write_tokens BIGINT NOT NULL DEFAULT 0;
