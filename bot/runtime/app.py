"""The composition root: builds every part from ``Settings`` once and wires them together.

Tests and the demo pass their own parts (a store, a PagerDuty directory, a clock, a Slack Web API
URL); everything opened here is closed in aiohttp's cleanup context.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
from aiohttp import web
from pydantic import SecretStr

from bot.adapters.metrics import PrometheusMetrics
from bot.adapters.pagerduty import PagerDutyClient
from bot.adapters.pagerduty_events import EventsClient
from bot.adapters.provisioners import build_provisioners
from bot.core import lanes, messages
from bot.core.access import AccessService
from bot.core.admin import PAGERDUTY_REST, AdminService
from bot.core.approval_cards import ApprovalCards
from bot.core.auth import AuthService
from bot.core.auth_reactions import AuthReactions, auth_registry
from bot.core.bus import MessageBus, merge
from bot.core.clock import Clock, SystemClock
from bot.core.commands import RequestAuth
from bot.core.domain import split_channel
from bot.core.errors import AckgateError, ConfigError, StorageError
from bot.core.expiry import ExpiryScheduler, every
from bot.core.grants import GrantLifecycle
from bot.core.incident_notes import IncidentNotes, notes_registry
from bot.core.mirror import MirrorService
from bot.core.org_settings import OrgSettings, chat_status_key
from bot.core.outbox import OutboxNotifier, OutboxWorker
from bot.core.platforms import ChatPlatform, Job, PlatformParts, any_admin_group, health_rows
from bot.core.policy import Policy
from bot.core.policy_file import load_policy
from bot.core.ports import ChatNotifier, PagerDutyDirectory, Provisioner, Store
from bot.core.reactions import Reactions, registry
from bot.core.reconciler import Reconciler, start_up
from bot.core.router import CommandRouter
from bot.core.secrets import SecretBox
from bot.core.webhook_inbox import RECHECK_MARGIN, Inbox
from bot.core.webhooks import WebhookEvent
from bot.runtime.config import Settings
from bot.runtime.inflight import InFlight
from handlers.auth_signin import build_signin
from handlers.guard import install as install_guard
from handlers.ops import HealthCheck, Probe, mount_ops
from handlers.pagerduty_webhooks import mount_pagerduty_webhooks
from handlers.web import mount_auth_pages
from storage import PrunesSeen, open_store

TEST_MESSAGE = "A test from /access admin test: checking that authentication requests reach you."


class _SeenAt:
    """The sign-in's single-use port on the store's ``seen`` keys, stamping each key with the time."""

    def __init__(self, store: Store, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    async def first_time(self, key: str) -> bool:
        return await self._store.seen.first_time(key, at=self._clock.now())


class WebhookHealth:
    """Records, for ``/access admin status``, when webhooks last arrived and whether signatures fail."""

    def __init__(self, org: OrgSettings, clock: Clock, metrics: PrometheusMetrics) -> None:
        self._org = org
        self._clock = clock
        self._metrics = metrics
        self._tasks: set[asyncio.Task[None]] = set()

    def delivered(
        self, handler: Callable[[WebhookEvent], Awaitable[None]]
    ) -> Callable[[WebhookEvent], Awaitable[None]]:
        async def recorded(event: WebhookEvent) -> None:
            await self._org.record_webhook(at=self._clock.now(), signature_ok=True)
            await handler(event)

        return recorded

    def signature_failed(self) -> None:
        self._metrics.webhook_signature_failures.inc()
        task = lanes.spawn(self._org.record_webhook(at=self._clock.now(), signature_ok=False))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


SEEN_KEPT = timedelta(hours=72)  # PagerDuty redelivers a webhook for up to 48 hours
INBOX_RECOVERY_SECONDS = 10.0  # how often the webhook inbox is checked for crashed or failed events


def _pruner(store: PrunesSeen, clock: Clock) -> Callable[[], Awaitable[int]]:
    async def prune_seen() -> int:
        return await store.prune_seen(clock.now() - SEEN_KEPT)

    return prune_seen


def _csrf_secret(settings: Settings) -> SecretStr:
    if settings.secret_key is not None:
        return settings.secret_key
    # Without ACKGATE_SECRET_KEY the pages still work; open pages just break on a restart.
    return SecretStr(secrets.token_urlsafe(32))


PlatformMount = Callable[[web.Application, Settings, PlatformParts], ChatPlatform]


# Each platform's package (bolt and the Slack SDK; botbuilder, botframework and their JWT stack) is
# imported when its platform is configured and mounted, never at start-up otherwise: Teams' stack
# alone is a third of a second.
def _mount_slack(app: web.Application, settings: Settings, parts: PlatformParts) -> ChatPlatform:
    from handlers.slack import platform

    return platform.mount(app, settings, parts)


def _mount_teams(app: web.Application, settings: Settings, parts: PlatformParts) -> ChatPlatform:
    from handlers.teams import platform

    return platform.mount(app, settings, parts)


PLATFORM_MOUNTS: dict[str, PlatformMount] = {"slack": _mount_slack, "teams": _mount_teams}
"""Each chat platform's one mount function, by the name ``Settings.chat_platforms`` gives it."""


