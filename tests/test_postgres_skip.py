"""Without PostgreSQL, the suite skips its PostgreSQL half with one loud line; in CI that is a failure.

Each test runs four PostgreSQL tests of the project in a child pytest, with the server URL pointing at
a closed port on loopback.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
POSTGRES_TESTS = [  # four PostgreSQL tests (the second is parametrized three ways)
    "tests/test_storage_backends.py::test_postgres_refuses_to_rewrite_the_audit_log",
    "tests/test_storage_backends.py::test_postgres_sweeper_queries_can_use_their_index_without_a_sort",
]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _run_without_postgres(*, ci: bool) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in {"CI", "PYTEST_ADDOPTS"}}
    env["ACKGATE_TEST_POSTGRES_URL"] = f"postgresql://nobody@127.0.0.1:{_closed_port()}/test"
    if ci:
        env["CI"] = "true"
    return subprocess.run(  # noqa: S603 - our own interpreter running our own tests
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *POSTGRES_TESTS],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_an_unreachable_postgres_skips_its_half_with_one_loud_line_saying_how_to_run_it() -> None:
    run = _run_without_postgres(ci=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "4 skipped" in run.stdout
    loud = [line for line in run.stdout.splitlines() if "POSTGRESQL HALF SKIPPED" in line]
    assert len(loud) == 1, run.stdout
    assert "(4 tests)" in loud[0]
    assert "ACKGATE_TEST_POSTGRES_URL=postgresql://" in loud[0]
    assert "nobody@" not in loud[0]  # the URL is described without its user


def test_with_ci_true_an_unreachable_postgres_fails_the_run() -> None:
    run = _run_without_postgres(ci=True)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "4 failed" in run.stdout
    assert "CI=true, so the PostgreSQL half must run" in run.stdout
    assert "POSTGRESQL HALF SKIPPED" not in run.stdout
