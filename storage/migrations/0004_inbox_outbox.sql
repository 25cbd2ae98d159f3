-- Issue 6: the PagerDuty webhook inbox, the claim on an incident's first mirror post, and the chat outbox.

-- A verified delivery is stored here before PagerDuty gets its 202, keyed by the event id: one
-- atomic insert-if-absent, so a retry racing the original (on any replica) is stored once.
-- Processing claims a row by compare-and-set (claim token, lease), and a recovery pass takes
-- rows that are still pending once their lease has lapsed (a crash) or their retry is due.
CREATE TABLE webhook_inbox (
    event_id         TEXT PRIMARY KEY,
    event_type       TEXT NOT NULL,
    body             TEXT NOT NULL,
    received_at      {timestamp} NOT NULL,
    state            TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'done', 'parked')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  {timestamp} NOT NULL,
    claim            TEXT,
    lease_until      {timestamp},
    finished_at      {timestamp},
    last_error       TEXT NOT NULL DEFAULT ''
);
CREATE INDEX webhook_inbox_by_state_due ON webhook_inbox (state, next_attempt_at, event_id);
CREATE INDEX webhook_inbox_by_finished ON webhook_inbox (state, finished_at);

-- Only the replica holding an incident's claim posts its first channel message.
CREATE TABLE incident_mirror_claims (
    incident_id  TEXT PRIMARY KEY,
    claim        TEXT NOT NULL,
    lease_until  {timestamp} NOT NULL
);

-- Chat messages the platform refused or could not take even after the client's retries. A worker
-- claims each (compare-and-set, lease) and sends it until delivered or too old. Updates of one
-- message share an id (``u:<platform>:<channel>:<message id>``), so only the newest card is kept.
CREATE TABLE chat_outbox (
    id               TEXT PRIMARY KEY,
    platform         TEXT NOT NULL,
    kind             TEXT NOT NULL CHECK (kind IN ('user', 'channel', 'update')),
    recipient        TEXT NOT NULL,
    card             TEXT NOT NULL,
    created_at       {timestamp} NOT NULL,
    state            TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'done', 'expired')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  {timestamp} NOT NULL,
    claim            TEXT,
    lease_until      {timestamp},
    finished_at      {timestamp},
    ref_channel      TEXT,
    ref_message_id   TEXT,
    last_error       TEXT NOT NULL DEFAULT ''
);
CREATE INDEX chat_outbox_by_state_due ON chat_outbox (state, next_attempt_at, id);
CREATE INDEX chat_outbox_by_finished ON chat_outbox (state, finished_at);
