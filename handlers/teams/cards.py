"""Neutral cards and forms rendered as Adaptive Cards 1.5 for Teams, and card clicks read back.

Rendering rules (issue 8 §4; SDK-NOTES §4):

* Every piece of text, trusted or not (titles carry display names, facts carry incident titles, text
  carries reasons), is a ``TextRun`` inside a ``RichTextBlock``. ``TextRun`` never interprets markdown,
  so ``[click](https://evil)`` or ``**bold**`` in a reason shows as typed. No ``TextBlock`` or ``FactSet``
  (both interpret markdown) is used.
* The card's :class:`~bot.core.views.Tone` colours its title (:data:`TONE_COLOURS`).
* Buttons are ``Action.Execute`` (verb = :attr:`Action.kind`, ``data`` = verb + target) inside an
  ``ActionSet``, each with an ``Action.Submit`` fallback carrying the same data, for clients without
  Universal Actions. Links are ``Action.OpenUrl`` (http/https only).
* Each card stays within :data:`CARD_BUDGET_BYTES` of JSON: long texts are cut with "…", then facts are
  dropped, until it fits.
* With a :class:`CardSigner`, the data of every button carries an HMAC of (verb, target), and
  :func:`read_action` refuses data whose signature does not match; the server re-checks everything anyway.

:func:`read_action` turns an ``adaptiveCard/action`` invoke value or an ``Action.Submit`` message value
into an :class:`ActionClick` (verb, target, inputs) or raises :class:`InvalidAction`; :func:`read_form` and
:func:`read_key_form` read the request form and the admin key form. The ``invoke_*`` helpers build the
invoke response bodies as plain dicts (botbuilder 4.17's ``CloudAdapter.process`` serialises them twice
and answers 500, SDK-NOTES §9), and :func:`card_activity` wraps a card in a botbuilder ``Activity``.

Wiring: the Teams bot (:mod:`handlers.teams.bot`) replies with ``card_activity(render_card(...))``, the
notifier posts and PUTs the same, and a click (invoke or ``Action.Submit``) goes through :func:`read_action`;
an :class:`InvalidAction` is answered with an error card, and invokes Ackgate does not handle with
:func:`invoke_error_response`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from botbuilder.schema import Activity, ActivityTypes, Attachment

from bot.core import messages
from bot.core.commands import MAX_REASON, RequestAccess, check_reason
from bot.core.durations import parse_duration
from bot.core.errors import UsageError
from bot.core.views import Action, Card, Fact, Link, RequestForm, Tone

CARD_CONTENT_TYPE = "application/vnd.microsoft.card.adaptive"
CARD_VERSION = "1.5"
CARD_SCHEMA = "http://adaptivecards.io/schemas/adaptive-card.json"
CARD_BUDGET_BYTES = 24 * 1024  # under every published Teams message limit (SDK-NOTES §4)

MAX_TITLE = 300
MAX_TEXT = 6000
MAX_FACT_LABEL = 100
MAX_FACT_VALUE = 2000
MAX_FOOTNOTE = 1000
MAX_LABEL = 60  # button labels
MAX_ACTIONS = 6  # Teams shows at most six buttons in an ActionSet
MAX_CHOICES = 100
MAX_TARGET = 200

TONE_COLOURS = {Tone.INFO: "accent", Tone.SUCCESS: "good", Tone.WARNING: "warning", Tone.DANGER: "attention"}
_ACTION_STYLES = {"primary": "positive", "danger": "destructive"}

# The request form's verb and input ids; the key form's.
FORM_VERB = "request"
RESOURCE_INPUT = "resource"
DURATION_INPUT = "duration"
REASON_INPUT = "reason"
KEY_FORM_VERB = "set_key"
KEY_INPUT = "key"
MAX_KEY = 200

_VERB = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
_TARGET = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9_.:@-]{{0,{MAX_TARGET - 1}}}$")
_RESERVED = {"verb", "target", "sig"}

Json = dict[str, Any]


class InvalidAction(ValueError):
    """A click whose data is not what Ackgate put on the card: unknown verb, missing or malformed target,
    or a bad signature. ``message`` is the sentence to show; nothing may be done."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail
        self.message = messages.TEAMS_CARD_ACTION_INVALID


