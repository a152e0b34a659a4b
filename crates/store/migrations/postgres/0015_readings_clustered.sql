-- Readings keyed by their series: a reading delivered twice (QoS 1 after a
-- reconnect) is stored once, and the key is the series index.
DELETE FROM readings a USING readings b
    WHERE a.ctid < b.ctid AND a.device_id = b.device_id AND a.metric = b.metric AND a.ts = b.ts;
DROP INDEX readings_series;
ALTER TABLE readings ADD PRIMARY KEY (device_id, metric, ts);
