-- Desired configuration per device (set by configure jobs, for one device
-- or every device of a model) against what the device reported applying:
-- drift is desired_version <> reported_version.
CREATE TABLE device_config (
    device_id BIGINT PRIMARY KEY REFERENCES devices (id),
    desired_version BIGINT,
    desired_document TEXT,
    desired_job BIGINT,
    desired_at BIGINT,
    reported_version BIGINT,
    -- applied, or why the last application failed
    reported_state TEXT,
    reported_at BIGINT
);
