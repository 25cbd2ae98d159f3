"""Transcripts through the real entry points when authentication requests and administration are
refused or go wrong: a non-admin at every admin command, bad integration keys, targets Ackgate can't
find or can't page, PagerDuty's Events API failing, and a user who turned PagerDuty off.

Each test checks what the person was shown and that nothing else changed: the settings store, the
audit log, the authentication transactions and the events sent to PagerDuty.
"""

from __future__ import annotations

import json

import pytest
from pydantic import SecretStr

from bot.adapters.pagerduty_events import EventsClient
from bot.core import messages
from bot.core.org_settings import INTEGRATION_KEY
from bot.core.secrets import SecretBox
from bot.runtime.simulators import slack_requests
from bot.runtime.simulators.stage import SECRET_KEY, Person, Reply, Stage
from handlers.slack.app import whole_sentences
from handlers.slack.blocks import KEY_BLOCK_ID, KEY_FORM_CALLBACK_ID
from tests.fakes.issue3_stage import database_file, settings_rows, transaction_ids
from tests.fakes.stage_fixtures import audit_kinds, audit_lines

VALID_KEY = "Zq7Xw2Lm9Pa4Rt6Yb1Nc8Vd3Fg5Hj0Ks"  # 32 letters and digits, like PagerDuty's
REST_TOKEN_TEXT = "looks like a REST API token, not an Events API v2 integration key"


@pytest.fixture
def stage(issue3_stage: Stage) -> Stage:
    """The real app with carol as admin (``tests.fakes.issue3_stage``)."""
    return issue3_stage


@pytest.fixture
def backoff_delays(stage: Stage, monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The Events client's retry waits, recorded instead of slept, so a test never waits seconds."""
    client = stage.parts.auth.events
    assert isinstance(client, EventsClient)
    delays: list[float] = []

    async def no_sleep(seconds: float) -> None:
        delays.append(seconds)

    monkeypatch.setattr(client, "_sleep", no_sleep)
    return delays


async def submit_key(stage: Stage, who: Person, key: str) -> tuple[int, dict[str, object]]:
    """``who`` pastes ``key`` into the integration-key form and presses Save; returns Slack's HTTP answer."""
    values = {KEY_BLOCK_ID: {"value": {"type": "plain_text_input", "value": key}}}
    body = slack_requests.view_submission_body(user_id=who.user_id, values=values, callback_id=KEY_FORM_CALLBACK_ID)
    status, raw = await stage.post(body)
    return status, json.loads(raw) if raw else {}


def slack_traffic(stage: Stage) -> str:
    """Everything Ackgate sent Slack (Web API calls and response_url posts), as one string to search."""
    calls = [json.dumps(call.args, default=str) for call in stage.slack.calls]
    answers = [json.dumps(sent) for sent in stage.slack.responses.values()]
    return "\n".join(calls + answers)


# --- a non-admin at every admin command -----------------------------------------------------


@pytest.mark.parametrize("command", ["severity info", "pagerduty off", "key", "status", "test"])
async def test_a_non_admin_is_refused_each_admin_command_and_nothing_changes(stage: Stage, command: str) -> None:
    alice, carol = stage.person("alice"), stage.person("carol")
    await stage.command(carol, "admin severity warning")  # something an attempt could overwrite
    settings_before = settings_rows(stage)
    audit_before = await audit_lines(stage)

    reply = await stage.command(alice, f"admin {command}")

    action = command.split()[0]
    assert reply.status == 200
    assert messages.admin_refused(action) in reply.text
    assert "nothing was changed" in reply.text
    assert settings_rows(stage) == settings_before
    assert await stage.parts.org.severity() == "warning"
    assert await stage.parts.org.pagerduty_enabled()
    new_lines = (await audit_lines(stage))[len(audit_before) :]
    assert [(line.kind, line.actor, line.data["action"]) for line in new_lines] == [
        ("action.refused", alice.email, f"admin {action}")
    ]
    assert stage.events.requests == []  # `admin test` pages nobody
    assert transaction_ids(stage) == []
    assert stage.slack.calls_to("views.open") == []  # `admin key` opens no form


# --- the integration-key form -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("pasted", "shown"),
    [
        ("Zq7Xw2Lm9Pa4Rt6Yb1Nc8Vd3Fg5Hj0K", "exactly 32 characters; this one has 31"),
        ("u+abcdefghijklmnopqrs", REST_TOKEN_TEXT),
        ("y_NbAkKc66ryYTWUXYEu", REST_TOKEN_TEXT),
    ],
)
async def test_a_malformed_key_is_shown_beside_the_field_and_nothing_is_stored(
    stage: Stage, pasted: str, shown: str
) -> None:
    carol = stage.person("carol")
    settings_before = settings_rows(stage)

    status, answer = await submit_key(stage, carol, pasted)

    assert status == 200
    assert answer["response_action"] == "errors"
    errors = answer["errors"]
    assert isinstance(errors, dict)
    assert list(errors) == [KEY_BLOCK_ID]
    assert shown in errors[KEY_BLOCK_ID]
    assert errors[KEY_BLOCK_ID].endswith(".")  # whole sentences, never cut mid-word
    assert pasted not in errors[KEY_BLOCK_ID]  # the secret is never echoed
    assert settings_rows(stage) == settings_before
    assert INTEGRATION_KEY not in settings_rows(stage)
    assert "setting.changed" not in await audit_kinds(stage)
    assert stage.dms(carol) == []


