"""Sign-in on the authentication pages, through the real app on loopback and the OpenID Connect
simulator, with a browser (a cookie jar, following redirects): only the target, signed in with a
verified email, can verify or deny; anyone else is told who they are and nothing changes; a forged,
expired, mis-addressed or replayed sign-in proves nothing."""

from __future__ import annotations

import html
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from pydantic import SecretStr
from yarl import URL

from bot.adapters.provisioners import NoopProvisioner
from bot.core.clock import FakeClock
from bot.core.domain import AuthStatus
from bot.core.errors import ConfigError
from bot.runtime.config import load_settings
from bot.runtime.simulators.oidc import OidcSimulator
from bot.runtime.simulators.stage import Person, Stage
from handlers.auth_session import IDENTITY_COOKIE, IDENTITY_SECONDS, SessionCookies, SignedIn
from tests.fakes.issue3_stage import POLICY, ask_bob
from tests.fakes.stage_fixtures import audit_kinds

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@dataclass
class Signin:
    stage: Stage
    sim: OidcSimulator
    alice: Person
    bob: Person
    link: str

    @property
    def token(self) -> str:
        return self.link.rsplit("/", 1)[1]


class Browser:
    """One person's browser: its own cookies, following redirects, posting forms from the page's origin."""

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self.session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))

    async def close(self) -> None:
        await self.session.close()

    async def open(self, url: str) -> tuple[int, str]:
        async with self.session.get(url) as r:
            return r.status, html.unescape(await r.text())

    async def choose(self, url: str, decision: str, page: str, **kw: Any) -> tuple[int, str]:
        """Press the ``decision`` button of ``page`` (the form of ``url``)."""
        csrf = CSRF.search(page)
        assert csrf is not None, page
        form = {"decision": decision, "csrf": csrf.group(1)}
        async with self.session.post(url, data=form, headers={"Origin": self.origin}, **kw) as r:
            return r.status, html.unescape(await r.text())


@pytest.fixture
async def oidc(tmp_path: Path) -> AsyncIterator[OidcSimulator]:
    clock = FakeClock()
    async with OidcSimulator(clock=clock) as sim:
        yield sim


@pytest.fixture
async def world(tmp_path: Path, oidc: OidcSimulator) -> AsyncIterator[Signin]:
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(POLICY, encoding="utf-8")
    stage = Stage(
        policy_file=policy_file,
        workdir=tmp_path,
        clock=oidc.clock,  # type: ignore[arg-type]
        provisioners={"noop": NoopProvisioner()},
        settings={
            "oidc_issuer": oidc.issuer,
            "oidc_client_id": oidc.client_id,
            "oidc_client_secret": SecretStr(oidc.client_secret),
        },
    )
    async with stage:
        alice, bob = stage.person("alice"), stage.person("bob")
        link = await ask_bob(stage, alice, bob)
        yield Signin(stage, oidc, alice, bob, link)


@pytest.fixture
async def browser(world: Signin) -> AsyncIterator[Browser]:
    b = Browser(world.stage.url)
    try:
        yield b
    finally:
        await b.close()


async def transaction_status(world: Signin) -> AuthStatus:
    store = world.stage.parts.store
    page = await world.stage.parts.auth.page(world.token)
    tx = await store.transactions.get(page.transaction_id)
    assert tx is not None
    return tx.status


async def signed_in(world: Signin, browser: Browser, email: str, **who: Any) -> tuple[int, str]:
    """``email`` opens the link and signs in at the provider; returns the page they land on."""
    world.sim.sign_in_as(email, **who)
    status, page = await browser.open(world.link)
    assert status == 200, page
    return await browser.choose(world.link, "signin", page)


