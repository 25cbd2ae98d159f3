"""A cluster for the fuzz, duplicates and forged/replayed suites: Ackgate's real aiohttp app
(``build_app``, one or more instances on one database) on loopback, with the Slack, PagerDuty REST and
PagerDuty Events simulators around it, and every log line captured through the production logging set-up.

Everything goes through the real HTTP entry points: signed Slack requests into ``/slack/events``,
signed PagerDuty V3 webhooks into ``/webhooks/pagerduty``, browsers into ``/auth/<token>``.
``instances=2`` runs two replicas sharing one store (PostgreSQL), each with its own connection pool,
as two ``ackgate serve`` processes would.

The checks every suite shares live here too: :func:`answer_problems` (no 5xx, no traceback, no slow
answer), :func:`traceback_in` and :meth:`Cluster.log_problems` (no secret, link token or request body
in any log line, no oversized line).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import json
import logging
import os
import re
import socket
import time
from collections.abc import AsyncIterator, Coroutine, Iterable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from aiohttp import web
from hypothesis import HealthCheck, settings
from pydantic import SecretStr

from bot.adapters.provisioners import NoopProvisioner
from bot.core.clock import FakeClock
from bot.core.domain import AuditEvent, Grant
from bot.runtime import logs
from bot.runtime.app import PARTS, Parts, build_app
from bot.runtime.config import Settings
from bot.runtime.simulators import slack_requests
from bot.runtime.simulators.pagerduty import PagerDutySimulator
from bot.runtime.simulators.pagerduty_events import EventsSimulator
from bot.runtime.simulators.slack import SlackSimulator
from bot.runtime.simulators.stage import text_of
from tests.fakes.storage_fixtures import postgres_schema_url

SIGNING_SECRET = "fuzz-signing-secret-5f1e0c2a9b"
PD_TOKEN = "fuzz-pagerduty-token-77c1d0e4"
WEBHOOK_SECRET = "fuzz-webhook-secret-3a9d8e7f6c5b"
SECRET_KEY = "fuzz-secret-key-0123456789abcdef0123"
PROVISIONER_SECRET = "fuzz-provisioner-secret-c0ffee42"
INTEGRATION_KEY = "FUZZR0UT1NGKEY0123456789ABCDEFGH"  # 32 alphanumerics, like PagerDuty's
SLACK_TOKEN = "xoxb-fuzz-bot-token-9a8b7c6d5e4f"
MIRROR_CHANNEL = "C0INCIDENTS"
BOT_EMAIL = "ackgate-bot@example.com"
DATABASE_SERVICE = "PDBSVC1"
BEGINNING = datetime(2000, 1, 1, tzinfo=UTC)
ADMIN = "erin"
T = TypeVar("T")

# alice requests; bob and carol approve prod-k8s; dana approves billing; erin is the admin;
# dave and frank are nobody in particular. prod-db is automatic for whoever acknowledged a
# high-urgency Database incident, and ends when that incident resolves.
POLICY = f"""\
version: 1
resources:
  - name: prod-db
    max_duration: 4h
  - name: prod-k8s
    max_duration: 8h
  - name: billing-console
    max_duration: 1h
flows:
  - name: incident-db
    resources: [prod-db]
    requesters:
      anyone: true
    gate:
      type: acknowledged_incident
      services:
        - id: {DATABASE_SERVICE}
          name: Database
      urgencies: [high]
    approval:
      type: auto
    default_duration: 1h
    max_duration: 2h
    revoke_on_resolve: true
  - name: k8s-approved
    resources: [prod-k8s]
    requesters:
      anyone: true
    approval:
      type: approvers
      approvers: [bob@example.com, carol@example.com]
      required: 1
    default_duration: 30m
    max_duration: 2h
  - name: billing-approved
    resources: [billing-console]
    requesters:
      anyone: true
    approval:
      type: approvers
      approvers: [dana@example.com]
      required: 1
    default_duration: 30m
    max_duration: 1h
