-- Devices that take part in firmware campaigns through the hawkBit Direct
-- Device Integration API (a standard update client such as SWUpdate's
-- suricatta) instead of Telemark's agent. A target token is issued per
-- device through the API and kept as its SHA-256; a device reached with
-- its organisation's gateway token gets its row on its first poll.
CREATE TABLE ddi_targets (
    device_id BIGINT PRIMARY KEY REFERENCES devices (id) ON DELETE CASCADE,
    token_hash TEXT UNIQUE,
    token_created_at BIGINT,
    -- Polls are the device's sign of life: the campaign health gate reads them.
    last_poll_at BIGINT,
    -- The attributes the client sent with configData (JSON object).
    attributes TEXT,
    -- The last cancelled action whose cancellation the client acknowledged.
    cancel_acked BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE ddi_gateway_tokens (
    organisation_id BIGINT PRIMARY KEY REFERENCES organisations (id) ON DELETE CASCADE,
    token_hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);
