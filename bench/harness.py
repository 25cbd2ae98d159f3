"""What every measure shares: the sizes, the child processes (``ackgate serve``, anchors, fakes,
load generator) and the /proc sampler."""

from __future__ import annotations

import compileall
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from procs import BOT_EMAIL, PD_TOKEN, SIGNING_SECRET, SLACK_TOKEN

HERE = Path(__file__).resolve().parent

POLICY = """\
version: 1
resources:
  - name: prod-db
    max_duration: 8h
flows:
  - name: incident-db
    resources: [prod-db]
    gate: {type: acknowledged_incident}
    approval: {type: auto}
    max_duration: 8h
    incident_notes: false
"""

CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- sizes ---------------------------------------------------------------------------------


@dataclass
class Sizes:
    rounds: int = 3
    rate: float = 500.0
    seconds: float = 20.0  # of each open-loop run
    warmup: float = 1.0  # seconds sent first at the same rate and not counted
    users: int = 1000  # distinct requesters cycled through in P1/P2
    pd_delay: float = 2.0
    sweep: tuple[float, ...] = (25, 50, 100, 200, 300, 500, 750, 1000)
    sweep_seconds: float = 5.0
    sweep_p99: float = 0.025
    workers: int = 2
    connections: int = 32
    flow_users: int = 32  # P2's requesters: warm after their first flow (one PagerDuty call a flow)
    closed_seconds: float = 10.0
    burst_users: int = 1000
    burst_spread: float = 1.0
    burst_wait: float = 75.0
    pd_per_minute: int = 960
    grants: int = 100_000
    holders: int = 1000
    batch: int = 1000
    stream: int = 10_000  # expiring over stream_seconds (full: 100,000 over 300 s)
    stream_seconds: float = 30.0
    idle_seconds: float = 70.0
    stream_gap: float = 15.0  # the stream starts this long after the batch's instant
    margin: float = 8.0  # grants inserted into a running server expire this late: past the scheduler's 5 s wake-up
    quick: bool = False
    full: bool = False

    @classmethod
    def quick_sizes(cls) -> Sizes:
        return cls(
            rounds=1,
            rate=100.0,
            seconds=1.5,
            warmup=0.3,
            users=20,
            sweep=(50, 100),
            sweep_seconds=1.0,
            connections=4,
            flow_users=4,
            closed_seconds=1.5,
            burst_users=30,
            burst_spread=0.2,
            burst_wait=10.0,
            grants=2000,
            holders=20,
            batch=100,
            stream=100,
            stream_seconds=2.0,
            idle_seconds=2.0,
            margin=5.5,
            stream_gap=1.0,
            quick=True,
        )


# --- processes ------------------------------------------------------------------------------


def _python() -> str:
    return sys.executable


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Child:
    """A ``procs.py`` role in its own process: its first stdout line is its addresses."""

    def __init__(self, role: str, spec: dict[str, Any] | None = None) -> None:
        self.role = role
        self.proc = subprocess.Popen(  # noqa: S603 - our own interpreter and script
            [_python(), str(HERE / "procs.py"), role, json.dumps(spec or {})],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"bench child {role} did not start (exit {self.proc.wait()})")
        self.info: dict[str, Any] = json.loads(line)

    def stop(self) -> dict[str, Any]:
        self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        lines = [x for x in out.splitlines() if x.strip()]
        return json.loads(lines[-1]) if lines else {}


@contextlib.contextmanager
def child(role: str, spec: dict[str, Any] | None = None) -> Iterator[Child]:
    c = Child(role, spec)
    try:
        yield c
    finally:
        if c.proc.poll() is None:
            c.stop()


