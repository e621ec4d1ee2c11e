-- The service mode (a plain row, journaled as `systemMode`): one row keyed `current`.
-- Times are milliseconds since the epoch.
CREATE TABLE system_mode (
    id TEXT COLLATE "C" PRIMARY KEY,
    mode TEXT COLLATE "C" NOT NULL,
    reason TEXT,
    until BIGINT,
    set_by TEXT COLLATE "C" NOT NULL,
    set_at BIGINT NOT NULL
);
