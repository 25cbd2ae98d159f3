"""P5's start-up alone: exec of ``ackgate serve`` to the first 200 on ``/readyz``, as ``run.py`` times
it (the same settings, simulators and policy), repeated to give a median.

    .venv/bin/python bench/startup.py [--rounds 5] [--grants 100000]

The interpreter running this script picks the ``ackgate`` it starts (its venv's), so another
checkout's venv can be timed with the same script on the same machine, one after the other.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from grants import _grant, seed
from harness import ackgate, child, log


def _median(xs: list[float]) -> str:
    return f"median {statistics.median(xs):.2f} s (min {min(xs):.2f} s, max {max(xs):.2f} s, n={len(xs)})"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--grants", type=int, default=100_000)
    p.add_argument("--holders", type=int, default=1000)
    args = p.parse_args()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="ackgate-startup-") as tmp, child("fakes", {"users": args.holders}) as f:
        workdir = Path(tmp)
        empty = []
        for _ in range(args.rounds):
            with ackgate(workdir, f.info) as a:
                empty.append(a.ready_seconds)
        url = f"sqlite:///{workdir / 'grants.db'}"
        now = datetime.now(UTC)
        far = now + timedelta(days=1)
        seed(
            url, (_grant("gb", i, holders=args.holders, now=now, expires=far, incidents=[]) for i in range(args.grants))
        )
        log(f"seeded {args.grants:,} grants")
        full = []
        for _ in range(args.rounds):
            with ackgate(workdir, f.info, database_url=url) as a:
                full.append(a.ready_seconds)
    print(f"{sys.executable}: load average {load:.2f} before, {os.getloadavg()[0]:.2f} after")
    print(f"  empty:          {_median(empty)}")
    print(f"  {args.grants:,} grants: {_median(full)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
