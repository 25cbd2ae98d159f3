"""The PagerDuty simulator can enforce PagerDuty's per-token rate limit, as the bench's burst (P3) needs."""

from __future__ import annotations

import httpx

from bot.runtime.simulators.pagerduty import PagerDutySimulator


async def test_past_the_limit_a_minute_it_answers_429_with_the_ratelimit_headers() -> None:
    async with PagerDutySimulator(token="t", rate_limit_per_minute=3) as pd:
        pd.add_user("alice@example.com", "Alice")
        headers = {"Authorization": "Token token=t", "Accept": "application/vnd.pagerduty+json;version=2"}
        async with httpx.AsyncClient(base_url=pd.base_url, headers=headers) as client:
            answers = [await client.get("/users") for _ in range(5)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429, 429]
    limited = answers[3]
    assert limited.json()["error"]["code"] == 2020
    assert limited.headers["ratelimit-limit"] == "3"
    assert limited.headers["ratelimit-remaining"] == "0"
    assert 0 <= int(limited.headers["ratelimit-reset"]) <= 60
    assert pd.rate_limited == 2
    assert len(pd.requests) == 5  # refused requests are recorded too


async def test_without_a_limit_it_never_refuses() -> None:
    async with (
        PagerDutySimulator(token="t") as pd,
        httpx.AsyncClient(base_url=pd.base_url, headers={"Authorization": "Token token=t"}) as client,
    ):
        statuses = {(await client.get("/users")).status_code for _ in range(20)}
    assert statuses == {200}
    assert pd.rate_limited == 0
