-- TimescaleDB schema (chosen at a new database's first start when
-- `CREATE EXTENSION IF NOT EXISTS timescaledb` succeeds; see docs/schema.md).
-- NOT RUN on the project's test machines: TimescaleDB cannot be installed
-- there. Needs TimescaleDB >= 2.9 (hierarchical continuous aggregates).
--
-- Raw telemetry in a hypertable of daily chunks. The primary key contains the
-- time column, as a hypertable requires; a sample's ts never changes, so a
-- redelivered sample still hits it.
CREATE TABLE telemetry (
    node_id  TEXT             NOT NULL,
    boot_id  TEXT             NOT NULL,
    seq      BIGINT           NOT NULL,
    ts       TIMESTAMPTZ      NOT NULL,
    metric   TEXT             NOT NULL,
    value    DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (node_id, boot_id, seq, ts)
);
SELECT create_hypertable('telemetry', 'ts', chunk_time_interval => INTERVAL '1 day');
CREATE INDEX telemetry_node_metric_ts ON telemetry (node_id, metric, ts);

-- Compressed per node and metric, in time order; the age comes from the
-- controller's [storage] compress_after (a policy set at every start).
ALTER TABLE telemetry SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'node_id, metric',
    timescaledb.compress_orderby = 'ts'
);

CREATE TABLE ack_state (
    node_id    TEXT        NOT NULL,
    boot_id    TEXT        NOT NULL,
    up_to_seq  BIGINT      NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (node_id, boot_id)
);

CREATE TABLE ack_ranges (
    node_id   TEXT   NOT NULL,
    boot_id   TEXT   NOT NULL,
    start_seq BIGINT NOT NULL,
    end_seq   BIGINT NOT NULL,
    PRIMARY KEY (node_id, boot_id, start_seq)
);

CREATE TABLE desired_state (
    node_id    TEXT        NOT NULL PRIMARY KEY,
    version    BIGINT      NOT NULL,
    payload    BYTEA       NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Unused on TimescaleDB (continuous aggregates replace the controller's
-- rollups) but kept so every backend has the same tables.
CREATE TABLE rollup_dirty (
    hour_ms   BIGINT NOT NULL PRIMARY KEY,
    marked_ms BIGINT NOT NULL
);
