-- Steadyflow schema, version 1 (PostgreSQL).
-- Mirrors migrations/sqlite/0001_init.sql of the SQLite store: same tables and columns.
-- Timestamps are BIGINT milliseconds since the Unix epoch. JSON columns are JSONB, except
-- where the database never looks inside and only hands the text back: an instance's
-- runtime (engine-owned) is JSON, the journal's row images are TEXT; both spare the
-- server converting (or validating) every value written, a good part of its work per
-- command. Text columns use the "C" collation: identifiers compare and sort bytewise,
-- as in SQLite, and index comparisons are a plain memcmp instead of a locale-aware
-- strcoll.

CREATE TABLE definitions (
    id TEXT COLLATE "C" PRIMARY KEY,
    key TEXT COLLATE "C" NOT NULL,
    version INT NOT NULL,
    name TEXT COLLATE "C",
    checksum TEXT COLLATE "C" NOT NULL,
    xml TEXT COLLATE "C" NOT NULL,
    deployed_at BIGINT NOT NULL,
    UNIQUE (key, version)
);

CREATE TABLE instances (
    id TEXT COLLATE "C" PRIMARY KEY,
    definition_id TEXT COLLATE "C" NOT NULL,
    definition_key TEXT COLLATE "C" NOT NULL,
    business_key TEXT COLLATE "C",
    state TEXT COLLATE "C" NOT NULL,
    variables JSONB NOT NULL,
    -- Engine-owned, opaque to the store: stored as written.
    runtime JSON NOT NULL,
    version BIGINT NOT NULL,
    started_at BIGINT NOT NULL,
    ended_at BIGINT
) WITH (fillfactor = 70);
-- Every command updates its instance; room left on each page lets those updates be HOT
-- (no new index entries) while the state stays the same.
CREATE INDEX instances_definition_key ON instances (definition_key);
CREATE INDEX instances_business_key ON instances (business_key) WHERE business_key IS NOT NULL;
CREATE INDEX instances_state ON instances (state);

CREATE TABLE tasks (
    id TEXT COLLATE "C" PRIMARY KEY,
    instance_id TEXT COLLATE "C" NOT NULL,
    definition_id TEXT COLLATE "C" NOT NULL,
    activity_id TEXT COLLATE "C" NOT NULL,
    name TEXT COLLATE "C",
    assignee TEXT COLLATE "C",
    candidate_users JSONB NOT NULL,
    candidate_groups JSONB NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX tasks_instance ON tasks (instance_id);
CREATE INDEX tasks_assignee ON tasks (assignee);

CREATE TABLE external_tasks (
    id TEXT COLLATE "C" PRIMARY KEY,
    instance_id TEXT COLLATE "C" NOT NULL,
    definition_id TEXT COLLATE "C" NOT NULL,
    activity_id TEXT COLLATE "C" NOT NULL,
    topic TEXT COLLATE "C" NOT NULL,
    worker_id TEXT COLLATE "C",
    lock_expires_at BIGINT,
    retries INT,
    error_message TEXT COLLATE "C",
    retry_at BIGINT,
    created_at BIGINT NOT NULL
);
-- Fetchable tasks per topic in two range scans that never step over locked rows:
-- never-locked rows (lock_expires_at IS NULL) in creation order, expired locks by expiry.
-- `id` completes the fetch order (created_at, id): the planner then reads the index in
-- order and stops at max, with or without statistics, instead of sorting a backlog.
CREATE INDEX external_tasks_fetch ON external_tasks (topic, lock_expires_at, created_at, id);
CREATE INDEX external_tasks_instance ON external_tasks (instance_id);

CREATE TABLE timers (
    id TEXT COLLATE "C" PRIMARY KEY,
    instance_id TEXT COLLATE "C" NOT NULL,
    activity_id TEXT COLLATE "C" NOT NULL,
    due_at BIGINT NOT NULL,
    owner TEXT COLLATE "C",
    lock_until BIGINT,
    created_at BIGINT NOT NULL
);
CREATE INDEX timers_due ON timers (due_at);
CREATE INDEX timers_instance ON timers (instance_id);

CREATE TABLE incidents (
    id TEXT COLLATE "C" PRIMARY KEY,
    instance_id TEXT COLLATE "C" NOT NULL,
    activity_id TEXT COLLATE "C" NOT NULL,
    incident_type TEXT COLLATE "C" NOT NULL,
    message TEXT COLLATE "C" NOT NULL,
    external_task_id TEXT COLLATE "C",
    created_at BIGINT NOT NULL,
    resolved_at BIGINT
);
CREATE INDEX incidents_instance ON incidents (instance_id);

-- One row per engine command: the JSON array of the history events it produced, in
-- order; `time` is the commit time. (One row per event cost a third of the write
-- throughput.)
CREATE TABLE history (
    seq BIGSERIAL PRIMARY KEY,
    instance_id TEXT COLLATE "C" NOT NULL,
    time BIGINT NOT NULL,
    events JSONB NOT NULL
);
CREATE INDEX history_instance ON history (instance_id, seq);

-- One row per changed row, written in the transaction that changed it.
--
-- `seq` is the writing transaction's id (xid8) shifted left by 20 bits, plus the row's
-- position in the transaction (which writes all its rows in one statement). So seqs
-- follow the order in which transactions got their ids, and a reader that returns only
-- rows below `pg_snapshot_xmin << 20` (transactions older than every one still in
-- flight; see PgStore::journal_since) never skips a row when it resumes from the last
-- seq it saw: whatever commits later has a higher seq. (Values from a sequence would
-- not do: they are drawn in no particular order relative to the transactions' ids or
-- commits, and a row committed later could carry a lower seq than one already read.)
CREATE TABLE journal (
    seq BIGINT PRIMARY KEY DEFAULT (pg_current_xact_id()::text::bigint << 20),
    tx_time BIGINT NOT NULL,
    entity TEXT COLLATE "C" NOT NULL,
    entity_id TEXT COLLATE "C" NOT NULL,
    op TEXT COLLATE "C" NOT NULL,
    -- JSON text of the row image, NULL for deletes. Not JSONB nor JSON: an append-only
    -- log read back whole, written only by the store (from serde), never queried by
    -- content; storing the text as is spares converting or validating every image.
    row TEXT COLLATE "C"
);
