-- Desired state per node, versioned (ARCHITECTURE.md flow 3). The payload is
-- the encoded fleet.v1.DesiredState of that version.
CREATE TABLE desired_state (
    node_id    TEXT    NOT NULL PRIMARY KEY,
    version    INTEGER NOT NULL,
    payload    BLOB    NOT NULL,
    updated_ms INTEGER NOT NULL
);
