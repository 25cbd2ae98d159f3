"""``bench/run.py --quick`` runs end to end with tiny sizes and prints every row of P1–P5 with figures.

A smoke test of the instrument only: no figure is compared with anything (performance is measured
by the bench, not by timed tests)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.fakes.storage_fixtures import postgres_base_url

ROOT = Path(__file__).resolve().parent.parent
TINY = [
    "--quick",
    "--rounds=1",
    "--rate=40",
    "--seconds=0.5",
    "--warmup=0.1",
    "--users=5",
    "--pd-delay=0.2",
    "--sweep=40",
    "--sweep-seconds=0.5",
    "--connections=2",
    "--closed-seconds=0.5",
    "--burst-users=5",
    "--burst-wait=10",
    "--grants=300",
    "--holders=5",
    "--batch=10",
    "--stream=10",
    "--stream-seconds=0.5",
    "--idle-seconds=0.5",
]
ROWS = [
    "P1 ack at 40 req/s",
    "P1 what those requesters were told",
    "P1 highest rate with ack p99",
    "P1 ack, serve --workers",
    "P2 full flows/s, sqlite",
    "P2 full flows/s, postgres",
    "P2 closed loop acks",
    "P3 burst of 5 users",
    "P4 revoke lateness, 10 at once among 300",
    "P4 revoke lateness, 10 over 0.5 s",
    "P4 idle CPU at 300 grants",
    "P5 RSS at 300 grants",
    "P5 start-up to ready",
]


def test_quick_bench_prints_every_measure_with_figures() -> None:
    base = postgres_base_url()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACKGATE_", "SLACK_", "PAGERDUTY_"))}
    done = subprocess.run(  # noqa: S603 - our own interpreter and script
        [
            sys.executable,
            str(ROOT / "bench" / "run.py"),
            *TINY,
            f"--postgres-url={base or 'skip'}",
            f"--postgres-db=ackgate_bench_smoke_{os.getpid()}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("Ackgate bench, quick sizes"), done.stdout
    assert "load average" in lines[0]
    table = {line.split("|")[0].strip(): [c.strip() for c in line.split("|")] for line in lines[2:] if "|" in line}
    for name in ROWS:
        row = next((cells for measure, cells in table.items() if measure.startswith(name)), None)
        assert row is not None, f"no row {name!r} in:\n{done.stdout}"
        _, _, ackgate, _, target, result = row
        if "not available" in ackgate:
            # allowed only where the thing measured does not exist here
            assert name in ("P1 ack, serve --workers", "P2 full flows/s, postgres"), row
            assert result == "n/a"
            continue
        assert re.search(r"\d", ackgate), row
        assert target and result in ("pass", "FAIL", "info"), row
    anchors_of = {m: cells[1] for m, cells in table.items()}
    p1 = next(v for m, v in anchors_of.items() if m.startswith("P1 ack at"))
    assert re.search(r"bare [\d.,]+ ms; Bolt [\d.,]+ ms", p1), p1
    p2 = next(v for m, v in anchors_of.items() if m.startswith("P2 closed loop acks"))
    assert re.search(r"bare [\d,]+/s; Bolt [\d,]+/s", p2), p2
    if base is not None and "PostgreSQL not available" not in done.stderr:
        pg = next(cells for m, cells in table.items() if m.startswith("P2 full flows/s, postgres"))
        assert "not available" not in pg[2], pg
