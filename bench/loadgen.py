"""The bench's load generator, in its own process: ``python bench/loadgen.py JSON`` prints one JSON line.

It sends signed ``/access`` slash commands (bodies from ``bot.runtime.simulators.slack_requests``) to
``url`` on loopback, in one of three modes:

- ``open``: open loop. Request *i* is due at ``start + i / rate`` whatever the answers do, and its
  latency is measured from that due time, so a server that falls behind shows its queue instead of
  slowing the generator down. Bounded by ``count`` and ``seconds``; the requests of the first
  ``warmup`` seconds (new connections, first imports) are sent at the same rate but not counted.
- ``closed``: ``connections`` workers, each sending its next request when the last one is done, for
  ``seconds``. With ``flow`` true, "done" is when Ackgate's answer reaches the ``response_url``
  (served by this process), i.e. a whole flow, counted only if it says access was granted (the
  other answers are counted by kind); otherwise when the HTTP answer (the ack) arrives.
- ``burst``: ``users`` distinct users send once each, spread over ``spread`` seconds; every
  ``response_url`` answer is classified (granted, rate-limited, timed out, other) with its time.

Users are the fakes' ``U0B000000``..; request *i* comes from user ``i % users``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from typing import Any

import aiohttp
from aiohttp import web
from procs import HOST, SIGNING_SECRET, classify, interim, user_id  # this directory, on sys.path when run as a script
from report import quantile

from bot.runtime.simulators import slack_requests

TIMEOUT = aiohttp.ClientTimeout(total=30)


def summary(latencies: list[float]) -> dict[str, Any]:
    return {
        "n": len(latencies),
        "p50": quantile(latencies, 0.50),
        "p99": quantile(latencies, 0.99),
        "max": max(latencies) if latencies else None,
        "past_3s": sum(1 for x in latencies if x > 3.0),
    }


class Receiver:
    """This process's ``response_url`` endpoint: ``/r/<token>``; remembers when each answer came."""

    def __init__(self) -> None:
        self.waiting: dict[str, asyncio.Future[tuple[float, dict[str, Any]]]] = {}
        self.arrived: dict[str, tuple[float, dict[str, Any]]] = {}
        self.url = ""
        self.expected = 0  # how many answers make it complete
        self.notes = 0  # interim notes ("Queued: …") received, not counted as answers
        self.complete = asyncio.Event()
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/r/{token}", self._post)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, HOST, 0, backlog=4096).start()
        self.url = f"http://{HOST}:{self._runner.addresses[0][1]}/r/"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _post(self, request: web.Request) -> web.Response:
        token = request.match_info["token"]
        try:
            message = await request.json()
        except ValueError:
            message = {}
        got = (time.monotonic(), message if isinstance(message, dict) else {})
        if interim(got[1]):  # the answer itself follows on the same response_url
            self.notes += 1
            return web.Response(text="ok")
        self.arrived.setdefault(token, got)  # the first answer counts
        if self.expected and len(self.arrived) >= self.expected:
            self.complete.set()
        waiter = self.waiting.pop(token, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(got)
        return web.Response(text="ok")

    def expect(self, token: str) -> asyncio.Future[tuple[float, dict[str, Any]]]:
        future: asyncio.Future[tuple[float, dict[str, Any]]] = asyncio.get_running_loop().create_future()
        self.waiting[token] = future
        return future


def _request(i: int, users: int, response_url: str, ts: int) -> tuple[bytes, dict[str, str]]:
    body = slack_requests.slash_command_body(
        text="prod-db 1h bench", user_id=user_id(i % users), response_url=response_url
    )
    return body.encode(), slack_requests.signed_headers(body, secret=SIGNING_SECRET, timestamp=ts)


async def _send(session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]) -> int:
    async with session.post(url, data=body, headers=headers) as r:
        await r.read()
        return r.status


