-- What a user accepted by resuming a campaign that stopped itself: the
-- failure threshold counts only devices that finish after the resume
-- (failed and finished devices at that moment are the baseline), and the
-- wave it was on is let past its success ratio. Without them a resumed
-- campaign would stop again on its next round for the same failures.
ALTER TABLE firmware_campaigns ADD COLUMN accepted_failed BIGINT NOT NULL DEFAULT 0;
ALTER TABLE firmware_campaigns ADD COLUMN accepted_finished BIGINT NOT NULL DEFAULT 0;
ALTER TABLE firmware_campaigns ADD COLUMN accepted_wave BIGINT NOT NULL DEFAULT -1;