"""

PEOPLE = ("alice", "bob", "carol", "dana", "dave", "erin", "frank")
AUTH_LINK = re.compile(r"\((http://127\.0\.0\.1:\d+/auth/([A-Za-z0-9_-]+))\)")
_LINK_TOKEN = re.compile(r"/auth/([A-Za-z0-9_-]{20,})")
_TRACEBACK = re.compile(r"Traceback \(most recent call last\)|File \"[^\"]+\", line \d+")
SLOW_SECONDS = 1.0
START_LIMIT = 30.0  # seconds for the simulators and every app instance to start
STOP_LIMIT = 30.0  # seconds for one app instance to stop
# A log line longer than this can only be carrying something it should not (a body, a dump).
MAX_LOG_LINE = 16 * 1024


@dataclass(frozen=True)
class Person:
    name: str
    user_id: str
    email: str


@dataclass(frozen=True)
class Answer:
    """One HTTP answer as the caller saw it."""

    status: int
    text: str
    elapsed: float
    headers: Mapping[str, str] = field(default_factory=dict)

    def json(self) -> dict[str, Any]:
        try:
            loaded = json.loads(self.text) if self.text else {}
        except ValueError:
            return {"text": self.text}
        return loaded if isinstance(loaded, dict) else {"text": self.text}


def traceback_in(text: str) -> bool:
    return bool(_TRACEBACK.search(text))


def answer_problems(answer: Answer, *, slow: float = SLOW_SECONDS) -> list[str]:
    """What is wrong with an answer to hostile input: a 5xx, a traceback, or slowness."""
    problems = []
    if answer.status >= 500:
        problems.append(f"answered {answer.status}")
    if traceback_in(answer.text):
        problems.append("traceback in the answer")
    if answer.elapsed > slow:
        problems.append(f"answered after {answer.elapsed:.2f} s")
    return problems


# --- signing --------------------------------------------------------------------------------


def slack_headers(
    body: bytes | str, *, secret: str = SIGNING_SECRET, timestamp: int | str | None = None
) -> dict[str, str]:
    """Slack's v0 signature headers for ``body`` (fresh timestamp unless given)."""
    raw = body.encode() if isinstance(body, str) else body
    ts = str(int(time.time()) if timestamp is None else timestamp)
    base = b"v0:" + ts.encode() + b":" + raw
    return {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest(),
    }


def pagerduty_signature(body: bytes, *, secret: str = WEBHOOK_SECRET) -> str:
    return "v1=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def webhook_headers(body: bytes, *, secret: str = WEBHOOK_SECRET, webhook_id: str | None = None) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-PagerDuty-Signature": pagerduty_signature(body, secret=secret),
        "X-Webhook-Id": webhook_id or hashlib.sha256(body).hexdigest()[:20],
        "X-Webhook-Subscription": "PSUBFUZZ",
        "User-Agent": "PagerDuty-Webhook/V3.0",
    }


def incident_webhook(
    event_type: str,
    *,
    incident_id: str,
    event_id: str,
    status: str,
    key: str = "",
    service: str = DATABASE_SERVICE,
    at: str = "2026-11-23T12:00:01Z",
    number: int = 77,
    title: str = "Replication lag on pg-main",
) -> bytes:
    """A V3 incident webhook body in PagerDuty's shape (``reference/pagerduty/webhooks-v3``)."""
    body = {
        "event": {
            "id": event_id,
            "event_type": event_type,
            "resource_type": "incident",
            "occurred_at": at,
            "agent": None,
            "client": None,
            "data": {
                "type": "incident",
                "id": incident_id,
                "self": f"https://api.pagerduty.com/incidents/{incident_id}",
                "html_url": f"https://acme.pagerduty.com/incidents/{incident_id}",
                "number": number,
                "status": status,
                "incident_key": key,
                "title": title,
                "service": {"id": service, "type": "service_reference", "summary": "Database"},
                "urgency": "high",
            },
        }
    }
    return json.dumps(body).encode()


# --- logs -----------------------------------------------------------------------------------


