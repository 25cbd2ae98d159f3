"""Two lanes on one event loop: what a request is waiting for, and the background.

Slack gives up on an acknowledgement after 3 seconds, and an ack needs a few loop iterations (read
the request, record it, write the answer). On a plain asyncio loop one iteration runs every
callback that became ready before it began, and background work comes in waves: one PagerDuty
answer resumes tens of flows at once, each a few milliseconds of grants, audit rows and messages,
so that one iteration, and every ack waiting on it, lasted 90-140 ms under load (issue 9's
500 requests/s with PagerDuty answering in 2 s: ack p99 ~95 ms).

A loop with :class:`Lanes` mixed in keeps those apart. Work started with :func:`spawn` (and every
task it starts in turn: the flag is a context variable, and a task copies its creator's context)
is *background*: when such a task is ready to take its next step, the step joins the background
lane instead of the loop's own queue. Once per iteration the loop runs background steps for at
most :data:`SLICE` seconds, in the order they became ready; everything else (reading requests,
the listeners up to their ack, writing responses, I/O and timer callbacks) runs as it always
did. An iteration then lasts at most the foreground's own work plus one slice (plus the one step
that overran it), however much background work is queued, and the background gets whatever
time the foreground leaves: all of it when no request is waiting. (A 2 ms slice measured an ack
p99 of 33-46 ms at that load, 1 ms 21-33 ms, 0.5 ms 16-17 ms; closed-loop flows per second were
unchanged.)

The one way round that rule is a hand-over: a background task handed something the foreground
may be waiting on behind it (the SQLite connection's lock) is woken ahead of the lane by
:func:`hand_over`, so it gets on with its statement and gives the lock back within the iteration,
instead of sitting on it at the back of a long lane.

On a loop without :class:`Lanes` (tests on a plain loop, say), everything here still works and
background steps are ordinary ones.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar, TypeVarTuple

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

SLICE = 0.0005  # seconds of background steps per loop iteration, at most (and the step that overruns it)

_BACKGROUND: contextvars.ContextVar[bool] = contextvars.ContextVar("ackgate_background", default=False)


def in_background() -> bool:
    """Whether the running code was started in the background (by :func:`spawn` or a task of it)."""
    return _BACKGROUND.get()


def background_context() -> contextvars.Context:
    """A copy of the current context, marked background: a task created in it (or in a copy of it)
    takes its steps in the background lane."""
    context = contextvars.copy_context()
    context.run(_BACKGROUND.set, True)
    return context


def spawn(coro: Coroutine[Any, Any, T], *, name: str | None = None) -> asyncio.Task[T]:
    """``create_task`` in the background lane; the caller keeps a reference, as for any task."""
    return asyncio.get_running_loop().create_task(coro, name=name, context=background_context())


def start_in_background(start: Callable[[], T]) -> T:
    """Call ``start()`` (which starts tasks of its own, a scheduler say) so that what it starts is background."""
    return background_context().run(start)


def hand_over(future: asyncio.Future[None]) -> None:
    """``future.set_result(None)``, with whoever waits on it woken in the foreground, even a
    background task: it was just handed something others wait for."""
    loop = future.get_loop()
    if not isinstance(loop, Lanes):
        future.set_result(None)
        return
    loop._ahead += 1
    try:
        future.set_result(None)  # schedules the waiters' wake-ups now, through call_soon
    finally:
        loop._ahead -= 1


class Lanes(asyncio.AbstractEventLoop):
    """Mixed in before a concrete loop class: ``class Loop(Lanes, asyncio.SelectorEventLoop)``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lane: deque[asyncio.Handle] = deque()
        self._pump_due = False
        self._ahead = 0

    def call_soon(
        self, callback: Callable[[*Ts], object], *args: *Ts, context: contextvars.Context | None = None
    ) -> asyncio.Handle:
        if self._ahead or context is None or not context.get(_BACKGROUND, False):
            return super().call_soon(callback, *args, context=context)
        if self.is_closed():
            raise RuntimeError("Event loop is closed")
        handle = asyncio.Handle(callback, args, self, context)
        self._lane.append(handle)
        if not self._pump_due:
            self._pump_due = True
            super().call_soon(self._pump)
        return handle

    def _pump(self) -> None:
        lane = self._lane
        end = time.perf_counter() + SLICE
        try:
            while lane:
                handle = lane.popleft()
                if not handle.cancelled():
                    handle._run()  # as the loop runs a handle: an exception goes to its handler
                if time.perf_counter() >= end:
                    break
        finally:  # also when SystemExit or KeyboardInterrupt escapes a step: what waits is not stranded
            if lane:
                super().call_soon(self._pump)  # the next iteration, after the foreground's
            else:
                self._pump_due = False


class LaneLoop(Lanes, asyncio.SelectorEventLoop):
    """asyncio's own loop, with the background lane."""
