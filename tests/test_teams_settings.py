"""Teams settings (issue 8 §1): the ecosystem names, the public cloud by default, Slack alone, Teams alone
or both; an empty or malformed app id, a missing password or tenant refused in one line by ``serve`` and
``check-config --env`` alike, before anything listens."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.core import messages
from bot.core.errors import ConfigError
from bot.runtime.app import build_app
from bot.runtime.cli import main
from bot.runtime.config import (
    TEAMS_PUBLIC_LOGIN_URL,
    TEAMS_PUBLIC_OPENID_METADATA_URL,
    TEAMS_PUBLIC_SERVICE_URL_HOSTS,
    load_settings,
)
from tests.test_cli import ENV, GOOD_ENV

APP_ID = "6b1c0f7e-1a2b-4c3d-8e9f-0a1b2c3d4e5f"
TENANT = "11111111-2222-3333-4444-555555555555"
TEAMS_ENV = {
    "MICROSOFT_APP_ID": APP_ID,
    "MICROSOFT_APP_PASSWORD": "app-secret-value",
    "MICROSOFT_APP_TENANT_ID": TENANT,
}
ALL_TEAMS = (*TEAMS_ENV, "MICROSOFT_APP_TYPE", "TEAMS_LOGIN_URL", "TEAMS_SERVICE_URL_HOSTS")


PLAIN_POLICY = """\
version: 1
resources:
  - name: prod-db
flows:
  - name: dba
    resources: [prod-db]
    approval:
      type: approvers
      approvers: [dana@example.com]
