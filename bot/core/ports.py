"""The ports the core needs, split by role. Adapters in ``storage/``, ``handlers/`` and the
PagerDuty client implement them; the core imports only this module.

Every storage method is atomic on its own. Transitions are compare-and-set: they name the state
they expect and raise :class:`bot.core.errors.AlreadyDecided` when the stored state differs, so a
double click, a retried delivery or two replicas racing resolve exactly once.
Storage failures raise :class:`bot.core.errors.StorageError` and change nothing.

Every method that changes a request, a grant, an authentication transaction or a setting takes ``audit``: a function of the method's result
(the stored row, as it will be returned) giving the audit events to append **in the same
transaction**. The state change and its audit rows commit together or not at all, so a crash never
leaves a change without its audit line. The core passes it through :meth:`bot.core.bus.MessageBus.commit`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, TypeVar

from bot.core.domain import (
    AccessRequest,
    AuditEvent,
    AuthStatus,
    AuthTransaction,
    EndReason,
    Grant,
    GrantStatus,
    Incident,
    IncidentMirror,
    MessageRef,
    OnCall,
    PagerDutyUser,
    Principal,
    ReceivedCommand,
    RequestStatus,
)
from bot.core.views import Card

# --- storage ------------------------------------------------------------------------------

ResultT = TypeVar("ResultT")
AuditFor = Callable[[ResultT], Sequence[AuditEvent]]
"""The audit events of a state change, built from its stored result inside its transaction."""


class RequestStore(Protocol):
    async def add(self, request: AccessRequest, *, audit: AuditFor[None] | None = None) -> None:
        """Insert a new request. Raises ``StorageError`` if the id exists."""
        ...

    async def get(self, request_id: str) -> AccessRequest | None: ...

    async def list_for(self, requester_email: str, *, limit: int = 20) -> list[AccessRequest]:
        """The requester's most recent requests, newest first."""
        ...

    async def add_approval(
        self, request_id: str, *, approver_email: str, at: datetime, audit: AuditFor[AccessRequest] | None = None
    ) -> AccessRequest:
        """Atomically record one approval on a PENDING request and return the updated request.

        A second approval by the same approver is not counted again (the request is returned
        unchanged). Raises ``AlreadyDecided`` (with ``status`` and ``by``) when the request is no
        longer pending, ``NotFound`` when it does not exist.
        """
        ...

    async def decide(
        self,
        request_id: str,
        *,
        expected: RequestStatus,
        new: RequestStatus,
        by: str | None,
        at: datetime,
        note: str = "",
        grant_id: str | None = None,
        audit: AuditFor[AccessRequest] | None = None,
    ) -> AccessRequest:
        """Compare-and-set the status from ``expected`` to ``new``; set decided_by/at, note, grant id.

        Raises ``AlreadyDecided`` (carrying the stored status and decider) when the stored
        status is not ``expected``; ``NotFound`` when the request does not exist.
        """
        ...

    async def pending_created_before(self, cutoff: datetime) -> list[AccessRequest]:
        """PENDING requests created before ``cutoff`` (for approval time-outs)."""
        ...

    async def stranded_pending(self, created_before: datetime, *, limit: int = 50) -> list[AccessRequest]:
        """PENDING requests created before ``created_before`` that already have at least
        ``required_approvals`` approvals (left by a crash of an older version), oldest first, at most
        ``limit``: the database filters, so only those are read."""
        ...

    async def add_with_grant(
        self, request: AccessRequest, grant: Grant, *, audit: AuditFor[tuple[AccessRequest, Grant]] | None = None
    ) -> tuple[AccessRequest, Grant]:
        """Insert an already-approved request, with ``grant_id`` set to ``grant.id``, and its grant, in
        one transaction (automatic access: never an approved request without its grant). Raises
        ``StorageError`` if either id exists (then neither is stored)."""
        ...

    async def approve(
        self,
        request_id: str,
        *,
        approver_email: str,
        at: datetime,
        grant: Callable[[AccessRequest], Grant],
        audit: AuditFor[tuple[AccessRequest, Grant | None]] | None = None,
    ) -> tuple[AccessRequest, Grant | None]:
        """Record one approval of a PENDING request, atomically. When the approvals reach the
        required number, in the same transaction: the request moves to APPROVED (decided by this
        approver, at ``at``, ``grant_id`` set) and ``grant(approved_request)`` is inserted; the grant is
        returned. Otherwise the grant is None. An approver counts once however often they approve.
        Raises ``AlreadyDecided`` (with ``status`` and ``by``) when the request is not pending
        (so of two final approvals racing, one wins), ``NotFound`` when it does not exist.
        """
        ...

    async def approved_without_grant(self, *, limit: int = 100) -> list[AccessRequest]:
        """APPROVED requests with no grant at all (left by a crash of an older version), oldest first."""
        ...

    async def pending_without_cards(
        self, now: datetime, *, created_before: datetime, limit: int = 100
    ) -> list[AccessRequest]:
        """PENDING requests created before ``created_before`` whose approval cards nobody posted and
        nobody is posting (no claim, or an unposted claim whose lease ended by ``now``), oldest first."""
        ...