def _probe(pagerduty: PagerDutyDirectory, platforms: list[ChatPlatform]) -> Callable[[], Awaitable[dict[str, str]]]:
    """Live health of PagerDuty REST and of each chat platform for ``/access admin status``."""

    async def probe() -> dict[str, str]:
        out: dict[str, str] = {}
        try:
            await pagerduty.ping()
            out[PAGERDUTY_REST] = messages.CHECKED_NOW
        except AckgateError as exc:
            out[PAGERDUTY_REST] = f"Error: {exc.message}"
        out.update(await health_rows(platforms))
        return out

    return probe


def _probes(pagerduty: PagerDutyDirectory, platforms: list[ChatPlatform]) -> dict[str, Probe]:
    """The dependencies ``/metrics`` reports as ``ackgate_dependency_up`` (never the probes)."""
    probes: dict[str, Probe] = {"pagerduty": pagerduty.ping}
    for platform in platforms:
        probes[platform.name] = platform.health.health
    return probes


def _with_deliveries(
    probe: Callable[[], Awaitable[dict[str, str]]], store: Store
) -> Callable[[], Awaitable[dict[str, str]]]:
    """``probe`` plus a line on parked webhook events and queued chat messages."""

    async def probed() -> dict[str, str]:
        out = await probe()
        try:
            out[messages.DELIVERIES] = messages.deliveries_status(
                parked_webhooks=await store.inbox.count_parked(), queued_messages=await store.outbox.count_pending()
            )
        except StorageError as exc:
            out[messages.DELIVERIES] = f"Error: {exc.message}"
        return out

    return probed


@dataclass
class Parts:
    """Everything wired, kept on the aiohttp app under :data:`PARTS` for tests and the demo."""

    settings: Settings
    policy: Policy
    clock: Clock
    metrics: PrometheusMetrics
    store: Store
    pagerduty: PagerDutyDirectory
    service: AccessService
    scheduler: ExpiryScheduler
    notifiers: dict[str, ChatNotifier]
    router: CommandRouter
    auth: AuthService
    admin: AdminService
    mirror: MirrorService
    org: OrgSettings


PARTS = web.AppKey("ackgate_parts", Parts)
INFLIGHT = web.AppKey("ackgate_inflight", InFlight)
_log = logging.getLogger("ackgate")


