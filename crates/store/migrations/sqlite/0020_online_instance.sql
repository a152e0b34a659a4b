-- Which platform instance holds a device's connection: at start an
-- instance marks offline only the devices it held.
ALTER TABLE devices ADD COLUMN online_instance TEXT;
