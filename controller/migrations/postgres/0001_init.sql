-- Raw telemetry: one row per sample. (node_id, boot_id, seq) is the sample's
-- identity; redelivered batches hit the primary key and are skipped.
CREATE TABLE telemetry (
    node_id  TEXT             NOT NULL,
    boot_id  TEXT             NOT NULL,
    seq      BIGINT           NOT NULL,
    ts       TIMESTAMPTZ      NOT NULL,
    metric   TEXT             NOT NULL,
    value    DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (node_id, boot_id, seq)
);

CREATE INDEX telemetry_node_metric_ts ON telemetry (node_id, metric, ts);

-- Highest contiguous seq committed per agent run, so the end-to-end Ack
-- survives a controller restart.
CREATE TABLE ack_state (
    node_id    TEXT        NOT NULL,
    boot_id    TEXT        NOT NULL,
    up_to_seq  BIGINT      NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (node_id, boot_id)
);
