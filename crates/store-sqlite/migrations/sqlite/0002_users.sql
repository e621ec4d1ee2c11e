-- Users and API tokens (plain rows, journaled as `user` and `apiToken`). Times are
-- milliseconds since the epoch; `groups` is a JSON array.
CREATE TABLE users (
    id TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    groups TEXT NOT NULL,
    password_hash TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    disabled_at INTEGER
);

-- `hash` is the hex SHA-256 of the token's secret part; the secret itself is never kept.
CREATE TABLE api_tokens (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    label TEXT,
    hash TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    revoked_at INTEGER
);
CREATE INDEX api_tokens_user ON api_tokens (user_id);
