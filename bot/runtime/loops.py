"""The event loop ``ackgate serve`` runs on: uvloop's where it is installed (every platform but
Windows), else asyncio's, with the background lane of :mod:`bot.core.lanes` either way."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable

from bot.core.lanes import LaneLoop, Lanes


@functools.cache
def lane_loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:
        return LaneLoop

    class UvLaneLoop(Lanes, uvloop.Loop):  # type: ignore[misc]  # uvloop.Loop is a compiled class
        """uvloop's loop, with the background lane."""

    return UvLaneLoop
