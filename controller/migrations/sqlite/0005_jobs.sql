-- Inference jobs, one row per finished job, for the dashboard and for audit.
-- payload is the encoded fleet.v1.JobView (every attempt, its site, reason and
-- timings; embeddings are not kept).
CREATE TABLE jobs (
    job_id        TEXT    NOT NULL PRIMARY KEY,
    model         TEXT    NOT NULL,
    status        TEXT    NOT NULL,
    site          TEXT    NOT NULL,
    node_id       TEXT    NOT NULL,
    submitted_ms  INTEGER NOT NULL,
    finished_ms   INTEGER NOT NULL,
    end_to_end_us INTEGER NOT NULL,
    inference_us  INTEGER NOT NULL,
    payload       BLOB    NOT NULL
);
CREATE INDEX jobs_submitted ON jobs (submitted_ms DESC);
CREATE INDEX jobs_node ON jobs (node_id, submitted_ms DESC);
