-- Idempotency keys (steadyflow_store::idempotency): not journaled, not in backups.
-- `answer` is the stored answer (JSON) once the request finished; times in ms.
CREATE TABLE idempotency_keys (
    key TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    owner TEXT NOT NULL,
    lease_until INTEGER NOT NULL,
    answer TEXT,
    created_at INTEGER NOT NULL
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
