"""``ackgate serve`` as a real child process: it says where it listens, refuses a busy port in one
line, and a SIGTERM under load loses no acknowledged request.

PagerDuty and Slack are the loopback simulators, run in this test's event loop; the child reaches
them over HTTP like the real services.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sqlite3
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from bot.runtime.simulators import slack_requests
from bot.runtime.simulators.pagerduty import PagerDutySimulator
from bot.runtime.simulators.slack import SlackSimulator
from bot.runtime.version import version
from tests.fakes.storage_fixtures import postgres_schema_url

SIGNING_SECRET = "serve-process-signing-secret"
PD_TOKEN = "serve-process-pd-token"
POLICY = """\
version: 1
resources:
  - name: prod-db
    max_duration: 8h
flows:
  - name: incident-db
    resources: [prod-db]
    gate: {type: acknowledged_incident}
    approval: {type: auto}
    max_duration: 8h
    incident_notes: false
"""
_ENV_PREFIXES = ("ACKGATE_", "SLACK_", "PAGERDUTY_", "MICROSOFT_")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@dataclass
class Child:
    process: asyncio.subprocess.Process
    url: str
    lines: list[str] = field(default_factory=list)

    def logged(self) -> list[dict[str, object]]:
        out = []
        for line in self.lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"level": "raw", "msg": line})
        return out


async def _collect(stream: asyncio.StreamReader, into: list[str]) -> None:
    while line := await stream.readline():
        into.append(line.decode(errors="replace").rstrip("\n"))


@asynccontextmanager
async def serve(tmp_path: Path, *args: str, listening: int = 1, **env: str) -> AsyncIterator[Child]:
    """``ackgate serve ARGS`` with ``env`` on top of a clean environment; yields once ``listening``
    processes said they listen."""
    port = int(env.get("ACKGATE_PORT") or _free_port())
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY, encoding="utf-8")
    full = {k: v for k, v in os.environ.items() if not k.startswith(_ENV_PREFIXES)}
    full.update(
        ACKGATE_HOST="127.0.0.1",
        ACKGATE_PORT=str(port),
        ACKGATE_POLICY_FILE=str(policy),
        ACKGATE_DATABASE_URL=f"sqlite:///{tmp_path / 'ackgate.db'}",
        ACKGATE_PUBLIC_URL=f"http://127.0.0.1:{port}",
        SLACK_BOT_TOKEN="xoxb-serve-process",
        SLACK_SIGNING_SECRET=SIGNING_SECRET,
        PAGERDUTY_API_TOKEN=PD_TOKEN,
    )
    full.update(env)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot.runtime.cli",
        "serve",
        *args,
        env=full,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    child = Child(process, f"http://127.0.0.1:{port}")
    reader = asyncio.create_task(_collect(process.stderr, child.lines))
    try:
        deadline = time.monotonic() + 20
        while sum("listening on" in line for line in child.lines) < listening:
            if process.returncode is not None or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        yield child
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
        await reader


async def stopped(child: Child, *, within: float) -> int:
    """SIGTERM, then the exit code, which must come within ``within`` seconds."""
    child.process.send_signal(signal.SIGTERM)
    return await asyncio.wait_for(child.process.wait(), timeout=within)


@pytest.fixture
async def pd() -> AsyncIterator[PagerDutySimulator]:
    async with PagerDutySimulator(token=PD_TOKEN) as sim:
        yield sim


@pytest.fixture
async def slack() -> AsyncIterator[SlackSimulator]:
    async with SlackSimulator() as sim:
        yield sim


def _platforms(pd: PagerDutySimulator, slack: SlackSimulator) -> dict[str, str]:
    return {"PAGERDUTY_API_URL": pd.base_url, "SLACK_API_URL": slack.base_url, "SLACK_BOT_TOKEN": slack.token}


def _on_call_people(pd: PagerDutySimulator, slack: SlackSimulator, count: int) -> list[str]:
    """``count`` Slack users, each with an incident they acknowledged in PagerDuty."""
    service = pd.add_service("Database", service_id="PDB0001")
    users = []
    for n in range(count):
        email = f"user{n}@example.com"
        slack_id = f"U0LOAD{n:04d}"
        slack.add_user(slack_id, email, f"User {n}")
        me = pd.add_user(email, f"User {n}")
        pd.add_incident(f"Incident {n}", service=service, assigned_to=[me], acknowledged_by=[me])
        users.append(slack_id)
    return users


async def _request_access(session: aiohttp.ClientSession, child: Child, slack: SlackSimulator, user: str) -> int:
    body = slack_requests.slash_command_body(
        text="prod-db 1h load test", user_id=user, response_url=slack.response_url(f"t-{user}")
    )
    status, _ = await slack_requests.post_signed(session, f"{child.url}/slack/events", body, secret=SIGNING_SECRET)
    return status


def _problems(child: Child) -> list[str]:
    """Log lines no graceful stop may produce."""
    return [
        line
        for line, entry in zip(child.lines, child.logged(), strict=True)
        if entry.get("level") in {"error", "critical", "raw"} or "not open" in line or "Traceback" in line
    ]


def _half_written(database: Path) -> list[str]:
    """Requests approved without a grant: what the stop left half-done."""
    with sqlite3.connect(database) as db:
        rows = db.execute(
            "SELECT r.id FROM requests r LEFT JOIN grants g ON g.request_id = r.id "
            "WHERE r.status = 'approved' AND g.id IS NULL"
        ).fetchall()
    return [row[0] for row in rows]


async def test_serve_logs_one_listening_line_with_version_platforms_and_storage_without_credentials(
    tmp_path: Path, pd: PagerDutySimulator, slack: SlackSimulator
) -> None:
    async with postgres_schema_url() as url:
        with_password = url.replace("postgresql://postgres@", "postgresql://postgres:hunter2@", 1)
        assert "hunter2" in with_password
        env = {**_platforms(pd, slack), "ACKGATE_DATABASE_URL": with_password}
        async with serve(tmp_path, **env) as child:
            assert child.process.returncode is None, child.lines
            async with aiohttp.ClientSession() as session, session.get(f"{child.url}/livez") as r:
                assert r.status == 200
            assert await stopped(child, within=10) == 0
    listening = [line for line in child.lines if "listening on" in line]
    assert len(listening) == 1, child.lines
    msg = str(json.loads(listening[0])["msg"])
    assert msg.startswith(f"Ackgate {version()} listening on {child.url}")
    assert "platforms: slack" in msg
    assert "storage: postgresql://127.0.0.1:5432/test" in msg
    assert not any("hunter2" in line or "search_path" in line for line in child.lines)
    assert not any("will be unused" in line for line in child.lines)  # bolt's spurious token warning
    assert _problems(child) == []


async def test_a_port_in_use_is_one_line_naming_ackgate_port_and_exit_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with serve(tmp_path, ACKGATE_PORT=str(port)) as child:
            code = await asyncio.wait_for(child.process.wait(), timeout=20)
    assert code == 2
    assert len(child.lines) == 1, child.lines
    assert child.lines[0] == (
        f"ackgate: Port {port} on 127.0.0.1 is already in use (ACKGATE_PORT={port}): stop what is listening "
        "there, or set ACKGATE_PORT to a free port."
    )


async def test_sigterm_under_load_answers_every_acknowledged_request_and_closes_the_store_last(
    tmp_path: Path, pd: PagerDutySimulator, slack: SlackSimulator
) -> None:
    """The backlog is in bolt's listeners (they run after the ack), each waiting on a slow PagerDuty."""
    users = _on_call_people(pd, slack, 30)
    pd.slow_next(None, seconds=0.5)
    env = {**_platforms(pd, slack), "ACKGATE_DRAIN_SECONDS": "20"}
    async with serve(tmp_path, **env) as child, aiohttp.ClientSession() as session:
        statuses = await asyncio.gather(*(_request_access(session, child, slack, u) for u in users))
        assert statuses == [200] * len(users)  # every request acknowledged ...
        assert len([t for t in slack.responses if t.startswith("t-")]) < len(users)  # ... and work still under way
        code = await stopped(child, within=25)

    assert code == 0
    unanswered = [u for u in users if not slack.responses.get(f"t-{u}")]
    assert unanswered == [], child.lines[-8:]
    answers = [str(slack.responses[f"t-{u}"][-1]) for u in users]
    assert all("Access granted: prod-db" in a for a in answers), answers[:3]
    assert _half_written(tmp_path / "ackgate.db") == []
    assert _problems(child) == []
    drained = [
        m for line in child.lines if (m := re.search(r"finished (\d+) background tasks at stop; 0 did not", line))
    ]
    assert len(drained) == 1 and int(drained[0].group(1)) >= len(users), child.lines


