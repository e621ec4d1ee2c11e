-- Idempotency keys (steadyflow_store::idempotency): not journaled, not in backups.
-- `answer` is the stored answer (JSON) once the request finished; times in ms.
CREATE TABLE idempotency_keys (
    key TEXT COLLATE "C" PRIMARY KEY,
    fingerprint TEXT COLLATE "C" NOT NULL,
    owner TEXT COLLATE "C" NOT NULL,
    lease_until BIGINT NOT NULL,
    answer TEXT,
    created_at BIGINT NOT NULL
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
