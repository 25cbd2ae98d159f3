"""CPU the server process spends per request or per flow: less distorted by a busy machine than latency.

    .venv/bin/python bench/cpu_per_request.py ROLE MODE [RATE] [SECONDS]

ROLE: ackgate, bare or bolt; MODE: open (open loop at RATE req/s, PagerDuty answering in 2 s),
ack or flow (closed loop, 32 connections, acks only or whole auto-approve flows). Prints one JSON
line: the serve process's utime+stime from /proc across the run, per request, and the latencies.
"""

import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.environ.get("BENCH_DIR", str(Path(__file__).resolve().parent)))
from harness import CLK_TCK, ackgate, child, loadgen


def cpu_of(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


role, mode = sys.argv[1], sys.argv[2]
rate = float(sys.argv[3]) if len(sys.argv) > 3 else 100
seconds = float(sys.argv[4]) if len(sys.argv) > 4 else 10
users = 1000 if mode == "open" else 32
spec_f = {"users": users, "pd_delay": 2.0} if mode == "open" else {"users": users}
with tempfile.TemporaryDirectory() as tmp, child("fakes", spec_f) as fakes:

    def run(url, pid):
        base = f"{fakes.info['slack_root']}/response/"
        if mode == "open":
            spec = {
                "mode": "open",
                "url": url,
                "rate": rate,
                "seconds": seconds,
                "count": int(rate * seconds),
                "warmup": 1.0,
                "users": users,
                "response_base": base,
            }
        else:
            spec = {
                "mode": "closed",
                "url": url,
                "connections": 32,
                "seconds": seconds,
                "users": users,
                "flow": mode == "flow",
                "response_base": base,
            }
        c0 = cpu_of(pid)
        got = loadgen(spec)
        time.sleep(2.5 if mode == "open" else 0.5)  # let background work finish (open: PD answers at 2 s)
        c1 = cpu_of(pid)
        n = got["sent"] if mode == "open" else got.get("count") or round(got["per_second"] * seconds)
        print(
            json.dumps(
                {
                    "role": role,
                    "mode": mode,
                    "rate": rate,
                    "n": n,
                    "cpu_s": round(c1 - c0, 2),
                    "cpu_ms_per": round((c1 - c0) * 1000 / max(n, 1), 3),
                    "per_second": got.get("per_second"),
                    "p50_ms": round((got["p50"] or 0) * 1000, 1),
                    "p99_ms": round((got["p99"] or 0) * 1000, 1),
                    "failures": got["failures"],
                    "load": os.getloadavg()[0],
                }
            )
        )

    if role == "ackgate":
        with ackgate(Path(tmp), fakes.info) as a:
            time.sleep(1)
            run(f"{a.url}/slack/events", a.proc.pid)
    else:
        with child(role, {"slack_api_url": fakes.info["slack_api_url"]}) as anchor:
            time.sleep(1)
            run(f"{anchor.info['url']}/slack/events", anchor.proc.pid)
