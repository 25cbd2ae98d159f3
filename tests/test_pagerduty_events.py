"""The Events API v2 client: bodies that conform to PagerDuty's documents, retries, the limiter, the key kept secret."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from jsonschema import Draft4Validator, Draft202012Validator
from jsonschema.protocols import Validator
from pydantic import SecretStr
from referencing import Registry
from referencing.jsonschema import DRAFT4

from bot.adapters.pagerduty_events import (
    DEFAULT_BASE_URL,
    ENQUEUE_PATH,
    AuthIncident,
    EventResult,
    EventsClient,
    EventsRejected,
    EventsUnavailable,
    IntegrationStatus,
    dedup_key,
    resolve_body,
    status_after,
    trigger_body,
)
from bot.core.errors import PagerDutyError, PagerDutyUnavailable, UsageError
from bot.core.secrets import mask
from bot.runtime.simulators.pagerduty_events import EventsSimulator
from tests.fakes.reference import PAGERDUTY

EVENTS_REF = PAGERDUTY / "events-api-v2"
OPENAPI_URI = "urn:pagerduty:events-api-v2:openapiv3"
ENQUEUE_SCHEMA_POINTER = "#/paths/~1enqueue/post/requestBody/content/application~1json/schema"

KEY = "0123456789abcdefABCDEF0123456789"
REST_TOKEN = "y_NbAkKc66ryYTWUXYEu"  # the shape of a REST API key: 20 characters with symbols
AT = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)

Json = dict[str, Any]


def _reference(name: str) -> Json:
    path = EVENTS_REF / name
    if not path.is_file():
        pytest.fail(f"PagerDuty reference document {path} is missing: these tests check bodies against it.")
    loaded: Json = json.loads(path.read_text())
    return loaded


@pytest.fixture(scope="module")
def openapi() -> Json:
    return _reference("openapiv3.json")


def _validators(openapi: Json, *, check_formats: bool) -> list[Validator]:
    """The request body of POST /enqueue in the official OpenAPI (3.0, so draft 4) and the derived stricter schema."""
    registry: Registry[Any] = Registry().with_resource(OPENAPI_URI, DRAFT4.create_resource(openapi))
    official = Draft4Validator(
        {"$ref": OPENAPI_URI + ENQUEUE_SCHEMA_POINTER},
        registry=registry,
        format_checker=Draft4Validator.FORMAT_CHECKER if check_formats else None,
    )
    derived = _reference("enqueue-request.schema.json")
    Draft202012Validator.check_schema(derived)
    checker = Draft202012Validator.FORMAT_CHECKER if check_formats else None
    return [official, Draft202012Validator(derived, format_checker=checker)]


@pytest.fixture(scope="module")
def schemas(openapi: Json) -> list[Validator]:
    """Both schemas, formats checked: our timestamps must be RFC 3339 date-times too."""
    return _validators(openapi, check_formats=True)


def _errors(schemas: list[Validator], body: Json) -> list[str]:
    return [f"{i}: {e.message} at {list(e.absolute_path)}" for i, v in enumerate(schemas) for e in v.iter_errors(body)]


def incident(**overrides: Any) -> AuthIncident:
    fields: Json = {
        "transaction_id": "t-7k2m9q4x",
        "requester": "Alice Example <alice@example.com>",
        "user": "bob@example.com",
        "message": "Deploying the hotfix for INC-42",
        "context": "prod-db write access",
        "link": "https://ackgate.example.com/auth/t-7k2m9q4x",
        "source": "ackgate.example.com",
        "severity": "critical",
    }
    return AuthIncident(**{**fields, **overrides})


class Ticker:
    """Injected time: ``monotonic`` reads it, ``sleep`` records the delay and moves it on."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def ticker() -> Ticker:
    return Ticker()


@pytest.fixture
async def sim() -> AsyncIterator[EventsSimulator]:
    async with EventsSimulator() as simulator:
        yield simulator


@pytest.fixture
async def client(sim: EventsSimulator, ticker: Ticker) -> AsyncIterator[EventsClient]:
    async with EventsClient(base_url=sim.base_url, sleep=ticker.sleep, monotonic=ticker.monotonic) as events:
        yield events


def mock_client(handler: Callable[[httpx.Request], httpx.Response]) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


def accepted(request: httpx.Request) -> httpx.Response:
    sent = json.loads(request.content)
    return httpx.Response(202, json={"status": "success", "message": "Event processed", "dedup_key": sent["dedup_key"]})


# --- bodies conform to PagerDuty's documents -----------------------------------------------------


