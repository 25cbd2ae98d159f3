"""Start-up imports only what is configured (issue 9, P5: ready in a second): ``serve`` with Slack
alone never imports Teams' stack (botbuilder, botframework, their JWT and MSAL libraries), the
OpenID Connect libraries or the PostgreSQL driver; with Teams configured it mounts Teams; the other
subcommands import no server at all; and start-up's collector pause always ends.

Each case is a fresh interpreter, since this test process has imported everything long ago.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_cli import EXAMPLE, GOOD_ENV
from tests.test_teams_settings import TEAMS_ENV

TEAMS_STACK = {"botbuilder", "botframework", "msal", "msrest", "jwt"}
OIDC_STACK = {"authlib", "joserfc"}
POSTGRES_DRIVER = {"asyncpg"}
SERVER_STACK = {"aiohttp", "slack_bolt", "slack_sdk", "httpx", "prometheus_client", "bot.runtime.server"}

# `serve` up to the point it would listen: the real CLI, settings and preflight (every configured
# platform mounted); serve() itself reports what is imported instead of listening.
_SERVE = """
import json, sys
import bot.runtime.server as server
async def report(app, settings, **kwargs):
    print(json.dumps(sorted(sys.modules)))
    return 0
server.serve = report
from bot.runtime.cli import main
raise SystemExit(main(["serve"]))
"""
_COMMAND = """
import json, sys
from bot.runtime.cli import main
code = main(json.loads(sys.argv[1]))
print(json.dumps(sorted(sys.modules)))
raise SystemExit(code)
"""


def _run(code: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ACKGATE_", "SLACK_", "PAGERDUTY_", "MICROSOFT_", "TEAMS_"))
    }
    clean.update(env)
    return subprocess.run(  # noqa: S603 - this interpreter, our own code
        [sys.executable, "-c", code, *args], env=clean, capture_output=True, text=True, timeout=60, check=False
    )


def _imported(done: subprocess.CompletedProcess[str]) -> set[str]:
    assert done.returncode == 0, done.stderr[-2000:]
    modules: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return set(modules) | {m.split(".")[0] for m in modules}


def test_serve_with_slack_alone_imports_neither_teams_nor_oidc_nor_postgres(tmp_path: Path) -> None:
    env = {**GOOD_ENV, "ACKGATE_DATABASE_URL": f"sqlite:///{tmp_path / 'ackgate.db'}"}
    imported = _imported(_run(_SERVE, env))
    assert "slack_bolt" in imported and "handlers.slack.platform" in imported  # Slack itself is mounted
    assert not imported & (TEAMS_STACK | OIDC_STACK | POSTGRES_DRIVER), sorted(imported & (TEAMS_STACK | OIDC_STACK))


def test_serve_with_teams_configured_mounts_teams(tmp_path: Path) -> None:
    env = {**GOOD_ENV, **TEAMS_ENV, "ACKGATE_DATABASE_URL": f"sqlite:///{tmp_path / 'ackgate.db'}"}
    imported = _imported(_run(_SERVE, env))
    assert {"botbuilder", "handlers.teams.platform", "slack_bolt"} <= imported


@pytest.mark.parametrize(
    "argv",
    [
        ["check-config", "--policy", str(EXAMPLE)],
        ["audit", "--since", "1h"],
        ["manifest", "teams", "--zip", "{tmp}/teams.zip"],
    ],
    ids=["check-config", "audit", "manifest"],
)
def test_the_other_subcommands_import_no_server(argv: list[str], tmp_path: Path) -> None:
    env = {
        **GOOD_ENV,
        **TEAMS_ENV,
        "ACKGATE_DATABASE_URL": f"sqlite:///{tmp_path / 'ackgate.db'}",
        "ACKGATE_PUBLIC_URL": "https://ackgate.example.com",
    }
    imported = _imported(_run(_COMMAND, env, json.dumps([a.format(tmp=tmp_path) for a in argv])))
    assert not imported & (SERVER_STACK | TEAMS_STACK | OIDC_STACK | POSTGRES_DRIVER), sorted(
        imported & (SERVER_STACK | TEAMS_STACK | OIDC_STACK | POSTGRES_DRIVER)
    )


def test_the_collector_is_on_again_when_start_up_is_refused() -> None:
    done = _run("import gc, sys\nfrom bot.runtime.cli import main\nprint(main(['serve']), gc.isenabled())", {})
    assert done.stdout.split() == ["2", "True"], done.stderr[-2000:]


def test_once_listening_the_collector_is_on_with_start_up_frozen_and_full_passes_made_rarer() -> None:
    code = (
        "import gc\nfrom bot.runtime.server import settle_garbage_collector\n"
        "gc.disable()\nsettle_garbage_collector()\nprint(gc.isenabled(), gc.get_freeze_count() > 0, gc.get_threshold())"
    )
    done = _run(code, {})
    assert done.stdout.strip().split(maxsplit=2) == ["True", "True", "(700, 10, 100)"], done.stderr[-2000:]
