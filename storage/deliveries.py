"""SQL and row decoding shared by both backends for the webhook inbox, the mirror-post claims and
the chat outbox (migration 0003). The dialects differ only in their placeholders.

Every claim is one ``UPDATE ... WHERE <claimable> RETURNING *``: under PostgreSQL's READ COMMITTED
a second writer waits on the row lock and re-checks the condition, and SQLite writes one at a
time, so exactly one claimant wins.
"""

# ruff: noqa: S608 - every statement is built from constant text and the dialect's placeholders only

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bot.core.domain import MessageRef
from bot.core.ports import InboxDelivery, OutboxDelivery
from storage.codec import Row

Mark = Callable[[int], str]


@dataclass(frozen=True)
class DeliverySql:
    inbox_add: str
    inbox_claim: str
    inbox_finish: str
    inbox_retry: str
    inbox_park: str
    inbox_due: str
    inbox_count_parked: str
    inbox_prune: str
    claim_post: str
    release_post: str
    outbox_add: str
    outbox_get: str
    outbox_revise: str
    outbox_drop: str
    outbox_claim: str
    outbox_delivered: str
    outbox_swap_refs: str
    outbox_retry: str
    outbox_expire: str
    outbox_due: str
    outbox_count_pending: str
    outbox_prune: str
    inbox_release: str
    outbox_release: str
    release_posts: str
    post_sending: str


