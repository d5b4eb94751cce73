-- Webhooks for unseen messages (issue 16): one row per stored message while its delivery is pending.
CREATE TABLE webhook_outbox (
    message_id      BIGINT      PRIMARY KEY REFERENCES chat_history (id),
    -- Sending attempts made so far; the next waits CHATSVC_WEBHOOK_BACKOFF * 2 ** attempts.
    attempts        INTEGER     NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Set while one instance sends it; another may take it over once it has passed.
    lease_until     TIMESTAMPTZ,
    -- The recipients, as a JSON array, fixed at the first attempt so every retry sends the same body.
    recipient_ids   TEXT,
    create_time     TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX webhook_outbox_due ON webhook_outbox (next_attempt_at);
