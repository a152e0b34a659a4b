-- Service models (plans) and license keys: available -> bound (to one
-- device, with a signed token) -> deployed (the device acknowledged) ->
-- expired or revoked.
CREATE TABLE service_models (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    features TEXT NOT NULL,
    duration_days BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE license_keys (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    license_key TEXT NOT NULL UNIQUE,
    organisation_id BIGINT NOT NULL REFERENCES organisations (id),
    service_model_id BIGINT NOT NULL REFERENCES service_models (id),
    state TEXT NOT NULL,
    device_id BIGINT REFERENCES devices (id),
    token TEXT,
    created_at BIGINT NOT NULL,
    bound_at BIGINT,
    expires_at BIGINT
);
CREATE INDEX license_keys_organisation ON license_keys (organisation_id, id);
CREATE INDEX license_keys_device ON license_keys (device_id);

-- Secrets the platform makes for itself once (the license signing key).
CREATE TABLE platform_secrets (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
