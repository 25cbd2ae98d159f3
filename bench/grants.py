"""P4 (revoke lateness and idle CPU at many active grants) and P5 (memory and start-up time)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sqlite3
import statistics
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from harness import Sizes, ackgate, child, log
from procs import email, user_id
from report import Report, quantile, spread, verdict

# --- P4 and P5 ------------------------------------------------------------------------------


def _grant(prefix: str, i: int, *, holders: int, now: datetime, expires: datetime, incidents: list[Any]) -> Any:
    from bot.core.domain import Grant, GrantStatus, Incident, Principal

    h = i % holders
    inc = incidents[h % len(incidents)] if incidents else None
    incident = None
    if inc is not None:
        incident = Incident(inc[0], inc[1], inc[2], "acknowledged", f"https://ackgate-bench.pagerduty.com/{inc[0]}")
    return Grant(
        id=f"{prefix}-{i:07d}",
        request_id=f"r{prefix}-{i:07d}",
        resource="prod-db",
        holder=Principal("slack", user_id(h), email(h), f"Bench {h}"),
        flow="incident-db",
        status=GrantStatus.ACTIVE,
        created_at=now,
        expires_at=expires,
        justification="bench",
        incident=incident,
    )


def seed(database_url: str, grants: Iterator[Any], *, batch: int = 5000) -> int:
    """Insert grants through the SQLite store's own row encoding, ``batch`` per transaction."""
    from storage import open_store
    from storage.sqlite import _CODEC, _WRITES

    async def go() -> int:
        store = open_store(database_url)
        await store.open()
        n = 0
        try:
            db = store.grants._db  # type: ignore[attr-defined] # the bench's bulk path, not a port
            chunk: list[Any] = []
            for g in grants:
                chunk.append(_CODEC.grant_values(g))
                if len(chunk) >= batch:
                    async with db.writing("seed bench grants") as conn:
                        await conn.executemany(_WRITES.grant, chunk)
                    n += len(chunk)
                    chunk = []
            if chunk:
                async with db.writing("seed bench grants") as conn:
                    await conn.executemany(_WRITES.grant, chunk)
                n += len(chunk)
        finally:
            await store.close()
        return n

    return asyncio.run(go())


def lateness(db_path: str, prefix: str) -> tuple[list[float], int]:
    with contextlib.closing(sqlite3.connect(db_path, timeout=30)) as conn:
        rows = conn.execute(
            "SELECT expires_at, ended_at, status FROM grants WHERE id >= ? AND id < ?", (f"{prefix}-", f"{prefix}.")
        ).fetchall()
    late = [
        (datetime.fromisoformat(ended) - datetime.fromisoformat(expires)).total_seconds()
        for expires, ended, status in rows
        if status == "ended" and ended
    ]
    return late, len(rows)


def _wait_revoked(db_path: str, prefix: str, total: int, until: float) -> None:
    while time.monotonic() < until:
        done, _ = lateness(db_path, prefix)
        if len(done) >= total:
            return
        time.sleep(0.5)


def _seconds(x: float | None) -> str:
    return "—" if x is None else f"{x:,.2f} s"