def delivery_sql(mark: Mark) -> DeliverySql:
    """The statements in a dialect's placeholders (``mark(1)`` is the first parameter)."""
    p = [mark(n) for n in range(0, 12)]
    claimable = f"state = 'pending' AND next_attempt_at <= {p[2]} AND (lease_until IS NULL OR lease_until <= {p[2]})"
    held = f"state = 'pending' AND claim = {p[2]}"
    owned = f"substr(claim, 1, length(CAST({p[1]} AS text))) = CAST({p[1]} AS text)"
    return DeliverySql(
        inbox_add=(
            "INSERT INTO webhook_inbox (event_id, event_type, body, received_at, next_attempt_at)"
            f" VALUES ({p[1]}, {p[2]}, {p[3]}, {p[4]}, {p[4]}) ON CONFLICT (event_id) DO NOTHING RETURNING event_id"
        ),
        # p1 id, p2 now, p3 token, p4 until
        inbox_claim=(
            f"UPDATE webhook_inbox SET claim = {p[3]}, lease_until = {p[4]}, attempts = attempts + 1"
            f" WHERE event_id = {p[1]} AND {claimable} RETURNING *"
        ),
        # p1 id, p2 token, p3 at
        inbox_finish=(
            f"UPDATE webhook_inbox SET state = 'done', finished_at = {p[3]}, lease_until = NULL"
            f" WHERE event_id = {p[1]} AND {held} RETURNING event_id"
        ),
        # p1 id, p2 token, p3 at, p4 error
        inbox_retry=(
            f"UPDATE webhook_inbox SET next_attempt_at = {p[3]}, lease_until = NULL, last_error = {p[4]}"
            f" WHERE event_id = {p[1]} AND {held} RETURNING event_id"
        ),
        inbox_park=(
            f"UPDATE webhook_inbox SET state = 'parked', finished_at = {p[3]}, lease_until = NULL, last_error = {p[4]}"
            f" WHERE event_id = {p[1]} AND {held} RETURNING event_id"
        ),
        # p1 limit, p2 now
        inbox_due=(
            f"SELECT * FROM webhook_inbox WHERE {claimable} ORDER BY next_attempt_at, received_at, event_id LIMIT {p[1]}"
        ),
        inbox_count_parked="SELECT count(*) AS n FROM webhook_inbox WHERE state = 'parked'",
        inbox_prune=f"DELETE FROM webhook_inbox WHERE state = 'done' AND finished_at < {p[1]} RETURNING event_id",
        # p1 incident, p2 now, p3 token, p4 until
        claim_post=(
            f"INSERT INTO incident_mirror_claims (incident_id, claim, lease_until) VALUES ({p[1]}, {p[3]}, {p[4]})"
            " ON CONFLICT (incident_id) DO UPDATE SET claim = EXCLUDED.claim, lease_until = EXCLUDED.lease_until,"
            " sending = FALSE"
            f" WHERE incident_mirror_claims.lease_until <= {p[2]} RETURNING incident_id"
        ),
        release_post=f"DELETE FROM incident_mirror_claims WHERE incident_id = {p[1]} AND claim = {p[2]}",
        # p1 id, p2 platform, p3 kind, p4 recipient, p5 card, p6 due at, p7 created at
        outbox_add=(
            "INSERT INTO chat_outbox (id, platform, kind, recipient, card, created_at, next_attempt_at)"
            f" VALUES ({p[1]}, {p[2]}, {p[3]}, {p[4]}, {p[5]}, {p[7]}, {p[6]}) ON CONFLICT (id) DO UPDATE SET"
            " card = EXCLUDED.card, state = 'pending', attempts = 0, claim = NULL, lease_until = NULL,"
            " next_attempt_at = EXCLUDED.next_attempt_at, created_at = EXCLUDED.created_at, finished_at = NULL,"
            " last_error = ''"
        ),
        outbox_get=f"SELECT * FROM chat_outbox WHERE id = {p[1]}",
        # p1 id, p2 card
        outbox_revise=f"UPDATE chat_outbox SET card = {p[2]} WHERE id = {p[1]} AND state = 'pending' RETURNING *",
        outbox_drop=(
            f"DELETE FROM chat_outbox WHERE id = {p[1]} AND state = 'pending' AND lease_until IS NULL RETURNING id"
        ),
        outbox_claim=(
            f"UPDATE chat_outbox SET claim = {p[3]}, lease_until = {p[4]}, attempts = attempts + 1"
            f" WHERE id = {p[1]} AND {claimable} RETURNING *"
        ),
        # p1 id, p2 token, p3 at, p4 channel, p5 message id
        outbox_delivered=(
            f"UPDATE chat_outbox SET state = 'done', finished_at = {p[3]}, lease_until = NULL,"
            f" ref_channel = {p[4]}, ref_message_id = {p[5]} WHERE id = {p[1]} AND {held} RETURNING id"
        ),
        # p1 new channel, p2 new id, p3 platform, p4 old channel, p5 old id
        outbox_swap_refs=(
            f"UPDATE message_refs SET channel = {p[1]}, message_id = {p[2]}"
            f" WHERE platform = {p[3]} AND channel = {p[4]} AND message_id = {p[5]}"
        ),
        outbox_retry=(
            f"UPDATE chat_outbox SET next_attempt_at = {p[3]}, lease_until = NULL, last_error = {p[4]}"
            f" WHERE id = {p[1]} AND {held} RETURNING id"
        ),
        outbox_expire=(
            f"UPDATE chat_outbox SET state = 'expired', finished_at = {p[3]}, lease_until = NULL, last_error = {p[4]}"
            f" WHERE id = {p[1]} AND {held} RETURNING id"
        ),
        outbox_due=f"SELECT * FROM chat_outbox WHERE {claimable} ORDER BY next_attempt_at, created_at, id LIMIT {p[1]}",
        outbox_count_pending="SELECT count(*) AS n FROM chat_outbox WHERE state = 'pending'",
        outbox_prune=f"DELETE FROM chat_outbox WHERE state <> 'pending' AND finished_at < {p[1]} RETURNING id",
        # p1 the owner's token prefix (bot.core.domain.claim_prefix): its holder restarted, so its leases are void
        inbox_release=(
            "UPDATE webhook_inbox SET lease_until = NULL"
            f" WHERE state = 'pending' AND lease_until IS NOT NULL AND {owned} RETURNING event_id"
        ),
        outbox_release=(
            f"UPDATE chat_outbox SET lease_until = NULL WHERE state = 'pending' AND lease_until IS NOT NULL AND {owned}"
            " RETURNING id"
        ),
        # A claim whose chat call began stays: its message may exist (the lease decides, as for a rival).
        release_posts=f"DELETE FROM incident_mirror_claims WHERE {owned} AND NOT sending RETURNING incident_id",
        # p1 incident, p2 token
        post_sending=(
            f"UPDATE incident_mirror_claims SET sending = TRUE WHERE incident_id = {p[1]} AND claim = {p[2]}"
            " RETURNING incident_id"
        ),
    )


def inbox_delivery(row: Row, load_time: Callable[[Any], datetime]) -> InboxDelivery:
    return InboxDelivery(
        event_id=row["event_id"],
        event_type=row["event_type"],
        body=row["body"],
        received_at=load_time(row["received_at"]),
        state=row["state"],
        attempts=int(row["attempts"]),
        claim=row["claim"],
    )


def outbox_delivery(row: Row, load_time: Callable[[Any], datetime]) -> OutboxDelivery:
    ref = None
    if row["ref_message_id"] is not None:
        ref = MessageRef(platform=row["platform"], channel=row["ref_channel"] or "", message_id=row["ref_message_id"])
    return OutboxDelivery(
        id=row["id"],
        platform=row["platform"],
        kind=row["kind"],
        recipient=row["recipient"],
        card=row["card"],
        created_at=load_time(row["created_at"]),
        state=row["state"],
        attempts=int(row["attempts"]),
        claim=row["claim"],
        ref=ref,
    )
