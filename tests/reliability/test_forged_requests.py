"""Forged and replayed requests through the real entry points, the authorization matrix, and the logs.

- Unsigned, badly signed and stale Slack requests, and unsigned or badly signed webhooks, get a 401
  (or 400 for a missing signature on a webhook) and nothing is stored, executed or posted.
- A captured, validly signed request replayed within Slack's five minutes gets a 401 or the dedup
  answer, and runs once.
- For each action (approve, deny, revoke, extend, an admin command, the verification page) and each
  actor (requester, eligible approver, non-approver, admin, holder, other user), what the server
  decides follows the policy, whatever the button payload claims about who clicked.
- No log line, as ``ackgate serve`` would write it, carries a secret, a link token or a request body.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlencode

import pytest

from bot.core.domain import GrantStatus, RequestStatus
from bot.core.org_settings import INTEGRATION_KEY as STORED_KEY
from bot.runtime.simulators import slack_requests
from handlers.slack.blocks import KEY_FORM_CALLBACK_ID
from tests.reliability.fuzz_support import (
    INTEGRATION_KEY,
    MIRROR_CHANNEL,
    Cluster,
    Person,
    cluster_on,
    incident_webhook,
    leaks,
    pagerduty_signature,
    slack_headers,
    webhook_headers,
)

_REQUEST_ID = re.compile(r"\br-[a-z0-9]{8}\b")
_GRANT_ID = re.compile(r"\bg-[a-z0-9]{8}\b")
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with cluster_on("sqlite", tmp_path) as cluster:
        yield cluster
    assert leaks(cluster.log.lines, tokens=cluster.link_tokens()) == [], "a log line leaks or overflows"


async def nothing_happened(cluster: Cluster) -> list[str]:
    """What a refused request must not have left behind."""
    found = []
    audit = await cluster.audit()
    if audit:
        found.append(f"audit rows {[e.kind for e in audit]}")
    if cluster.provisioner.calls:
        found.append(f"provisioner calls {cluster.provisioner.calls}")
    if cluster.slack.responses:
        found.append(f"response_url posts {list(cluster.slack.responses)}")
    posted = {channel: len(ms) for channel, ms in cluster.slack.messages.items() if ms}
    if posted:
        found.append(f"messages posted {posted}")
    if cluster.events.events:
        found.append(f"PagerDuty events {len(cluster.events.events)}")
    return found


# --- forged Slack requests ------------------------------------------------------------------


def _forgeries(body: str) -> dict[str, dict[str, str]]:
    now = int(time.time())
    good = slack_headers(body)
    return {
        "unsigned": {"Content-Type": "application/x-www-form-urlencoded"},
        "no timestamp": {k: v for k, v in good.items() if k != "X-Slack-Request-Timestamp"},
        "no signature": {k: v for k, v in good.items() if k != "X-Slack-Signature"},
        "wrong secret": slack_headers(body, secret="not-the-signing-secret"),
        "another body's signature": {**good, "X-Slack-Signature": slack_headers(body + "&x=1")["X-Slack-Signature"]},
        "stale (6 minutes)": slack_headers(body, timestamp=now - 360),
        "from the future (6 minutes)": slack_headers(body, timestamp=now + 360),
        "v1 scheme": {**good, "X-Slack-Signature": good["X-Slack-Signature"].replace("v0=", "v1=")},
        "truncated signature": {**good, "X-Slack-Signature": good["X-Slack-Signature"][:-1]},
        "non-ASCII signature": {**good, "X-Slack-Signature": "v0=" + "é" * 64},
        "timestamp 12abc": {**good, "X-Slack-Request-Timestamp": "12abc"},
        "timestamp 12abc, signed": slack_headers(body, timestamp="12abc"),
    }


@pytest.mark.parametrize("forgery", list(_forgeries("x")))
async def test_a_forged_or_stale_access_request_is_401_and_runs_nothing(cluster: Cluster, forgery: str) -> None:
    alice = cluster.person("alice")
    cluster.acknowledged_incident(alice)
    body, _ = cluster.command_body(alice, "prod-db 1h replication lag")

    answer = await cluster.send("POST", "/slack/events", body=body.encode(), headers=_forgeries(body)[forgery])

    assert answer.status == 401, answer
    await cluster.settle(0.3)
    assert await nothing_happened(cluster) == []
    assert await cluster.parts().store.grants.list_for(alice.email, include_ended=True) == []


@pytest.mark.parametrize("forgery", ["unsigned", "wrong secret", "stale (6 minutes)", "non-ASCII signature"])
async def test_a_forged_approve_click_is_401_and_decides_nothing(cluster: Cluster, forgery: str) -> None:
    alice, bob = cluster.person("alice"), cluster.person("bob")
    text = await cluster.command(alice, "prod-k8s 1h stuck pod")
    request_id = _REQUEST_ID.search(text)
    assert request_id is not None, text
    body, token = cluster.click_body(bob, "approve", request_id.group(0))

    answer = await cluster.send("POST", "/slack/events", body=body.encode(), headers=_forgeries(body)[forgery])

    assert answer.status == 401, answer
    await cluster.settle(0.3)
    request = await cluster.parts().store.requests.get(request_id.group(0))
    assert request is not None and request.status is RequestStatus.PENDING
    assert token not in cluster.slack.responses
    assert cluster.provisioner.calls == []


async def test_a_captured_signed_command_replayed_within_five_minutes_runs_once(cluster: Cluster) -> None:
    alice = cluster.person("alice")
    cluster.acknowledged_incident(alice)
    body, _ = cluster.command_body(alice, "prod-db 1h replication lag")
    headers = slack_headers(body)
    first = await cluster.slack_post(body, headers=headers)
    assert first.status == 200
    await cluster.settle(0.5)

    replays = [await cluster.slack_post(body, headers=headers) for _ in range(3)]

    await cluster.settle(0.5)
    assert all(r.status in (200, 401) for r in replays), replays
    assert len(await cluster.parts().store.grants.list_for(alice.email, include_ended=True)) == 1
    assert cluster.provisioner_calls("grant") == 1
    assert await cluster.audit_count("access.requested") == 1


async def test_a_captured_signed_click_replayed_later_changes_nothing(cluster: Cluster) -> None:
    """Approve then deny are different clicks; the captured deny, replayed, must not undo or redo anything."""
    alice, bob = cluster.person("alice"), cluster.person("bob")
    text = await cluster.command(alice, "prod-k8s 1h stuck pod")
    found = _REQUEST_ID.search(text)
    assert found is not None, text
    body, _ = cluster.click_body(bob, "approve", found.group(0))
    headers = slack_headers(body)
    assert (await cluster.slack_post(body, headers=headers)).status == 200
    await cluster.settle(0.5)

    replays = [await cluster.slack_post(body, headers=headers) for _ in range(2)]

    await cluster.settle(0.5)
    assert all(r.status in (200, 401) for r in replays), replays
    assert await cluster.audit_count("access.approved") == 1
    assert cluster.provisioner_calls("grant") == 1


# --- forged webhooks ------------------------------------------------------------------------


async def test_unsigned_or_badly_signed_webhooks_are_refused_and_store_nothing(cluster: Cluster) -> None:
    body = incident_webhook("incident.triggered", incident_id="QFORGED0000001", event_id="01FORGED", status="triggered")
    good = webhook_headers(body)
    forgeries = {
        "unsigned": {k: v for k, v in good.items() if k != "X-PagerDuty-Signature"},
        "wrong secret": webhook_headers(body, secret="not-the-webhook-secret"),
        "another body's signature": {**good, "X-PagerDuty-Signature": pagerduty_signature(body + b" ")},
        "v0 scheme": {**good, "X-PagerDuty-Signature": good["X-PagerDuty-Signature"].replace("v1=", "v0=")},
        "non-ASCII": {**good, "X-PagerDuty-Signature": "v1=" + "é" * 64},
        "empty": {**good, "X-PagerDuty-Signature": ""},
    }
    answers = {
        name: (await cluster.send("POST", "/webhooks/pagerduty", body=body, headers=headers)).status
        for name, headers in forgeries.items()
    }

    assert answers == {
        "unsigned": 400,
        "wrong secret": 401,
        "another body's signature": 401,
        "v0 scheme": 401,
        "non-ASCII": 401,
        "empty": 400,
    }
    await cluster.settle(0.3)
    assert await cluster.parts().store.mirrors.get("QFORGED0000001") is None
    assert cluster.channel_messages(MIRROR_CHANNEL) == []

    # The genuine delivery still goes through afterwards: the forgeries did not mark it seen.
    assert (await cluster.webhook(body)).status == 202
    await cluster.slack.wait_for(lambda: bool(cluster.channel_messages(MIRROR_CHANNEL)))
    assert len(cluster.channel_messages(MIRROR_CHANNEL)) == 1
    # Replayed later (a captured delivery, or PagerDuty's redelivery): accepted, not processed again.
    [message] = cluster.slack.messages[MIRROR_CHANNEL]
    edits = message.edits
    assert (await cluster.webhook(body)).status == 202
    await cluster.settle(0.3)
    assert len(cluster.slack.messages[MIRROR_CHANNEL]) == 1
    assert cluster.slack.messages[MIRROR_CHANNEL][0].edits == edits


# --- the authorization matrix --------------------------------------------------------------

# alice requests and holds; bob is an eligible approver of prod-k8s; dave approves nothing; erin
# is the Ackgate admin (and approves nothing); frank is just another user.
REQUEST_ACTORS = {
    "requester": "alice",
    "eligible approver": "bob",
    "non-approver": "dave",
    "admin": "erin",
    "other user": "frank",
}
GRANT_ACTORS = {"holder": "alice", "approver": "bob", "non-approver": "dave", "admin": "erin", "other user": "frank"}
LIES = {"username": "bob", "name": "bob", "email": "bob@example.com"}  # what a click may claim about its clicker


def _lying_claims(who: Person) -> dict[str, object]:
    """The payload's own claims point at bob (an approver) or at alice; only ``user.id`` is who clicked."""
    return {
        "user": {"id": who.user_id, **LIES, "team_id": slack_requests.TEAM_ID},
        "message": {"type": "message", "ts": "1700000000.000100", "text": "requested by alice, approve as bob"},
    }


