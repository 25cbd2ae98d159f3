"""``POST /webhooks/pagerduty``: receives PagerDuty V3 webhooks (FACTS.md §7-§8).

PagerDuty wants a 2xx within 5 seconds. A verified event is first stored in the durable inbox
(:class:`bot.core.webhook_inbox.Inbox`, one insert-if-absent keyed by the event id), then answered 202,
then processed from the inbox in a background task; a crash in between leaves it to the inbox's
recovery pass. Status codes are chosen for PagerDuty's retry rules: it retries 5xx and never other
4xx, and 3 consecutive dropped deliveries disable the subscription for 24 hours. So a body that is
signed but malformed gets a 400 with a short reason (a 5xx would bring the poison body back for 48
hours), and a storage failure gets a 503 (PagerDuty retries). No log line ever carries the body.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Protocol

from aiohttp import web
from pydantic import SecretStr

from bot.core import lanes
from bot.core.errors import StorageError
from bot.core.webhooks import (
    HANDLED_EVENT_TYPES,
    MAX_ID_LENGTH,
    PING_EVENT_TYPE,
    SIGNATURE_HEADER,
    SUBSCRIPTION_HEADER,
    WEBHOOK_ID_HEADER,
    MalformedWebhook,
    WebhookEvent,
    parse_event,
    verify_signature,
)

log = logging.getLogger("ackgate.webhooks")

Spawn = Callable[[Coroutine[Any, Any, None]], None]

_CHUNK = 64 * 1024


class _TooLarge(Exception):
    pass


class WebhookIntake(Protocol):
    """What the endpoint needs of the inbox (:class:`bot.core.webhook_inbox.Inbox` is one)."""

    async def accept(self, event: WebhookEvent, body: bytes) -> bool:
        """Store the delivery durably; True only for the first copy. Raises ``StorageError``."""
        ...

    def process(self, event_id: str) -> Awaitable[bool]:
        """Handle the stored delivery (claimed, so once across replicas); never raises."""
        ...


def mount_pagerduty_webhooks(
    app: web.Application,
    *,
    secrets: Sequence[SecretStr],
    inbox: WebhookIntake,
    count_signature_failure: Callable[[], None] = lambda: None,
    count_event: Callable[[str], None] = lambda event_type: None,
    path: str = "/webhooks/pagerduty",
    max_body: int = 256 * 1024,
    spawn: Spawn | None = None,
    shutdown_grace: float = 5.0,
) -> None:
    """Add the webhook route to ``app`` (before it starts).

    Each verified event whose type is in :data:`bot.core.webhooks.HANDLED_EVENT_TYPES` is stored with
    ``inbox.accept``; the first copy is counted (``count_event`` with its type) and handed to
    ``inbox.process`` through ``spawn``. The processing coroutine never raises, it logs. The
    default spawner keeps its tasks alive and, at shutdown, waits ``shutdown_grace`` seconds for
    them before cancelling the rest (a cancelled event stays in the inbox for recovery).
    """
    keys = [s for s in secrets if s.get_secret_value()]
    spawn = spawn or _task_spawner(app, grace=shutdown_grace)

    async def process(event_id: str) -> None:
        await inbox.process(event_id)

    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            body = await _read_capped(request, max_body)
        except _TooLarge:
            # PagerDuty itself drops payloads over 256 KB, so this is not PagerDuty.
            return web.Response(status=413, text=f"body larger than {max_body} bytes\n")
        signature = request.headers.get(SIGNATURE_HEADER, "").strip()
        if not signature or not body:
            log.info("PagerDuty webhook refused: no %s header or no body (from %s)", SIGNATURE_HEADER, request.remote)
            return web.Response(status=400, text=f"{SIGNATURE_HEADER} header and a body are required\n")
        if not keys:
            # 503, not 4xx: PagerDuty keeps retrying 5xx for 48 hours instead of disabling the subscription.
            log.error(
                "PagerDuty webhook refused: PAGERDUTY_WEBHOOK_SECRET is not set; "
                "set it to the subscription's secret (shown once, when the subscription is created)"
            )
            return web.Response(status=503, text="webhook secret not configured\n")
        if not verify_signature(body, signature, [k.get_secret_value() for k in keys]):
            # Loud on purpose: PagerDuty disables a subscription after 3 failed deliveries in a
            # row, so a secret mix-up silently stops incident mirroring for 24 hours.
            count_signature_failure()
            # Unsigned, so anybody's: only a bounded piece of one header is logged.
            subscription = request.headers.get(SUBSCRIPTION_HEADER, "unknown")[:MAX_ID_LENGTH]
            log.warning(
                "PagerDuty webhook rejected: bad %s (subscription %s, from %s); "
                "check PAGERDUTY_WEBHOOK_SECRET against the subscription's secret",
                SIGNATURE_HEADER,
                subscription,
                request.remote,
                extra={"subscription": subscription, "remote": request.remote},
            )
            return web.Response(status=401, text="signature does not match\n")
        try:
            event = parse_event(body)
        except MalformedWebhook as exc:
            # Signed, so from PagerDuty (or someone holding the secret): say why, never echo the body.
            log.warning(
                "PagerDuty webhook refused: %s (subscription %s)",
                exc.message,
                request.headers.get(SUBSCRIPTION_HEADER, "unknown")[:MAX_ID_LENGTH],
            )
            return web.Response(status=400, text=exc.message + "\n")
        if event.event_type == PING_EVENT_TYPE:
            log.info(
                "PagerDuty webhook ping received (subscription %s)",
                request.headers.get(SUBSCRIPTION_HEADER, "unknown")[:MAX_ID_LENGTH],
            )
            return _accepted("ping")
        if event.event_type not in HANDLED_EVENT_TYPES:
            log.debug("PagerDuty webhook event type %s ignored", event.event_type)
            return _accepted("ignored")
        try:
            fresh = await inbox.accept(event, body)
        except StorageError as exc:
            log.warning("PagerDuty webhook event %s not stored, asking PagerDuty to retry: %s", event.id, exc.message)
            return web.Response(status=503, text="try again later\n")
        if not fresh:
            log.debug(
                "PagerDuty webhook event %s is a duplicate (%s %s)",
                event.id,
                WEBHOOK_ID_HEADER,
                request.headers.get(WEBHOOK_ID_HEADER, "")[:MAX_ID_LENGTH],
            )
            return _accepted("duplicate")
        count_event(event.event_type)
        spawn(process(event.id))
        return _accepted("accepted")

    app.router.add_post(path, handle)


async def _read_capped(request: web.Request, max_body: int) -> bytes:
    if request.content_length is not None and request.content_length > max_body:
        raise _TooLarge
    # Chunked bodies carry no length, so count while reading and stop just past the cap.
    body = bytearray()
    while chunk := await request.content.read(min(_CHUNK, max_body + 1 - len(body))):
        body += chunk
        if len(body) > max_body:
            raise _TooLarge
    return bytes(body)


def _accepted(outcome: str) -> web.Response:
    return web.json_response({"status": outcome}, status=202)


def _task_spawner(app: web.Application, *, grace: float) -> Spawn:
    # The event loop keeps only weak references to tasks; without this set a task could be
    # garbage-collected half-way through processing.
    tasks: set[asyncio.Task[None]] = set()

    def spawn(coro: Coroutine[Any, Any, None]) -> None:
        task = lanes.spawn(coro)  # after the 2xx: background, never ahead of a request
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def drain(app: web.Application) -> None:
        if not tasks:
            return
        _, pending = await asyncio.wait(set(tasks), timeout=grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    app.on_shutdown.append(drain)
    return spawn
