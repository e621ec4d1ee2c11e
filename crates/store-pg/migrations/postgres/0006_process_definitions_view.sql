-- The operators' runbook checks a restored database with
--   psql ... -c "SELECT COUNT(*) FROM process_definitions;"
-- A read-only view over the deployed definitions (one row per version) answers it; the
-- engine itself never reads it. The same view exists on SQLite.
CREATE VIEW process_definitions AS
SELECT id, key, version, name, checksum,
       to_timestamp(deployed_at / 1000.0) AS deployed_at
FROM definitions;
