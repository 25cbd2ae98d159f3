"""Inbound Teams activities read into typed values: what the Teams bot needs from a POST to
``/api/messages`` once :mod:`handlers.teams.auth` has verified it.

* :func:`parse_activity` checks the fields Ackgate relies on (botbuilder's msrest deserialiser accepts
  almost anything: ``"type": 5`` deserialises) and returns a :class:`TeamsTurn` holding both the typed
  summary and botbuilder's ``Activity`` model (for ``TurnContext``/``TeamsActivityHandler``). Anything
  unusable is :class:`MalformedActivity`, which the endpoint answers 400.
* :func:`command_text` is the text to hand to :func:`bot.core.commands.parse_command`: the bot's own mention
  removed, every other mention normalised to the core's ``@<user id>`` (``@29:…``), and a leading
  ``access`` or ``/access`` dropped (in a 1:1 chat the bare arguments work too). Mentions are replaced
  as literal strings at their position, never through a regular expression: botbuilder's
  ``remove_mention_text`` builds a regex from the display name unescaped (SDK-NOTES §5), so a name like
  ``a.*`` would delete other text.
* :attr:`TeamsTurn.dedup_key` (``teams:<conversation id>:<activity id>``) lets the endpoint process a
  redelivered activity once: a message's key is its command inbox row (:mod:`handlers.teams.recovery`),
  any other activity's a ``SeenStore`` key.

Wiring (:mod:`handlers.teams.platform`): the endpoint reads the body with ``bot.core.json_limits.loads_bounded``, calls
:func:`parse_activity`, authenticates, records ``dedup_key`` once and hands ``turn.activity`` to the adapter;
``on_message_activity`` calls :func:`command_text` then ``parse_command``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from botbuilder.schema import Activity

MAX_TEXT = 28_000  # Teams' own limit on a message is about 28 KB
_COMMAND_WORDS = {"access", "/access"}
_SPACE = re.compile(r"[\s\u00a0\u200b]+")

Json = dict[str, Any]


class MalformedActivity(ValueError):
    """The body is not an activity Ackgate can handle; ``detail`` says which field is wrong (no body)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


@dataclass(frozen=True)
class TeamsUser:
    id: str  # the MRI, "29:…", specific to this bot
    name: str = ""
    aad_object_id: str = ""


@dataclass(frozen=True)
class Mention:
    text: str  # as it appears in the message, e.g. "<at>Bob B</at>"
    user_id: str
    name: str = ""


@dataclass(frozen=True)
class TeamsTurn:
    """What one inbound activity says, typed."""

    kind: str  # "message" | "invoke" | "conversationUpdate" | "installationUpdate" | …
    activity_id: str
    service_url: str
    channel_id: str
    conversation_id: str
    conversation_type: str  # "personal" | "channel" | "groupChat"
    tenant_id: str
    user: TeamsUser
    bot_id: str
    text: str
    mentions: tuple[Mention, ...]
    value: Any
    reply_to_id: str | None
    name: str | None  # the invoke's name, e.g. "adaptiveCard/action"
    action: str | None  # installationUpdate: "add" | "remove"
    team_id: str | None
    activity: Activity

    @property
    def dedup_key(self) -> str:
        return f"teams:{self.conversation_id}:{self.activity_id}"

    @property
    def is_personal(self) -> bool:
        return self.conversation_type == "personal"

    @property
    def is_card_submit(self) -> bool:
        """An ``Action.Submit`` click: a message with a value and no text."""
        return self.kind == "message" and isinstance(self.value, Mapping) and not self.text.strip()


def _text(body: Mapping[str, Any], *path: str, required: bool = False) -> str:
    node: Any = body
    for key in path:
        node = node.get(key) if isinstance(node, Mapping) else None
    if node is None and not required:
        return ""
    if not isinstance(node, str) or (required and not node):
        raise MalformedActivity(f"{'.'.join(path)} must be a non-empty string")
    return node


def _mentions(entities: object) -> tuple[Mention, ...]:
    if entities is None:
        return ()
    if not isinstance(entities, list):
        raise MalformedActivity("entities must be a list")
    found = []
    for entity in entities:
        if not isinstance(entity, Mapping) or entity.get("type") != "mention":
            continue
        mentioned = entity.get("mentioned")
        text = entity.get("text")
        if not isinstance(mentioned, Mapping) or not isinstance(mentioned.get("id"), str) or not isinstance(text, str):
            raise MalformedActivity("a mention entity needs text and mentioned.id")
        name = mentioned.get("name")
        found.append(Mention(text, mentioned["id"], name if isinstance(name, str) else ""))
    return tuple(found)


def parse_activity(body: object) -> TeamsTurn:
    """The activity as a :class:`TeamsTurn`, or :class:`MalformedActivity`."""
    if not isinstance(body, Mapping):
        raise MalformedActivity("the body is not a JSON object")
    kind = _text(body, "type", required=True)
    interactive = kind in {"message", "invoke"}
    text = _text(body, "text")
    if len(text) > MAX_TEXT:
        raise MalformedActivity("text is too long")
    tenant = _text(body, "conversation", "tenantId") or _text(body, "channelData", "tenant", "id")
    team_id = _text(body, "channelData", "team", "id") or None
    reply_to = _text(body, "replyToId") or None
    name = _text(body, "name") or None
    action = _text(body, "action") or None
    mentions = _mentions(body.get("entities"))
    try:
        model = Activity().deserialize(dict(body))
    except ValueError as exc:  # msrest's DeserializationError is a ValueError
        raise MalformedActivity("the activity does not match the Bot Framework schema") from exc
    return TeamsTurn(
        kind=kind,
        activity_id=_text(body, "id", required=interactive),
        service_url=_text(body, "serviceUrl", required=True),
        channel_id=_text(body, "channelId", required=True),
        conversation_id=_text(body, "conversation", "id", required=True),
        conversation_type=_text(body, "conversation", "conversationType") or "personal",
        tenant_id=tenant,
        user=TeamsUser(
            _text(body, "from", "id", required=interactive),
            _text(body, "from", "name"),
            _text(body, "from", "aadObjectId"),
        ),
        bot_id=_text(body, "recipient", "id", required=True),
        text=text,
        mentions=mentions,
        value=body.get("value"),
        reply_to_id=reply_to,
        name=name,
        action=action,
        team_id=team_id,
        activity=model,
    )


def normalise_mentions(text: str, mentions: Sequence[Mention], *, bot_id: str) -> str:
    """``text`` with the bot's own mentions removed and every other one replaced by ``@<user id>``.
    Each mention's text is replaced literally, at its next occurrence after the previous one."""
    out: list[str] = []
    cursor = 0
    for mention in mentions:
        if not mention.text:
            continue
        at = text.find(mention.text, cursor)
        if at < 0:
            continue
        replacement = "" if mention.user_id == bot_id else f" @{mention.user_id} "
        out.append(text[cursor:at])
        out.append(replacement)
        cursor = at + len(mention.text)
    out.append(text[cursor:])
    return _SPACE.sub(" ", "".join(out)).strip()


def command_text(turn: TeamsTurn) -> str:
    """What followed ``access``/``/access`` (or the bare text), ready for ``parse_command``."""
    text = normalise_mentions(turn.text, turn.mentions, bot_id=turn.bot_id)
    head, _, rest = text.partition(" ")
    if head.lower() in _COMMAND_WORDS:
        return rest.strip()
    return text
