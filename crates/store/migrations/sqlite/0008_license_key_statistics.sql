-- The dashboard's sixth counter.
ALTER TABLE daily_statistics ADD COLUMN license_keys BIGINT NOT NULL DEFAULT 0;
