"""Authentication requests at the service level: reaching the target through PagerDuty and chat,
falling back when PagerDuty fails, the single-use link, expiry, and resolving the incident."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import timedelta

import pytest

from bot.adapters.pagerduty_events import dedup_key
from bot.core.auth import AuthPage, PageState
from bot.core.commands import RequestAuth
from bot.core.domain import AuthStatus
from bot.core.errors import IdentityError, UsageError
from bot.core.org_settings import EVENTS_STATUS
from tests.fakes.auth_world import ALICE, BOB, HIDDEN, PUBLIC_URL, AuthWorld, auth, build

__all__ = ["auth"]  # the fixture, bound here


def facts(card: object) -> dict[str, str]:
    return {f.label: f.value for f in getattr(card, "facts", ())}


async def nothing_written(auth: AuthWorld) -> None:
    assert await auth.audit_kinds() == []
    assert auth.chat.sent == []
    assert auth.sim.requests == []


# --- reaching the target ----------------------------------------------------------------------


async def test_a_request_pages_the_target_with_a_conforming_incident_and_dms_them_too(auth: AuthWorld) -> None:
    card = await auth.ask(message="confirming your password reset")
    tx = await auth.only_transaction()

    assert tx.status is AuthStatus.PENDING and tx.channels == ("pagerduty", "chat")
    assert tx.dedup_key == dedup_key(tx.id)
    (event,) = auth.sim.events  # validated against both schemas by the simulator
    payload = event["payload"]
    assert event["event_action"] == "trigger" and event["dedup_key"] == dedup_key(tx.id)
    assert payload["summary"] == "Authentication request from alice@example.com"
    assert payload["severity"] == "critical"
    assert payload["source"] == "ackgate.example.com"
    assert payload["custom_details"] == {
        "requester": "alice@example.com",
        "user": "bob@example.com",
        "transaction_id": tx.id,
        "message": "confirming your password reset",
        "context": tx.context,
    }
    assert event["links"] == [{"href": auth.link(BOB), "text": "Authenticate"}]
    assert auth.link(BOB).startswith(PUBLIC_URL + "/auth/")
    assert card.title == "Authentication request sent to bob@example.com"
    assert facts(card)["Reached by"] == "PagerDuty and chat"
    assert (await auth.org.status(EVENTS_STATUS)).state == "success"


async def test_only_the_token_hash_is_stored_and_the_token_is_in_no_audit_line_or_requester_message(
    auth: AuthWorld,
) -> None:
    await auth.ask()
    tx = await auth.only_transaction()
    token = auth.token(BOB)
    assert len(token) >= 43
    assert tx.token_hash == hashlib.sha256(token.encode()).hexdigest()
    audit = await auth.store.audit.since(auth.clock.now() - timedelta(days=1))
    assert token not in repr(audit) and tx.token_hash not in repr(audit)
    assert token not in repr(auth.chat.inbox(ALICE.email))


async def test_the_incident_severity_is_the_organisation_setting(auth: AuthWorld) -> None:
    await auth.org.set_severity("warning")
    await auth.ask()
    assert auth.sim.events[0]["payload"]["severity"] == "warning"
    assert auth.sim.alerts[auth.sim.events[0]["dedup_key"]].severity == "warning"


async def test_a_target_named_by_email_is_found_like_a_mention(auth: AuthWorld) -> None:
    await auth.ask(target="Bob@Example.com")
    assert (await auth.only_transaction()).target == BOB


async def test_prefs_without_pagerduty_reach_the_target_by_chat_only(auth: AuthWorld) -> None:
    await auth.org.set_prefs(BOB.email, pagerduty=False)
    card = await auth.ask()
    assert auth.sim.requests == []
    assert (await auth.only_transaction()).channels == ("chat",)
    assert "Note" not in facts(card)  # the target chose chat: nothing failed
    assert auth.link(BOB)


async def test_prefs_with_pagerduty_only_page_without_a_chat_message(auth: AuthWorld) -> None:
    await auth.org.set_prefs(BOB.email, chat=False)
    await auth.ask()
    assert (await auth.only_transaction()).channels == ("pagerduty",)
    assert auth.chat.inbox(BOB.email) == []
    assert len(auth.sim.events) == 1


async def test_pagerduty_turned_off_for_the_organisation_falls_back_to_chat_and_says_so(auth: AuthWorld) -> None:
    await auth.org.set_prefs(BOB.email, chat=False)
    await auth.org.set_pagerduty_enabled(False)
    card = await auth.ask()
    assert auth.sim.requests == []
    assert (await auth.only_transaction()).channels == ("chat",)
    assert facts(card)["Note"] == "Sent by chat because PagerDuty is turned off for this organisation."


async def test_no_integration_key_falls_back_to_chat_and_says_so() -> None:
    async for world in build(env_key=None):
        await world.org.set_prefs(BOB.email, chat=False)
        card = await world.ask()
        assert world.sim.requests == []
        assert "no PagerDuty integration key is set" in facts(card)["Note"]
        assert world.link(BOB)


async def test_events_api_400_records_the_error_does_not_retry_and_falls_back_to_chat() -> None:
    async for world in build(env_key="y_NbAkKc66ryYTWUXYEu"):  # a REST token, not an integration key
        await world.org.set_prefs(BOB.email, chat=False)
        card = await world.ask()
        tx = await world.only_transaction()

        assert [r.status for r in world.sim.requests] == [400]
        assert world.ticker.sleeps == []
        assert tx.channels == ("chat",) and tx.dedup_key is None
        assert world.link(BOB)
        status = await world.org.status(EVENTS_STATUS)
        assert status.state == "error" and status.at == world.clock.now()
        assert "Length of 'routing_key' is incorrect" in status.detail
        note = facts(card)["Note"]
        assert note.startswith(
            "Sent by chat because PagerDuty could not be used: PagerDuty refused the event (HTTP 400)"
        )
        assert "y_NbAkKc66ryYTWUXYEu" not in note + status.detail


@pytest.mark.parametrize("status", [429, 500, 503])
async def test_events_api_429_and_5xx_are_retried_with_backoff_then_fall_back_to_chat(
    auth: AuthWorld, status: int
) -> None:
    await auth.org.set_prefs(BOB.email, chat=False)
    auth.sim.fail_next(None, status=status)
    card = await auth.ask()

    assert [r.status for r in auth.sim.requests] == [status] * 3
    assert auth.ticker.sleeps == [2.0, 4.0]
    assert (await auth.only_transaction()).channels == ("chat",)
    assert f"HTTP {status}" in facts(card)["Note"]
    assert (await auth.org.status(EVENTS_STATUS)).state == "error"


async def test_events_api_unreachable_falls_back_to_chat() -> None:
    async for world in build(events_url="http://127.0.0.1:9"):  # the discard port: nothing listens
        await world.org.set_prefs(BOB.email, chat=False)
        card = await world.ask()
        assert (await world.only_transaction()).channels == ("chat",)
        assert "could not be reached" in facts(card)["Note"]
        assert (await world.org.status(EVENTS_STATUS)).state == "error"


async def test_the_requester_gets_a_status_dm_stored_for_in_place_updates(auth: AuthWorld) -> None:
    card = await auth.ask()
    tx = await auth.only_transaction()
    assert await auth.requester_cards(tx.id) == [card]


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["@U0NOBODY", "nobody@example.com", "bob"])
async def test_an_unknown_target_is_refused_clearly_and_nothing_is_written(auth: AuthWorld, target: str) -> None:
    with pytest.raises(UsageError, match="can't find the user"):
        await auth.ask(target=target)
    await nothing_written(auth)


async def test_a_target_whose_email_is_hidden_is_refused_and_nothing_is_written(auth: AuthWorld) -> None:
    with pytest.raises(IdentityError, match="can't see Hidden Harry's email"):
        await auth.ask(target=f"@{HIDDEN.user_id}")
    await nothing_written(auth)


async def test_a_requester_whose_email_is_hidden_is_refused(auth: AuthWorld) -> None:
    with pytest.raises(IdentityError):
        await auth.service.request(HIDDEN, RequestAuth(target="@U0BOB", message=""))
    await nothing_written(auth)


async def test_a_target_reachable_by_nothing_ends_the_transaction_and_tells_the_requester(auth: AuthWorld) -> None:
    await auth.org.set_pagerduty_enabled(False)
    auth.chat.down = True
    card = await auth.ask()
    tx = await auth.only_transaction()
    assert tx.status is AuthStatus.EXPIRED and tx.channels == ()
    assert "could not reach bob@example.com" in card.text
    assert await auth.audit_kinds() == ["auth.requested", "auth.expired"]


# --- the link -------------------------------------------------------------------------------


async def test_the_page_shows_who_asked_and_why(auth: AuthWorld) -> None:
    await auth.ask(message="resetting your MFA")
    tx = await auth.only_transaction()
    page = await auth.service.page(auth.token())
    assert page == AuthPage(
        state=PageState.ASK,
        transaction_id=tx.id,
        requester="alice@example.com",
        target="bob@example.com",
        message="resetting your MFA",
        context=tx.context,
        expires_at=auth.clock.now() + timedelta(minutes=10),
        status=AuthStatus.PENDING,
    )
    assert tx.context.startswith("Asked in Slack at")


async def test_verifying_updates_the_requester_message_in_place_and_clears_the_link(auth: AuthWorld) -> None:
    await auth.ask()
    tx = await auth.only_transaction()
    token = auth.token()
    auth.clock.advance(timedelta(minutes=3))

    page = await auth.service.decide(token, verify=True)

    assert page.state is PageState.DONE and page.status is AuthStatus.VERIFIED
    assert (await auth.transaction(tx.id)).status is AuthStatus.VERIFIED
    (requester,) = await auth.requester_cards(tx.id)
    assert requester.title == "Identity verified by bob@example.com at 12:03 UTC, 23 Nov"
    (target,) = await auth.target_cards(tx.id)
    assert target.links == () and target.text == "You verified it at 12:03 UTC, 23 Nov."
    assert len(auth.chat.inbox(ALICE.email)) == 1  # updated, not a second message
    assert await auth.audit_kinds() == ["auth.requested", "auth.verified"]
    assert auth.changed == [tx.id]


async def test_denying_shows_denied_to_the_requester(auth: AuthWorld) -> None:
    await auth.ask()
    tx = await auth.only_transaction()
    page = await auth.service.decide(auth.token(), verify=False)
    assert page.state is PageState.DONE and page.status is AuthStatus.DENIED
    (requester,) = await auth.requester_cards(tx.id)
    assert requester.title.startswith("Authentication request denied by bob@example.com")


async def test_a_replayed_link_is_used_and_changes_nothing(auth: AuthWorld) -> None:
    await auth.ask()
    token = auth.token()
    await auth.service.decide(token, verify=False)
    replay = await auth.service.decide(token, verify=True)
    assert replay.state is PageState.USED and replay.status is AuthStatus.DENIED
    assert (await auth.service.page(token)).state is PageState.USED
    assert await auth.audit_kinds() == ["auth.requested", "auth.denied"]


async def test_two_simultaneous_answers_record_exactly_one(auth: AuthWorld) -> None:
    await auth.ask()
    token = auth.token()
    pages = await asyncio.gather(auth.service.decide(token, verify=True), auth.service.decide(token, verify=False))
    assert sorted(p.state.value for p in pages) == ["done", "used"]
    assert (await auth.audit_kinds()).count("auth.requested") == 1
    assert len([k for k in await auth.audit_kinds() if k in ("auth.verified", "auth.denied")]) == 1


@pytest.mark.parametrize(
    "tampered",
    [
        lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),  # well-formed, never issued
        lambda t: t[:-1],  # too short
        lambda t: t + "x",  # too long
        lambda t: t[:-1] + "!",  # not base64url
        lambda t: "",
    ],
    ids=["other-token", "short", "long", "charset", "empty"],
)
async def test_a_tampered_or_malformed_token_is_invalid_and_changes_nothing(auth: AuthWorld, tampered: object) -> None:
    await auth.ask()
    tx = await auth.only_transaction()
    bad = tampered(auth.token())  # type: ignore[operator]
    assert (await auth.service.page(bad)).state is PageState.INVALID
    assert (await auth.service.decide(bad, verify=True)) == AuthPage(PageState.INVALID)
    assert (await auth.transaction(tx.id)).status is AuthStatus.PENDING
    assert await auth.audit_kinds() == ["auth.requested"]


async def test_an_expired_link_shows_expired_marks_it_and_cannot_be_answered(auth: AuthWorld) -> None:
    await auth.ask()
    tx = await auth.only_transaction()
    token = auth.token()
    auth.clock.advance(timedelta(minutes=10))

    assert (await auth.service.page(token)).state is PageState.EXPIRED
    assert (await auth.transaction(tx.id)).status is AuthStatus.EXPIRED
    assert (await auth.service.decide(token, verify=True)).state is PageState.EXPIRED
    assert await auth.audit_kinds() == ["auth.requested", "auth.expired"]
    (requester,) = await auth.requester_cards(tx.id)
    assert requester.title == "Authentication request to bob@example.com expired unanswered"


async def test_a_requester_whose_message_is_gone_gets_the_outcome_as_a_new_dm(auth: AuthWorld) -> None:
    await auth.ask()
    auth.chat.sent = [s for s in auth.chat.sent if s.to != ALICE.email]  # e.g. deleted in Slack
    await auth.service.decide(auth.token(), verify=True)
    (dm,) = auth.chat.inbox(ALICE.email)
    assert dm.title.startswith("Identity verified by bob@example.com")


# --- the scheduler and the incident ---------------------------------------------------------


async def test_expire_due_expires_only_pending_requests_past_their_expiry(auth: AuthWorld) -> None:
    await auth.ask()
    first = await auth.only_transaction()
    auth.clock.advance(timedelta(minutes=5))
    await auth.ask(message="second")
    auth.clock.advance(timedelta(minutes=5))

    assert await auth.service.expire_due() == 1
    assert (await auth.transaction(first.id)).status is AuthStatus.EXPIRED
    assert await auth.service.expire_due() == 0
    assert (await auth.audit_kinds()).count("auth.expired") == 1
    (requester,) = await auth.requester_cards(first.id)
    assert requester.title.endswith("expired unanswered")


async def test_the_incident_is_not_resolved_by_default(auth: AuthWorld) -> None:
    await auth.ask()
    await auth.service.decide(auth.token(), verify=True)
    assert [e["event_action"] for e in auth.sim.events] == ["trigger"]
    assert auth.sim.open_alerts


@pytest.mark.parametrize("verify", [True, False])
async def test_resolve_on_complete_resolves_the_incident_with_the_same_dedup_key(auth: AuthWorld, verify: bool) -> None:
    await auth.org.set_resolve_on_complete(True)
    await auth.ask()
    tx = await auth.only_transaction()
    await auth.service.decide(auth.token(), verify=verify)

    trigger, resolve = auth.sim.events
    assert resolve["event_action"] == "resolve"
    assert resolve["dedup_key"] == trigger["dedup_key"] == tx.dedup_key
    assert resolve["routing_key"] == trigger["routing_key"]
    assert auth.sim.alerts[trigger["dedup_key"]].status == "resolved"


async def test_resolve_on_complete_also_resolves_an_expired_request(auth: AuthWorld) -> None:
    await auth.org.set_resolve_on_complete(True)
    await auth.ask()
    auth.clock.advance(timedelta(minutes=11))
    assert await auth.service.expire_due() == 1
    assert [e["event_action"] for e in auth.sim.events] == ["trigger", "resolve"]
    assert auth.sim.open_alerts == []


async def test_a_chat_only_request_sends_no_resolve(auth: AuthWorld) -> None:
    await auth.org.set_resolve_on_complete(True)
    await auth.org.set_prefs(BOB.email, pagerduty=False)
    await auth.ask()
    await auth.service.decide(auth.token(), verify=True)
    assert auth.sim.requests == []
