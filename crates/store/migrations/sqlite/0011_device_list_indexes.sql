-- The device list: prefix search is a range scan per identifier, and every
-- sort order reads an index.
CREATE INDEX devices_name ON devices (name, id);
CREATE INDEX devices_imei ON devices (imei);
CREATE INDEX devices_iccid ON devices (iccid);
CREATE INDEX devices_last_seen ON devices ((COALESCE(last_seen_at, 0)), id);
CREATE INDEX devices_serial_id ON devices (serial, id);