class GrantStore(Protocol):
    async def add(self, grant: Grant, *, audit: AuditFor[None] | None = None) -> None:
        """Insert a new grant (normally in PROVISIONING). Raises ``StorageError`` if the id exists."""
        ...

    async def get(self, grant_id: str) -> Grant | None: ...

    async def list_for(self, holder_email: str, *, include_ended: bool = False) -> list[Grant]:
        """The holder's grants, soonest expiry first; ENDED and FAILED only when asked."""
        ...

    async def transition(
        self,
        grant_id: str,
        *,
        expected: GrantStatus,
        new: GrantStatus,
        at: datetime,
        end_reason: EndReason | None = None,
        ended_by: str | None = None,
        expires_at: datetime | None = None,
        last_error: str | None = None,
        next_attempt_at: datetime | None = None,
        claimed_by: str | None = None,
        audit: AuditFor[Grant] | None = None,
    ) -> Grant:
        """Compare-and-set the status. Moving to REVOKING stores end_reason/ended_by and sets
        next_attempt_at to ``next_attempt_at`` (the lease of the caller's own first attempt, which it
        thereby claims, as ``claimed_by`` when given), or to ``at`` (due now) when not given; moving to ENDED stamps ended_at;
        ``expires_at``/``last_error`` update when given. Raises ``AlreadyDecided`` when the stored
        status differs, ``NotFound`` when absent.
        """
        ...

    async def extend(
        self,
        grant_id: str,
        *,
        expected_expires_at: datetime,
        new_expires_at: datetime,
        audit: AuditFor[Grant] | None = None,
    ) -> Grant:
        """Compare-and-set the expiry of an ACTIVE grant. Raises ``AlreadyDecided`` when the grant
        is not active or its expiry moved since it was read."""
        ...

    async def due_to_expire(self, now: datetime, *, limit: int = 100) -> list[Grant]:
        """ACTIVE grants with ``expires_at <= now``, earliest first (an index range scan)."""
        ...

    async def next_expiry(self) -> datetime | None:
        """The earliest ``expires_at`` among ACTIVE grants, or None."""
        ...

    async def revokes_due(self, now: datetime, *, limit: int = 100) -> list[Grant]:
        """REVOKING grants whose ``next_attempt_at <= now``."""
        ...

    async def schedule_revoke_retry(
        self, grant_id: str, *, at: datetime, error: str, audit: AuditFor[Grant] | None = None
    ) -> Grant:
        """Record a failed revoke attempt: increment revoke_attempts, set next_attempt_at and
        last_error, and drop the claim (a scheduled retry is nobody's). Only for REVOKING grants
        (else ``AlreadyDecided``)."""
        ...

    async def active_for_incident(self, incident_id: str) -> list[Grant]:
        """ACTIVE grants issued under that PagerDuty incident."""
        ...

    async def incidents_of_active(self, flows: Sequence[str], *, after: str = "", limit: int = 100) -> list[str]:
        """One page of the distinct incident ids that ACTIVE grants of ``flows`` are bound to, in id
        order, after ``after`` (the last id of the previous page): an index scan, no grant read."""
        ...

    async def begin_expiry(
        self,
        grant_ids: Sequence[str],
        *,
        now: datetime,
        lease_until: datetime,
        owner: str = "",
        ended_by: str,
        audit: AuditFor[list[Grant]] | None = None,
    ) -> list[Grant]:
        """Move those of ``grant_ids`` that are still ACTIVE and expired at ``now`` to REVOKING
        (end reason ``expired``, ended by ``ended_by``), each claiming its first revoke attempt until
        ``lease_until`` for ``owner``, with their audit rows, in one transaction. Each row is a
        compare-and-set: the grants another caller ended or extended meanwhile are left out of the
        result, which is what this caller now holds."""
        ...

    async def finish_revokes(
        self, grant_ids: Sequence[str], *, at: datetime, audit: AuditFor[list[Grant]] | None = None
    ) -> list[Grant]:
        """Move those of ``grant_ids`` still REVOKING to ENDED at ``at`` (the provisioner confirmed
        their revoke), with their audit rows, in one transaction; returns the grants moved."""
        ...

    async def count_active(self) -> int: ...

    async def add_for_request(self, grant: Grant, *, audit: AuditFor[Grant] | None = None) -> Grant:
        """Insert ``grant`` for its request and set the request's ``grant_id``, in one transaction,
        only while that request is APPROVED and has no grant (compare-and-set: of two replicas
        repairing the same request, one wins). Raises ``AlreadyDecided`` when the request is not
        approved or already has a grant, ``NotFound`` when it does not exist."""
        ...

    async def claim_provisioning(
        self,
        grant_id: str,
        *,
        now: datetime,
        lease_until: datetime,
        owner: str = "",
        audit: AuditFor[Grant] | None = None,
    ) -> Grant:
        """Claim the provisioning of a PROVISIONING grant whose lease (``next_attempt_at``) ran out
        at ``now`` (or that has none): compare-and-set ``next_attempt_at`` to ``lease_until`` and
        ``claimed_by`` to ``owner``. Only the claimant calls the provisioner. Raises ``AlreadyDecided``
        when the grant is no longer provisioning or someone holds a live claim; ``NotFound`` when absent."""
        ...

    async def claim_revoke(self, grant_id: str, *, now: datetime, lease_until: datetime, owner: str = "") -> Grant:
        """Claim one revoke attempt of a REVOKING grant whose ``next_attempt_at <= now``:
        compare-and-set ``next_attempt_at`` to ``lease_until`` (and ``claimed_by`` to ``owner``), so no
        other pass or replica takes the same attempt while the provisioner is called. Raises
        ``AlreadyDecided`` when the grant is not revoking or the attempt is not due (claimed by someone
        else); ``NotFound`` when absent."""
        ...

    async def release_claims(self, owner: str, *, now: datetime) -> list[Grant]:
        """``owner`` restarted, so the live-looking claims it held (PROVISIONING or REVOKING grants
        claimed by it, lease not yet run out) are dead: make them due at ``now``, unclaimed, and
        return them. A no-op for the empty owner. Atomic."""
        ...

    async def provisioning_due(self, now: datetime, *, limit: int = 100) -> list[Grant]:
        """PROVISIONING grants with no live claim (``next_attempt_at`` is null or ``<= now``): the
        ones a crash left behind. Oldest claim first."""
        ...