async def open_loop(spec: dict[str, Any]) -> dict[str, Any]:
    url, rate, users = spec["url"], float(spec["rate"]), int(spec["users"])
    count = min(int(spec["count"]), int(rate * float(spec["seconds"])) or 1)
    warm = int(rate * float(spec.get("warmup", 0.0)))
    ts = int(time.time())
    prepared = [_request(i, users, f"{spec['response_base']}o{i}", ts) for i in range(warm + count)]
    latencies: list[float] = []
    failures: dict[str, int] = {}
    lags: list[float] = []
    connector = aiohttp.TCPConnector(limit=int(spec.get("max_connections", 2000)))
    async with aiohttp.ClientSession(connector=connector, timeout=TIMEOUT) as session:
        loop = asyncio.get_running_loop()

        async def one(due: float, body: bytes, headers: dict[str, str], counted: bool) -> None:
            try:
                status = await _send(session, url, body, headers)
            except (aiohttp.ClientError, TimeoutError) as exc:
                failures[type(exc).__name__] = failures.get(type(exc).__name__, 0) + 1
                return
            if not counted:
                return
            if status != 200:
                failures[str(status)] = failures.get(str(status), 0) + 1
                return
            latencies.append(loop.time() - due)

        start = loop.time() + 0.1
        tasks = []
        for i, (body, headers) in enumerate(prepared):
            due = start + i / rate
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            lags.append(max(loop.time() - due, 0.0))
            tasks.append(asyncio.create_task(one(due, body, headers, i >= warm)))
        await asyncio.gather(*tasks)
    return {
        "mode": "open",
        "rate": rate,
        "sent": count,
        **summary(latencies),
        "failures": failures,
        "send_lag_p99": quantile(lags, 0.99),
    }


async def closed_loop(spec: dict[str, Any]) -> dict[str, Any]:
    url, users, flow = spec["url"], int(spec["users"]), bool(spec.get("flow"))
    connections, seconds = int(spec["connections"]), float(spec["seconds"])
    receiver = Receiver()
    if flow:
        await receiver.start()
    counter = [0]
    latencies: list[float] = []
    failures: dict[str, int] = {}
    outcomes: dict[str, int] = {}
    ts = int(time.time())
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector, timeout=TIMEOUT) as session:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds

        async def worker() -> None:
            while loop.time() < deadline:
                i = counter[0]
                counter[0] += 1
                token = f"c{i}"
                base = receiver.url if flow else spec["response_base"]
                body, headers = _request(i, users, base + token, ts)
                began = loop.time()
                answer = receiver.expect(token) if flow else None
                try:
                    status = await _send(session, url, body, headers)
                    if status != 200:
                        failures[str(status)] = failures.get(str(status), 0) + 1
                        continue
                    if answer is not None:
                        _, message = await asyncio.wait_for(answer, timeout=30)
                        kind = classify(message)
                        outcomes[kind] = outcomes.get(kind, 0) + 1
                        if kind != "granted":
                            continue
                except (aiohttp.ClientError, TimeoutError) as exc:
                    failures[type(exc).__name__] = failures.get(type(exc).__name__, 0) + 1
                    continue
                finally:
                    receiver.waiting.pop(token, None)
                if loop.time() <= deadline:
                    latencies.append(loop.time() - began)

        began = loop.time()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = min(loop.time(), deadline) - began
    await receiver.stop()
    return {
        "mode": "closed",
        "flow": flow,
        "connections": connections,
        "per_second": len(latencies) / elapsed if elapsed > 0 else 0.0,
        **summary(latencies),
        "failures": failures,
        "outcomes": outcomes,
        "queued_notes": receiver.notes,
    }


async def burst(spec: dict[str, Any]) -> dict[str, Any]:
    url, users, spread, wait = spec["url"], int(spec["users"]), float(spec["spread"]), float(spec["wait"])
    receiver = Receiver()
    receiver.expected = users
    await receiver.start()
    ts = int(time.time())
    acks: dict[str, int] = {}
    sent_at: dict[str, float] = {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=2000), timeout=TIMEOUT) as session:
        loop = asyncio.get_running_loop()

        async def one(i: int) -> None:
            token = f"b{i}"
            body, headers = _request(i, users, receiver.url + token, ts)
            sent_at[token] = time.monotonic()
            try:
                status = str(await _send(session, url, body, headers))
            except (aiohttp.ClientError, TimeoutError) as exc:
                status = type(exc).__name__
            acks[status] = acks.get(status, 0) + 1

        start = loop.time()
        tasks = []
        for i in range(users):
            delay = start + i * spread / users - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(receiver.complete.wait(), timeout=wait)
    await receiver.stop()
    outcomes = {"granted": 0, "granted_60s": 0, "rate_limited": 0, "timed_out": 0, "other": 0}
    for token, (at, message) in receiver.arrived.items():
        kind = classify(message)
        outcomes[kind] += 1
        if kind == "granted" and at - sent_at.get(token, at) <= 60.0:
            outcomes["granted_60s"] += 1
    answered = len(receiver.arrived)
    return {
        "mode": "burst",
        "users": users,
        "acks": acks,
        "answered": answered,
        "queued_notes": receiver.notes,
        **outcomes,
    }


MODES = {"open": open_loop, "closed": closed_loop, "burst": burst}

if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    result = asyncio.run(MODES[spec["mode"]](spec))
    sys.stdout.write(json.dumps(result) + "\n")
