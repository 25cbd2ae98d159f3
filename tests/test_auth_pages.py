"""The verification page over real HTTP on loopback: what it shows, its headers, CSRF and origin
checks, and that a replayed, expired or tampered link gets a clear page and changes nothing."""

from __future__ import annotations

import html
import logging
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import unquote

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from bot.core import messages
from bot.core.auth import AuthPage, AuthService
from bot.core.domain import AuthStatus, AuthTransaction
from handlers.web import SECURITY_HEADERS, CsrfTokens, mount_auth_pages
from tests.fakes.auth_world import ALICE, PUBLIC_URL, AuthWorld, build

CSRF_SECRET = SecretStr("csrf-secret-for-tests-0123456789")
CSRF = re.compile(r'name="csrf" value="([^"]+)"')
SCRIPT = "<script>alert('x')</script> & \"quotes\""


@dataclass
class Site:
    world: AuthWorld
    client: TestClient[web.Request, web.Application]
    tx: AuthTransaction
    token: str

    @property
    def path(self) -> str:
        return f"/auth/{self.token}"

    async def get(self, path: str | None = None) -> tuple[int, str, dict[str, str]]:
        async with self.client.get(path or self.path) as resp:
            return resp.status, await resp.text(), dict(resp.headers)

    async def csrf(self) -> str:
        status, text, _ = await self.get()
        assert status == 200, text
        match = CSRF.search(text)
        assert match is not None, text
        return match.group(1)

    async def post(self, data: dict[str, str], *, path: str | None = None, **headers: str) -> tuple[int, str]:
        async with self.client.post(path or self.path, data=data, headers=headers) as resp:
            return resp.status, await resp.text()

    async def status(self) -> AuthStatus:
        tx = await self.world.store.transactions.get(self.tx.id)
        assert tx is not None
        return tx.status


async def serve(world: AuthWorld, service: AuthService | None = None) -> TestClient[web.Request, web.Application]:
    app = web.Application()
    mount_auth_pages(app, service=service or world.service, csrf_secret=CSRF_SECRET, public_url=PUBLIC_URL)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    return client


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    async for world in build():
        await world.ask(message=SCRIPT)
        client = await serve(world)
        try:
            yield Site(world, client, await world.only_transaction(), world.token())
        finally:
            await client.close()


async def test_get_shows_who_asked_the_escaped_message_and_a_post_form(site: Site) -> None:
    status, text, _ = await site.get()
    assert status == 200
    assert "alice@example.com" in text and "bob@example.com" in text
    assert "<script>" not in text
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &quot;quotes&quot;" in text
    assert '<form method="post"' in text
    assert 'name="decision" value="verify"' in text and 'name="decision" value="deny"' in text
    assert CSRF.search(text)
    assert await site.status() is AuthStatus.PENDING  # looking changes nothing


async def test_every_page_has_the_strict_headers_and_loads_nothing_from_elsewhere(site: Site) -> None:
    for path in (site.path, "/auth/not-a-token"):
        _, text, headers = await site.get(path)
        for name, value in SECURITY_HEADERS.items():
            assert headers[name] == value
        assert "default-src 'none'; style-src 'unsafe-inline'" in headers["Content-Security-Policy"]
        assert headers["Content-Type"] == "text/html; charset=utf-8"
        assert not re.search(r"(src|href)=", text)


async def test_each_render_gets_a_fresh_csrf_token(site: Site) -> None:
    assert await site.csrf() != await site.csrf()


async def test_post_without_csrf_is_403_and_changes_nothing(site: Site) -> None:
    status, text = await site.post({"decision": "verify"})
    assert status == 403
    assert "could not be verified" in text
    assert await site.status() is AuthStatus.PENDING


async def test_post_with_a_forged_csrf_is_403_and_changes_nothing(site: Site) -> None:
    real = await site.csrf()
    nonce, _, mac = real.partition(".")
    for forged in (f"{nonce}.{'0' * len(mac)}", f"other.{mac}", "garbage", ""):
        status, _ = await site.post({"decision": "verify", "csrf": forged})
        assert status == 403, forged
    assert await site.status() is AuthStatus.PENDING


