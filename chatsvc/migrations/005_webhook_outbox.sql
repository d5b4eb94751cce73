-- Webhooks for unseen messages (issue 16): one row per stored message while its delivery is pending.
CREATE TABLE webhook_outbox (
    message_id      INTEGER PRIMARY KEY REFERENCES chat_history (id),
    -- Sending attempts made so far; the next waits CHATSVC_WEBHOOK_BACKOFF * 2 ** attempts.
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    -- Set while one instance sends it; another may take it over once it has passed.
    lease_until     TEXT,
    -- The recipients, as a JSON array, fixed at the first attempt so every retry sends the same body.
    recipient_ids   TEXT,
    create_time     TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX webhook_outbox_due ON webhook_outbox (next_attempt_at);
