"""The PagerDuty REST client, through the simulator over loopback HTTP (and httpx.MockTransport where simpler)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from bot.adapters.pagerduty import PagerDutyClient
from bot.adapters.throttling import RateBudgetExceeded, SlidingWindowLimiter, notify_when_queued
from bot.core.domain import Incident
from bot.core.errors import ConfigError, PagerDutyAuthError, PagerDutyError, PagerDutyNotFound, PagerDutyUnavailable
from bot.runtime.app import pagerduty_client
from bot.runtime.config import Settings
from bot.runtime.simulators.pagerduty import PagerDutySimulator
from tests.fakes import pagerduty_fixtures
from tests.fakes.pagerduty_fixtures import FROM_EMAIL, TOKEN, ClientFactory, FakeTime

pd_sim = pagerduty_fixtures.pd_sim
make_pd_client = pagerduty_fixtures.make_pd_client
fake_time = pagerduty_fixtures.fake_time

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def mock_client(handler: Callable[[httpx.Request], httpx.Response], **kwargs: Any) -> PagerDutyClient:
    """A client whose HTTP answers come from ``handler`` (no network)."""
    options: dict[str, Any] = {"base_url": "https://api.pagerduty.test", "deadline": 3.0}
    options.update(kwargs)
    return PagerDutyClient(SecretStr(TOKEN), transport=httpx.MockTransport(handler), **options)


# --- users ------------------------------------------------------------------------------------


async def test_user_by_email_picks_the_exact_match_among_substring_results(
    pd_sim: PagerDutySimulator, make_pd_client: ClientFactory
) -> None:
    pd_sim.add_user("jose.doe@x.com", "Jose Doe")
    pd_sim.add_user("ellie.doe@x.com", "Ellie Doe")
    wanted = pd_sim.add_user("e.doe@x.com", "E Doe")

    user = await make_pd_client().user_by_email("E.Doe@X.com")

    assert user is not None
    assert (user.id, user.email) == (wanted, "e.doe@x.com")
    (sent,) = pd_sim.requests_to("/users")
    assert sent.query.getall("query") == ["e.doe@x.com"]
    assert sent.query["limit"] == "100"


async def test_user_by_email_encodes_plus_so_it_does_not_arrive_as_a_space(
    pd_sim: PagerDutySimulator, make_pd_client: ClientFactory
) -> None:
    wanted = pd_sim.add_user("alice+oncall@example.com", "Alice")

    user = await make_pd_client().user_by_email("alice+oncall@example.com")

    assert user is not None
    assert user.id == wanted
    sent = pd_sim.requests_to("/users")[0]
    assert "alice%2Boncall" in sent.raw_query  # a literal + would be read as a space
    assert sent.query.getall("query") == ["alice+oncall@example.com"]


async def test_user_by_email_is_none_when_only_substrings_match(
    pd_sim: PagerDutySimulator, make_pd_client: ClientFactory
) -> None:
    pd_sim.add_user("ellie.doe@x.com", "Ellie Doe")

    assert await make_pd_client().user_by_email("e.doe@x.com") is None


async def test_user_lookup_pages_until_the_exact_match_appears(
    pd_sim: PagerDutySimulator, make_pd_client: ClientFactory
) -> None:
    for n in range(130):
        pd_sim.add_user(f"user{n}.ops@example.com", f"Ops {n}")
    wanted = pd_sim.add_user("ops@example.com", "Ops")  # 131st substring match: on the second page
    for n in range(130, 250):
        pd_sim.add_user(f"user{n}.ops@example.com", f"Ops {n}")

    user = await make_pd_client().user_by_email("ops@example.com")

    assert user is not None
    assert user.id == wanted
    assert [r.query["offset"] for r in pd_sim.requests_to("/users")] == ["0", "100"]


# --- acknowledged incidents -------------------------------------------------------------------


async def test_only_incidents_this_user_acknowledged_count_not_merely_assigned(
    pd_sim: PagerDutySimulator, make_pd_client: ClientFactory
) -> None:
    alice, bob = pd_sim.add_user("alice@example.com", "Alice"), pd_sim.add_user("bob@example.com", "Bob")
    mine = pd_sim.add_incident("Checkout is down", acknowledged_by=[alice])
    pd_sim.add_incident("Assigned, not acknowledged", assigned_to=[alice], status="acknowledged")
    pd_sim.add_incident("Triggered and assigned", assigned_to=[alice])
    pd_sim.add_incident("Bob acknowledged, alice co-assigned", assigned_to=[alice], acknowledged_by=[bob])

    found = await make_pd_client().acknowledged_incidents(alice)

    assert [i.id for i in found] == [mine.id]
    assert found[0].acknowledger_ids == (alice,)
    assert found[0].status == "acknowledged"
    (sent,) = pd_sim.requests_to("/incidents")
    assert sent.query.getall("user_ids[]") == [alice]
    assert sent.query.getall("statuses[]") == ["acknowledged"]


async def test_service_and_urgency_filters_are_sent_as_repeated_parameters(
    pd_sim: PagerDutySimulator, make_pd_client: ClientFactory
) -> None:
    alice = pd_sim.add_user("alice@example.com", "Alice")
    web, db, batch = pd_sim.add_service("Web"), pd_sim.add_service("DB"), pd_sim.add_service("Batch")
    high_web = pd_sim.add_incident("Web 500s", service=web, urgency="high", acknowledged_by=[alice])
    low_db = pd_sim.add_incident("DB slow", service=db, urgency="low", acknowledged_by=[alice])
    pd_sim.add_incident("Batch late", service=batch, urgency="high", acknowledged_by=[alice])
    pd_sim.add_incident("Web warning", service=web, urgency="low", acknowledged_by=[alice])

    client = make_pd_client()
    both = await client.acknowledged_incidents(alice, service_ids=[web, db], urgencies=["high"])
    low = await client.acknowledged_incidents(alice, service_ids=[db], urgencies=["low", "high"])

    assert [i.id for i in both] == [high_web.id]
    assert [i.id for i in low] == [low_db.id]
    first, second = pd_sim.requests_to("/incidents")
    assert sorted(first.query.getall("service_ids[]")) == sorted([web, db])
    assert second.query.getall("urgencies[]") == ["high", "low"]


async def test_acknowledged_incidents_follow_pagination_beyond_100_newest_first(
    pd_sim: PagerDutySimulator, make_pd_client: ClientFactory
) -> None:
    alice = pd_sim.add_user("alice@example.com", "Alice")
    made = [pd_sim.add_incident(f"Incident {n}", acknowledged_by=[alice]) for n in range(250)]

    found = await make_pd_client().acknowledged_incidents(alice)

    assert [i.number for i in found] == sorted((i.number for i in made), reverse=True)
    pages = pd_sim.requests_to("/incidents")
    assert [(r.query["limit"], r.query["offset"]) for r in pages] == [("100", "0"), ("100", "100"), ("100", "200")]


async def test_resolved_incident_no_longer_counts(pd_sim: PagerDutySimulator, make_pd_client: ClientFactory) -> None:
    alice = pd_sim.add_user("alice@example.com", "Alice")
    incident = pd_sim.add_incident("Checkout is down", acknowledged_by=[alice])
    client = make_pd_client(incident_cache_ttl=0.0)
    assert len(await client.acknowledged_incidents(alice)) == 1

    pd_sim.resolve(incident.id)

    assert await client.acknowledged_incidents(alice) == []


# --- on call ----------------------------------------------------------------------------------


async def test_oncalls_carry_levels_emails_schedules_and_permanent_entries(
    pd_sim: PagerDutySimulator, make_pd_client: ClientFactory
) -> None:
    now = datetime.now(UTC)
    alice = pd_sim.add_user("alice@example.com", "Alice")
    shift = (now - timedelta(hours=1), now + timedelta(hours=7))
    pd_sim.add_oncall(
        alice, escalation_policy_id="PEPWEB", level=1, schedule_id="PSCHED1", start=shift[0], end=shift[1]
    )
    pd_sim.add_oncall(alice, escalation_policy_id="PEPDB", level=2)  # direct target, permanent
    pd_sim.add_oncall(
        alice, escalation_policy_id="PEPOLD", level=1, start=now - timedelta(days=2), end=now - timedelta(days=1)
    )

    entries = await make_pd_client().oncalls(user_ids=[alice])

    by_policy = {e.escalation_policy_id: e for e in entries}
    assert set(by_policy) == {"PEPWEB", "PEPDB"}
    web, db = by_policy["PEPWEB"], by_policy["PEPDB"]
    assert (web.escalation_level, web.schedule_id, web.user_email) == (1, "PSCHED1", "alice@example.com")
    assert (web.start, web.end) == shift
    assert (db.escalation_level, db.schedule_id, db.start, db.end) == (2, None, None, None)
    (sent,) = pd_sim.requests_to("/oncalls")
    assert sent.query.getall("include[]") == ["users"]
    assert sent.query["limit"] == "100"


async def test_oncall_filters_by_policy_and_schedule_and_pages(
    pd_sim: PagerDutySimulator, make_pd_client: ClientFactory
) -> None:
    users = [pd_sim.add_user(f"eng{n}@example.com", f"Eng {n}") for n in range(120)]
    for user in users:
        pd_sim.add_oncall(user, escalation_policy_id="PEPBIG", level=1, schedule_id="PSBIG")
    pd_sim.add_oncall(users[0], escalation_policy_id="PEPOTHER", level=3, schedule_id="PSOTHER")

    client = make_pd_client()
    big = await client.oncalls(escalation_policy_ids=["PEPBIG"])
    other = await client.oncalls(schedule_ids=["PSOTHER"])

    assert len(big) == 120
    assert {e.escalation_policy_id for e in big} == {"PEPBIG"}
    assert [(e.user_id, e.escalation_level) for e in other] == [(users[0], 3)]
    assert len(pd_sim.requests_to("/oncalls")) == 3  # two pages, then one


# --- single incident, notes, ping -------------------------------------------------------------


async def test_incident_by_id_or_number(pd_sim: PagerDutySimulator, make_pd_client: ClientFactory) -> None:
    made = pd_sim.add_incident("Checkout is down", urgency="low")
    client = make_pd_client()

    by_id, by_number = await client.incident(made.id), await client.incident(str(made.number))

    assert by_id == by_number
    assert (by_id.title, by_id.status, by_id.urgency, by_id.service_name) == (
        "Checkout is down",
        "triggered",
        "low",
        "Production",
    )
    assert by_id.html_url.endswith(f"/incidents/{made.id}")


async def test_unknown_incident_raises_not_found(pd_sim: PagerDutySimulator, make_pd_client: ClientFactory) -> None:
    with pytest.raises(PagerDutyNotFound, match="no incident PNOPE"):
        await make_pd_client().incident("PNOPE")
    assert len(pd_sim.requests) == 1  # a 404 is an answer, not a failure to retry


async def test_incident_id_from_chat_cannot_change_the_endpoint() -> None:
    seen: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.raw_path)
        return httpx.Response(404, json={"error": {"message": "Not Found", "code": 2100}})

    client = mock_client(handler)
    with pytest.raises(PagerDutyNotFound):
        await client.incident("../users?x=1")
    await client.aclose()
    assert seen == [b"/incidents/..%2Fusers%3Fx%3D1"]


async def test_note_is_posted_with_from_header_and_wrapped_body(
    pd_sim: PagerDutySimulator, make_pd_client: ClientFactory
) -> None:
    incident = pd_sim.add_incident("Checkout is down")

    await make_pd_client().add_note(incident.id, "alice got prod-db for 1h (g-7k2m9q4x)")

    (sent,) = pd_sim.requests_to(f"/incidents/{incident.id}/notes", "POST")
    assert sent.headers["From"] == FROM_EMAIL
    assert sent.headers["Content-Type"] == "application/json"
    assert sent.json() == {"note": {"content": "alice got prod-db for 1h (g-7k2m9q4x)"}}
    assert [n["content"] for n in pd_sim.incidents[incident.id].notes] == ["alice got prod-db for 1h (g-7k2m9q4x)"]


async def test_note_without_from_email_is_refused_before_any_call(
    pd_sim: PagerDutySimulator, make_pd_client: ClientFactory
) -> None:
    with pytest.raises(PagerDutyError, match="PAGERDUTY_FROM_EMAIL"):
        await make_pd_client(from_email=None).add_note("PI00001", "hello")
    assert pd_sim.requests == []


async def test_note_is_not_repeated_after_a_server_error(
    pd_sim: PagerDutySimulator, make_pd_client: ClientFactory, fake_time: FakeTime
) -> None:
    incident = pd_sim.add_incident("Checkout is down")
    pd_sim.fail_next(status=500)

    with pytest.raises(PagerDutyUnavailable):
        await make_pd_client(time=fake_time).add_note(incident.id, "hello")

    assert len(pd_sim.requests) == 1
    assert pd_sim.incidents[incident.id].notes == []


async def test_ping_succeeds_with_a_good_token_and_fails_with_a_bad_one(
    pd_sim: PagerDutySimulator, make_pd_client: ClientFactory
) -> None:
    await make_pd_client().ping()
    assert pd_sim.requests[0].query["limit"] == "1"

    with pytest.raises(PagerDutyAuthError):
        await make_pd_client(token="wrong-token").ping()


# --- errors, retries, deadlines ---------------------------------------------------------------


async def test_rejected_token_says_to_check_the_setting_without_echoing_it(
    pd_sim: PagerDutySimulator, make_pd_client: ClientFactory
) -> None:
    with pytest.raises(PagerDutyAuthError) as caught:
        await make_pd_client(token="wrong-token-123").user_by_email("alice@example.com")

    assert "PAGERDUTY_API_TOKEN" in caught.value.message
    assert "401" in caught.value.message
    assert "wrong-token-123" not in str(caught.value)
    assert len(pd_sim.requests) == 1  # a bad token is not retried


async def test_forbidden_means_the_token_lacks_scope() -> None:
    client = mock_client(
        lambda request: httpx.Response(403, json={"error": {"message": "Access Denied", "code": 2010}})
    )
    with pytest.raises(PagerDutyAuthError, match="scope"):
        await client.incident("PI1")
    await client.aclose()


async def test_other_client_errors_carry_pagerdutys_message() -> None:
    body = {"error": {"message": "Invalid Input Provided", "code": 2001, "errors": ["Limit must be at most 100"]}}
    client = mock_client(lambda request: httpx.Response(400, json=body))
    with pytest.raises(PagerDutyError) as caught:
        await client.ping()
    await client.aclose()
    assert type(caught.value) is PagerDutyError
    assert "Invalid Input Provided; Limit must be at most 100" in caught.value.message
    assert "2001" in caught.value.message


async def test_rate_limited_call_waits_for_ratelimit_reset_then_succeeds(
    pd_sim: PagerDutySimulator, make_pd_client: ClientFactory, fake_time: FakeTime
) -> None:
    alice = pd_sim.add_user("alice@example.com", "Alice")
    pd_sim.rate_limit_next(reset=2)

    user = await make_pd_client(time=fake_time).user_by_email("alice@example.com")

    assert user is not None
    assert user.id == alice
    assert fake_time.sleeps == [2.0]
    assert len(pd_sim.requests_to("/users")) == 2


async def test_retry_after_is_honoured_too() -> None:
    answers = [
        httpx.Response(429, headers={"Retry-After": "1.5"}),
        httpx.Response(200, json={"users": [], "more": False}),
    ]
    time_ = FakeTime()
    client = mock_client(lambda request: answers.pop(0), monotonic=time_, sleep=time_.sleep)
    assert await client.user_by_email("nobody@example.com") is None
    await client.aclose()
    assert time_.sleeps == [1.5]


async def test_rate_limit_reset_beyond_the_deadline_fails_closed_without_waiting(
    pd_sim: PagerDutySimulator, make_pd_client: ClientFactory, fake_time: FakeTime
) -> None:
    pd_sim.rate_limit_next(reset=30)

    with pytest.raises(PagerDutyUnavailable, match="429"):
        await make_pd_client(time=fake_time, deadline=5.0).user_by_email("alice@example.com")

    assert fake_time.sleeps == []
    assert len(pd_sim.requests) == 1


async def test_persistent_500_fails_closed_within_the_deadline(
    pd_sim: PagerDutySimulator, make_pd_client: ClientFactory
) -> None:
    pd_sim.fail_next(None, status=500)
    client = make_pd_client(deadline=0.5)

    started = time.monotonic()
    with pytest.raises(PagerDutyUnavailable, match="HTTP 500"):
        await client.acknowledged_incidents("PU00001")
    elapsed = time.monotonic() - started

    assert elapsed < 0.5 + 0.25, "failure time is bounded by the deadline"
    assert len(pd_sim.requests) >= 2, "a 500 is retried while the deadline allows"


async def test_backoff_never_sleeps_past_the_deadline(
    pd_sim: PagerDutySimulator, make_pd_client: ClientFactory, fake_time: FakeTime
) -> None:
    pd_sim.fail_next(None, status=503)
    client = make_pd_client(time=fake_time, deadline=0.25, max_attempts=10)
    started = fake_time.now

    with pytest.raises(PagerDutyUnavailable):
        await client.incident("PI1")

    assert fake_time.now - started < 0.25
    assert fake_time.sleeps == [0.1]  # the next backoff (0.2 s) would cross the deadline


async def test_slow_server_fails_closed_within_the_deadline(
    pd_sim: PagerDutySimulator, make_pd_client: ClientFactory
) -> None:
    pd_sim.slow_next(None, seconds=5)
    client = make_pd_client(deadline=0.4, timeout=0.25)

    started = time.monotonic()
    with pytest.raises(PagerDutyUnavailable, match="timed out"):
        await client.oncalls(user_ids=["PU00001"])
    elapsed = time.monotonic() - started

    assert elapsed < 0.4 + 0.25, "failure time is bounded by the deadline"


async def test_transport_errors_are_retried_then_fail_closed() -> None:
    attempts: list[str] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        attempts.append(request.url.path)
        raise httpx.ConnectError("connection refused", request=request)

    time_ = FakeTime()
    client = mock_client(refuse, monotonic=time_, sleep=time_.sleep, max_attempts=3)
    with pytest.raises(PagerDutyUnavailable, match="unreachable"):
        await client.ping()
    await client.aclose()
    assert len(attempts) == 3
    assert time_.sleeps == [0.1, 0.2]


async def test_an_unreadable_answer_fails_closed() -> None:
    client = mock_client(lambda request: httpx.Response(200, json={"incident": {"id": "PI1", "title": "no number"}}))
    with pytest.raises(PagerDutyError, match="could not read"):
        await client.incident("PI1")
    await client.aclose()


# --- cache, coalescing, budget ----------------------------------------------------------------


async def test_cached_user_lookup_makes_no_http_call_until_the_ttl_passes(
    pd_sim: PagerDutySimulator, make_pd_client: ClientFactory, fake_time: FakeTime
) -> None:
    pd_sim.add_user("alice@example.com", "Alice")
    client = make_pd_client(time=fake_time, user_cache_ttl=30)

    first = await client.user_by_email("alice@example.com")
    fake_time.advance(29)
    again = await client.user_by_email("ALICE@example.com")
    assert again == first
    assert len(pd_sim.requests) == 1

    fake_time.advance(2)
    await client.user_by_email("alice@example.com")
    assert len(pd_sim.requests) == 2


async def test_cached_oncalls_make_no_http_call(
    pd_sim: PagerDutySimulator, make_pd_client: ClientFactory, fake_time: FakeTime
) -> None:
    alice = pd_sim.add_user("alice@example.com", "Alice")
    pd_sim.add_oncall(alice, escalation_policy_id="PEP1")
    client = make_pd_client(time=fake_time)

    assert await client.oncalls(escalation_policy_ids=["PEP1"]) == await client.oncalls(escalation_policy_ids=["PEP1"])
    assert len(pd_sim.requests) == 1


async def test_acknowledged_incidents_are_kept_a_few_seconds_unless_fresh_or_forgotten(
    pd_sim: PagerDutySimulator, make_pd_client: ClientFactory, fake_time: FakeTime
) -> None:
    alice = pd_sim.add_user("alice@example.com", "Alice")
    incident = pd_sim.add_incident("Checkout is down", acknowledged_by=[alice])
    client = make_pd_client(time=fake_time, incident_cache_ttl=5.0)
    assert len(await client.acknowledged_incidents(alice)) == 1
    pd_sim.unacknowledge(incident.id)

    assert len(await client.acknowledged_incidents(alice)) == 1  # kept: no call
    assert len(pd_sim.requests_to("/incidents")) == 1
    assert await client.acknowledged_incidents(alice, fresh=True) == []
    pd_sim.acknowledge(incident.id, alice)
    assert await client.acknowledged_incidents(alice) != []  # "none" was not kept
    pd_sim.unacknowledge(incident.id)
    fake_time.advance(5.1)
    assert await client.acknowledged_incidents(alice) == []  # the kept list lived 5 s
    pd_sim.acknowledge(incident.id, alice)
    assert await client.acknowledged_incidents(alice) != []
    pd_sim.unacknowledge(incident.id)
    client.forget_acknowledgements()
    assert await client.acknowledged_incidents(alice) == []
    assert len(pd_sim.requests_to("/incidents")) == 6


async def test_acknowledged_incidents_with_no_cache_ask_every_time(
    pd_sim: PagerDutySimulator, make_pd_client: ClientFactory, fake_time: FakeTime
) -> None:
    alice = pd_sim.add_user("alice@example.com", "Alice")
    incident = pd_sim.add_incident("Checkout is down", acknowledged_by=[alice])
    client = make_pd_client(time=fake_time, incident_cache_ttl=0.0)
    assert len(await client.acknowledged_incidents(alice)) == 1

    pd_sim.unacknowledge(incident.id)

    assert await client.acknowledged_incidents(alice) == []


async def test_ten_concurrent_identical_lookups_make_one_http_call(
    pd_sim: PagerDutySimulator, make_pd_client: ClientFactory
) -> None:
    alice = pd_sim.add_user("alice@example.com", "Alice")
    pd_sim.add_incident("Checkout is down", acknowledged_by=[alice])
    client = make_pd_client()

    users = await asyncio.gather(*(client.user_by_email("alice@example.com") for _ in range(10)))
    acked = await asyncio.gather(*(client.acknowledged_incidents(alice) for _ in range(10)))

    assert len({u.id for u in users if u}) == 1
    assert all(len(a) == 1 for a in acked)
    assert len(pd_sim.requests_to("/users")) == 1
    assert len(pd_sim.requests_to("/incidents")) == 1


async def test_a_failed_shared_lookup_fails_every_waiter_and_is_not_cached(
    pd_sim: PagerDutySimulator, make_pd_client: ClientFactory, fake_time: FakeTime
) -> None:
    pd_sim.add_user("alice@example.com", "Alice")
    pd_sim.reject_auth_next()
    client = make_pd_client(time=fake_time)

    results = await asyncio.gather(
        *(client.user_by_email("alice@example.com") for _ in range(5)), return_exceptions=True
    )

    assert all(isinstance(r, PagerDutyAuthError) for r in results)
    assert len(pd_sim.requests) == 1
    assert await client.user_by_email("alice@example.com") is not None


async def test_limiter_never_lets_more_than_its_budget_start_in_any_window() -> None:
    time_ = FakeTime(start=0.0)
    limiter = SlidingWindowLimiter(5, window=60.0, monotonic=time_, sleep=time_.sleep)
    started: list[float] = []
    for arrival in [0, 0, 1, 2, 2, 3, 3, 3, 10, 61, 61, 62, 119, 120, 121, 122, 122, 180, 300, 300]:
        time_.now = max(time_.now, float(arrival))
        await limiter.acquire(deadline=time_.now + 1000)
        started.append(time_.now)

    assert started == sorted(started)
    assert len(started) == 20
    for t in started:
        assert sum(1 for s in started if t <= s < t + 60) <= 5
    assert time_.sleeps, "the sixth request within a minute had to wait"


async def test_limiter_refuses_rather_than_waiting_past_the_deadline() -> None:
    time_ = FakeTime(start=0.0)
    limiter = SlidingWindowLimiter(2, window=60.0, monotonic=time_, sleep=time_.sleep)
    await limiter.acquire(deadline=5)
    await limiter.acquire(deadline=5)

    with pytest.raises(RateBudgetExceeded):
        await limiter.acquire(deadline=5)

    assert time_.sleeps == []
    time_.now = 60.0
    await limiter.acquire(deadline=65)  # the refused attempt reserved nothing


async def test_exhausted_request_budget_fails_the_call_closed(
    pd_sim: PagerDutySimulator, make_pd_client: ClientFactory, fake_time: FakeTime
) -> None:
    client = make_pd_client(time=fake_time, requests_per_minute=2, cache_ttl=0, user_cache_ttl=0)
    await client.ping()
    await client.ping()

    with pytest.raises(PagerDutyUnavailable, match="budget"):
        await client.ping()

    assert len(pd_sim.requests) == 2
    assert fake_time.sleeps == []


async def test_an_incident_lookup_whose_slot_is_past_the_queue_is_refused_at_once_not_after_waiting(
    pd_sim: PagerDutySimulator, make_pd_client: ClientFactory, fake_time: FakeTime
) -> None:
    client = make_pd_client(time=fake_time, requests_per_minute=2, queue_seconds=5.0, cache_ttl=0, user_cache_ttl=0)
    alice = pd_sim.add_user("alice@example.com", "Alice")
    await client.ping()
    await client.ping()  # the next slot is a minute away, past the 5-s queue

    with pytest.raises(PagerDutyUnavailable, match="budget"):
        await client.acknowledged_incidents(alice)

    assert len(pd_sim.requests) == 2
    assert fake_time.sleeps == []  # the batch did not wait for the slot before being refused


# --- secrets and metrics ----------------------------------------------------------------------


async def test_token_never_appears_in_errors_or_logs(
    pd_sim: PagerDutySimulator, make_pd_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    errors: list[BaseException] = []
    pd_sim.fail_next(2, status=500)
    pd_sim.rate_limit_next(reset=0)
    client = make_pd_client(time=FakeTime())
    await client.ping()  # succeeds after two 500s and a 429: each retry is logged
    for call in (make_pd_client(token=TOKEN + "x").ping, lambda: client.incident("PNOPE")):
        try:
            await call()
        except PagerDutyError as exc:
            errors.append(exc)

    def echo(request: httpx.Request) -> httpx.Response:
        auth = request.headers["Authorization"]
        return httpx.Response(400, json={"error": {"message": f"Bad header {auth}", "code": 2001}})

    echoing = mock_client(echo)
    with pytest.raises(PagerDutyError) as caught:
        await echoing.ping()
    await echoing.aclose()
    errors.append(caught.value)

    assert len(errors) == 3
    assert any("retry" in r.getMessage() for r in caplog.records)
    for error in errors:
        assert TOKEN not in str(error)
        assert TOKEN not in repr(error.__cause__)
    assert "[redacted]" in str(caught.value)
    for record in caplog.records:
        assert TOKEN not in record.getMessage()


def test_a_token_that_cannot_be_a_header_is_refused_without_echoing_it() -> None:
    with pytest.raises(ConfigError) as caught:
        PagerDutyClient(SecretStr("secret-part\nInjected: yes"), base_url="https://api.pagerduty.test")
    assert "secret-part" not in str(caught.value)


async def test_metrics_hook_sees_every_attempt_with_its_path_template(
    pd_sim: PagerDutySimulator, make_pd_client: ClientFactory, fake_time: FakeTime
) -> None:
    calls: list[tuple[str, str, int | None, float]] = []
    incident = pd_sim.add_incident("Checkout is down")
    pd_sim.fail_next(status=502)

    await make_pd_client(time=fake_time, on_call=lambda *call: calls.append(call)).incident(incident.id)

    assert [c[:3] for c in calls] == [("GET", "/incidents/{id}", 502), ("GET", "/incidents/{id}", 200)]
    assert all(c[3] >= 0 for c in calls)


async def test_metrics_hook_reports_no_status_for_a_timeout(
    pd_sim: PagerDutySimulator, make_pd_client: ClientFactory
) -> None:
    calls: list[tuple[str, str, int | None, float]] = []
    pd_sim.slow_next(None, seconds=5)
    with pytest.raises(PagerDutyUnavailable):
        await make_pd_client(deadline=0.2, timeout=0.1, on_call=lambda *c: calls.append(c)).ping()
    assert calls
    assert all(c[:3] == ("GET", "/users", None) for c in calls)


async def test_from_settings_uses_the_pagerduty_variables(
    pd_sim: PagerDutySimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("PAGERDUTY_API_TOKEN", "PAGERDUTY_API_URL", "PAGERDUTY_FROM_EMAIL"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="PAGERDUTY_API_TOKEN"):
        pagerduty_client(Settings())
    incident = pd_sim.add_incident("Checkout is down")
    settings = Settings(PAGERDUTY_API_TOKEN=TOKEN, PAGERDUTY_API_URL=pd_sim.base_url, PAGERDUTY_FROM_EMAIL=FROM_EMAIL)

    async with pagerduty_client(settings) as client:
        await client.add_note(incident.id, "hello")

    assert pd_sim.requests[0].headers["From"] == FROM_EMAIL


async def test_the_request_budget_comes_from_its_setting(
    pd_sim: PagerDutySimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PAGERDUTY_REQUESTS_PER_MINUTE sets the client's budget: past it, a call that would wait
    longer than its deadline is refused before PagerDuty is asked."""
    monkeypatch.delenv("PAGERDUTY_FROM_EMAIL", raising=False)
    settings = Settings(PAGERDUTY_API_TOKEN=TOKEN, PAGERDUTY_API_URL=pd_sim.base_url, PAGERDUTY_REQUESTS_PER_MINUTE="2")

    async with pagerduty_client(settings) as client:
        await client.ping()
        await client.ping()
        with pytest.raises(PagerDutyUnavailable, match="request budget"):
            await client.ping()

    assert len(pd_sim.requests) == 2
    with pytest.raises(ValueError, match="PAGERDUTY_REQUESTS_PER_MINUTE"):
        Settings(PAGERDUTY_REQUESTS_PER_MINUTE="0")


