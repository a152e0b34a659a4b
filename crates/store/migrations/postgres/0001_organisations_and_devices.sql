-- Organisations form a tree: the operator, system integrators, business
-- customers. `path` is "/1/5/9/": a subtree is a prefix, in every dialect.
CREATE TABLE organisations (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    parent_id BIGINT REFERENCES organisations (id),
    kind TEXT NOT NULL CHECK (kind IN ('operator', 'integrator', 'customer')),
    name TEXT NOT NULL,
    path TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX organisations_parent_name ON organisations (parent_id, name);
CREATE INDEX organisations_path ON organisations (path);

CREATE TABLE device_models (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    vendor TEXT NOT NULL,
    hardware_revision TEXT NOT NULL,
    topic_segment TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE devices (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organisation_id BIGINT NOT NULL REFERENCES organisations (id),
    model_id BIGINT NOT NULL REFERENCES device_models (id),
    name TEXT NOT NULL,
    serial TEXT NOT NULL UNIQUE,
    mac TEXT NOT NULL UNIQUE,
    imei TEXT,
    iccid TEXT,
    labels TEXT NOT NULL,
    license_state TEXT NOT NULL,
    firmware_version TEXT,
    created_at BIGINT NOT NULL,
    last_seen_at BIGINT
);
CREATE INDEX devices_organisation ON devices (organisation_id, id);
CREATE INDEX devices_model ON devices (model_id, id);