class AuditLog(Protocol):
    async def append(self, event: AuditEvent) -> None:
        """Append one event. Never updates or deletes."""
        ...

    async def since(self, at: datetime, *, limit: int = 100_000) -> list[AuditEvent]:
        """Events at or after ``at``, oldest first, with ``seq`` set."""
        ...


class SettingsStore(Protocol):
    async def get(self, key: str) -> str | None: ...

    async def set(self, key: str, value: str, *, audit: AuditFor[str | None] | None = None) -> str | None:
        """Set a value and return the previous one. ``audit`` gets the previous value (None when
        unset) and its rows commit with the write."""
        ...


class MessageStore(Protocol):
    """Which chat messages show an object (a request, a transaction, an incident)."""

    async def add(self, subject: str, ref: MessageRef) -> None: ...

    async def refs(self, subject: str) -> list[MessageRef]: ...

    async def claim_cards(self, request_id: str, *, owner: str, now: datetime, until: datetime) -> bool:
        """Claim the right to post a request's approval cards: atomic, True for one caller until
        ``until``; an unposted claim whose lease ended by ``now`` can be taken over; never once posted."""
        ...

    async def cards_posted(self, request_id: str, *, owner: str, at: datetime) -> bool:
        """Mark the request's cards posted, if ``owner`` holds its claim."""
        ...

    async def release_card_claims(self, owner: str, *, now: datetime) -> int:
        """``owner`` restarted: its unposted claims lapse at ``now``, for the reconciler to post."""
        ...


