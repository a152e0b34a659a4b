-- The system log: every change, who made it, from where, before and after.
CREATE TABLE audit_log (
    id INTEGER PRIMARY KEY,
    organisation_id BIGINT NOT NULL REFERENCES organisations (id),
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    before_value TEXT,
    after_value TEXT,
    address TEXT,
    created_at BIGINT NOT NULL
);
CREATE INDEX audit_log_organisation ON audit_log (organisation_id, id);
