"""The bench's child processes, one role each: ``python bench/procs.py ROLE JSON``.

- ``fakes``: the PagerDuty and Slack simulators, seeded with the bench's users (each with an
  acknowledged incident), PagerDuty optionally slowed (``pd_delay``) or rate-limited (``pd_per_minute``).
- ``bare``: the floor anchor, a bare aiohttp server checking Slack's signature by hand and answering 200.
- ``bolt``: the Bolt anchor, an ``AsyncApp`` whose ``/access`` listener only acks, mounted on aiohttp
  with bolt's two adapter functions, as ``handlers/slack/app.py`` ``mount_slack`` does.

Each prints one JSON line (its addresses) once listening, serves until SIGTERM, then prints one
JSON line of what it counted. Everything listens on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import signal
import sys
import time
from typing import Any

from aiohttp import web

HOST = "127.0.0.1"
SIGNING_SECRET = "bench-signing-secret"  # noqa: S105 - the bench's own
PD_TOKEN = "bench-pagerduty-token"  # noqa: S105
SLACK_TOKEN = "xoxb-bench-token"  # noqa: S105
BOT_EMAIL = "ackgate-bot@example.com"


def user_id(i: int) -> str:
    return f"U0B{i:06d}"


def email(i: int) -> str:
    return f"bench{i:06d}@example.com"


def interim(message: dict[str, Any]) -> bool:
    """A note Ackgate posts while the answer is still coming ("Queued: PagerDuty is busy…", after 3 s
    in the PagerDuty budget's queue): not an answer, so it must not be counted as one."""
    return "queued:" in json.dumps(message).lower()


def classify(message: dict[str, Any]) -> str:
    text = json.dumps(message).lower()
    if "access granted" in text:
        return "granted"
    if any(word in text for word in ("budget", "http 429", "rate limit", "too many")):
        return "rate_limited"
    if "did not answer" in text or "timed out" in text:
        return "timed_out"
    return "other"


def _print(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def _until_stopped() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def _serve(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0, backlog=4096)
    await site.start()
    return runner, runner.addresses[0][1]


def _signed(request_headers: Any, body: bytes) -> bool:
    ts = request_headers.get("X-Slack-Request-Timestamp", "")
    given = request_headers.get("X-Slack-Signature", "")
    if not ts.isdigit() or abs(time.time() - int(ts)) > 300:
        return False
    base = b"v0:" + ts.encode() + b":" + body
    expected = "v0=" + hmac.new(SIGNING_SECRET.encode(), base, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, given)


async def bare(_: dict[str, Any]) -> None:
    counts = {"ok": 0, "refused": 0}

    async def events(request: web.Request) -> web.Response:
        body = await request.read()
        if not _signed(request.headers, body):
            counts["refused"] += 1
            return web.Response(status=401)
        counts["ok"] += 1
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/slack/events", events)
    runner, port = await _serve(app)
    _print({"url": f"http://{HOST}:{port}"})
    await _until_stopped()
    await runner.cleanup()
    _print(counts)


async def bolt(spec: dict[str, Any]) -> None:
    from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
    from slack_bolt.async_app import AsyncAck, AsyncApp
    from slack_sdk.web.async_client import AsyncWebClient

    client = AsyncWebClient(token=SLACK_TOKEN, base_url=spec["slack_api_url"])
    bolt_app = AsyncApp(client=client, signing_secret=SIGNING_SECRET, process_before_response=False)
    counts = {"acked": 0}

    async def on_access(ack: AsyncAck) -> None:
        counts["acked"] += 1
        await ack()

    bolt_app.command("/access")(on_access)

    async def events(request: web.Request) -> web.Response:
        bolt_request = await to_bolt_request(request)
        bolt_response = await bolt_app.async_dispatch(bolt_request)
        return await to_aiohttp_response(bolt_response)

    app = web.Application()
    app.router.add_post("/slack/events", events)
    runner, port = await _serve(app)
    _print({"url": f"http://{HOST}:{port}"})
    await _until_stopped()
    await runner.cleanup()
    _print(counts)


async def fakes(spec: dict[str, Any]) -> None:
    from bot.runtime.simulators.pagerduty import PagerDutySimulator
    from bot.runtime.simulators.slack import SlackSimulator

    users = int(spec.get("users", 100))
    pd = PagerDutySimulator(token=PD_TOKEN, rate_limit_per_minute=spec.get("pd_per_minute"))
    slack = SlackSimulator(token=SLACK_TOKEN)
    await pd.start()
    await slack.start()
    pd.add_user(BOT_EMAIL, "Ackgate")
    incidents = []
    for i in range(users):
        slack.add_user(user_id(i), email(i), f"Bench {i}")
        me = pd.add_user(email(i), f"Bench {i}")
        incident = pd.add_incident(f"Bench incident {i}", assigned_to=[me], acknowledged_by=[me])
        incidents.append([incident.id, incident.number, incident.title])
    if spec.get("pd_delay"):
        pd.slow_next(None, seconds=float(spec["pd_delay"]))
    shown = incidents[: int(spec.get("show_incidents", 0))]
    _print({"pd_url": pd.base_url, "slack_api_url": slack.base_url, "slack_root": slack.root_url, "incidents": shown})
    await _until_stopped()
    statuses: dict[str, Any] = {"pd_requests": len(pd.requests)}
    statuses["pd_rate_limited"] = pd.rate_limited
    statuses["slack_calls"] = len(slack.calls)
    statuses["slack_responses"] = sum(len(v) for v in slack.responses.values())
    kinds: dict[str, int] = {}
    for posted in slack.responses.values():
        answers = [a for a in posted if not interim(a)]
        kind = classify(answers[0]) if answers else "other"
        kinds[kind] = kinds.get(kind, 0) + 1
    statuses["answers"] = kinds
    await slack.stop()
    await pd.stop()
    _print(statuses)


ROLES = {"bare": bare, "bolt": bolt, "fakes": fakes}

if __name__ == "__main__":
    role, raw = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "{}"
    asyncio.run(ROLES[role](json.loads(raw)))
