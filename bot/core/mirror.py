"""Mirroring PagerDuty incidents into a chat channel, and ending grants when their incident resolves.

One message per incident, posted the first time (by the one replica holding the incident's claim)
and updated in place after. The claim stays until the message exists, so a first message whose
claimant died or failed is posted by :meth:`MirrorService.post_missing` once the claim lapses (at
the claimant's restart, or when its lease ends), whatever became of the events that asked for it.
Webhook delivery is at-least-once and unordered, so every event goes through
:func:`bot.core.webhooks.advances` and the store's compare-and-set
(:meth:`bot.core.ports.MirrorStore.put_if_newer`): a late or repeated event never moves an incident
backwards and never touches chat twice.

Grants issued under an incident whose flow says ``revoke_on_resolve`` end when the incident
resolves: at once through the webhook, or through :meth:`MirrorService.check_incidents` where no
webhook subscription exists. The holder is told by the ordinary ``GrantEnded`` reaction. A grant
can still be made under an incident just after its resolve was handled, from a lookup made before
it (a request in flight, or another replica's few-second cache of acknowledgements), so the inbox
hands the resolve in again later (:data:`bot.core.webhook_inbox.RECHECK_SUFFIX`): the same event
again is no older than what is mirrored, and ends the incident's grants all the same. Every
incident event also drops this replica's cached acknowledgements, so its next gate check asks
PagerDuty.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import timedelta
from typing import Final

from bot.core import messages
from bot.core.bus import MessageBus
from bot.core.clock import Clock
from bot.core.domain import AuthTransaction, EndReason, Grant, IncidentMirror, claim_token, split_channel
from bot.core.errors import ChatError, PagerDutyError, PagerDutyNotFound
from bot.core.grants import GrantLifecycle, isolated
from bot.core.ports import ChatNotifier, PagerDutyDirectory, Store
from bot.core.views import Card, Fact, Link, Tone
from bot.core.webhooks import HANDLED_EVENT_TYPES, WebhookEvent, WebhookIncident, advances

log = logging.getLogger("ackgate.mirror")

REVOKED_BY: Final = "pagerduty"

# The status a lifecycle event puts an incident in, whatever its (possibly trimmed) data says.
_EVENT_STATUS: Final[Mapping[str, str]] = {
    "incident.triggered": "triggered",
    "incident.acknowledged": "acknowledged",
    "incident.unacknowledged": "triggered",
    "incident.reopened": "triggered",
    "incident.resolved": "resolved",
}

_TONE: Final[Mapping[str, Tone]] = {
    "triggered": Tone.DANGER,
    "acknowledged": Tone.WARNING,
    "resolved": Tone.SUCCESS,
}

# How long a replica may take to post an incident's first message before another may try.
POST_CLAIM_LEASE: Final = timedelta(seconds=60)

# Incidents of revoke-on-resolve grants read from the store at a time by the resolved-incident poll.
INCIDENT_PAGE: Final = 100


def subject(incident_id: str) -> str:
    """The :class:`bot.core.ports.MessageStore` subject under which an incident's message is kept."""
    return f"incident:{incident_id}"


def mirror_card(mirror: IncidentMirror, transaction: AuthTransaction | None = None) -> Card:
    """The channel message for one incident: number and title with a link, status, linked transaction."""
    facts = [Fact("Status", messages.mirror_status(mirror.status, mirror.acknowledged_by))]
    if mirror.html_url:
        facts.append(Fact("Incident", f"#{mirror.number} {mirror.title}", url=mirror.html_url))
    if transaction is not None:
        state = messages.mirror_transaction(transaction.target.email, transaction.status.value, transaction.decided_at)
        facts.append(Fact("Authentication request", state))
    return Card(
        title=messages.mirror_title(mirror.number, mirror.title),
        facts=tuple(facts),
        links=(Link(messages.MIRROR_OPEN, mirror.html_url),) if mirror.html_url else (),
        footnote=f"Transaction {transaction.id}" if transaction is not None else "",
        tone=_TONE.get(mirror.status, Tone.INFO),
    )


