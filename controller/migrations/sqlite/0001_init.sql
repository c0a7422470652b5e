-- Raw telemetry: one row per sample. (node_id, boot_id, seq) is the sample's
-- identity; redelivered batches hit the primary key and are skipped.
CREATE TABLE telemetry (
    node_id  TEXT    NOT NULL,
    boot_id  TEXT    NOT NULL,
    seq      INTEGER NOT NULL,
    ts_ms    INTEGER NOT NULL, -- sample time, ms since the Unix epoch (UTC)
    metric   TEXT    NOT NULL,
    value    REAL    NOT NULL,
    PRIMARY KEY (node_id, boot_id, seq)
) WITHOUT ROWID;

CREATE INDEX telemetry_node_metric_ts ON telemetry (node_id, metric, ts_ms);

-- Highest contiguous seq committed per agent run, so the end-to-end Ack
-- survives a controller restart.
CREATE TABLE ack_state (
    node_id    TEXT    NOT NULL,
    boot_id    TEXT    NOT NULL,
    up_to_seq  INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (node_id, boot_id)
) WITHOUT ROWID;
