"""Profile ``ackgate serve`` under the P2 full-flow load (or P1's open loop) with py-spy.

    .venv/bin/python bench/profile.py [--mode flow|open] [--seconds 10] [--out profile.txt]

Starts the fakes and one ``ackgate serve`` as the bench does, attaches ``py-spy record`` (from
PyPI: ``pip install py-spy``; it needs permission to ptrace the child) to the serve process while
the load generator runs, and prints the functions with the largest share of samples: their own
time (leaf) and the time under them (inclusive).
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Sizes, ackgate, child, loadgen, log


def _top(collapsed: Path, count: int) -> str:
    leaf: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        samples = int(n)
        total += samples
        frames = [re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";")]  # one entry per function
        leaf[frames[-1]] += samples
        for frame in set(frames):
            inclusive[frame] += samples
    out = [f"{total} samples"]
    out.append("own time:")
    out += [f"  {n / total:6.1%}  {f}" for f, n in leaf.most_common(count)]
    out.append("inclusive:")
    out += [f"  {n / total:6.1%}  {f}" for f, n in inclusive.most_common(count * 2)]
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=["flow", "open"], default="flow")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--rate", type=float, default=500.0, help="open mode's arrival rate")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--out", type=Path, help="also keep the collapsed stacks here")
    args = p.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    sizes = Sizes()
    with tempfile.TemporaryDirectory(prefix="ackgate-profile-") as tmp:
        workdir = Path(tmp)
        users = sizes.flow_users if args.mode == "flow" else sizes.users
        spec = {"users": users} if args.mode == "flow" else {"users": users, "pd_delay": sizes.pd_delay}
        with child("fakes", spec) as fakes, ackgate(workdir, fakes.info) as a:
            collapsed = workdir / "stacks.txt"
            command = [spy, "record", "--pid", str(a.proc.pid), "--format", "raw", "--rate", "200", "--nonblocking"]
            command += ["--duration", str(int(args.seconds)), "--output", str(collapsed)]
            recorder = subprocess.Popen(  # noqa: S603 - py-spy from this venv or PATH
                command,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            time.sleep(0.5)
            target = f"{a.url}/slack/events"
            response_base = f"{fakes.info['slack_root']}/response/"
            if args.mode == "flow":
                spec2 = {"mode": "closed", "url": target, "connections": sizes.connections, "flow": True}
                spec2 |= {"seconds": args.seconds, "users": users, "response_base": response_base}
            else:
                spec2 = {"mode": "open", "url": target, "rate": args.rate, "seconds": args.seconds}
                spec2 |= {"count": int(args.rate * args.seconds), "warmup": 0.5, "users": users}
                spec2 |= {"response_base": response_base}
            got = loadgen(spec2)
            log(f"load: { ({k: v for k, v in got.items() if k in ('per_second', 'p50', 'p99', 'max', 'sent')}) }")
            _, err = recorder.communicate(timeout=args.seconds + 30)
            if recorder.returncode != 0 or not collapsed.exists():
                log(f"py-spy failed: {err[-500:]}")
                return 1
            if args.out:
                shutil.copy(collapsed, args.out)
            print(_top(collapsed, args.top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
