-- One record per import batch (CSV file or ERP JSON), with every rejected
-- row and why.
CREATE TABLE device_imports (
    id INTEGER PRIMARY KEY,
    organisation_id BIGINT NOT NULL REFERENCES organisations (id),
    actor TEXT NOT NULL,
    source_name TEXT NOT NULL,
    partial BOOLEAN NOT NULL,
    rows_accepted BIGINT NOT NULL,
    rows_rejected BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX device_imports_organisation ON device_imports (organisation_id, id);

CREATE TABLE device_import_rejections (
    import_id BIGINT NOT NULL REFERENCES device_imports (id),
    line BIGINT NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (import_id, line)
);
