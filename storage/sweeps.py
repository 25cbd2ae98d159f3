"""Statements of the timed passes over many rows (issue 9, migration 0008), run by
:mod:`storage.roles`: ending a page of expired grants in two statements, the incidents that
revoke-on-resolve grants are bound to, and pending requests stranded with all their approvals.

Every write here is a compare-and-set on each row (``status`` re-checked in the ``UPDATE``'s
``WHERE``), so each grant is moved by exactly one caller. ``{grants_by_id}`` and
``{grants_by_incident}`` are SQLite's index hints (see :mod:`storage.sql`).
"""

# ruff: noqa: S608 - every statement is constant text with named parameters

from __future__ import annotations

from storage.sql import Sql

# Only grants still ACTIVE and expired at :now move (an extension since they were read wins); each
# claims its first revoke attempt until :lease_until for :owner.
BEGIN_EXPIRY = Sql(
    "UPDATE grants{grants_by_id} SET status = 'revoking', end_reason = :end_reason, ended_by = :ended_by,"
    " next_attempt_at = :lease_until, claimed_by = :owner"
    " WHERE id {in_list:ids} AND status = 'active' AND expires_at <= :now RETURNING *"
)
# The revokes the provisioner confirmed.
FINISH_REVOKES = Sql(
    "UPDATE grants{grants_by_id} SET status = 'ended', ended_at = :at"
    " WHERE id {in_list:ids} AND status = 'revoking' RETURNING *"
)
# One page of incident ids in order, as a loose index scan: each step is one seek in the partial
# index to the next incident id, so the cost grows with the incidents, not with their grants.
_NEXT_INCIDENT = (
    "SELECT min(incident_id) FROM grants{grants_by_incident} WHERE status = 'active'"
    " AND incident_id IS NOT NULL AND incident_id > {after} AND flow {in_list:flows}"
)
INCIDENTS_OF_ACTIVE = Sql(
    "WITH RECURSIVE page (incident_id) AS (SELECT (" + _NEXT_INCIDENT.replace("{after}", ":after") + ")"
    " UNION ALL SELECT (" + _NEXT_INCIDENT.replace("{after}", "page.incident_id") + ")"
    " FROM page WHERE page.incident_id IS NOT NULL)"
    " SELECT incident_id FROM page WHERE incident_id IS NOT NULL LIMIT :limit"
)
# PENDING requests that already have all their approvals.
STRANDED_PENDING = Sql(
    "SELECT * FROM requests WHERE status = 'pending' AND created_at < :created_before"
    " AND EXISTS (SELECT 1 FROM approvals a WHERE a.request_id = requests.id)"
    " AND (SELECT count(*) FROM approvals a WHERE a.request_id = requests.id) >= required_approvals"
    " ORDER BY created_at, id LIMIT :limit"
)
