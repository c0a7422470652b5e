-- A read-only role for Grafana's "Spark Fleet store" data source: it reads
-- telemetry, its rollups and job records, and nothing else (no tokens, no
-- sessions, no keys). Run as the database's owner, then set its password:
--   psql "$DATABASE_URL" -f deploy/grafana/reader.sql
--   psql "$DATABASE_URL" -c '\password fleet_grafana'
-- tests/tests/grafana.rs runs every SQL panel as this role.
CREATE ROLE fleet_grafana LOGIN;
GRANT SELECT ON telemetry, telemetry_1m, telemetry_1h, jobs TO fleet_grafana;
