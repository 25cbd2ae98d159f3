"""Slack's one mount function: everything Slack needs, built from the settings, on Ackgate's app.

The composition root calls :func:`mount` when ``SLACK_BOT_TOKEN`` and ``SLACK_SIGNING_SECRET`` are
set; it builds the Web API client, the notifier (also Slack's health check), the identity lookup,
the listeners at ``/slack/events`` (one pooled HTTP session for the Web API and response_url posts), the admin user group (``ACKGATE_ADMIN_USERGROUP``) and the
recovery pass for commands a crash left unanswered.
"""

from __future__ import annotations

from aiohttp import web

from bot.core.errors import ConfigError
from bot.core.expiry import every
from bot.core.platforms import ChatPlatform, PlatformParts
from bot.runtime.config import Settings
from handlers.slack.answers import Answerer
from handlers.slack.app import build_slack_app, mount_slack
from handlers.slack.notifier import (
    PLATFORM,
    TITLE,
    SlackAdminGroup,
    SlackIdentity,
    SlackNotifier,
    SlackSession,
    web_client,
)
from handlers.slack.recovery import PASS_SECONDS, SlackRecovery
from handlers.slack.recovery import log as recovery_log


def mount(app: web.Application, settings: Settings, parts: PlatformParts) -> ChatPlatform:
    """Serve Slack on ``app``; returns the platform for the composition root (its close ends the client)."""
    if settings.slack_bot_token is None or settings.slack_signing_secret is None:
        raise ConfigError("Slack needs both SLACK_BOT_TOKEN and SLACK_SIGNING_SECRET.")
    client = web_client(token=settings.slack_bot_token.get_secret_value(), base_url=settings.slack_api_url)
    http = SlackSession(client)  # one pooled session for the Web API and response_url posts

    async def open_session(_: web.Application) -> None:
        await http.open()

    app.on_startup.append(open_session)
    book, clock = parts.store.address_book, parts.clock
    direct = SlackNotifier(client, address_book=book, now=clock.now)
    notifier = parts.deliver(PLATFORM, direct)
    identity = SlackIdentity(client, address_book=book, now=clock.now)
    slack_app = build_slack_app(
        client=client,
        service=parts.router,
        identity=identity,
        inbox=parts.store.commands,
        clock=clock,
        instance=parts.instance,
        post=http.post,
    )
    mount_slack(app, slack_app=slack_app, signing_secret=settings.slack_signing_secret)
    recovery = SlackRecovery(
        inbox=parts.store.commands,
        requests=parts.store.requests,
        service=parts.router,
        identity=identity,
        answerer=Answerer(
            inbox=parts.store.commands, notifier=notifier, clock=clock, logger=recovery_log, post=http.post
        ),
        clock=clock,
        instance=parts.instance,
    )
    # At start-up (the scheduler's first pass), then every PASS_SECONDS: answer what a crash left.
    parts.add_job(every(PASS_SECONDS, clock, recovery.run_once))

    async def close() -> None:
        await http.close()

    group = SlackAdminGroup(client, settings.admin_usergroup) if settings.admin_usergroup else None
    return ChatPlatform(name=PLATFORM, title=TITLE, notifier=direct, health=direct, close=close, admin_group=group)