@pytest.mark.parametrize(
    "made",
    [
        incident(),
        incident(severity="info", requester="alice@example.com"),
        incident(severity="warning", requester="Zoë 🚀\nÅström\t" * 200),  # long, multi-line, non-ASCII
        incident(severity="error", transaction_id="x" * 400, message="", context=""),
    ],
    ids=["critical", "info", "long-unicode-requester", "overlong-transaction-id"],
)
def test_every_trigger_body_validates_against_the_official_openapi_and_the_derived_schema(
    schemas: list[Validator], made: AuthIncident
) -> None:
    assert _errors(schemas, trigger_body(made, routing_key=KEY, at=AT)) == []


def test_resolve_body_validates_against_both_schemas(schemas: list[Validator]) -> None:
    assert _errors(schemas, resolve_body("t-7k2m9q4x", routing_key=SecretStr(KEY))) == []


def test_the_illustrative_auth_request_example_validates_against_both_schemas(openapi: Json) -> None:
    """Sanity of the validators. Format checks are off: the example's ``+0000`` offset is ISO 8601 but not RFC 3339."""
    example = _reference("examples/auth-request-trigger.illustrative.json")
    assert _errors(_validators(openapi, check_formats=False), example) == []


def test_the_validators_refuse_a_trigger_without_source_or_with_a_rest_token(schemas: list[Validator]) -> None:
    body = trigger_body(incident(), routing_key=KEY, at=AT)
    del body["payload"]["source"]
    official, derived = ([e] for e in schemas)
    assert _errors(official, body)
    assert _errors(derived, body)
    assert _errors(derived, trigger_body(incident(), routing_key=REST_TOKEN, at=AT))


def test_the_client_posts_to_the_openapi_server_and_path(openapi: Json) -> None:
    assert "/enqueue" in openapi["paths"]
    assert openapi["servers"][0]["url"] + "/enqueue" == DEFAULT_BASE_URL + ENQUEUE_PATH


def test_trigger_body_carries_the_authentication_request() -> None:
    body = trigger_body(incident(severity="warning"), routing_key=KEY, at=AT)
    assert body["routing_key"] == KEY
    assert body["event_action"] == "trigger"
    assert body["dedup_key"] == "ackgate-auth-t-7k2m9q4x"
    assert body["payload"] == {
        "summary": "Authentication request from Alice Example <alice@example.com>",
        "severity": "warning",
        "source": "ackgate.example.com",
        "timestamp": "2026-11-23T12:00:00.000Z",
        "component": "ackgate",
        "class": "authentication_request",
        "custom_details": {
            "requester": "Alice Example <alice@example.com>",
            "user": "bob@example.com",
            "transaction_id": "t-7k2m9q4x",
            "message": "Deploying the hotfix for INC-42",
            "context": "prod-db write access",
        },
    }
    assert body["links"] == [{"href": "https://ackgate.example.com/auth/t-7k2m9q4x", "text": "Authenticate"}]
    assert (body["client"], body["client_url"]) == ("Ackgate", "https://ackgate.example.com/")


def test_summary_is_one_line_and_cut_to_1024_characters_with_an_ellipsis() -> None:
    summary = trigger_body(incident(requester="a\nb " * 1000), routing_key=KEY, at=AT)["payload"]["summary"]
    assert len(summary) == 1024
    assert summary.endswith("…")
    assert summary.startswith("Authentication request from a b a b")
    assert "\n" not in summary


def test_resolve_body_targets_the_triggers_dedup_key() -> None:
    assert resolve_body("t-1", routing_key=KEY) == {
        "routing_key": KEY,
        "event_action": "resolve",
        "dedup_key": dedup_key("t-1"),
    }


def test_dedup_key_of_an_overlong_id_is_a_stable_digest_within_255_characters() -> None:
    long_id = "x" * 300
    assert dedup_key("t-1") == "ackgate-auth-t-1"
    assert len(dedup_key(long_id)) <= 255
    assert dedup_key(long_id) == dedup_key(long_id) != dedup_key(long_id + "y")


def test_auth_incident_refuses_an_unknown_severity() -> None:
    with pytest.raises(UsageError, match="severity must be one of critical, error, warning, info"):
        incident(severity="high")


# --- sending --------------------------------------------------------------------------------------


async def test_202_returns_the_dedup_key_and_sends_json_without_an_authorization_header(
    sim: EventsSimulator, ticker: Ticker
) -> None:
    # a shared client with an Authorization default must not leak it to the Events API
    async with httpx.AsyncClient(headers={"Authorization": "Token token=rest-secret"}) as shared:
        events = EventsClient(base_url=sim.base_url, client=shared, sleep=ticker.sleep, monotonic=ticker.monotonic)
        result = await events.send(trigger_body(incident(), routing_key=KEY, at=AT))
    assert result == EventResult(ok=True, dedup_key="ackgate-auth-t-7k2m9q4x", message="Event processed")
    [request] = sim.requests
    assert request.path == "/v2/enqueue"
    assert request.headers["Content-Type"] == "application/json"
    assert "Authorization" not in request.headers
    assert request.json()["routing_key"] == KEY


