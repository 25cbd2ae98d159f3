"""The composition root: builds every part from ``Settings`` once and wires them together.

Tests and the demo pass their own parts (a store, a PagerDuty directory, a clock, a Slack Web API
URL); everything opened here is closed in aiohttp's cleanup context.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import timedelta

import httpx
from aiohttp import web
from slack_sdk.web.async_client import AsyncWebClient

from bot.access import AccessService
from bot.bus import MessageBus
from bot.clock import Clock, SystemClock
from bot.config import Settings
from bot.errors import ConfigError
from bot.expiry import ExpiryScheduler
from bot.metrics import PrometheusMetrics
from bot.pagerduty import PagerDutyClient
from bot.policy import Policy
from bot.policy_file import load_policy
from bot.ports import ChatNotifier, PagerDutyDirectory, Provisioner, Store
from bot.provisioners import build_provisioners
from bot.reactions import Reactions, registry
from handlers.ops import HealthCheck, mount_ops
from handlers.slack import build_bolt_app, mount_slack
from handlers.slack_notifier import SlackIdentity, SlackNotifier
from storage import open_store


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


PARTS = web.AppKey("ackgate_parts", Parts)


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
        policy = load_policy(settings.policy_file)
    clock = clock or SystemClock()
    metrics = PrometheusMetrics()
    owns_store = store is None
    store = store or open_store(settings.database_url)
    owned_pd: PagerDutyClient | None = None
    if pagerduty is None:
        # from_settings also bounds the whole lookup (retries included) to the timeout plus one second
        owned_pd = pagerduty = PagerDutyClient.from_settings(settings, on_call=metrics.pagerduty_call)
    http = httpx.AsyncClient(timeout=10.0)
    chosen = provisioners or build_provisioners(policy, secret=settings.provisioner_secret, client=http)
    bus = MessageBus(audit=store.audit)
    service = AccessService(
        policy=policy,
        store=store,
        pagerduty=pagerduty,
        provisioners=chosen,
        bus=bus,
        clock=clock,
        admins=frozenset(settings.admins),
        approval_timeout=timedelta(minutes=settings.approval_timeout_minutes),
    )
    scheduler = ExpiryScheduler(service, grants=store.grants, clock=clock)
    notifiers: dict[str, ChatNotifier] = {}
    app = web.Application(client_max_size=1024 * 1024)
    slack_client: AsyncWebClient | None = None
    if settings.slack_bot_token is not None and settings.slack_signing_secret is not None:
        slack_client = AsyncWebClient(
            token=settings.slack_bot_token.get_secret_value(), base_url=settings.slack_api_url, timeout=10
        )
        notifiers["slack"] = SlackNotifier(slack_client)
        bolt = build_bolt_app(
            signing_secret=settings.slack_signing_secret,
            client=slack_client,
            service=service,
            identity=SlackIdentity(slack_client),
        )
        mount_slack(app, bolt_app=bolt)
    reactions = Reactions(notifiers=notifiers, messages=store.messages, metrics=metrics, wake_scheduler=scheduler.wake)
    bus.use(registry(reactions))
    mount_ops(app, health=HealthCheck(store=store, pagerduty=pagerduty), metrics=metrics, store=store)
    app[PARTS] = Parts(settings, policy, clock, metrics, store, pagerduty, service, scheduler, notifiers)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        if owns_store:
            await store.open()
        if run_scheduler:
            scheduler.start()
        try:
            yield
        finally:
            await scheduler.stop()
            await http.aclose()
            if owned_pd is not None:
                await owned_pd.aclose()
            if slack_client is not None and slack_client.session is not None:
                await slack_client.session.close()
            if owns_store:
                await store.close()

    app.cleanup_ctx.append(lifecycle)
    return app
