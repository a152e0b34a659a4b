-- The radio a device is on: kept from hardware/lte (and the modem_status
-- task), with each change of band, cell, operator or technology.
CREATE TABLE device_radio (
    device_id BIGINT PRIMARY KEY REFERENCES devices (id),
    technology TEXT,
    band TEXT,
    -- JSON [{band, pci, rsrp_dbm}]
    carrier_aggregation TEXT NOT NULL,
    operator TEXT,
    cell_id BIGINT,
    smcc BIGINT,
    smnc BIGINT,
    -- telemetry or modem_status
    source TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE radio_changes (
    id INTEGER PRIMARY KEY,
    device_id BIGINT NOT NULL REFERENCES devices (id),
    at BIGINT NOT NULL,
    -- band, cell, operator, technology, carrier_aggregation
    kind TEXT NOT NULL,
    before_value TEXT,
    after_value TEXT
);
CREATE INDEX radio_changes_device ON radio_changes (device_id, id);
