"""The shared retry policy, wait-hint reader, coalescing cache and the PagerDuty budget/connection order."""

from __future__ import annotations

import asyncio
import math

import httpx
import pytest
from pydantic import SecretStr

from bot.adapters.cache import CoalescingCache
from bot.adapters.pagerduty import MAX_CONNECTIONS, PagerDutyClient
from bot.adapters.retrying import Backoff, Retryable, retry, wait_hint
from bot.core.errors import PagerDutyUnavailable
from bot.runtime.simulators.pagerduty import PagerDutySimulator
from tests.fakes import pagerduty_fixtures
from tests.fakes.pagerduty_fixtures import TOKEN, ClientFactory, FakeTime

pd_sim = pagerduty_fixtures.pd_sim
make_pd_client = pagerduty_fixtures.make_pd_client
fake_time = pagerduty_fixtures.fake_time


# --- wait hints -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "2"}, 2.0),
        ({"retry-after": ["1.5"]}, 1.5),  # slack_sdk's shape: a list per header
        ({"ratelimit-reset": "7", "Retry-After": "2"}, 7.0),  # PagerDuty's own header first
        ({"Retry-After": "Wed, 21 Oct 2026 07:28:00 GMT"}, None),  # an HTTP date: plain backoff
        ({"Retry-After": "inf"}, None),  # would wait forever
        ({"Retry-After": "nan"}, None),
        ({"Retry-After": "-3"}, 0.0),
        ({}, None),
    ],
)
def test_wait_hint_reads_numbers_only(headers: dict[str, object], expected: float | None) -> None:
    assert wait_hint(headers) == expected  # type: ignore[arg-type]


