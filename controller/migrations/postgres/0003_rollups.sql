-- Cold tier: 1 minute and 1 hour rollups per node and metric, recomputed from
-- raw rows for every hour a write touched (rollup_dirty), so late and
-- redelivered data are counted exactly once. last = value of the latest sample.
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

CREATE TABLE rollup_dirty (
    hour_ms   BIGINT NOT NULL PRIMARY KEY,
    marked_ms BIGINT NOT NULL
);

CREATE INDEX telemetry_ts ON telemetry (ts);
