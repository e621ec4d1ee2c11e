CREATE TABLE definitions (
    id TEXT PRIMARY KEY,
    key TEXT NOT NULL,
    version INTEGER NOT NULL,
    name TEXT,
    checksum TEXT NOT NULL,
    xml TEXT NOT NULL,
    deployed_at INTEGER NOT NULL,
    UNIQUE (key, version)
);

CREATE TABLE instances (
    id TEXT PRIMARY KEY,
    definition_id TEXT NOT NULL,
    definition_key TEXT NOT NULL,
    business_key TEXT,
    state TEXT NOT NULL,
    variables TEXT NOT NULL,
    runtime TEXT NOT NULL,
    version INTEGER NOT NULL,
    started_at INTEGER NOT NULL,
    ended_at INTEGER
);
CREATE INDEX instances_definition_key ON instances (definition_key);
CREATE INDEX instances_business_key ON instances (business_key) WHERE business_key IS NOT NULL;
CREATE INDEX instances_state ON instances (state);

CREATE TABLE tasks (
    id TEXT PRIMARY KEY,
    instance_id TEXT NOT NULL,
    definition_id TEXT NOT NULL,
    activity_id TEXT NOT NULL,
    name TEXT,
    assignee TEXT,
    candidate_users TEXT NOT NULL,
    candidate_groups TEXT NOT NULL,
    created_at INTEGER NOT NULL
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
    lock_expires_at INTEGER,
    retries INTEGER,
    error_message TEXT,
    retry_at INTEGER,
    created_at INTEGER NOT NULL
);
-- Fetchable tasks by topic without scanning locked ones: never-locked rows (NULL) in
-- creation order, expired locks by expiry.
CREATE INDEX external_tasks_fetch ON external_tasks (topic, lock_expires_at, created_at);
CREATE INDEX external_tasks_instance ON external_tasks (instance_id);

CREATE TABLE timers (
    id TEXT PRIMARY KEY,
    instance_id TEXT NOT NULL,
    activity_id TEXT NOT NULL,
    due_at INTEGER NOT NULL,
    owner TEXT,
    lock_until INTEGER,
    created_at INTEGER NOT NULL
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
    created_at INTEGER NOT NULL,
    resolved_at INTEGER
);
CREATE INDEX incidents_instance ON incidents (instance_id);

-- One row per engine command: one compact JSON document of the history events it
-- produced, in order (steadyflow_store::encode_history). One row per event cost a
-- third of the write throughput. `seq` only orders an instance's rows (a plain rowid:
-- AUTOINCREMENT would write sqlite_sequence on every insert).
CREATE TABLE history (
    seq INTEGER PRIMARY KEY,
    instance_id TEXT NOT NULL,
    time INTEGER NOT NULL,
    events TEXT NOT NULL
);
CREATE INDEX history_instance ON history (instance_id, seq);

CREATE TABLE journal (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    tx_time INTEGER NOT NULL,
    entity TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    op TEXT NOT NULL,
    row TEXT
);
