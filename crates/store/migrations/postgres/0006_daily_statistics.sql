-- One snapshot of an organisation's counters per day (days since 1970-01-01,
-- UTC), for the dashboard's change since the same day last week.
CREATE TABLE daily_statistics (
    organisation_id BIGINT NOT NULL REFERENCES organisations (id),
    day BIGINT NOT NULL,
    devices BIGINT NOT NULL,
    online_devices BIGINT NOT NULL,
    users BIGINT NOT NULL,
    integrators BIGINT NOT NULL,
    customers BIGINT NOT NULL,
    PRIMARY KEY (organisation_id, day)
);
