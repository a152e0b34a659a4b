-- ERP imports are of devices or of license keys; one record table for both.
ALTER TABLE device_imports ADD COLUMN kind TEXT NOT NULL DEFAULT 'devices';