class MirrorService:
    """Feeds webhook events into the mirror and the incident-bound grants.

    ``channel`` (``platform:channel``, a bare id being Slack's) None turns chat mirroring off (grants still end on resolve). ``services`` are
    PagerDuty service ids whose every incident is mirrored, besides those of Ackgate's own
    authentication requests.
    """

    def __init__(
        self,
        *,
        store: Store,
        notifiers: Mapping[str, ChatNotifier],
        access: GrantLifecycle,
        pagerduty: PagerDutyDirectory,
        bus: MessageBus,
        clock: Clock,
        channel: str | None,
        services: Sequence[str] = (),
    ) -> None:
        self.store = store
        self.notifiers = notifiers
        self.access = access
        self.pagerduty = pagerduty
        self.bus = bus
        self.clock = clock
        # ``platform:channel`` (``ACKGATE_MIRROR_CHANNEL=slack:C0123``); a bare id is Slack's, as before.
        self.platform, self.channel = "", channel
        if channel:
            self.platform, self.channel = split_channel(channel)
        self.services = frozenset(services)
        # Serialises one replica's events per incident; across replicas the stored claim
        # (:meth:`bot.core.ports.MirrorStore.claim_post`) is what keeps the first post single.
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    def _lock(self, incident_id: str) -> asyncio.Lock:
        lock = self._locks.get(incident_id)
        if lock is None:
            lock = self._locks[incident_id] = asyncio.Lock()
        return lock

    # --- webhooks ---------------------------------------------------------------------------

    async def on_event(self, event: WebhookEvent) -> None:
        """Apply one verified, first-seen webhook event. Other types and stale events change nothing."""
        incident = event.incident
        status = _status(event)
        if event.event_type not in HANDLED_EVENT_TYPES or incident is None or status is None:
            return
        self.pagerduty.forget_acknowledgements()
        async with self._lock(incident.id):
            current = await self.store.mirrors.get(incident.id)
            stamped = replace(event, incident=replace(incident, status=status))
            if current is not None and not advances(current.status, current.status_at, stamped):
                log.debug("incident %s: event %s is older than what is mirrored; ignored", incident.id, event.id)
                return
            changed = await self._remember(event, incident, status, current)
            if status == "resolved":
                await self.revoke_for_incident(incident.id)
            # A re-run after a crash may change nothing stored, while the message was never posted.
            if changed or (current is not None and not await self.store.messages.refs(subject(incident.id))):
                await self._render(incident.id)

    async def _remember(
        self, event: WebhookEvent, incident: WebhookIncident, status: str, current: IncidentMirror | None
    ) -> bool:
        """Store what the event says if the incident is ours to mirror; True when something changed."""
        transaction = None
        if incident.incident_key:
            transaction = await self.store.transactions.by_dedup_key(incident.incident_key)
        ours = current is not None or transaction is not None or incident.service_id in self.services
        if not ours:
            return False
        if event.event_type == "incident.acknowledged":
            acknowledged_by = event.agent_summary or event.agent_email or ""
        elif status == "triggered":
            acknowledged_by = ""
        else:
            acknowledged_by = current.acknowledged_by if current is not None else ""
        mirror = IncidentMirror(
            incident_id=incident.id,
            number=incident.number if incident.number is not None else (current.number if current else 0),
            title=incident.title or (current.title if current else ""),
            html_url=incident.html_url or (current.html_url if current else ""),
            status=status,
            status_at=event.occurred_at,
            acknowledged_by=acknowledged_by,
            service_id=incident.service_id or (current.service_id if current else ""),
            transaction_id=transaction.id if transaction else (current.transaction_id if current else None),
            incident_key=incident.incident_key or (current.incident_key if current else ""),
        )
        if mirror == current:
            return False  # a repeat of what we hold: nothing to store or redraw
        # Another replica may have stored a newer event since we read; it wins.
        return await self.store.mirrors.put_if_newer(mirror)

    async def transaction_changed(self, transaction_id: str) -> None:
        """Redraw the mirrored message of the incident raised for this transaction, if there is one."""
        mirror = await self.store.mirrors.by_transaction(transaction_id)
        if mirror is None:
            return
        async with self._lock(mirror.incident_id):
            await self._render(mirror.incident_id)

    async def _render(self, incident_id: str) -> None:
        """Post the incident's message the first time, update it after; always from the stored state."""
        if self.channel is None:
            return
        notifier = self.notifiers.get(self.platform)
        if notifier is None:
            log.warning("no %s notifier: incident %s is not mirrored", self.platform, incident_id)
            return
        try:
            refs = await self.store.messages.refs(subject(incident_id))
            if not refs:
                await self._post_first(incident_id, notifier, self.channel)
                return
            card = await self._card(incident_id)
            if card is None:
                return
            for ref in refs:
                await notifier.update(ref, card)
        except ChatError as exc:
            # The stored state is right; the next event or transaction change redraws it (and a
            # first message not posted is owed under its claim, see post_missing).
            self._not_mirrored(incident_id, exc)

    def _not_mirrored(self, incident_id: str, exc: ChatError) -> None:
        log.warning("could not mirror incident %s into %s: %s", incident_id, self.channel, exc.message)

    async def post_missing(self, *, limit: int = INCIDENT_PAGE) -> int:
        """Post the first messages still owed: those whose claimant died, failed or restarted before
        the message existed (its claim lapsed). For the scheduler's ``jobs``; returns how many.

        The events of such an incident may all be finished: a rival's lost the claim to the dead
        holder, and the holder's own, re-run after its restart, may be older than what is stored
        now and so change nothing. The lapsed claim is the record that the message is owed.
        """
        notifier = self.notifiers.get(self.platform)
        if self.channel is None or notifier is None:
            return 0  # then nothing is ever claimed (see _render)
        posted = 0
        for incident_id in await self.store.mirrors.lapsed_posts(self.clock.now(), limit=limit):
            async with self._lock(incident_id):
                try:
                    if await self._post_first(incident_id, notifier, self.channel):
                        posted += 1
                except ChatError as exc:
                    self._not_mirrored(incident_id, exc)
        if posted:
            log.info("posted %d mirror message(s) left unposted by a crash or a failure", posted)
        return posted

    async def _card(self, incident_id: str) -> Card | None:
        mirror = await self.store.mirrors.get(incident_id)
        if mirror is None:
            return None
        transaction = None
        if mirror.transaction_id is not None:
            transaction = await self.store.transactions.get(mirror.transaction_id)
        return mirror_card(mirror, transaction)

    async def _post_first(self, incident_id: str, notifier: ChatNotifier, channel: str) -> bool:
        """Post the first message, if this replica wins the incident's claim (one message per incident).

        A replica that loses the claim does nothing more: it has stored its state already, and the
        claimant draws the newest stored state once its message exists. The claim is released
        only once the message's ref is stored, so a later claimant finds the ref and updates; if
        this replica dies or fails first, the claim stays and :meth:`post_missing` (here or on a
        rival) takes it over when its lease ends. True when this call posted the message.
        """
        token = claim_token(self.access.instance)  # names this instance: a restart lapses its dead claims
        now = self.clock.now()
        if not await self.store.mirrors.claim_post(incident_id, token=token, now=now, until=now + POST_CLAIM_LEASE):
            log.debug("incident %s: another replica is posting its message", incident_id)
            return False
        try:
            return await self._post_claimed(incident_id, notifier, channel, token)
        except ChatError:
            # The platform did not take it: still owed, to the next event or recovery pass at once.
            await self.store.mirrors.lapse_post(incident_id, token=token, now=self.clock.now())
            raise

    async def _post_claimed(self, incident_id: str, notifier: ChatNotifier, channel: str, token: str) -> bool:
        refs = await self.store.messages.refs(subject(incident_id))
        card = await self._card(incident_id)
        if card is None or refs:
            # Posted by a claimant that finished (or died releasing) since our first look: redraw only.
            if card is not None:
                for ref in refs:
                    await notifier.update(ref, card)
            await self.store.mirrors.release_post(incident_id, token=token)
            return False
        # From here a death leaves a message that may exist: the claim then keeps its lease.
        if not await self.store.mirrors.sending(incident_id, token=token):
            log.debug("incident %s: lost the claim on its first message", incident_id)
            return False
        ref = await notifier.send_to_channel(channel, card)
        await self.store.messages.add(subject(incident_id), ref)
        await self.store.mirrors.release_post(incident_id, token=token)
        # A rival may have stored a newer state while we posted, and found no message to update.
        latest = await self._card(incident_id)
        if latest is not None and latest != card:
            await notifier.update(ref, latest)
        return True

    # --- grants bound to their incident ----------------------------------------------------

    def _revokes_on_resolve(self, grant: Grant) -> bool:
        flow = next((f for f in self.access.policy.flows if f.name == grant.flow), None)
        return flow is not None and flow.revoke_on_resolve

    async def revoke_for_incident(self, incident_id: str) -> int:
        """End every active grant under this incident whose flow has ``revoke_on_resolve``.

        Each goes through the grant lifecycle's leased, audited revoke; one grant's failure never
        stops the others (it is one WARNING line, and a grant already ended elsewhere a DEBUG one)."""
        ended = 0
        for grant in await self.store.grants.active_for_incident(incident_id):
            if await self._end(grant):
                ended += 1
        return ended

    async def _end(self, grant: Grant) -> bool:
        if not self._revokes_on_resolve(grant):
            return False
        # A lost race (the holder, the expiry sweep or another replica got there first) is DEBUG.
        work = self.access.end_grant(grant, reason=EndReason.INCIDENT_RESOLVED, by=REVOKED_BY)
        if await isolated("revoke on resolve", grant.id, work) is None:
            return False
        log.info("grant %s ended: its PagerDuty incident %s resolved", grant.id, grant.incident and grant.incident.id)
        return True

    async def check_incidents(self) -> int:
        """Poll PagerDuty for the incidents of revoke-on-resolve grants; end those whose incident resolved.

        For deployments without a webhook subscription. One REST call per distinct incident; an
        incident PagerDuty cannot show now is checked again next time. The incidents come from the
        store a page at a time (an index of ACTIVE grants by incident), so no grant is read unless
        its incident resolved, and nothing is asked when no flow revokes on resolve. Returns the
        grants ended.
        """
        flows = [f.name for f in self.access.policy.flows if f.revoke_on_resolve]
        ended = 0
        after = ""
        while flows:
            page = await self.store.grants.incidents_of_active(flows, after=after, limit=INCIDENT_PAGE)
            for incident_id in page:
                ended += await self._check_incident(incident_id)
            if len(page) < INCIDENT_PAGE:
                break
            after = page[-1]
        return ended

    async def _check_incident(self, incident_id: str) -> int:
        try:
            incident = await self.pagerduty.incident(incident_id)
        except PagerDutyNotFound:
            log.warning("PagerDuty no longer shows incident %s; its grants run to their expiry", incident_id)
            return 0
        except PagerDutyError as exc:
            log.warning("could not check PagerDuty incident %s: %s", incident_id, exc.message)
            return 0
        if incident.status != "resolved":
            return 0
        return await self.revoke_for_incident(incident_id)


def _status(event: WebhookEvent) -> str | None:
    status = _EVENT_STATUS.get(event.event_type)
    if status is None and event.incident is not None:
        status = event.incident.status
    return status