def test_a_field_error_too_long_for_one_sentence_is_cut_at_a_word() -> None:
    shown = whole_sentences("word " * 60)
    assert len(shown) <= 150
    assert shown.endswith("word…")


async def test_a_valid_key_is_stored_encrypted_and_the_admin_sees_it_only_masked(stage: Stage) -> None:
    carol = stage.person("carol")

    status, answer = await submit_key(stage, carol, VALID_KEY)

    assert status == 200
    assert answer == {}  # the modal closes
    dm = await stage.wait_for_dm(carol, messages.KEY_SAVED_TITLE)
    assert "•" * 28 + VALID_KEY[-4:] in dm
    stored = settings_rows(stage)[INTEGRATION_KEY]
    assert VALID_KEY not in stored
    assert SecretBox(SecretStr(SECRET_KEY)).decrypt(stored) == VALID_KEY
    assert all(VALID_KEY not in value for value in settings_rows(stage).values())
    files = list(database_file(stage).parent.glob(database_file(stage).name + "*"))  # the file and its WAL
    assert database_file(stage) in files
    for path in files:
        assert VALID_KEY.encode() not in path.read_bytes(), path
    assert VALID_KEY not in slack_traffic(stage)
    [changed] = [line for line in await audit_lines(stage) if line.kind == "setting.changed"]
    assert changed.actor == carol.email
    assert VALID_KEY not in json.dumps(changed.data)
    assert VALID_KEY[-4:] in str(changed.data["new"])


async def test_a_non_admin_submitting_a_forged_key_form_is_refused_and_nothing_is_stored(stage: Stage) -> None:
    alice = stage.person("alice")
    settings_before = settings_rows(stage)

    status, answer = await submit_key(stage, alice, VALID_KEY)

    assert status == 200
    assert answer == {}
    told = await stage.wait_for_dm(alice, messages.admin_refused("key"))
    assert VALID_KEY not in told
    assert settings_rows(stage) == settings_before
    assert INTEGRATION_KEY not in settings_rows(stage)
    refused = [line for line in await audit_lines(stage) if line.kind == "action.refused"]
    assert [(line.actor, line.data["action"]) for line in refused] == [(alice.email, "admin key")]
    assert "setting.changed" not in await audit_kinds(stage)
    assert VALID_KEY not in slack_traffic(stage)


# --- targets Ackgate can't find or can't page -------------------------------------------------


def assert_nothing_sent(stage: Stage) -> None:
    assert transaction_ids(stage) == []
    assert stage.events.requests == []
    assert stage.slack.calls_to("chat.postMessage") == []


@pytest.mark.parametrize(("target", "named"), [("<@U0NOBODY|nobody>", "@U0NOBODY"), ("nobody@example.com", None)])
async def test_an_unknown_target_is_named_in_the_answer_and_nothing_is_sent(
    stage: Stage, target: str, named: str | None
) -> None:
    alice = stage.person("alice")

    reply = await stage.command(alice, f"auth {target} please confirm")

    assert messages.auth_unknown_target(named or target) in reply.text
    assert "Mention them as @name or give their work email" in reply.text
    assert_nothing_sent(stage)
    assert "auth.requested" not in await audit_kinds(stage)


async def test_a_target_whose_email_slack_hides_is_explained_and_nothing_is_sent(stage: Stage) -> None:
    alice, dave = stage.person("alice"), stage.person("dave", email="", in_pagerduty=False)

    reply = await stage.command(alice, f"auth <@{dave.user_id}|dave>")

    assert "Ackgate can't see Dave's email address" in reply.text
    assert "users:read.email" in reply.text
    assert_nothing_sent(stage)
    assert stage.dms(dave) == []


