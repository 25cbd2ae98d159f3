"""Cards and the request form rendered as Block Kit, within Slack's limits, and the form read back."""

from __future__ import annotations

from typing import Any

import pytest

from bot.core import messages
from bot.core.commands import MAX_REASON, RequestAccess
from bot.core.views import Action, Card, Choice, Fact, Link, RequestForm, Tone
from bot.runtime.simulators.slack_requests import form_state
from handlers.slack.blocks import (
    FORM_CALLBACK_ID,
    read_form,
    render_card,
    render_form,
    render_notice,
)
from tests.fakes.block_kit import assert_within_limits, violations

APPROVAL = Card(
    title="Access request: prod-db for 2h",
    text="Alice asks for prod-db: checking <replication> lag & errors",
    facts=(
        Fact("Requester", "alice@example.com"),
        Fact("Incident", "#42 Checkout down", url="https://acme.pagerduty.com/incidents/PI1?a=1&b=2"),
    ),
    actions=(
        Action(kind="approve", label="Approve", target="r-7k2m9q4x", style="primary"),
        Action(kind="deny", label="Deny", target="r-7k2m9q4x", style="danger"),
    ),
    links=(Link("Runbook", "https://wiki.example.com/runbooks/prod-db"),),
    footnote="Expires unless approved within 60 minutes",
    tone=Tone.WARNING,
)


