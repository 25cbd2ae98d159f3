"""An installed wheel has what ``ackgate demo`` and ``serve`` need: the example policy ships as package
data (identical to examples/policy.yaml), and so do the migrations and templates."""

from __future__ import annotations

import fnmatch
import tomllib
from importlib.resources import files
from pathlib import Path

from bot.runtime.demo import EXAMPLE_POLICY

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def _shipped(package: str, name: str) -> bool:
    patterns = PYPROJECT["tool"]["setuptools"]["package-data"]
    return any(fnmatch.fnmatch(name, pattern) for key in (package, "*") for pattern in patterns.get(key, [])) and any(
        fnmatch.fnmatch(package, include) for include in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    )


def test_the_packaged_example_policy_is_examples_policy_yaml_byte_for_byte() -> None:
    packaged = files("bot") / "example_policy.yaml"
    assert packaged.read_bytes() == (REPO / "examples" / "policy.yaml").read_bytes(), (
        "examples/policy.yaml changed: copy it to bot/example_policy.yaml, which the wheel's demo uses"
    )


def test_the_demo_finds_its_policy_through_package_data_not_the_checkout() -> None:
    assert files("bot") / "example_policy.yaml" == EXAMPLE_POLICY
    assert EXAMPLE_POLICY.is_file()
    assert "examples" not in str(EXAMPLE_POLICY)


def test_pyproject_ships_the_policy_migrations_and_templates_in_the_wheel() -> None:
    assert _shipped("bot", "example_policy.yaml")
    migrations = [p.name for p in (REPO / "storage" / "migrations").glob("*.sql")]
    assert migrations and all(_shipped("storage.migrations", name) for name in migrations)
    assert _shipped("handlers", "templates/auth_page.html") or _shipped("handlers.templates", "auth_page.html")


def test_the_console_script_is_the_cli_main() -> None:
    assert PYPROJECT["project"]["scripts"] == {"ackgate": "bot.runtime.cli:main"}
