"""Processing PagerDuty webhooks from a durable inbox: each event exactly once, across replicas and crashes.

The endpoint stores every verified delivery with :meth:`WebhookInbox.add` (one atomic
insert-if-absent keyed by the event id) before it answers 202, then asks :meth:`Inbox.process`
to handle it. Processing claims the stored row by compare-and-set with a lease, hands the event
to ``on_event``, and marks it done. :meth:`Inbox.recover` (at start-up and periodically, on the
expiry scheduler) takes what a crash or a failure left pending once its lease lapsed or its retry
is due. A failing event is retried with exponential backoff ``max_attempts`` times, then parked:
logged once, counted, and shown in the admin status.

An ``incident.resolved`` event, once handled, is stored once more as ``<id>:recheck``, due
``recheck_after`` later, and handled again then by whichever replica's recovery pass takes it: a
grant made under the incident meanwhile, from a lookup older than the webhook (a request in
flight, another replica's cached acknowledgements, PagerDuty's REST API not yet showing the
resolve), ends too. Being a row in the inbox, that second sweep survives a crash or a restart.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Final

from bot.core.clock import Clock
from bot.core.domain import claim_token
from bot.core.errors import StorageError
from bot.core.ports import InboxDelivery, WebhookInbox
from bot.core.webhooks import MalformedWebhook, WebhookEvent, parse_event

log = logging.getLogger("ackgate.webhooks")

OnEvent = Callable[[WebhookEvent], Awaitable[None]]

DEFAULT_LEASE: Final = timedelta(minutes=2)  # far above a normal processing time
DEFAULT_MAX_ATTEMPTS: Final = 6
DEFAULT_BACKOFF: Final = timedelta(seconds=5)
MAX_BACKOFF: Final = timedelta(minutes=10)
_ERROR_CHARS: Final = 500

RECHECK_SUFFIX: Final = ":recheck"
# After a resolve, its second sweep waits for the PagerDuty client's cache of acknowledgements
# (PAGERDUTY_INCIDENT_CACHE_SECONDS) to lapse, and this margin more for a request in flight.
RECHECK_MARGIN: Final = timedelta(seconds=25)


class Inbox:
    """The core side of the webhook inbox: accept (store), process (claim, run, finish), recover."""

    def __init__(
        self,
        store: WebhookInbox,
        *,
        on_event: OnEvent,
        clock: Clock,
        lease: timedelta = DEFAULT_LEASE,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        backoff: timedelta = DEFAULT_BACKOFF,
        on_parked: Callable[[], None] = lambda: None,
        instance: str = "",
        recheck_after: timedelta | None = None,
        on_recheck: OnEvent | None = None,
    ) -> None:
        self.recheck_after = recheck_after  # None: a resolve is handled once only
        # what handles the second sweep (``on_event`` unless told): it arrived from no webhook
        self.on_recheck = on_recheck or on_event
        self.store = store
        self.instance = instance  # named in its claims, so a restart takes back its dead ones at once
        self.on_event = on_event
        self.clock = clock
        self.lease = lease
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.on_parked = on_parked

    async def accept(self, event: WebhookEvent, body: bytes) -> bool:
        """Store a verified delivery; True only for the first copy of its event anywhere.

        Raises ``StorageError`` when it could not be stored (then PagerDuty must be asked to retry).
        """
        text = body.decode("utf-8")  # parse_event accepted it, so it is UTF-8
        return await self.store.add(event.id, event_type=event.event_type, body=text, at=self.clock.now())

    async def process(self, event_id: str) -> bool:
        """Claim the stored delivery and handle it. Never raises; True when this call handled it.

        A delivery another replica (or an earlier call) holds or finished is left alone: a lost
        claim is the normal outcome of a duplicate, logged at DEBUG.
        """
        token = claim_token(self.instance)
        now = self.clock.now()
        try:
            delivery = await self.store.claim(event_id, token=token, now=now, until=now + self.lease)
        except StorageError as exc:
            # Still pending in the inbox: the recovery pass takes it up again.
            log.warning("could not claim PagerDuty webhook event %s: %s", event_id, exc.message)
            return False
        if delivery is None:
            log.debug("PagerDuty webhook event %s is held or finished elsewhere", event_id)
            return False
        return await self._run(delivery, token)

    async def _run(self, delivery: InboxDelivery, token: str) -> bool:
        event_id = delivery.event_id
        try:
            event = parse_event(delivery.body)
        except MalformedWebhook as exc:  # stored by an older version with laxer rules
            await self._settle(self.store.park(event_id, token=token, at=self.clock.now(), error=exc.message))
            log.warning("PagerDuty webhook event %s parked: %s", event_id, exc.message)
            self.on_parked()
            return False
        rechecking = event_id != event.id  # the row of a resolve's second sweep: <id>:recheck
        try:
            await (self.on_recheck if rechecking else self.on_event)(event)
        except asyncio.CancelledError:
            # Stopped mid-way (shutdown): hand the event back at once rather than after the lease.
            await self._settle(self.store.retry(event_id, token=token, at=self.clock.now(), error="interrupted"))
            raise
        except Exception as exc:
            await self._failed(delivery, token, exc)
            return False
        if self.recheck_after is not None and event.event_type == "incident.resolved" and not rechecking:
            try:
                await self.store.add(
                    event_id + RECHECK_SUFFIX,
                    event_type=delivery.event_type,
                    body=delivery.body,
                    at=self.clock.now() + self.recheck_after,
                )
            except StorageError as exc:  # still pending: handled again (each grant ends once), then stored
                await self._failed(delivery, token, exc)
                return False
        await self._settle(self.store.finish(event_id, token=token, at=self.clock.now()))
        return True

    async def _failed(self, delivery: InboxDelivery, token: str, exc: Exception) -> None:
        event_id = delivery.event_id
        error = f"{type(exc).__name__}: {exc}"[:_ERROR_CHARS]
        now = self.clock.now()
        if delivery.attempts >= self.max_attempts:
            await self._settle(self.store.park(event_id, token=token, at=now, error=error))
            # Logged once, with the traceback: nothing retries it any more.
            log.error(
                "PagerDuty webhook event %s (%s) failed %d times and is parked",
                event_id,
                delivery.event_type,
                delivery.attempts,
                exc_info=exc,
                extra={"event_id": event_id, "event_type": delivery.event_type},
            )
            self.on_parked()
            return
        delay = min(self.backoff * 2 ** (delivery.attempts - 1), MAX_BACKOFF)
        await self._settle(self.store.retry(event_id, token=token, at=now + delay, error=error))
        log.warning(
            "processing PagerDuty webhook event %s (%s) failed (attempt %d of %d, %s); retrying in %ds",
            event_id,
            delivery.event_type,
            delivery.attempts,
            self.max_attempts,
            error,
            int(delay.total_seconds()),
            extra={"event_id": event_id, "event_type": delivery.event_type},
        )

    async def _settle(self, outcome: Awaitable[bool]) -> None:
        """Record an outcome; if storage fails the lease lapses and recovery runs the event again."""
        try:
            await outcome
        except StorageError as exc:
            log.warning("could not record a PagerDuty webhook outcome: %s", exc.message)

    async def recover(self, *, limit: int = 100) -> int:
        """Process what is pending and claimable now (crashed, failed and due, never claimed, and
        the resolves due to be swept again).

        For the expiry scheduler's ``jobs``; returns how many events it handled.
        """
        recovered = rechecked = 0
        for delivery in await self.store.due(self.clock.now(), limit=limit):
            if await self.process(delivery.event_id):
                if delivery.event_id.endswith(RECHECK_SUFFIX):
                    rechecked += 1
                else:
                    recovered += 1
        if recovered:
            log.info("recovered %d PagerDuty webhook events from the inbox", recovered)
        if rechecked:  # routine, not a sign of trouble
            log.debug("swept the grants of %d resolved incidents once more", rechecked)
        return recovered + rechecked

    async def prune(self, *, kept: timedelta) -> int:
        """Forget deliveries done more than ``kept`` ago (PagerDuty redelivers for 48 hours)."""
        return await self.store.prune(self.clock.now() - kept)
