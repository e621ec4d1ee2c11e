-- The operators' runbook checks a restored database by counting process_definitions (on
-- PostgreSQL with psql; here with `sqlite3 steadyflow.db "SELECT COUNT(*) FROM
-- process_definitions;"`). A read-only view over the deployed definitions (one row per
-- version), the same as on PostgreSQL; the engine itself never reads it.
CREATE VIEW process_definitions AS
SELECT id, key, version, name, checksum,
       strftime('%Y-%m-%dT%H:%M:%fZ', deployed_at / 1000.0, 'unixepoch') AS deployed_at
FROM definitions;
