-- Black-box bundles a device uploaded for a black_box task: a one-time
-- upload token per execution (kept as its SHA-256), the file under the
-- data directory once it arrived.
CREATE TABLE black_box_bundles (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id BIGINT NOT NULL REFERENCES devices (id),
    execution_id BIGINT NOT NULL REFERENCES task_executions (id),
    token_sha256 TEXT NOT NULL UNIQUE,
    -- waiting, received
    state TEXT NOT NULL,
    size BIGINT,
    sha256 TEXT,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    received_at BIGINT
);
CREATE INDEX black_box_bundles_device ON black_box_bundles (device_id, id);