async def test_the_target_signs_in_and_verifies(world: Signin, browser: Browser) -> None:
    status, page = await browser.open(world.link)
    assert status == 200
    assert "Sign in to answer" in page and "bob@example.com" in page
    assert 'value="verify"' not in page  # nothing to decide before signing in
    assert "resetting your password" not in page  # nor the request's details

    status, page = await signed_in(world, browser, "bob@example.com")
    assert status == 200
    assert "Signed in as bob@example.com." in page
    assert "resetting your password" in page and 'value="verify"' in page

    # What went to the provider: a PKCE challenge, a state and a nonce, never the link's token.
    (sent,) = world.sim.authorize_requests
    assert sent["code_challenge_method"] == "S256" and sent["code_challenge"] and sent["nonce"] and sent["state"]
    assert sent["redirect_uri"] == world.stage.url + "/auth/callback"
    assert sent["login_hint"] == "bob@example.com"
    assert all(world.token not in value for value in sent.values())
    assert all(world.token not in value for form in world.sim.token_requests for value in form.values())

    status, page = await browser.choose(world.link, "verify", page)
    assert status == 200 and "Verified." in page
    assert await transaction_status(world) is AuthStatus.VERIFIED
    await world.stage.wait_for_dm(world.alice, "Identity verified by bob@example.com")


async def test_the_email_is_compared_without_regard_to_case(world: Signin, browser: Browser) -> None:
    _, page = await signed_in(world, browser, "Bob@Example.COM")
    status, page = await browser.choose(world.link, "deny", page)
    assert status == 200 and "Denied." in page
    assert await transaction_status(world) is AuthStatus.DENIED


async def test_someone_else_signs_in_and_is_refused_and_nothing_changes(world: Signin, browser: Browser) -> None:
    status, page = await signed_in(world, browser, "mallory@example.com")
    assert status == 403
    assert (
        "You are signed in as mallory@example.com, and this request is for bob@example.com, so you can't answer it."
        in page
    )
    assert 'value="verify"' not in page and "resetting your password" not in page

    # Pressing Verify anyway (a hand-made POST with the page's CSRF token) changes nothing either.
    async with browser.session.post(
        world.link,
        data={"decision": "verify", "csrf": CSRF.search(page).group(1)},  # type: ignore[union-attr]
        headers={"Origin": world.stage.url},
    ) as r:
        assert r.status == 403
        assert "signed in as mallory@example.com" in await r.text()
    assert await transaction_status(world) is AuthStatus.PENDING
    assert await audit_kinds(world.stage) == ["auth.requested"]


async def test_an_unverified_email_cannot_decide(world: Signin, browser: Browser) -> None:
    status, page = await signed_in(world, browser, "bob@example.com", verified=False)
    assert status == 403
    assert "has not verified the email address bob@example.com" in page
    assert await transaction_status(world) is AuthStatus.PENDING


async def test_an_entra_id_token_without_email_verified_counts_its_xms_edov_claim(
    world: Signin, browser: Browser
) -> None:
    world.sim.tamper_next(drop=("email_verified",), claims={"xms_edov": True})
    status, page = await signed_in(world, browser, "bob@example.com")
    assert status == 200 and "Signed in as bob@example.com." in page
    world.sim.tamper_next(drop=("email_verified",))
    other = Browser(world.stage.url)
    try:
        status, page = await signed_in(world, other, "bob@example.com")
    finally:
        await other.close()
    assert status == 403 and "has not verified the email address" in page


async def test_a_decision_without_signing_in_is_refused(world: Signin, browser: Browser) -> None:
    _, page = await browser.open(world.link)
    status, text = await browser.choose(world.link, "verify", page)
    assert status == 403 and "Sign in first" in text
    assert await transaction_status(world) is AuthStatus.PENDING


async def _refused_sign_in(world: Signin, browser: Browser) -> None:
    status, page = await signed_in(world, browser, "bob@example.com")
    assert status == 403, page
    assert "could not confirm your sign-in" in page
    # no identity came of it: the link still asks to sign in, and a decision is refused
    status, page = await browser.open(world.link)
    assert "Sign in to answer" in page and 'value="verify"' not in page
    status, _ = await browser.choose(world.link, "verify", page)
    assert status == 403
    assert await transaction_status(world) is AuthStatus.PENDING


