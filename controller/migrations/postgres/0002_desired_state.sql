-- Desired state per node, versioned (ARCHITECTURE.md flow 3). The payload is
-- the encoded fleet.v1.DesiredState of that version.
CREATE TABLE desired_state (
    node_id    TEXT        NOT NULL PRIMARY KEY,
    version    BIGINT      NOT NULL,
    payload    BYTEA       NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