async def test_a_csrf_token_from_another_link_does_not_work_here() -> None:
    async for world in build():
        await world.ask(message="first")
        first_token = world.token()
        await world.ask(message="second")
        second_token = world.token()
        client = await serve(world)
        try:
            async with client.get(f"/auth/{first_token}") as resp:
                match = CSRF.search(await resp.text())
            assert match is not None
            async with client.post(
                f"/auth/{second_token}", data={"decision": "verify", "csrf": match.group(1)}
            ) as resp:
                assert resp.status == 403
            assert (await world.service.page(second_token)).status is AuthStatus.PENDING
        finally:
            await client.close()


async def test_post_from_another_origin_is_403_even_with_a_valid_csrf_token(site: Site) -> None:
    status, _ = await site.post({"decision": "verify", "csrf": await site.csrf()}, Origin="https://evil.example")
    assert status == 403
    assert await site.status() is AuthStatus.PENDING


async def test_verify_updates_the_requester_message_in_place_and_a_replay_gets_the_used_page(site: Site) -> None:
    site.world.clock.advance(timedelta(minutes=2))
    form = {"decision": "verify", "csrf": await site.csrf()}

    status, text = await site.post(form, Origin=PUBLIC_URL)

    assert status == 200 and "Verified." in text
    assert await site.status() is AuthStatus.VERIFIED
    (requester,) = await site.world.requester_cards(site.tx.id)
    assert requester.title == "Identity verified by bob@example.com at 12:02 UTC, 23 Nov"
    assert len(site.world.chat.inbox(ALICE.email)) == 1

    status, text = await site.post(form, Origin="null")  # the same form again
    assert status == 410 and "already been used" in text
    assert await site.world.audit_kinds() == ["auth.requested", "auth.verified"]
    status, text, _ = await site.get()
    assert status == 410 and "already been used" in text and "<form" not in text


async def test_deny_is_recorded_and_shown(site: Site) -> None:
    status, text = await site.post({"decision": "deny", "csrf": await site.csrf()})
    assert status == 200 and "Denied." in text
    assert await site.status() is AuthStatus.DENIED
    (requester,) = await site.world.requester_cards(site.tx.id)
    assert requester.title.startswith("Authentication request denied by bob@example.com")


async def test_an_unknown_decision_is_400_and_changes_nothing(site: Site) -> None:
    status, text = await site.post({"decision": "maybe", "csrf": await site.csrf()})
    assert status == 400 and "Choose Verify or Deny" in text
    assert await site.status() is AuthStatus.PENDING


async def test_an_expired_link_gets_the_expired_page_and_cannot_be_answered(site: Site) -> None:
    csrf = await site.csrf()
    site.world.clock.advance(timedelta(minutes=10, seconds=1))
    status, text, _ = await site.get()
    assert status == 410 and "expired" in text and "<form" not in text
    status, text = await site.post({"decision": "verify", "csrf": csrf})
    assert status == 410 and "expired" in text
    assert await site.status() is AuthStatus.EXPIRED


@pytest.mark.parametrize("mangle", ["flip", "truncate", "symbols"])
async def test_a_tampered_token_gets_the_invalid_page_and_changes_nothing(site: Site, mangle: str) -> None:
    token = {
        "flip": site.token[:-1] + ("A" if site.token[-1] != "A" else "B"),
        "truncate": site.token[:20],
        "symbols": site.token[:-3] + "%3C%3E",
    }[mangle]
    status, text, _ = await site.get(f"/auth/{token}")
    assert status == 404 and "not valid" in text
    # even with a CSRF token valid for that path, nothing can be decided through it
    csrf = CsrfTokens(CSRF_SECRET).mint(unquote(token))
    status, text = await site.post({"decision": "verify", "csrf": csrf}, path=f"/auth/{token}")
    assert status == 404 and "not valid" in text
    assert await site.status() is AuthStatus.PENDING
    assert await site.world.audit_kinds() == ["auth.requested"]


class Broken(AuthService):
    async def page(self, token: str) -> AuthPage:
        raise RuntimeError("database on fire")

    async def decide(self, token: str, *, verify: bool) -> AuthPage:
        raise RuntimeError("database on fire")


