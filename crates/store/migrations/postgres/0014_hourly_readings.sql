-- Hourly min/max/mean of every series, kept for a year while raw readings
-- go after a week; and how far the roll-up has come.
CREATE TABLE readings_hourly (
    device_id BIGINT NOT NULL,
    metric TEXT NOT NULL,
    hour BIGINT NOT NULL,
    min DOUBLE PRECISION NOT NULL,
    max DOUBLE PRECISION NOT NULL,
    mean DOUBLE PRECISION NOT NULL,
    count BIGINT NOT NULL,
    PRIMARY KEY (device_id, metric, hour)
);
CREATE INDEX readings_hourly_hour ON readings_hourly (hour);

CREATE TABLE job_marks (
    name TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
