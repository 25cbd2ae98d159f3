"""Parsing and showing durations such as ``2h``, ``90m``, ``1h30m`` or ``1d``."""

from __future__ import annotations

import re
from datetime import timedelta

from bot.core.errors import UsageError

_PART = re.compile(r"(\d+)\s*(d|h|m|s)")
_WHOLE = re.compile(r"^(?:\d+\s*[dhms]\s*)+$")
_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def looks_like_duration(text: str) -> bool:
    return bool(_WHOLE.match(text.strip().lower()))


def not_a_duration(text: str) -> UsageError:
    return UsageError(f"“{text}” is not a duration. Use a number and a unit, such as 30m, 2h or 1h30m.")


def parse_duration(text: str) -> timedelta:
    """``"2h"`` → 2 hours. Raises :class:`UsageError` with an example when malformed or zero."""
    cleaned = text.strip().lower()
    if not _WHOLE.match(cleaned):
        raise not_a_duration(text)
    seconds = sum(int(n) * _UNITS[u] for n, u in _PART.findall(cleaned))
    if seconds <= 0:
        raise UsageError("The duration must be longer than zero, such as 30m or 2h.")
    return timedelta(seconds=seconds)


def format_duration(delta: timedelta) -> str:
    """2 hours 30 minutes → ``2h30m``; whole units only, seconds dropped when over a minute."""
    total = int(delta.total_seconds())
    if total < 60:
        return f"{total}s"
    days, rem = divmod(total, 86400)
    hours, rem = divmod(rem, 3600)
    minutes = rem // 60
    out = ""
    if days:
        out += f"{days}d"
    if hours:
        out += f"{hours}h"
    if minutes:
        out += f"{minutes}m"
    return out
