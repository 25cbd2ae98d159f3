"""Neutral cards and forms rendered as Slack Block Kit, and the request form read back.

Every length Slack enforces is applied here by truncating with "…", so a long reason or an
incident title never turns a post into an ``invalid_blocks`` error. The numbers come from
Slack's Block Kit reference (``block-kit-limits.json`` in the shared reference data).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from bot.core import messages
from bot.core.commands import MAX_REASON, RequestAccess, check_reason
from bot.core.durations import parse_duration
from bot.core.errors import UsageError
from bot.core.views import Action, Card, Fact, Link, RequestForm, Tone

# Slack limits (characters or items).
MAX_MESSAGE_BLOCKS = 50
MAX_SECTION_TEXT = 3000
MAX_FIELDS = 10
MAX_FIELD_TEXT = 2000
MAX_HEADER = 150
MAX_BUTTON_TEXT = 75
MAX_BUTTON_VALUE = 2000
MAX_ACTIONS = 25
MAX_OPTIONS = 100
MAX_OPTION_TEXT = 75
MAX_OPTION_VALUE = 150
MAX_MODAL_LABEL = 24
MAX_INPUT_HINT = 2000
MAX_PLACEHOLDER = 150
MAX_FALLBACK_TEXT = 3000  # Slack truncates at 40,000 but asks for far less in notifications

ACTION_PREFIX = "ackgate."
FORM_CALLBACK_ID = "ackgate.request"
KEY_FORM_CALLBACK_ID = "ackgate.admin_key"
KEY_BLOCK_ID = "key"
OPEN_KEY_FORM = "open_key_form"  # a card action asking the adapter to open the key form
# Block ids of the form's inputs; each input's element uses the action id ``value``.
RESOURCE_BLOCK = "resource"
DURATION_BLOCK = "duration"
REASON_BLOCK = "reason"
INPUT_ACTION = "value"

_TONE_PREFIX = {
    Tone.INFO: "",
    Tone.SUCCESS: ":white_check_mark: ",
    Tone.WARNING: ":warning: ",
    Tone.DANGER: ":no_entry: ",
}
_BUTTON_STYLES = {"primary", "danger"}

Block = dict[str, Any]


def action_id(kind: str) -> str:
    """The Block Kit ``action_id`` of a card action of this kind, e.g. ``ackgate.approve``."""
    return ACTION_PREFIX + kind


def truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def escape(text: str) -> str:
    """Escape the three characters Slack's mrkdwn treats as control characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _mrkdwn(text: str) -> dict[str, str]:
    return {"type": "mrkdwn", "text": text}


def _plain(text: str, limit: int) -> dict[str, Any]:
    return {"type": "plain_text", "text": truncate(text, limit), "emoji": True}


def _link(text: str, url: str) -> str:
    # "|" separates url from label inside <…>; it cannot appear raw in either part.
    return f"<{escape(url).replace('|', '%7C')}|{escape(text).replace('|', '¦')}>"


def _fact_text(fact: Fact) -> str:
    value = _link(fact.value, fact.url) if fact.url else escape(fact.value)
    return truncate(f"*{escape(fact.label)}*\n{value}", MAX_FIELD_TEXT)


def _fact_sections(facts: tuple[Fact, ...], *, budget: int) -> list[Block]:
    fields = [_mrkdwn(_fact_text(fact)) for fact in facts]
    room = max(budget, 0) * MAX_FIELDS
    if len(fields) > room:
        fields = fields[:room]
        if fields:
            fields[-1] = _mrkdwn("…")
    return [{"type": "section", "fields": fields[i : i + MAX_FIELDS]} for i in range(0, len(fields), MAX_FIELDS)]


def _button(action: Action) -> Block:
    button: Block = {
        "type": "button",
        "action_id": action_id(action.kind),
        "text": _plain(action.label, MAX_BUTTON_TEXT),
        "value": truncate(action.target, MAX_BUTTON_VALUE),
    }
    if action.style in _BUTTON_STYLES:
        button["style"] = action.style
    return button