def p4_p5(report: Report, sizes: Sizes, workdir: Path, *, which: set[str]) -> None:
    n = sizes.grants
    log(f"P4/P5: {n:,} active grants over {sizes.holders} holders")
    with child("fakes", {"users": sizes.holders, "show_incidents": min(100, sizes.holders)}) as fakes:
        incidents = fakes.info["incidents"]
        # start-up with an empty database (P5), median of a few starts: they are cheap
        empty_ready, empty_rss = [], []
        for _ in range(max(1, sizes.rounds)):
            with ackgate(workdir, fakes.info) as a:
                empty_ready.append(a.ready_seconds)
                time.sleep(0.3)
                got = a.sampler.read()
                empty_rss.append(got[1] / 1024 if got else 0.0)

        db_path = workdir / "ackgate-grants.db"
        url = f"sqlite:///{db_path}"
        now = datetime.now(UTC)
        began = time.monotonic()
        far = now + timedelta(days=1)
        seeded = seed(
            url, (_grant("gb", i, holders=sizes.holders, now=now, expires=far, incidents=incidents) for i in range(n))
        )
        log(f"seeded {seeded:,} grants in {time.monotonic() - began:.1f} s")
        with ackgate(workdir, fakes.info, database_url=url) as a:
            ready_rss = a.sampler.samples[-1][1] / 1024 if a.sampler.samples else 0.0
            idle_start = a.ready_at + 1.0
            time.sleep(max(idle_start + sizes.idle_seconds - time.monotonic(), 0))
            idle = a.sampler.between(idle_start, idle_start + sizes.idle_seconds)

            def at(seconds: float) -> datetime:
                return datetime.now(UTC) + timedelta(seconds=seconds)

            # The batch expires at one instant T, the stream from T + stream_gap on; both are inserted
            # now, `margin` ahead of T, so the scheduler (which looks every 5 s at least) has seen them.
            stream_n, stream_s = (100_000, 300.0) if sizes.full else (sizes.stream, sizes.stream_seconds)
            # inserting takes about 0.1 ms a grant here; the scheduler must see them all before T
            margin = sizes.margin + (sizes.batch + stream_n) * 0.00015
            when = at(margin)
            first = when + timedelta(seconds=sizes.stream_gap)

            def expiring() -> Iterator[Any]:
                for i in range(sizes.batch):
                    yield _grant("gx", i, holders=sizes.holders, now=now, expires=when, incidents=incidents)
                for i in range(stream_n):
                    expires = first + timedelta(seconds=stream_s * i / stream_n)
                    yield _grant("gs", i, holders=sizes.holders, now=now, expires=expires, incidents=incidents)

            seed(url, expiring())
            slack = margin + 60 + (sizes.batch + stream_n) / 50
            _wait_revoked(str(db_path), "gx", sizes.batch, time.monotonic() + slack)
            batch_late, _ = lateness(str(db_path), "gx")
            _wait_revoked(str(db_path), "gs", stream_n, time.monotonic() + sizes.stream_gap + stream_s + slack)
            stream_late, _ = lateness(str(db_path), "gs")
            peak_rss = max((s[1] for s in a.sampler.samples), default=0) / 1024
            ready_100k = a.ready_seconds

    if "P4" in which:
        p50, p99 = quantile(batch_late, 0.5), quantile(batch_late, 0.99)
        ok = len(batch_late) == sizes.batch and p99 is not None and p99 <= 1.0
        report.add(
            f"P4 revoke lateness, {sizes.batch:,} at once among {n:,}",
            "—",
            f"p50 {_seconds(p50)}, p99 {_seconds(p99)}, revoked {len(batch_late)}/{sizes.batch}",
            "—",
            "p99 ≤ 1 s (1,000 among 100k)",
            verdict(ok),
        )
        scaled = "" if sizes.full else " (scaled down: --full for 100k over 300 s)"
        p99s = quantile(stream_late, 0.99)
        ok = len(stream_late) == stream_n and p99s is not None and p99s <= 1.0
        report.add(
            f"P4 revoke lateness, {stream_n:,} over {stream_s:g} s{scaled}",
            "—",
            f"p50 {_seconds(quantile(stream_late, 0.5))}, p99 {_seconds(p99s)}, revoked {len(stream_late)}/{stream_n}",
            "—",
            "p99 ≤ 1 s (100k over 5 min)",
            verdict(ok),
        )
        cpu, bursts = _idle_cpu(idle)
        report.add(
            f"P4 idle CPU at {n:,} grants over {sizes.idle_seconds:g} s",
            "—",
            "—"
            if cpu is None
            else f"{cpu:.2f}% average; {len(bursts)} bursts ≥ 50% of a core"
            + (f" (longest {max(bursts):.1f} s)" if bursts else ""),
            "—",
            "< 1%, no bursts",
            verdict(cpu is not None and cpu < 1.0 and not bursts),
        )
    if "P5" in which:
        report.add(
            f"P5 RSS at {n:,} grants",
            "—",
            f"{ready_rss:,.0f} MB ready, peak {peak_rss:,.0f} MB (empty: {spread(empty_rss, lambda x: f'{x:,.0f} MB')})",
            "—",
            "≤ 150 MB, peaks included",
            verdict(peak_rss <= 150),
        )
        report.add(
            "P5 start-up to ready",
            "—",
            f"{ready_100k:.2f} s at {n:,} grants; {spread(empty_ready, lambda x: f'{x:.2f} s')} empty",
            f"{ready_100k / statistics.median(empty_ready):.1f} × empty",
            "≤ 1 s at 100k",
            verdict(ready_100k <= 1.0),
        )


def _idle_cpu(samples: list[tuple[float, int, float]]) -> tuple[float | None, list[float]]:
    """The average CPU % of one core over the samples, and the length in seconds of each burst
    (consecutive sampling intervals at ≥ 50% of a core)."""
    if len(samples) < 2:
        return None, []
    total = (samples[-1][2] - samples[0][2]) / (samples[-1][0] - samples[0][0]) * 100
    bursts: list[float] = []
    running = 0.0
    for (t0, _, c0), (t1, _, c1) in itertools.pairwise(samples):
        if t1 > t0 and (c1 - c0) / (t1 - t0) >= 0.5:
            running += t1 - t0
        elif running:
            bursts.append(running)
            running = 0.0
    if running:
        bursts.append(running)
    return total, bursts
