-- Issue 3: authentication transactions, incidents mirrored into chat, and webhook deliveries seen.

CREATE TABLE auth_transactions (
    id                  TEXT PRIMARY KEY,
    requester_platform  TEXT NOT NULL,
    requester_user_id   TEXT NOT NULL,
    requester_email     TEXT NOT NULL,
    requester_name      TEXT NOT NULL DEFAULT '',
    target_platform     TEXT NOT NULL,
    target_user_id      TEXT NOT NULL,
    target_email        TEXT NOT NULL,
    target_name         TEXT NOT NULL DEFAULT '',
    message             TEXT NOT NULL DEFAULT '',
    status              TEXT NOT NULL CHECK (status IN ('pending', 'verified', 'denied', 'expired')),
    created_at          {timestamp} NOT NULL,
    expires_at          {timestamp} NOT NULL,
    -- Only the hash of the link's token: a link resolves to one transaction, and a leaked row opens nothing.
    token_hash          TEXT NOT NULL UNIQUE,
    context             TEXT NOT NULL DEFAULT '',
    channels            {json} NOT NULL DEFAULT '[]',
    dedup_key           TEXT,
    decided_at          {timestamp},
    note                TEXT NOT NULL DEFAULT ''
);
-- Webhooks find their transaction by the incident's dedup key; the expiry sweeper reads one range.
CREATE INDEX auth_transactions_by_dedup_key ON auth_transactions (dedup_key);
CREATE INDEX auth_transactions_by_status_expiry ON auth_transactions (status, expires_at, id);

CREATE TABLE incident_mirrors (
    incident_id      TEXT PRIMARY KEY,
    number           INTEGER NOT NULL,
    title            TEXT NOT NULL,
    html_url         TEXT NOT NULL,
    status           TEXT NOT NULL,
    -- triggered < acknowledged < resolved, to break ties between events stamped at the same instant.
    status_rank      INTEGER NOT NULL,
    status_at        {timestamp} NOT NULL,
    acknowledged_by  TEXT NOT NULL DEFAULT '',
    service_id       TEXT NOT NULL DEFAULT '',
    transaction_id   TEXT,
    incident_key     TEXT NOT NULL DEFAULT ''
);
CREATE INDEX incident_mirrors_by_transaction ON incident_mirrors (transaction_id);

-- PagerDuty retries a delivery for up to 48 hours; the primary key makes "first time" atomic.
CREATE TABLE webhook_seen (
    key  TEXT PRIMARY KEY,
    at   {timestamp} NOT NULL
);
CREATE INDEX webhook_seen_by_at ON webhook_seen (at);
