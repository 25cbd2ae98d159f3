"""SQL shared by both backends for the timed passes over many rows (migration 0008): ending a page
of expired grants in two statements, the incidents that revoke-on-resolve grants are bound to,
and pending requests stranded with all their approvals. Each is one statement text; the dialects
differ only in their placeholders, in how a list parameter is matched (``one_of``) and in SQLite's
index hints (``indexed_by``: without ``ANALYZE`` statistics its planner takes an index on ``status``,
which at 100,000 active grants means reading every one of them).

Every write here is a compare-and-set on each row (``status`` re-checked in the ``WHERE`` of the
``UPDATE``): under PostgreSQL's READ COMMITTED a second writer waits on the row lock and re-checks
it, and SQLite writes one at a time, so each grant is moved by exactly one caller.
"""

# ruff: noqa: S608 - every statement is built from constant text and the dialect's placeholders only

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

Mark = Callable[[int], str]
OneOf = Callable[[str], str]  # "column" + this: true when the column is one of the list parameter's items
IndexedBy = Callable[[str], str]  # after a table name: the index to read it by (SQLite), or nothing


@dataclass(frozen=True)
class SweepSql:
    begin_expiry: str
    finish_revokes: str
    incidents_of_active: str
    stranded_pending: str


# SQLite's name for the index of the grants table's primary key (its first unique constraint).
GRANTS_PRIMARY_KEY = "sqlite_autoindex_grants_1"
INCIDENT_INDEX = "grants_active_by_incident"  # migration 0008


def sweep_sql(mark: Mark, one_of: OneOf, indexed_by: IndexedBy) -> SweepSql:
    """The statements in a dialect's placeholders (``mark(1)`` is the first parameter)."""
    p = [mark(n) for n in range(0, 8)]
    by_id = indexed_by(GRANTS_PRIMARY_KEY)

    def next_incident(after: str) -> str:
        return (
            f"SELECT min(incident_id) FROM grants{indexed_by(INCIDENT_INDEX)} WHERE status = 'active'"
            f" AND incident_id IS NOT NULL AND incident_id > {after} AND flow {one_of(p[1])}"
        )

    return SweepSql(
        # p1 ids, p2 now, p3 lease until (the claim on the first revoke attempt), p4 owner, p5 end reason,
        # p6 ended by. Only grants still ACTIVE and expired at p2 move (an extension since they were read wins).
        begin_expiry=(
            f"UPDATE grants{by_id} SET status = 'revoking', end_reason = {p[5]}, ended_by = {p[6]},"
            f" next_attempt_at = {p[3]}, claimed_by = {p[4]}"
            f" WHERE id {one_of(p[1])} AND status = 'active' AND expires_at <= {p[2]} RETURNING *"
        ),
        # p1 ids, p2 at: the revokes the provisioner confirmed
        finish_revokes=(
            f"UPDATE grants{by_id} SET status = 'ended', ended_at = {p[2]} WHERE id {one_of(p[1])} AND status = 'revoking'"
            " RETURNING *"
        ),
        # p1 flows, p2 after this incident id, p3 limit: one page, in incident id order. A loose index
        # scan: each step is one seek in the partial index to the next incident id, so the cost grows
        # with the incidents, not with the grants bound to them.
        incidents_of_active=(
            f"WITH RECURSIVE page (incident_id) AS (SELECT ({next_incident(p[2])})"
            f" UNION ALL SELECT ({next_incident('page.incident_id')}) FROM page WHERE page.incident_id IS NOT NULL)"
            f" SELECT incident_id FROM page WHERE incident_id IS NOT NULL LIMIT {p[3]}"
        ),
        # p1 created before, p2 limit: PENDING requests that already have all their approvals
        stranded_pending=(
            f"SELECT * FROM requests WHERE status = 'pending' AND created_at < {p[1]}"
            " AND EXISTS (SELECT 1 FROM approvals a WHERE a.request_id = requests.id)"
            " AND (SELECT count(*) FROM approvals a WHERE a.request_id = requests.id) >= required_approvals"
            f" ORDER BY created_at, id LIMIT {p[2]}"
        ),
    )
