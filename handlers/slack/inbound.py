"""What Slack may send to ``/slack/events``, checked before the listeners or the core see any of it.

Three gates, each cheap and each answering in microseconds:

1. :func:`check_signature` reads the two signature headers as Slack documents them (``v0=`` and 64
   hex digits; an integer timestamp within five minutes) and compares the HMAC in constant time.
   Anything else is ``None``: the request is unsigned, and nothing of its body is looked at.
2. :func:`parse_inbound` reads the form body (bounded field count) and its ``payload=`` JSON through
   :func:`bot.core.json_limits.loads_bounded`, so depth and number length are bounded too.
3. The result is validated into the typed models below (a slash command, a ``block_actions`` or a
   ``view_submission``); every other type is refused. The listeners are then given the model's own
   dump, so no field they index (``view.state``, ``actions``, ``response_urls``, …) can hold
   anything but what the model allows.

Anything that does not fit raises :class:`Refused`, which the mount turns into a 4xx with one
sentence and one log line, never the body.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from bot.core.json_limits import MalformedJson, loads_bounded

MAX_SKEW_SECONDS = 300  # Slack's own window for replays
MAX_FORM_FIELDS = 64
_SIGNATURE = re.compile(r"v0=[0-9a-f]{64}")
_TIMESTAMP = re.compile(r"[0-9]{1,12}")


class Refused(Exception):
    """The request cannot be taken: ``status`` to answer and ``reason`` for the log (never the body)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def check_signature(headers: Mapping[str, str], raw: bytes, *, secret: str, now: float) -> str | None:
    """Why the request is not validly signed by Slack, or None when it is."""
    timestamp = headers.get("X-Slack-Request-Timestamp", "")
    signature = headers.get("X-Slack-Signature", "")
    if not _TIMESTAMP.fullmatch(timestamp):
        return "no integer X-Slack-Request-Timestamp"
    if abs(now - int(timestamp)) > MAX_SKEW_SECONDS:
        return "the timestamp is more than five minutes away"
    if not _SIGNATURE.fullmatch(signature):
        return "no v0= signature of 64 hex digits"
    base = b"v0:" + timestamp.encode() + b":" + raw
    expected = "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode(), signature.encode()):
        return "the signature does not match"
    return None


# --- the models --------------------------------------------------------------------------------

_FROZEN = ConfigDict(extra="ignore", frozen=True)
SlackId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9]{1,64}$")]
ShortText = Annotated[str, StringConstraints(max_length=255)]
Url = Annotated[str, StringConstraints(pattern=r"^https?://[\x21-\x7e]{1,2040}$")]


class SlashCommand(BaseModel):
    """The form Slack posts for ``/access …`` (``reference/slack/payload-shapes/SlashCommandPayload.json``)."""

    model_config = _FROZEN
    command: ShortText
    text: Annotated[str, StringConstraints(max_length=8000)] = ""
    user_id: SlackId
    channel_id: ShortText = ""
    team_id: ShortText = ""
    api_app_id: ShortText = ""
    response_url: Url
    trigger_id: Annotated[str, StringConstraints(min_length=1, max_length=255)]
    is_enterprise_install: Literal["true", "false"] = "false"


class User(BaseModel):
    model_config = _FROZEN
    id: SlackId
    team_id: ShortText = ""


class Team(BaseModel):
    model_config = _FROZEN
    id: ShortText = ""


class Channel(BaseModel):
    model_config = _FROZEN
    id: ShortText = ""


class Action(BaseModel):
    model_config = _FROZEN
    action_id: ShortText
    block_id: ShortText = ""
    type: ShortText = ""
    value: Annotated[str, StringConstraints(max_length=2000)] | None = None
    action_ts: ShortText = ""


class Container(BaseModel):
    model_config = _FROZEN
    type: ShortText = ""
    message_ts: ShortText = ""
    channel_id: ShortText = ""
    view_id: ShortText = ""


class Option(BaseModel):
    model_config = _FROZEN
    value: Annotated[str, StringConstraints(max_length=2000)] | None = None


