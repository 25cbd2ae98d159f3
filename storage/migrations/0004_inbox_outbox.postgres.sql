-- Issue 6: the PagerDuty webhook inbox, the claim on an incident's first mirror post, and the chat outbox.

-- A verified delivery is stored here before PagerDuty gets its 202, keyed by the event id: one
-- atomic insert-if-absent, so a retry racing the original (on any replica) is stored once.
-- Processing claims a row by compare-and-set (claim token, lease), and a recovery pass takes
-- rows that are still pending once their lease has lapsed (a crash) or their retry is due.
CREATE TABLE webhook_inbox (
    event_id         text PRIMARY KEY,
    event_type       text NOT NULL,
    body             text NOT NULL,
    received_at      timestamptz NOT NULL,
    state            text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'done', 'parked')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL,
    claim            text,
    lease_until      timestamptz,
    finished_at      timestamptz,
    last_error       text NOT NULL DEFAULT ''
);
CREATE INDEX webhook_inbox_by_state_due ON webhook_inbox (state, next_attempt_at, event_id);
CREATE INDEX webhook_inbox_by_finished ON webhook_inbox (state, finished_at);

-- Only the replica holding an incident's claim posts its first channel message.
CREATE TABLE incident_mirror_claims (
    incident_id  text PRIMARY KEY,
    claim        text NOT NULL,
    lease_until  timestamptz NOT NULL
);

-- Chat messages the platform refused or could not take even after the client's retries. A worker
-- claims each (compare-and-set, lease) and sends it until delivered or too old. Updates of one
-- message share an id (``u:<platform>:<channel>:<message id>``), so only the newest card is kept.
CREATE TABLE chat_outbox (
    id               text PRIMARY KEY,
    platform         text NOT NULL,
    kind             text NOT NULL CHECK (kind IN ('user', 'channel', 'update')),
    recipient        text NOT NULL,
    card             text NOT NULL,
    created_at       timestamptz NOT NULL,
    state            text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'done', 'expired')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL,
    claim            text,
    lease_until      timestamptz,
    finished_at      timestamptz,
    ref_channel      text,
    ref_message_id   text,
    last_error       text NOT NULL DEFAULT ''
);
CREATE INDEX chat_outbox_by_state_due ON chat_outbox (state, next_attempt_at, id);
CREATE INDEX chat_outbox_by_finished ON chat_outbox (state, finished_at);