async def _new_request(cluster: Cluster) -> str:
    text = await cluster.command(cluster.person("alice"), "prod-k8s 1h stuck pod")
    found = _REQUEST_ID.search(text)
    assert found is not None, text
    return found.group(0)


async def _new_grant(cluster: Cluster) -> str:
    text = await cluster.command(cluster.person("alice"), "prod-db 1h replication lag")
    found = _GRANT_ID.search(text)
    assert found is not None, text
    return found.group(0)


@pytest.mark.parametrize("decision", ["approve", "deny"])
async def test_only_an_eligible_approver_can_decide_a_request_whatever_the_click_claims(
    cluster: Cluster, decision: str
) -> None:
    wrong = []
    for role, name in REQUEST_ACTORS.items():
        request_id = await _new_request(cluster)
        who = cluster.person(name)

        await cluster.click(who, decision, request_id, **_lying_claims(who))

        request = await cluster.parts().store.requests.get(request_id)
        assert request is not None
        decided = request.status is not RequestStatus.PENDING
        should = role == "eligible approver"
        if decided != should or (decided and request.decided_by != who.email):
            wrong.append(f"{role} {decision}: decided={decided} by {request.decided_by}")
    grants = await cluster.parts().store.grants.list_for("alice@example.com", include_ended=True)
    assert wrong == [], wrong
    assert len(grants) == (1 if decision == "approve" else 0)


