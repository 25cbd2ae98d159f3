"""The noop and webhook provisioners, the webhook's signing scheme, and building them from a policy."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone

import httpx
import pytest
from pydantic import SecretStr

from bot.adapters.provisioners import (
    NoopProvisioner,
    ProvisionerCall,
    WebhookProvisioner,
    build_provisioners,
    sign,
    verify_signature,
)
from bot.core.clock import FakeClock
from bot.core.domain import Grant, GrantStatus, Incident, Principal
from bot.core.errors import ConfigError, ProvisioningError
from bot.core.policy import Policy, ProvisionerSpec
from tests.fakes.provisioner_receiver import Answer, ProvisionerReceiver

SECRET = SecretStr("s3cret-for-tests-only-0123456789")
SETTINGS = {"prod-db": {"role": "prod_db_rw", "readonly": False, "port": 5432}}


def make_grant(**changes: object) -> Grant:
    values: dict[str, object] = {
        "id": "g-7k2m9q4x",
        "request_id": "r-abcdefgh",
        "resource": "prod-db",
        "holder": Principal("slack", "U0ALICE", "alice@example.com", "Alice"),
        "flow": "incident-db",
        "status": GrantStatus.PROVISIONING,
        "created_at": datetime(2026, 11, 23, 12, 0, tzinfo=UTC),
        "expires_at": datetime(2026, 11, 23, 14, 0, tzinfo=UTC),
        "justification": "PagerDuty incident #42 Database down",
        "incident": Incident(
            id="PINC042",
            number=42,
            title="Database down",
            status="acknowledged",
            html_url="https://example.pagerduty.com/incidents/PINC042",
        ),
        "approved_by": ("bob@example.com",),
    }
    values.update(changes)
    return Grant(**values)  # type: ignore[arg-type]


class Sleeps:
    """An injected sleep that only records how long the provisioner wanted to wait."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def receiver(clock: FakeClock) -> AsyncIterator[ProvisionerReceiver]:
    fake = ProvisionerReceiver(SECRET, clock)
    await fake.start()
    yield fake
    await fake.close()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as c:
        yield c


def webhook(
    url: str, client: httpx.AsyncClient, clock: FakeClock, sleeps: Sleeps | None = None, **spec: object
) -> WebhookProvisioner:
    return WebhookProvisioner(
        ProvisionerSpec.model_validate({"type": "webhook", "url": url, **spec}),
        secret=SECRET,
        client=client,
        name="iam",
        resource_settings=SETTINGS,
        clock=clock,
        sleep=sleeps or Sleeps(),
    )


# --- the request ----------------------------------------------------------------------------


async def test_grant_posts_the_documented_json_body(receiver, client, clock) -> None:
    await webhook(receiver.url, client, clock).grant(make_grant())

    [delivery] = receiver.deliveries
    assert delivery.headers["Content-Type"] == "application/json"
    assert delivery.json == {
        "action": "grant",
        "grant_id": "g-7k2m9q4x",
        "resource": "prod-db",
        "resource_settings": {"role": "prod_db_rw", "readonly": False, "port": 5432},
        "user": {"email": "alice@example.com", "platform": "slack", "user_id": "U0ALICE"},
        "expires_at": "2026-11-23T14:00:00Z",
        "justification": "PagerDuty incident #42 Database down",
        "incident": {
            "id": "PINC042",
            "number": 42,
            "title": "Database down",
            "url": "https://example.pagerduty.com/incidents/PINC042",
        },
        "approved_by": ["bob@example.com"],
    }
    assert receiver.granted == {"g-7k2m9q4x"}


async def test_revoke_sends_action_revoke_and_its_own_idempotency_key(receiver, client, clock) -> None:
    provisioner = webhook(receiver.url, client, clock)
    await provisioner.grant(make_grant())
    await provisioner.revoke(make_grant())

    assert [d.json["action"] for d in receiver.deliveries] == ["grant", "revoke"]
    assert [d.headers["Idempotency-Key"] for d in receiver.deliveries] == ["g-7k2m9q4x:grant", "g-7k2m9q4x:revoke"]
    assert receiver.granted == set()


async def test_expires_at_is_sent_in_utc_whatever_the_grants_timezone(receiver, client, clock) -> None:
    plus_two = timezone(timedelta(hours=2))
    await webhook(receiver.url, client, clock).grant(
        make_grant(expires_at=datetime(2026, 11, 23, 16, 30, tzinfo=plus_two))
    )
    assert receiver.deliveries[0].json["expires_at"] == "2026-11-23T14:30:00Z"