class ElementState(BaseModel):
    """One input's state in ``view.state.values[block][action]``: only what Ackgate's forms read."""

    model_config = _FROZEN
    type: ShortText = ""
    value: Annotated[str, StringConstraints(max_length=8000)] | None = None
    selected_option: Option | None = None


class ViewState(BaseModel):
    model_config = _FROZEN
    values: dict[ShortText, dict[ShortText, ElementState]] = Field(default_factory=dict, max_length=100)


class View(BaseModel):
    model_config = _FROZEN
    id: ShortText
    type: Literal["modal", "home"]
    callback_id: ShortText
    hash: ShortText = ""
    private_metadata: Annotated[str, StringConstraints(max_length=3000)] = ""
    state: ViewState = Field(default_factory=ViewState)


class ResponseUrl(BaseModel):
    model_config = _FROZEN
    response_url: Url
    channel_id: ShortText = ""
    block_id: ShortText = ""
    action_id: ShortText = ""


class BlockActions(BaseModel):
    """A button click (``payload-shapes/BlockActionPayload.json``), as far as Ackgate reads it."""

    model_config = _FROZEN
    type: Literal["block_actions"]
    user: User
    team: Team | None = None
    api_app_id: ShortText = ""
    trigger_id: ShortText = ""
    response_url: Url | None = None
    container: Container | None = None
    channel: Channel | None = None
    actions: list[Action] = Field(min_length=1, max_length=25)
    is_enterprise_install: bool = False


class ViewSubmission(BaseModel):
    """A submitted modal (``payload-shapes/ViewSubmissionPayload.json``), as far as Ackgate reads it."""

    model_config = _FROZEN
    type: Literal["view_submission"]
    user: User
    team: Team | None = None
    api_app_id: ShortText = ""
    trigger_id: ShortText = ""
    view: View
    response_urls: list[ResponseUrl] = Field(default_factory=list, max_length=1)
    is_enterprise_install: bool = False


Interaction = BlockActions | ViewSubmission
Inbound = SlashCommand | BlockActions | ViewSubmission
_INTERACTIONS: dict[str, type[BlockActions] | type[ViewSubmission]] = {
    "block_actions": BlockActions,
    "view_submission": ViewSubmission,
}


def parse_inbound(raw: bytes) -> Inbound:
    """The typed request in a signed body. Raises :class:`Refused` (400) for anything else."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Refused(400, "the body is not UTF-8") from exc
    try:
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=True, max_num_fields=MAX_FORM_FIELDS)
    except ValueError as exc:
        raise Refused(400, "the body is not a form") from exc
    form = dict(pairs)
    if len(form) != len(pairs):
        raise Refused(400, "a form field is repeated")
    # NUL is no character anyone types, and PostgreSQL cannot store it: refuse it as malformed.
    if any("\x00" in value for value in form.values()) or "\\u0000" in form.get("payload", ""):
        raise Refused(400, "the body holds a NUL character")
    try:
        if "payload" in form:
            return _interaction(form["payload"])
        if "command" in form:
            return SlashCommand.model_validate(form)
    except ValidationError as exc:
        raise Refused(400, f"the payload does not fit ({_first_error(exc)})") from exc
    raise Refused(400, "neither a slash command nor an interaction payload")


def _interaction(payload: str) -> Interaction:
    try:
        data = loads_bounded(payload)
    except MalformedJson as exc:
        raise Refused(400, f"payload= is not acceptable JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise Refused(400, "payload= is not a JSON object")
    kind = data.get("type")
    model = _INTERACTIONS.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise Refused(400, "an interaction type Ackgate does not handle")
    return model.model_validate(data)


def _first_error(exc: ValidationError) -> str:
    """Where the first problem is (field names only: no value of the body reaches a log line)."""
    first = exc.errors(include_url=False, include_input=False, include_context=False)[0]
    where = ".".join(str(part) for part in first["loc"])[:120]
    return f"{where}: {first['type']}"


def listener_body(inbound: Inbound) -> dict[str, Any]:
    """What the listeners are given as the request body: the model's dump, nothing the model did not check."""
    return inbound.model_dump(mode="json", exclude_none=True)