class TransactionStore(Protocol):
    """Authentication transactions."""

    async def add(self, transaction: AuthTransaction, *, audit: AuditFor[None] | None = None) -> None:
        """Insert a new transaction. Raises ``StorageError`` if the id or token hash exists."""
        ...

    async def get(self, transaction_id: str) -> AuthTransaction | None: ...

    async def by_token_hash(self, token_hash: str) -> AuthTransaction | None: ...

    async def by_dedup_key(self, dedup_key: str) -> AuthTransaction | None: ...

    async def decide(
        self,
        transaction_id: str,
        *,
        expected: AuthStatus,
        new: AuthStatus,
        at: datetime,
        note: str | None = None,
        audit: AuditFor[AuthTransaction] | None = None,
    ) -> AuthTransaction:
        """Compare-and-set the status (this is what makes a link single-use). Raises
        ``AlreadyDecided`` (with the stored status) when it is not ``expected``, ``NotFound``."""
        ...

    async def update_delivery(
        self,
        transaction_id: str,
        *,
        channels: tuple[str, ...],
        dedup_key: str | None,
        note: str,
        audit: AuditFor[AuthTransaction] | None = None,
    ) -> AuthTransaction:
        """Record how the target was reached. ``NotFound`` when absent."""
        ...

    async def pending_expired(self, now: datetime, *, limit: int = 100) -> list[AuthTransaction]:
        """PENDING transactions with ``expires_at <= now`` (an index range scan)."""
        ...


class MirrorStore(Protocol):
    """The incidents mirrored into chat, with the newest status Ackgate has seen of each."""

    async def get(self, incident_id: str) -> IncidentMirror | None: ...

    async def put_if_newer(self, mirror: IncidentMirror) -> bool:
        """Store ``mirror`` unless the stored one has a later ``status_at`` (an out-of-order event
        must never move an incident backwards). Atomic; returns whether it was stored."""
        ...

    async def by_transaction(self, transaction_id: str) -> IncidentMirror | None: ...

    async def claim_post(self, incident_id: str, *, token: str, now: datetime, until: datetime) -> bool:
        """Claim the right to post the incident's first message: atomic, True for one caller until
        ``until``; a claim whose lease ended by ``now`` can be taken over. The claim is also the
        record that the message is owed: it stays until :meth:`release_post`, which its holder
        calls once the message exists, so a claim whose holder died or failed is found by
        :meth:`lapsed_posts` when its lease ends."""
        ...

    async def release_post(self, incident_id: str, *, token: str) -> None:
        """The message exists (or nothing is owed any more): drop the claim, if ``token`` holds it."""
        ...

    async def lapse_post(self, incident_id: str, *, token: str, now: datetime) -> None:
        """The holder of ``token`` could not post (the platform refused): the message is still
        owed, so its claim's lease ends at ``now`` and the chat call counts as not begun."""
        ...

    async def release_posts(self, owner: str, *, now: datetime) -> int:
        """``owner`` restarted: the post claims it holds (see :func:`bot.core.domain.claim_token`)
        whose chat call had not begun (:meth:`sending`) get a lease ended at ``now``, so the next
        :meth:`lapsed_posts` finds them; the others keep their lease. Returns how many."""
        ...

    async def sending(self, incident_id: str, *, token: str) -> bool:
        """The holder of ``token`` is about to call the chat platform: from now on its claim, if it
        dies, is not ended at its restart (the message may exist), only by its lease."""
        ...

    async def lapsed_posts(self, now: datetime, *, limit: int = 100) -> list[str]:
        """Incidents whose first message is owed and whose claim's lease ended by ``now`` (its
        holder died, failed, or restarted), oldest lease first. The claims are few (one per first
        message being posted or owed), so this reads a small table."""
        ...


