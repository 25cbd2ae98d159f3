"""Run ``ackgate serve`` as production does, a child process, against loopback fakes.

The fakes live in the test process: the PagerDuty REST and Events simulators, the Slack Web API
simulator (which also receives ``response_url`` posts) and a recording webhook provisioner.
:class:`Cluster` starts one or more ``serve`` processes on one database (a SQLite file or a
PostgreSQL database of its own), SIGKILLs or SIGTERMs them and starts them again; every start is a
new *generation* with its own provisioner URL, so each provisioner call names its sender.
:class:`Client` is Slack and PagerDuty: validly signed slash commands, button clicks and V3
webhooks, each remembered as an :class:`Interaction` so the checks can ask whether it was answered.

Nothing here imports pytest: ``tests/reliability/soak.py`` uses it from the command line too.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlencode

import aiohttp
import asyncpg

from bot.runtime.simulators import slack_requests
from bot.runtime.simulators.pagerduty import PagerDutySimulator
from bot.runtime.simulators.pagerduty_events import EventsSimulator
from bot.runtime.simulators.slack import SlackSimulator
from bot.runtime.simulators.stage import text_of
from tests.reliability.receiver import RecordingReceiver

REPO = Path(__file__).resolve().parents[2]
SIGNING_SECRET = "reliability-signing-secret"
PD_TOKEN = "reliability-pagerduty-token"
WEBHOOK_SECRET = "reliability-webhook-secret-0123456789"
PROVISIONER_SECRET = "reliability-provisioner-secret-0123456789"
SECRET_KEY = "reliability-secret-key-0123456789abcdef"
INTEGRATION_KEY = "R0UTINGKEY0123456789ABCDEFGHIJKL"
BOT_EMAIL = "ackgate-bot@example.com"
MIRROR_CHANNEL = "C0MIRROR"
SERVICE_ID = "PRELSVC"  # the PagerDuty service whose incidents are mirrored and gate app-incident
POSTGRES_ADMIN_URL = os.environ.get("ACKGATE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")

AUTO, APPROVED, INCIDENT = "app-auto", "app-approved", "app-incident"
PROVISIONER_TIMEOUT = 5  # seconds per provisioner attempt; a retry after it is the sender's own
APPROVERS = ("approver1", "approver2")


def policy_yaml(provisioner_url: str) -> str:
    """Three flows: automatic, one approval of two named approvers, and incident-bound (revoked on resolve)."""
    approvers = ", ".join(f"{a}@example.com" for a in APPROVERS)
    return f"""\
version: 1
provisioners:
  iam:
    type: webhook
    url: {provisioner_url}
    timeout_seconds: {PROVISIONER_TIMEOUT}
    max_attempts: 3
resources:
  - {{name: {AUTO}, provisioner: iam}}
  - {{name: {APPROVED}, provisioner: iam}}
  - {{name: {INCIDENT}, provisioner: iam}}
flows:
  - name: auto
    resources: [{AUTO}]
    approval: {{type: auto}}
    default_duration: 30m
    max_duration: 8h
    incident_notes: false
  - name: approved
    resources: [{APPROVED}]
    approval: {{type: approvers, approvers: [{approvers}], required: 1}}
    default_duration: 30m
    max_duration: 8h
    incident_notes: false
  - name: incident
    resources: [{INCIDENT}]
    gate: {{type: acknowledged_incident, services: [{SERVICE_ID}]}}
    approval: {{type: auto}}
    default_duration: 30m
    max_duration: 8h
    revoke_on_resolve: true
    incident_notes: false
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def now_utc() -> datetime:
    return datetime.now(UTC)


