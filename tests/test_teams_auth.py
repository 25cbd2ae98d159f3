"""Inbound Teams authentication: every bad token is refused with its own typed error, keys are fetched
asynchronously (never through botbuilder's blocking ``requests.get``), an unknown kid refreshes once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import jwt
import pytest
import requests
from botframework.connector.auth.jwt_token_extractor import JwtTokenExtractor

from bot.runtime.simulators.teams import TeamsSimulator
from bot.runtime.simulators.teams_client import TeamsClient, sign
from handlers.teams import auth as teams_auth
from handlers.teams.auth import OpenIdKeys, ServiceUrlPolicy, TeamsAuthenticator

EMULATOR_ISSUER = "https://sts.windows.net/d6d49420-f39b-4df7-a1dc-d59a935871db/"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def no_blocking_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    """botbuilder's OpenID fetch is ``requests.get`` on the event loop; it must never run."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("requests was called: a blocking fetch ran on the event loop")

    monkeypatch.setattr(requests, "get", refuse)
    monkeypatch.setattr(requests.Session, "request", refuse)


@pytest.fixture
async def sim() -> AsyncIterator[TeamsSimulator]:
    async with TeamsSimulator() as teams:
        teams.add_member("29:alice", name="Alice A", email="alice@example.com")
        yield teams


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def keys(sim: TeamsSimulator, clock: FakeClock) -> AsyncIterator[OpenIdKeys]:
    async with httpx.AsyncClient() as http:
        yield OpenIdKeys(sim.openid_metadata_url, http=http, clock=clock)


@pytest.fixture
def policy() -> ServiceUrlPolicy:
    return ServiceUrlPolicy(["127.0.0.1", *teams_auth.PUBLIC_SERVICE_URL_HOSTS])


@pytest.fixture
def auth(sim: TeamsSimulator, keys: OpenIdKeys, policy: ServiceUrlPolicy) -> TeamsAuthenticator:
    return TeamsAuthenticator(app_id=sim.app_id, keys=keys, service_urls=policy)


@pytest.fixture
def activity(sim: TeamsSimulator) -> dict[str, Any]:
    return TeamsClient(sim, "http://unused").personal_message(sim.members["29:alice"], "access list")


async def test_a_genuine_teams_token_is_accepted_and_its_service_url_trusted(
    sim: TeamsSimulator, auth: TeamsAuthenticator, activity: dict[str, Any], policy: ServiceUrlPolicy
) -> None:
    assert not policy.trusted(sim.service_url)
    identity = await auth.authenticate(f"Bearer {sign(sim)}", activity)
    assert identity.is_authenticated and identity.get_claim_value("aud") == sim.app_id
    assert policy.trusted(sim.service_url)


async def test_a_token_inside_the_five_minute_clock_tolerance_is_accepted(
    sim: TeamsSimulator, auth: TeamsAuthenticator, activity: dict[str, Any]
) -> None:
    token = sign(sim, exp=int(time.time()) - 120)
    assert (await auth.authenticate(f"Bearer {token}", activity)).is_authenticated


def _forged(sim: TeamsSimulator) -> str:
    sim.add_key("attacker", published=False)
    return sign(sim, kid="attacker", headers={"kid": "k1"})  # the attacker's key, claiming the real kid


def _unsigned(sim: TeamsSimulator) -> str:
    claims = jwt.decode(sign(sim), options={"verify_signature": False})
    return jwt.encode(claims, None, algorithm="none", headers={"kid": "k1"})


def _hmac_with_public_key(sim: TeamsSimulator) -> str:
    claims = jwt.decode(sign(sim), options={"verify_signature": False})
    return jwt.encode(claims, "a-shared-secret-of-at-least-32-bytes!!", algorithm="HS256", headers={"kid": "k1"})


def _unendorsed(sim: TeamsSimulator) -> str:
    sim.add_key("webchat-only", endorsements=("webchat",))
    return sign(sim, kid="webchat-only")