def test_backoff_doubles_caps_and_takes_a_longer_hint() -> None:
    policy = Backoff(max_attempts=9, first=0.5, cap=30.0, hint_cap=30.0)
    assert [policy.delay(n) for n in range(1, 9)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert policy.delay(1, 10.0) == 10.0 and policy.delay(3, 0.1) == 2.0 and policy.delay(1, 600.0) == 30.0
    exact = Backoff(max_attempts=3, first=0.1, hint_replaces=True)
    assert exact.delay(2, 0.0) == 0.0 and exact.delay(2) == 0.2 and math.isinf(Backoff(1, 1.0).cap)


async def test_retry_gives_up_before_a_wait_would_cross_the_deadline(fake_time: FakeTime) -> None:
    calls = 0

    async def attempt() -> str:
        nonlocal calls
        calls += 1
        raise Retryable(f"failure {calls}")

    with pytest.raises(Retryable, match="failure 3"):
        await retry(
            attempt,
            policy=Backoff(max_attempts=10, first=1.0),
            sleep=fake_time.sleep,
            monotonic=fake_time,
            deadline=fake_time() + 3.5,
        )
    assert fake_time.sleeps == [1.0, 2.0]  # the next wait (4 s) would pass the deadline


async def test_retry_numbers_and_waits_the_first_failure_like_every_later_one(fake_time: FakeTime) -> None:
    calls = 0
    retries: list[tuple[int, str, float]] = []

    async def attempt() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise Retryable(f"failure {calls}", wait=1.5 if calls == 1 else None)
        return "answered"

    answer = await retry(
        attempt,
        policy=Backoff(max_attempts=4, first=1.0),
        sleep=fake_time.sleep,
        monotonic=fake_time,
        deadline=fake_time() + 10,
        on_retry=lambda n, failure, delay: retries.append((n, failure.reason, delay)),
    )
    assert (answer, calls) == ("answered", 3)  # each attempt made once
    assert retries == [(1, "failure 1", 1.5), (2, "failure 2", 2.0)]  # the first one's hint, then backoff
    assert fake_time.sleeps == [1.5, 2.0]


async def test_a_single_attempt_policy_gives_up_after_the_first_failure(fake_time: FakeTime) -> None:
    calls = 0

    async def attempt() -> None:
        nonlocal calls
        calls += 1
        raise Retryable("once")

    with pytest.raises(Retryable, match="once"):
        await retry(attempt, policy=Backoff(max_attempts=1, first=1.0), sleep=fake_time.sleep, monotonic=fake_time)
    assert (calls, fake_time.sleeps) == (1, [])


async def test_retry_lets_other_errors_through_at_once(fake_time: FakeTime) -> None:
    async def attempt() -> None:
        raise ValueError("not worth retrying")

    with pytest.raises(ValueError):
        await retry(attempt, policy=Backoff(max_attempts=5, first=1.0), sleep=fake_time.sleep)
    assert fake_time.sleeps == []


# --- the coalescing cache ---------------------------------------------------------------------


async def test_identical_concurrent_lookups_share_one_call_and_failures_reach_all_uncached(
    fake_time: FakeTime,
) -> None:
    cache = CoalescingCache(monotonic=fake_time)
    gate = asyncio.Event()
    calls = 0

    async def failing() -> str:
        nonlocal calls
        calls += 1
        await gate.wait()
        raise RuntimeError("down")

    waiters = [asyncio.create_task(cache.get("k", failing, ttl=60)) for _ in range(5)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert calls == 1 and all(isinstance(r, RuntimeError) for r in results)

    async def working() -> str:
        nonlocal calls
        calls += 1
        return "v"

    assert await cache.get("k", working, ttl=60) == "v"  # the failure was not cached
    assert await cache.get("k", working, ttl=60) == "v" and calls == 2
    fake_time.advance(61)
    assert await cache.get("k", working, ttl=60) == "v" and calls == 3
    await cache.aclose()


async def test_a_cancelled_waiter_does_not_cancel_the_shared_lookup() -> None:
    cache = CoalescingCache()
    gate = asyncio.Event()

    async def slow() -> str:
        await gate.wait()
        return "v"

    first = asyncio.create_task(cache.get("k", slow, ttl=0))
    second = asyncio.create_task(cache.get("k", slow, ttl=0))
    await asyncio.sleep(0)
    first.cancel()
    gate.set()
    assert await second == "v"
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_clear_forgets_what_is_kept_and_a_lookup_in_flight_is_neither_kept_nor_joined(
    fake_time: FakeTime,
) -> None:
    cache = CoalescingCache(monotonic=fake_time)
    gate = asyncio.Event()
    calls: list[str] = []

    async def load(value: str) -> str:
        calls.append(value)
        if value == "old":
            await gate.wait()
        return value

    assert await cache.get("k", lambda: load("kept"), ttl=60) == "kept"
    cache.clear()
    assert await cache.get("k", lambda: load("new"), ttl=60) == "new"  # the kept value went
    cache.forget("k")
    old = asyncio.create_task(cache.get("k", lambda: load("old"), ttl=60))
    await asyncio.sleep(0)
    cache.clear()  # while "old" is being looked up
    after = await cache.get("k", lambda: load("after"), ttl=60)
    gate.set()
    assert await old == "old"  # its own caller still has its answer
    assert after == "after"  # a caller after clear() did not join the lookup begun before it
    assert await cache.get("k", lambda: load("never"), ttl=60) == "after"  # "old" was not kept over it
    assert calls == ["kept", "new", "old", "after"]
    await cache.aclose()


# --- PagerDuty: users live long, budget slots go to calls sent ----------------------------------


async def test_users_are_cached_far_longer_than_on_calls_and_not_found_briefly(
    pd_sim: PagerDutySimulator, make_pd_client: ClientFactory, fake_time: FakeTime
) -> None:
    pd_sim.add_user("alice@example.com", "Alice")
    client = make_pd_client(time=fake_time)  # the defaults: on-calls 30 s, users an hour

    await client.user_by_email("alice@example.com")
    assert await client.user_by_email("nobody@example.com") is None
    await client.oncalls(user_ids=["P1"])
    fake_time.advance(31)
    await client.user_by_email("alice@example.com")
    pd_sim.add_user("nobody@example.com", "Newly Added")
    assert await client.user_by_email("nobody@example.com") is not None  # "not found" was kept only 30 s
    await client.oncalls(user_ids=["P1"])
    assert len(pd_sim.requests_to("/users")) == 3  # alice once, nobody twice
    assert len(pd_sim.requests_to("/oncalls")) == 2


async def test_a_budget_slot_is_spent_only_on_a_call_actually_sent() -> None:
    in_flight = 0
    most = 0
    seen = 0
    hold = asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, most, seen
        seen += 1
        in_flight += 1
        most = max(most, in_flight)
        try:
            if not hold.is_set():
                await hold.wait()
            return httpx.Response(200, json={"incident": _incident(request.url.path.rsplit("/", 1)[-1])})
        finally:
            in_flight -= 1

    budget = MAX_CONNECTIONS + 10
    client = PagerDutyClient(
        SecretStr(TOKEN),
        base_url="https://api.pagerduty.test",
        transport=httpx.MockTransport(handler),
        deadline=0.3,
        max_attempts=1,
        requests_per_minute=budget,
        budget_burst=budget,  # unpaced: this is about which calls take a slot, not when
    )
    # more lookups than connections, all stuck: the extra ones time out waiting for a connection
    stuck = await asyncio.gather(
        *(client.incident(f"P{n}") for n in range(MAX_CONNECTIONS + 5)), return_exceptions=True
    )
    assert all(isinstance(r, PagerDutyUnavailable) for r in stuck)
    assert most == MAX_CONNECTIONS
    assert most == MAX_CONNECTIONS  # the rest waited for a connection and timed out unsent
    hold.set()
    sent_while_stuck = seen
    # only the calls that were sent took budget: what is left is exactly the budget minus those
    allowed = 0
    for n in range(budget - sent_while_stuck):
        await client.incident(f"Q{n}")
        allowed += 1
    with pytest.raises(PagerDutyUnavailable, match="request budget"):
        await client.incident("Q-over")
    assert sent_while_stuck < MAX_CONNECTIONS + 5
    assert allowed == budget - sent_while_stuck
    await client.aclose()


def _incident(incident_id: str) -> dict[str, object]:
    return {
        "id": incident_id,
        "incident_number": 1,
        "title": "t",
        "status": "triggered",
        "service": {"id": "S1", "summary": "svc"},
        "acknowledgements": [],
    }
