-- Readings clustered by device, then time, then metric. A flush appends to
-- one place per device (10,000 hot pages for 10,000 devices) instead of one
-- per series (130,000 with 13 metrics each), so the pages a flush touches stay
-- inside the page cache as the table grows; a chart of one metric reads the
-- device's rows of its range and skips the other metrics. No index on ts:
-- roll-up, retention and the oldest reading go device by device through the
-- key, so an insert writes one tree, not two.
CREATE TABLE readings_by_time (
    device_id BIGINT NOT NULL,
    ts BIGINT NOT NULL,
    metric TEXT NOT NULL,
    value DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (device_id, ts, metric)
) WITHOUT ROWID;
INSERT OR IGNORE INTO readings_by_time SELECT device_id, ts, metric, value FROM readings;
DROP TABLE readings;
ALTER TABLE readings_by_time RENAME TO readings;
