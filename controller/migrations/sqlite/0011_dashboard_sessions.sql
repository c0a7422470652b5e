-- The dashboard's login sessions (docs/dashboard.md): shared by every
-- controller replica and kept across restarts. id_hash is the SHA-256 (hex)
-- of the session cookie, never the cookie; token_hash the API token's hash
-- (api_tokens.token_hash), looked up again on every request, so a revoked
-- token's sessions end. Expired rows are swept at each login.
CREATE TABLE dashboard_sessions (
    id_hash          TEXT    NOT NULL PRIMARY KEY,
    token_hash       TEXT    NOT NULL,
    expires_unix_ms  BIGINT  NOT NULL
);
CREATE INDEX dashboard_sessions_token ON dashboard_sessions (token_hash);
CREATE INDEX dashboard_sessions_expires ON dashboard_sessions (expires_unix_ms);
