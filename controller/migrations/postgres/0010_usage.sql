-- Usage and quotas per API token (docs/security.md, "Usage and quotas").

-- What each token used, per hour and per UTC day: each controller replica
-- adds what it counted every second (INSERT ... ON CONFLICT DO UPDATE adding
-- to the counters). token is api_tokens.name (names are never reused), or
-- "anonymous" when api_auth is off.
CREATE TABLE api_usage (
    token               TEXT    NOT NULL,
    period              TEXT    NOT NULL,   -- 'hour' or 'day'
    start_ms            BIGINT  NOT NULL,   -- the period's start, ms since the Unix epoch (UTC)
    jobs                BIGINT  NOT NULL DEFAULT 0,
    node_inference_us   BIGINT  NOT NULL DEFAULT 0,
    cloud_inference_us  BIGINT  NOT NULL DEFAULT 0,
    queries             BIGINT  NOT NULL DEFAULT 0,
    rows_returned       BIGINT  NOT NULL DEFAULT 0,
    PRIMARY KEY (token, period, start_ms)
);
CREATE INDEX api_usage_period ON api_usage (period, start_ms);

-- Each token's quotas; 0 is unlimited.
ALTER TABLE api_tokens ADD COLUMN jobs_per_day BIGINT NOT NULL DEFAULT 0;
ALTER TABLE api_tokens ADD COLUMN inference_s_per_day BIGINT NOT NULL DEFAULT 0;
ALTER TABLE api_tokens ADD COLUMN queries_per_minute BIGINT NOT NULL DEFAULT 0;