def loadgen(spec: dict[str, Any]) -> dict[str, Any]:
    done = subprocess.run(  # noqa: S603
        [_python(), str(HERE / "loadgen.py"), json.dumps(spec)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _ackgate_command(extra: Sequence[str] = ()) -> list[str]:
    script = Path(_python()).with_name("ackgate")
    base = [str(script)] if script.exists() else [_python(), "-m", "bot.runtime.cli"]
    return [*base, "serve", *extra]


def workers_supported() -> bool:
    done = subprocess.run([*_ackgate_command(), "--help"], capture_output=True, text=True, check=False)  # noqa: S603
    return "--workers" in done.stdout


class Sampler(threading.Thread):
    """Samples a process's VmRSS and CPU time from /proc every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, int, float]] = []  # (monotonic, rss kB, cpu seconds)
        self._halt = threading.Event()

    def read(self) -> tuple[float, int, float] | None:
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return None
        rss = next((int(x.split()[1]) for x in status.splitlines() if x.startswith("VmRSS:")), 0)
        fields = stat.rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime (fields 14, 15)
        return time.monotonic(), rss, cpu

    def run(self) -> None:
        while not self._halt.is_set():
            got = self.read()
            if got is None:
                return
            self.samples.append(got)
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=2)

    def between(self, start: float, end: float) -> list[tuple[float, int, float]]:
        return [s for s in self.samples if start <= s[0] <= end]


def runqueue_wait(pids: Sequence[int]) -> dict[int, tuple[float, float]]:
    """Each process's main thread from ``/proc/PID/schedstat``: seconds on a CPU and seconds
    runnable but waiting for one (the kernel's run queue); empty where the kernel keeps no schedstat."""
    got: dict[int, tuple[float, float]] = {}
    for pid in pids:
        try:
            on_cpu, waiting, _ = Path(f"/proc/{pid}/schedstat").read_text().split()
        except (OSError, ValueError):
            continue
        got[pid] = (int(on_cpu) / 1e9, int(waiting) / 1e9)
    return got


def children(pid: int) -> list[int]:
    """The processes ``pid`` started (``serve --workers N``'s workers)."""
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def compile_project() -> None:
    """Write the project's bytecode, as installing its wheel does. A checkout installed in editable
    mode has none, and with ``PYTHONDONTWRITEBYTECODE`` set (this machine, the container image) every
    ``ackgate serve`` would compile its ~90 modules from source again: ~0.1 s of P5's start-up that
    no installed Ackgate pays. Up-to-date files are only stat'ed."""
    root = HERE.parent
    for package in ("bot", "handlers", "storage"):
        compileall.compile_dir(root / package, quiet=1)


class Ackgate:
    """One ``ackgate serve`` process against the fakes, on a free port; ``ready`` is measured
    from the spawn to the first 200 on ``/readyz``; the project's bytecode is written first
    (``compile_project``)."""

    def __init__(
        self,
        workdir: Path,
        fakes: dict[str, Any],
        *,
        database_url: str | None = None,
        extra_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        compile_project()
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.database_url = database_url or f"sqlite:///{workdir / f'ackgate-{self.port}.db'}"
        policy = workdir / "policy.yaml"
        policy.write_text(POLICY, encoding="utf-8")
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("ACKGATE_", "SLACK_", "PAGERDUTY_"))}
        clean.update(
            {
                "SLACK_BOT_TOKEN": SLACK_TOKEN,
                "SLACK_SIGNING_SECRET": SIGNING_SECRET,
                "SLACK_API_URL": fakes["slack_api_url"],
                "PAGERDUTY_API_TOKEN": PD_TOKEN,
                "PAGERDUTY_API_URL": fakes["pd_url"],
                "PAGERDUTY_FROM_EMAIL": BOT_EMAIL,
                "ACKGATE_DATABASE_URL": self.database_url,
                "ACKGATE_POLICY_FILE": str(policy),
                "ACKGATE_HOST": "127.0.0.1",
                "ACKGATE_PORT": str(self.port),
                "ACKGATE_PUBLIC_URL": self.url,
                "ACKGATE_LOG_LEVEL": "ERROR",
                "ACKGATE_DRAIN_SECONDS": "3",
                **(env or {}),
            }
        )
        self.log_path = workdir / f"ackgate-{self.port}.log"
        self._log = self.log_path.open("w")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(  # noqa: S603
            _ackgate_command(extra_args), env=clean, stdout=self._log, stderr=subprocess.STDOUT
        )
        self.sampler = Sampler(self.proc.pid)
        self.sampler.start()
        self.ready_seconds = self._wait_ready()
        self.ready_at = self.started + self.ready_seconds

    def _wait_ready(self, limit: float = 120.0) -> float:
        while time.monotonic() - self.started < limit:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ackgate serve exited {self.proc.returncode}: {self.log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=1) as r:  # noqa: S310 - loopback
                    if r.status == 200:
                        return time.monotonic() - self.started
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.01)
        raise RuntimeError("ackgate serve was not ready in time")

    def stop(self) -> None:
        self.sampler.stop()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@contextlib.contextmanager
def ackgate(workdir: Path, fakes: dict[str, Any], **kwargs: Any) -> Iterator[Ackgate]:
    a = Ackgate(workdir, fakes, **kwargs)
    try:
        yield a
    finally:
        a.stop()