def _blocks(body: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [b for b in body["blocks"] if b["type"] == kind]


def test_card_title_becomes_a_header_with_the_tone_marker() -> None:
    header = _blocks(render_card(APPROVAL), "header")[0]
    assert header["text"]["type"] == "plain_text"
    assert header["text"]["text"] == ":warning: Access request: prod-db for 2h"


def test_card_text_is_mrkdwn_with_control_characters_escaped() -> None:
    section = _blocks(render_card(APPROVAL), "section")[0]
    assert section["text"] == {
        "type": "mrkdwn",
        "text": "Alice asks for prod-db: checking &lt;replication&gt; lag &amp; errors",
    }


def test_facts_become_labelled_fields_and_a_url_fact_a_link() -> None:
    fields = next(b["fields"] for b in render_card(APPROVAL)["blocks"] if "fields" in b)
    assert fields[0]["text"] == "*Requester*\nalice@example.com"
    assert fields[1]["text"] == "*Incident*\n<https://acme.pagerduty.com/incidents/PI1?a=1&amp;b=2|#42 Checkout down>"


def test_actions_become_buttons_with_ackgate_action_ids_target_values_and_styles() -> None:
    (actions,) = _blocks(render_card(APPROVAL), "actions")
    assert [(e["action_id"], e["value"], e.get("style"), e["text"]["text"]) for e in actions["elements"]] == [
        ("ackgate.approve", "r-7k2m9q4x", "primary", "Approve"),
        ("ackgate.deny", "r-7k2m9q4x", "danger", "Deny"),
    ]


def test_an_unknown_button_style_is_left_out() -> None:
    card = Card(title="t", actions=(Action(kind="revoke", label="I'm done", target="g-1", style="loud"),))
    (button,) = _blocks(render_card(card), "actions")[0]["elements"]
    assert "style" not in button


def test_repeated_action_kinds_go_to_separate_actions_blocks() -> None:
    """Slack rejects a block whose action ids repeat, so two revoke buttons need two blocks."""
    card = Card(
        title="Your grants",
        actions=(Action("revoke", "End prod-db", "g-1"), Action("revoke", "End kafka", "g-2")),
    )
    body = render_card(card)
    assert [[e["value"] for e in b["elements"]] for b in _blocks(body, "actions")] == [["g-1"], ["g-2"]]
    assert_within_limits(body)


def test_links_and_footnote_are_rendered_escaped() -> None:
    body = render_card(APPROVAL)
    assert any(
        b.get("text", {}).get("text") == "<https://wiki.example.com/runbooks/prod-db|Runbook>"
        for b in _blocks(body, "section")
    )
    (context,) = _blocks(body, "context")
    assert context["elements"][0]["text"] == "Expires unless approved within 60 minutes"


def test_fallback_text_carries_title_and_text_for_notifications() -> None:
    assert render_card(APPROVAL)["text"] == (
        "Access request: prod-db for 2h\nAlice asks for prod-db: checking &lt;replication&gt; lag &amp; errors"
    )


def test_a_card_without_title_or_text_still_has_fallback_text() -> None:
    assert render_card(Card(title="", facts=(Fact("Grant", "g-1"), Fact("Ends", "14:00"))))["text"] == (
        "Grant: g-1\nEnds: 14:00"
    )
    assert render_card(Card(title=""))["text"]


def test_the_example_card_is_within_slack_limits() -> None:
    assert_within_limits(render_card(APPROVAL))


def test_an_over_long_card_is_truncated_to_slacks_limits_with_an_ellipsis() -> None:
    huge = Card(
        title="T" * 500,
        text="x" * 10_000,
        facts=tuple(Fact(f"label {i}" * 50, "v" * 5000) for i in range(700)),
        actions=tuple(Action(f"kind{i % 3}", "L" * 200, "r" * 3000, style="primary") for i in range(80)),
        links=tuple(Link("link" * 30, "https://example.com/" + "p" * 400) for i in range(40)),
        footnote="f" * 5000,
    )
    body = render_card(huge)
    assert violations(body) == []
    header = _blocks(body, "header")[0]["text"]["text"]
    assert len(header) == 150
    assert header.endswith("…")
    assert _blocks(body, "section")[0]["text"]["text"].endswith("…")
    assert len(body["blocks"]) == 50


def test_the_limits_checker_catches_an_over_long_section() -> None:
    """The checker is what the other tests lean on, so it must be able to fail."""
    bad = {"blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "x" * 3001}}]}
    assert violations(bad) == ["blocks[0] section text: 3001 > section.text.max_chars 3000"]


def test_a_notice_is_one_escaped_paragraph_without_header() -> None:
    body = render_notice("Usage: /access <resource> [duration]")
    assert body["blocks"] == [
        {"type": "section", "text": {"type": "mrkdwn", "text": "Usage: /access &lt;resource&gt; [duration]"}}
    ]
    assert body["text"] == "Usage: /access &lt;resource&gt; [duration]"


# --- the request form -------------------------------------------------------------------------

FORM = RequestForm(
    resources=(Choice("prod-db", "Production database"), Choice("kafka", "Kafka admin")),
    default_duration="1h",
    reason="PagerDuty incident #42 Checkout down",
    selected_resource="kafka",
    hint="You acknowledged #42 Checkout down & it is still open",
)


def _input(view: dict[str, Any], block_id: str) -> dict[str, Any]:
    return next(b for b in view["blocks"] if b.get("block_id") == block_id)


def test_form_is_a_modal_with_ackgate_callback_id_and_short_labels() -> None:
    view = render_form(FORM)
    assert view["type"] == "modal"
    assert view["callback_id"] == FORM_CALLBACK_ID == "ackgate.request"
    assert view["title"]["text"] == messages.SLACK_FORM_TITLE
    assert view["submit"]["text"] == messages.SLACK_FORM_SUBMIT
    assert_within_limits(view, surface="modal")


def test_form_offers_resources_in_a_static_select_with_the_chosen_one_selected() -> None:
    element = _input(render_form(FORM), "resource")["element"]
    assert element["type"] == "static_select"
    assert [(o["value"], o["text"]["text"]) for o in element["options"]] == [
        ("prod-db", "Production database"),
        ("kafka", "Kafka admin"),
    ]
    assert element["initial_option"]["value"] == "kafka"


def test_form_prefills_duration_and_reason_and_shows_the_hint() -> None:
    view = render_form(FORM)
    assert _input(view, "duration")["element"]["initial_value"] == "1h"
    reason = _input(view, "reason")
    assert reason["optional"] is True
    assert reason["element"]["multiline"] is True
    assert reason["element"]["max_length"] == MAX_REASON
    assert reason["element"]["initial_value"] == "PagerDuty incident #42 Checkout down"
    assert view["blocks"][0] == {
        "type": "context",
        "elements": [{"type": "mrkdwn", "text": "You acknowledged #42 Checkout down &amp; it is still open"}],
    }


def test_a_plain_form_has_no_hint_and_no_prefilled_reason() -> None:
    view = render_form(RequestForm(resources=FORM.resources))
    assert [b["type"] for b in view["blocks"]] == ["input", "input", "input"]
    assert "initial_value" not in _input(view, "reason")["element"]
    assert "initial_option" not in _input(view, "resource")["element"]


def test_a_form_with_too_many_long_resources_stays_within_modal_limits() -> None:
    resources = tuple(Choice(f"resource-{i}-" + "n" * 200, "Label " * 40) for i in range(150))
    view = render_form(RequestForm(resources=resources, hint="h" * 5000, reason="r" * 900))
    assert violations(view, surface="modal") == []
    block = _input(view, "resource")
    assert len(block["element"]["options"]) == 100
    assert block["hint"]["text"] == messages.SLACK_FORM_TOO_MANY_RESOURCES


def test_a_form_without_resources_says_so_and_cannot_be_submitted() -> None:
    view = render_form(RequestForm(resources=()))
    assert "submit" not in view
    assert view["blocks"][0]["text"]["text"] == messages.SLACK_FORM_NO_RESOURCES


def test_read_form_turns_valid_input_into_a_request_with_normalised_reason() -> None:
    values = form_state(resource="prod-db", duration=" 2h ", reason="checking   replication\nlag")
    assert read_form(values) == RequestAccess(resource="prod-db", duration="2h", reason="checking replication lag")


def test_read_form_accepts_an_empty_reason() -> None:
    assert read_form(form_state(resource="kafka", duration="30m")) == RequestAccess("kafka", "30m", "")


@pytest.mark.parametrize(
    ("values", "block_ids"),
    [
        (form_state(resource="prod-db", duration="soon"), ["duration"]),
        (form_state(resource="prod-db", duration="0m"), ["duration"]),
        (form_state(resource=None, duration="1h"), ["resource"]),
        (form_state(resource="prod-db", duration="1h", reason="x" * (MAX_REASON + 1)), ["reason"]),
        ({}, ["resource", "duration"]),
    ],
)
def test_read_form_returns_slack_errors_by_block_id(values: dict[str, Any], block_ids: list[str]) -> None:
    errors = read_form(values)
    assert isinstance(errors, dict)
    assert sorted(errors) == sorted(block_ids)
    assert all(errors.values())


def test_read_form_reads_the_block_and_action_ids_render_form_uses() -> None:
    """The form and its reader agree: fill every input of a rendered form the way Slack reports it."""
    view = render_form(FORM)
    typed = {"resource": "prod-db", "duration": "45m", "reason": "deploy rollback"}
    values: dict[str, Any] = {}
    for block in view["blocks"]:
        if block["type"] != "input":
            continue
        element = block["element"]
        value = typed[block["block_id"]]
        state: dict[str, Any] = {"type": element["type"]}
        if element["type"] == "static_select":
            state["selected_option"] = next(o for o in element["options"] if o["value"] == value)
        else:
            state["value"] = value
        values[block["block_id"]] = {element["action_id"]: state}
    assert read_form(values) == RequestAccess("prod-db", "45m", "deploy rollback")
