"""CPU the PagerDuty REST client spends per call, against the bench's loopback PagerDuty fake.

    .venv/bin/python bench/pd_client.py [--python OTHER/.venv/bin/python ...] [--calls 5000] [--rounds 5]

Starts the fakes once (``procs.py fakes``, in their own process, so their CPU is not counted), then,
for each interpreter given (default: the one running this script; each imports the ``bot`` of its
own venv, so two checkouts are compared on the same fake in the same run), runs one worker process
per round, the interpreters taking turns round by round. A worker builds a ``PagerDutyClient`` as
the composition root does, warms it up, then times ``time.process_time()`` around ``--calls`` calls
made by ``--concurrency`` tasks, on the loop ``ackgate serve`` runs on (uvloop's), for each operation:

- ``flow``: what an auto-grant flow asks, ``user_by_email`` then ``acknowledged_incidents`` for that
  user, cycling through the fake's 32 users (their user lookups are cached after the first, as in
  the bench's P2; concurrent incident lookups share calls, as in production);
- ``user``: ``user_by_email`` for addresses PagerDuty does not have, so each asks ``GET /users?query=``;
- ``request``: ``ping``, one plain ``GET /users`` a call, the request path with no cache or batching.

Prints one JSON object: per operation and interpreter, the median CPU microseconds per call over
the rounds (and per HTTP request), each round's figure, and the calls per second.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from procs import PD_TOKEN, email  # noqa: E402

USERS = 32
OPS = ("flow", "user", "request")


# --- the worker: runs in the measured interpreter ---------------------------------------------


async def _measure(pd_url: str, op: str, calls: int, concurrency: int, warmup: int) -> dict[str, Any]:
    from pydantic import SecretStr

    from bot.adapters.pagerduty import PagerDutyClient

    attempts = 0
    failed: list[str] = []

    def on_call(method: str, template: str, status: int | None, seconds: float) -> None:
        nonlocal attempts
        attempts += 1
        if status != 200:
            failed.append(f"{method} {template}: {status}")

    client = PagerDutyClient(
        SecretStr(PD_TOKEN),
        base_url=pd_url,
        requests_per_minute=1_000_000,  # the budget is not what is measured: never wait for it
        cache_ttl=0.0 if op == "user" else 30.0,
        on_call=on_call,
    )
    misses = itertools.count()

    async def one(i: int) -> None:
        if op == "flow":
            user = await client.user_by_email(email(i % USERS))
            assert user is not None
            found = await client.acknowledged_incidents(user.id)
            assert len(found) == 1, found
        elif op == "user":
            assert await client.user_by_email(f"nobody{next(misses)}@example.net") is None
        else:
            await client.ping()

    async def run(n: int) -> None:
        todo = iter(range(n))

        async def worker() -> None:
            for i in todo:
                await one(i)

        await asyncio.gather(*(worker() for _ in range(concurrency)))

    async with client:
        await run(warmup)
        attempts = 0
        wall, cpu = time.perf_counter(), time.process_time()
        await run(calls)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    if failed:
        raise RuntimeError(f"{len(failed)} calls to the fake failed, the first: {failed[0]}")
    return {
        "cpu_us_per_call": round(cpu * 1e6 / calls, 1),
        "cpu_us_per_http": round(cpu * 1e6 / max(attempts, 1), 1),
        "http_per_call": round(attempts / calls, 3),
        "calls_per_second": round(calls / wall),
    }


def worker(spec: dict[str, Any]) -> None:
    try:  # the loop ``ackgate serve`` runs on
        import uvloop

        run: Any = uvloop.run
    except ImportError:
        run = asyncio.run
    import bot

    result: dict[str, Any] = {
        op: run(_measure(spec["pd_url"], op, spec["calls"], spec["concurrency"], spec["warmup"])) for op in spec["ops"]
    }
    result["checkout"] = str(Path(bot.__file__).resolve().parent.parent)
    print(json.dumps(result))


# --- the driver -------------------------------------------------------------------------------


def _round(python: str, spec: dict[str, Any]) -> dict[str, Any]:
    done = subprocess.run(  # noqa: S603 - our own interpreters and script
        [python, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
        cwd="/",  # so each interpreter imports the bot of its own venv, not one found in the working directory
    )
    if done.returncode != 0:
        raise RuntimeError(f"{python}: worker failed: {done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--python", action="append", help="an interpreter to measure (repeat to compare); default: this one")
    p.add_argument("--calls", type=int, default=5000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--ops", default=",".join(OPS), help=f"a comma-separated subset of {', '.join(OPS)}")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return 0
    from harness import child, log

    pythons = [os.path.abspath(py) for py in args.python or [sys.executable]]
    ops = [op for op in args.ops.split(",") if op]
    unknown = set(ops) - set(OPS)
    if unknown:
        p.error(f"unknown operations: {', '.join(sorted(unknown))}")
    load = os.getloadavg()[0]
    runs: dict[str, list[dict[str, Any]]] = {py: [] for py in pythons}
    with child("fakes", {"users": USERS}) as fakes:
        spec = {
            "pd_url": fakes.info["pd_url"],
            "calls": args.calls,
            "concurrency": args.concurrency,
            "warmup": args.warmup,
            "ops": ops,
        }
        for r in range(args.rounds):
            # the interpreters take turns, starting with a different one each round, so drift in the
            # machine's load falls on all of them alike
            for python in pythons[r % len(pythons) :] + pythons[: r % len(pythons)]:
                log(f"round {r + 1}/{args.rounds}: {python}")
                runs[python].append(_round(python, spec))
    out: dict[str, Any] = {
        "calls": args.calls,
        "concurrency": args.concurrency,
        "rounds": args.rounds,
        "load_before": load,
        "load_after": os.getloadavg()[0],
        "ops": {},
    }
    for op in ops:
        out["ops"][op] = {}
        for python in pythons:
            rounds = [run[op] for run in runs[python]]
            out["ops"][op][runs[python][0]["checkout"]] = {
                "median_cpu_us_per_call": statistics.median(x["cpu_us_per_call"] for x in rounds),
                "median_cpu_us_per_http": statistics.median(x["cpu_us_per_http"] for x in rounds),
                "http_per_call": statistics.median(x["http_per_call"] for x in rounds),
                "calls_per_second": statistics.median(x["calls_per_second"] for x in rounds),
                "cpu_us_per_call_rounds": [x["cpu_us_per_call"] for x in rounds],
                "python": python,
            }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
