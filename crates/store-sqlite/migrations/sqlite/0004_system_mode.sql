-- The service mode (a plain row, journaled as `systemMode`): one row keyed `current`.
-- Times are milliseconds since the epoch.
CREATE TABLE system_mode (
    id TEXT PRIMARY KEY,
    mode TEXT NOT NULL,
    reason TEXT,
    until INTEGER,
    set_by TEXT NOT NULL,
    set_at INTEGER NOT NULL
);