async def test_grant_without_incident_sends_null_and_no_resource_settings_sends_empty(receiver, client, clock) -> None:
    await webhook(receiver.url, client, clock).grant(make_grant(resource="staging", incident=None, approved_by=()))
    body = receiver.deliveries[0].json
    assert body["incident"] is None
    assert body["resource_settings"] == {}
    assert body["approved_by"] == []


# --- signing --------------------------------------------------------------------------------


async def test_signature_verifies_at_the_receiver_and_timestamp_comes_from_the_clock(receiver, client, clock) -> None:
    await webhook(receiver.url, client, clock).grant(make_grant())
    [delivery] = receiver.deliveries
    assert delivery.signature_valid
    assert delivery.headers["X-Ackgate-Timestamp"] == str(int(clock.now().timestamp()))
    assert delivery.headers["X-Ackgate-Signature"].startswith("v1=")


async def test_signature_is_hmac_sha256_of_v1_timestamp_and_raw_body(receiver, client, clock) -> None:
    """Pinned against an independent computation, so receivers in any language can follow the docstring."""
    import hashlib
    import hmac

    await webhook(receiver.url, client, clock).grant(make_grant())
    d = receiver.deliveries[0]
    ts = d.headers["X-Ackgate-Timestamp"]
    expected = hmac.new(SECRET.get_secret_value().encode(), b"v1:" + ts.encode() + b":" + d.body, hashlib.sha256)
    assert d.headers["X-Ackgate-Signature"] == "v1=" + expected.hexdigest()


async def test_tampered_body_does_not_verify(receiver, client, clock) -> None:
    await webhook(receiver.url, client, clock).grant(make_grant())
    d = receiver.deliveries[0]
    tampered = d.body.replace(b"alice@example.com", b"mallory@example.com")
    ts, header = d.headers["X-Ackgate-Timestamp"], d.headers["X-Ackgate-Signature"]
    assert verify_signature(SECRET, ts, d.body, header, now=clock.now())
    assert not verify_signature(SECRET, ts, tampered, header, now=clock.now())


def test_signature_with_another_secret_does_not_verify(clock) -> None:
    ts = str(int(clock.now().timestamp()))
    header = sign(SecretStr("another-secret"), ts, b"{}")
    assert not verify_signature(SECRET, ts, b"{}", header, now=clock.now())


def test_verify_accepts_a_plain_string_secret(clock) -> None:
    ts = str(int(clock.now().timestamp()))
    assert verify_signature(SECRET.get_secret_value(), ts, b"{}", sign(SECRET, ts, b"{}"), now=clock.now())


def test_timestamps_outside_the_tolerance_do_not_verify(clock) -> None:
    """A captured delivery replayed later is refused, even with its valid signature."""
    ts = str(int(clock.now().timestamp()))
    header = sign(SECRET, ts, b"{}")
    assert verify_signature(SECRET, ts, b"{}", header, now=clock.now() + timedelta(seconds=300))
    assert not verify_signature(SECRET, ts, b"{}", header, now=clock.now() + timedelta(seconds=301))
    assert not verify_signature(SECRET, ts, b"{}", header, now=clock.now() - timedelta(seconds=301))
    assert verify_signature(SECRET, ts, b"{}", header, now=clock.now() + timedelta(seconds=500), tolerance=600)


@pytest.mark.parametrize("header", ["", "v1=", "v0=abc", "v1=zz", "v1=é"])
def test_malformed_signature_headers_do_not_verify(clock, header) -> None:
    assert not verify_signature(SECRET, str(int(clock.now().timestamp())), b"{}", header, now=clock.now())


def test_non_numeric_timestamp_does_not_verify(clock) -> None:
    assert not verify_signature(SECRET, "yesterday", b"{}", sign(SECRET, "yesterday", b"{}"), now=clock.now())


# --- retries and failures -------------------------------------------------------------------


async def test_retries_500_with_backoff_then_succeeds(receiver, client, clock) -> None:
    receiver.script = [Answer(500), Answer(502)]
    sleeps = Sleeps()
    await webhook(receiver.url, client, clock, sleeps).grant(make_grant())

    assert len(receiver.deliveries) == 3
    assert sleeps.waits == [0.5, 1.0]
    assert receiver.granted == {"g-7k2m9q4x"}


