"""How the PagerDuty client sends: the requests as httpx would build them, its connections over
loopback, and no import machinery on the way (what keeps a call's CPU low without changing it)."""

from __future__ import annotations

import asyncio
import importlib.abc
import sys
from collections.abc import Sequence
from types import ModuleType

import httpx
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import SecretStr

from bot.adapters.pagerduty import ACCEPT, MAX_CONNECTIONS, PagerDutyClient
from bot.runtime.simulators.pagerduty import PagerDutySimulator
from tests.fakes.pagerduty_fixtures import FROM_EMAIL, TOKEN

BASE = "https://api.pagerduty.test"


async def test_requests_are_sent_as_httpx_builds_them_with_the_cookies_pagerduty_set() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.method == "POST":
            return httpx.Response(201, json={"note": {"id": "N1", "content": "hi"}})
        empty = {"users": [], "limit": 100, "offset": 0, "more": False}
        return httpx.Response(200, json=empty, headers={"Set-Cookie": "lb=one; Path=/"})

    client = PagerDutyClient(
        SecretStr(TOKEN), base_url=BASE, from_email=FROM_EMAIL, transport=httpx.MockTransport(handler)
    )
    email = "zoë+on call/ops@example.com"  # non-ASCII, a plus, a space and a slash in one query value
    assert await client.user_by_email(email) is None
    await client.add_note("P1/../users", "hi")
    await client.aclose()

    reference = httpx.AsyncClient(base_url=BASE, headers={"Accept": ACCEPT, "Authorization": f"Token token={TOKEN}"})
    wanted = [
        reference.build_request("GET", "/users", params=(("query", email), ("limit", 100), ("offset", 0))),
        reference.build_request(
            "POST",
            "/incidents/P1%2F..%2Fusers/notes",
            json={"note": {"content": "hi"}},
            headers={"From": FROM_EMAIL},
            cookies={"lb": "one"},  # what the first answer set is sent back, as one httpx client would
        ),
    ]
    assert [(r.method, r.url, r.headers.multi_items(), r.content) for r in seen] == [
        (r.method, r.url, r.headers.multi_items(), r.content) for r in wanted
    ]
    for request in seen:  # each phase bounded by the time the call has left
        timeouts = request.extensions["timeout"]
        assert set(timeouts) == {"connect", "read", "write", "pool"}
        assert all(0 < t <= 4.0 for t in timeouts.values())
    await reference.aclose()


async def test_max_connections_calls_are_in_flight_at_once_and_calls_in_turn_keep_one_connection() -> None:
    """The client's connections add up to MAX_CONNECTIONS however they are pooled, a light load
    reuses one warm keep-alive connection instead of opening new ones, and a cookie set on any
    connection is sent on all of them, as by one httpx client."""
    peers: list[object] = []
    cookies: list[str] = []
    everyone = asyncio.Event()

    async def users(request: web.Request) -> web.Response:
        assert request.transport is not None
        peers.append(request.transport.get_extra_info("peername"))
        cookies.append(request.headers.get("Cookie", ""))
        n = len(peers)
        if n == MAX_CONNECTIONS:
            everyone.set()
        await everyone.wait()  # answers none until all of them have arrived
        answer = web.json_response({"users": [], "limit": 1, "offset": 0, "more": False})
        answer.set_cookie(f"c{n}", "1")
        return answer

    app = web.Application()
    app.router.add_get("/users", users)
    async with TestServer(app, host="127.0.0.1") as server:
        client = PagerDutyClient(
            SecretStr(TOKEN), base_url=str(server.make_url("/")), deadline=20.0, timeout=20.0, max_attempts=1
        )
        await asyncio.gather(*(client.ping() for _ in range(MAX_CONNECTIONS)))
        assert len(set(peers)) == MAX_CONNECTIONS
        for _ in range(5):
            await client.ping()
        await client.aclose()
    later = peers[MAX_CONNECTIONS:]
    assert len(set(later)) == 1
    assert later[0] in peers[:MAX_CONNECTIONS]  # a connection kept alive, not a new one
    assert len(cookies[-1].split("; ")) == MAX_CONNECTIONS + 4  # every answer's cookie, but the last one's


class _Recorder(importlib.abc.MetaPathFinder):
    """Notes every module looked for that is not already imported; finds none itself."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        self.asked.append(fullname)
        return None


async def test_a_warm_call_looks_for_no_module() -> None:
    """httpcore asks for sniffio several times a request: were it missing, each time would be a
    failed import searching all of sys.path (most of a request's CPU on a short loopback call)."""
    async with PagerDutySimulator(token=TOKEN) as sim:
        sim.add_user("alice@example.com", "Alice")
        client = PagerDutyClient(SecretStr(TOKEN), base_url=sim.base_url)
        await client.ping()  # whatever a first call imports, once
        recorder = _Recorder()
        sys.meta_path.insert(0, recorder)
        try:
            await client.ping()
            assert await client.user_by_email("alice@example.com") is not None
        finally:
            sys.meta_path.remove(recorder)
        await client.aclose()
    assert recorder.asked == []
