"""Duplicates through the real entry points count once: double clicks, rival approvers, Slack retries
and replays, duplicate webhook deliveries, double-submitted verification pages, and revokes racing
each other. Each runs on SQLite, on PostgreSQL, and on two replicas sharing one PostgreSQL database
(the copies then go to different replicas). What is counted: decisions and audit rows, grants,
provisioner calls, revokes, authentication transactions, PagerDuty incidents (the Events simulator)
and mirror messages; every one must be exactly one."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import pytest

from bot.core.domain import GrantStatus
from bot.runtime.simulators import slack_requests
from bot.runtime.simulators.stage import text_of
from tests.reliability.fuzz_support import (
    BACKENDS,
    MIRROR_CHANNEL,
    Answer,
    Cluster,
    cluster_on,
    error_tracebacks,
    incident_webhook,
    later,
    leaks,
    slack_headers,
    webhook_headers,
)

_REQUEST_ID = re.compile(r"\br-[a-z0-9]{8}\b")
_GRANT_ID = re.compile(r"\bg-[a-z0-9]{8}\b")
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')
ROUNDS = 5  # races are won by timing: each is run a few times


@pytest.fixture(params=BACKENDS)
async def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Cluster]:
    async with cluster_on(str(request.param), tmp_path, provisioner_delay=0.05) as cluster:
        yield cluster
    # A duplicate or a lost race is a normal outcome: never an ERROR with a traceback, never a leak.
    assert error_tracebacks(cluster.log.lines) == []
    assert leaks(cluster.log.lines, tokens=cluster.link_tokens()) == []


def other(cluster: Cluster, instance: int) -> int:
    """The replica a second copy goes to (the same one when there is only one)."""
    return (instance + 1) % cluster.instances


async def pending_request(cluster: Cluster, resource: str = "prod-k8s") -> str:
    alice, bob = cluster.person("alice"), cluster.person("bob")
    before = len(cluster.dms(bob))
    text = await cluster.command(alice, f"{resource} 1h debugging a stuck pod")
    assert "Waiting for approval" in text, text
    await cluster.slack.wait_for(lambda: len(cluster.dms(bob)) > before)
    found = _REQUEST_ID.search(cluster.dms(bob)[-1])
    assert found is not None, cluster.dms(bob)[-1]
    return found.group(0)


async def grants_for_request(cluster: Cluster, request_id: str) -> list[str]:
    grants = await cluster.parts().store.grants.list_for("alice@example.com", include_ended=True)
    return [g.id for g in grants if g.request_id == request_id]


def answers_on(cluster: Cluster, tokens: Sequence[str]) -> list[str]:
    """What Ackgate posted on these response_urls."""
    return [text_of(r) for token in tokens for r in cluster.slack.responses.get(token, [])]


def granted_dms(cluster: Cluster, grant_id: str) -> list[str]:
    return [t for t in cluster.dms(cluster.person("alice")) if grant_id in t and "Access granted" in t]


async def eventually(cluster: Cluster, condition: Callable[[], bool]) -> None:
    """Wait (within the simulator's bound) for ``condition``; the assertion after it says what was missing."""
    with contextlib.suppress(TimeoutError):
        await cluster.slack.wait_for(condition)


async def at_once(*work: object) -> list[object]:
    return list(await asyncio.gather(*work))  # type: ignore[call-overload]


# --- clicks -------------------------------------------------------------------------------------


async def test_a_double_click_on_approve_decides_grants_and_provisions_once(cluster: Cluster) -> None:
    """Two clicks at once: alternately the very same signed bytes twice, and two separate payloads."""
    bob = cluster.person("bob")
    for round_ in range(ROUNDS):
        request_id = await pending_request(cluster)
        if round_ % 2 == 0:
            body, token = cluster.click_body(bob, "approve", request_id)
            headers = slack_headers(body)
            tokens = [token]
            await at_once(*(cluster.slack_post(body, headers=headers, instance=i % cluster.instances) for i in (0, 1)))
        else:
            clicks = [cluster.click_body(bob, "approve", request_id) for _ in (0, 1)]
            tokens = [token for _, token in clicks]
            await at_once(
                *(cluster.slack_post(body, instance=i % cluster.instances) for i, (body, _) in enumerate(clicks))
            )
        await eventually(
            cluster, lambda seen=tuple(tokens): any("You approved" in t for t in answers_on(cluster, seen))
        )
        await cluster.settle(0.3)
        shown = answers_on(cluster, tokens)
        assert sum("You approved" in t for t in shown) == 1, shown
        assert await cluster.audit_count("access.approved", request_id) == 1
        [grant_id] = await grants_for_request(cluster, request_id)
        assert cluster.provisioner_calls("grant", grant_id) == 1
        await eventually(cluster, lambda grant=grant_id: bool(granted_dms(cluster, grant)))
        granted = granted_dms(cluster, grant_id)
        assert len(granted) == 1, granted


async def test_rival_approvers_clicking_at_once_make_one_decision(cluster: Cluster) -> None:
    bob, carol = cluster.person("bob"), cluster.person("carol")
    for _ in range(ROUNDS):
        request_id = await pending_request(cluster)

        answers = await at_once(
            cluster.click(bob, "approve", request_id, instance=0),
            cluster.click(carol, "deny", request_id, instance=other(cluster, 0)),
        )

        decided = sum(("You approved" in str(a)) or ("You denied" in str(a)) for a in answers)
        assert decided == 1, answers
        decisions = await cluster.audit_count("access.approved", request_id) + await cluster.audit_count(
            "access.denied", request_id
        )
        assert decisions == 1
        grants = await grants_for_request(cluster, request_id)
        assert len(grants) <= 1
        assert sum(cluster.provisioner_calls("grant", g) for g in grants) == len(grants)


# --- Slack retries and replays ------------------------------------------------------------------


async def _retried(cluster: Cluster, text: str, *, retry_header: bool) -> list[Answer]:
    """One signed ``/access`` body sent as Slack does when it retries (or an attacker replays it):
    the very same bytes and signature, three times, spread over the replicas."""
    body, _ = cluster.command_body(cluster.person("alice"), text)
    headers = slack_headers(body)
    answers = [await cluster.slack_post(body, headers=headers, instance=0)]
    for attempt in (1, 2):
        extra = {"X-Slack-Retry-Num": str(attempt), "X-Slack-Retry-Reason": "http_timeout"} if retry_header else {}
        await asyncio.sleep(0.05)
        answers.append(
            await cluster.slack_post(body, headers={**headers, **extra}, instance=attempt % cluster.instances)
        )
    await cluster.settle(0.5)
    return answers


@pytest.mark.parametrize("retry_header", [True, False], ids=["slack-retries", "plain-replay"])
async def test_a_retried_or_replayed_access_request_grants_once(cluster: Cluster, retry_header: bool) -> None:
    alice = cluster.person("alice")
    cluster.acknowledged_incident(alice)

    answers = await _retried(cluster, "prod-db 1h replication lag", retry_header=retry_header)

    assert answers[0].status == 200
    # A retry is acknowledged (Slack stops retrying); a replay may be refused; neither runs again.
    assert all(a.status == 200 or (not retry_header and a.status == 401) for a in answers[1:]), answers
    grants = await cluster.parts().store.grants.list_for(alice.email, include_ended=True)
    assert len(grants) == 1, f"one request sent 3 times made {len(grants)} grants"
    assert cluster.provisioner_calls("grant") == 1
    assert await cluster.audit_count("access.requested") == 1
    assert await cluster.audit_count("grant.provisioned") == 1


@pytest.mark.parametrize("retry_header", [True, False], ids=["slack-retries", "plain-replay"])
async def test_a_retried_or_replayed_auth_request_opens_one_transaction_and_one_incident(
    cluster: Cluster, retry_header: bool
) -> None:
    bob = cluster.person("bob")

    await _retried(cluster, f"auth <@{bob.user_id}|bob> resetting your password", retry_header=retry_header)

    assert await cluster.audit_count("auth.requested") == 1
    triggers = [e for e in cluster.events.events if e.get("event_action") == "trigger"]
    assert len(triggers) == 1, triggers
    assert len(cluster.events.alerts) == 1
    asked = [t for t in cluster.dms(bob) if "asks you to confirm your identity" in t]
    assert len(asked) == 1, asked


async def test_a_retried_request_form_submission_creates_one_request(cluster: Cluster) -> None:
    alice = cluster.person("alice")
    values = slack_requests.form_state(resource="prod-k8s", duration="1h", reason="stuck pod")
    body = slack_requests.view_submission_body(user_id=alice.user_id, values=values)
    headers = slack_headers(body)
    for attempt in (0, 1, 2):
        extra = {"X-Slack-Retry-Num": str(attempt), "X-Slack-Retry-Reason": "http_timeout"} if attempt else {}
        answer = await cluster.slack_post(body, headers={**headers, **extra}, instance=attempt % cluster.instances)
        assert answer.status == 200, answer
    await cluster.settle(0.5)

    requests = await cluster.parts().store.requests.list_for(alice.email)
    assert len(requests) == 1, f"one form submission sent 3 times made {len(requests)} requests"
    assert await cluster.audit_count("access.requested") == 1


# --- webhooks -----------------------------------------------------------------------------------


async def test_the_same_webhook_delivered_twice_at_once_is_processed_exactly_once(cluster: Cluster) -> None:
    """PagerDuty's retry racing its original: each incident is mirrored, with one message, never lost."""
    count = 10
    bodies = [
        incident_webhook(
            "incident.triggered",
            incident_id=f"QDUPINCIDENT{n:03d}",
            event_id=f"01DUPEVENT{n:03d}",
            status="triggered",
            number=1000 + n,
            title=f"Duplicate delivery {n}",
        )
        for n in range(count)
    ]

    answers = await at_once(
        *(
            cluster.webhook(body, instance=copy % cluster.instances, webhook_id=f"whk-{n}")
            for n, body in enumerate(bodies)
            for copy in (0, 1)
        )
    )

    assert all(isinstance(a, Answer) and a.status == 202 for a in answers), answers
    await cluster.settle(1.0)
    messages = cluster.channel_messages(MIRROR_CHANNEL)
    posted = [sum(f"Duplicate delivery {n}" in m for m in messages) for n in range(count)]
    stored = [await cluster.parts().store.mirrors.get(f"QDUPINCIDENT{n:03d}") for n in range(count)]
    never_processed = sum(m is None for m in stored)
    assert (never_processed, sum(p != 1 for p in posted)) == (0, 0), (
        f"of {count} incidents delivered twice at once, {never_processed} were never processed; "
        f"mirror messages per incident: {posted}"
    )


async def test_triggered_and_acknowledged_arriving_at_once_give_one_mirror_message(cluster: Cluster) -> None:
    count = 10
    work = []
    for n in range(count):
        for status, event, second in (
            ("triggered", "incident.triggered", "00"),
            ("acknowledged", "incident.acknowledged", "05"),
        ):
            body = incident_webhook(
                event,
                incident_id=f"QPAIRINCIDENT{n:03d}",
                event_id=f"01PAIR{n:03d}{status}",
                status=status,
                number=2000 + n,
                title=f"New incident {n}",
                at=f"2026-11-23T12:00:{second}Z",
            )
            work.append(cluster.webhook(body, instance=(0 if status == "triggered" else 1) % cluster.instances))

    await at_once(*work)

    await cluster.settle(1.0)
    messages = cluster.channel_messages(MIRROR_CHANNEL)
    posted = [sum(f"New incident {n}" in m for m in messages) for n in range(count)]
    assert posted == [1] * count, f"mirror messages per incident: {posted}"


async def test_a_resolved_webhook_delivered_twice_revokes_the_incident_grant_once(cluster: Cluster) -> None:
    alice = cluster.person("alice")
    incident_id = cluster.acknowledged_incident(alice)
    text = await cluster.command(alice, "prod-db 1h replication lag")
    found = _GRANT_ID.search(text)
    assert found is not None, text
    grant_id = found.group(0)
    body = incident_webhook("incident.resolved", incident_id=incident_id, event_id="01RESOLVED", status="resolved")
    headers = webhook_headers(body, webhook_id="whk-resolved")

    await at_once(
        cluster.send("POST", "/webhooks/pagerduty", body=body, headers=headers, instance=0),
        cluster.send("POST", "/webhooks/pagerduty", body=body, headers=headers, instance=other(cluster, 0)),
    )

    await cluster.settle(1.0)
    grant = await cluster.parts().store.grants.get(grant_id)
    assert grant is not None
    assert grant.status is GrantStatus.ENDED, f"the incident resolved, the grant is still {grant.status.value}"
    assert cluster.provisioner_calls("revoke", grant_id) == 1
    assert await cluster.audit_count("grant.revoked", grant_id) == 1


async def test_a_grant_let_through_after_the_resolve_by_a_cached_lookup_ends_at_the_second_sweep(
    cluster: Cluster,
) -> None:
    """Replica B keeps alice's acknowledgement a few seconds; the resolve reaches replica A. A
    request on B in those seconds is granted from B's cache; the resolve, handed in again from the
    inbox 30 s later, ends it. On one replica the webhook dropped the cache: the request is refused."""
    alice = cluster.person("alice")
    incident_id = cluster.acknowledged_incident(alice)
    b = other(cluster, 0)
    first = _GRANT_ID.search(await cluster.command(alice, "prod-db 1h replication lag", instance=b))
    assert first is not None
    cluster.pd.resolve(incident_id)
    body = incident_webhook("incident.resolved", incident_id=incident_id, event_id="01RESOLVED2", status="resolved")
    answer = await cluster.send(
        "POST", "/webhooks/pagerduty", body=body, headers=webhook_headers(body, webhook_id="whk-r2"), instance=0
    )
    assert answer.status == 202
    await cluster.settle(0.5)

    text = await cluster.command(alice, "prod-db 30m still on it", instance=b)

    if cluster.instances == 1:
        assert "Access to prod-db was not granted" in text, text
        return
    second = _GRANT_ID.search(text)
    assert second is not None, text
    assert (await cluster.parts().store.grants.get(second.group(0))).status is GrantStatus.ACTIVE  # type: ignore[union-attr]
    cluster.clock.advance(later(31))
    for instance in range(cluster.instances):
        cluster.parts(instance).scheduler.wake()
    await eventually(cluster, lambda: cluster.provisioner_calls("revoke", second.group(0)) > 0)
    await cluster.settle(0.5)
    grant = await cluster.parts().store.grants.get(second.group(0))
    assert grant is not None and grant.status is GrantStatus.ENDED, grant
    assert str(grant.end_reason) == "incident_resolved"
    assert cluster.provisioner_calls("revoke", second.group(0)) == 1
    assert await cluster.audit_count("grant.revoked", second.group(0)) == 1


# --- revokes ------------------------------------------------------------------------------------


async def test_revoke_clicked_twice_at_once_reaches_the_provisioner_once(cluster: Cluster) -> None:
    alice = cluster.person("alice")
    cluster.acknowledged_incident(alice)
    for _ in range(ROUNDS):
        text = await cluster.command(alice, "prod-db 1h replication lag")
        found = _GRANT_ID.search(text)
        assert found is not None, text
        grant_id = found.group(0)

        await at_once(
            cluster.click(alice, "revoke", grant_id, instance=0),
            cluster.command(alice, f"revoke {grant_id}", instance=other(cluster, 0)),
        )

        await cluster.settle(0.3)
        assert cluster.provisioner_calls("revoke", grant_id) == 1
        assert await cluster.audit_count("grant.revoked", grant_id) == 1


async def test_an_expiry_swept_by_every_replica_at_once_is_revoked_once(cluster: Cluster) -> None:
    alice = cluster.person("alice")
    cluster.acknowledged_incident(alice)
    grant_ids = []
    for _ in range(4):
        text = await cluster.command(alice, "prod-db 1h replication lag")
        found = _GRANT_ID.search(text)
        assert found is not None, text
        grant_ids.append(found.group(0))

    cluster.clock.advance(later(3601))
    for _ in range(3):  # the schedulers wake again while the (slow) provisioner calls run
        for instance in range(cluster.instances):
            cluster.parts(instance).scheduler.wake()
        await asyncio.sleep(0.02)
    await at_once(*(cluster.parts(i).scheduler.run_once() for i in range(cluster.instances)))

    await cluster.settle(1.0)
    for grant_id in grant_ids:
        grant = await cluster.parts().store.grants.get(grant_id)
        assert grant is not None and grant.status is GrantStatus.ENDED, grant
        assert cluster.provisioner_calls("revoke", grant_id) == 1, grant_id
        assert await cluster.audit_count("grant.expired", grant_id) == 1


# --- the verification page ----------------------------------------------------------------------


async def test_the_same_verify_submitted_twice_at_once_decides_once(cluster: Cluster) -> None:
    alice, bob = cluster.person("alice"), cluster.person("bob")
    link = await cluster.ask_for_verification(alice, bob)
    path = link.removeprefix(cluster.url)
    page = await cluster.send("GET", path)
    found = _CSRF.search(page.text)
    assert found is not None, page.text
    form = f"csrf={found.group(1)}&decision=verify".encode()

    def post(instance: int) -> object:
        headers = {"Content-Type": "application/x-www-form-urlencoded", "Origin": cluster.urls[instance]}
        return cluster.send("POST", path, body=form, headers=headers, instance=instance)

    answers = await at_once(post(0), post(other(cluster, 0)))

    statuses = sorted(a.status for a in answers if isinstance(a, Answer))
    assert statuses[0] == 200 and all(s < 500 for s in statuses), answers
    await cluster.settle(0.5)
    assert await cluster.audit_count("auth.verified") == 1
    resolves = [e for e in cluster.events.events if e.get("event_action") == "resolve"]
    assert len(resolves) <= 1, resolves
    told = [t for t in cluster.dms(alice) if "Identity verified by bob@example.com" in t]
    assert len(told) == 1, told
