-- Steadyflow schema, version 1 (PostgreSQL).
-- Mirrors migrations/sqlite/0001_init.sql of the SQLite store: same tables and columns.
-- Timestamps are BIGINT milliseconds since the Unix epoch; JSON columns are JSONB.

CREATE TABLE definitions (
    id TEXT PRIMARY KEY,
    key TEXT NOT NULL,
    version INT NOT NULL,
    name TEXT,
    checksum TEXT NOT NULL,
    xml TEXT NOT NULL,
    deployed_at BIGINT NOT NULL,
    UNIQUE (key, version)
);

CREATE TABLE instances (
    id TEXT PRIMARY KEY,
    definition_id TEXT NOT NULL,
    definition_key TEXT NOT NULL,
    business_key TEXT,
    state TEXT NOT NULL,
    variables JSONB NOT NULL,
    runtime JSONB NOT NULL,
    version BIGINT NOT NULL,
    started_at BIGINT NOT NULL,
    ended_at BIGINT
);
CREATE INDEX instances_definition_key ON instances (definition_key);
CREATE INDEX instances_business_key ON instances (business_key);
CREATE INDEX instances_state ON instances (state);

CREATE TABLE tasks (
    id TEXT PRIMARY KEY,
    instance_id TEXT NOT NULL,
    definition_id TEXT NOT NULL,
    activity_id TEXT NOT NULL,
    name TEXT,
    assignee TEXT,
    candidate_users JSONB NOT NULL,
    candidate_groups JSONB NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX tasks_instance ON tasks (instance_id);
CREATE INDEX tasks_assignee ON tasks (assignee);

CREATE TABLE external_tasks (
    id TEXT PRIMARY KEY,
    instance_id TEXT NOT NULL,
    definition_id TEXT NOT NULL,
    activity_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    worker_id TEXT,
    lock_expires_at BIGINT,
    retries INT,
    error_message TEXT,
    retry_at BIGINT,
    created_at BIGINT NOT NULL
);
CREATE INDEX external_tasks_topic ON external_tasks (topic, created_at);
CREATE INDEX external_tasks_instance ON external_tasks (instance_id);

CREATE TABLE timers (
    id TEXT PRIMARY KEY,
    instance_id TEXT NOT NULL,
    activity_id TEXT NOT NULL,
    due_at BIGINT NOT NULL,
    owner TEXT,
    lock_until BIGINT,
    created_at BIGINT NOT NULL
);
CREATE INDEX timers_due ON timers (due_at);
CREATE INDEX timers_instance ON timers (instance_id);

CREATE TABLE incidents (
    id TEXT PRIMARY KEY,
    instance_id TEXT NOT NULL,
    activity_id TEXT NOT NULL,
    incident_type TEXT NOT NULL,
    message TEXT NOT NULL,
    external_task_id TEXT,
    created_at BIGINT NOT NULL,
    resolved_at BIGINT
);
CREATE INDEX incidents_instance ON incidents (instance_id);

CREATE TABLE history (
    seq BIGSERIAL PRIMARY KEY,
    instance_id TEXT NOT NULL,
    time BIGINT NOT NULL,
    event TEXT NOT NULL,
    activity_id TEXT,
    detail JSONB NOT NULL
);
CREATE INDEX history_instance ON history (instance_id, seq);

-- One row per changed row, written in the transaction that changed it. `xid` lets
-- readers ship only rows whose transaction can no longer be overtaken by a
-- lower-seq transaction that is still in flight (see PgStore::journal_since).
CREATE TABLE journal (
    seq BIGSERIAL PRIMARY KEY,
    xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    tx_time BIGINT NOT NULL,
    entity TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    op TEXT NOT NULL,
    row JSONB
);
