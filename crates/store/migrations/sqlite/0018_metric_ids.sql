-- Metric names once, in their own table; a reading carries the name's
-- integer id. Rows shrink from ~45 to ~25 bytes: fewer pages written per
-- flush, integer compares in the key, less WAL to checkpoint.
CREATE TABLE metrics (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
);
INSERT INTO metrics (name) SELECT DISTINCT metric FROM readings ORDER BY metric;
CREATE TABLE readings_by_metric_id (
    device_id BIGINT NOT NULL,
    ts BIGINT NOT NULL,
    metric_id INTEGER NOT NULL,
    value DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (device_id, ts, metric_id)
) WITHOUT ROWID;
INSERT INTO readings_by_metric_id
    SELECT r.device_id, r.ts, m.id, r.value FROM readings r JOIN metrics m ON m.name = r.metric;
DROP TABLE readings;
ALTER TABLE readings_by_metric_id RENAME TO readings;
