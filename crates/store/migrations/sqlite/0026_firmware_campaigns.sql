-- Firmware campaigns: an image rolled out to a model's devices in waves.
-- Each wave's devices are fixed when the campaign is made; a wave runs as
-- task jobs of `firmware_update`, and every device of the campaign has its
-- own row with where it stands, so a wave is finished only when each of
-- its devices is.
CREATE TABLE firmware_campaigns (
    id INTEGER PRIMARY KEY,
    organisation_id BIGINT NOT NULL REFERENCES organisations (id),
    name TEXT NOT NULL,
    image_id BIGINT NOT NULL REFERENCES firmware_images (id),
    model_id BIGINT NOT NULL REFERENCES device_models (id),
    -- The targeting filter as the user gave it (JSON).
    filter TEXT NOT NULL,
    -- running, paused, aborted, finished
    state TEXT NOT NULL,
    state_reason TEXT,
    current_wave BIGINT NOT NULL,
    -- Failed over finished devices above this, once min_finished devices
    -- are final, stops the campaign (on_threshold: pause or abort).
    failure_threshold DOUBLE PRECISION NOT NULL,
    min_finished BIGINT NOT NULL,
    on_threshold TEXT NOT NULL,
    -- How long a device that reports the new version is watched.
    health_secs BIGINT NOT NULL,
    rollback_unhealthy BOOLEAN NOT NULL,
    -- Maintenance window, minutes after local midnight; NULL: any time.
    window_start BIGINT,
    window_end BIGINT,
    time_zone TEXT NOT NULL,
    -- Per attempt, from delivery to the final answer.
    device_timeout_secs BIGINT NOT NULL,
    -- How long a wave waits for an offline device before skipping it.
    device_wait_secs BIGINT NOT NULL,
    max_bytes_per_sec BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    finished_at BIGINT
);
CREATE INDEX firmware_campaigns_organisation ON firmware_campaigns (organisation_id, id);
CREATE INDEX firmware_campaigns_open ON firmware_campaigns (state) WHERE state <> 'finished';

CREATE TABLE campaign_waves (
    campaign_id BIGINT NOT NULL REFERENCES firmware_campaigns (id),
    number BIGINT NOT NULL,
    size BIGINT NOT NULL,
    -- Succeeded over the wave's reached devices needed to go on.
    success_ratio DOUBLE PRECISION NOT NULL,
    -- Waited after the wave settled before the next starts.
    soak_secs BIGINT NOT NULL,
    -- waiting, running, soaking, done
    state TEXT NOT NULL,
    started_at BIGINT,
    settled_at BIGINT,
    done_at BIGINT,
    PRIMARY KEY (campaign_id, number)
);

CREATE TABLE campaign_devices (
    campaign_id BIGINT NOT NULL REFERENCES firmware_campaigns (id),
    device_id BIGINT NOT NULL REFERENCES devices (id),
    wave BIGINT NOT NULL,
    -- pending, active, watching, rolling_back, succeeded, failed,
    -- rolled_back, skipped
    state TEXT NOT NULL,
    -- The current firmware_update (or firmware_rollback) execution.
    execution_id BIGINT REFERENCES task_executions (id),
    from_version TEXT,
    reason TEXT,
    -- Health gate: watched from watch_from to watch_until with this boot.
    watch_from BIGINT,
    watch_until BIGINT,
    boot_id TEXT,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (campaign_id, device_id)
);
CREATE INDEX campaign_devices_wave ON campaign_devices (campaign_id, wave, state);
CREATE INDEX campaign_devices_device ON campaign_devices (device_id);
CREATE INDEX campaign_devices_execution ON campaign_devices (execution_id);
