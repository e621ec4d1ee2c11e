-- Users and API tokens (plain rows, journaled as `user` and `apiToken`). Times are
-- milliseconds since the epoch; `groups` is a JSON array.
CREATE TABLE users (
    id TEXT COLLATE "C" PRIMARY KEY,
    role TEXT COLLATE "C" NOT NULL,
    groups JSONB NOT NULL,
    password_hash TEXT COLLATE "C",
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    disabled_at BIGINT
);

-- `hash` is the hex SHA-256 of the token's secret part; the secret itself is never kept.
CREATE TABLE api_tokens (
    id TEXT COLLATE "C" PRIMARY KEY,
    user_id TEXT COLLATE "C" NOT NULL,
    label TEXT COLLATE "C",
    hash TEXT COLLATE "C" NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    revoked_at BIGINT
);
CREATE INDEX api_tokens_user ON api_tokens (user_id);
