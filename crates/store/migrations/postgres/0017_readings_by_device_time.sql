-- The key in device, time, metric order: a flush touches one index leaf per
-- device instead of one per series (see the SQLite migration of this number);
-- roll-up and retention go device by device through the key, so the index
-- on ts goes and an insert writes the heap and one index.
ALTER TABLE readings DROP CONSTRAINT readings_pkey;
ALTER TABLE readings ADD PRIMARY KEY (device_id, ts, metric);
DROP INDEX readings_ts;