async def test_retries_repeat_the_same_body_and_idempotency_key(receiver, client, clock) -> None:
    receiver.script = [Answer(503)]
    await webhook(receiver.url, client, clock).grant(make_grant())
    first, second = receiver.deliveries
    assert first.body == second.body
    assert first.headers["Idempotency-Key"] == second.headers["Idempotency-Key"] == "g-7k2m9q4x:grant"


async def test_gives_up_after_max_attempts_with_provisioning_error(receiver, client, clock) -> None:
    receiver.script = [Answer(503, "maintenance")] * 10
    sleeps = Sleeps()
    with pytest.raises(ProvisioningError) as caught:
        await webhook(receiver.url, client, clock, sleeps, max_attempts=3).grant(make_grant())

    assert len(receiver.deliveries) == 3
    assert sleeps.waits == [0.5, 1.0]  # no pointless wait after the last attempt
    assert "after 3 attempts" in caught.value.message
    assert "HTTP 503: maintenance" in caught.value.message
    assert receiver.granted == set()


async def test_backoff_doubles_and_is_capped(receiver, client, clock) -> None:
    receiver.script = [Answer(500)] * 9
    sleeps = Sleeps()
    with pytest.raises(ProvisioningError):
        await webhook(receiver.url, client, clock, sleeps, max_attempts=9).grant(make_grant())
    assert sleeps.waits == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


@pytest.mark.parametrize("status", [408, 429])
async def test_408_and_429_are_retried(receiver, client, clock, status) -> None:
    receiver.script = [Answer(status)]
    await webhook(receiver.url, client, clock).grant(make_grant())
    assert len(receiver.deliveries) == 2


async def test_retry_after_seconds_is_honoured(receiver, client, clock) -> None:
    receiver.script = [Answer(429, "slow down", {"Retry-After": "7"})]
    sleeps = Sleeps()
    await webhook(receiver.url, client, clock, sleeps).grant(make_grant())
    assert sleeps.waits == [7.0]


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422, 302])
async def test_refusals_are_not_retried(receiver, client, clock, status) -> None:
    receiver.script = [Answer(status, '{"error": "unknown role prod_db_rw"}')]
    sleeps = Sleeps()
    with pytest.raises(ProvisioningError) as caught:
        await webhook(receiver.url, client, clock, sleeps).grant(make_grant())

    assert len(receiver.deliveries) == 1
    assert sleeps.waits == []
    assert f"HTTP {status}" in caught.value.message
    assert "unknown role prod_db_rw" in caught.value.message
    assert "refused to grant prod-db" in caught.value.message


async def test_long_error_bodies_are_cut_to_a_short_excerpt(receiver, client, clock) -> None:
    receiver.script = [Answer(400, "<html>\n" + "x" * 5000 + "</html>")]
    with pytest.raises(ProvisioningError) as caught:
        await webhook(receiver.url, client, clock).grant(make_grant())
    assert len(caught.value.message) < 500
    assert "…" in caught.value.message


async def test_timeouts_are_retried_then_reported_and_the_spec_timeout_is_used(clock) -> None:
    """No real waiting: the transport raises the timeout httpx would raise, and shows what timeout it was given."""
    timeouts: list[object] = []

    def slow(request: httpx.Request) -> httpx.Response:
        timeouts.append(request.extensions["timeout"])
        raise httpx.ReadTimeout("timed out", request=request)

    sleeps = Sleeps()
    async with httpx.AsyncClient(transport=httpx.MockTransport(slow)) as mock:
        provisioner = webhook(
            "https://provisioner.example.com/ackgate", mock, clock, sleeps, timeout_seconds=2.5, max_attempts=2
        )
        with pytest.raises(ProvisioningError) as caught:
            await provisioner.revoke(make_grant())

    assert len(timeouts) == 2
    assert timeouts[0] == {"connect": 2.5, "read": 2.5, "write": 2.5, "pool": 2.5}
    assert "no answer within 2.5s" in caught.value.message
    assert "could not revoke prod-db" in caught.value.message


