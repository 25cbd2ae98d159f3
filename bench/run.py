"""Ackgate's benchmark suite for issue 9's targets P1–P5, with its anchors, on loopback.

    make bench                          (or: .venv/bin/python bench/run.py)
    .venv/bin/python bench/run.py --quick          a few seconds per measure (the smoke test runs this)
    .venv/bin/python bench/run.py --only P1,P2     some measures only; --full: P4 at its full size

Every server is its own child process: ``ackgate serve`` (the real CLI, fresh database each
start), the two anchors (``procs.py bare``: aiohttp with a hand-written Slack signature check;
``procs.py bolt``: Bolt ``AsyncApp`` acking ``/access``, mounted on aiohttp as Ackgate mounts it),
the PagerDuty and Slack simulators (``procs.py fakes``), and the load generator (``loadgen.py``,
open loop or closed loop). The anchors are measured in the same invocation, so the ratios compare
like with like on the same (possibly busy) machine; the load average is printed with the results.

- P1: ``/access`` ack latency in an open loop at ``--rate`` (500/s) with PagerDuty answering in 2 s;
  the highest rate of a sweep at which the ack p99 stays ≤ 25 ms; ``serve --workers N`` if the CLI has it.
- P2: closed loop with ``--connections`` (32): whole auto-approve flows per second (ack → PagerDuty →
  grant → provision → message at the response_url) on SQLite and PostgreSQL, against Bolt's ack-only rate.
  Once more on SQLite with ``PAGERDUTY_REQUESTS_PER_MINUTE`` at its maximum: Ackgate's own rate, not its budget's;
  and with ``serve --workers N`` (the default budget, shared), if the CLI has it.
- P3: ``--burst-users`` (1,000) distinct users at once, PagerDuty enforcing 960 requests a minute.
- P4: at ``--grants`` active grants (inserted through the store, in batches): revoke lateness of a
  batch expiring at one instant, of a stream of expiries (scaled down unless ``--full``), idle CPU.
- P5: RSS of the serve process (sampled from /proc) at those grants, peak included; start-up time
  to the first 200 on ``/readyz`` with 0 grants and with ``--grants``.

Medians (min–max) are over ``--rounds`` runs where a run is cheap. Nothing here asserts timing:
the table's pass/fail column compares with the issue's targets.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from grants import p4_p5
from harness import Sizes
from report import Report
from traffic import p1, p2, p3

# --- main -----------------------------------------------------------------------------------


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="tiny sizes, a few seconds per measure (smoke test)")
    p.add_argument("--full", action="store_true", help="P4's stream at full size: 100k grants expiring over 5 min")
    p.add_argument("--only", default="P1,P2,P3,P4,P5", help="comma-separated measures, e.g. P1,P5")
    p.add_argument(
        "--postgres-url",
        default=os.environ.get("ACKGATE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"),
        help="a database to connect to, to create and drop ackgate_bench next to it ('skip': no PostgreSQL)",
    )
    p.add_argument("--postgres-db", default="ackgate_bench", help="the database P2 creates, and drops after")
    p.add_argument("--sweep", help="P1's sweep, comma-separated rates (default 25,50,100,200,300,500,750,1000)")
    defaults = Sizes()
    for name, value in vars(defaults).items():
        if isinstance(value, bool | tuple):
            continue
        p.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=None, help=f"default {value}")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    sizes = Sizes.quick_sizes() if args.quick else Sizes()
    sizes.full = args.full
    for name in vars(Sizes()):
        value = getattr(args, name, None)
        if value is not None and not isinstance(value, bool):
            setattr(sizes, name, value)
    if args.sweep:
        sizes.sweep = tuple(float(x) for x in args.sweep.split(",") if x.strip())
    which = {x.strip().upper() for x in args.only.split(",") if x.strip()}
    report = Report()
    load_before = os.getloadavg()
    started = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="ackgate-bench-") as tmp:
        workdir = Path(tmp)
        if "P1" in which:
            p1(report, sizes, workdir)
        if "P2" in which:
            p2(report, sizes, workdir, None if args.postgres_url == "skip" else args.postgres_url, args.postgres_db)
        if "P3" in which:
            p3(report, sizes, workdir)
        if which & {"P4", "P5"}:
            p4_p5(report, sizes, workdir, which=which)
        shutil.rmtree(workdir, ignore_errors=True)
    load_after = os.getloadavg()
    mode = "quick" if sizes.quick else ("full" if sizes.full else "default")
    print(
        f"Ackgate bench, {mode} sizes, {started:%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, Python "
        f"{sys.version.split()[0]}; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after"
    )
    report.print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
