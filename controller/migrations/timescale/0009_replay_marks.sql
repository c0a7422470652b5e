-- Each enrolled node's replay mark (docs/security.md, "Signed envelope"): the
-- newest boot and the highest msg_seq the controller took in it, saved every
-- second and at shutdown, so that after a restart nothing taken before it is
-- taken again. Only ever moves forward (replicas share it).
CREATE TABLE replay_marks (
    node_id  TEXT    NOT NULL PRIMARY KEY,
    boot_no  BIGINT  NOT NULL,
    msg_seq  BIGINT  NOT NULL
);
