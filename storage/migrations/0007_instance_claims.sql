-- Issue 6: claims that name the instance holding them, so an instance that restarts takes back its
-- own dead claims at once (a recovery pass then finishes the work within seconds) instead of waiting
-- for their leases to run out. A rival replica's dead claim still waits for its lease.

-- The instance that records or takes over a chat command (or click) and owes its answer.
ALTER TABLE slack_commands ADD COLUMN claimed_by TEXT NOT NULL DEFAULT '';
CREATE INDEX slack_commands_by_claimant ON slack_commands (claimed_by) WHERE answered_at IS NULL;

-- A request's approval cards: the instance posting them claims the request (lease), and marks it
-- posted once the approvers were shown; the reconciler posts for PENDING requests nobody posted for.
CREATE TABLE approval_card_posts (
    request_id   TEXT PRIMARY KEY,
    claimed_by   TEXT NOT NULL DEFAULT '',
    lease_until  {timestamp} NOT NULL,
    posted_at    {timestamp}
);
CREATE INDEX approval_card_posts_by_claimant ON approval_card_posts (claimed_by) WHERE posted_at IS NULL;

-- Requests pending before this version had their cards posted by the path that stored them.
INSERT INTO approval_card_posts (request_id, claimed_by, lease_until, posted_at)
    SELECT id, '', created_at, created_at FROM requests WHERE status = 'pending';

-- A mirror post claim whose holder began the chat call: if the holder died, the message may exist,
-- so a restart does not drop that claim (its lease still runs); one that never began is dropped.
ALTER TABLE incident_mirror_claims ADD COLUMN sending {boolean} NOT NULL DEFAULT {false};