class CardSigner:
    """HMAC-SHA256 over (verb, target), so a click can only carry data Ackgate put on a card."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("A card signing key needs at least 16 bytes")
        self._key = key

    def sign(self, verb: str, target: str) -> str:
        mac = hmac.new(self._key, f"{verb}\x00{target}".encode(), hashlib.sha256)
        return mac.hexdigest()[:32]

    def verify(self, verb: str, target: str, signature: object) -> bool:
        return isinstance(signature, str) and hmac.compare_digest(self.sign(verb, target), signature)


# --- text ----------------------------------------------------------------------------------------


def truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(limit - 1, 0)] + "…"


def _run(text: str, **style: Any) -> Json:
    return {"type": "TextRun", "text": text, **style}


def _rich(*runs: Json, **props: Any) -> Json:
    return {"type": "RichTextBlock", "inlines": list(runs), **props}


def _safe_url(url: str | None) -> str | None:
    return url if url and re.match(r"^https?://[^\s]+$", url, re.IGNORECASE) else None


# --- cards ---------------------------------------------------------------------------------------


def _button_data(verb: str, target: str, signer: CardSigner | None) -> Json:
    data: Json = {"verb": verb, "target": target}
    if signer is not None:
        data["sig"] = signer.sign(verb, target)
    return data


def _button(action: Action, signer: CardSigner | None) -> Json:
    title = truncate(action.label, MAX_LABEL)
    data = _button_data(action.kind, truncate(action.target, MAX_TARGET), signer)
    style = _ACTION_STYLES.get(action.style or "", "default")
    return {
        "type": "Action.Execute",
        "title": title,
        "verb": action.kind,
        "data": data,
        "style": style,
        "fallback": {"type": "Action.Submit", "title": title, "data": data, "style": style},
    }


def _fact(fact: Fact, value_limit: int) -> Json:
    value = _run(truncate(fact.value, value_limit))
    url = _safe_url(fact.url)
    if url is not None:
        value["selectAction"] = {"type": "Action.OpenUrl", "url": url}
        value["color"] = "accent"
    return {
        "type": "ColumnSet",
        "spacing": "small",
        "columns": [
            {
                "type": "Column",
                "width": "auto",
                "items": [_rich(_run(truncate(fact.label, MAX_FACT_LABEL), weight="bolder"))],
            },
            {"type": "Column", "width": "stretch", "items": [_rich(value)]},
        ],
    }


def _links(links: tuple[Link, ...]) -> list[Json]:
    actions = []
    for link in links:
        url = _safe_url(link.url)
        if url is not None:
            actions.append({"type": "Action.OpenUrl", "title": truncate(link.text, MAX_LABEL), "url": url})
    return actions


def _build(card: Card, signer: CardSigner | None, *, text_limit: int, facts: int) -> Json:
    body: list[Json] = []
    if card.title:
        title = _run(truncate(card.title, MAX_TITLE), weight="bolder", size="medium", color=TONE_COLOURS[card.tone])
        body.append(_rich(title))
    if card.text:
        body.append(_rich(_run(truncate(card.text, text_limit))))
    shown = card.facts[:facts]
    body.extend(_fact(fact, min(MAX_FACT_VALUE, text_limit)) for fact in shown)
    if len(shown) < len(card.facts):
        body.append(_rich(_run("…", isSubtle=True)))
    buttons = [_button(action, signer) for action in card.actions] + _links(card.links)
    if buttons:
        body.append({"type": "ActionSet", "actions": buttons[:MAX_ACTIONS]})
    if card.footnote:
        body.append(_rich(_run(truncate(card.footnote, min(MAX_FOOTNOTE, text_limit)), isSubtle=True, size="small")))
    if not body:
        body.append(_rich(_run(card.fallback or "Ackgate")))
    return {
        "type": "AdaptiveCard",
        "$schema": CARD_SCHEMA,
        "version": CARD_VERSION,
        "fallbackText": truncate(card.fallback, 500),
        "body": body,
    }


def card_size(content: Mapping[str, Any]) -> int:
    """Bytes of the card as sent (compact JSON, UTF-8)."""
    return len(json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode())


def render_card(card: Card, *, signer: CardSigner | None = None, budget: int = CARD_BUDGET_BYTES) -> Json:
    """The card as an Adaptive Card 1.5, within ``budget`` bytes."""
    text_limit, facts = MAX_TEXT, len(card.facts)
    while True:
        content = _build(card, signer, text_limit=text_limit, facts=facts)
        if card_size(content) <= budget or (text_limit <= 50 and facts == 0):
            return content
        if text_limit > 50:
            text_limit //= 2
        else:
            facts //= 2


def render_notice(text: str, *, tone: Tone = Tone.INFO) -> Json:
    """A one-paragraph card (an error or a short answer)."""
    return render_card(Card(title="", text=text, tone=tone))


def card_activity(content: Json, *, summary: str = "") -> Activity:
    """A message activity carrying the card (``summary`` shows in notifications)."""
    return Activity(
        type=ActivityTypes.message,
        summary=truncate(summary, 200) or None,
        attachments=[Attachment(content_type=CARD_CONTENT_TYPE, content=content)],
    )


# --- invoke responses ----------------------------------------------------------------------------


def invoke_card_response(content: Json) -> Json:
    """The body answering an ``adaptiveCard/action`` invoke: the clicker's card is replaced by ``content``."""
    return {"statusCode": 200, "type": CARD_CONTENT_TYPE, "value": content}


