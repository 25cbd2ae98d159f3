"""Neutral cards and forms rendered as Adaptive Cards 1.5 (validated against the official schema), and
card clicks read back with tampered data refused."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from bot.core import messages
from bot.core.cards import approval_card
from bot.core.commands import MAX_REASON, RequestAccess
from bot.core.domain import AccessRequest, Incident, Principal, RequestStatus
from bot.core.views import Action, Card, Choice, Fact, Link, RequestForm, Tone
from handlers.teams import cards as tcards
from handlers.teams.cards import ActionClick, CardSigner, InvalidAction, read_action, render_card
from tests.fakes.teams_schemas import check_card, check_connector_body, load

MARKDOWN = "[click me](https://evil.example) **now** <at>everyone</at> _x_"
VERBS = {"approve", "deny", "revoke", "request", "set_key"}

REQUEST = AccessRequest(
    id="r-7k2m9q4x",
    requester=Principal("teams", "29:alice", "alice@example.com", "Alice"),
    resource="prod-db",
    duration_seconds=7200,
    reason=MARKDOWN,
    flow="oncall",
    status=RequestStatus.PENDING,
    created_at=datetime(2026, 1, 1, tzinfo=UTC),
    incident=Incident(
        "PI1",
        42,
        "Checkout **down** [x](https://evil.example)",
        "triggered",
        "https://acme.pagerduty.com/incidents/PI1",
    ),
    approvers=("bob@example.com",),
)


def _walk(node: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        found.append(node)
        for value in node.values():
            found.extend(_walk(value))
    elif isinstance(node, list):
        for value in node:
            found.extend(_walk(value))
    return found


def _of_type(card: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [n for n in _walk(card) if n.get("type") == kind]


def _texts(card: dict[str, Any]) -> list[str]:
    return [run["text"] for run in _of_type(card, "TextRun")]


def test_the_core_approval_card_validates_and_renders_untrusted_text_as_plain_runs() -> None:
    content = render_card(approval_card(REQUEST))
    check_card(content)
    assert content["version"] == "1.5"
    assert _of_type(content, "TextBlock") == [] and _of_type(content, "FactSet") == []
    assert MARKDOWN in _texts(content)  # shown exactly as typed, in a TextRun (never markdown)
    assert "Checkout **down** [x](https://evil.example)" in " ".join(_texts(content))


def test_approve_and_deny_are_action_execute_with_an_action_submit_fallback() -> None:
    content = render_card(approval_card(REQUEST))
    executes = _of_type(content, "Action.Execute")
    assert [(a["verb"], a["title"], a["style"]) for a in executes] == [
        ("approve", messages.APPROVE, "positive"),
        ("deny", messages.DENY, "destructive"),
    ]
    for action in executes:
        assert action["data"] == {"verb": action["verb"], "target": REQUEST.id}
        assert action["fallback"] == {
            "type": "Action.Submit",
            "title": action["title"],
            "data": action["data"],
            "style": action["style"],
        }
    assert _of_type(content, "ActionSet")[0]["actions"] == executes


@pytest.mark.parametrize(
    ("tone", "colour"),
    [(Tone.INFO, "accent"), (Tone.SUCCESS, "good"), (Tone.WARNING, "warning"), (Tone.DANGER, "attention")],
)
def test_tones_become_title_colours(tone: Tone, colour: str) -> None:
    content = render_card(Card(title="Title", text="body", tone=tone))
    check_card(content)
    title = content["body"][0]["inlines"][0]
    assert (title["text"], title["color"], title["weight"]) == ("Title", colour, "bolder")


def test_url_facts_and_links_open_urls_but_only_http_ones() -> None:
    card = Card(
        title="t",
        facts=(
            Fact("Incident", "#42", url="https://acme.pagerduty.com/i/1"),
            Fact("Bad", "x", url="javascript:alert(1)"),
        ),
        links=(Link("Runbook", "https://wiki.example.com/r"), Link("Evil", "javascript:alert(1)")),
    )
    content = render_card(card)
    check_card(content)
    opens = _of_type(content, "Action.OpenUrl")
    assert [o["url"] for o in opens] == ["https://acme.pagerduty.com/i/1", "https://wiki.example.com/r"]


def test_a_huge_card_stays_within_the_budget_and_still_validates() -> None:
    card = Card(
        title="T" * 5000,
        text="x" * 200_000,
        facts=tuple(Fact(f"label {i}", "v" * 3000) for i in range(200)),
        actions=tuple(Action("revoke", "Revoke " + "r" * 100, f"g-{i:08d}") for i in range(20)),
        footnote="f" * 5000,
    )
    content = render_card(card)
    check_card(content)
    assert tcards.card_size(content) <= tcards.CARD_BUDGET_BYTES
    assert len(_of_type(content, "Action.Execute")) == tcards.MAX_ACTIONS
    assert any(t.endswith("…") for t in _texts(content))


def test_a_normal_card_is_not_shortened() -> None:
    content = render_card(approval_card(REQUEST))
    assert not any(t.endswith("…") for t in _texts(content))


def test_the_card_activity_validates_against_the_bot_connector_swagger() -> None:
    activity = tcards.card_activity(render_card(approval_card(REQUEST)), summary="Access request")
    body = activity.serialize()
    check_connector_body("Conversations_SendToConversation", body)
    assert body["attachments"][0]["contentType"] == "application/vnd.microsoft.card.adaptive"
    assert body["summary"] == "Access request" and "text" not in body


def test_invoke_responses_have_the_documented_shapes() -> None:
    card = render_card(Card(title="Approved"))
    reference = load("activities/invoke-response.adaptiveCard-action.card.json")
    reference.pop("_comment", None)
    response = tcards.invoke_card_response(card)
    assert set(response) == set(reference) and response["type"] == reference["type"]
    check_card(response["value"])
    error = tcards.invoke_error_response("nope")
    reference_error = load("activities/invoke-response.adaptiveCard-action.error.json")
    reference_error.pop("_comment", None)
    assert set(error) == set(reference_error) and set(error["value"]) == set(reference_error["value"])
    assert json.dumps(error)  # plain dicts: no msrest serialisation in the way


# --- forms ----------------------------------------------------------------------------------------

FORM = RequestForm(
    resources=(Choice("prod-db", "Production database"), Choice("staging", "")),
    default_duration="2h",
    reason="checking lag",
    selected_resource="prod-db",
    hint="You acknowledged #42 Checkout **down**",
)


def test_the_request_form_has_a_choice_set_a_duration_and_a_reason() -> None:
    content = tcards.render_form(FORM)
    check_card(content)
    choice = _of_type(content, "Input.ChoiceSet")[0]
    assert choice["id"] == "resource" and choice["value"] == "prod-db"
    assert choice["choices"] == [
        {"title": "Production database", "value": "prod-db"},
        {"title": "staging", "value": "staging"},
    ]
    duration, reason = _of_type(content, "Input.Text")
    assert (duration["id"], duration["value"]) == ("duration", "2h")
    assert (reason["id"], reason["value"], reason["isMultiline"], reason["maxLength"]) == (
        "reason",
        "checking lag",
        True,
        MAX_REASON,
    )
    (submit,) = _of_type(content, "Action.Execute")
    assert submit["verb"] == "request" and submit["fallback"]["type"] == "Action.Submit"
    assert "You acknowledged #42 Checkout **down**" in _texts(content)


def test_the_form_without_resources_says_so_and_has_no_button() -> None:
    content = tcards.render_form(RequestForm(resources=()))
    check_card(content)
    assert messages.SLACK_FORM_NO_RESOURCES in _texts(content) and _of_type(content, "Action.Execute") == []


def test_a_submitted_form_is_read_into_a_command_or_errors_shown_on_the_form() -> None:
    click = read_action(
        {
            "action": {
                "type": "Action.Execute",
                "verb": "request",
                "data": {
                    "verb": "request",
                    "target": "request",
                    "resource": "prod-db",
                    "duration": "2h",
                    "reason": " lag ",
                },
            }
        },
        verbs=VERBS,
    )
    assert tcards.read_form(click.inputs) == RequestAccess(resource="prod-db", duration="2h", reason="lag")
    errors = tcards.read_form({"resource": "", "duration": "forever", "reason": "r" * (MAX_REASON + 1)})
    assert isinstance(errors, dict) and set(errors) == {"resource", "duration", "reason"}
    content = tcards.render_form(FORM, errors=errors)
    check_card(content)
    assert set(errors.values()) <= set(_texts(content))


def test_the_key_form_uses_a_password_input_that_is_never_prefilled() -> None:
    content = tcards.render_key_form()
    check_card(content)
    (key,) = _of_type(content, "Input.Text")
    assert key["style"] == "password" and "value" not in key
    click = read_action(
        {"verb": "set_key", "target": "set_key", "key": " 0123456789abcdef0123456789abcdef "}, verbs=VERBS
    )
    assert tcards.read_key_form(click.inputs) == "0123456789abcdef0123456789abcdef"


# --- clicks ---------------------------------------------------------------------------------------


def test_the_reference_invoke_and_submit_clicks_are_read() -> None:
    invoke = load("activities/invoke.adaptiveCard-action.execute.json")["value"]
    invoke["action"]["data"] = {"verb": "approve", "target": "r-7k2m9q4x", "comment": "ok for 4h"}
    assert read_action(invoke, verbs=VERBS) == ActionClick("approve", "r-7k2m9q4x", {"comment": "ok for 4h"}, True)
    submit = load("activities/message.action-submit.json")["value"]
    submit = {**submit, "target": "r-7k2m9q4x"}
    submit.pop("requestId")
    assert read_action(submit, verbs=VERBS) == ActionClick("approve", "r-7k2m9q4x", {"comment": "ok for 4h"}, False)


def test_a_rendered_button_round_trips_through_both_click_kinds() -> None:
    signer = CardSigner(b"0123456789abcdef-test-key")
    content = render_card(approval_card(REQUEST), signer=signer)
    check_card(content)
    approve = _of_type(content, "Action.Execute")[0]
    via_execute = read_action(
        {"action": {"type": "Action.Execute", "verb": approve["verb"], "data": approve["data"]}},
        verbs=VERBS,
        signer=signer,
    )
    via_submit = read_action(approve["fallback"]["data"], verbs=VERBS, signer=signer)
    assert (via_execute.verb, via_execute.target, via_submit.target) == ("approve", REQUEST.id, REQUEST.id)


SIGNER = CardSigner(b"0123456789abcdef-test-key")
GOOD = {"verb": "approve", "target": "r-7k2m9q4x", "sig": SIGNER.sign("approve", "r-7k2m9q4x")}

TAMPERED = {
    "not an object": "approve",
    "no action": {"trigger": "manual", "action": None},
    "not Action.Execute": {"action": {"type": "Action.Submit", "verb": "approve", "data": GOOD}},
    "unknown verb": {**GOOD, "verb": "make_admin"},
    "verb mismatch": {"action": {"type": "Action.Execute", "verb": "deny", "data": GOOD}},
    "data a string": {"action": {"type": "Action.Execute", "verb": "approve", "data": "r-7k2m9q4x"}},
    "no target": {"verb": "approve", "sig": GOOD["sig"]},
    "target a number": {**GOOD, "target": 7},
    "target with spaces": {**GOOD, "target": "r-1 OR 1=1"},
    "target swapped": {**GOOD, "target": "r-othr0000"},
    "signature missing": {"verb": "approve", "target": "r-7k2m9q4x"},
    "signature of another verb": {**GOOD, "verb": "deny", "sig": GOOD["sig"]},
    "input not text": {**GOOD, "comment": {"nested": True}},
}


@pytest.mark.parametrize("case", list(TAMPERED))
def test_tampered_click_data_is_refused_with_a_clear_sentence(case: str) -> None:
    with pytest.raises(InvalidAction) as refused:
        read_action(TAMPERED[case], verbs=VERBS, signer=SIGNER)
    assert refused.value.message == messages.TEAMS_CARD_ACTION_INVALID


def test_the_untampered_signed_click_is_accepted() -> None:
    assert read_action(GOOD, verbs=VERBS, signer=SIGNER).target == "r-7k2m9q4x"


def test_a_short_signing_key_is_refused() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        CardSigner(b"short")
