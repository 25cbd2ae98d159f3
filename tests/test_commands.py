"""The `/access` grammar: what each typed line becomes, and the usage line for what it can't be."""

from __future__ import annotations

import pytest

from bot.core.commands import (
    Admin,
    Extend,
    Help,
    ListMine,
    OpenForm,
    RequestAccess,
    RequestAuth,
    Revoke,
    SetPrefs,
    parse_command,
)
from bot.core.errors import UsageError
from handlers.slack.app import normalise_mentions


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", OpenForm()),
        ("prod-db 2h fixing INC-42", RequestAccess("prod-db", "2h", "fixing INC-42")),
        ("prod-db", RequestAccess("prod-db", None, "")),
        ("prod-db INC-42 replication", RequestAccess("prod-db", None, "INC-42 replication")),
        ("list", ListMine()),
        ("help", Help()),
        ("revoke G-ABC12345", Revoke("g-abc12345")),
        ("extend g-abc12345 30m", Extend("g-abc12345", "30m")),
        ("auth @U0BOB confirming the reset", RequestAuth("@U0BOB", "confirming the reset")),
        ("auth bob@example.com", RequestAuth("bob@example.com", "")),
        ("prefs", SetPrefs()),
        ("prefs pagerduty off chat on", SetPrefs(pagerduty=False, chat=True)),
        ("admin severity warning", Admin("severity", "warning")),
        ("admin pagerduty off", Admin("pagerduty", "off")),
        ("admin resolve on", Admin("resolve", "on")),
        ("admin key", Admin("key")),
        ("admin status", Admin("status")),
        ("admin test", Admin("test")),
    ],
)
def test_each_line_parses_to_its_command(text: str, expected: object) -> None:
    assert parse_command(text) == expected


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("prod-db 2x", "is not a duration"),
        ("prod-db 90 fixing", "is not a duration"),
        ("revoke", "Usage: /access revoke"),
        ("extend g-1", "Usage: /access extend"),
        ("list everything", "Usage: /access list"),
        ("auth", "Usage: /access auth"),
        ("prefs pagerduty maybe", "Usage: /access prefs"),
        ("prefs email on", "Usage: /access prefs"),
        ("admin severity loud", "Usage: /access admin"),
        ("admin reboot", "Usage: /access admin"),
        ("admin status now", "Usage: /access admin"),
        ("prod-db 1h " + "x" * 501, "keep it under 500"),
    ],
)
def test_malformed_lines_say_how_to_write_them(text: str, says: str) -> None:
    with pytest.raises(UsageError, match=says):
        parse_command(text)


def test_slack_mentions_and_mailto_links_become_neutral_names() -> None:
    assert normalise_mentions("auth <@U0BOB|bob> hi") == "auth @U0BOB hi"
    assert normalise_mentions("auth <@W123ABC>") == "auth @W123ABC"
    assert normalise_mentions("auth <mailto:bob@example.com|bob@example.com> x") == "auth bob@example.com x"
    assert normalise_mentions("prod-db 2h <#C123|general>") == "prod-db 2h <#C123|general>"