async def test_a_target_who_is_not_a_pagerduty_user_is_reached_by_chat_and_the_requester_told(stage: Stage) -> None:
    alice, erin = stage.person("alice"), stage.person("erin", in_pagerduty=False)

    reply = await stage.command(alice, f"auth <@{erin.user_id}|erin>")

    assert "Authentication request sent to erin@example.com" in reply.text
    assert "erin@example.com isn't a PagerDuty user" in reply.text
    assert "Reached by: chat" in reply.text.splitlines()  # and not PagerDuty
    await stage.wait_for_dm(erin, "alice@example.com asks you to confirm your identity")
    assert stage.events.requests == []
    assert any(r.path == "/users" for r in stage.pd.requests)  # it was looked up, by email
    assert len(transaction_ids(stage)) == 1


# --- PagerDuty's Events API failing ----------------------------------------------------------


async def assert_reached_by_chat_and_status_shows_error(
    stage: Stage, reply: Reply, *, bob: Person, carol: Person, reason: str
) -> None:
    assert "Authentication request sent to bob@example.com" in reply.text
    assert "Reached by: chat" in reply.text.splitlines()  # and not PagerDuty
    assert "Sent by chat because PagerDuty could not be used" in reply.text
    assert reason in reply.text
    await stage.wait_for_dm(bob, "alice@example.com asks you to confirm your identity")
    assert stage.events.events == []
    assert len(transaction_ids(stage)) == 1
    status = await stage.command(carol, "admin status")
    assert f"PagerDuty Events: Error at {messages.when(stage.clock.now())}" in status.text
    assert reason in status.text


@pytest.mark.parametrize("status", [429, 500])
async def test_events_failing_every_retry_falls_back_to_chat_and_admin_status_shows_error(
    stage: Stage, backoff_delays: list[float], status: int
) -> None:
    alice, bob, carol = stage.person("alice"), stage.person("bob"), stage.person("carol")
    stage.events.fail_next(None, status=status)

    reply = await stage.command(alice, f"auth <@{bob.user_id}|bob>")

    assert [r.status for r in stage.events.requests] == [status] * 3  # three attempts, then chat
    assert backoff_delays == [2.0, 4.0]
    await assert_reached_by_chat_and_status_shows_error(
        stage, reply, bob=bob, carol=carol, reason=f"it answered HTTP {status}"
    )


async def test_events_unreachable_falls_back_to_chat_and_admin_status_shows_error(
    stage: Stage, backoff_delays: list[float]
) -> None:
    alice, bob, carol = stage.person("alice"), stage.person("bob"), stage.person("carol")
    await stage.events.stop()  # nothing listens at the Events URL any more

    reply = await stage.command(alice, f"auth <@{bob.user_id}|bob>")

    assert backoff_delays == [2.0, 4.0]
    await assert_reached_by_chat_and_status_shows_error(
        stage, reply, bob=bob, carol=carol, reason="it could not be reached"
    )


# --- a user who turned PagerDuty off ---------------------------------------------------------


async def test_a_user_with_pagerduty_off_is_reached_by_chat_only(stage: Stage) -> None:
    alice, bob = stage.person("alice"), stage.person("bob")

    saved = await stage.command(bob, "prefs pagerduty off")
    assert messages.PREFS_SAVED_TITLE in saved.text
    assert "PagerDuty: off" in saved.text
    assert "Chat: on" in saved.text

    reply = await stage.command(alice, f"auth <@{bob.user_id}|bob>")
    assert "Authentication request sent to bob@example.com" in reply.text
    assert "Reached by: chat" in reply.text.splitlines()  # and not PagerDuty
    await stage.wait_for_dm(bob, "alice@example.com asks you to confirm your identity")
    assert stage.events.requests == []
    assert not any(r.path == "/users" for r in stage.pd.requests)  # no lookup for a page never sent

    shown = await stage.command(bob, "prefs")
    assert messages.PREFS_TITLE in shown.text
    assert "PagerDuty: off" in shown.text
    assert "Chat: on" in shown.text
    [changed] = [line for line in await audit_lines(stage) if line.kind == "setting.changed"]
    assert changed.subject == "prefs:bob@example.com"
    assert changed.data["new"] == "pagerduty off, chat on"
