"""The reliability suite at full size, with its figures printed as a table.

    make soak                                   (all three scenarios, full size)
    .venv/bin/python -m tests.reliability.soak --scenario crash --scale 0.4 --seed 7

Scenarios (the same harness and checks as ``tests/reliability/test_*.py``, bigger):

- ``crash``: one ``serve`` on SQLite, ~1,000 mixed requests, SIGKILLed 13 times at random moments;
  a third of the automatic grants last one minute and really expire.
- ``sigterm``: one ``serve`` on SQLite under a closed-loop backlog, stopped with SIGTERM 3 times.
- ``replicas``: three ``serve`` on one PostgreSQL database, ~1,000 requests, every webhook delivery
  sent to two replicas at once, a replica SIGKILLed 3 times.

One scenario runs at a time. Exits 1 when any figure is not zero.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import time
from pathlib import Path

from tests.reliability.invariants import VIOLATIONS, Figures
from tests.reliability.workload import Sizes, run

FULL = {
    "crash": Sizes(
        operations=1000,
        concurrency=8,
        stops=13,
        incidents=40,
        requesters=20,
        retime_live=10,
        retime_down=2,
        short_grants=0.33,
        settle_seconds=90,
    ),
    "sigterm": Sizes(
        operations=3000,
        concurrency=24,
        stop_signal="term",
        stops=3,
        incidents=0,
        requesters=20,
        retime_live=0,
        retime_down=0,
        wait_answers=False,
        settle_seconds=90,
    ),
    "replicas": Sizes(
        operations=1000,
        concurrency=10,
        replicas=3,
        backend="postgres",
        stops=3,
        incidents=75,
        requesters=20,
        retime_live=10,
        retime_down=2,
        short_grants=0.33,
        settle_seconds=90,
    ),
}


def scaled(sizes: Sizes, scale: float, seed: int | None) -> Sizes:
    def part(n: int, least: int = 0) -> int:
        return max(least, round(n * scale)) if n else 0

    return dataclasses.replace(
        sizes,
        operations=part(sizes.operations, 20),
        stops=part(sizes.stops, 1),
        incidents=part(sizes.incidents),
        retime_live=part(sizes.retime_live),
        seed=seed,
    )


def table(results: dict[str, Figures]) -> str:
    names = list(results)
    labels = dict(VIOLATIONS)
    width = max(len(v) for v in labels.values())
    head = f"{'':<{width}}  " + "  ".join(f"{n:>9}" for n in names)
    lines = [head, "-" * len(head)]
    for key, label in VIOLATIONS:
        lines.append(f"{label:<{width}}  " + "  ".join(f"{results[n].counts()[key]:>9}" for n in names))
    lines.append("")
    for name, figures in results.items():
        lines.append(f"{name}: " + ", ".join(f"{k} {v}" for k, v in figures.info.items()))
    return "\n".join(lines)


async def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="soak", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--scenario", choices=[*FULL, "all"], default="all")
    p.add_argument("--scale", type=float, default=1.0, help="multiply the sizes (requests, kills, incidents)")
    p.add_argument("--seed", type=int, default=None, help="seed the workload's choices")
    p.add_argument("--examples", type=int, default=3, help="examples shown per violation")
    p.add_argument("--keep", type=Path, default=None, help="keep the logs, policies and SQLite file here")
    args = p.parse_args(argv)
    chosen = list(FULL) if args.scenario == "all" else [args.scenario]
    results: dict[str, Figures] = {}
    for name in chosen:
        sizes = scaled(FULL[name], args.scale, args.seed)
        started = time.monotonic()
        print(f"{name}: {sizes.operations} operations, {sizes.stops} stops, {sizes.replicas} replica(s)…", flush=True)
        results[name] = figures = await run(sizes, workdir=args.keep / name if args.keep else None)
        print(figures.report(f"{name} ({time.monotonic() - started:.0f} s)", examples=args.examples), flush=True)
    print()
    print(table(results))
    return 1 if any(f.failed() for f in results.values()) else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