async def test_the_incident_cache_comes_from_its_setting(
    pd_sim: PagerDutySimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PAGERDUTY_INCIDENT_CACHE_SECONDS=0 asks PagerDuty at every check; 5 by default keeps them."""
    monkeypatch.delenv("PAGERDUTY_FROM_EMAIL", raising=False)
    alice = pd_sim.add_user("alice@example.com", "Alice")
    pd_sim.add_incident("Checkout is down", acknowledged_by=[alice])
    for seconds, calls in (("0", 2), (None, 1)):
        pd_sim.requests.clear()
        env = {"PAGERDUTY_INCIDENT_CACHE_SECONDS": seconds} if seconds is not None else {}
        settings = Settings(PAGERDUTY_API_TOKEN=TOKEN, PAGERDUTY_API_URL=pd_sim.base_url, **env)
        async with pagerduty_client(settings) as client:
            await client.acknowledged_incidents(alice)
            await client.acknowledged_incidents(alice)
        assert len(pd_sim.requests_to("/incidents")) == calls, seconds
    with pytest.raises(ValueError, match="PAGERDUTY_INCIDENT_CACHE_SECONDS"):
        Settings(PAGERDUTY_INCIDENT_CACHE_SECONDS="61")


async def test_a_retry_woken_after_the_deadline_reports_why_the_call_failed_not_the_budget() -> None:
    """A loaded event loop can wake a backoff sleep after the deadline: the call then fails closed
    with PagerDuty's own failure (here a timeout), never with a made-up "request budget" refusal."""

    class LateWaking(FakeTime):
        async def sleep(self, seconds: float) -> None:
            await super().sleep(seconds + 1.0)  # woken a second late

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("no answer", request=request)

    time_ = LateWaking()
    client = mock_client(slow, monotonic=time_, sleep=time_.sleep, deadline=0.4, max_attempts=4)

    with pytest.raises(PagerDutyUnavailable, match="timed out") as raised:
        await client.oncalls(user_ids=["PU00001"])

    assert "budget" not in raised.value.message
    await client.aclose()


# --- under load: shared calls, the user sweep, the budget's queue -------------------------------


async def test_lookups_for_different_users_waiting_together_share_one_call_and_each_keeps_only_their_own(
    pd_sim: PagerDutySimulator, make_pd_client: ClientFactory
) -> None:
    users = [pd_sim.add_user(f"u{n}@example.com", f"User {n}") for n in range(12)]
    mine = {u: pd_sim.add_incident(f"Incident of {u}", assigned_to=[u], acknowledged_by=[u]).id for u in users}
    # acknowledged by users[0] but assigned only to users[1]: users[0] is not on it, as with one user asked
    helped = pd_sim.add_incident("Helped out", assigned_to=[users[1]], acknowledged_by=[users[0]])
    helped.assigned_to = [users[1]]  # (the simulator assigns whoever acknowledges; PagerDuty may not)
    pd_sim.slow_next(None, seconds=0.2)  # calls overlap, so lookups arriving meanwhile queue for the next
    client = make_pd_client()

    found = await asyncio.gather(*(client.acknowledged_incidents(u) for u in users))

    assert [[i.id for i in f] for f in found] == [[mine[u]] for u in users]
    calls = pd_sim.requests_to("/incidents")
    assert len(calls) < len(users)  # at most 4 in flight; the rest shared
    assert sorted(u for c in calls for u in c.query.getall("user_ids[]")) == sorted(users)
    assert all(c.query.getall("statuses[]") == ["acknowledged"] for c in calls)


async def test_a_burst_of_new_users_is_answered_by_one_sweep_of_the_user_list(
    pd_sim: PagerDutySimulator, make_pd_client: ClientFactory
) -> None:
    emails = [f"burst{n:03d}@example.com" for n in range(250)]
    ids = {e: pd_sim.add_user(e, e) for e in emails}
    client = make_pd_client()

    found = await asyncio.gather(*(client.user_by_email(e.upper()) for e in emails))

    assert [u.id if u else None for u in found] == [ids[e] for e in emails]
    calls = pd_sim.requests_to("/users")
    assert len(calls) <= 11 + 3  # the first few asked one by one, then 3 pages of 100 (251 users)
    assert sum("query" not in c.query for c in calls) == 3
    assert await client.user_by_email("nobody@example.com") is None  # not in PagerDuty: asked, not assumed
    assert pd_sim.requests_to("/users")[-1].query.get("query") == "nobody@example.com"


async def test_a_used_up_budget_queues_the_call_and_tells_the_caller_once_instead_of_refusing(
    pd_sim: PagerDutySimulator, make_pd_client: ClientFactory
) -> None:
    client = make_pd_client(requests_per_minute=2, budget_window=4.0, queue_seconds=90.0)  # a 4-second "minute"
    alice = pd_sim.add_user("alice@example.com", "Alice")
    await client.ping()
    await client.ping()
    told: list[str] = []

    async def flow() -> list[Incident]:
        notify_when_queued(lambda: told.append("queued"))
        return await client.acknowledged_incidents(alice)

    started = time.monotonic()
    assert await flow() == []
    waited = time.monotonic() - started

    assert 3.0 <= waited < 8.0  # queued behind the two pings' slots, then sent
    assert told == ["queued"]  # once, after QUEUE_NOTE_SECONDS
    assert len(pd_sim.requests) == 3


async def test_a_paced_limiter_starts_its_burst_at_once_then_one_per_interval_never_over_its_budget() -> None:
    time_ = FakeTime(start=0.0)
    limiter = SlidingWindowLimiter(60, window=60.0, burst=5, monotonic=time_, sleep=time_.sleep)  # one a second
    started: list[float] = []
    for _ in range(20):  # all asking at t=0
        await limiter.acquire(deadline=time_.now + 1000)
        started.append(time_.now)
    assert started[:5] == [0.0] * 5  # the burst
    assert started[5:] == [float(n) for n in range(1, 16)]  # then paced at the budget's average rate
    assert limiter.next_free() == 1.0
    # an idle spell refills the burst, and the sliding window still caps any 60 s
    time_.now = 100.0
    assert limiter.next_free() == 0.0
    for arrival in [100, 100, 100, 100, 100, 100, 101, 150, 150, 150]:
        time_.now = max(time_.now, float(arrival))
        await limiter.acquire(deadline=time_.now + 1000)
        started.append(time_.now)
    for t in started:
        assert sum(1 for s in started if t <= s < t + 60) <= 60


async def test_lookups_under_a_spent_budget_share_calls_and_none_waits_for_the_window(
    pd_sim: PagerDutySimulator, make_pd_client: ClientFactory
) -> None:
    # a 6-second "minute" of 60 calls: 10 at once, then one every 0.1 s
    client = make_pd_client(requests_per_minute=60, budget_window=6.0, queue_seconds=30.0)
    users = [pd_sim.add_user(f"user{n}@example.com", f"User {n}") for n in range(16)]
    for _ in range(10):
        await client.ping()  # the burst is spent
    before = len(pd_sim.requests)
    slowest = 0.0
    done = 0
    stop = time.monotonic() + 2.0

    async def requester(user: str) -> None:  # like a flow: look up, then ask again at once
        nonlocal slowest, done
        while time.monotonic() < stop:
            started = time.monotonic()
            assert await client.acknowledged_incidents(user) == []
            slowest = max(slowest, time.monotonic() - started)
            done += 1

    await asyncio.gather(*(requester(u) for u in users))
    calls = len(pd_sim.requests) - before
    assert done >= 16 * 10  # each of the 16 looked up at every slot, about
    assert calls <= 2.0 / 0.1 + 4  # one call per paced slot, whoever asked meanwhile sharing it
    assert slowest < 1.0  # nobody waited for the 6-second window to slide