async def test_a_failure_renders_a_generic_500_page_without_a_traceback(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    service = site.world.service
    broken = Broken(
        store=service.store,
        org=service.org,
        events=service.events,
        notifiers=service.notifiers,
        bus=service.bus,
        clock=service.clock,
        public_url=service.public_url,
        source=service.source,
        link_ttl=service.link_ttl,
    )
    client = await serve(site.world, broken)
    try:
        async with client.get(site.path) as resp:
            text = await resp.text()
            assert resp.status == 500
        assert "Something went wrong on Ackgate" in text
        assert "Traceback" not in text and "on fire" not in text
        async with client.post(site.path, data={"decision": "verify", "csrf": await site.csrf()}) as resp:
            assert resp.status == 500
            assert "on fire" not in await resp.text()
        assert await site.status() is AuthStatus.PENDING
    finally:
        await client.close()
    # one line each, naming the route's pattern and the exception type: no traceback, no token
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in errors] == [
        "unhandled RuntimeError on GET /auth/{token}",
        "unhandled RuntimeError on POST /auth/{token}",
    ]
    assert all(r.exc_info is None for r in errors)


async def test_without_a_provider_the_page_says_holding_the_link_is_the_proof(site: Site) -> None:
    _, text, _ = await site.get()
    assert html.escape(messages.AUTH_PAGE_POSSESSION, quote=True) in text
    assert "Sign in" not in text


_VALID_LOOKING = "decision=verify&csrf=MARKER-not-echoed"


async def _chunks(body: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(body), 1000):
        yield body[start : start + 1000]


@pytest.mark.parametrize(
    ("content_type", "body", "status"),
    [
        ("multipart/form-data", b"MARKER-not-echoed", 415),  # no boundary
        (
            "multipart/form-data; boundary=xyz",
            b'--xyz\r\nContent-Disposition: form-data; name="decision"\r\n\r\nverify\r\n--xy',  # a broken part
            415,
        ),
        ("text/plain", _VALID_LOOKING.encode(), 415),
        ("application/json", b'{"decision": "verify"}', 415),
        (";;;=== MARKER-not-echoed", _VALID_LOOKING.encode(), 415),
        ("application/x-www-form-urlencoded", b"csrf=\xff\xfeMARKER-not-echoed", 400),
        ("application/x-www-form-urlencoded", b"decision=verify&decision=deny&csrf=MARKER", 400),
        ("application/x-www-form-urlencoded", "&".join(f"f{i}=MARKER" for i in range(50)).encode(), 400),
        ("application/x-www-form-urlencoded", b"csrf=" + b"M" * 5000, 413),
        ("application/x-www-form-urlencoded; charset=utf-8", b"csrf=" + b"M" * 5000, 413),
    ],
    ids=[
        "multipart-no-boundary",
        "multipart-broken-part",
        "text-plain",
        "json",
        "garbage-content-type",
        "not-utf8",
        "a-field-twice",
        "too-many-fields",
        "oversized",
        "oversized-with-charset",
    ],
)
async def test_a_post_that_is_not_the_pages_form_gets_a_clear_4xx_page_at_once(
    site: Site, caplog: pytest.LogCaptureFixture, content_type: str, body: bytes, status: int
) -> None:
    caplog.set_level(logging.INFO)
    started = time.monotonic()
    async with site.client.post(site.path, data=body, headers={"Content-Type": content_type}) as resp:
        text = await resp.text()
        assert resp.status == status
        assert resp.headers["Content-Type"] == "text/html; charset=utf-8"
    assert time.monotonic() - started < 0.5
    assert "Ackgate could not read that form" in text
    assert "MARKER" not in text and "Traceback" not in text
    assert await site.status() is AuthStatus.PENDING
    ours = [r for r in caplog.records if r.name.startswith("ackgate")]
    assert len(ours) == 1 and ours[0].levelno == logging.INFO and site.token not in ours[0].getMessage()


async def test_an_oversized_chunked_body_is_cut_off_at_the_limit(site: Site) -> None:
    body = b"csrf=" + b"M" * 100_000
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    async with site.client.post(site.path, data=_chunks(body), headers=headers) as resp:
        assert resp.status == 413
    assert await site.status() is AuthStatus.PENDING


@pytest.mark.parametrize("path", ["/auth", "/auth/", "/auth/abc/def", "/auth/x/y/z/%3Cscript%3E"])
async def test_an_odd_path_under_auth_gets_the_invalid_link_page(site: Site, path: str) -> None:
    for method in ("GET", "POST"):
        async with site.client.request(method, path) as resp:
            text = await resp.text()
            assert resp.status == 404, (method, path)
        assert "This link is not valid" in text and "<script>" not in text
