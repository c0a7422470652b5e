-- The controller computes the 1 minute and 1 hour rollups itself, as on plain
-- PostgreSQL and SQLite (docs/schema.md): TimescaleDB's background scheduler,
-- which refreshed the continuous aggregates, cannot be relied on (it fails
-- every job on some builds, and is off on managed services and with
-- timescaledb.max_background_workers = 0). Same tables, same statements and
-- so the same answers on every backend.
DROP VIEW IF EXISTS telemetry_1h;
DROP VIEW IF EXISTS telemetry_1m;
DROP MATERIALIZED VIEW IF EXISTS telemetry_1h_agg;
DROP MATERIALIZED VIEW IF EXISTS telemetry_1m_agg;

CREATE TABLE telemetry_1m (
    node_id   TEXT             NOT NULL,
    metric    TEXT             NOT NULL,
    bucket_ms BIGINT           NOT NULL,
    count     BIGINT           NOT NULL,
    sum       DOUBLE PRECISION NOT NULL,
    min       DOUBLE PRECISION NOT NULL,
    max       DOUBLE PRECISION NOT NULL,
    last      DOUBLE PRECISION NOT NULL,
    last_ms   BIGINT           NOT NULL,
    PRIMARY KEY (node_id, metric, bucket_ms)
);

CREATE TABLE telemetry_1h (LIKE telemetry_1m INCLUDING ALL);

-- Every hour already stored is rolled up by the controller's next storage job.
INSERT INTO rollup_dirty (hour_ms, marked_ms)
SELECT DISTINCT (floor(extract(epoch FROM ts) / 3600) * 3600000)::int8, 0 FROM telemetry
ON CONFLICT (hour_ms) DO NOTHING;
