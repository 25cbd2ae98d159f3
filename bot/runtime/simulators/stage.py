"""Ackgate's real server on loopback with simulated PagerDuty and Slack around it.

``ackgate demo`` plays its scenes on a stage, and the end-to-end tests use the same one: every
interaction is a real signed HTTP request into the real aiohttp app.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from pydantic import SecretStr

from bot.core.clock import FakeClock
from bot.core.commands import OpenForm, parse_command
from bot.core.errors import UsageError
from bot.core.ports import Provisioner
from bot.runtime.app import PARTS, Parts, build_app
from bot.runtime.config import Settings
from bot.runtime.simulators import slack_requests
from bot.runtime.simulators.pagerduty import PagerDutySimulator, RecordedRequest, RecordedResponse
from bot.runtime.simulators.pagerduty_events import EventsSimulator
from bot.runtime.simulators.server import AsyncService
from bot.runtime.simulators.slack import SlackSimulator
from bot.runtime.simulators.teams import TeamsSimulator
from bot.runtime.simulators.teams import Validator as TeamsValidator
from bot.runtime.simulators.teams_stage import TeamsSide

SIGNING_SECRET = "stage-signing-secret"  # noqa: S105 - the stage's own, not a secret
PD_TOKEN = "stage-pagerduty-token"  # noqa: S105
WEBHOOK_SECRET = "stage-webhook-secret-0123456789"  # noqa: S105
SECRET_KEY = "stage-secret-key-0123456789abcdef"  # noqa: S105
INTEGRATION_KEY = "R0UTINGKEY0123456789ABCDEFGHIJKL"  # 32 alphanumerics, like PagerDuty's
MIRROR_CHANNEL = "C0INCIDENTS"
BOT_EMAIL = "ackgate-bot@example.com"


@dataclass(frozen=True)
class Person:
    name: str
    user_id: str
    email: str


@dataclass(frozen=True)
class Reply:
    """What Slack showed the user: the HTTP ack, and what came later on the response_url."""

    status: int
    ack: dict[str, Any]
    follow_up: dict[str, Any] | None

    @property
    def text(self) -> str:
        shown = self.follow_up if self.follow_up is not None else self.ack
        return text_of(shown)


_LINK = re.compile(r"<([^|>]+)\|([^>]+)>")
_LABEL = re.compile(r"^\*([^*]+)\*\n", re.MULTILINE)


def _plain(mrkdwn: str) -> str:
    """Slack mrkdwn as a person reads it: ``*Label*\nvalue`` → ``Label: value``, links as their text."""
    text = _LABEL.sub(r"\1: ", mrkdwn)
    text = _LINK.sub(r"\2 (\1)", text)
    for emoji in (":white_check_mark: ", ":warning: ", ":no_entry: ", ":x: "):
        text = text.replace(emoji, "")
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def text_of(message: Mapping[str, Any]) -> str:
    """A message's readable text: its blocks' text and fields, else its fallback text."""
    lines: list[str] = []
    for block in message.get("blocks") or []:
        text = (block.get("text") or {}).get("text")
        if text:
            lines.append(_plain(str(text)))
        for field in block.get("fields") or []:
            lines.append(_plain(str(field.get("text", ""))))
        for element in block.get("elements") or []:
            if element.get("type") == "button":
                lines.append(f"[{element['text']['text']}]")
            elif element.get("text"):
                lines.append(str(element.get("text")))
    return "\n".join(lines) if lines else str(message.get("text", ""))


class Stage(AsyncService):
    def __init__(
        self,
        *,
        policy_file: Path,
        workdir: Path,
        clock: FakeClock | None = None,
        provisioners: Mapping[str, Provisioner] | None = None,
        pagerduty_validator: Callable[[RecordedRequest, RecordedResponse], None] | None = None,
        settings: Mapping[str, object] | None = None,
        run_scheduler: bool = True,
        teams: bool = False,
        teams_validator: TeamsValidator | None = None,
    ) -> None:
        self.clock = clock or FakeClock()
        self.pd = PagerDutySimulator(token=PD_TOKEN, clock=self.clock, validator=pagerduty_validator)
        self.slack = SlackSimulator()
        self.events = EventsSimulator()
        self.teams_sim = TeamsSimulator(validator=teams_validator) if teams else None
        self._teams: TeamsSide | None = None
        self._policy_file = policy_file
        self._workdir = workdir
        self._provisioners = provisioners
        self._extra = dict(settings or {})
        self._run_scheduler = run_scheduler
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.url = ""
        self._responses = 0

    async def start(self) -> None:
        await self.pd.start()
        await self.slack.start()
        await self.events.start()
        if self.teams_sim is not None:
            await self.teams_sim.start()
        self.pd.add_user(BOT_EMAIL, "Ackgate")  # who notes on incidents are "From"
        self.slack.add_channel(MIRROR_CHANNEL)
        # Bind first, so the public URL (which goes into authentication links) is known up front.
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        values: dict[str, Any] = dict(
            slack_bot_token=SecretStr(self.slack.token),
            slack_signing_secret=SecretStr(SIGNING_SECRET),
            slack_api_url=self.slack.base_url,
            pagerduty_api_token=SecretStr(PD_TOKEN),
            pagerduty_api_url=self.pd.base_url,
            pagerduty_timeout_seconds=1.5,
            database_url=f"sqlite:///{self._workdir / 'ackgate.db'}",
            policy_file=self._policy_file,
            public_url=self.url,
            pagerduty_events_url=self.events.base_url,
            pagerduty_integration_key=SecretStr(INTEGRATION_KEY),
            pagerduty_webhook_secrets=[SecretStr(WEBHOOK_SECRET)],
            pagerduty_from_email=BOT_EMAIL,
            secret_key=SecretStr(SECRET_KEY),
            mirror_channel=MIRROR_CHANNEL,
        )
        if self.teams_sim is not None:
            values.update(
                microsoft_app_id=self.teams_sim.app_id,
                microsoft_app_password=SecretStr(self.teams_sim.app_password),
                microsoft_app_tenant_id=self.teams_sim.tenant_id,
                teams_openid_metadata_url=self.teams_sim.openid_metadata_url,
                teams_login_url=self.teams_sim.login_url,
                teams_service_url=self.teams_sim.service_url,
                teams_service_url_hosts=["127.0.0.1"],
            )
            self._teams = TeamsSide(self.teams_sim, f"{self.url}/api/messages")
        values.update(self._extra)  # e.g. another database_url: replicas on one PostgreSQL
        settings = Settings(**values)
        app = build_app(settings, clock=self.clock, provisioners=self._provisioners, run_scheduler=self._run_scheduler)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.SockSite(self._runner, sock)
        await site.start()
        self._session = aiohttp.ClientSession()

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()
        await self.slack.stop()
        if self.teams_sim is not None:
            await self.teams_sim.stop()
        await self.pd.stop()
        await self.events.stop()

    @property
    def teams(self) -> TeamsSide:
        """People in Teams (a stage made with ``teams=True``)."""
        assert self._teams is not None, "this stage has no Teams (Stage(teams=True))"
        return self._teams

    @property
    def parts(self) -> Parts:
        assert self._runner is not None
        return self._runner.app[PARTS]

    def person(self, name: str, *, email: str | None = None, in_pagerduty: bool = True) -> Person:
        """Someone with a Slack account (and, unless told otherwise, a PagerDuty user) of that email."""
        address = email if email is not None else f"{name}@example.com"
        user_id = f"U0{name.upper()}"
        self.slack.add_user(user_id, address or None, name.title())
        if in_pagerduty and address:
            self.pd.add_user(address, name.title())
        return Person(name, user_id, address)

    # --- what people do in Slack ----------------------------------------------------------

    async def post(self, body: str, *, secret: str = SIGNING_SECRET, timestamp: int | None = None) -> tuple[int, str]:
        assert self._session is not None
        return await slack_requests.post_signed(
            self._session, f"{self.url}/slack/events", body, secret=secret, timestamp=timestamp
        )

    async def command(self, who: Person, text: str) -> Reply:
        """``who`` types ``/access <text>``; waits for Ackgate's answer on the response_url."""
        self._responses += 1
        token = f"cmd{self._responses}"
        body = slack_requests.slash_command_body(
            text=text,
            user_id=who.user_id,
            response_url=self.slack.response_url(token),
            trigger_id=self.slack.trigger_id(),
        )
        status, raw = await self.post(body)
        ack = _json(raw)
        try:
            follows = not isinstance(parse_command(text), OpenForm)
        except UsageError:
            follows = False
        follow_up = None
        if status == 200 and follows:
            await self.slack.wait_for(lambda: bool(self.slack.responses.get(token)))
            follow_up = self.slack.responses[token][-1]
        return Reply(status, ack, follow_up)

    async def click(self, who: Person, action: str, value: str) -> Reply:
        """``who`` clicks a button (``approve``/``deny``) whose value is ``value``."""
        self._responses += 1
        token = f"click{self._responses}"
        body = slack_requests.block_actions_body(
            user_id=who.user_id, action_id=f"ackgate.{action}", value=value, response_url=self.slack.response_url(token)
        )
        status, raw = await self.post(body)
        follow_up = None
        if status == 200:
            await self.slack.wait_for(lambda: bool(self.slack.responses.get(token)))
            follow_up = self.slack.responses[token][-1]
        return Reply(status, _json(raw), follow_up)

    async def webhook(self, body: bytes, *, secret: str = WEBHOOK_SECRET, webhook_id: str | None = None) -> int:
        """PagerDuty delivers a V3 webhook with ``body``, signed with ``secret``."""
        assert self._session is not None
        signature = "v1=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        headers = {
            "Content-Type": "application/json",
            "X-PagerDuty-Signature": signature,
            "X-Webhook-Id": webhook_id or hashlib.sha256(body).hexdigest()[:20],
            "User-Agent": "PagerDuty-Webhook/V3.0",
        }
        async with self._session.post(f"{self.url}/webhooks/pagerduty", data=body, headers=headers) as r:
            return r.status

    async def browse(self, url: str, *, form: Mapping[str, str] | None = None) -> tuple[int, str]:
        """A person's browser: GET ``url``, or POST ``form`` to it (same origin, as a browser would)."""
        assert self._session is not None
        if form is None:
            async with self._session.get(url) as r:
                return r.status, await r.text()
        async with self._session.post(url, data=dict(form), headers={"Origin": self.url}) as r:
            return r.status, await r.text()

    def channel_messages(self, channel: str) -> list[str]:
        return [text_of({"blocks": m.blocks, "text": m.text}) for m in self.slack.messages.get(channel, [])]

    def dms(self, who: Person) -> list[str]:
        """The texts of the direct messages Ackgate sent ``who``, oldest first, as they read now."""
        return [
            text_of({"blocks": m.blocks, "text": m.text})
            for m in self.slack.messages.get(self.slack.dm_channel(who.user_id), [])
        ]

    async def wait_for_dm(self, who: Person, contains: str) -> str:
        def found() -> bool:
            return any(contains in t for t in self.dms(who))

        await self.slack.wait_for(found)
        return next(t for t in reversed(self.dms(who)) if contains in t)

    async def pass_time(self, seconds: float) -> None:
        """Move the clock and wake the expiry scheduler, then let it work."""
        from datetime import timedelta

        self.clock.advance(timedelta(seconds=seconds))
        self.parts.scheduler.wake()
        await asyncio.sleep(0)


def _json(raw: str) -> dict[str, Any]:
    import json

    try:
        loaded = json.loads(raw) if raw else {}
    except ValueError:
        return {"text": raw}
    return loaded if isinstance(loaded, dict) else {"text": raw}
