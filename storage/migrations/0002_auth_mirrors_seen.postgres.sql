-- Issue 3: authentication transactions, incidents mirrored into chat, and webhook deliveries seen.

CREATE TABLE auth_transactions (
    id                  text PRIMARY KEY,
    requester_platform  text NOT NULL,
    requester_user_id   text NOT NULL,
    requester_email     text NOT NULL,
    requester_name      text NOT NULL DEFAULT '',
    target_platform     text NOT NULL,
    target_user_id      text NOT NULL,
    target_email        text NOT NULL,
    target_name         text NOT NULL DEFAULT '',
    message             text NOT NULL DEFAULT '',
    status              text NOT NULL CHECK (status IN ('pending', 'verified', 'denied', 'expired')),
    created_at          timestamptz NOT NULL,
    expires_at          timestamptz NOT NULL,
    -- Only the hash of the link's token: a link resolves to one transaction, and a leaked row opens nothing.
    token_hash          text NOT NULL UNIQUE,
    context             text NOT NULL DEFAULT '',
    channels            jsonb NOT NULL DEFAULT '[]',
    dedup_key           text,
    decided_at          timestamptz,
    note                text NOT NULL DEFAULT ''
);
-- Webhooks find their transaction by the incident's dedup key; the expiry sweeper reads one range.
CREATE INDEX auth_transactions_by_dedup_key ON auth_transactions (dedup_key);
CREATE INDEX auth_transactions_by_status_expiry ON auth_transactions (status, expires_at, id);

CREATE TABLE incident_mirrors (
    incident_id      text PRIMARY KEY,
    number           integer NOT NULL,
    title            text NOT NULL,
    html_url         text NOT NULL,
    status           text NOT NULL,
    -- triggered < acknowledged < resolved, to break ties between events stamped at the same instant.
    status_rank      integer NOT NULL,
    status_at        timestamptz NOT NULL,
    acknowledged_by  text NOT NULL DEFAULT '',
    service_id       text NOT NULL DEFAULT '',
    transaction_id   text,
    incident_key     text NOT NULL DEFAULT ''
);
CREATE INDEX incident_mirrors_by_transaction ON incident_mirrors (transaction_id);

-- PagerDuty retries a delivery for up to 48 hours; the primary key makes "first time" atomic.
CREATE TABLE webhook_seen (
    key  text PRIMARY KEY,
    at   timestamptz NOT NULL
);
CREATE INDEX webhook_seen_by_at ON webhook_seen (at);
