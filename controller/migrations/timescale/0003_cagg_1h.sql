-- no-transaction
-- 1 hour buckets built from the 1 minute aggregate (hierarchical continuous
-- aggregate, TimescaleDB >= 2.9), so they outlive the raw rows.
CREATE MATERIALIZED VIEW telemetry_1h_agg WITH (timescaledb.continuous) AS
SELECT node_id, metric, time_bucket(INTERVAL '1 hour', bucket) AS bucket,
       sum(count)::bigint AS count, sum(sum) AS sum, min(min) AS min, max(max) AS max,
       last(last, last_ts) AS last, max(last_ts) AS last_ts
FROM telemetry_1m_agg
GROUP BY node_id, metric, time_bucket(INTERVAL '1 hour', bucket)
WITH NO DATA;