async def test_only_the_holder_or_an_admin_can_revoke_a_grant_whatever_the_click_claims(cluster: Cluster) -> None:
    cluster.acknowledged_incident(cluster.person("alice"))
    wrong = []
    for role, name in GRANT_ACTORS.items():
        grant_id = await _new_grant(cluster)
        who = cluster.person(name)

        await cluster.click(who, "revoke", grant_id, **_lying_claims(who))

        grant = await cluster.parts().store.grants.get(grant_id)
        assert grant is not None
        revoked = grant.status is not GrantStatus.ACTIVE
        if revoked != (role in ("holder", "admin")):
            wrong.append(f"{role} revoke: revoked={revoked}")
        if revoked != bool(cluster.provisioner_calls("revoke", grant_id)):
            wrong.append(f"{role} revoke: provisioner disagrees")
    assert wrong == [], wrong


async def test_only_the_holder_can_extend_a_grant(cluster: Cluster) -> None:
    cluster.acknowledged_incident(cluster.person("alice"))
    wrong = []
    for role, name in GRANT_ACTORS.items():
        grant_id = await _new_grant(cluster)
        before = await cluster.parts().store.grants.get(grant_id)
        who = cluster.person(name)
        if name != "alice":
            cluster.acknowledged_incident(who)  # a gate they would pass: only ownership may refuse them

        await cluster.command(who, f"extend {grant_id} 30m")

        after = await cluster.parts().store.grants.get(grant_id)
        assert before is not None and after is not None
        extended = after.expires_at != before.expires_at
        if extended != (role == "holder"):
            wrong.append(f"{role} extend: extended={extended}")
    assert wrong == [], wrong


async def test_only_an_admin_can_change_an_organisation_setting(cluster: Cluster) -> None:
    actors = {"requester": "alice", "approver": "bob", "non-admin": "dave", "admin": "erin", "other user": "frank"}
    wrong = []
    for role, name in actors.items():
        before = await cluster.parts().org.severity()
        target = "warning" if before != "warning" else "info"

        await cluster.command(cluster.person(name), f"admin severity {target}")

        changed = await cluster.parts().org.severity() != before
        if changed != (role == "admin"):
            wrong.append(f"{role} admin severity: changed={changed}")
    assert wrong == [], wrong
    assert await cluster.audit_count("action.refused") == len(actors) - 1  # each refusal audited