def invoke_message_response(text: str) -> Json:
    return {"statusCode": 200, "type": "application/vnd.microsoft.activity.message", "value": text}


def invoke_error_response(message: str, *, code: str = "BadRequest", status: int = 400) -> Json:
    return {
        "statusCode": status,
        "type": "application/vnd.microsoft.error",
        "value": {"code": code, "message": message},
    }


# --- the request form and the key form --------------------------------------------------------------


def _label(text: str) -> Json:
    return _rich(_run(text, weight="bolder"))


def render_form(
    form: RequestForm, *, errors: Mapping[str, str] | None = None, signer: CardSigner | None = None
) -> Json:
    """The access-request form: resource choice, duration, reason, and a Request button (verb
    ``request``). ``errors`` (from :func:`read_form`) are shown under their inputs."""
    errors = errors or {}
    body: list[Json] = [_rich(_run(messages.SLACK_FORM_TITLE, weight="bolder", size="medium", color="accent"))]
    if form.hint:
        body.append(_rich(_run(truncate(form.hint, MAX_TEXT), isSubtle=True)))
    actions: list[Json] = []
    if not form.resources:
        body.append(_rich(_run(messages.SLACK_FORM_NO_RESOURCES)))
    else:
        choices = [
            {"title": truncate(c.label or c.value, 100), "value": truncate(c.value, 150)}
            for c in form.resources[:MAX_CHOICES]
        ]
        resource: Json = {
            "type": "Input.ChoiceSet",
            "id": RESOURCE_INPUT,
            "label": messages.SLACK_FORM_RESOURCE,
            "placeholder": messages.SLACK_FORM_RESOURCE_PLACEHOLDER,
            "style": "compact",
            "isRequired": True,
            "errorMessage": messages.SLACK_FORM_RESOURCE_MISSING,
            "choices": choices,
        }
        if form.selected_resource and any(c["value"] == form.selected_resource for c in choices):
            resource["value"] = form.selected_resource
        body.append(resource)
        body.extend(_error(errors, RESOURCE_INPUT))
        if len(form.resources) > MAX_CHOICES:
            body.append(_rich(_run(messages.SLACK_FORM_TOO_MANY_RESOURCES, isSubtle=True)))
        body.append(
            {
                "type": "Input.Text",
                "id": DURATION_INPUT,
                "label": messages.SLACK_FORM_DURATION,
                "placeholder": messages.SLACK_FORM_DURATION_HINT,
                "value": form.default_duration,
                "maxLength": 20,
                "isRequired": True,
            }
        )
        body.extend(_error(errors, DURATION_INPUT))
        reason: Json = {
            "type": "Input.Text",
            "id": REASON_INPUT,
            "label": messages.SLACK_FORM_REASON,
            "placeholder": messages.SLACK_FORM_REASON_HINT,
            "isMultiline": True,
            "maxLength": MAX_REASON,
        }
        if form.reason:
            reason["value"] = truncate(form.reason, MAX_REASON)
        body.append(reason)
        body.extend(_error(errors, REASON_INPUT))
        actions.append(_submit_button(messages.SLACK_FORM_SUBMIT, FORM_VERB, signer))
    if actions:
        body.append({"type": "ActionSet", "actions": actions})
    return {"type": "AdaptiveCard", "$schema": CARD_SCHEMA, "version": CARD_VERSION, "body": body}


def _error(errors: Mapping[str, str], input_id: str) -> list[Json]:
    return [_rich(_run(errors[input_id], color="attention"))] if input_id in errors else []


