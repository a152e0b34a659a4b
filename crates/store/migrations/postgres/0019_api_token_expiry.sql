-- An API token may expire (milliseconds since the epoch; NULL: never).
ALTER TABLE api_tokens ADD COLUMN expires_at BIGINT;