_KEPT = 4 * MAX_LOG_LINE
_CUT = "…[cut: the line was {} characters]"
_CUT_MARK = re.compile(r"…\[cut: the line was (\d+) characters\]$")


class LogLines(logging.Handler):
    """Every record, formatted by the production JSON formatter, kept in order."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logs.JsonFormatter())
        self.lines: list[str] = []
        self.exc_types: list[tuple[int, str]] = []  # (index of the line, exception type name)
        self.characters = 0  # everything written, including what was cut from over-long lines

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception as exc:  # a record that cannot be formatted is itself a finding
            line = f"<unformattable log record: {type(exc).__name__}>"
        if record.exc_info and record.exc_info[0] is not None:
            self.exc_types.append((len(self.lines), record.exc_info[0].__name__))
        self.characters += len(line)
        if len(line) > _KEPT:
            # A huge line is a finding in itself; keep its head and its length, not megabytes of it.
            line = line[:_KEPT] + _CUT.format(len(line))
        self.lines.append(line)

    def mark(self) -> int:
        return len(self.lines)

    def exception_types_since(self, mark: int) -> list[str]:
        return [name for index, name in self.exc_types if index >= mark]


@contextmanager
def production_logging() -> Iterator[LogLines]:
    """Log exactly as ``ackgate serve`` does (``bot.runtime.logs.configure``), into a :class:`LogLines`."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    touched = ("httpx", "httpcore", "slack_bolt", "slack_sdk", "aiohttp.access")
    saved_levels = {name: logging.getLogger(name).level for name in touched}
    logs.configure("INFO")
    capture = LogLines()
    root.handlers[:] = [*saved_handlers, capture]  # pytest's own handlers stay
    try:
        yield capture
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        for name, level in saved_levels.items():
            logging.getLogger(name).setLevel(level)


SECRETS: Mapping[str, str] = {
    "Slack signing secret": SIGNING_SECRET,
    "Slack bot token": SLACK_TOKEN,
    "PagerDuty API token": PD_TOKEN,
    "PagerDuty webhook secret": WEBHOOK_SECRET,
    "PagerDuty integration key": INTEGRATION_KEY,
    "ACKGATE_SECRET_KEY": SECRET_KEY,
    "provisioner secret": PROVISIONER_SECRET,
}


def leaks(lines: Sequence[str], *, tokens: Iterable[str] = (), bodies: Iterable[str] = ()) -> list[str]:
    """Each log line carrying a secret, a link token or a piece of a request body, or too long."""
    found = []
    watched = [*SECRETS.items(), *((f"link token {t[:4]}…", t) for t in tokens)]
    # A piece near the start: an over-long line is kept only in part (see LogLines).
    snippets = [(f"request body {b[:12]!r}…", b[16:64]) for b in bodies if len(b) >= 64]
    for number, line in enumerate(lines):
        for label, value in (*watched, *snippets):
            if value and value in line:
                found.append(f"line {number}: {label}")
        cut = _CUT_MARK.search(line)
        length = int(cut.group(1)) if cut else len(line)
        if length > MAX_LOG_LINE:
            found.append(f"line {number}: {length} characters long")
    return found


class SlowProvisioner(NoopProvisioner):
    """A provisioner whose calls take ``delay`` seconds, as a real one does: long enough for a
    second click, retry or expiry pass to arrive while the first call is still running."""

    def __init__(self, delay: float = 0.0) -> None:
        super().__init__()
        self.delay = delay

    async def grant(self, grant: Grant) -> None:
        await asyncio.sleep(self.delay)
        await super().grant(grant)

    async def revoke(self, grant: Grant) -> None:
        await asyncio.sleep(self.delay)
        await super().revoke(grant)


def error_tracebacks(lines: Sequence[str]) -> list[str]:
    """The ERROR lines with a traceback: for an expected condition (a lost race, a duplicate, a
    refusal) there must be none."""
    found = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("level") in ("error", "critical") and record.get("exc"):
            found.append(f"{record.get('logger')}: {str(record.get('msg'))[:160]}")
    return found