class SeenStore(Protocol):
    """Keys of deliveries already processed (webhook ids, event ids)."""

    async def first_time(self, key: str, *, at: datetime) -> bool:
        """Atomically record ``key``; True only the first time it is ever recorded."""
        ...


@dataclass(frozen=True)
class InboxDelivery:
    """One PagerDuty webhook delivery kept in the inbox (see :class:`WebhookInbox`)."""

    event_id: str
    event_type: str
    body: str  # the verified body, as received (UTF-8 JSON), parsed again when processed
    received_at: datetime
    state: str  # "pending" | "done" | "parked"
    attempts: int  # claims so far, this one included
    claim: str | None = None  # the token of the current (or last) claim


class WebhookInbox(Protocol):
    """Webhook deliveries stored before they are answered, processed once from here.

    A claim is a compare-and-set with a lease: only a pending, due delivery that nobody holds (or
    whose holder's lease lapsed, e.g. it crashed) can be claimed, and only the holder of a claim's
    token can finish, retry or park it.
    """

    async def add(self, event_id: str, *, event_type: str, body: str, at: datetime) -> bool:
        """Store a delivery unless its event id is already stored: one atomic insert-if-absent.
        True only for the one caller that stored it. Raises ``StorageError`` (nothing stored)."""
        ...

    async def claim(self, event_id: str, *, token: str, now: datetime, until: datetime) -> InboxDelivery | None:
        """Take a pending delivery due at ``now`` that is unclaimed or whose lease ended by ``now``;
        hold it until ``until`` under ``token`` and count the attempt. None when another holds it,
        it is done or parked, or its retry is not due yet."""
        ...

    async def finish(self, event_id: str, *, token: str, at: datetime) -> bool:
        """Mark the delivery done, if ``token`` still holds it. Returns whether it did."""
        ...

    async def retry(self, event_id: str, *, token: str, at: datetime, error: str) -> bool:
        """Release the claim and make the delivery due again at ``at``, if ``token`` holds it."""
        ...

    async def park(self, event_id: str, *, token: str, at: datetime, error: str) -> bool:
        """Give up on the delivery (state ``parked``), if ``token`` holds it."""
        ...

    async def due(self, now: datetime, *, limit: int = 100) -> list[InboxDelivery]:
        """Pending deliveries claimable at ``now`` (retry due, no live lease), oldest first."""
        ...

    async def count_parked(self) -> int: ...

    async def prune(self, before: datetime) -> int:
        """Delete the deliveries done before ``before``; return how many went. Pending and parked stay."""
        ...

    async def release_claims(self, owner: str) -> int:
        """``owner`` restarted: drop the leases of the pending deliveries it holds (tokens made by
        :func:`bot.core.domain.claim_token` for it), so they are claimable at once. Returns how many."""
        ...


@dataclass(frozen=True)
class OutboxDelivery:
    """A chat message kept until the platform takes it (see :class:`ChatOutbox`).

    ``kind`` is ``user`` (``recipient`` is a Principal as JSON), ``channel`` (a channel id) or
    ``update`` (a MessageRef as JSON); ``card`` is the neutral card as JSON.
    """

    id: str
    platform: str
    kind: str
    recipient: str
    card: str
    created_at: datetime
    state: str  # "pending" | "done" | "expired"
    attempts: int = 0
    claim: str | None = None
    ref: MessageRef | None = None  # where the message landed, once delivered


