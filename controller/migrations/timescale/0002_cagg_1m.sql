-- no-transaction
-- A continuous aggregate cannot be created inside a transaction block, so it
-- is alone in its migration. 1 minute buckets per node and metric.
CREATE MATERIALIZED VIEW telemetry_1m_agg WITH (timescaledb.continuous) AS
SELECT node_id, metric, time_bucket(INTERVAL '1 minute', ts) AS bucket,
       count(*) AS count, sum(value) AS sum, min(value) AS min, max(value) AS max,
       last(value, ts) AS last, max(ts) AS last_ts
FROM telemetry
GROUP BY node_id, metric, time_bucket(INTERVAL '1 minute', ts)
WITH NO DATA;