# --- the cluster ----------------------------------------------------------------------------


def _free_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


class Cluster:
    """The simulators and ``instances`` copies of the app on one database. ``async with`` it."""

    def __init__(
        self,
        workdir: Path,
        *,
        database_url: str | None = None,
        instances: int = 1,
        run_scheduler: bool = True,
        clock: FakeClock | None = None,
        provisioner_delay: float = 0.0,
    ) -> None:
        self.workdir = workdir
        self.database_url = database_url or f"sqlite:///{workdir / 'ackgate-fuzz.db'}"
        self.instances = instances
        self.clock = clock or FakeClock()
        self.pd = PagerDutySimulator(token=PD_TOKEN, clock=self.clock)
        self.slack = SlackSimulator(token=SLACK_TOKEN)
        self.events = EventsSimulator()
        self.provisioner = SlowProvisioner(provisioner_delay)
        self.people: dict[str, Person] = {}
        self.urls: list[str] = []
        self._run_scheduler = run_scheduler
        self._runners: list[web.AppRunner] = []
        self._session: aiohttp.ClientSession | None = None
        self._responses = 0
        self._logging: Any = None
        self.log: LogLines = LogLines()

    async def __aenter__(self) -> Cluster:
        self._logging = production_logging()
        self.log = self._logging.__enter__()
        try:
            async with asyncio.timeout(START_LIMIT):
                await self._start()
        except BaseException:
            await self._stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stop()

    async def _start(self) -> None:
        await self.pd.start()
        await self.slack.start()
        await self.events.start()
        self.pd.add_user(BOT_EMAIL, "Ackgate")
        self.slack.add_channel(MIRROR_CHANNEL)
        policy_file = self.workdir / "policy-fuzz.yaml"
        policy_file.write_text(POLICY, encoding="utf-8")
        for name in PEOPLE:
            self.person(name)
        for _ in range(self.instances):
            sock = _free_socket()
            url = f"http://127.0.0.1:{sock.getsockname()[1]}"
            settings = Settings(
                slack_bot_token=SecretStr(self.slack.token),
                slack_signing_secret=SecretStr(SIGNING_SECRET),
                slack_api_url=self.slack.base_url,
                pagerduty_api_token=SecretStr(PD_TOKEN),
                pagerduty_api_url=self.pd.base_url,
                pagerduty_timeout_seconds=1.5,
                database_url=self.database_url,
                policy_file=policy_file,
                public_url=url,
                pagerduty_events_url=self.events.base_url,
                pagerduty_integration_key=SecretStr(INTEGRATION_KEY),
                pagerduty_webhook_secrets=[SecretStr(WEBHOOK_SECRET)],
                pagerduty_from_email=BOT_EMAIL,
                secret_key=SecretStr(SECRET_KEY),
                provisioner_secret=SecretStr(PROVISIONER_SECRET),
                mirror_channel=MIRROR_CHANNEL,
                mirror_services=[DATABASE_SERVICE],
                admins=[f"{ADMIN}@example.com"],
            )
            app = build_app(
                settings,
                clock=self.clock,
                provisioners={"noop": self.provisioner},
                run_scheduler=self._run_scheduler,
            )
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            self._runners.append(runner)
            await web.SockSite(runner, sock).start()
            self.urls.append(url)
        self._session = aiohttp.ClientSession()

    async def _stop(self) -> None:
        if self._session is not None:
            await self._session.close()
        for runner in reversed(self._runners):
            # A stop that hangs is a finding, not a reason for the suite to hang.
            async with asyncio.timeout(STOP_LIMIT):
                await runner.cleanup()
        await self.slack.stop()
        await self.pd.stop()
        await self.events.stop()
        if self._logging is not None:
            self._logging.__exit__(None, None, None)
            self._logging = None

    # --- parts and people ---------------------------------------------------------------

    def parts(self, instance: int = 0) -> Parts:
        return self._runners[instance].app[PARTS]

    @property
    def url(self) -> str:
        return self.urls[0]

    def person(self, name: str) -> Person:
        if name not in self.people:
            email = f"{name}@example.com"
            who = Person(name, f"U0{name.upper()}", email)
            self.slack.add_user(who.user_id, email, name.title())
            self.pd.add_user(email, name.title())
            self.people[name] = who
        return self.people[name]

    def acknowledged_incident(self, who: Person) -> str:
        """``who`` has acknowledged a high-urgency Database incident; returns its id."""
        self.pd.add_service("Database", service_id=DATABASE_SERVICE)
        me = next(user.id for user in self.pd.users.values() if user.email == who.email)
        incident = self.pd.add_incident(
            "Replication lag on pg-main",
            service=DATABASE_SERVICE,
            urgency="high",
            assigned_to=[me],
            acknowledged_by=[me],
        )
        return incident.id

    # --- raw HTTP -----------------------------------------------------------------------

    async def send(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        instance: int = 0,
        limit: float = 10.0,
    ) -> Answer:
        """One request; the answer with the time it took. A dropped connection reads as status 599."""
        assert self._session is not None
        started = time.monotonic()
        try:
            async with self._session.request(
                method,
                f"{self.urls[instance]}{path}",
                data=io.BytesIO(body) if body is not None and len(body) > 512 * 1024 else body,
                headers=dict(headers or {}),
                timeout=aiohttp.ClientTimeout(total=limit),
                allow_redirects=False,
            ) as r:
                raw = await r.read()
                return Answer(r.status, raw.decode("utf-8", "replace"), time.monotonic() - started, dict(r.headers))
        except (aiohttp.ClientError, TimeoutError) as exc:
            return Answer(599, f"{type(exc).__name__}: {exc}", time.monotonic() - started)

    async def slack_post(
        self,
        body: str | bytes,
        *,
        instance: int = 0,
        headers: Mapping[str, str] | None = None,
        secret: str = SIGNING_SECRET,
        timestamp: int | str | None = None,
    ) -> Answer:
        raw = body.encode() if isinstance(body, str) else body
        sent = {**slack_headers(raw, secret=secret, timestamp=timestamp), **(headers or {})}
        return await self.send("POST", "/slack/events", body=raw, headers=sent, instance=instance)

    async def webhook(
        self, body: bytes, *, instance: int = 0, secret: str = WEBHOOK_SECRET, webhook_id: str | None = None
    ) -> Answer:
        headers = webhook_headers(body, secret=secret, webhook_id=webhook_id)
        return await self.send("POST", "/webhooks/pagerduty", body=body, headers=headers, instance=instance)

    # --- what people do in Slack --------------------------------------------------------

    def next_token(self, kind: str) -> str:
        self._responses += 1
        return f"{kind}{self._responses}"

    def command_body(self, who: Person, text: str, *, token: str | None = None) -> tuple[str, str]:
        """A signed-to-be ``/access`` body and the response_url token it answers on."""
        token = token or self.next_token("cmd")
        body = slack_requests.slash_command_body(
            text=text,
            user_id=who.user_id,
            response_url=self.slack.response_url(token),
            trigger_id=self.slack.trigger_id(),
        )
        return body, token

    def click_body(self, who: Person, action: str, value: str, **claims: Any) -> tuple[str, str]:
        """A button click by ``who``; ``claims`` overwrite top-level payload keys (what it pretends)."""
        token = self.next_token("click")
        payload = slack_requests.block_actions_payload(
            user_id=who.user_id,
            action_id=f"ackgate.{action}",
            value=value,
            response_url=self.slack.response_url(token),
        )
        for key, value_ in claims.items():
            if isinstance(value_, dict) and isinstance(payload.get(key), dict):
                payload[key] = {**payload[key], **value_}
            else:
                payload[key] = value_
        from urllib.parse import urlencode

        return urlencode({"payload": json.dumps(payload)}), token

    async def answered(self, token: str) -> str:
        """The last text Ackgate posted on the response_url ``token``."""
        await self.slack.wait_for(lambda: bool(self.slack.responses.get(token)))
        return text_of(self.slack.responses[token][-1])

    async def command(self, who: Person, text: str, *, instance: int = 0) -> str:
        """``who`` types ``/access <text>``; returns Ackgate's follow-up answer."""
        body, token = self.command_body(who, text)
        answer = await self.slack_post(body, instance=instance)
        assert answer.status == 200, answer
        return await self.answered(token)

    async def click(self, who: Person, action: str, value: str, *, instance: int = 0, **claims: Any) -> str:
        body, token = self.click_body(who, action, value, **claims)
        answer = await self.slack_post(body, instance=instance)
        assert answer.status == 200, answer
        return await self.answered(token)

    def dms(self, who: Person) -> list[str]:
        return [
            text_of({"blocks": m.blocks, "text": m.text})
            for m in self.slack.messages.get(self.slack.dm_channel(who.user_id), [])
        ]

    async def wait_for_dm(self, who: Person, contains: str) -> str:
        await self.slack.wait_for(lambda: any(contains in t for t in self.dms(who)))
        return next(t for t in reversed(self.dms(who)) if contains in t)

    def channel_messages(self, channel: str = MIRROR_CHANNEL) -> list[str]:
        return [text_of({"blocks": m.blocks, "text": m.text}) for m in self.slack.messages.get(channel, [])]

    def chat_texts(self) -> list[str]:
        """Everything Ackgate ever showed in Slack: messages, response_url posts, ephemerals, modals."""
        out = [json.dumps({"text": m.text, "blocks": m.blocks}) for ms in self.slack.messages.values() for m in ms]
        out += [json.dumps(r) for rs in self.slack.responses.values() for r in rs]
        out += [json.dumps(e) for e in self.slack.ephemerals]
        out += [json.dumps(v.view) for v in self.slack.views.values()]
        return out

    def link_tokens(self) -> list[str]:
        """Every ``/auth/<token>`` value Ackgate ever sent anyone."""
        return sorted({m.group(1) for text in self.chat_texts() for m in _LINK_TOKEN.finditer(text)})

    async def ask_for_verification(self, requester: Person, target: Person, *, instance: int = 0) -> str:
        """``requester`` asks Ackgate to verify ``target``; returns the link ``target`` received."""
        before = len(self.dms(target))
        text = await self.command(
            requester, f"auth <@{target.user_id}|{target.name}> resetting your password", instance=instance
        )
        assert f"Authentication request sent to {target.email}" in text, text
        await self.slack.wait_for(lambda: len(self.dms(target)) > before)
        dm = await self.wait_for_dm(target, "asks you to confirm your identity")
        found = AUTH_LINK.search(dm)
        assert found is not None, dm
        return found.group(1)

    async def healthy(self, instance: int = 0) -> Answer:
        return await self.send("GET", "/healthz", instance=instance)

    # --- what was stored ---------------------------------------------------------------

    async def audit(self) -> list[AuditEvent]:
        return await self.parts().store.audit.since(BEGINNING)

    async def audit_count(self, kind: str, subject: str | None = None) -> int:
        return sum(1 for e in await self.audit() if e.kind == kind and (subject is None or e.subject == subject))

    def provisioner_calls(self, action: str, grant_id: str | None = None) -> int:
        return sum(
            1 for c in self.provisioner.calls if c.action == action and (grant_id is None or c.grant.id == grant_id)
        )

    async def settle(self, seconds: float = 0.3) -> None:
        """Let background work (listeners after the ack, webhook processing) finish."""
        await asyncio.sleep(seconds)


