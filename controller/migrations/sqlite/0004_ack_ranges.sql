-- Committed seq ranges above a run's ack watermark (batches committed out of
-- order), rewritten in the transaction that commits the rows.
CREATE TABLE ack_ranges (
    node_id   TEXT    NOT NULL,
    boot_id   TEXT    NOT NULL,
    start_seq INTEGER NOT NULL,
    end_seq   INTEGER NOT NULL,
    PRIMARY KEY (node_id, boot_id, start_seq)
) WITHOUT ROWID;
