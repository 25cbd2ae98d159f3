"""When the expiry scheduler runs a pass: a grant made only moves its wake-up earlier (no pass and
no query each, so a busy minute does not run hundreds of passes), yet every expiry is met on time,
a grant's made while the next expiry is being read included, and ``wake`` still asks for a pass."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta
from typing import Any, cast

from bot.core.clock import SystemClock
from bot.core.expiry import ExpiryScheduler


class _Rig:
    """A scheduler over stand-ins that count its passes and its next-expiry queries."""

    def __init__(self, stored: datetime | None = None, *, idle_seconds: float = 5.0) -> None:
        self.passes: list[float] = []
        self.queries = 0
        self.stored = stored
        self.reading: asyncio.Event | None = None  # set: next_expiry waits for it (a slow query)
        self.reading_started = asyncio.Event()
        rig = self

        class Grants:
            async def expire_due(self) -> int:
                rig.passes.append(time.monotonic())
                return 0

            async def retry_revokes(self) -> int:
                return 0

            async def told(self, *, within: float | None = None) -> None:
                return None

            async def next_expiry(self) -> datetime | None:
                rig.queries += 1
                if rig.reading is not None:
                    rig.reading_started.set()
                    await rig.reading.wait()
                return rig.stored

        class Service:
            grants = Grants()

            async def time_out_pending(self) -> int:
                return 0

        self.clock = SystemClock()
        self.scheduler = ExpiryScheduler(
            cast(Any, Service()), grants=cast(Any, Grants()), clock=self.clock, idle_seconds=idle_seconds
        )

    def soon(self, seconds: float) -> datetime:
        return self.clock.now() + timedelta(seconds=seconds)


async def _settle(seconds: float = 0.05) -> None:
    await asyncio.sleep(seconds)


async def test_grants_made_in_a_burst_cost_no_pass_and_no_query_each() -> None:
    rig = _Rig()
    rig.scheduler.start()
    await _settle()
    assert len(rig.passes) == 1 and rig.queries == 1  # the start-up pass, then its next expiry
    for n in range(300):
        rig.scheduler.expires(rig.soon(3600 + n))
        await asyncio.sleep(0)
    await _settle()
    assert len(rig.passes) == 1 and rig.queries == 1
    for _ in range(5):  # control: asking for a pass still runs one each time
        rig.scheduler.wake()
        await _settle(0.01)
    assert len(rig.passes) == 6
    await rig.scheduler.stop()


async def test_a_grant_expiring_before_the_known_one_is_passed_at_its_expiry() -> None:
    rig = _Rig(stored=datetime.max.replace(tzinfo=SystemClock().now().tzinfo))
    rig.scheduler.start()
    await _settle()
    began = time.monotonic()
    rig.scheduler.expires(rig.soon(0.3))
    rig.scheduler.expires(rig.soon(3600))  # a later one does not push it back
    await _settle(0.8)
    await rig.scheduler.stop()
    assert len(rig.passes) == 2
    assert 0.25 <= rig.passes[1] - began <= 0.6  # at its expiry, not at the 5-s idle pass


async def test_a_grant_made_while_the_next_expiry_is_read_is_not_lost() -> None:
    rig = _Rig(stored=datetime.max.replace(tzinfo=SystemClock().now().tzinfo))
    rig.reading = asyncio.Event()
    rig.scheduler.start()
    await asyncio.wait_for(rig.reading_started.wait(), 1)  # the start-up pass reads the next expiry
    began = time.monotonic()
    rig.scheduler.expires(rig.soon(0.3))  # made meanwhile; the store's answer does not include it
    rig.reading.set()
    await _settle(0.8)
    await rig.scheduler.stop()
    assert len(rig.passes) == 2
    assert 0.25 <= rig.passes[1] - began <= 0.6
