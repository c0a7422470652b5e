-- Staged rollouts (docs/rollouts.md), resumed from here after a restart.
-- spec is the encoded fleet.v1.RolloutSpec; state the fleet.v1.RolloutState
-- (and RolloutNodeState) number. forgiven and cleared are set when a stopped
-- rollout is resumed: failures and batches before it no longer count.
CREATE TABLE rollouts (
    rollout_id  TEXT    NOT NULL PRIMARY KEY,
    spec        BYTEA   NOT NULL,
    state       INTEGER NOT NULL,
    reason      TEXT    NOT NULL DEFAULT '',
    forgiven    INTEGER NOT NULL DEFAULT 0,
    cleared     INTEGER NOT NULL DEFAULT 0,
    created_by  TEXT    NOT NULL,
    created_ms  BIGINT  NOT NULL,
    updated_ms  BIGINT  NOT NULL
);
CREATE TABLE rollout_nodes (
    rollout_id       TEXT    NOT NULL REFERENCES rollouts (rollout_id) ON DELETE CASCADE,
    node_id          TEXT    NOT NULL,
    batch            INTEGER NOT NULL,
    state            INTEGER NOT NULL,
    desired_version  BIGINT  NOT NULL DEFAULT 0,
    reason           TEXT    NOT NULL DEFAULT '',
    started_ms       BIGINT  NOT NULL DEFAULT 0,
    finished_ms      BIGINT  NOT NULL DEFAULT 0,
    PRIMARY KEY (rollout_id, node_id)
);
CREATE INDEX rollouts_state ON rollouts (state);
