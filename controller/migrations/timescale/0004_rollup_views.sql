-- The rollups under the names and columns every backend answers queries from
-- (docs/schema.md): bucket and last sample time in ms since the epoch.
CREATE VIEW telemetry_1m AS
SELECT node_id, metric, (extract(epoch FROM bucket) * 1000)::int8 AS bucket_ms,
       count, sum, min, max, last, (extract(epoch FROM last_ts) * 1000)::int8 AS last_ms
FROM telemetry_1m_agg;

CREATE VIEW telemetry_1h AS
SELECT node_id, metric, (extract(epoch FROM bucket) * 1000)::int8 AS bucket_ms,
       count, sum, min, max, last, (extract(epoch FROM last_ts) * 1000)::int8 AS last_ms
FROM telemetry_1h_agg;