def _tracked(inflight: InFlight) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Middleware: tasks started while answering a request are tracked, so a stop can wait for them."""

    @web.middleware
    async def track(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        with inflight.scope():
            return await handler(request)

    return track


def instance_id(settings: Settings) -> str:
    """This process's name in the claims it takes: ``ACKGATE_INSTANCE_ID``, else host name and port,
    the same after a restart (so it takes its dead claims back at once) and unique among live processes."""
    return settings.instance_id or f"{socket.gethostname()}:{settings.port}"


def pagerduty_client(settings: Settings, **kwargs: Any) -> PagerDutyClient:
    """The REST client from the PagerDuty settings. The whole lookup (retries included) is bounded
    to the timeout plus one second."""
    if settings.pagerduty_api_token is None:
        raise ConfigError("PAGERDUTY_API_TOKEN is not set: create a REST API key in PagerDuty and set it.")
    kwargs.setdefault("timeout", settings.pagerduty_timeout_seconds)
    kwargs.setdefault("deadline", settings.pagerduty_timeout_seconds + 1.0)
    kwargs.setdefault("requests_per_minute", settings.pagerduty_requests_per_minute)
    kwargs.setdefault("incident_cache_ttl", settings.pagerduty_incident_cache_seconds)
    return PagerDutyClient(
        settings.pagerduty_api_token,
        base_url=settings.pagerduty_api_url,
        from_email=settings.pagerduty_from_email,
        **kwargs,
    )


async def _drain(inflight: InFlight, seconds: float) -> None:
    inflight.begin_stop(seconds)
    finished, cancelled = await inflight.drain()
    if finished or cancelled:
        log = _log.warning if cancelled else _log.info
        log("finished %d background tasks at stop; %d did not finish in time", finished, cancelled)


async def _cancel(task: asyncio.Task[int]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def build_app(
    settings: Settings,
    *,
    policy: Policy | None = None,
    store: Store | None = None,
    pagerduty: PagerDutyDirectory | None = None,
    clock: Clock | None = None,
    provisioners: Mapping[str, Provisioner] | None = None,
    run_scheduler: bool = True,
) -> web.Application:
    """Build the aiohttp application; nothing connects until it starts.

    Raises :class:`ConfigError` for a bad policy file or setting.
    """
    if policy is None:
        if settings.policy_file is None:
            raise ConfigError("ACKGATE_POLICY_FILE is not set: point it at your policy YAML.")
        policy = load_policy(settings.policy_file, platforms=settings.chat_platforms)
    policy.require_platforms(settings.chat_platforms)
    if settings.mirror_channel and split_channel(settings.mirror_channel)[0] not in settings.chat_platforms:
        raise ConfigError(messages.mirror_channel_unconfigured(settings.mirror_channel, settings.chat_platforms))
    clock = clock or SystemClock()
    metrics = PrometheusMetrics()
    owns_store = store is None
    store = store or open_store(settings.database_url)
    owned_pd: PagerDutyClient | None = None
    # One TLS context, httpx's default, for both clients: reading the CA bundle is 40 ms of start-up each time.
    tls = httpx.create_ssl_context()
    if pagerduty is None:
        owned_pd = pagerduty = pagerduty_client(settings, on_call=metrics.pagerduty_call, verify=tls)
    http = httpx.AsyncClient(timeout=10.0, verify=tls)
    chosen = provisioners or build_provisioners(policy, secret=settings.provisioner_secret, client=http)
    bus = MessageBus(audit=store.audit)
    service = AccessService(
        GrantLifecycle(
            policy=policy,
            store=store,
            pagerduty=pagerduty,
            provisioners=chosen,
            bus=bus,
            clock=clock,
            admins=frozenset(settings.admins),
            instance=instance_id(settings),
        ),
        approval_timeout=timedelta(minutes=settings.approval_timeout_minutes),
    )
    notifiers: dict[str, ChatNotifier] = {}
    box = SecretBox(settings.secret_key) if settings.secret_key is not None else None
    org = OrgSettings(store.settings, box=box, env_key=settings.pagerduty_integration_key)
    events = EventsClient(base_url=settings.pagerduty_events_url, client=http)
    auth = AuthService(
        store=store,
        org=org,
        events=events,
        notifiers=notifiers,
        bus=bus,
        clock=clock,
        public_url=settings.public_url,
        source=urlsplit(settings.public_url).hostname or "ackgate",
        link_ttl=timedelta(minutes=settings.auth_link_minutes),
        directory=pagerduty,
    )
    mirror = MirrorService(
        store=store,
        notifiers=notifiers,
        access=service.grants,
        pagerduty=pagerduty,
        bus=bus,
        clock=clock,
        channel=settings.mirror_channel,
        services=settings.mirror_services,
    )
    jobs: list[Callable[[], Awaitable[int]]] = [auth.expire_due]
    if not settings.pagerduty_webhook_secrets:
        # Without webhooks, resolved incidents are found by asking PagerDuty now and then.
        jobs.append(every(settings.incident_check_seconds, clock, mirror.check_incidents))
    if isinstance(store, PrunesSeen):
        jobs.append(every(3600, clock, _pruner(store, clock)))
    instance = instance_id(settings)
    card_claims = ApprovalCards(messages=store.messages, requests=store.requests, clock=clock, instance=instance)
    reconciler = Reconciler(service.grants, store=store, clock=clock, cards=card_claims)
    scheduler = ExpiryScheduler(service, grants=store.grants, clock=clock, jobs=jobs, reconciler=reconciler)
    inflight = InFlight()
    app = web.Application(client_max_size=1024 * 1024, middlewares=[_tracked(inflight)])
    app[INFLIGHT] = inflight
    install_guard(app)  # no exception escapes an entry point
    # Each configured chat platform mounts itself; what it would not take (after its client's own
    # retries) is queued in the outbox and sent later.
    direct: dict[str, ChatNotifier] = {}

    def deliver(name: str, notifier: ChatNotifier) -> ChatNotifier:
        direct[name] = notifier
        notifiers[name] = OutboxNotifier(
            notifier, outbox=store.outbox, clock=clock, platform=name, on_queued=metrics.chat_messages_queued.inc
        )
        return notifiers[name]

    outbox_worker = OutboxWorker(
        store.outbox, notifiers=direct, clock=clock, on_expired=metrics.chat_messages_expired.inc, instance=instance
    )
    scheduler.jobs.append(outbox_worker.run_once)
    scheduler.jobs.append(every(3600, clock, lambda: outbox_worker.prune(kept=SEEN_KEPT)))
    platforms: list[ChatPlatform] = []
    chat_rows: dict[str, str] = {}
    admin = AdminService(
        org=org,
        bus=bus,
        clock=clock,
        admins=frozenset(settings.admins),
        is_group_admin=any_admin_group(platforms),
        auth_test=lambda actor: auth.request(actor, RequestAuth(target=actor.email, message=TEST_MESSAGE)),
        health=_with_deliveries(_probe(pagerduty, platforms), store),
        chat_platforms=chat_rows,
    )
    router = CommandRouter(
        service, auth=auth.request, admin=admin.execute, prefs=admin.set_prefs, set_key=admin.set_key
    )

    def add_job(job: Job) -> None:
        scheduler.jobs.append(job)

    parts = PlatformParts(
        store=store, clock=clock, router=router, add_job=add_job, deliver=deliver, instance=instance, counters=metrics
    )
    for name in settings.chat_platforms:
        platform = PLATFORM_MOUNTS[name](app, settings, parts)
        platforms.append(platform)
        chat_rows[platform.title] = chat_status_key(platform.name)
    reactions = Reactions(
        notifiers=notifiers,
        messages=store.messages,
        metrics=metrics,
        wake_scheduler=scheduler.expires,
        address_book=store.address_book,
        card_claims=card_claims,
    )
    card_claims.post = reactions.show_approvers  # the reconciler posts what a crash left unposted
    service.unreached = reactions.unreached  # the requester is told who could not be reached
    auth_reactions = AuthReactions(notifiers=notifiers, messages=store.messages, org=org, events=events, clock=clock)
    bus.use(
        merge(
            registry(reactions),
            auth_registry(auth_reactions, transaction_changed=mirror.transaction_changed),
            notes_registry(IncidentNotes(writer=pagerduty, policy=policy)),
        )
    )
    webhook_health = WebhookHealth(org, clock, metrics)
    inbox = Inbox(
        store.inbox,
        on_event=webhook_health.delivered(mirror.on_event),
        clock=clock,
        on_parked=metrics.webhook_events_parked.inc,
        instance=instance,
        recheck_after=RECHECK_MARGIN + timedelta(seconds=settings.pagerduty_incident_cache_seconds),
        on_recheck=mirror.on_event,  # not a delivery: the admin status's "last webhook" stays put
    )
    # At start-up (the scheduler's first pass) and every few seconds after: events a crash or a
    # failure left in the inbox. Done events are kept as long as PagerDuty may redeliver them.
    scheduler.jobs.append(every(INBOX_RECOVERY_SECONDS, clock, inbox.recover))
    # Then the first mirror messages a dead or failed claimant left owed (their claim lapsed).
    scheduler.jobs.append(every(INBOX_RECOVERY_SECONDS, clock, mirror.post_missing))
    scheduler.jobs.append(every(3600, clock, lambda: inbox.prune(kept=SEEN_KEPT)))
    mount_pagerduty_webhooks(
        app,
        secrets=settings.pagerduty_webhook_secrets,
        inbox=inbox,
        count_signature_failure=webhook_health.signature_failed,
        count_event=lambda kind: metrics.webhook_events.labels(event_type=kind).inc(),
    )
    mount_auth_pages(
        app,
        service=auth,
        csrf_secret=_csrf_secret(settings),
        public_url=settings.public_url,
        signin=build_signin(settings, http=http, clock=clock, once=_SeenAt(store, clock)),
    )
    mount_ops(app, health=HealthCheck(store=store, probes=_probes(pagerduty, platforms)), metrics=metrics, store=store)
    app[PARTS] = Parts(
        settings,
        policy,
        clock,
        metrics,
        store,
        pagerduty,
        service,
        scheduler,
        notifiers,
        router,
        auth,
        admin,
        mirror,
        org,
    )

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        # What start-up opens is closed in the reverse order by one stack: a close that fails is
        # logged by the stack's exception and never skips the closes after it.
        async with AsyncExitStack() as stack:
            if owns_store:
                await store.open()
                stack.push_async_callback(store.close)  # closed last
            for platform in platforms:
                stack.push_async_callback(platform.close)
            if owned_pd is not None:
                stack.push_async_callback(owned_pd.aclose)
            stack.push_async_callback(http.aclose)
            inflight.install()
            stack.callback(inflight.uninstall)
            stack.push_async_callback(webhook_health.drain)
            stack.push_async_callback(auth.close)
            # Requests are answered by the time the stack unwinds (aiohttp waited for them). What they
            # started still runs on the store and the clients: it finishes within the drain time, then
            # the scheduler's pass.
            stack.push_async_callback(lambda: scheduler.stop(grace=inflight.remaining()))
            stack.push_async_callback(_drain, inflight, settings.drain_seconds)
            if run_scheduler:
                # Finish what a crash left behind before serving (briefly; the rest in the background).
                first_pass = await start_up(reconciler)
                if first_pass is not None:
                    stack.push_async_callback(_cancel, first_pass)
                lanes.start_in_background(scheduler.start)  # its passes never go ahead of a request
            yield

    app.cleanup_ctx.append(lifecycle)
    return app
