"""Overload: whether work is waiting for a turn behind the acknowledgements.

One event loop answers chat platforms' acknowledgements and runs the background work behind them.
While a listener's backlog holds jobs waiting for a turn (:class:`handlers.slack.app.Background`),
Ackgate is taking requests faster than it finishes them. The background's storage statements are
then let through a few per loop iteration (:class:`storage.priority_lock.PriorityLock`), so an
iteration never holds dozens of background steps at once and the requests waiting on the sockets
are read and acknowledged between them. Without a backlog nothing is held back.
"""

from __future__ import annotations

import weakref
from collections.abc import Sized

_backlogs: weakref.WeakSet[Sized] = weakref.WeakSet()


def watch(backlog: Sized) -> None:
    """Count ``backlog`` (anything with a length: the jobs waiting in it) for :func:`overloaded`."""
    _backlogs.add(backlog)


def overloaded() -> bool:
    """Whether any watched backlog holds a job waiting for a turn."""
    return any(len(backlog) for backlog in _backlogs)