"""


@pytest.fixture(autouse=True)
def good_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in (*ENV, *ALL_TEAMS, "ACKGATE_MIRROR_CHANNEL"):
        monkeypatch.delenv(name, raising=False)
    for key, good in GOOD_ENV.items():
        monkeypatch.setenv(key, good)

    async def must_not_start(*args: object) -> int:
        raise AssertionError("serve got past its checks")

    monkeypatch.setattr("bot.runtime.server.serve", must_not_start)
    policy = tmp_path / "plain.yaml"
    policy.write_text(PLAIN_POLICY, encoding="utf-8")
    monkeypatch.setenv("ACKGATE_POLICY_FILE", str(policy))  # no Slack channel in it


def _teams_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLACK_BOT_TOKEN")
    monkeypatch.delenv("SLACK_SIGNING_SECRET")
    for key, value in TEAMS_ENV.items():
        monkeypatch.setenv(key, value)


def _refused(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2, argv
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and "\n" not in err
    return err


def test_teams_alone_is_a_deployment_with_public_cloud_defaults_and_it_builds(monkeypatch: pytest.MonkeyPatch) -> None:
    _teams_only(monkeypatch)
    settings = load_settings()
    assert settings.chat_platforms == ("teams",)
    assert settings.microsoft_app_type == "SingleTenant"
    assert settings.microsoft_app_password is not None
    assert "app-secret-value" not in repr(settings)
    assert settings.teams_openid_metadata_url == TEAMS_PUBLIC_OPENID_METADATA_URL
    assert settings.teams_login_url == TEAMS_PUBLIC_LOGIN_URL
    assert tuple(settings.teams_service_url_hosts) == TEAMS_PUBLIC_SERVICE_URL_HOSTS
    app = build_app(settings)  # connects nothing until it starts
    assert any(r.resource is not None and r.resource.canonical == "/api/messages" for r in app.router.routes())
    assert not any(r.resource is not None and r.resource.canonical == "/slack/events" for r in app.router.routes())


def test_slack_and_teams_together_serve_both_endpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in TEAMS_ENV.items():
        monkeypatch.setenv(key, value)
    settings = load_settings()
    assert settings.chat_platforms == ("slack", "teams")
    paths = {r.resource.canonical for r in build_app(settings).router.routes() if r.resource is not None}
    assert {"/api/messages", "/slack/events"} <= paths


def test_the_ecosystem_spellings_of_the_sample_bots_are_accepted_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MicrosoftAppId", APP_ID.upper())
    monkeypatch.setenv("MicrosoftAppPassword", "x")
    monkeypatch.setenv("MicrosoftAppType", "multitenant")
    settings = load_settings()
    assert settings.microsoft_app_id == APP_ID and settings.microsoft_app_type == "MultiTenant"
    assert settings.microsoft_app_tenant_id is None  # MultiTenant needs none


@pytest.mark.parametrize(
    ("name", "value", "said"),
    [
        ("MICROSOFT_APP_ID", "", messages.TEAMS_BAD_APP_ID),
        ("MICROSOFT_APP_ID", "   ", messages.TEAMS_BAD_APP_ID),
        ("MICROSOFT_APP_ID", "my-bot", messages.TEAMS_BAD_APP_ID),
        ("MICROSOFT_APP_PASSWORD", "", messages.TEAMS_NO_APP_PASSWORD),
        ("MICROSOFT_APP_PASSWORD", None, messages.TEAMS_NO_APP_PASSWORD),
        ("MICROSOFT_APP_TENANT_ID", None, messages.TEAMS_NO_TENANT),
        ("MICROSOFT_APP_TENANT_ID", " ", messages.TEAMS_NO_TENANT),
        ("MICROSOFT_APP_TYPE", "UserAssignedMSI", "UserAssignedMSI is not supported yet"),
        ("MICROSOFT_APP_TYPE", "Anonymous", "'Anonymous' is not one of SingleTenant, MultiTenant"),
        ("TEAMS_LOGIN_URL", "login.example", "TEAMS_LOGIN_URL is invalid: must start with https://"),
        ("TEAMS_SERVICE_URL_HOSTS", " , ", messages.TEAMS_NO_SERVICE_HOSTS),
    ],
)
def test_a_teams_deployment_that_cannot_authenticate_is_refused_by_serve_and_check_config(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], name: str, value: str | None, said: str
) -> None:
    _teams_only(monkeypatch)
    if value is None:
        monkeypatch.delenv(name)
    else:
        monkeypatch.setenv(name, value)
    for argv in (["serve"], ["check-config", "--env"]):
        assert said in _refused(capsys, argv), argv
    with pytest.raises(ConfigError):
        load_settings()


def test_a_password_without_an_app_id_is_refused_rather_than_ignored(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MICROSOFT_APP_PASSWORD", "app-secret-value")
    assert messages.TEAMS_NO_APP_ID in _refused(capsys, ["check-config", "--env"])


def test_no_platform_at_all_names_both_platforms_settings(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("SLACK_BOT_TOKEN")
    monkeypatch.delenv("SLACK_SIGNING_SECRET")
    err = _refused(capsys, ["serve"])
    assert "SLACK_BOT_TOKEN" in err and "MICROSOFT_APP_ID" in err


def test_a_teams_approval_channel_is_accepted_once_teams_is_configured(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from tests.test_platform_settings import POLICY

    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(channel="teams:19:ops@thread.tacv2"), encoding="utf-8")
    monkeypatch.setenv("ACKGATE_POLICY_FILE", str(policy))
    _teams_only(monkeypatch)
    assert main(["check-config", "--env"]) == 0
    assert "OK (1 resources, 1 flows)" in capsys.readouterr().out


def test_ackgate_manifest_teams_writes_the_package_from_the_settings(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import json
    import zipfile

    from tests.fakes.teams_schemas import check_manifest

    _teams_only(monkeypatch)
    monkeypatch.setenv("ACKGATE_PUBLIC_URL", "https://ackgate.example.com/")
    out = tmp_path / "ackgate-teams.zip"

    assert main(["manifest", "teams", "--zip", str(out)]) == 0

    assert APP_ID in capsys.readouterr().out
    with zipfile.ZipFile(out) as package:
        assert sorted(package.namelist()) == ["color.png", "manifest.json", "outline.png"]
        manifest = json.loads(package.read("manifest.json"))
    check_manifest(manifest)
    assert manifest["id"] == APP_ID and manifest["bots"][0]["botId"] == APP_ID
    assert manifest["validDomains"] == ["ackgate.example.com"]


def test_ackgate_manifest_teams_without_an_app_id_or_a_public_host_says_which_setting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "p.zip"
    assert "MICROSOFT_APP_ID is not set" in _refused(capsys, ["manifest", "teams", "--zip", str(out)])
    _teams_only(monkeypatch)
    monkeypatch.setenv("ACKGATE_PUBLIC_URL", "http://localhost:3000")
    assert "ACKGATE_PUBLIC_URL" in _refused(capsys, ["manifest", "teams", "--zip", str(out)])
    assert not out.exists()
