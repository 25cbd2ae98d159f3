"""How the PagerDuty client sends: the requests as httpx would build them, its connections over
loopback, and no import machinery on the way (what keeps a call's CPU low without changing it)."""

from __future__ import annotations

import asyncio
import importlib.abc
import sys
from collections.abc import Sequence
from types import ModuleType

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import SecretStr

from bot.adapters.pagerduty import ACCEPT, MAX_CONNECTIONS, PagerDutyClient
from bot.core.errors import PagerDutyNotFound, PagerDutyUnavailable
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


async def test_max_connections_calls_are_in_flight_at_once_and_calls_in_turn_open_no_new_connection() -> None:
    """The client's connections add up to MAX_CONNECTIONS, calls after a burst reuse its warm
    keep-alive connections instead of opening new ones, and a cookie set on any connection is sent
    on all of them, as by one httpx client."""
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
    assert len(later) == 5
    assert set(later) <= set(peers[:MAX_CONNECTIONS])  # connections kept alive, not new ones
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


async def test_an_incident_id_from_chat_reaches_only_its_own_path_on_the_wire() -> None:
    """Over the real transport (aiohttp's URL parsing, not only httpx's): a quoted id stays one
    segment, and an id that is a dot segment or empty, which no quoting keeps in place, is never
    sent at all."""
    paths: list[str] = []

    async def anything(request: web.Request) -> web.Response:
        paths.append(request.raw_path)
        return web.json_response({"error": {"message": "Not Found", "code": 2100}}, status=404)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", anything)
    async with TestServer(app, host="127.0.0.1") as server:
        client = PagerDutyClient(
            SecretStr(TOKEN), base_url=str(server.make_url("/")), from_email=FROM_EMAIL, max_attempts=1
        )
        for hostile in ("../users?x=1", "..", ".", "", "%2E%2E", "a/b#c"):
            with pytest.raises(PagerDutyNotFound):
                await client.incident(hostile)
            with pytest.raises(PagerDutyNotFound):
                await client.add_note(hostile, "hi")
        await client.aclose()
    assert paths == [
        "/incidents/..%2Fusers%3Fx=1",  # "=" needs no quoting in a path; "/" and "?" stay quoted
        "/incidents/..%2Fusers%3Fx=1/notes",
        "/incidents/%252E%252E",
        "/incidents/%252E%252E/notes",
        "/incidents/a%2Fb%23c",
        "/incidents/a%2Fb%23c/notes",
    ]


async def test_a_dropped_post_is_not_repeated_and_a_refused_one_is() -> None:
    """Over the real transport, which calls every aiohttp connection error a connect timeout: a
    POST whose connection closed after it was written may have been applied, so it is not sent
    again (the note would appear twice), while GETs are retried; a connection refused means
    nothing was sent, so even a POST is tried again. Neither is called a timeout."""
    arrived: list[bytes] = []

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        arrived.append(await reader.readuntil(b"\r\n\r\n"))
        writer.close()  # no answer at all

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    attempts: list[str] = []
    client = PagerDutyClient(
        SecretStr(TOKEN),
        base_url=f"http://127.0.0.1:{port}",
        from_email=FROM_EMAIL,
        max_attempts=3,
        on_call=lambda method, template, status, seconds: attempts.append(method),
    )
    with pytest.raises(PagerDutyUnavailable, match="unreachable"):
        await client.add_note("PI1", "hello")
    assert [a.split(b" ", 1)[0] for a in arrived] == [b"POST"]
    with pytest.raises(PagerDutyUnavailable, match="unreachable"):
        await client.ping()
    methods = [a.split(b" ", 1)[0] for a in arrived]
    assert methods[0] == b"POST" and methods.count(b"POST") == 1
    assert methods.count(b"GET") >= 3  # our retries (aiohttp may retry a GET once more on its own)
    server.close()
    await server.wait_closed()

    attempts.clear()
    with pytest.raises(PagerDutyUnavailable, match="unreachable"):  # the port is closed now: refused
        await client.add_note("PI1", "hello")
    assert attempts == ["POST", "POST", "POST"]
    await client.aclose()
