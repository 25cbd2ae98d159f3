"""Settings and policy name chat platforms (issue 7 §2): no platform configured is one line at
start-up; an approval channel is ``platform:channel`` (a bare id is Slack's, as before); a channel
or mirror channel on a platform that is not configured is refused by ``check-config`` and ``serve``
with the file, the line and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.core import messages
from bot.core.errors import ConfigError
from bot.core.policy_file import parse_policy
from bot.runtime.cli import main
from bot.runtime.config import load_settings
from tests.test_cli import ENV, EXAMPLE, GOOD_ENV

SLACK_ENV = ("SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET")
POLICY = """\
version: 1
resources:
  - name: prod-db
flows:
  - name: dba
    resources: [prod-db]
    approval:
      type: approvers
      approvers: [dana@example.com]
      channel: {channel}
"""


@pytest.fixture(autouse=True)
def good_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*ENV, "ACKGATE_MIRROR_CHANNEL"):
        monkeypatch.delenv(name, raising=False)
    for key, good in GOOD_ENV.items():
        monkeypatch.setenv(key, good)

    async def must_not_start(*args: object) -> int:
        raise AssertionError("serve got past its checks")

    monkeypatch.setattr("bot.runtime.server.serve", must_not_start)


def _refused(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2, argv
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return err


def test_no_chat_platform_is_refused_in_one_line_by_serve_and_check_config(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in SLACK_ENV:
        monkeypatch.delenv(name)

    for argv in (["serve"], ["check-config", "--env"]):
        assert _refused(capsys, argv) == f"ackgate: {messages.NO_CHAT_PLATFORM}"
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert caught.value.message == messages.NO_CHAT_PLATFORM and "\n" not in caught.value.message


def test_slack_alone_is_a_configured_set_of_platforms() -> None:
    assert load_settings().chat_platforms == ("slack",)


def test_a_teams_approval_channel_without_teams_is_refused_with_its_line_and_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(channel="teams:19:ops@thread.tacv2"), encoding="utf-8")
    monkeypatch.setenv("ACKGATE_POLICY_FILE", str(policy))

    expected = (
        f"ackgate: {policy}:10:16: flows[0].approval.channel: the approval channel is on teams, which this "
        "deployment does not configure (configured: slack). Configure teams, or move the channel to a "
        "configured platform."
    )
    for argv in (["serve"], ["check-config", "--env"], ["check-config", "--policy", str(policy)]):
        assert _refused(capsys, argv) == expected, argv


def test_a_policy_checked_away_from_any_chat_platform_checks_only_the_channel_syntax(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in SLACK_ENV:
        monkeypatch.delenv(name)
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(channel="teams:19:ops@thread.tacv2"), encoding="utf-8")

    assert main(["check-config", "--policy", str(policy)]) == 0
    assert "OK (1 resources, 1 flows)" in capsys.readouterr().out


def test_channels_are_stored_with_their_platform_and_a_bare_id_is_slacks() -> None:
    def channel(text: str, platforms: tuple[str, ...] | None = ("slack",)) -> str | None:
        approval = parse_policy(POLICY.format(channel=text), platforms=platforms).flows[0].approval
        return getattr(approval, "channel", None)

    assert channel("C0123ABCDEF") == "slack:C0123ABCDEF"
    assert channel("slack:C0123ABCDEF") == "slack:C0123ABCDEF"
    assert channel("'teams:19:ops@thread.tacv2'", ("slack", "teams")) == "teams:19:ops@thread.tacv2"
    assert channel("teams:19:ops@thread.tacv2", None) == "teams:19:ops@thread.tacv2"


@pytest.mark.parametrize("text", ["'19:ops@thread.tacv2'", "irc:#ops", "'slack:'"])
def test_a_channel_naming_no_known_platform_is_refused_with_the_form_to_write(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_policy(POLICY.format(channel=text), platforms=("slack",))
    assert caught.value.message.startswith("policy.yaml:10:16: flows[0].approval.channel: ")
    assert "Write it as platform:channel, with one of slack, teams" in caught.value.message


def test_a_mirror_channel_on_a_platform_not_configured_is_refused_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ACKGATE_MIRROR_CHANNEL", "teams:19:incidents@thread.tacv2")
    for argv in (["serve"], ["check-config", "--env"]):
        err = _refused(capsys, argv)
        assert err.startswith("ackgate: ACKGATE_MIRROR_CHANNEL is invalid: 'teams:19:incidents@thread.tacv2'")
        assert "\n" not in err


def test_a_bare_mirror_channel_is_slacks_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACKGATE_MIRROR_CHANNEL", "C0INCIDENTS")
    assert main(["check-config", "--env"]) == 0


def test_the_example_policy_stays_valid_for_slack() -> None:
    assert parse_policy(EXAMPLE.read_text(encoding="utf-8"), platforms=("slack",)).flows