REFUSALS = {
    "forged signature": (_forged, teams_auth.BadSignature),
    "unsigned (alg none)": (_unsigned, teams_auth.MalformedToken),
    "HS256 confusion": (_hmac_with_public_key, teams_auth.MalformedToken),
    "garbage": (lambda sim: "not.a.jwt", teams_auth.MalformedToken),
    "expired beyond tolerance": (lambda sim: sign(sim, exp=int(time.time()) - 400), teams_auth.Expired),
    "not yet valid": (lambda sim: sign(sim, nbf=int(time.time()) + 900), teams_auth.Expired),
    "no expiry": (lambda sim: sign(sim, exp=None), teams_auth.MalformedToken),
    "wrong audience": (lambda sim: sign(sim, aud="someone-elses-bot"), teams_auth.WrongAudience),
    "wrong issuer": (lambda sim: sign(sim, iss="https://evil.example"), teams_auth.WrongIssuer),
    "emulator issuer": (lambda sim: sign(sim, iss=EMULATOR_ISSUER), teams_auth.ForeignIssuer),
    "skill token": (
        lambda sim: sign(sim, iss="https://login.microsoftonline.com/t/v2.0", ver="2.0", azp="another-bot"),
        teams_auth.ForeignIssuer,
    ),
    "key not endorsed for msteams": (_unendorsed, teams_auth.NotEndorsed),
    "serviceurl claim mismatch": (
        lambda sim: sign(sim, service_url="http://127.0.0.1:9/elsewhere/"),
        teams_auth.ServiceUrlMismatch,
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS))
async def test_a_bad_token_is_refused_with_its_typed_error(
    case: str, sim: TeamsSimulator, auth: TeamsAuthenticator, activity: dict[str, Any], policy: ServiceUrlPolicy
) -> None:
    make, error = REFUSALS[case]
    with pytest.raises(error) as refused:
        await auth.authenticate(f"Bearer {make(sim)}", activity)
    assert isinstance(refused.value, teams_auth.TeamsAuthError) and refused.value.reason
    assert "eyJ" not in str(refused.value)  # the message never carries the token
    assert not policy.trusted(sim.service_url)


@pytest.mark.parametrize(
    ("header", "error"),
    [
        (None, teams_auth.MissingToken),
        ("", teams_auth.MissingToken),
        ("Basic dXNlcjpwYXNz", teams_auth.MalformedToken),
        ("Bearer", teams_auth.MalformedToken),
    ],
)
async def test_a_missing_or_malformed_header_is_refused(
    header: str | None, error: type[Exception], auth: TeamsAuthenticator, activity: dict[str, Any]
) -> None:
    with pytest.raises(error):
        await auth.authenticate(header, activity)


async def test_an_activity_from_another_channel_is_refused(
    sim: TeamsSimulator, auth: TeamsAuthenticator, activity: dict[str, Any]
) -> None:
    with pytest.raises(teams_auth.NotEndorsed):
        await auth.authenticate(f"Bearer {sign(sim)}", {**activity, "channelId": "webchat"})


@pytest.mark.parametrize(
    "service_url",
    ["https://evil.example/", "http://smba.trafficmanager.net/amer/", "https://a@smba.trafficmanager.net/", None],
)
async def test_a_service_url_outside_the_allowlist_is_refused_before_any_key_fetch(
    service_url: str | None, sim: TeamsSimulator, auth: TeamsAuthenticator, activity: dict[str, Any]
) -> None:
    token = sign(sim, service_url=service_url or "x")
    with pytest.raises(teams_auth.ServiceUrlNotAllowed):
        await auth.authenticate(f"Bearer {token}", {**activity, "serviceUrl": service_url})
    assert sim.jwks_requests == 0


async def test_an_unknown_kid_refreshes_the_keys_exactly_once(
    sim: TeamsSimulator, auth: TeamsAuthenticator, keys: OpenIdKeys, activity: dict[str, Any], clock: FakeClock
) -> None:
    await keys.refresh()
    assert sim.jwks_requests == 1
    clock.now += 301
    sim.rotate_key()
    assert (await auth.authenticate(f"Bearer {sign(sim)}", activity)).is_authenticated  # k2, fetched once
    assert sim.jwks_requests == 2
    sim.add_key("never-published", published=False)
    clock.now += 301
    for _ in range(3):
        with pytest.raises(teams_auth.UnknownKey):
            await auth.authenticate(f"Bearer {sign(sim, kid='never-published')}", activity)
    assert sim.jwks_requests == 3  # one refresh for the unknown kid, then rate-limited


async def test_a_cold_cache_is_filled_by_one_fetch_for_concurrent_requests(
    sim: TeamsSimulator, auth: TeamsAuthenticator, activity: dict[str, Any]
) -> None:
    results = await asyncio.gather(*(auth.authenticate(f"Bearer {sign(sim)}", activity) for _ in range(10)))
    assert all(r.is_authenticated for r in results)
    assert (sim.metadata_requests, sim.jwks_requests) == (1, 1)


async def test_unreachable_keys_are_a_typed_error_and_a_failed_refresh_keeps_known_keys(
    sim: TeamsSimulator, auth: TeamsAuthenticator, keys: OpenIdKeys, activity: dict[str, Any], clock: FakeClock
) -> None:
    async with httpx.AsyncClient() as http:
        dead = OpenIdKeys("http://127.0.0.1:9/v1/.well-known/openidconfiguration", http=http)
        with pytest.raises(teams_auth.KeysUnavailable):
            await TeamsAuthenticator(app_id=sim.app_id, keys=dead, service_urls=auth.service_urls).authenticate(
                f"Bearer {sign(sim)}", activity
            )
    await keys.refresh()
    token = sign(sim)
    await sim.stop()  # the token service goes away; a day later the refresh fails
    clock.now += 2 * 86400
    assert (await auth.authenticate(f"Bearer {token}", activity)).is_authenticated  # the known k1 still serves
    assert keys.refreshes == 2


