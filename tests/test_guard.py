"""The last-resort middleware, through the real app from ``build_app``: whatever a handler raises,
the answer is short, plain and echoes nothing, and the log gets one line without a traceback."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from bot.core import messages
from bot.core.errors import StorageError
from bot.runtime.app import build_app
from bot.runtime.config import Settings
from tests.fakes.stage_fixtures import STAGE_POLICY

SECRETISH = "tok-0123456789-do-not-echo"


async def _raise_runtime(request: web.Request) -> web.Response:
    raise RuntimeError(f"database on fire near {SECRETISH}")


async def _raise_value(request: web.Request) -> web.Response:
    raise ValueError(f"bad byte in {SECRETISH}")


async def _json(request: web.Request) -> web.Response:
    await request.json()
    return web.Response(text="parsed")


async def _read(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(text="read")


async def _own_refusal(request: web.Request) -> web.Response:
    raise web.HTTPForbidden(text="A sentence of the handler's own.")


async def _redirect(request: web.Request) -> web.Response:
    raise web.HTTPSeeOther("/elsewhere")


def _app(tmp_path: Path) -> web.Application:
    policy = tmp_path / "policy.yaml"
    policy.write_text(STAGE_POLICY, encoding="utf-8")
    settings = Settings(
        policy_file=policy,
        database_url=f"sqlite:///{tmp_path / 'guard.db'}",
        pagerduty_api_token=SecretStr("guard-test-token"),
        pagerduty_api_url="http://127.0.0.1:9",  # never called
    )
    app = build_app(settings, run_scheduler=False)
    app.router.add_get("/boom/{token}", _raise_runtime)
    app.router.add_post("/value/{token}", _raise_value)
    app.router.add_post("/json", _json)
    app.router.add_post("/read", _read)
    app.router.add_get("/own", _own_refusal)
    app.router.add_get("/redirect", _redirect)
    return app


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    test_client = TestClient(TestServer(_app(tmp_path), host="127.0.0.1"))
    await test_client.start_server()
    try:
        yield test_client
    finally:
        await test_client.close()


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[int]:
    """The app served as ``ackgate serve`` serves it (no handler cancellation); yields the port."""
    runner = web.AppRunner(_app(tmp_path), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


def _lines(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= level]


async def test_an_unexpected_exception_is_a_plain_500_and_one_error_line_without_traceback(
    client: TestClient[web.Request, web.Application], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with client.get(f"/boom/{SECRETISH}", headers={"Accept": "text/html"}) as resp:
        text = await resp.text()
        assert resp.status == 500
        assert resp.content_type == "text/plain"
    assert text.strip() == messages.GUARD_ERROR
    assert "Traceback" not in text and "fire" not in text and SECRETISH not in text
    (line,) = _lines(caplog, logging.WARNING)
    assert line.name == "ackgate.guard" and line.levelno == logging.ERROR
    assert line.getMessage() == "unhandled RuntimeError on GET /boom/{token}"
    assert line.exc_info is None
    # (the test server's access log shows paths; ``ackgate serve`` runs without one)
    assert all(SECRETISH not in r.getMessage() for r in caplog.records if r.name != "aiohttp.access")


async def test_the_traceback_is_logged_only_at_debug(
    client: TestClient[web.Request, web.Application], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="ackgate.guard")
    async with client.get("/boom/x") as resp:
        assert resp.status == 500
    debug = [r for r in caplog.records if r.name == "ackgate.guard" and r.levelno == logging.DEBUG]
    assert len(debug) == 1 and debug[0].exc_info is not None


@pytest.mark.parametrize(
    ("path", "body"),
    [("/value/abc", b"anything"), ("/json", b'{"unclosed": '), ("/json", b"\xff\xfe not utf-8")],
)
async def test_a_parsing_error_is_a_plain_400_logged_at_info(
    client: TestClient[web.Request, web.Application], caplog: pytest.LogCaptureFixture, path: str, body: bytes
) -> None:
    caplog.set_level(logging.INFO)
    async with client.post(path, data=body, headers={"Content-Type": "application/json"}) as resp:
        text = await resp.text()
        assert resp.status == 400
    assert text.strip() == messages.GUARD_BAD_REQUEST
    assert SECRETISH not in text and "unclosed" not in text
    assert _lines(caplog, logging.WARNING) == []
    (line,) = [r for r in caplog.records if r.name == "ackgate.guard"]
    assert line.levelno == logging.INFO and "refused a malformed request on POST" in line.getMessage()


async def test_the_routers_404_and_405_are_plain_and_echo_nothing(
    client: TestClient[web.Request, web.Application],
) -> None:
    async with client.get("/%3Cscript%3Ealert(1)%3C/script%3E") as resp:
        text = await resp.text()
        assert resp.status == 404 and resp.content_type == "text/plain"
    assert text.strip() == messages.GUARD_NOT_FOUND and "script" not in text
    async with client.delete("/healthz") as resp:
        text = await resp.text()
        assert resp.status == 405
        assert "GET" in resp.headers["Allow"]
    assert text.strip() == messages.GUARD_METHOD_NOT_ALLOWED


async def test_a_body_over_the_limit_is_a_plain_413_without_sizes(
    client: TestClient[web.Request, web.Application],
) -> None:
    async with client.post("/read", data=io.BytesIO(b"x" * (1024 * 1024 + 1))) as resp:
        text = await resp.text()
        assert resp.status == 413
    assert text.strip() == messages.GUARD_TOO_LARGE
    assert "1048576" not in text


async def test_a_handlers_own_refusal_and_redirects_pass_through(
    client: TestClient[web.Request, web.Application],
) -> None:
    async with client.get("/own") as resp:
        assert resp.status == 403
        assert await resp.text() == "A sentence of the handler's own."
    async with client.get("/redirect", allow_redirects=False) as resp:
        assert resp.status == 303
        assert resp.headers["Location"] == "/elsewhere"


async def _raw(port: int, data: bytes, *, eof: bool = False) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        if eof:
            writer.write_eof()
        return await asyncio.wait_for(reader.read(), timeout=5)
    finally:
        writer.close()
        await writer.wait_closed()


async def test_a_body_aiohttp_cannot_frame_is_a_400_and_one_info_line(
    served: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    head = b"POST /read HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    answer = await _raw(served, head + b"5\r\nhello\r\nzz\r\n0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.0 400") or answer.startswith(b"HTTP/1.1 400")
    assert _lines(caplog, logging.WARNING) == []
    (line,) = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert line.levelno == logging.INFO and line.exc_info is None
    assert line.getMessage().startswith("refused malformed HTTP from a client: ")
    assert b"zz" not in answer.split(b"\r\n\r\n", 1)[0]  # (aiohttp's own body names the bad bytes)


async def test_a_client_that_goes_away_mid_body_leaves_no_error_in_the_log(
    served: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="ackgate.guard")
    head = b"POST /read HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    await _raw(served, head + b"10\r\nonly part", eof=True)
    for _ in range(50):  # until the handler has seen the body end early
        if any(r.name == "ackgate.guard" for r in caplog.records):
            break
        await asyncio.sleep(0.01)
    assert [r.getMessage() for r in caplog.records if r.name == "ackgate.guard"] == [
        "the client went away during POST /read"
    ]
    assert _lines(caplog, logging.WARNING) == []


async def test_a_close_that_fails_at_stop_does_not_skip_the_others(tmp_path: Path) -> None:
    """The composition root closes what it opened on one stack: the authentication service failing
    to close still leaves the HTTP clients and the store closed, and the failure is raised."""
    from bot.runtime.app import PARTS

    app = _app(tmp_path)
    parts = app[PARTS]

    async def broken_close() -> None:
        raise RuntimeError("auth close failed")

    parts.auth.close = broken_close  # type: ignore[method-assign]
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    assert await parts.store.grants.count_active() == 0  # open
    with pytest.raises(RuntimeError, match="auth close failed"):
        await runner.cleanup()
    with pytest.raises(StorageError, match="not open"):
        await parts.store.grants.count_active()
