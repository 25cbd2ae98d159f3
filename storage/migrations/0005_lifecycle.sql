-- Issue 6: crash-safe grant lifecycle. An approved request records its grant's id in the same
-- transaction that inserts the grant, so "approved with no grant" is a small indexed set the
-- reconciler repairs; a PROVISIONING grant's next_attempt_at is the lease of whoever provisions it.

CREATE INDEX grants_by_request ON grants (request_id);

-- Requests approved before this version never recorded their grant: fill it in from the grants.
UPDATE requests SET grant_id = (
    SELECT g.id FROM grants g WHERE g.request_id = requests.id ORDER BY g.created_at, g.id LIMIT 1
) WHERE status = 'approved' AND grant_id IS NULL;

CREATE INDEX requests_approved_without_grant ON requests (created_at, id)
    WHERE status = 'approved' AND grant_id IS NULL;

-- A grant left provisioning by an older version has no lease: it is due for the reconciler now.
UPDATE grants SET next_attempt_at = created_at WHERE status = 'provisioning' AND next_attempt_at IS NULL;

-- Who holds a grant's claim: an instance that restarts releases its own dead claims at once instead
-- of waiting for their leases to run out.
ALTER TABLE grants ADD COLUMN claimed_by TEXT NOT NULL DEFAULT '';
CREATE INDEX grants_by_claimant ON grants (claimed_by) WHERE status IN ('provisioning', 'revoking');
