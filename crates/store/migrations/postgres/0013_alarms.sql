-- Fault management: alarm rules per organisation (and optionally model),
-- alarms with their lifecycle, webhooks, and leases for work that must
-- run once across several `telemark serve`.
CREATE TABLE alarm_rules (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organisation_id BIGINT NOT NULL REFERENCES organisations (id),
    model_id BIGINT REFERENCES device_models (id),
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    metric TEXT,
    comparison TEXT,
    threshold DOUBLE PRECISION,
    duration_secs BIGINT NOT NULL,
    expected_firmware TEXT,
    severity TEXT NOT NULL,
    enabled BOOLEAN NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX alarm_rules_organisation ON alarm_rules (organisation_id);

CREATE TABLE alarms (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    rule_id BIGINT NOT NULL REFERENCES alarm_rules (id),
    device_id BIGINT NOT NULL REFERENCES devices (id),
    organisation_id BIGINT NOT NULL REFERENCES organisations (id),
    state TEXT NOT NULL,
    severity TEXT NOT NULL,
    message TEXT NOT NULL,
    value DOUBLE PRECISION,
    raised_at BIGINT NOT NULL,
    acknowledged_at BIGINT,
    acknowledged_by TEXT,
    cleared_at BIGINT
);
-- At most one open alarm per rule and device.
CREATE UNIQUE INDEX alarms_open ON alarms (rule_id, device_id) WHERE state <> 'cleared';
CREATE INDEX alarms_organisation ON alarms (organisation_id, id);
CREATE INDEX alarms_device ON alarms (device_id, id);

CREATE TABLE webhooks (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organisation_id BIGINT NOT NULL REFERENCES organisations (id),
    url TEXT NOT NULL,
    secret TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
