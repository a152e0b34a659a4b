-- Every connect and disconnect of a device: its presence history.
CREATE TABLE device_presence (
    id INTEGER PRIMARY KEY,
    device_id BIGINT NOT NULL,
    online BOOLEAN NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX device_presence_device ON device_presence (device_id, id);
CREATE INDEX device_presence_at ON device_presence (at);
