-- Remote tasks: a job is one task type with its parameters over one or
-- more devices, an execution is that task on one device. Every execution
-- has a deadline (to be delivered, then to finish) so none waits for ever.
CREATE TABLE task_jobs (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organisation_id BIGINT NOT NULL REFERENCES organisations (id),
    kind TEXT NOT NULL,
    parameters TEXT NOT NULL,
    description TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    -- running, finished, cancelled, aborted
    state TEXT NOT NULL,
    finished_at BIGINT,
    total BIGINT NOT NULL,
    -- From delivery to a final answer, per attempt.
    timeout_secs BIGINT NOT NULL,
    -- Nothing is sent after this: an offline device's execution times out.
    expires_at BIGINT NOT NULL,
    max_retries BIGINT NOT NULL,
    retry_backoff_secs BIGINT NOT NULL,
    -- Executions started per minute; NULL: as fast as devices answer.
    rollout_per_minute BIGINT,
    abort_failure_ratio DOUBLE PRECISION,
    abort_min_finished BIGINT,
    -- Attempts started so far (the rollout rate's budget).
    started BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX task_jobs_organisation ON task_jobs (organisation_id, id);
CREATE INDEX task_jobs_running ON task_jobs (state) WHERE state = 'running';

CREATE TABLE task_executions (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id BIGINT NOT NULL REFERENCES task_jobs (id),
    device_id BIGINT NOT NULL REFERENCES devices (id),
    -- queued, sent, in_progress, succeeded, failed, rejected, timed_out, cancelled
    state TEXT NOT NULL,
    attempt BIGINT NOT NULL DEFAULT 0,
    progress BIGINT,
    message TEXT,
    result TEXT,
    error TEXT,
    queued_at BIGINT NOT NULL,
    sent_at BIGINT,
    started_at BIGINT,
    finished_at BIGINT,
    -- A retry waits until then.
    not_before BIGINT NOT NULL,
    deadline BIGINT NOT NULL,
    -- A reboot: the boot id before it, so the next one tells it is done.
    boot_id TEXT
);
CREATE INDEX task_executions_job ON task_executions (job_id, id);
CREATE INDEX task_executions_device ON task_executions (device_id, id);
CREATE INDEX task_executions_queued ON task_executions (job_id, not_before) WHERE state = 'queued';
CREATE INDEX task_executions_open ON task_executions (deadline)
    WHERE state IN ('queued', 'sent', 'in_progress');

-- The latest boot id a device reported with status online.
ALTER TABLE devices ADD COLUMN boot_id TEXT;
