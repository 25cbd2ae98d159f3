"""Inbound activities read into typed values: required fields checked, the bot's own mention stripped
literally (not by botbuilder's unescaped regex), other mentions normalised to ``@<user id>``."""

from __future__ import annotations

from typing import Any

import pytest
from botbuilder.core import TurnContext
from botbuilder.schema import Activity

from bot.core.commands import ListMine, RequestAccess, RequestAuth, parse_command
from handlers.teams.activity import MalformedActivity, Mention, command_text, normalise_mentions, parse_activity
from tests.fakes.teams_schemas import load

BOT = "28:00000000-0000-0000-0000-000000000002"


def _reference(name: str) -> dict[str, Any]:
    body: dict[str, Any] = load(f"activities/{name}")
    body.pop("_comment", None)
    return body


def _with_text(text: str, mentions: list[tuple[str, str, str]]) -> dict[str, Any]:
    body = _reference("message.channel-mention.json")
    body["text"] = text
    body["entities"] = [{"type": "mention", "text": t, "mentioned": {"id": i, "name": n}} for t, i, n in mentions]
    return body


def test_a_personal_message_is_read_into_a_typed_turn() -> None:
    turn = parse_activity(_reference("message.personal.json"))
    assert (turn.kind, turn.conversation_type, turn.is_personal, turn.channel_id) == (
        "message",
        "personal",
        True,
        "msteams",
    )
    assert turn.user.id.startswith("29:") and turn.user.aad_object_id
    assert turn.tenant_id and turn.service_url == "https://smba.trafficmanager.net/amer/"
    assert isinstance(turn.activity, Activity) and turn.activity.from_property.id == turn.user.id
    assert turn.dedup_key == f"teams:{turn.conversation_id}:{turn.activity_id}"
    assert command_text(turn) == "request prod-db read 4h"


def test_a_channel_message_loses_the_bot_mention_and_the_access_word() -> None:
    turn = parse_activity(_reference("message.channel-mention.json"))
    assert turn.conversation_type == "channel" and turn.team_id == "19:teamthreadid@thread.tacv2"
    assert command_text(turn) == "request prod-db read 4h"


@pytest.mark.parametrize(
    ("typed", "command"),
    [
        ("<at>Ackgate</at> access list", ListMine()),
        ("<at>Ackgate</at> /access list", ListMine()),
        ("<at>Ackgate</at>\u00a0list", ListMine()),
        ("/ACCESS prod-db 2h lag", RequestAccess(resource="prod-db", duration="2h", reason="lag")),
        ("prod-db 2h lag", RequestAccess(resource="prod-db", duration="2h", reason="lag")),
    ],
)
def test_access_slash_access_and_bare_arguments_all_parse(typed: str, command: object) -> None:
    body = _with_text(typed, [("<at>Ackgate</at>", BOT, "Ackgate")] if "<at>" in typed else [])
    assert parse_command(command_text(parse_activity(body))) == command


def test_other_mentions_become_the_cores_neutral_form() -> None:
    body = _with_text(
        "<at>Ackgate</at> access auth <at>Bob B</at> please confirm with <at>Bob B</at>",
        [
            ("<at>Ackgate</at>", BOT, "Ackgate"),
            ("<at>Bob B</at>", "29:bob", "Bob B"),
            ("<at>Bob B</at>", "29:bob2", "Bob B"),
        ],
    )
    text = command_text(parse_activity(body))
    assert text == "auth @29:bob please confirm with @29:bob2"  # same display name, told apart by position
    assert parse_command(text) == RequestAuth(target="@29:bob", message="please confirm with @29:bob2")


def test_the_bot_mention_is_removed_literally_unlike_botbuilder() -> None:
    """botbuilder's remove_mention_text deletes the display name everywhere (through re.sub)."""
    body = _with_text("<at>Bot</at> access Botdb 1h", [("<at>Bot</at>", BOT, "Bot")])
    assert command_text(parse_activity(body)) == "Botdb 1h"
    sdk = TurnContext.remove_mention_text(Activity().deserialize(body), BOT)
    assert sdk.split() == ["access", "db", "1h"]  # the SDK turned the resource "Botdb" into "db"


def test_mentions_missing_from_the_text_are_ignored() -> None:
    assert normalise_mentions("access list", [Mention("<at>Gone</at>", "29:x")], bot_id=BOT) == "access list"


def test_an_action_submit_click_is_recognised() -> None:
    turn = parse_activity(_reference("message.action-submit.json"))
    assert turn.is_card_submit and turn.reply_to_id == "1700000000100" and turn.value["verb"] == "approve"


def test_an_action_execute_invoke_keeps_its_name_and_value() -> None:
    turn = parse_activity(_reference("invoke.adaptiveCard-action.execute.json"))
    assert (turn.kind, turn.name, turn.value["action"]["verb"]) == ("invoke", "adaptiveCard/action", "approve")
    assert not turn.is_card_submit


def test_an_installation_update_needs_no_sender_text() -> None:
    body = {
        "type": "installationUpdate",
        "action": "add",
        "id": "f:1",
        "serviceUrl": "https://smba.trafficmanager.net/amer/",
        "channelId": "msteams",
        "conversation": {"id": "a:1xyz", "conversationType": "personal", "tenantId": "t1"},
        "recipient": {"id": BOT},
        "from": {"id": "29:alice"},
    }
    turn = parse_activity(body)
    assert (turn.kind, turn.action, turn.tenant_id) == ("installationUpdate", "add", "t1")


MALFORMED = {
    "not an object": ["type", "message"],
    "no type": {"serviceUrl": "https://x/", "conversation": {"id": "c"}},
    "type not a string": {**_reference("message.personal.json"), "type": 5},
    "no serviceUrl": {k: v for k, v in _reference("message.personal.json").items() if k != "serviceUrl"},
    "no conversation id": {**_reference("message.personal.json"), "conversation": {}},
    "from not an object": {**_reference("message.personal.json"), "from": "alice"},
    "message without id": {k: v for k, v in _reference("message.personal.json").items() if k != "id"},
    "entities not a list": {**_reference("message.personal.json"), "entities": {"type": "mention"}},
    "mention without id": {
        **_reference("message.personal.json"),
        "entities": [{"type": "mention", "text": "<at>x</at>"}],
    },
    "text far too long": {**_reference("message.personal.json"), "text": "x" * 30_000},
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_activity_is_refused_with_what_is_wrong(case: str) -> None:
    with pytest.raises(MalformedActivity) as refused:
        parse_activity(MALFORMED[case])
    assert refused.value.detail