async def poll(condition: Any, *, within: float, every: float = 0.1) -> bool:
    """Wait until ``condition()`` (sync or async) is true, at most ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(every)


# --- the fakes ----------------------------------------------------------------------------------


class Fakes:
    """PagerDuty (REST and Events), Slack and the provisioner, on loopback in this process."""

    def __init__(self, *, provisioner_fail_every: int = 0) -> None:
        self.pd = PagerDutySimulator(token=PD_TOKEN)
        self.events = EventsSimulator()
        self.slack = SlackSimulator()
        self.receiver = RecordingReceiver(PROVISIONER_SECRET, fail_every=provisioner_fail_every)

    async def start(self) -> None:
        await self.pd.start()
        await self.events.start()
        await self.slack.start()
        await self.receiver.start()
        self.pd.add_user(BOT_EMAIL, "Ackgate")
        self.pd.add_service("Reliability", service_id=SERVICE_ID)
        self.slack.add_channel(MIRROR_CHANNEL)

    async def stop(self) -> None:
        await self.receiver.stop()
        await self.slack.stop()
        await self.events.stop()
        await self.pd.stop()


# --- databases ----------------------------------------------------------------------------------


class Database:
    """Where the cluster keeps its state; ``retime`` moves grants' expiry (the clock, for one grant)."""

    url: str

    async def create(self) -> None: ...

    async def drop(self) -> None: ...

    async def retime(self, grant_ids: Sequence[str], expires_at: datetime) -> int:
        """Set the expiry of these grants, if still active, as if they had been asked for that long.

        ``serve`` re-reads the earliest expiry at least every few seconds (the expiry scheduler's
        idle interval), so an expiry moved at least that far ahead is met exactly; one moved into
        the past while ``serve`` is down is what a restart after downtime finds."""
        raise NotImplementedError


class SqliteDatabase(Database):
    def __init__(self, path: Path) -> None:
        self.path = path
        self.url = f"sqlite:///{path}"

    async def retime(self, grant_ids: Sequence[str], expires_at: datetime) -> int:
        stamp = expires_at.astimezone(UTC).isoformat(timespec="microseconds")

        def run() -> int:
            conn = sqlite3.connect(self.path, timeout=30)
            try:
                with conn:
                    marks = ",".join("?" * len(grant_ids))
                    cur = conn.execute(
                        f"UPDATE grants SET expires_at = ? WHERE status = 'active' AND id IN ({marks})",  # noqa: S608
                        [stamp, *grant_ids],
                    )
                    return cur.rowcount
            finally:
                conn.close()

        return await asyncio.to_thread(run) if grant_ids else 0


class PostgresDatabase(Database):
    """A database of its own (``ackgate_crash_<random>``) on the test server, dropped afterwards."""

    def __init__(self, admin_url: str = POSTGRES_ADMIN_URL) -> None:
        self.admin_url = admin_url
        self.name = f"ackgate_crash_{secrets.token_hex(4)}"
        base, _, _ = admin_url.rpartition("/")
        self.url = f"{base}/{self.name}"

    async def create(self) -> None:
        conn = await asyncpg.connect(self.admin_url, timeout=10)
        try:
            await conn.execute(f'CREATE DATABASE "{self.name}"')
        finally:
            await conn.close()

    async def drop(self) -> None:
        conn = await asyncpg.connect(self.admin_url, timeout=10)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        finally:
            await conn.close()

    async def retime(self, grant_ids: Sequence[str], expires_at: datetime) -> int:
        if not grant_ids:
            return 0
        conn = await asyncpg.connect(self.url, timeout=10)
        try:
            status = await conn.execute(
                "UPDATE grants SET expires_at = $1 WHERE status = 'active' AND id = ANY($2::text[])",
                expires_at,
                list(grant_ids),
            )
        finally:
            await conn.close()
        return int(status.split()[-1])


# --- serve processes ----------------------------------------------------------------------------


@dataclass
class Generation:
    """One life of one serve process, from start to its end (killed, terminated or stopped)."""

    sender: str
    started: float
    ready_at: float | None = None
    ended_at: float | None = None
    how: str = ""  # "kill" | "term" | "stop" | "died"
    returncode: int | None = None


