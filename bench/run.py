"""Benchmarks of what the access core promises, through the real server on loopback.

    make bench          (or: .venv/bin/python bench/run.py --rounds 30)

1. Slack's ack does not wait for PagerDuty: the /access HTTP response time with PagerDuty
   answering in 0 s and in 1 s, and their ratio (close to 1 means independent).
2. A warm /access, end to end (POST until the answer reaches the response_url), and how many
   PagerDuty calls it costs.
3. Revoke lag: how long after their expiry a batch of grants is revoked by the scheduler, with a
   provisioner that answers at once and with one that takes 100 ms a call (a real one is remote).

Medians and ratios come from one run. Every loop is bounded; all traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from bot.clock import FakeClock
from bot.domain import Grant, GrantStatus
from bot.provisioners import NoopProvisioner
from bot.simulators import slack_requests
from bot.simulators.stage import Person, Stage

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


async def _ack_seconds(stage: Stage, who: Person, text: str) -> float:
    """Seconds from sending the slash command to Slack getting its HTTP answer (the ack)."""
    body = slack_requests.slash_command_body(
        text=text, user_id=who.user_id, response_url=stage.slack.response_url(f"bench{time.monotonic_ns()}")
    )
    started = time.perf_counter()
    status, _ = await stage.post(body)
    elapsed = time.perf_counter() - started
    assert status == 200, status
    return elapsed


async def bench_ack(stage: Stage, who: Person, rounds: int) -> tuple[float, float]:
    fast = [await _ack_seconds(stage, who, "prod-db 1h bench") for _ in range(rounds)]
    stage.pd.slow_next(None, seconds=1.0)
    slow = [await _ack_seconds(stage, who, "prod-db 1h bench") for _ in range(rounds)]
    stage.pd.clear_faults()
    await asyncio.sleep(2.5)  # let the slowed requests finish before the next measurement
    return statistics.median(fast), statistics.median(slow)


async def bench_warm(stage: Stage, who: Person, rounds: int) -> tuple[float, float]:
    await stage.command(who, "prod-db 1h warm-up")
    times, calls = [], []
    for _ in range(rounds):
        before = len(stage.pd.requests)
        started = time.perf_counter()
        reply = await stage.command(who, "prod-db 1h bench")
        times.append(time.perf_counter() - started)
        assert "Access granted" in reply.text, reply.text
        calls.append(len(stage.pd.requests) - before)
    return statistics.median(times), statistics.median(calls)


async def bench_revoke_lag(stage: Stage, grants: int) -> tuple[float, float]:
    """Median seconds between the scheduler being woken at expiry and each grant being ended."""
    service, store = stage.parts.service, stage.parts.store
    people = [stage.person(f"user{i}") for i in range(grants)]
    for p in people:
        me = next(u.id for u in stage.pd.users.values() if u.email == p.email)
        stage.pd.add_incident("Bench incident", assigned_to=[me], acknowledged_by=[me])
        await stage.command(p, "prod-db 1h bench")
    active = [g for p in people for g in await store.grants.list_for(p.email) if g.status is GrantStatus.ACTIVE]
    stage.clock.advance(timedelta(hours=1))
    started = time.perf_counter()
    stage.parts.scheduler.wake()
    done: dict[str, float] = {}
    deadline = started + 60
    while len(done) < len(active) and time.perf_counter() < deadline:
        for g in active:
            if g.id not in done and (await store.grants.get(g.id)).status is GrantStatus.ENDED:  # type: ignore[union-attr]
                done[g.id] = time.perf_counter() - started
        await asyncio.sleep(0.005)
    assert len(done) == len(active), f"only {len(done)} of {len(active)} revoked"
    del service
    return statistics.median(done.values()), max(done.values())


class RemoteProvisioner(NoopProvisioner):
    """A provisioner whose every call takes ``seconds``, like one across the network."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    async def grant(self, grant: Grant) -> None:
        await asyncio.sleep(self.seconds)
        await super().grant(grant)

    async def revoke(self, grant: Grant) -> None:
        await asyncio.sleep(self.seconds)
        await super().revoke(grant)


async def slow_revoke_lag(grants: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory(prefix="ackgate-bench-") as workdir:
        policy = Path(workdir) / "policy.yaml"
        policy.write_text(POLICY, encoding="utf-8")
        remote = RemoteProvisioner(0.1)
        stage = Stage(policy_file=policy, workdir=Path(workdir), clock=FakeClock(), provisioners={"noop": remote})
        async with stage:
            return await bench_revoke_lag(stage, grants)


async def main(rounds: int, grants: int) -> None:
    with tempfile.TemporaryDirectory(prefix="ackgate-bench-") as workdir:
        policy = Path(workdir) / "policy.yaml"
        policy.write_text(POLICY, encoding="utf-8")
        stage = Stage(
            policy_file=policy, workdir=Path(workdir), clock=FakeClock(), provisioners={"noop": NoopProvisioner()}
        )
        async with stage:
            alice = stage.person("alice")
            me = next(u.id for u in stage.pd.users.values() if u.email == alice.email)
            stage.pd.add_incident("Bench incident", assigned_to=[me], acknowledged_by=[me])
            fast, slow = await bench_ack(stage, alice, rounds)
            warm, calls = await bench_warm(stage, alice, rounds)
            lag, worst = await bench_revoke_lag(stage, grants)
    slow_lag, slow_worst = await slow_revoke_lag(grants)
    print(f"ack, PagerDuty answering at once    median {fast * 1000:7.1f} ms  ({rounds} rounds)")
    print(f"ack, PagerDuty taking 1 s per call  median {slow * 1000:7.1f} ms  ratio {slow / fast:5.2f}")
    print(f"warm /access end to end             median {warm * 1000:7.1f} ms  PagerDuty calls per request: {calls:g}")
    print(
        f"revoke lag after expiry             median {lag * 1000:7.1f} ms  max {worst * 1000:.1f} ms"
        f"  ({grants} grants expiring together)"
    )
    print(
        f"revoke lag, 100 ms provisioner       median {slow_lag * 1000:7.1f} ms  max {slow_worst * 1000:.1f} ms"
        f"  ({grants} grants expiring together)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--grants", type=int, default=50)
    args = parser.parse_args()
    asyncio.run(main(min(args.rounds, 500), min(args.grants, 500)))
