"""What the client sends and what the simulator answers both match PagerDuty's OpenAPI document.

The reference document must be present (see tests/fakes/pagerduty_openapi.py); if it is not,
these tests fail, they do not skip.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from multidict import CIMultiDict, MultiDict
from openapi_core import OpenAPI
from openapi_core.testing import MockRequest, MockResponse
from werkzeug.datastructures import ImmutableMultiDict

from bot.core.errors import PagerDutyAuthError, PagerDutyNotFound, PagerDutyUnavailable
from bot.runtime.simulators.pagerduty import PagerDutySimulator, RecordedRequest, RecordedResponse
from tests.fakes import pagerduty_fixtures
from tests.fakes.pagerduty_fixtures import FROM_EMAIL, TOKEN, ClientFactory, FakeTime
from tests.fakes.pagerduty_openapi import (
    ACCEPT,
    Conformance,
    ConformanceError,
    check_request,
    check_response,
    spec_document,
)

pd_sim = pagerduty_fixtures.pd_sim
make_pd_client = pagerduty_fixtures.make_pd_client

GOOD_HEADERS = {"Accept": ACCEPT, "Authorization": f"Token token={TOKEN}"}


def recorded(
    method: str,
    path: str,
    query: list[tuple[str, str]] | None = None,
    *,
    headers: dict[str, str] | None = None,
    body: Any = None,
) -> RecordedRequest:
    raw = json.dumps(body).encode() if body is not None else b""
    return RecordedRequest(
        method, path, "", MultiDict(query or []), CIMultiDict(GOOD_HEADERS if headers is None else headers), raw
    )


def answer(body: Any, status: int = 200) -> RecordedResponse:
    return RecordedResponse(status, {"Content-Type": "application/json"}, json.dumps(body).encode())


def test_the_reference_document_is_present_and_covers_the_endpoints_we_use() -> None:
    paths = spec_document()["paths"]
    for path in ("/users", "/users/{id}", "/incidents", "/incidents/{id}", "/incidents/{id}/notes", "/oncalls"):
        assert path in paths


async def test_a_scripted_session_conforms_request_by_request(
    pd_sim: PagerDutySimulator, make_pd_client: ClientFactory
) -> None:
    """Every call the client makes, including retries and failures, validates both ways."""
    alice = pd_sim.add_user("alice+oncall@example.com", "Alice")
    bob = pd_sim.add_user("bob@example.com", "Bob")
    web = pd_sim.add_service("Web")
    incident = pd_sim.add_incident("Checkout is down", service=web, acknowledged_by=[alice])
    pd_sim.add_incident("Resolved long ago", status="resolved")
    now = datetime.now(UTC)
    pd_sim.add_oncall(
        alice, escalation_policy_id="PEPWEB", schedule_id="PSWEB", start=now, end=now + timedelta(hours=8)
    )
    pd_sim.add_oncall(bob, escalation_policy_id="PEPWEB", level=2)
    time = FakeTime()
    client = make_pd_client(time=time)

    await client.ping()
    assert await client.user_by_email("alice+oncall@example.com") is not None
    assert await client.acknowledged_incidents(alice, service_ids=[web], urgencies=["high", "low"])
    assert (
        len(await client.oncalls(escalation_policy_ids=["PEPWEB"], user_ids=[alice, bob], schedule_ids=["PSWEB"])) == 1
    )
    assert len(await client.oncalls(escalation_policy_ids=["PEPWEB"])) == 2
    await client.incident(str(incident.number))
    await client.add_note(incident.id, "Ackgate granted prod-db to alice for 1h")
    pd_sim.rate_limit_next(reset=1)
    pd_sim.fail_next(status=500)
    await client.incident(incident.id)
    with pytest.raises(PagerDutyNotFound):
        await client.incident("PNOPE")
    with pytest.raises(PagerDutyNotFound):
        await client.add_note("PNOPE", "hello")
    pd_sim.reject_auth_next()
    with pytest.raises(PagerDutyAuthError):
        await client.ping()
    pd_sim.fail_next(None, status=503)
    with pytest.raises(PagerDutyUnavailable):
        await client.acknowledged_incidents(bob)

    validator = pd_sim.validator
    assert isinstance(validator, Conformance)
    assert len(pd_sim.requests) >= 14
    assert validator.checked == len(pd_sim.requests), pd_sim.validation_errors


async def test_every_simulated_endpoint_answers_in_documented_shapes(pd_sim: PagerDutySimulator) -> None:
    alice = pd_sim.add_user("alice@example.com", "Alice")
    for n in range(30):
        pd_sim.add_user(f"user{n}@example.com", f"User {n}")
    incident = pd_sim.add_incident("Checkout is down", acknowledged_by=[alice], urgency="low")
    pd_sim.add_incident("Done", status="resolved")
    pd_sim.add_oncall(alice, escalation_policy_id="PEP1")
    headers = GOOD_HEADERS | {"From": FROM_EMAIL}

    async with httpx.AsyncClient(base_url=pd_sim.base_url, headers=headers) as http:
        default_page = (await http.get("/users")).json()
        capped_page = (await http.get("/users", params={"limit": 500, "total": "true"})).json()
        assert (await http.get(f"/users/{alice}", params={"include[]": "contact_methods"})).status_code == 200
        assert (await http.get("/users/PNOPE")).status_code == 404
        assert (await http.get("/incidents", params={"statuses[]": ["resolved", "triggered"]})).status_code == 200
        assert (await http.get("/incidents", params={"include[]": ["acknowledgers", "services"]})).status_code == 200
        assert (await http.get("/users", params={"offset": 9950, "limit": 100})).status_code == 400
        note = await http.post(f"/incidents/{incident.id}/notes", json={"note": {"content": "hi"}})
        assert note.status_code == 200
        assert (await http.get(f"/incidents/{incident.id}/notes")).json()["notes"][0]["content"] == "hi"
        assert (await http.get("/oncalls", params={"user_ids[]": alice})).json()["oncalls"][0]["user"]["type"] == (
            "user_reference"
        )

    assert (len(default_page["users"]), default_page["limit"], default_page["more"]) == (25, 25, True)
    assert (len(capped_page["users"]), capped_page["limit"], capped_page["total"]) == (32, 100, 32)
    assert isinstance(pd_sim.validator, Conformance)
    assert pd_sim.validator.checked == len(pd_sim.requests)


async def test_note_without_from_is_refused_by_the_simulator_and_the_document(pd_sim: PagerDutySimulator) -> None:
    incident = pd_sim.add_incident("Checkout is down")
    async with httpx.AsyncClient(base_url=pd_sim.base_url, headers=GOOD_HEADERS) as http:
        response = await http.post(f"/incidents/{incident.id}/notes", json={"note": {"content": "hi"}})

    assert response.status_code == 400
    assert "From" in response.json()["error"]["message"]
    assert len(pd_sim.validation_errors) == 1
    assert "From" in str(pd_sim.validation_errors[0])
    pd_sim.validation_errors.clear()  # expected: this test sent a bad request on purpose


# --- the checks can fail --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "complaint"),
    [
        (recorded("GET", "/users", headers={"Authorization": f"Token token={TOKEN}"}), "Accept"),
        (recorded("GET", "/users", headers={"Accept": ACCEPT, "Authorization": f"Bearer {TOKEN}"}), "Authorization"),
        (recorded("GET", "/incidents", [("status[]", "acknowledged")]), "undeclared query parameters"),
        (recorded("GET", "/incidents", [("urgencies[]", "high"), ("urgencies[]", "urgent")]), "urgent"),
        (recorded("GET", "/oncalls", [("include[]", "people")]), "people"),
        (recorded("GET", "/incidents", [("limit", "lots")]), "limit"),
        (recorded("POST", "/incidents/PI1/notes", body={"note": {"content": "x"}}), "From"),
        (recorded("POST", "/incidents/PI1/notes", headers=GOOD_HEADERS | {"From": "Alice"}, body={"note": {}}), "From"),
        (recorded("DELETE", "/incidents/PI1"), "not an operation"),
    ],
)
def test_nonconforming_requests_are_caught(request_: RecordedRequest, complaint: str) -> None:
    with pytest.raises(ConformanceError, match=complaint):
        check_request(request_)


def test_a_json_body_must_say_so() -> None:
    headers = GOOD_HEADERS | {"From": FROM_EMAIL, "Content-Type": "text/plain"}
    with pytest.raises(ConformanceError, match="Content-Type"):
        check_request(recorded("POST", "/incidents/PI1/notes", headers=headers, body={"note": {"content": "x"}}))


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/oncalls", {"oncalls": [{"escalation_level": "one"}]}, 200),
        ("/users", {"users": [{"id": "PU1", "type": "user", "name": "No Email"}]}, 200),
        ("/users", {"people": []}, 200),
        ("/incidents/PI1", {"incident": {"id": "PI1", "status": "snoozed"}}, 200),
        ("/incidents", {"error": {"message": 42}}, 500),
    ],
)
def test_nonconforming_answers_are_caught(path: str, body: Any, status: int) -> None:
    with pytest.raises(ConformanceError):
        check_response(recorded("GET", path), answer(body, status))


def test_conforming_answers_pass_including_nulls_the_document_forgot() -> None:
    """Guards the corrections: a permanent, direct-target on-call with an expanded user is valid."""
    user = {"id": "PU1", "type": "user", "name": "Alice", "email": "alice@example.com", "summary": "Alice"}
    policy = {"id": "PE1", "type": "escalation_policy_reference"}
    oncall = {
        "user": user,
        "escalation_policy": policy,
        "schedule": None,
        "escalation_level": 1,
        "start": None,
        "end": None,
    }
    check_response(recorded("GET", "/oncalls"), answer({"oncalls": [oncall], "limit": 100, "offset": 0, "more": False}))
    check_response(recorded("GET", "/incidents"), answer({"error": {"message": "Internal Server Error"}}, 500))


def test_the_corrections_are_still_needed() -> None:
    """If PagerDuty fixes its document, this fails and the corrections in pagerduty_openapi can go."""
    original = OpenAPI.from_dict(spec_document())
    host, headers = "https://api.pagerduty.com", GOOD_HEADERS
    oncall: dict[str, Any] = {
        "user": {"id": "PU1", "type": "user_reference"},
        "escalation_policy": {"id": "PE1", "type": "escalation_policy_reference"},
    }
    oncall |= {"escalation_level": 1, "schedule": None, "start": None, "end": None}
    request = MockRequest(host, "get", "/oncalls", headers=headers)
    errors = list(original.iter_response_errors(request, MockResponse(json.dumps({"oncalls": [oncall]}).encode())))
    assert errors, "the published document now allows null start/end/schedule"

    repeated = ImmutableMultiDict([("urgencies[]", "high"), ("urgencies[]", "urgent")])
    request = MockRequest(host, "get", "/incidents", args=repeated, headers=headers)
    assert list(original.iter_request_errors(request)) == [], "the document now checks every repeated value"


async def test_simulator_keeps_validator_failures_and_still_answers() -> None:
    def refuse_everything(request: RecordedRequest, response: RecordedResponse) -> None:
        raise ConformanceError(f"refused {request.path} -> {response.status}")

    sim = PagerDutySimulator(token=TOKEN, validator=refuse_everything)
    async with sim, httpx.AsyncClient(base_url=sim.base_url, headers=GOOD_HEADERS) as http:
        response = await http.get("/users")

    assert response.status_code == 200
    assert [str(e) for e in sim.validation_errors] == ["refused /users -> 200"]