def _submit_button(title: str, verb: str, signer: CardSigner | None) -> Json:
    # A form button acts on the form itself; its target is the verb, so the signature still binds it.
    data = _button_data(verb, verb, signer)
    return {
        "type": "Action.Execute",
        "title": title,
        "verb": verb,
        "data": data,
        "style": "positive",
        "fallback": {"type": "Action.Submit", "title": title, "data": data, "style": "positive"},
    }


def render_key_form(*, signer: CardSigner | None = None) -> Json:
    """The admin form for the Events API v2 integration key: a password-style input, never prefilled."""
    return {
        "type": "AdaptiveCard",
        "$schema": CARD_SCHEMA,
        "version": CARD_VERSION,
        "body": [
            _rich(_run(messages.KEY_FORM_TITLE, weight="bolder", size="medium", color="accent")),
            {
                "type": "Input.Text",
                "id": KEY_INPUT,
                "label": messages.KEY_FORM_LABEL,
                "style": "password",
                "maxLength": MAX_KEY,
                "isRequired": True,
            },
            _rich(_run(messages.KEY_FORM_HINT, isSubtle=True)),
            {"type": "ActionSet", "actions": [_submit_button(messages.TEAMS_KEY_FORM_SAVE, KEY_FORM_VERB, signer)]},
        ],
    }


# --- clicks read back ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ActionClick:
    """A button click: what to do (``verb``), on what (``target``), and the card's input values."""

    verb: str
    target: str
    inputs: dict[str, str] = field(default_factory=dict)
    execute: bool = True  # False: the Action.Submit fallback (a message activity; no invoke response)


def read_action(value: object, *, verbs: Collection[str], signer: CardSigner | None = None) -> ActionClick:
    """Read an ``adaptiveCard/action`` invoke's ``value`` (``{"action": {"type": "Action.Execute", "verb",
    "data"}, "trigger"}``) or an ``Action.Submit`` message's ``value`` (the data merged with the inputs).
    Raises :class:`InvalidAction` unless the verb is one of ``verbs`` and the data is as rendered."""
    if not isinstance(value, Mapping):
        raise InvalidAction("the click carries no value object")
    execute = "action" in value
    if execute:
        action = value["action"]
        if not isinstance(action, Mapping) or action.get("type") != "Action.Execute":
            raise InvalidAction("the invoke is not an Action.Execute")
        data = action.get("data")
        verb = action.get("verb")
    else:
        data, verb = value, value.get("verb")
    if not isinstance(data, Mapping):
        raise InvalidAction("the click's data is not an object")
    if data.get("verb") != verb or not isinstance(verb, str) or not _VERB.match(verb) or verb not in verbs:
        raise InvalidAction("unknown or mismatched verb")
    target = data.get("target")
    if not isinstance(target, str) or not _TARGET.match(target):
        raise InvalidAction("missing or malformed target")
    if signer is not None and not signer.verify(verb, target, data.get("sig")):
        raise InvalidAction("the click's signature does not match")
    inputs: dict[str, str] = {}
    for key, item in data.items():
        if key in _RESERVED:
            continue
        if not isinstance(key, str) or not isinstance(item, str):
            raise InvalidAction("an input value is not text")
        inputs[key] = item
    return ActionClick(verb, target, inputs, execute)


def read_form(inputs: Mapping[str, str]) -> RequestAccess | dict[str, str]:
    """The request form's inputs as a command, or ``{input id: message}`` errors to show on the form."""
    errors: dict[str, str] = {}
    resource = inputs.get(RESOURCE_INPUT, "").strip()
    if not resource:
        errors[RESOURCE_INPUT] = messages.SLACK_FORM_RESOURCE_MISSING
    duration = inputs.get(DURATION_INPUT, "").strip()
    try:
        parse_duration(duration)
    except UsageError as exc:
        errors[DURATION_INPUT] = exc.message
    reason = ""
    try:
        reason = check_reason(inputs.get(REASON_INPUT, ""))
    except UsageError as exc:
        errors[REASON_INPUT] = exc.message
    if errors:
        return errors
    return RequestAccess(resource=resource, duration=duration, reason=reason)


def read_key_form(inputs: Mapping[str, str]) -> str:
    """The pasted integration key (stripped; the caller validates it and never echoes it)."""
    return inputs.get(KEY_INPUT, "").strip()[:MAX_KEY]
