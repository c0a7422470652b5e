-- Raw telemetry becomes a table partitioned by day on ts (native range
-- partitioning). The controller creates each day's partition ahead of time
-- and drops whole partitions at retention; telemetry_default catches samples
-- outside every partition (a Pi without RTC reporting 1970, a long backlog)
-- and is moved into a day's partition when that partition is created.
-- The primary key must contain the partition key: a sample's ts never
-- changes (the agent stores it with the sample), so (node_id, boot_id, seq, ts)
-- still identifies one sample and a redelivery still hits it.
ALTER TABLE telemetry RENAME TO telemetry_unpartitioned;
ALTER TABLE telemetry_unpartitioned RENAME CONSTRAINT telemetry_pkey TO telemetry_unpartitioned_pkey;
DROP INDEX telemetry_node_metric_ts;
DROP INDEX telemetry_ts;

CREATE TABLE telemetry (
    node_id  TEXT             NOT NULL,
    boot_id  TEXT             NOT NULL,
    seq      BIGINT           NOT NULL,
    ts       TIMESTAMPTZ      NOT NULL,
    metric   TEXT             NOT NULL,
    value    DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (node_id, boot_id, seq, ts)
) PARTITION BY RANGE (ts);

CREATE TABLE telemetry_default PARTITION OF telemetry DEFAULT;
CREATE INDEX telemetry_node_metric_ts ON telemetry (node_id, metric, ts);
CREATE INDEX telemetry_ts ON telemetry (ts);

INSERT INTO telemetry SELECT node_id, boot_id, seq, ts, metric, value FROM telemetry_unpartitioned;
DROP TABLE telemetry_unpartitioned;

-- Committed seq ranges above a run's ack watermark (batches committed out of
-- order, possibly by another controller replica). Read and rewritten under
-- the run's ack_state row lock, in the transaction that commits the rows.
CREATE TABLE ack_ranges (
    node_id   TEXT   NOT NULL,
    boot_id   TEXT   NOT NULL,
    start_seq BIGINT NOT NULL,
    end_seq   BIGINT NOT NULL,
    PRIMARY KEY (node_id, boot_id, start_seq)
);
