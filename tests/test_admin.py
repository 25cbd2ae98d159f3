"""Administration by bot command and users' own preferences, against a real SQLite store and a fake clock."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from bot.core.admin import (
    OPEN_KEY_FORM,
    PAGERDUTY_EVENTS,
    PAGERDUTY_REST,
    WEBHOOKS,
    AdminService,
    opens_key_form,
)
from bot.core.bus import MessageBus
from bot.core.clock import FakeClock
from bot.core.commands import Admin, SetPrefs, parse_command
from bot.core.domain import AuditEvent, Principal
from bot.core.errors import ChatError, NotAuthorized, UsageError, UserError
from bot.core.integration_status import IntegrationStatus
from bot.core.org_settings import EVENTS_STATUS, INTEGRATION_KEY, REST_STATUS, OrgSettings, chat_status_key
from bot.core.ports import Store
from bot.core.secrets import SecretBox
from bot.core.views import Card
from handlers.slack.notifier import TITLE as SLACK
from storage import open_store
from tests.fakes.world import person

SLACK_STATUS = chat_status_key("slack")

KEY = "a1B2c3D4e5F6g7H8i9J0k1L2m3N4ab12"  # the shape of an Events API v2 integration key
OTHER_KEY = "Zz9Yy8Xx7Ww6Vv5Uu4Tt3Ss2Rr1Qq0cd34"[:32]
ENV_KEY = "EnvEnvEnvEnvEnvEnvEnvEnvEnvEzz99"
MASKED_KEY = "•" * 28 + "ab12"
REST_TOKEN = "u+abcdEFGHijklMNOPqrst"
PASSPHRASE = SecretStr("a passphrase long enough for HKDF")

admin = person("alice")
grouped = person("gina")
user = person("bob")


def fact(card: Card, label: str) -> str | None:
    return next((f.value for f in card.facts if f.label == label), None)


def parsed(text: str) -> Any:
    """What the router would hand the admin service for ``/access <text>``."""
    command = parse_command(text)
    assert isinstance(command, Admin | SetPrefs)
    return command


def file_bytes(folder: Path, pattern: str) -> bytes:
    """Everything SQLite wrote: the database and any journal or WAL beside it."""
    return b"".join(p.read_bytes() for p in folder.glob(pattern))


def everything_shown(card: Card) -> str:
    return repr(card)


@dataclass
class AdminWorld:
    store: Store
    org: OrgSettings
    clock: FakeClock
    service: AdminService
    tested: list[Principal] = field(default_factory=list)

    async def audit(self, kind: str | None = None) -> list[AuditEvent]:
        events = await self.store.audit.since(self.clock.now() - timedelta(days=1))
        return [e for e in events if kind is None or e.kind == kind]


Build = Callable[..., Awaitable[AdminWorld]]


@pytest.fixture
async def build(tmp_path: Path) -> AsyncIterator[Build]:
    """Builds the admin service over a fresh store; options say whether ACKGATE_SECRET_KEY and an env key exist."""
    stores: list[Store] = []

    async def make(
        *,
        secret_key: bool = True,
        env_key: str | None = None,
        health: Callable[[], Awaitable[dict[str, str]]] | None = None,
        with_auth_test: bool = True,
        url: str = "sqlite:///:memory:",
    ) -> AdminWorld:
        store = open_store(url)
        await store.open()
        stores.append(store)
        clock = FakeClock()
        org = OrgSettings(
            store.settings,
            box=SecretBox(PASSPHRASE) if secret_key else None,
            env_key=SecretStr(env_key) if env_key else None,
        )
        tested: list[Principal] = []

        async def auth_test(actor: Principal) -> Card:
            tested.append(actor)
            return Card(title=f"Test authentication request sent to {actor.email}")

        async def is_group_admin(actor: Principal) -> bool:
            return actor.email == grouped.email

        service = AdminService(
            org=org,
            bus=MessageBus(audit=store.audit),
            clock=clock,
            admins=frozenset({"Alice@Example.com"}),
            is_group_admin=is_group_admin,
            auth_test=auth_test if with_auth_test else None,
            health=health,
            chat_platforms={SLACK: SLACK_STATUS},
        )
        return AdminWorld(store, org, clock, service, tested)

    yield make
    for store in stores:
        await store.close()


@pytest.fixture
async def w(build: Build) -> AdminWorld:
    return await build()


# --- severity and the PagerDuty switch ---------------------------------------------------------------


async def test_an_admin_changes_the_severity_and_the_change_is_audited_with_old_and_new(w: AdminWorld) -> None:
    card = await w.service.execute(admin, parsed("admin severity warning"))

    assert await w.org.severity() == "warning"
    assert card.title == "Authentication incidents now have severity warning (was critical)."
    [change] = await w.audit("setting.changed")
    assert (change.actor, change.subject) == ("alice@example.com", "org")
    assert change.data == {"setting": "severity", "old": "critical", "new": "warning"}


async def test_setting_the_severity_it_already_has_changes_nothing_and_says_so(w: AdminWorld) -> None:
    card = await w.service.execute(admin, Admin("severity", "critical"))

    assert "already" in card.title
    assert await w.audit("setting.changed") == []


async def test_an_unknown_severity_is_a_usage_error_and_changes_nothing(w: AdminWorld) -> None:
    with pytest.raises(UsageError, match="critical\\|error\\|warning\\|info"):
        await w.service.execute(admin, Admin("severity", "sev1"))
    assert await w.org.severity() == "critical"


async def test_an_admin_turns_pagerduty_off_audited_and_told_requests_go_by_chat(w: AdminWorld) -> None:
    card = await w.service.execute(admin, Admin("pagerduty", "off"))

    assert await w.org.pagerduty_enabled() is False
    assert card.title == "The PagerDuty integration is now off."
    assert "chat" in card.text
    [change] = await w.audit("setting.changed")
    assert change.data == {"setting": "pagerduty", "old": "on", "new": "off"}

    await w.service.execute(admin, Admin("pagerduty", "on"))
    assert await w.org.pagerduty_enabled() is True


# --- who is an admin -----------------------------------------------------------------------------------


ADMIN_COMMANDS = [
    Admin("severity", "info"),
    Admin("pagerduty", "off"),
    Admin("key"),
    Admin("status"),
    Admin("test"),
]


@pytest.mark.parametrize("command", ADMIN_COMMANDS, ids=[c.action for c in ADMIN_COMMANDS])
async def test_a_non_admin_is_refused_each_admin_command_with_a_clear_sentence_and_the_attempt_audited(
    w: AdminWorld, command: Admin
) -> None:
    with pytest.raises(NotAuthorized) as refused:
        await w.service.execute(user, command)

    assert refused.value.message.startswith(f"Only Ackgate admins can use /access admin {command.action}")
    [attempt] = await w.audit("action.refused")
    assert attempt.actor == "bob@example.com"
    assert attempt.data["action"] == f"admin {command.action}"
    assert attempt.data["reason"] == refused.value.message
    assert await w.audit("setting.changed") == []
    assert (await w.org.severity(), await w.org.pagerduty_enabled()) == ("critical", True)
    assert w.tested == []


async def test_a_non_admin_pasting_a_key_is_refused_audited_and_nothing_is_stored(w: AdminWorld) -> None:
    with pytest.raises(NotAuthorized, match="/access admin key"):
        await w.service.set_key(user, KEY)

    [attempt] = await w.audit("action.refused")
    assert (attempt.actor, attempt.data["action"]) == ("bob@example.com", "admin key")
    assert KEY not in json.dumps(attempt.data)
    assert await w.store.settings.get(INTEGRATION_KEY) is None


async def test_a_member_of_the_admin_user_group_is_an_admin(w: AdminWorld) -> None:
    await w.service.execute(grouped, Admin("severity", "error"))

    assert await w.org.severity() == "error"
    [change] = await w.audit("setting.changed")
    assert change.actor == "gina@example.com"


async def test_admins_match_by_email_whatever_its_case(w: AdminWorld) -> None:
    shouting = Principal("slack", "UALICE", "ALICE@example.COM", "alice")
    assert await w.service.is_admin(shouting)
    assert not await w.service.is_admin(user)


async def test_a_failing_group_lookup_fails_closed_with_the_chat_error(build: Build) -> None:
    w = await build()

    async def broken(actor: Principal) -> bool:
        raise ChatError("Ackgate could not reach Slack for usergroups.users.list. Try again in a minute.")

    w.service.is_group_admin = broken
    with pytest.raises(ChatError):
        await w.service.execute(user, Admin("severity", "info"))
    assert await w.org.severity() == "critical"


# --- the integration key -------------------------------------------------------------------------------


async def test_admin_key_asks_the_chat_adapter_to_open_the_key_form(w: AdminWorld) -> None:
    card = await w.service.execute(admin, Admin("key"))

    assert opens_key_form(card)
    assert [a.kind for a in card.actions] == [OPEN_KEY_FORM]
    assert not opens_key_form(Card(title="anything else"))


async def test_a_valid_key_is_stored_encrypted_shown_masked_and_never_echoed(build: Build, tmp_path: Path) -> None:
    w = await build(url=f"sqlite:///{tmp_path / 'ackgate.db'}")

    card = await w.service.set_key(admin, f"  {KEY}\n")

    assert await w.org.integration_key() == SecretStr(KEY)
    assert await w.org.key_source() == "stored"
    stored = await w.store.settings.get(INTEGRATION_KEY)
    assert stored is not None and KEY not in stored
    assert fact(card, "Key") == MASKED_KEY
    assert KEY not in everything_shown(card)
    [change] = await w.audit("setting.changed")
    assert change.data == {"setting": "integration_key", "old": None, "new": f"{MASKED_KEY} (stored encrypted)"}
    assert KEY not in json.dumps([e.data for e in await w.audit()])
    await w.store.close()
    database = file_bytes(tmp_path, "ackgate.db*")
    assert database  # the file was written, so the next line can fail
    assert KEY.encode() not in database


async def test_replacing_a_stored_key_audits_both_masked(w: AdminWorld) -> None:
    await w.service.set_key(admin, OTHER_KEY)
    await w.service.set_key(admin, KEY)

    changes = await w.audit("setting.changed")
    assert changes[-1].data["old"] == f"{'•' * 28}{OTHER_KEY[-4:]} (stored encrypted)"
    assert changes[-1].data["new"] == f"{MASKED_KEY} (stored encrypted)"
    assert OTHER_KEY not in json.dumps([e.data for e in changes])


async def test_a_key_of_the_wrong_length_is_refused_with_where_to_find_it_and_nothing_is_stored(
    w: AdminWorld,
) -> None:
    with pytest.raises(UsageError) as error:
        await w.service.set_key(admin, "abc123")

    assert "exactly 32 characters; this one has 6" in error.value.message
    assert "abc123" not in error.value.message
    assert await w.store.settings.get(INTEGRATION_KEY) is None
    assert await w.audit("setting.changed") == []


async def test_a_rest_api_token_is_refused_as_not_an_events_key(w: AdminWorld) -> None:
    with pytest.raises(UsageError) as error:
        await w.service.set_key(admin, REST_TOKEN)

    assert "looks like a REST API token, not an Events API v2 integration key" in error.value.message
    assert REST_TOKEN not in error.value.message
    assert await w.store.settings.get(INTEGRATION_KEY) is None


async def test_without_ackgate_secret_key_the_key_is_not_stored_and_the_admin_is_told_to_set_it(
    build: Build,
) -> None:
    w = await build(secret_key=False)

    with pytest.raises(UserError) as error:
        await w.service.set_key(admin, KEY)

    assert "ACKGATE_SECRET_KEY is not set" in error.value.message
    assert "Nothing was saved" in error.value.message
    assert KEY not in error.value.message
    assert await w.store.settings.get(INTEGRATION_KEY) is None
    assert await w.audit("setting.changed") == []


async def test_with_a_key_in_the_environment_a_stored_key_is_saved_but_the_environment_still_wins(
    build: Build,
) -> None:
    w = await build(env_key=ENV_KEY)

    card = await w.service.set_key(admin, KEY)

    assert "PAGERDUTY_INTEGRATION_KEY is set in Ackgate's environment" in card.footnote
    assert await w.org.integration_key() == SecretStr(ENV_KEY)
    assert await w.store.settings.get(INTEGRATION_KEY) is not None
    [change] = await w.audit("setting.changed")
    assert change.data["old"] == f"{'•' * 28}{ENV_KEY[-4:]} (from PAGERDUTY_INTEGRATION_KEY)"
    assert ENV_KEY not in everything_shown(card) and KEY not in everything_shown(card)


async def test_without_the_environment_key_saving_says_nothing_about_it(w: AdminWorld) -> None:
    card = await w.service.set_key(admin, KEY)
    assert card.footnote == ""


# --- status --------------------------------------------------------------------------------------------


async def test_status_before_anything_happened_says_not_yet_invoked_and_no_key(w: AdminWorld) -> None:
    card = await w.service.execute(admin, Admin("status"))

    assert fact(card, PAGERDUTY_EVENTS) == "Not yet invoked"
    assert fact(card, PAGERDUTY_REST) == "Not yet invoked"
    assert fact(card, SLACK) == "Not yet invoked"
    assert fact(card, "Integration key") == "None: add one with /access admin key"
    assert fact(card, WEBHOOKS) == "No event received yet; signatures OK"
    assert (fact(card, "Severity"), fact(card, "PagerDuty")) == ("critical", "on")


async def test_status_shows_events_success_with_the_time_of_the_last_incident(w: AdminWorld) -> None:
    await w.org.record_status(EVENTS_STATUS, IntegrationStatus("success", w.clock.now()))

    card = await w.service.execute(admin, Admin("status"))

    assert fact(card, PAGERDUTY_EVENTS) == "Success, last incident at 12:00 UTC, 23 Nov"


async def test_status_shows_events_error_with_its_time_and_pagerdutys_message(w: AdminWorld) -> None:
    at = w.clock.advance(timedelta(minutes=5))
    await w.org.record_status(EVENTS_STATUS, IntegrationStatus("error", at, "Invalid routing key"))

    card = await w.service.execute(admin, Admin("status"))

    assert fact(card, PAGERDUTY_EVENTS) == "Error at 12:05 UTC, 23 Nov: Invalid routing key"
    assert card.tone == "warning"


async def test_status_shows_the_stored_key_masked_with_its_source(w: AdminWorld) -> None:
    await w.service.set_key(admin, KEY)

    card = await w.service.execute(admin, Admin("status"))

    assert fact(card, "Integration key") == f"{MASKED_KEY} (stored encrypted)"
    assert KEY not in everything_shown(card)


async def test_status_shows_the_environment_key_masked_with_its_source(build: Build) -> None:
    w = await build(env_key=ENV_KEY)

    card = await w.service.execute(admin, Admin("status"))

    assert fact(card, "Integration key") == f"{'•' * 28}{ENV_KEY[-4:]} (from PAGERDUTY_INTEGRATION_KEY)"


async def test_status_says_a_stored_key_is_unreadable_when_ackgate_secret_key_is_gone(build: Build) -> None:
    w = await build()
    await w.service.set_key(admin, KEY)
    w.service.org = OrgSettings(w.store.settings, box=None, env_key=None)

    card = await w.service.execute(admin, Admin("status"))

    assert "unreadable with the current ACKGATE_SECRET_KEY" in (fact(card, "Integration key") or "")


async def test_status_takes_rest_and_slack_health_from_the_probe(build: Build) -> None:
    async def health() -> dict[str, str]:
        return {PAGERDUTY_REST: "Reachable, token accepted", SLACK: "Error: invalid_auth"}

    w = await build(health=health)
    await w.org.record_status(REST_STATUS, IntegrationStatus("error", w.clock.now(), "stale"))

    card = await w.service.execute(admin, Admin("status"))

    assert fact(card, PAGERDUTY_REST) == "Reachable, token accepted"
    assert fact(card, SLACK) == "Error: invalid_auth"


async def test_without_a_probe_status_shows_the_recorded_rest_and_slack_health(w: AdminWorld) -> None:
    await w.org.record_status(REST_STATUS, IntegrationStatus("error", w.clock.now(), "401 Unauthorized"))
    await w.org.record_status(SLACK_STATUS, IntegrationStatus("success", w.clock.now()))

    card = await w.service.execute(admin, Admin("status"))

    assert fact(card, PAGERDUTY_REST) == "Error at 12:00 UTC, 23 Nov: 401 Unauthorized"
    assert fact(card, SLACK) == "Success, last call at 12:00 UTC, 23 Nov"


async def test_a_probe_that_fails_is_shown_and_the_rest_of_the_status_still_appears(build: Build) -> None:
    async def health() -> dict[str, str]:
        raise ChatError("Ackgate could not reach Slack for auth.test. Try again in a minute.")

    w = await build(health=health)

    card = await w.service.execute(admin, Admin("status"))

    assert (
        fact(card, SLACK) == "Could not be checked: Ackgate could not reach Slack for auth.test. Try again in a minute."
    )
    assert fact(card, PAGERDUTY_EVENTS) == "Not yet invoked"


async def test_status_shows_the_last_webhook_and_failing_signatures(w: AdminWorld) -> None:
    await w.org.record_webhook(at=w.clock.now(), signature_ok=True)
    await w.org.record_webhook(at=w.clock.advance(timedelta(minutes=3)), signature_ok=False)
    await w.org.record_webhook(at=w.clock.advance(timedelta(minutes=1)), signature_ok=False)

    card = await w.service.execute(admin, Admin("status"))

    line = fact(card, WEBHOOKS) or ""
    assert line.startswith("Last event at 12:00 UTC, 23 Nov; 2 delivery(ies) failed the signature check")
    assert "the latest at 12:04 UTC, 23 Nov" in line
    assert "PAGERDUTY_WEBHOOK_SECRET" in line
    assert card.tone == "warning"


async def test_status_shows_the_current_severity_and_pagerduty_switch(w: AdminWorld) -> None:
    await w.service.execute(admin, Admin("severity", "info"))
    await w.service.execute(admin, Admin("pagerduty", "off"))

    card = await w.service.execute(admin, Admin("status"))

    assert (fact(card, "Severity"), fact(card, "PagerDuty")) == ("info", "off")


# --- test ----------------------------------------------------------------------------------------------


async def test_admin_test_sends_a_test_authentication_request_to_the_admin_and_returns_its_card(
    w: AdminWorld,
) -> None:
    card = await w.service.execute(admin, Admin("test"))

    assert w.tested == [admin]
    assert card.title == "Test authentication request sent to alice@example.com"


async def test_admin_test_without_authentication_requests_set_up_says_it_is_not_available(build: Build) -> None:
    w = await build(with_auth_test=False)

    card = await w.service.execute(admin, Admin("test"))

    assert card.title.startswith("The test is not available")


# --- preferences ---------------------------------------------------------------------------------------


async def test_prefs_without_arguments_show_the_current_preferences_and_how_to_change_them(w: AdminWorld) -> None:
    card = await w.service.set_prefs(user, parsed("prefs"))

    assert (fact(card, "PagerDuty"), fact(card, "Chat")) == ("on", "on")
    assert "/access prefs [pagerduty on|off] [chat on|off]" in card.footnote
    assert await w.audit() == []


async def test_any_user_sets_their_own_prefs_confirmed_and_audited(w: AdminWorld) -> None:
    card = await w.service.set_prefs(user, parsed("prefs pagerduty off"))

    assert card.title == "Your preferences are saved"
    assert (fact(card, "PagerDuty"), fact(card, "Chat")) == ("off", "on")
    prefs = await w.org.prefs("bob@example.com")
    assert (prefs.pagerduty, prefs.chat) == (False, True)
    [change] = await w.audit("setting.changed")
    assert (change.actor, change.subject) == ("bob@example.com", "prefs:bob@example.com")
    assert change.data == {"setting": "prefs", "old": "pagerduty on, chat on", "new": "pagerduty off, chat on"}
    assert await w.audit("action.refused") == []


async def test_turning_both_prefs_off_says_chat_still_reaches_you(w: AdminWorld) -> None:
    card = await w.service.set_prefs(user, SetPrefs(pagerduty=False, chat=False))

    assert "still reach you by chat" in card.text


async def test_prefs_of_one_user_leave_anothers_alone(w: AdminWorld) -> None:
    await w.service.set_prefs(user, SetPrefs(chat=False))

    assert (await w.org.prefs("alice@example.com")).chat is True


async def test_an_admin_turns_resolving_on_complete_on_and_it_is_audited(w: AdminWorld) -> None:
    """`/access admin resolve on` sets the organisation setting the auth feature reads, with an audit line."""
    card = await w.service.execute(admin, parsed("admin resolve on"))

    assert "is on" in card.title
    assert await w.org.resolve_on_complete() is True
    [change] = await w.audit("setting.changed")
    assert (change.data["setting"], change.data["old"], change.data["new"]) == ("resolve_on_complete", "off", "on")
    with pytest.raises(NotAuthorized):
        await w.service.execute(user, parsed("admin resolve off"))
    assert await w.org.resolve_on_complete() is True