def later(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)


BACKENDS = ("sqlite", "postgres", "postgres-replicas")


@asynccontextmanager
async def cluster_on(backend: str, workdir: Path, **options: Any) -> AsyncIterator[Cluster]:
    """A cluster on SQLite, on PostgreSQL (a throw-away schema), or as two replicas on PostgreSQL."""
    if backend == "sqlite":
        async with Cluster(workdir, **options) as cluster:
            yield cluster
        return
    async with postgres_schema_url() as url:
        instances = 2 if backend == "postgres-replicas" else 1
        async with Cluster(workdir, database_url=url, instances=instances, **options) as cluster:
            yield cluster


# --- the fuzz harness ---------------------------------------------------------------------

EXAMPLES_ENV = "ACKGATE_FUZZ_EXAMPLES"  # total examples over the whole fuzz set (CI: a bounded default)
SURVEY_ENV = "ACKGATE_FUZZ_SURVEY"  # "1": record every failing example instead of stopping at the first
REPORT_ENV = "ACKGATE_FUZZ_REPORT"  # where the survey writes its figures (JSON)
CI_EXAMPLES = 600


def total_examples() -> int:
    return int(os.environ.get(EXAMPLES_ENV) or CI_EXAMPLES)


def surveying() -> bool:
    return os.environ.get(SURVEY_ENV, "") not in ("", "0")


