-- Ackgate's first schema for PostgreSQL. Datetimes are timestamptz; nested values are jsonb.

CREATE TABLE requests (
    id                  text PRIMARY KEY,
    requester_platform  text NOT NULL,
    requester_user_id   text NOT NULL,
    requester_email     text NOT NULL,
    requester_name      text NOT NULL DEFAULT '',
    resource            text NOT NULL,
    duration_seconds    integer NOT NULL,
    reason              text NOT NULL DEFAULT '',
    flow                text NOT NULL,
    status              text NOT NULL
        CHECK (status IN ('pending', 'approved', 'denied', 'refused', 'timed_out', 'cancelled')),
    created_at          timestamptz NOT NULL,
    incident            jsonb,
    approvers           jsonb NOT NULL DEFAULT '[]',
    required_approvals  integer NOT NULL DEFAULT 1,
    decided_by          text,
    decided_at          timestamptz,
    note                text NOT NULL DEFAULT '',
    grant_id            text,
    approval_channel    text
);
CREATE INDEX requests_by_requester ON requests (requester_email, created_at);
CREATE INDEX requests_by_status_created ON requests (status, created_at);

-- One row per approver: the unique key is what makes a double click count once.
CREATE TABLE approvals (
    seq             bigserial PRIMARY KEY,
    request_id      text NOT NULL REFERENCES requests (id) ON DELETE CASCADE,
    approver_email  text NOT NULL,
    at              timestamptz NOT NULL,
    UNIQUE (request_id, approver_email)
);

CREATE TABLE grants (
    id               text PRIMARY KEY,
    request_id       text NOT NULL,
    resource         text NOT NULL,
    holder_platform  text NOT NULL,
    holder_user_id   text NOT NULL,
    holder_email     text NOT NULL,
    holder_name      text NOT NULL DEFAULT '',
    flow             text NOT NULL,
    status           text NOT NULL
        CHECK (status IN ('provisioning', 'active', 'revoking', 'ended', 'failed')),
    created_at       timestamptz NOT NULL,
    expires_at       timestamptz NOT NULL,
    justification    text NOT NULL DEFAULT '',
    incident         jsonb,
    incident_id      text,
    approved_by      jsonb NOT NULL DEFAULT '[]',
    end_reason       text,
    ended_at         timestamptz,
    ended_by         text,
    revoke_attempts  integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz,
    last_error       text NOT NULL DEFAULT ''
);
-- The expiry sweeper, the revoke retrier and the incident-resolved hook each read one range.
CREATE INDEX grants_by_status_expiry ON grants (status, expires_at, id);
CREATE INDEX grants_by_status_next_attempt ON grants (status, next_attempt_at, id);
CREATE INDEX grants_by_incident ON grants (incident_id, status, expires_at, id);
CREATE INDEX grants_by_holder ON grants (holder_email, expires_at);

CREATE TABLE audit (
    seq      bigserial PRIMARY KEY,
    at       timestamptz NOT NULL,
    kind     text NOT NULL,
    actor    text NOT NULL,
    subject  text NOT NULL,
    data     jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_by_at ON audit (at);

-- The audit log is evidence: the database itself refuses to rewrite it.
CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only';
END
$$;
CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();

CREATE TABLE settings (
    key    text PRIMARY KEY,
    value  text NOT NULL
);

CREATE TABLE message_refs (
    seq         bigserial PRIMARY KEY,
    subject     text NOT NULL,
    platform    text NOT NULL,
    channel     text NOT NULL,
    message_id  text NOT NULL,
    UNIQUE (subject, platform, channel, message_id)
);