async def test_400_is_not_retried_and_surfaces_pagerdutys_message_and_errors(
    sim: EventsSimulator, client: EventsClient, ticker: Ticker
) -> None:
    with pytest.raises(EventsRejected) as caught:
        await client.send(trigger_body(incident(), routing_key=REST_TOKEN, at=AT))
    assert len(sim.requests) == 1
    assert ticker.sleeps == []
    assert isinstance(caught.value, PagerDutyError)
    assert caught.value.status == 400
    assert "Event object is invalid" in caught.value.message
    assert "Length of 'routing_key' is incorrect (should be 32 characters)" in caught.value.message
    assert "Events API V2" in caught.value.message  # says where the right key is
    assert caught.value.errors[0] == "Length of 'routing_key' is incorrect (should be 32 characters)"


async def test_429_then_202_succeeds_after_one_backoff(
    sim: EventsSimulator, client: EventsClient, ticker: Ticker
) -> None:
    sim.rate_limit_next(1)
    result = await client.trigger(incident(), routing_key=KEY, at=AT)
    assert result.ok
    assert [r.status for r in sim.requests] == [429, 202]
    assert ticker.sleeps == [2.0]
    assert len(sim.open_alerts) == 1


async def test_persistent_500_raises_unavailable_after_max_attempts_with_exponential_backoff(
    sim: EventsSimulator, client: EventsClient, ticker: Ticker
) -> None:
    sim.fail_next(None, status=500)
    with pytest.raises(EventsUnavailable, match="HTTP 500") as caught:
        await client.send(resolve_body("t-1", routing_key=KEY))
    assert isinstance(caught.value, PagerDutyUnavailable)
    assert len(sim.requests) == 3
    assert ticker.sleeps == [2.0, 4.0]


async def test_unreachable_host_raises_unavailable_after_retries(ticker: Ticker) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with EventsClient(
        base_url=f"http://127.0.0.1:{port}", sleep=ticker.sleep, monotonic=ticker.monotonic
    ) as events:
        with pytest.raises(EventsUnavailable, match="could not be reached"):
            await events.send(resolve_body("t-1", routing_key=KEY))
    assert len(ticker.sleeps) == 2


async def test_timeouts_are_retried_then_raise_unavailable(ticker: Ticker) -> None:
    attempts: list[httpx.Request] = []

    def slow(request: httpx.Request) -> httpx.Response:
        attempts.append(request)
        raise httpx.ReadTimeout("timed out", request=request)

    async with mock_client(slow) as http:
        events = EventsClient(client=http, sleep=ticker.sleep, monotonic=ticker.monotonic)
        with pytest.raises(EventsUnavailable, match="timed out"):
            await events.send(resolve_body("t-1", routing_key=KEY))
    assert len(attempts) == 3


async def test_retry_after_on_a_429_lengthens_the_backoff(ticker: Ticker) -> None:
    answers = iter([httpx.Response(429, headers={"Retry-After": "10"}), None])

    def handler(request: httpx.Request) -> httpx.Response:
        return next(answers) or accepted(request)

    async with mock_client(handler) as http:
        events = EventsClient(client=http, sleep=ticker.sleep, monotonic=ticker.monotonic)
        await events.send(resolve_body("t-1", routing_key=KEY))
    assert ticker.sleeps == [10.0]


async def test_a_wrong_url_404_is_rejected_without_retry(sim: EventsSimulator, ticker: Ticker) -> None:
    async with EventsClient(base_url=sim.base_url + "/nope", sleep=ticker.sleep, monotonic=ticker.monotonic) as events:
        with pytest.raises(EventsRejected, match="HTTP 404"):
            await events.send(resolve_body("t-1", routing_key=KEY))
    assert len(sim.requests) == 0  # the simulator's route never saw it
    assert ticker.sleeps == []


async def test_an_event_over_512_kb_is_refused_before_sending(sim: EventsSimulator, client: EventsClient) -> None:
    with pytest.raises(EventsRejected, match="512 KB"):
        await client.trigger(incident(context="x" * 600_000), routing_key=KEY, at=AT)
    assert sim.requests == []