PROFILE_ENV = "ACKGATE_FUZZ_PROFILE"  # "ci" (default) or "soak"
_COMMON = {
    "database": None,
    "deadline": None,
    "print_blob": False,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
}
# CI: derandomized and without an example database, so every run sends the same examples and never
# flakes on what an earlier run found. Soak: random, so each long run explores new ground. Neither
# uses hypothesis's deadline: the one-second bound is asserted on each server answer, which is what
# matters; the test's own bookkeeping is not timed.
settings.register_profile("ackgate-fuzz-ci", derandomize=True, **_COMMON)
settings.register_profile("ackgate-fuzz-soak", derandomize=False, **_COMMON)


def fuzz_settings(share: float) -> settings:
    """The fuzz profile's settings for one fuzz test taking ``share`` of the examples."""
    profile = settings.get_profile(f"ackgate-fuzz-{os.environ.get(PROFILE_ENV) or 'ci'}")
    return settings(profile, max_examples=max(20, int(total_examples() * share)))


class LiveCluster:
    """A :class:`Cluster` on an event loop of its own that runs only while an example sends its
    request, so hypothesis's synchronous examples drive one long-running server one request at a
    time. The loop is idle while hypothesis draws the next example: background work (listeners
    still answering) resumes with the next request and never races the draw."""

    def __init__(self, workdir: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.cluster = Cluster(workdir)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        return self.loop.run_until_complete(asyncio.wait_for(coro, timeout))

    def __enter__(self) -> LiveCluster:
        self.run(self.cluster.__aenter__())
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.run(self.cluster.__aexit__(None, None, None))
            self.loop.run_until_complete(_cancel_the_rest())  # not under wait_for: it would cancel its waiter
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        finally:
            self.loop.close()


_LONG_LIVED = re.compile(r"RequestHandler|Event\.wait|Condition\.wait")


async def _quiesce(running: set[asyncio.Task[Any]], limit: float = 2.0) -> None:
    """Wait (up to ``limit``) for the tasks started since ``running`` was taken, except those that
    live on: the server's per-connection tasks and the expiry scheduler waiting to be woken."""
    current = asyncio.current_task()
    started = [
        t
        for t in asyncio.all_tasks()
        if t not in running and t is not current and not _LONG_LIVED.search(t.get_coro().__qualname__)  # type: ignore[union-attr]
    ]
    if started:
        await asyncio.wait(started, timeout=limit)


async def _cancel_the_rest() -> None:
    """Cancel what the fuzz left running (listeners still answering), so the loop closes clean."""
    current = asyncio.current_task()
    rest = [t for t in asyncio.all_tasks() if t is not current]
    for task in rest:
        task.cancel()
    await asyncio.gather(*rest, return_exceptions=True)


@dataclass
class Tally:
    """The survey's figures for one entry point."""

    examples: int = 0
    failing: int = 0  # examples answered 5xx or with a traceback
    failures: dict[str, dict[str, Any]] = field(default_factory=dict)  # problem/cause -> count, input classes
    slowest: float = 0.0

    def add(self, case_label: str, problems: list[str], causes: list[str]) -> None:
        if any(not p.startswith("answered after") for p in problems):
            self.failing += 1
        for problem in problems:
            kind = "slow" if problem.startswith("answered after") else problem
            key = f"{kind} <- {'/'.join(sorted(set(causes))) or 'no exception logged'}"
            entry = self.failures.setdefault(key, {"count": 0, "inputs": {}})
            entry["count"] += 1
            label = case_label[:100]
            entry["inputs"][label] = entry["inputs"].get(label, 0) + 1


class Fuzzer:
    """Sends each drawn case into the live cluster and checks the answer.

    Outside a survey the first problem fails the example (hypothesis then shrinks it); in a survey
    (``ACKGATE_FUZZ_SURVEY=1``) every problem is counted by input class and cause, for the figures."""

    def __init__(self, live: LiveCluster, name: str) -> None:
        self.live = live
        self.name = name
        self.tally = Tally()

    @property
    def cluster(self) -> Cluster:
        return self.live.cluster

    def check(self, method: str, path: str, body: bytes, headers: Mapping[str, str], label: str) -> Answer:
        log = self.cluster.log
        mark = log.mark()
        running = asyncio.all_tasks(self.live.loop)
        answer = self.live.run(self.cluster.send(method, path, body=body or None, headers=headers))
        # Let the work this request started (listeners after the ack, webhook processing) finish
        # before the next example, so each answer's time and each logged exception is its own.
        self.live.loop.run_until_complete(_quiesce(running))  # bounded inside; no wait_for task of its own
        self.tally.examples += 1
        self.tally.slowest = max(self.tally.slowest, answer.elapsed)
        problems = answer_problems(answer)
        if problems:
            causes = log.exception_types_since(mark)
            self.tally.add(label, problems, causes)
            if not surveying():
                raise AssertionError(
                    f"{', '.join(problems)} (exceptions logged: {causes or 'none'}); answer: {answer.text[:300]!r}"
                )
        return answer

    def finish(self) -> None:
        """After the examples: the server is still healthy, and no chat message showed a traceback."""
        cluster = self.cluster
        self.live.run(cluster.settle(0.5))
        shown = [t for t in cluster.chat_texts() if traceback_in(t)]
        health = self.live.run(cluster.healthy())
        helped = self.live.run(cluster.command(cluster.person("alice"), "help"))
        leaked = leaks(cluster.log.lines, tokens=cluster.link_tokens())
        write_report(self.name, self.tally, chat_tracebacks=len(shown), log_leaks=leaked)
        assert leaked == [], f"{len(leaked)} log lines leak or overflow: {leaked[:10]}"
        assert shown == [], f"{len(shown)} chat messages showed a traceback, e.g. {shown[0][:300]}"
        assert health.status == 200, health
        assert "/access <resource>" in helped, helped
        if not surveying():
            assert self.tally.failures == {}, self.tally.failures


def write_report(name: str, tally: Tally, *, chat_tracebacks: int, log_leaks: Sequence[str]) -> None:
    """Add this entry point's figures to the survey report (``ACKGATE_FUZZ_REPORT``), when asked."""
    target = os.environ.get(REPORT_ENV)
    if not target:
        return
    path = Path(target)
    report = json.loads(path.read_text()) if path.exists() else {}
    report[name] = {
        "examples": tally.examples,
        "failing_answers": tally.failing,
        "failing_share": round(tally.failing / tally.examples, 4) if tally.examples else 0.0,
        "slow_answers": sum(e["count"] for k, e in tally.failures.items() if k.startswith("slow")),
        "slowest_seconds": round(tally.slowest, 3),
        "chat_tracebacks": chat_tracebacks,
        "log_leaks": len(log_leaks),
        "log_leak_examples": list(log_leaks[:5]),
        "causes": {
            key: {
                "count": entry["count"],
                "inputs": dict(sorted(entry["inputs"].items(), key=lambda kv: -kv[1])[:12]),
            }
            for key, entry in tally.failures.items()
        },
    }
    path.write_text(json.dumps(report, indent=2, sort_keys=True))