class ChatOutbox(Protocol):
    """Chat messages the platform did not take, retried by a worker until delivered or too old.

    Claims are compare-and-set with a lease, so several replicas' workers send each message once.
    """

    async def add(self, delivery: OutboxDelivery, *, at: datetime) -> None:
        """Store a pending delivery due at ``at``. An ``update`` whose id is stored already replaces
        that row's card and makes it pending and due again (only the newest card matters)."""
        ...

    async def get(self, delivery_id: str) -> OutboxDelivery | None: ...

    async def revise(self, delivery_id: str, *, card: str) -> OutboxDelivery | None:
        """Replace the card of a pending delivery; return the delivery as stored afterwards
        (its ``state`` and ``ref`` tell a caller whether it was sent meanwhile), None if unknown."""
        ...

    async def drop_pending(self, delivery_id: str) -> bool:
        """Forget a pending, unclaimed delivery (a newer update got through directly)."""
        ...

    async def claim(self, delivery_id: str, *, token: str, now: datetime, until: datetime) -> OutboxDelivery | None:
        """As :meth:`WebhookInbox.claim`."""
        ...

    async def delivered(
        self, delivery_id: str, *, token: str, at: datetime, ref: MessageRef | None, placeholder: MessageRef | None
    ) -> bool:
        """Mark done if ``token`` holds it, storing ``ref``; in the same transaction every message
        ref equal to ``placeholder`` (recorded by whoever queued the message) becomes ``ref``."""
        ...

    async def retry(self, delivery_id: str, *, token: str, at: datetime, error: str) -> bool: ...

    async def expire(self, delivery_id: str, *, token: str, at: datetime, error: str) -> bool:
        """Give up (state ``expired``), if ``token`` holds it."""
        ...

    async def due(self, now: datetime, *, limit: int = 100) -> list[OutboxDelivery]:
        """Pending deliveries claimable at ``now``, oldest first."""
        ...

    async def count_pending(self) -> int: ...

    async def prune(self, before: datetime) -> int:
        """Delete the deliveries finished (done or expired) before ``before``."""
        ...

    async def release_claims(self, owner: str) -> int:
        """As :meth:`WebhookInbox.release_claims`."""
        ...


class Store(Protocol):
    """All the role ports of one backend, plus its lifecycle."""

    requests: RequestStore
    grants: GrantStore
    audit: AuditLog
    settings: SettingsStore
    messages: MessageStore
    transactions: TransactionStore
    mirrors: MirrorStore
    seen: SeenStore
    commands: CommandInbox
    inbox: WebhookInbox
    outbox: ChatOutbox
    address_book: AddressBook

    async def open(self) -> None:
        """Connect and apply pending migrations (idempotent; safe with several replicas)."""
        ...

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise ``StorageError`` if the database cannot answer a trivial query."""
        ...


# --- PagerDuty ----------------------------------------------------------------------------


class PagerDutyDirectory(Protocol):
    """What the core asks PagerDuty's REST API. Every method fails closed with a
    :class:`bot.core.errors.PagerDutyError` subclass."""

    async def user_by_email(self, email: str) -> PagerDutyUser | None:
        """The user whose login email equals ``email`` (case-insensitive), or None."""
        ...

    async def acknowledged_incidents(
        self,
        user_id: str,
        *,
        service_ids: Sequence[str] = (),
        urgencies: Sequence[str] = (),
        fresh: bool = False,
    ) -> list[Incident]:
        """Incidents currently acknowledged *by this user* (not merely assigned), newest first.

        A list that is not empty may be a few seconds old; ``fresh`` asks PagerDuty again."""
        ...

    def forget_acknowledgements(self) -> None:
        """Ask PagerDuty again for every user's acknowledged incidents (an incident changed)."""
        ...

    async def oncalls(
        self,
        *,
        user_ids: Sequence[str] = (),
        escalation_policy_ids: Sequence[str] = (),
        schedule_ids: Sequence[str] = (),
    ) -> list[OnCall]:
        """Current on-call entries matching the filters (all pages)."""
        ...

    async def incident(self, incident_id: str) -> Incident:
        """One incident by id. Raises ``PagerDutyNotFound``."""
        ...

    async def add_note(self, incident_id: str, content: str) -> None:
        """Add a note to the incident's timeline (needs ``PAGERDUTY_FROM_EMAIL``)."""
        ...

    async def ping(self) -> None:
        """Raise a ``PagerDutyError`` if the API is unreachable or rejects the token."""
        ...


# --- chat and provisioning ----------------------------------------------------------------