async def test_an_answer_without_dedup_key_falls_back_to_the_one_sent(ticker: Ticker) -> None:
    async with mock_client(lambda _: httpx.Response(202, json={"status": "success"})) as http:
        events = EventsClient(client=http, sleep=ticker.sleep, monotonic=ticker.monotonic)
        result = await events.send(resolve_body("t-1", routing_key=KEY))
    assert result.dedup_key == "ackgate-auth-t-1"


async def test_trigger_then_resolve_opens_and_closes_the_alert(sim: EventsSimulator, client: EventsClient) -> None:
    await client.trigger(incident(), routing_key=KEY, at=AT)
    assert sim.alerts["ackgate-auth-t-7k2m9q4x"].status == "triggered"
    await client.resolve("t-7k2m9q4x", routing_key=SecretStr(KEY))
    assert sim.alerts["ackgate-auth-t-7k2m9q4x"].status == "resolved"


# --- the per-key limiter --------------------------------------------------------------------------


async def test_the_121st_send_within_a_minute_is_refused_without_an_http_call(ticker: Ticker) -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return accepted(request)

    async with mock_client(handler) as http:
        events = EventsClient(client=http, sleep=ticker.sleep, monotonic=ticker.monotonic)
        for n in range(120):
            ticker.now += 0.25  # 120 sends spread over the first 30 s
            await events.send(resolve_body(f"t-{n}", routing_key=KEY))
        with pytest.raises(EventsUnavailable, match=r"rate limit .* try again in 30 s") as caught:
            await events.send(resolve_body("t-121", routing_key=KEY))
        assert len(calls) == 120
        assert caught.value.retry_after == pytest.approx(30.25)
        await events.send(resolve_body("t-other", routing_key="Z" * 32))  # another key has its own budget
        ticker.now += 30.25  # the first send leaves the 60 s window
        await events.send(resolve_body("t-121", routing_key=KEY))
    assert len(calls) == 122


# --- the key never shows ------------------------------------------------------------------------


def _echo_key(event: Json) -> None:
    raise ValueError(f"routing key {event['routing_key']} is disabled")


@pytest.mark.parametrize("scenario", ["rejected-echoing-the-key", "server-errors", "unreachable", "rate-limited"])
async def test_the_routing_key_never_appears_in_exception_messages_or_logs(
    scenario: str, ticker: Ticker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with EventsSimulator(validator=_echo_key if scenario.startswith("rejected") else None) as sim:
        base_url = sim.base_url
        if scenario == "server-errors":
            sim.fail_next(None, status=503)
        if scenario == "unreachable":
            await sim.stop()
        async with EventsClient(
            base_url=base_url, sleep=ticker.sleep, monotonic=ticker.monotonic, per_key_per_minute=1
        ) as events:
            if scenario == "rate-limited":
                await events.send(resolve_body("t-0", routing_key=KEY))
            with pytest.raises(PagerDutyError) as caught:
                await events.trigger(incident(), routing_key=KEY, at=AT)
    shown = [caught.value.message, str(caught.value), *map(str, getattr(caught.value, "errors", ()))]
    assert not any(KEY in text for text in shown)
    assert KEY not in caplog.text
    if scenario in ("server-errors", "rate-limited"):
        assert mask(KEY) in caplog.text + caught.value.message  # masked is how it may be named


# --- the integration status ---------------------------------------------------------------------


def test_status_after_a_result_is_success_and_after_an_error_carries_its_message() -> None:
    ok = status_after(EventResult(ok=True, dedup_key="ackgate-auth-t-1", message="Event processed"), AT)
    assert (ok.state, ok.at, ok.detail) == ("success", AT, "Incident event accepted (dedup key ackgate-auth-t-1).")
    failed = status_after(EventsUnavailable("PagerDuty did not take the event."), AT)
    assert (failed.state, failed.detail) == ("error", "PagerDuty did not take the event.")


def test_status_after_an_unexpected_exception_names_only_its_type() -> None:
    status = status_after(RuntimeError(f"boom {KEY}"), AT)
    assert status.state == "error"
    assert KEY not in status.detail
    assert "RuntimeError" in status.detail


def test_status_survives_a_json_round_trip() -> None:
    status = IntegrationStatus("error", AT, "PagerDuty refused the event.")
    assert IntegrationStatus.from_json(status.to_json()) == status
    assert IntegrationStatus.from_json(IntegrationStatus().to_json()) == IntegrationStatus()


@pytest.mark.parametrize("stored", [None, "", "not json", '{"state": "weird"}', "[]"])
def test_status_from_nothing_or_unreadable_is_not_invoked(stored: str | None) -> None:
    assert IntegrationStatus.from_json(stored) == IntegrationStatus("not_invoked", None, "")
