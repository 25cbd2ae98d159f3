-- Issue 6: slash commands and form submissions acknowledged to Slack, one row per invocation.
-- The primary key (Slack's trigger_id) makes a retry or a replay of the same request count once;
-- the state and lease let a recovery pass answer what a crash left unanswered.

CREATE TABLE slack_commands (
    key           TEXT PRIMARY KEY,
    kind          TEXT NOT NULL,
    user_id       TEXT NOT NULL,
    channel_id    TEXT NOT NULL DEFAULT '',
    text          TEXT NOT NULL DEFAULT '',
    response_url  TEXT NOT NULL DEFAULT '',
    received_at   {timestamp} NOT NULL,
    lease_until   {timestamp} NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    answered_at   {timestamp}
);
-- The recovery pass reads unanswered rows whose lease lapsed; pruning reads by age.
CREATE INDEX slack_commands_unanswered ON slack_commands (lease_until) WHERE answered_at IS NULL;
CREATE INDEX slack_commands_by_received ON slack_commands (received_at);