def _action_blocks(actions: Iterable[Action]) -> list[Block]:
    # Slack wants action ids unique within a block, so a repeated kind (two "revoke" buttons for
    # two grants) starts a new actions block instead of getting a different action id.
    blocks: list[Block] = []
    current: list[Block] = []
    for action in actions:
        button = _button(action)
        if len(current) == MAX_ACTIONS or any(b["action_id"] == button["action_id"] for b in current):
            blocks.append({"type": "actions", "elements": current})
            current = []
        current.append(button)
    if current:
        blocks.append({"type": "actions", "elements": current})
    return blocks


def _fallback(card: Card) -> str:
    # Notifications and screen readers show only this, and slack_sdk warns when it is empty.
    parts = [part for part in (card.title, card.text) if part]
    parts = parts or [f"{fact.label}: {fact.value}" for fact in card.facts] or [card.footnote or "Ackgate"]
    return truncate(escape("\n".join(parts)), MAX_FALLBACK_TEXT)


def render_card(card: Card) -> dict[str, Any]:
    """A message body for chat.postMessage, chat.update or a response_url: ``text`` + ``blocks``."""
    head: list[Block] = []
    if card.title:
        title = truncate(_TONE_PREFIX[card.tone] + card.title, MAX_HEADER)
        head.append({"type": "header", "text": {"type": "plain_text", "text": title, "emoji": True}})
    if card.text:
        head.append({"type": "section", "text": _mrkdwn(truncate(escape(card.text), MAX_SECTION_TEXT))})
    tail: list[Block] = []
    if card.links:
        tail.append({"type": "section", "text": _mrkdwn(_links_text(card.links))})
    tail.extend(_action_blocks(card.actions))
    if card.footnote:
        tail.append({"type": "context", "elements": [_mrkdwn(truncate(escape(card.footnote), MAX_SECTION_TEXT))]})
    tail = tail[: MAX_MESSAGE_BLOCKS - len(head)]
    facts = _fact_sections(card.facts, budget=MAX_MESSAGE_BLOCKS - len(head) - len(tail))
    return {"text": _fallback(card), "blocks": head + facts + tail}


def _links_text(links: tuple[Link, ...]) -> str:
    joined = "  ·  ".join(_link(link.text, link.url) for link in links)
    # Cutting a "<url|text>" in half would leave broken markup; drop whole links instead.
    while len(joined) > MAX_SECTION_TEXT and links:
        links = links[:-1]
        joined = "  ·  ".join(_link(link.text, link.url) for link in links) + "  ·  …"
    return joined


def render_notice(text: str) -> dict[str, Any]:
    """A one-paragraph message (an error or a short answer) with no header."""
    return render_card(Card(title="", text=text))


# --- the request form -----------------------------------------------------------------------


def _option(value: str, label: str) -> Block:
    return {"text": _plain(label, MAX_OPTION_TEXT), "value": truncate(value, MAX_OPTION_VALUE)}


def _resource_input(form: RequestForm) -> Block:
    options = [_option(choice.value, choice.label or choice.value) for choice in form.resources[:MAX_OPTIONS]]
    element: Block = {
        "type": "static_select",
        "action_id": INPUT_ACTION,
        "placeholder": _plain(messages.SLACK_FORM_RESOURCE_PLACEHOLDER, MAX_PLACEHOLDER),
        "options": options,
    }
    chosen = [o for o in options if o["value"] == form.selected_resource]
    if chosen:
        element["initial_option"] = chosen[0]
    block: Block = {
        "type": "input",
        "block_id": RESOURCE_BLOCK,
        "label": _plain(messages.SLACK_FORM_RESOURCE, MAX_INPUT_HINT),
        "element": element,
    }
    if len(form.resources) > MAX_OPTIONS:
        block["hint"] = _plain(messages.SLACK_FORM_TOO_MANY_RESOURCES, MAX_INPUT_HINT)
    return block