class Server:
    """One replica: ``ackgate serve`` on its own port, started again after each kill."""

    def __init__(self, name: str, *, fakes: Fakes, database: Database, workdir: Path, env: dict[str, str]) -> None:
        self.name = name
        self.fakes = fakes
        self.database = database
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._env = env
        self.generations: list[Generation] = []
        self._process: asyncio.subprocess.Process | None = None
        self._log: TextIO | None = None

    @property
    def up(self) -> bool:
        gen = self.generations[-1] if self.generations else None
        return gen is not None and gen.ready_at is not None and gen.ended_at is None

    @property
    def current(self) -> Generation | None:
        return self.generations[-1] if self.generations else None

    def log_paths(self) -> list[Path]:
        return [self.workdir / f"{g.sender}.log" for g in self.generations]

    async def start(self, *, ready_within: float = 60.0) -> Generation:
        assert self._process is None, f"{self.name} is already running"
        sender = f"{self.name}.g{len(self.generations) + 1}"
        policy = self.workdir / f"{sender}.policy.yaml"
        policy.write_text(policy_yaml(self.fakes.receiver.url_for(sender)))
        env = {
            **self._env,
            "ACKGATE_POLICY_FILE": str(policy),
            "ACKGATE_PORT": str(self.port),
            "ACKGATE_PUBLIC_URL": self.url,
        }
        gen = Generation(sender, time.time())
        self.generations.append(gen)
        self._log = (self.workdir / f"{sender}.log").open("w")
        self._process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bot.runtime.cli",
            "serve",
            cwd=REPO,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        if not await self._wait_ready(ready_within):
            await self.kill()
            raise RuntimeError(f"{sender} did not answer /healthz within {ready_within:g}s; see {self.workdir}")
        gen.ready_at = time.time()
        return gen

    async def _wait_ready(self, within: float) -> bool:
        async with aiohttp.ClientSession() as session:

            async def answers() -> bool:
                if self._process is None or self._process.returncode is not None:
                    raise RuntimeError(f"{self.name} exited during start; see {self.workdir}")
                try:
                    async with session.get(f"{self.url}/healthz", timeout=aiohttp.ClientTimeout(total=2)) as r:
                        await r.read()
                        return True
                except (aiohttp.ClientError, TimeoutError):
                    return False

            return await poll(answers, within=within, every=0.05)

    def _ended(self, how: str) -> None:
        gen = self.generations[-1]
        gen.ended_at = time.time()
        gen.how = how
        if self._process is not None:
            gen.returncode = self._process.returncode
        self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    async def kill(self) -> None:
        """SIGKILL: the process gets no chance to finish anything."""
        if self._process is None:
            return
        self._process.send_signal(signal.SIGKILL)
        await self._process.wait()
        self._ended("kill")

    async def terminate(self, *, within: float = 30.0, how: str = "term") -> bool:
        """SIGTERM, as an orchestrator stops a pod; waits for the exit. False if it had to be killed."""
        if self._process is None:
            return True
        process = self._process
        process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(within):
                await process.wait()
            exited = True
        except TimeoutError:
            exited = False
            process.send_signal(signal.SIGKILL)
            await process.wait()
        self._ended(how if exited else "term-timeout")
        return exited

    def check_alive(self) -> None:
        """A process that died on its own is a finding, not a test error: record it as such."""
        if self._process is not None and self._process.returncode is not None:
            self._ended("died")


