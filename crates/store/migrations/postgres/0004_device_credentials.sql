-- MQTT credentials of a device: a 256-bit secret kept as its SHA-256 (so a
-- reconnect storm costs no password hashing) and/or a client certificate
-- fingerprint. Presence: online and last seen.
CREATE TABLE device_credentials (
    device_id BIGINT PRIMARY KEY REFERENCES devices (id),
    secret_sha256 TEXT,
    certificate_sha256 TEXT,
    created_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX device_credentials_certificate ON device_credentials (certificate_sha256);

ALTER TABLE devices ADD COLUMN online BOOLEAN NOT NULL DEFAULT FALSE;