def render_form(form: RequestForm) -> dict[str, Any]:
    """The request form as a modal view for views.open / views.update (callback ``ackgate.request``)."""
    blocks: list[Block] = []
    if form.hint:
        blocks.append({"type": "context", "elements": [_mrkdwn(truncate(escape(form.hint), MAX_INPUT_HINT))]})
    if not form.resources:
        blocks.append({"type": "section", "text": _mrkdwn(escape(messages.SLACK_FORM_NO_RESOURCES))})
    else:
        blocks.append(_resource_input(form))
        blocks.append(
            {
                "type": "input",
                "block_id": DURATION_BLOCK,
                "label": _plain(messages.SLACK_FORM_DURATION, MAX_INPUT_HINT),
                "hint": _plain(messages.SLACK_FORM_DURATION_HINT, MAX_INPUT_HINT),
                "element": {
                    "type": "plain_text_input",
                    "action_id": INPUT_ACTION,
                    "initial_value": form.default_duration,
                    "max_length": 20,
                },
            }
        )
        reason: Block = {
            "type": "plain_text_input",
            "action_id": INPUT_ACTION,
            "multiline": True,
            "max_length": MAX_REASON,
        }
        if form.reason:
            reason["initial_value"] = truncate(form.reason, MAX_REASON)
        blocks.append(
            {
                "type": "input",
                "block_id": REASON_BLOCK,
                "optional": True,
                "label": _plain(messages.SLACK_FORM_REASON, MAX_INPUT_HINT),
                "hint": _plain(messages.SLACK_FORM_REASON_HINT, MAX_INPUT_HINT),
                "element": reason,
            }
        )
    view: dict[str, Any] = {
        "type": "modal",
        "callback_id": FORM_CALLBACK_ID,
        "title": _plain(messages.SLACK_FORM_TITLE, MAX_MODAL_LABEL),
        "close": _plain(messages.SLACK_FORM_CLOSE, MAX_MODAL_LABEL),
        "blocks": blocks,
    }
    if form.resources:
        view["submit"] = _plain(messages.SLACK_FORM_SUBMIT, MAX_MODAL_LABEL)
    return view


def _state_value(values: Mapping[str, Any], block_id: str) -> str:
    element = values.get(block_id, {}).get(INPUT_ACTION) or {}
    if element.get("type") == "static_select":
        selected = element.get("selected_option") or {}
        return str(selected.get("value") or "")
    return str(element.get("value") or "")


def read_form(values: Mapping[str, Any]) -> RequestAccess | dict[str, str]:
    """Read ``view.state.values`` of a submitted form into a command, or into Slack's
    ``{block_id: message}`` errors when an input is wrong (shown under that input)."""
    errors: dict[str, str] = {}
    resource = _state_value(values, RESOURCE_BLOCK).strip()
    if not resource:
        errors[RESOURCE_BLOCK] = messages.SLACK_FORM_RESOURCE_MISSING
    duration = _state_value(values, DURATION_BLOCK).strip()
    try:
        parse_duration(duration)
    except UsageError as exc:
        errors[DURATION_BLOCK] = exc.message
    reason = ""
    try:
        reason = check_reason(_state_value(values, REASON_BLOCK))
    except UsageError as exc:
        errors[REASON_BLOCK] = exc.message
    if errors:
        return errors
    return RequestAccess(resource=resource, duration=duration, reason=reason)


def render_key_form() -> dict[str, Any]:
    """The admin form for pasting the Events API v2 integration key (never prefilled, never echoed)."""
    return {
        "type": "modal",
        "callback_id": KEY_FORM_CALLBACK_ID,
        "title": _plain(messages.KEY_FORM_TITLE, MAX_MODAL_LABEL),
        "submit": _plain("Save", MAX_MODAL_LABEL),
        "close": _plain("Cancel", MAX_MODAL_LABEL),
        "blocks": [
            {
                "type": "input",
                "block_id": KEY_BLOCK_ID,
                "label": _plain(messages.KEY_FORM_LABEL, MAX_INPUT_HINT),
                "hint": _plain(messages.KEY_FORM_HINT, MAX_INPUT_HINT),
                "element": {"type": "plain_text_input", "action_id": "value", "max_length": 200},
            }
        ],
    }


def read_key_form(values: dict[str, Any]) -> str:
    return str(((values.get(KEY_BLOCK_ID) or {}).get("value") or {}).get("value") or "")
