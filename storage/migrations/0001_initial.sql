-- Ackgate's first schema. In SQLite datetimes are fixed-width UTC ISO text, so text order is time
-- order, and nested values are JSON text; in PostgreSQL they are timestamptz and jsonb.

CREATE TABLE requests (
    id                  TEXT PRIMARY KEY,
    requester_platform  TEXT NOT NULL,
    requester_user_id   TEXT NOT NULL,
    requester_email     TEXT NOT NULL,
    requester_name      TEXT NOT NULL DEFAULT '',
    resource            TEXT NOT NULL,
    duration_seconds    INTEGER NOT NULL,
    reason              TEXT NOT NULL DEFAULT '',
    flow                TEXT NOT NULL,
    status              TEXT NOT NULL
        CHECK (status IN ('pending', 'approved', 'denied', 'refused', 'timed_out', 'cancelled')),
    created_at          {timestamp} NOT NULL,
    incident            {json},
    approvers           {json} NOT NULL DEFAULT '[]',
    required_approvals  INTEGER NOT NULL DEFAULT 1,
    decided_by          TEXT,
    decided_at          {timestamp},
    note                TEXT NOT NULL DEFAULT '',
    grant_id            TEXT,
    approval_channel    TEXT
);
CREATE INDEX requests_by_requester ON requests (requester_email, created_at);
CREATE INDEX requests_by_status_created ON requests (status, created_at);

-- One row per approver: the unique key is what makes a double click count once.
CREATE TABLE approvals (
    seq             {serial_key},
    request_id      TEXT NOT NULL REFERENCES requests (id) ON DELETE CASCADE,
    approver_email  TEXT NOT NULL,
    at              {timestamp} NOT NULL,
    UNIQUE (request_id, approver_email)
);

CREATE TABLE grants (
    id               TEXT PRIMARY KEY,
    request_id       TEXT NOT NULL,
    resource         TEXT NOT NULL,
    holder_platform  TEXT NOT NULL,
    holder_user_id   TEXT NOT NULL,
    holder_email     TEXT NOT NULL,
    holder_name      TEXT NOT NULL DEFAULT '',
    flow             TEXT NOT NULL,
    status           TEXT NOT NULL
        CHECK (status IN ('provisioning', 'active', 'revoking', 'ended', 'failed')),
    created_at       {timestamp} NOT NULL,
    expires_at       {timestamp} NOT NULL,
    justification    TEXT NOT NULL DEFAULT '',
    incident         {json},
    incident_id      TEXT,
    approved_by      {json} NOT NULL DEFAULT '[]',
    end_reason       TEXT,
    ended_at         {timestamp},
    ended_by         TEXT,
    revoke_attempts  INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  {timestamp},
    last_error       TEXT NOT NULL DEFAULT ''
);
-- The expiry sweeper, the revoke retrier and the incident-resolved hook each read one range.
CREATE INDEX grants_by_status_expiry ON grants (status, expires_at, id);
CREATE INDEX grants_by_status_next_attempt ON grants (status, next_attempt_at, id);
CREATE INDEX grants_by_incident ON grants (incident_id, status, expires_at, id);
CREATE INDEX grants_by_holder ON grants (holder_email, expires_at);

CREATE TABLE audit (
    seq      {serial_key},
    at       {timestamp} NOT NULL,
    kind     TEXT NOT NULL,
    actor    TEXT NOT NULL,
    subject  TEXT NOT NULL,
    data     {json} NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_by_at ON audit (at);

-- The audit log is evidence: the database itself refuses to rewrite it.
-- only sqlite
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;
-- only postgres
CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only';
END
$$;
CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
-- end only

CREATE TABLE settings (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);

CREATE TABLE message_refs (
    seq         {serial_key},
    subject     TEXT NOT NULL,
    platform    TEXT NOT NULL,
    channel     TEXT NOT NULL,
    message_id  TEXT NOT NULL,
    UNIQUE (subject, platform, channel, message_id)
);