async def test_timeout_then_success_succeeds(clock) -> None:
    calls = 0

    def flaky(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise httpx.ConnectTimeout("timed out", request=request)
        return httpx.Response(204)

    async with httpx.AsyncClient(transport=httpx.MockTransport(flaky)) as mock:
        await webhook("https://provisioner.example.com/ackgate", mock, clock).grant(make_grant())
    assert calls == 2


async def test_connection_refused_is_retried_then_reported(client, clock) -> None:
    with socket.socket() as s:  # a port nobody listens on once the socket closes
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sleeps = Sleeps()
    with pytest.raises(ProvisioningError) as caught:
        await webhook(f"http://127.0.0.1:{port}/ackgate", client, clock, sleeps, max_attempts=2).grant(make_grant())
    assert len(sleeps.waits) == 1
    assert "ConnectError" in caught.value.message


async def test_the_secret_appears_in_no_request_body_error_or_log(receiver, client, clock, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    receiver.script = [Answer(500, "oops"), Answer(400, "no")]
    with pytest.raises(ProvisioningError) as caught:
        await webhook(receiver.url, client, clock).grant(make_grant())
    secret = SECRET.get_secret_value()
    assert secret not in caught.value.message
    assert all(secret.encode() not in d.body for d in receiver.deliveries)
    assert all(secret not in json.dumps(d.headers) for d in receiver.deliveries)
    assert secret not in caplog.text
    assert "attempt 1 of 5" in caplog.text  # the retry was logged, without the secret


# --- noop and building --------------------------------------------------------------------


async def test_noop_records_grant_and_revoke_calls_in_order() -> None:
    noop = NoopProvisioner()
    grant = make_grant()
    await noop.grant(grant)
    await noop.revoke(grant)
    assert noop.calls == [ProvisionerCall("grant", grant), ProvisionerCall("revoke", grant)]


def test_webhook_provisioner_refuses_a_noop_spec(client) -> None:
    with pytest.raises(ConfigError, match="not a webhook"):
        WebhookProvisioner(ProvisionerSpec(type="noop"), secret=SECRET, client=client)


async def test_webhook_provisioner_closes_only_a_client_it_made(client) -> None:
    spec = ProvisionerSpec(type="webhook", url="https://provisioner.example.com/ackgate")
    own = WebhookProvisioner(spec, secret=SECRET)
    await own.aclose()
    assert own._client.is_closed
    borrowed = WebhookProvisioner(spec, secret=SECRET, client=client)
    await borrowed.aclose()
    assert not client.is_closed


def policy_with(provisioners: dict[str, object]) -> Policy:
    return Policy.model_validate(
        {
            "provisioners": provisioners,
            "resources": [
                {"name": "prod-db", "provisioner": "iam", "settings": {"role": "prod_db_rw"}},
                {"name": "billing", "provisioner": "manual"},
            ],
            "flows": [{"name": "all", "resources": ["*"]}],
        }
    )


def test_build_provisioners_keys_by_name_and_always_has_noop(client) -> None:
    policy = policy_with({"iam": {"type": "webhook", "url": "https://p.example.com/x"}, "manual": {"type": "noop"}})
    built = build_provisioners(policy, secret=SECRET, client=client)
    assert set(built) == {"iam", "manual", "noop"}
    assert isinstance(built["iam"], WebhookProvisioner)
    assert isinstance(built["manual"], NoopProvisioner)
    assert isinstance(built["noop"], NoopProvisioner)


@pytest.mark.parametrize("secret", [None, SecretStr("")])
def test_build_provisioners_without_secret_names_the_variable_and_the_fix(client, secret) -> None:
    policy = policy_with({"iam": {"type": "webhook", "url": "https://p.example.com/x"}, "manual": {"type": "noop"}})
    with pytest.raises(ConfigError) as caught:
        build_provisioners(policy, secret=secret, client=client)
    assert "ACKGATE_PROVISIONER_SECRET is not set" in caught.value.message
    assert "iam" in caught.value.message
    assert "openssl rand -hex 32" in caught.value.message


def test_build_provisioners_needs_no_secret_without_webhooks(client) -> None:
    policy = Policy.model_validate({"resources": [{"name": "db"}], "flows": [{"name": "all", "resources": ["db"]}]})
    assert set(build_provisioners(policy, secret=None, client=client)) == {"noop"}


async def test_built_webhook_sends_the_settings_of_its_own_resources(receiver, client, clock) -> None:
    policy = policy_with({"iam": {"type": "webhook", "url": receiver.url}, "manual": {"type": "noop"}})
    built = build_provisioners(policy, secret=SECRET, client=client, clock=clock)
    await built["iam"].grant(make_grant(resource="prod-db"))
    assert receiver.deliveries[0].json["resource_settings"] == {"role": "prod_db_rw"}
    assert receiver.deliveries[0].signature_valid