@pytest.mark.parametrize(
    "tamper",
    [
        {"foreign_key": True},
        {"claims": {"aud": "another-client"}},
        {"claims": {"iss": "https://evil.example"}},
        {"claims": {"nonce": "a-nonce-from-another-attempt"}},
        {"drop": ("nonce",)},
        {"drop": ("exp",)},
    ],
    ids=["forged-signature", "wrong-audience", "wrong-issuer", "wrong-nonce", "no-nonce", "no-expiry"],
)
async def test_an_id_token_that_does_not_hold_up_proves_nothing(
    world: Signin, browser: Browser, tamper: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    world.sim.tamper_next(**tamper)
    await _refused_sign_in(world, browser)
    refusals = [r for r in caplog.records if r.name == "ackgate.web.signin" and r.levelno == logging.WARNING]
    assert len(refusals) == 1 and "the ID token is not valid" in refusals[0].getMessage()


async def test_an_expired_id_token_proves_nothing(world: Signin, browser: Browser) -> None:
    now = int(world.sim.clock.now().timestamp())
    world.sim.tamper_next(claims={"iat": now - 3600, "exp": now - 600, "auth_time": now - 3600})
    await _refused_sign_in(world, browser)


def _location(response: aiohttp.ClientResponse) -> str:
    return response.headers["Location"]


async def test_a_replayed_callback_is_refused_even_with_the_cookie(world: Signin, browser: Browser) -> None:
    _, page = await browser.open(world.link)
    csrf = CSRF.search(page).group(1)  # type: ignore[union-attr]
    async with browser.session.post(
        world.link,
        data={"decision": "signin", "csrf": csrf},
        headers={"Origin": world.stage.url},
        allow_redirects=False,
    ) as r:
        assert r.status == 303
        signin_cookie = r.cookies["ackgate_signin"]
        assert signin_cookie["httponly"] and signin_cookie["samesite"] == "Lax" and signin_cookie["path"] == "/auth"
        assert not signin_cookie["secure"]  # the stage's public URL is http
        to_provider = _location(r)
    async with browser.session.get(to_provider, allow_redirects=False) as r:
        callback = _location(r)
    assert urlsplit(callback).path == "/auth/callback" and "code" in parse_qs(urlsplit(callback).query)
    async with browser.session.get(callback, allow_redirects=False) as r:
        assert r.status == 303 and _location(r) == f"/auth/{world.token}"

    # An attacker who copied the callback URL and the cookie replays them from another browser.
    thief = Browser(world.stage.url)
    try:
        thief.session.cookie_jar.update_cookies(
            {"ackgate_signin": signin_cookie.value}, response_url=URL(world.stage.url)
        )
        async with thief.session.get(callback, allow_redirects=False) as r:
            assert r.status == 400
            assert "already used" in await r.text()
        _, page = await thief.open(world.link)
        assert "Sign in to answer" in page  # no identity for the thief
    finally:
        await thief.close()
    assert await transaction_status(world) is AuthStatus.PENDING


async def test_a_callback_without_this_browsers_attempt_is_refused(world: Signin, browser: Browser) -> None:
    async with browser.session.get(f"{world.stage.url}/auth/callback?code=abc&state=xyz") as r:
        assert r.status == 400
        assert "started in another browser" in await r.text()


async def test_a_sign_in_cancelled_at_the_provider_changes_nothing(world: Signin, browser: Browser) -> None:
    world.sim.refuse_next = True
    _, page = await browser.open(world.link)
    status, text = await browser.choose(world.link, "signin", page)
    assert status == 400 and "cancelled or refused" in text
    assert await transaction_status(world) is AuthStatus.PENDING


async def test_signing_in_for_one_link_does_not_answer_another(world: Signin, browser: Browser) -> None:
    await signed_in(world, browser, "bob@example.com")
    second = await ask_bob(world.stage, world.alice, world.bob)
    status, page = await browser.open(second)
    assert status == 200 and "Sign in to answer" in page and 'value="verify"' not in page


async def test_sign_in_needs_the_csrf_token_and_our_origin(world: Signin, browser: Browser) -> None:
    async with browser.session.post(world.link, data={"decision": "signin"}, allow_redirects=False) as r:
        assert r.status == 403
    _, page = await browser.open(world.link)
    csrf = CSRF.search(page).group(1)  # type: ignore[union-attr]
    async with browser.session.post(
        world.link,
        data={"decision": "signin", "csrf": csrf},
        headers={"Origin": "https://evil.example"},
        allow_redirects=False,
    ) as r:
        assert r.status == 403
    assert world.sim.authorize_requests == []


async def test_a_signed_in_target_still_needs_the_csrf_token_and_our_origin(world: Signin, browser: Browser) -> None:
    _, page = await signed_in(world, browser, "bob@example.com")
    csrf = CSRF.search(page).group(1)  # type: ignore[union-attr]
    for form, origin in (
        ({"decision": "verify"}, world.stage.url),
        ({"decision": "verify", "csrf": csrf}, "https://evil.example"),
    ):
        async with browser.session.post(world.link, data=form, headers={"Origin": origin}) as r:
            assert r.status == 403
    assert await transaction_status(world) is AuthStatus.PENDING


async def test_no_log_line_holds_the_link_token_or_the_sign_in_secrets(
    world: Signin, browser: Browser, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await signed_in(world, browser, "mallory@example.com")
    world.sim.sign_in_as("bob@example.com")  # mallory hands the laptop to bob, who signs in with his account
    _, page = await browser.open(world.link)
    status, page = await browser.choose(world.link, "switch", page)
    assert status == 200 and "Signed in as bob@example.com." in page
    assert world.sim.authorize_requests[1]["prompt"] == "login"
    (first, second) = world.sim.authorize_requests
    secrets_seen = [world.token, first["state"], first["nonce"], second["state"], *world.sim.id_tokens]
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("ackgate")]
    assert lines  # the refusal was logged
    assert not [line for line in lines if any(s in line for s in secrets_seen)]


async def test_a_provider_that_cannot_be_reached_gets_a_clear_503(tmp_path: Path) -> None:
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(POLICY, encoding="utf-8")
    stage = Stage(
        policy_file=policy_file,
        workdir=tmp_path,
        clock=FakeClock(),
        provisioners={"noop": NoopProvisioner()},
        settings={"oidc_issuer": "http://127.0.0.1:9", "oidc_client_id": "ackgate"},
    )
    async with stage:
        link = await ask_bob(stage, stage.person("alice"), stage.person("bob"))
        browser = Browser(stage.url)
        try:
            _, page = await browser.open(link)
            status, text = await browser.choose(link, "signin", page)
        finally:
            await browser.close()
    assert status == 503 and "can't reach your identity provider" in text


def test_the_cookies_are_secure_behind_https_and_sealed_under_the_secret_key() -> None:
    clock = FakeClock()
    cookies = SessionCookies(SecretStr("a-secret-key-for-the-test-0123"), clock=clock, secure=True)
    response = web.Response()
    cookies.set_identity(response, "link-token", SignedIn("bob@example.com", True))
    morsel = response.cookies[IDENTITY_COOKIE]
    assert morsel["secure"] and morsel["httponly"] and morsel["samesite"] == "Lax" and morsel["path"] == "/auth"
    assert "bob@example.com" not in morsel.value  # sealed, not just signed

    def visit(value: str) -> web.Request:
        return make_mocked_request("GET", "/auth/link-token", headers={"Cookie": f"{IDENTITY_COOKIE}={value}"})

    assert cookies.identity(visit(morsel.value), "link-token") == SignedIn("bob@example.com", True)
    assert cookies.identity(visit(morsel.value), "another-link") is None  # bound to its link
    other = SessionCookies(SecretStr("another-secret-key-0123456789"), clock=clock, secure=True)
    assert other.identity(visit(morsel.value), "link-token") is None  # sealed under another key
    assert cookies.identity(visit(morsel.value[:-4] + "AAAA"), "link-token") is None  # altered
    clock.advance(timedelta(seconds=IDENTITY_SECONDS + 1))
    assert cookies.identity(visit(morsel.value), "link-token") is None  # too old


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"oidc_client_id": "ackgate"}, "ACKGATE_OIDC_ISSUER is missing"),
        (
            {"oidc_issuer": "https://idp.example.com", "secret_key": SecretStr("k" * 32)},
            "ACKGATE_OIDC_CLIENT_ID is missing",
        ),
        ({"oidc_issuer": "https://idp.example.com", "oidc_client_id": "ackgate"}, "ACKGATE_SECRET_KEY is missing"),
        (
            {"oidc_issuer": "idp.example.com", "oidc_client_id": "ackgate", "secret_key": SecretStr("k" * 32)},
            "ACKGATE_OIDC_ISSUER must start with https://",
        ),
    ],
)
def test_an_incomplete_sign_in_setting_stops_start_up_with_one_line(settings: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        load_settings(require_runtime=False, **settings)


def test_without_an_issuer_there_is_no_sign_in() -> None:
    assert load_settings(require_runtime=False, oidc_issuer="  ").oidc_issuer is None
