-- The firmware repository: an image's bytes are a file under the data
-- directory named by its SHA-256; the row holds what a device and a DDI
-- client check (size, hashes, signature) and who may use it.
CREATE TABLE firmware_images (
    id INTEGER PRIMARY KEY,
    organisation_id BIGINT NOT NULL REFERENCES organisations (id),
    version TEXT NOT NULL,
    -- A device below it is not offered the image.
    min_version TEXT,
    notes TEXT NOT NULL,
    file_name TEXT NOT NULL,
    size BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    sha1 TEXT NOT NULL,
    md5 TEXT NOT NULL,
    -- base64url ed25519 over the digest, and the public key that made it.
    signature TEXT NOT NULL,
    signed_by TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX firmware_images_organisation ON firmware_images (organisation_id, id);
CREATE INDEX firmware_images_sha256 ON firmware_images (sha256);
-- The models an image is for; one version per model.
CREATE TABLE firmware_image_models (
    image_id BIGINT NOT NULL REFERENCES firmware_images (id) ON DELETE CASCADE,
    model_id BIGINT NOT NULL REFERENCES device_models (id),
    version TEXT NOT NULL,
    PRIMARY KEY (image_id, model_id)
);
CREATE UNIQUE INDEX firmware_image_models_version ON firmware_image_models (model_id, version);