class ChatNotifier(Protocol):
    """Sends and updates messages on one chat platform."""

    async def send_to_user(self, user: Principal, card: Card) -> MessageRef:
        """Direct-message a user. Raises ``ChatError``."""
        ...

    async def send_to_channel(self, channel: str, card: Card) -> MessageRef:
        """Post in a channel. Raises ``ChatError``."""
        ...

    async def update(self, ref: MessageRef, card: Card) -> None:
        """Replace a message Ackgate posted earlier. Raises ``ChatError``."""
        ...

    async def user_by_email(self, email: str) -> Principal | None:
        """The chat user with that email, or None."""
        ...

    async def user_by_id(self, user_id: str) -> Principal | None:
        """The chat user with that platform id (email may be empty when hidden), or None."""
        ...


class Provisioner(Protocol):
    """Makes a grant real in the target system. Both calls must be idempotent on the grant id."""

    async def grant(self, grant: Grant) -> None:
        """Raise ``ProvisioningError`` when access could not be given after the provisioner's retries."""
        ...

    async def revoke(self, grant: Grant) -> None:
        """Raise ``ProvisioningError`` when access could not be taken away; the caller retries later."""
        ...


class CommandInbox(Protocol):
    """Commands acknowledged to a chat platform, kept until they are answered (one row per
    invocation, shared by replicas): the dedup of retries and replays, and the work a recovery
    pass finishes after a crash."""

    async def record(self, command: ReceivedCommand) -> bool:
        """Atomically insert ``command`` unless its key exists. True only for the first insert
        of that key, ever (until pruned); a retry, a replay or a rival replica gets False."""
        ...

    async def answered(self, key: str, *, at: datetime) -> bool:
        """Mark the command answered. False when it was already answered or is unknown."""
        ...

    async def claim_unanswered(
        self,
        now: datetime,
        *,
        lease_until: datetime,
        received_after: datetime,
        max_attempts: int,
        limit: int = 20,
        owner: str = "",
        kinds: Sequence[str] = (),
    ) -> list[ReceivedCommand]:
        """Compare-and-set take-over: every unanswered command whose lease lapsed (``lease_until <= now``),
        received after ``received_after``, taken over fewer than ``max_attempts`` times and (when
        ``kinds`` is given) of one of those kinds gets ``lease_until``, ``claimed_by = owner`` and one
        more attempt, and is returned. Two callers never get the same row for the same lease."""
        ...

    async def release_claims(self, owner: str, *, now: datetime) -> int:
        """``owner`` restarted: its unanswered commands (recorded or taken over by it) get a lapsed
        lease (``now``), so the next recovery pass answers them. Other owners' rows are untouched."""
        ...

    async def prune(self, before: datetime) -> int:
        """Delete the commands received strictly before ``before``; return how many went."""
        ...


# --- chat platforms (issue 7: the core assumes none) ---------------------------------------


class ChatHealth(Protocol):
    """A chat platform's own health check, for ``/access admin status`` and ``/metrics``."""

    async def health(self) -> None:
        """Return when the platform answers and accepts Ackgate's credentials; raise
        :class:`bot.core.errors.ChatError` (with a sentence for an admin) otherwise."""
        ...


class AdminCheck(Protocol):
    """Whether a principal is an Ackgate admin by a platform's own group (e.g. a Slack user group)."""

    async def __call__(self, principal: Principal) -> bool:
        """False for a principal of another platform; raises ``ChatError`` when the platform fails."""
        ...


@dataclass(frozen=True)
class ChatAddress:
    """How Ackgate reaches one chat user: the platform's user id, the email (lower-cased, the join
    key with PagerDuty), a display name, and the platform's conversation data (opaque JSON, e.g. a
    Teams conversation reference; ``""`` when the platform needs none)."""

    platform: str
    user_id: str
    email: str
    display_name: str = ""
    conversation: str = ""
    updated_at: datetime | None = None


class AddressBook(Protocol):
    """Chat users Ackgate has seen, one row per (platform, user id); emails match case-insensitively."""

    async def upsert(self, address: ChatAddress, *, at: datetime) -> None:
        """Insert or replace the row for (platform, user id), stamped ``at``. An empty
        ``conversation`` keeps the stored one (a lookup by email must not forget a Teams reference)."""
        ...

    async def by_user(self, platform: str, user_id: str) -> ChatAddress | None: ...

    async def by_email(self, email: str, *, platform: str | None = None) -> list[ChatAddress]:
        """The rows with this email (any case), newest first; only ``platform``'s when given."""
        ...
