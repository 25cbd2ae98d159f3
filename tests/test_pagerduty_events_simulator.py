"""The Events API v2 simulator answers like PagerDuty and keeps alerts with PagerDuty's dedup semantics."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator

from bot.adapters.pagerduty_events import EventsClient, EventsUnavailable
from bot.runtime.simulators.pagerduty_events import EventsSimulator
from tests.fakes.reference import PAGERDUTY

EVENTS_REF = PAGERDUTY / "events-api-v2"
KEY = "0123456789abcdefABCDEF0123456789"
OTHER_KEY = "Z" * 32

Json = dict[str, Any]


def _reference(name: str) -> Any:
    path = EVENTS_REF / name
    if not path.is_file():
        pytest.fail(f"PagerDuty reference document {path} is missing: these tests compare answers with it.")
    return json.loads(path.read_text())


def _response_schema(name: str) -> Draft202012Validator:
    derived = _reference("enqueue-request.schema.json")
    return Draft202012Validator({"$defs": derived["$defs"], "$ref": f"#/$defs/{name}"})


@pytest.fixture
async def sim() -> AsyncIterator[EventsSimulator]:
    async with EventsSimulator() as simulator:
        yield simulator


@pytest.fixture
async def http(sim: EventsSimulator) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=sim.base_url) as client:
        yield client


def trigger(key: str | None = "k-1", *, routing_key: str = KEY, **payload: Any) -> Json:
    body: Json = {
        "routing_key": routing_key,
        "event_action": "trigger",
        "payload": {"summary": "Authentication request from alice", "source": "ackgate.test", "severity": "info"}
        | payload,
    }
    if key is not None:
        body["dedup_key"] = key
    return body


def follow_up(action: str, key: str, *, routing_key: str = KEY) -> Json:
    return {"routing_key": routing_key, "event_action": action, "dedup_key": key}


async def test_202_has_pagerdutys_success_shape_and_the_dedup_key(http: httpx.AsyncClient) -> None:
    response = await http.post("/v2/enqueue", json=trigger("k-1"))
    assert response.status_code == 202
    assert response.json() == {"status": "success", "message": "Event processed", "dedup_key": "k-1"}
    assert list(_response_schema("SuccessResponse").iter_errors(response.json())) == []


async def test_a_trigger_without_dedup_key_gets_a_generated_one(http: httpx.AsyncClient, sim: EventsSimulator) -> None:
    first = (await http.post("/v2/enqueue", json=trigger(None))).json()["dedup_key"]
    second = (await http.post("/v2/enqueue", json=trigger(None))).json()["dedup_key"]
    assert first != second
    assert set(sim.alerts) == {first, second}


async def test_a_rest_token_as_routing_key_gets_the_observed_400_body(http: httpx.AsyncClient) -> None:
    observed = _reference("examples/response-400.observed.json")["observed"][1]
    response = await http.post("/v2/enqueue", json=trigger(routing_key="u+AbC_d-EfGh12345678"))
    assert response.status_code == observed["http_status"] == 400
    assert response.json() == observed["body"]
    assert list(_response_schema("ErrorResponse").iter_errors(response.json())) == []


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"routing_key": KEY, "event_action": "trigger"}, "'payload' is missing"),
        (trigger(severity="high"), "'payload.severity' must be one of"),
        (trigger(summary="x" * 1025), "'payload.summary' is too long"),
        (trigger(source=""), "'payload.source' is missing"),
        ({"routing_key": KEY, "event_action": "resolve"}, "'dedup_key' is required for resolve"),
        ({"routing_key": KEY, "event_action": "escalate", "dedup_key": "k"}, "'event_action' must be one of"),
        (trigger("k" * 256), "'dedup_key' must be a string of 1 to 255"),
        ({"event_action": "resolve", "dedup_key": "k"}, "'routing_key' is missing"),
    ],
    ids=[
        "no-payload",
        "bad-severity",
        "long-summary",
        "blank-source",
        "resolve-no-dedup",
        "bad-action",
        "long-dedup",
        "no-key",
    ],
)
async def test_invalid_events_are_refused_with_400(
    http: httpx.AsyncClient, sim: EventsSimulator, body: Json, error: str
) -> None:
    response = await http.post("/v2/enqueue", json=body)
    assert response.status_code == 400
    assert response.json()["status"] == "invalid event"
    assert any(error in e for e in response.json()["errors"])
    assert sim.events == []
    assert sim.alerts == {}


async def test_a_body_that_is_not_a_json_object_is_unrecognized(http: httpx.AsyncClient) -> None:
    response = await http.post("/v2/enqueue", content=b"[1, 2", headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json() == _reference("examples/response-error.openapi-example.json")


async def test_a_trigger_for_an_open_alert_adds_to_it_and_opens_no_new_one(
    http: httpx.AsyncClient, sim: EventsSimulator
) -> None:
    await http.post("/v2/enqueue", json=trigger("k-1"))
    await http.post("/v2/enqueue", json=trigger("k-1"))
    assert len(sim.alerts) == 1
    assert sim.alerts["k-1"].actions == ["trigger", "trigger"]
    assert sim.alerts["k-1"].number == 1


async def test_acknowledge_then_resolve_then_a_new_trigger_opens_a_new_alert(
    http: httpx.AsyncClient, sim: EventsSimulator
) -> None:
    await http.post("/v2/enqueue", json=trigger("k-1"))
    await http.post("/v2/enqueue", json=follow_up("acknowledge", "k-1"))
    assert sim.alerts["k-1"].status == "acknowledged"
    await http.post("/v2/enqueue", json=follow_up("resolve", "k-1"))
    assert sim.alerts["k-1"].status == "resolved"
    assert sim.open_alerts == []
    await http.post("/v2/enqueue", json=trigger("k-1"))
    assert (sim.alerts["k-1"].status, sim.alerts["k-1"].number) == ("triggered", 2)


async def test_follow_ups_for_no_open_alert_or_from_another_key_are_accepted_and_dropped(
    http: httpx.AsyncClient, sim: EventsSimulator
) -> None:
    assert (await http.post("/v2/enqueue", json=follow_up("resolve", "unknown"))).status_code == 202
    assert "unknown" not in sim.alerts
    await http.post("/v2/enqueue", json=trigger("k-1"))
    assert (await http.post("/v2/enqueue", json=follow_up("resolve", "k-1", routing_key=OTHER_KEY))).status_code == 202
    assert sim.alerts["k-1"].status == "triggered"
    assert len(sim.events) == 3


async def test_the_validator_hook_turns_its_exception_into_a_400_and_keeps_it() -> None:
    def no_info(event: Json) -> None:
        if event.get("payload", {}).get("severity") == "info":
            raise ValueError("info events are not allowed here")

    async with EventsSimulator(validator=no_info) as sim, httpx.AsyncClient(base_url=sim.base_url) as http:
        response = await http.post("/v2/enqueue", json=trigger())
        assert response.json()["errors"] == ["info events are not allowed here"]
        assert [str(e) for e in sim.validation_errors] == ["info events are not allowed here"]
        assert (await http.post("/v2/enqueue", json=trigger(severity="critical"))).status_code == 202


async def test_fail_next_answers_the_status_n_times_then_recovers(
    http: httpx.AsyncClient, sim: EventsSimulator
) -> None:
    sim.fail_next(2, status=502)
    statuses = [(await http.post("/v2/enqueue", json=trigger())).status_code for _ in range(3)]
    assert statuses == [502, 502, 202]
    assert [r.status for r in sim.requests] == statuses
    assert len(sim.events) == 1


async def test_a_slow_answer_times_the_client_out_and_stop_does_not_wait_for_it() -> None:
    sim = EventsSimulator()
    await sim.start()
    sim.slow_next(seconds=30)

    async def no_backoff(_: float) -> None:
        return None

    async with EventsClient(base_url=sim.base_url, timeout=0.05, max_attempts=1, sleep=no_backoff) as events:
        with pytest.raises(EventsUnavailable, match="timed out"):
            await events.send(trigger())
    started = time.monotonic()
    await sim.stop()
    assert time.monotonic() - started < 5


async def test_base_url_before_start_says_to_start_it() -> None:
    with pytest.raises(RuntimeError, match="await start"):
        _ = EventsSimulator().base_url
