-- Enrolled nodes (docs/security.md): the public halves of the keys each node
-- made on the device, and the hash of its broker password. A revoked node
-- keeps its row (revoked_ms set) so its id and keys are never reused.
CREATE TABLE node_identities (
    node_id        TEXT    NOT NULL PRIMARY KEY,
    -- WireGuard public key (base64), and the next one during a rotation.
    wg_public_key  TEXT    NOT NULL,
    wg_next_key    TEXT,
    -- Ed25519 public key (base64) that signs every message of the node.
    signing_key    TEXT    NOT NULL,
    -- SHA-256 (hex) of the broker password.
    broker_hash    TEXT    NOT NULL,
    labels         TEXT    NOT NULL,
    overlay_address INTEGER NOT NULL,
    enrolled_ms    INTEGER  NOT NULL,
    revoked_ms     INTEGER
);