async def test_work_still_running_at_the_drain_deadline_is_cancelled_and_the_process_exits_in_time(
    tmp_path: Path, pd: PagerDutySimulator, slack: SlackSimulator
) -> None:
    users = _on_call_people(pd, slack, 5)
    pd.slow_next(None, seconds=30)
    env = {
        **_platforms(pd, slack),
        "ACKGATE_DRAIN_SECONDS": "1",
        "PAGERDUTY_TIMEOUT_SECONDS": "20",
    }
    async with serve(tmp_path, **env) as child, aiohttp.ClientSession() as session:
        assert await asyncio.gather(*(_request_access(session, child, slack, u) for u in users)) == [200] * 5
        started = time.monotonic()
        code = await stopped(child, within=15)
        took = time.monotonic() - started

    assert code == 0
    assert took < 8, took  # 1 s of drain, at most 1 s for cancelled work to unwind, then exit
    assert _half_written(tmp_path / "ackgate.db") == []
    assert _problems(child) == []
    assert any("did not finish in time" in line and '"level": "warning"' in line for line in child.lines)


async def test_two_workers_share_the_port_each_with_its_own_instance_and_stop_cleanly_on_sigterm(
    tmp_path: Path, pd: PagerDutySimulator, slack: SlackSimulator
) -> None:
    users = _on_call_people(pd, slack, 24)
    env = {
        **_platforms(pd, slack),
        "ACKGATE_DRAIN_SECONDS": "10",
        "ACKGATE_INSTANCE_ID": "box",
        "PAGERDUTY_REQUESTS_PER_MINUTE": "900",
    }
    async with serve(tmp_path, "--workers", "2", listening=2, **env) as child:
        # a new connection for each request, so the kernel spreads them over both workers
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
            statuses = await asyncio.gather(*(_request_access(session, child, slack, u) for u in users))
            assert statuses == [200] * len(users)
            await asyncio.wait_for(
                slack.wait_for(lambda: all(slack.responses.get(f"t-{u}") for u in users)), timeout=30
            )
        code = await stopped(child, within=40)

    assert code == 0, child.lines[-8:]
    listening = [json.loads(line) for line in child.lines if "listening on" in line]
    assert sorted(line["instance"] for line in listening) == ["box:w0", "box:w1"]
    # PagerDuty's budget is per API key: the workers share it instead of each spending all of it
    assert [line["pagerduty_requests_per_minute"] for line in listening] == [450, 450]
    assert sum(line.endswith('"stopped"}') or '"msg": "stopped"' in line for line in child.lines) == 2, child.lines
    answers = [str(slack.responses[f"t-{u}"][-1]) for u in users]
    assert all("Access granted: prod-db" in a for a in answers), answers[:3]
    with sqlite3.connect(tmp_path / "ackgate.db") as db:
        claimants = {row[0] for row in db.execute("SELECT DISTINCT claimed_by FROM slack_commands")}
    assert claimants == {"box:w0", "box:w1"}  # both served, each under its own instance id
    assert _half_written(tmp_path / "ackgate.db") == []
    assert _problems(child) == []


async def test_workers_refuse_an_in_memory_database_in_one_line(tmp_path: Path) -> None:
    async with serve(tmp_path, "--workers", "2", ACKGATE_DATABASE_URL="sqlite:///:memory:") as child:
        code = await asyncio.wait_for(child.process.wait(), timeout=20)
    assert code == 2
    assert child.lines == [
        "ackgate: serve --workers needs a database the workers share: set ACKGATE_DATABASE_URL to a SQLite file "
        "or PostgreSQL, not sqlite:///:memory:."
    ]