def test_an_empty_app_id_is_refused_at_construction() -> None:
    """botbuilder reads an empty app id as 'authentication disabled'."""
    with pytest.raises(ValueError, match="app id"):
        TeamsAuthenticator(app_id="", keys=None, service_urls=ServiceUrlPolicy([]))  # type: ignore[arg-type]


@pytest.fixture
def sdk_cache(sim: TeamsSimulator) -> Iterator[None]:
    yield
    JwtTokenExtractor.metadataCache.pop(sim.openid_metadata_url, None)


async def test_primed_sdk_cache_serves_botbuilder_without_its_blocking_fetch(
    sim: TeamsSimulator, keys: OpenIdKeys, sdk_cache: None
) -> None:
    await keys.refresh()
    keys.prime_sdk_cache()
    found = await JwtTokenExtractor.get_open_id_metadata(sim.openid_metadata_url).get("k1")
    assert found is not None and found.endorsements == ["msteams"]


def test_the_service_url_policy_matches_hosts_and_trusts_only_what_it_was_told() -> None:
    policy = ServiceUrlPolicy(["*.trafficmanager.net", "127.0.0.1"])
    assert policy.allowed("https://smba.trafficmanager.net/amer/")
    assert policy.allowed("http://127.0.0.1:8080/smba/")
    assert not policy.allowed("https://trafficmanager.net.evil.example/")
    assert not policy.allowed("http://smba.trafficmanager.net/")
    assert not policy.allowed("not a url")
    assert not policy.trusted("https://smba.trafficmanager.net/amer/")
    policy.remember("https://smba.trafficmanager.net/amer")
    assert policy.trusted("https://smba.trafficmanager.net/amer/")
    policy.remember("https://evil.example/")
    assert not policy.trusted("https://evil.example/")


# --- our rules are at least as strict as botbuilder's own ------------------------------------------

SDK_CASES = [
    "forged signature",
    "expired beyond tolerance",
    "wrong audience",
    "wrong issuer",
    "key not endorsed for msteams",
    "serviceurl claim mismatch",
]


@pytest.fixture
async def sdk_auth(sim: TeamsSimulator, keys: OpenIdKeys, sdk_cache: None) -> AsyncIterator[Any]:
    """botbuilder's parameterized channel validation, its key cache primed by OpenIdKeys (no blocking fetch)."""
    from handlers.teams import adapter as teams_adapter
    from handlers.teams.connector import TokenSource

    async with httpx.AsyncClient() as http:
        tokens = TokenSource(
            app_id=sim.app_id,
            app_password=sim.app_password,
            tenant_id=sim.tenant_id,
            login_url=sim.login_url,
            http=http,
        )
        adapter = teams_adapter.build_adapter(
            app_id=sim.app_id, tenant_id=sim.tenant_id, tokens=tokens, openid_metadata_url=sim.openid_metadata_url
        )
        yield adapter.bot_framework_authentication


async def _sdk_accepts(sdk_auth: Any, keys: OpenIdKeys, header: str, activity: dict[str, Any]) -> bool:
    from botbuilder.schema import Activity

    await keys.refresh()
    keys.prime_sdk_cache()
    try:
        await sdk_auth.authenticate_request(Activity().deserialize(activity), header)
    except AssertionError:  # the guard on requests.get: the SDK tried its blocking fetch
        raise
    except Exception:  # the SDK raises PermissionError, jwt errors, IndexError…: any refusal counts
        return False
    return True


async def test_botbuilder_accepts_the_token_we_accept(
    sim: TeamsSimulator, auth: TeamsAuthenticator, keys: OpenIdKeys, activity: dict[str, Any], sdk_auth: Any
) -> None:
    header = f"Bearer {sign(sim)}"
    assert (await auth.authenticate(header, activity)).is_authenticated
    assert await _sdk_accepts(sdk_auth, keys, header, activity)


@pytest.mark.parametrize("case", SDK_CASES)
async def test_botbuilder_refuses_what_we_refuse(
    case: str, sim: TeamsSimulator, auth: TeamsAuthenticator, keys: OpenIdKeys, activity: dict[str, Any], sdk_auth: Any
) -> None:
    make, error = REFUSALS[case]
    header = f"Bearer {make(sim)}"
    with pytest.raises(error):
        await auth.authenticate(header, activity)
    assert not await _sdk_accepts(sdk_auth, keys, header, activity)
