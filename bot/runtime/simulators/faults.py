"""Failures injected into a simulator's next requests, for tests of errors, retries and timeouts."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Fault:
    """Answer ``status`` with ``headers`` (``status=None``: only wait ``delay`` seconds, then answer
    normally), for the next ``remaining`` requests (None: until cleared)."""

    status: int | None
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    remaining: int | None = 1


class Faults:
    """Faults in the order they were injected; each request takes the first, which stays first
    until it has served its ``remaining`` requests."""

    def __init__(self) -> None:
        self._queue: list[Fault] = []

    def add(self, fault: Fault) -> None:
        self._queue.append(fault)

    def clear(self) -> None:
        self._queue.clear()

    def take(self) -> Fault | None:
        """The fault for this request, if any."""
        if not self._queue:
            return None
        fault = self._queue[0]
        if fault.remaining is not None:
            fault.remaining -= 1
            if fault.remaining <= 0:
                self._queue.pop(0)
        return fault
