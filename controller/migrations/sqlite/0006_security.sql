-- Enrollment and access (docs/security.md). Secrets are stored only as
-- SHA-256 hashes (hex); the tokens themselves are shown once and never kept.

-- One-time bootstrap tokens for enrolling a node.
CREATE TABLE bootstrap_tokens (
    token_id    TEXT    NOT NULL PRIMARY KEY,
    hash        TEXT    NOT NULL UNIQUE,
    labels      TEXT    NOT NULL,
    created_ms  INTEGER  NOT NULL,
    expires_ms  INTEGER  NOT NULL,
    used_ms     INTEGER,
    used_by     TEXT,
    revoked_ms  INTEGER
);

-- Bearer tokens for the gRPC API, each with a role.
CREATE TABLE api_tokens (
    name        TEXT    NOT NULL PRIMARY KEY,
    hash        TEXT    NOT NULL UNIQUE,
    role        TEXT    NOT NULL,
    created_ms  INTEGER  NOT NULL,
    revoked_ms  INTEGER
);

-- Overlay addresses ever handed out: a row is never deleted, so an address
-- is never given twice (not even after its node was revoked).
CREATE TABLE overlay_addresses (
    address     INTEGER  NOT NULL PRIMARY KEY,
    node_id     TEXT    NOT NULL UNIQUE,
    allocated_ms INTEGER NOT NULL
);

-- Every mutating API call: who, what, when, and how it ended.
CREATE TABLE audit_log (
    at_ms       INTEGER  NOT NULL,
    actor       TEXT    NOT NULL,
    action      TEXT    NOT NULL,
    target      TEXT    NOT NULL,
    result      TEXT    NOT NULL
);
CREATE INDEX audit_log_at ON audit_log (at_ms DESC);
