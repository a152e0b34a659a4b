-- The black box: numeric readings per device and metric, log lines per
-- device and stream, and what a device sent that broke the contract.
CREATE TABLE readings (
    device_id BIGINT NOT NULL,
    metric TEXT NOT NULL,
    ts BIGINT NOT NULL,
    value DOUBLE PRECISION NOT NULL
);
CREATE INDEX readings_series ON readings (device_id, metric, ts);
CREATE INDEX readings_ts ON readings (ts);

CREATE TABLE device_logs (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id BIGINT NOT NULL,
    stream TEXT NOT NULL,
    ts BIGINT NOT NULL,
    line TEXT NOT NULL
);
CREATE INDEX device_logs_device ON device_logs (device_id, stream, ts);

CREATE TABLE telemetry_faults (
    device_id BIGINT PRIMARY KEY,
    count BIGINT NOT NULL,
    last_error TEXT NOT NULL,
    last_at BIGINT NOT NULL
);
