-- Cold tier: 1 minute and 1 hour rollups per node and metric, recomputed from
-- raw rows for every hour a write touched (rollup_dirty), so late and
-- redelivered data are counted exactly once. last = value of the latest sample.
CREATE TABLE telemetry_1m (
    node_id   TEXT    NOT NULL,
    metric    TEXT    NOT NULL,
    bucket_ms INTEGER NOT NULL,
    count     INTEGER NOT NULL,
    sum       REAL    NOT NULL,
    min       REAL    NOT NULL,
    max       REAL    NOT NULL,
    last      REAL    NOT NULL,
    last_ms   INTEGER NOT NULL,
    PRIMARY KEY (node_id, metric, bucket_ms)
) WITHOUT ROWID;

CREATE TABLE telemetry_1h (
    node_id   TEXT    NOT NULL,
    metric    TEXT    NOT NULL,
    bucket_ms INTEGER NOT NULL,
    count     INTEGER NOT NULL,
    sum       REAL    NOT NULL,
    min       REAL    NOT NULL,
    max       REAL    NOT NULL,
    last      REAL    NOT NULL,
    last_ms   INTEGER NOT NULL,
    PRIMARY KEY (node_id, metric, bucket_ms)
) WITHOUT ROWID;

-- Hours whose rollups must be recomputed; marked_ms tells a newer mark from the one a job read.
CREATE TABLE rollup_dirty (
    hour_ms   INTEGER NOT NULL PRIMARY KEY,
    marked_ms INTEGER NOT NULL
) WITHOUT ROWID;

CREATE INDEX telemetry_ts ON telemetry (ts_ms);