class Cluster:
    """``replicas`` serve processes on one database, with the fakes around them."""

    def __init__(
        self,
        *,
        fakes: Fakes,
        database: Database,
        workdir: Path,
        replicas: int = 1,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        """``extra_env``: more settings for every process (e.g. Teams', pointed at a simulator)."""
        self.fakes = fakes
        self.database = database
        self.workdir = workdir
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ACKGATE_", "SLACK_", "PAGERDUTY_"))}
        env.update(
            {
                "SLACK_BOT_TOKEN": fakes.slack.token,
                "SLACK_SIGNING_SECRET": SIGNING_SECRET,
                "SLACK_API_URL": fakes.slack.base_url,
                "PAGERDUTY_API_TOKEN": PD_TOKEN,
                "PAGERDUTY_API_URL": fakes.pd.base_url,
                "PAGERDUTY_FROM_EMAIL": BOT_EMAIL,
                "PAGERDUTY_TIMEOUT_SECONDS": "3",
                "PAGERDUTY_EVENTS_URL": fakes.events.base_url,
                "PAGERDUTY_INTEGRATION_KEY": INTEGRATION_KEY,
                "PAGERDUTY_WEBHOOK_SECRET": WEBHOOK_SECRET,
                "ACKGATE_DATABASE_URL": database.url,
                "ACKGATE_HOST": "127.0.0.1",
                "ACKGATE_PROVISIONER_SECRET": PROVISIONER_SECRET,
                "ACKGATE_SECRET_KEY": SECRET_KEY,
                "ACKGATE_MIRROR_CHANNEL": MIRROR_CHANNEL,
                "ACKGATE_MIRROR_SERVICES": SERVICE_ID,
                "ACKGATE_LOG_LEVEL": "INFO",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(extra_env or {})
        self.servers = [
            Server(f"r{i + 1}", fakes=fakes, database=database, workdir=workdir, env=env) for i in range(replicas)
        ]
        self.kills = 0
        self.terms = 0

    async def start(self) -> None:
        # The first applies the migrations; the others then start together.
        await self.servers[0].start()
        await asyncio.gather(*(server.start() for server in self.servers[1:]))

    async def stop(self) -> None:
        for server in self.servers:
            await server.terminate(within=20, how="stop")

    def up(self) -> list[Server]:
        for server in self.servers:
            server.check_alive()
        return [s for s in self.servers if s.up]

    async def wait_any_up(self, within: float = 60.0) -> bool:
        return await poll(lambda: bool(self.up()), within=within, every=0.05)

    def generations(self) -> list[Generation]:
        return [g for s in self.servers for g in s.generations]

    def generation(self, sender: str) -> Generation | None:
        return next((g for g in self.generations() if g.sender == sender), None)

    def all_up_intervals(self) -> list[tuple[float, float]]:
        """Times when every replica was up and serving: the windows in which work is owed promptly."""
        points: list[tuple[float, int]] = []
        for g in self.generations():
            if g.ready_at is None:
                continue
            points.append((g.ready_at, 1))
            points.append((g.ended_at if g.ended_at is not None else float("inf"), -1))
        points.sort()
        intervals: list[tuple[float, float]] = []
        level, start = 0, 0.0
        for at, step in points:
            level += step
            if step == 1 and level == len(self.servers):
                start = at
            elif step == -1 and level == len(self.servers) - 1:
                intervals.append((start, at))
        return intervals

    def log_lines(self) -> list[str]:
        lines: list[str] = []
        for server in self.servers:
            for path in server.log_paths():
                with suppress(FileNotFoundError):
                    lines += path.read_text(errors="replace").splitlines()
        return lines


# --- Slack and PagerDuty, as clients ------------------------------------------------------------


@dataclass(frozen=True)
class Person:
    name: str
    user_id: str
    email: str
    pd_id: str = ""


@dataclass
class Interaction:
    """One slash command or button click Slack delivered (or tried to)."""

    kind: str  # "command" | "click"
    token: str  # its response_url token
    who: Person
    text: str
    server: str
    sent_at: float
    marker: str = ""  # a unique word of the request, which an answer by DM would carry
    subject: str = ""  # for a click, the request whose card was clicked
    status: int | None = None  # HTTP status Slack got, None when the connection failed
    acked_at: float | None = None

    @property
    def acked(self) -> bool:
        return self.status == 200


@dataclass
class WebhookCopy:
    server: str
    statuses: list[int | None] = field(default_factory=list)  # every attempt, None: connection failed

    @property
    def delivered(self) -> bool:
        return any(s is not None and 200 <= s < 300 for s in self.statuses)


@dataclass
class WebhookDelivery:
    """One PagerDuty delivery (one X-Webhook-Id), possibly sent to several replicas at once."""

    incident_id: str
    event_type: str
    webhook_id: str
    copies: list[WebhookCopy] = field(default_factory=list)

    @property
    def delivered(self) -> bool:
        return any(c.delivered for c in self.copies)


class Client:
    """What Slack and PagerDuty send to the cluster, each request validly signed."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.slack = cluster.fakes.slack
        self.pd = cluster.fakes.pd
        self.interactions: list[Interaction] = []
        self.webhooks: list[WebhookDelivery] = []
        self.people: dict[str, Person] = {}
        self._session: aiohttp.ClientSession | None = None
        self._seq = 0

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=15), connector=aiohttp.TCPConnector(limit=200)
        )

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()

    def person(self, name: str, *, in_pagerduty: bool = True) -> Person:
        """Someone with a Slack account and (unless told otherwise) a PagerDuty user of the same email."""
        if name in self.people:
            return self.people[name]
        email = f"{name}@example.com"
        user_id = f"U0{name.upper().replace('-', '')}"
        self.slack.add_user(user_id, email, name.title())
        pd_id = self.pd.add_user(email, name.title()) if in_pagerduty else ""
        self.people[name] = who = Person(name, user_id, email, pd_id)
        return who

    def _next(self, prefix: str) -> str:
        self._seq += 1
        return f"{prefix}{self._seq}"

    def pick(self, prefer: Server | None = None) -> Server | None:
        """A replica that is up, as a load balancer would choose."""
        if prefer is not None and prefer.up:
            return prefer
        up = self.cluster.up()
        return up[secrets.randbelow(len(up))] if up else None

    async def _post_slack(self, interaction: Interaction, server: Server, body: str) -> Interaction:
        assert self._session is not None
        self.interactions.append(interaction)
        try:
            status, _ = await slack_requests.post_signed(
                self._session, f"{server.url}/slack/events", body, secret=SIGNING_SECRET
            )
        except (aiohttp.ClientError, TimeoutError):
            return interaction  # never acknowledged: Slack shows the user an error, nothing is owed
        interaction.status = status
        if status == 200:
            interaction.acked_at = time.time()
        return interaction

    async def command(self, who: Person, text: str, *, server: Server, marker: str = "") -> Interaction:
        token = self._next("cmd")
        body = slack_requests.slash_command_body(
            text=text,
            user_id=who.user_id,
            response_url=self.slack.response_url(token),
            trigger_id=self.slack.trigger_id(),
        )
        interaction = Interaction("command", token, who, text, server.name, time.time(), marker=marker)
        return await self._post_slack(interaction, server, body)

    async def click(self, who: Person, action: str, request_id: str, *, server: Server) -> Interaction:
        token = self._next("click")
        payload = slack_requests.block_actions_payload(
            user_id=who.user_id,
            action_id=f"ackgate.{action}",
            value=request_id,
            response_url=self.slack.response_url(token),
        )
        # Every click is its own interaction to Slack: its own trigger id and action time.
        payload["trigger_id"] = self.slack.trigger_id()
        payload["actions"][0]["action_ts"] = f"{time.time():.6f}"
        body = urlencode({"payload": json.dumps(payload)})
        interaction = Interaction(
            "click", token, who, f"{action} {request_id}", server.name, time.time(), subject=request_id
        )
        return await self._post_slack(interaction, server, body)

    def answers(self, interaction: Interaction) -> list[str]:
        """What the user was shown in answer: response_url posts; for a request, a DM naming its
        marker; for a click, the clicked card updated in place with the decision (buttons gone)."""
        shown = [text_of(r) for r in self.slack.responses.get(interaction.token, [])]
        if interaction.marker:
            shown += [t for t in self.dms(interaction.who) if interaction.marker in t]
        if interaction.subject:
            shown += [t for t in self.dms(interaction.who) if interaction.subject in t and "[Approve]" not in t]
        return shown

    def answered(self, interaction: Interaction) -> bool:
        return bool(self.answers(interaction))

    async def wait_answer(self, interaction: Interaction, *, within: float) -> str | None:
        if not interaction.acked:
            return None
        await poll(lambda: self.answered(interaction), within=within, every=0.05)
        shown = self.answers(interaction)
        return shown[-1] if shown else None

    def dms(self, who: Person) -> list[str]:
        return [
            text_of({"blocks": m.blocks, "text": m.text})
            for m in self.slack.messages.get(self.slack.dm_channel(who.user_id), [])
        ]

    def mirror_messages(self) -> list[tuple[str, str]]:
        """The mirror channel's messages as (ts, text)."""
        return [
            (m.ts, text_of({"blocks": m.blocks, "text": m.text})) for m in self.slack.messages.get(MIRROR_CHANNEL, [])
        ]

    # --- PagerDuty webhooks -------------------------------------------------------------------

    async def webhook(
        self,
        body: bytes,
        *,
        incident_id: str,
        event_type: str,
        servers: Sequence[Server],
        give_up_after: float = 60.0,
    ) -> WebhookDelivery:
        """One delivery sent to each of ``servers`` at the same instant (PagerDuty's retry racing the
        original). Each copy is retried like PagerDuty does until some replica answers 2xx."""
        delivery = WebhookDelivery(incident_id, event_type, self._next("wh-") + secrets.token_hex(4))
        self.webhooks.append(delivery)
        signature = "v1=" + hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
        headers = {
            "Content-Type": "application/json",
            "X-PagerDuty-Signature": signature,
            "X-Webhook-Id": delivery.webhook_id,
            "X-Webhook-Subscription": "PSUBREL",
            "User-Agent": "PagerDuty-Webhook/V3.0",
        }
        await asyncio.gather(*(self._deliver(delivery, s, body, headers, give_up_after) for s in servers))
        return delivery

    async def _deliver(
        self, delivery: WebhookDelivery, server: Server, body: bytes, headers: dict[str, str], give_up_after: float
    ) -> None:
        assert self._session is not None
        copy = WebhookCopy(server.name)
        delivery.copies.append(copy)
        deadline = time.monotonic() + give_up_after
        wait = 0.25
        target: Server | None = server
        while True:
            status: int | None = None
            if target is not None:
                try:
                    async with self._session.post(f"{target.url}/webhooks/pagerduty", data=body, headers=headers) as r:
                        await r.read()
                        status = r.status
                except (aiohttp.ClientError, TimeoutError):
                    status = None
            copy.statuses.append(status)
            if status is not None and (200 <= status < 300 or (400 <= status < 500 and status not in (408, 429))):
                return  # PagerDuty stops on 2xx, and gives up on other 4xx
            if time.monotonic() >= deadline:
                return
            await asyncio.sleep(wait)
            wait = min(wait * 2, 2.0)
            target = server if server.up else self.pick()


def webhook_body(
    event_type: str, *, incident_id: str, number: int, title: str, status: str, at: datetime, agent: str = ""
) -> bytes:
    """A V3 webhook body in PagerDuty's shape."""
    event = {
        "id": f"01{secrets.token_hex(12).upper()}",
        "event_type": event_type,
        "resource_type": "incident",
        "occurred_at": at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "agent": (
            {"id": "PAGENT1", "type": "user_reference", "summary": agent, "html_url": "https://acme.pagerduty.com/u/1"}
            if agent
            else None
        ),
        "client": None,
        "data": {
            "id": incident_id,
            "type": "incident",
            "self": f"https://api.pagerduty.com/incidents/{incident_id}",
            "html_url": f"https://acme.pagerduty.com/incidents/{incident_id}",
            "number": number,
            "status": status,
            "incident_key": f"key-{incident_id}",
            "title": title,
            "service": {"id": SERVICE_ID, "type": "service_reference", "summary": "Reliability"},
            "urgency": "high",
        },
    }
    return json.dumps({"event": event}).encode()
