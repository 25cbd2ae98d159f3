"""The `ackgate` command: configuration errors are one line and exit 2, the audit log exports as
JSON lines or CSV, and the demo plays to the end."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot.core.domain import AuditEvent
from bot.runtime.cli import main
from storage import open_store

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "policy.yaml"
ENV = (
    "SLACK_BOT_TOKEN",
    "SLACK_SIGNING_SECRET",
    "PAGERDUTY_API_TOKEN",
    "ACKGATE_POLICY_FILE",
    "ACKGATE_DATABASE_URL",
    "ACKGATE_PORT",
    "ACKGATE_LOG_LEVEL",
    "ACKGATE_SECRET_KEY",
    "ACKGATE_PROVISIONER_SECRET",
    "ACKGATE_DRAIN_SECONDS",
    "CI",
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


def test_check_config_accepts_the_example_policy(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--policy", str(EXAMPLE)]) == 0
    assert "OK (3 resources, 4 flows)" in capsys.readouterr().out


def test_check_config_names_file_line_and_fix_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "policy.yaml"
    bad.write_text(
        "version: 1\nresources: []\nflows:\n  - name: x\n    resources: [prod]\n    gate: {type: acknowleged_incident}\n"
    )
    assert main(["check-config", "--policy", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:6:" in err
    assert "Did you mean 'acknowledged_incident'?" in err
    assert "Traceback" not in err


def test_starting_without_settings_says_which_one_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ackgate: PAGERDUTY_API_TOKEN is not set")
    assert "\n" not in err


def test_an_invalid_setting_is_named_with_its_fix(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ACKGATE_PORT", "99999")
    assert main(["serve"]) == 2
    assert "ACKGATE_PORT is invalid" in capsys.readouterr().err


def test_the_audit_log_exports_as_json_lines_and_csv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'ackgate.db'}"
    now = datetime.now(UTC)

    async def seed() -> None:
        store = open_store(url)
        await store.open()
        await store.audit.append(AuditEvent(now - timedelta(days=3), "grant.expired", "ackgate", "g-old00000"))
        await store.audit.append(
            AuditEvent(
                now - timedelta(hours=1), "access.requested", "alice@example.com", "r-1", {"resource": "prod-db"}
            )
        )
        await store.close()

    asyncio.run(seed())
    monkeypatch.setenv("ACKGATE_DATABASE_URL", url)

    assert main(["audit", "--since", "24h", "--format", "jsonl"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(line["kind"], line["actor"], line["data"]) for line in lines] == [
        ("access.requested", "alice@example.com", {"resource": "prod-db"})
    ]

    assert main(["audit", "--since", "7d", "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [row["kind"] for row in rows] == ["grant.expired", "access.requested"]
    assert json.loads(rows[1]["data"]) == {"resource": "prod-db"}


def test_the_demo_plays_every_scene_to_the_end(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "Every scene went as scripted." in out
    assert "Access granted: prod-db" in out
    assert "Your access to prod-db expired" in out
    assert "Approved by bob@example.com" in out
    assert "Access to prod-db was not granted" in out
    assert "Identity verified by bob@example.com" in out
    teams = out.split("5. One deployment, two platforms", 1)[1].split("── 6.", 1)[0]
    assert "Ackgate → bob (Teams 1:1 chat, Adaptive Card)" in teams and "[Approve]" in teams
    assert "bob's card, updated in place for everyone (PUT)" in teams
    assert "Approved by bob@example.com" in teams.split("(PUT)", 1)[1]
    assert "Ackgate → dana (Slack direct message):\n      Access granted: prod-db" in teams


# --- check-config --env refuses exactly what serve refuses -------------------------------------

GOOD_ENV = {
    "SLACK_BOT_TOKEN": "xoxb-test",
    "SLACK_SIGNING_SECRET": "signing-secret",
    "PAGERDUTY_API_TOKEN": "pd-token",
    "ACKGATE_POLICY_FILE": str(EXAMPLE),
    "ACKGATE_PROVISIONER_SECRET": "provisioner-secret-of-some-length",
    "ACKGATE_SECRET_KEY": "a-secret-key-long-enough-for-fernet",
    "ACKGATE_DATABASE_URL": "sqlite:///:memory:",
}


@pytest.mark.parametrize(
    ("name", "value", "said"),
    [
        ("ACKGATE_PROVISIONER_SECRET", None, "ACKGATE_PROVISIONER_SECRET is not set"),
        ("ACKGATE_SECRET_KEY", "short", "ACKGATE_SECRET_KEY must be at least 16 characters"),
        ("ACKGATE_DATABASE_URL", "mysql://root:hunter2@db/ackgate", "ACKGATE_DATABASE_URL is not a database URL"),
        ("ACKGATE_LOG_LEVEL", "loud", "ACKGATE_LOG_LEVEL is invalid: 'loud' is not a log level"),
        ("PAGERDUTY_API_TOKEN", "two words", "PAGERDUTY_API_TOKEN is empty or contains spaces"),
    ],
)
def test_check_config_env_and_serve_refuse_the_same_setting_in_one_line_with_exit_2(
    name: str, value: str | None, said: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for key, good in GOOD_ENV.items():
        monkeypatch.setenv(key, good)
    if value is None:
        monkeypatch.delenv(name)
    else:
        monkeypatch.setenv(name, value)

    async def must_not_start(*args: object) -> int:
        raise AssertionError("serve got past its checks")

    monkeypatch.setattr("bot.runtime.server.serve", must_not_start)
    for argv in (["check-config", "--env"], ["serve"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"ackgate: {said}"), (argv, err)
        assert "\n" not in err and "Traceback" not in err
        assert "hunter2" not in err


def test_check_config_env_is_ok_when_serve_would_start(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for key, good in GOOD_ENV.items():
        monkeypatch.setenv(key, good)
    assert main(["check-config", "--env"]) == 0
    assert "OK (3 resources, 4 flows)" in capsys.readouterr().out


def test_version_names_the_installed_distribution(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"ackgate {version('ackgate')}"