async def test_only_an_admin_can_set_the_integration_key_through_the_key_form(cluster: Cluster) -> None:
    actors = {"requester": "alice", "approver": "bob", "non-admin": "dave", "admin": "erin", "other user": "frank"}
    wrong = []
    before = await cluster.parts().store.settings.get(STORED_KEY)
    for n, (role, name) in enumerate(actors.items()):
        key = f"K{n}EY{'0' * 28}"
        values = {"key": {"value": {"type": "plain_text_input", "value": key}}}
        body = slack_requests.view_submission_body(
            user_id=cluster.person(name).user_id, values=values, callback_id=KEY_FORM_CALLBACK_ID
        )

        answer = await cluster.slack_post(body)

        await cluster.settle(0.2)
        stored = await cluster.parts().store.settings.get(STORED_KEY)
        changed = stored != before
        before = stored
        if answer.status != 200 or changed != (role == "admin"):
            wrong.append(f"{role} key form: status {answer.status}, key changed={changed}")
    assert wrong == [], wrong


async def test_a_verification_page_decides_only_its_own_transaction(cluster: Cluster) -> None:
    """A valid CSRF token from bob's page does not decide carol's request, on carol's link or bob's."""
    alice, bob, carol = cluster.person("alice"), cluster.person("bob"), cluster.person("carol")
    bobs_link = (await cluster.ask_for_verification(alice, bob)).removeprefix(cluster.url)
    carols_link = (await cluster.ask_for_verification(alice, carol)).removeprefix(cluster.url)
    page = await cluster.send("GET", bobs_link)
    found = _CSRF.search(page.text)
    assert found is not None
    form = urlencode({"csrf": found.group(1), "decision": "verify"}).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded", "Origin": cluster.url}

    across = await cluster.send("POST", carols_link, body=form, headers=headers)
    foreign = await cluster.send("POST", bobs_link, body=form, headers={**headers, "Origin": "http://evil.example"})

    assert (across.status, foreign.status) == (403, 403)
    assert await cluster.audit_count("auth.verified") == 0
    own = await cluster.send("POST", bobs_link, body=form, headers=headers)
    assert own.status == 200
    await cluster.settle(0.3)
    verified = [e for e in await cluster.audit() if e.kind == "auth.verified"]
    assert [e.actor for e in verified] == [bob.email]


# --- the logs -------------------------------------------------------------------------------


async def test_no_log_line_carries_a_secret_a_link_token_or_a_request_body(cluster: Cluster) -> None:
    """Everything a day brings (auth requests and links, a webhook, the admin key form, refusals,
    forged and huge unsigned posts) logged as ``ackgate serve`` logs it, then every line scanned."""
    alice, bob, erin = cluster.person("alice"), cluster.person("bob"), cluster.person("erin")
    cluster.acknowledged_incident(alice)
    link = await cluster.ask_for_verification(alice, bob)
    path = link.removeprefix(cluster.url)
    await cluster.send("GET", path)
    await cluster.send("GET", path + "x")  # a wrong token
    await cluster.send(
        "POST", path, body=b"csrf=forged&decision=verify", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    await cluster.command(alice, "prod-db 1h replication lag")
    await cluster.command(alice, "prod-k8s 1h stuck pod")
    await cluster.command(cluster.person("dave"), "admin severity info")
    key_form = {"key": {"value": {"type": "plain_text_input", "value": INTEGRATION_KEY}}}
    key_body = slack_requests.view_submission_body(
        user_id=erin.user_id, values=key_form, callback_id=KEY_FORM_CALLBACK_ID
    )
    await cluster.slack_post(key_body)
    await cluster.webhook(
        incident_webhook("incident.triggered", incident_id="QLOGS000000001", event_id="01LOGS", status="triggered")
    )
    # Hostile posts: a 300 KB unsigned body, its forged-signature twin, and the same at the webhook.
    big = "text=" + secrets.token_hex(150_000)
    await cluster.send(
        "POST", "/slack/events", body=big.encode(), headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    await cluster.send("POST", "/slack/events", body=big.encode(), headers=slack_headers(big, secret="forged"))
    await cluster.send(
        "POST",
        "/slack/events",
        body=big.encode(),
        headers={**slack_headers(big), "X-Slack-Signature": "v0=" + "é" * 64},
    )
    hook = json.dumps({"event": {"id": "x", "blob": secrets.token_hex(100_000)}})
    await cluster.send(
        "POST", "/webhooks/pagerduty", body=hook.encode(), headers={"X-PagerDuty-Signature": "v1=" + "0" * 64}
    )
    await cluster.slack_post(urlencode({"payload": json.dumps({"type": "block_actions", "user": "U0BOB"})}))
    await asyncio.sleep(0.5)

    tokens = cluster.link_tokens()
    assert tokens, "the workload should have sent at least one authentication link"
    found = leaks(cluster.log.lines, tokens=tokens, bodies=[big, hook])
    logged = cluster.log.characters
    assert found == [], f"{len(found)} leaks in {len(cluster.log.lines)} log lines ({logged} characters): {found[:10]}"
    assert logged < 200_000, f"the log grew by {logged} characters for a few hundred kilobytes of hostile posts"
