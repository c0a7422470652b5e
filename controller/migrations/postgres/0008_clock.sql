-- The clock's high-water mark (controller/src/clock.rs): the latest time the
-- controller made a security decision at. Time never runs below it, so a wall
-- clock set back cannot stretch a token's life. One row.
CREATE TABLE clock_high_water (
    id       INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    at_ms    BIGINT  NOT NULL
);
INSERT INTO clock_high_water (id, at_ms) VALUES (1, 0);
