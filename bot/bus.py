"""Publishing an event: audit it first (a failure there propagates, because an unaudited change
must not pass silently), then run the side effects registered for its type in order.

A failing side effect (a chat message that could not be sent) is logged and does not undo the
state change, which is already stored.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from bot.events import Event
from bot.ports import AuditLog

log = logging.getLogger("ackgate.bus")

Reaction = Callable[[Any], Awaitable[None]]
Registry = Mapping[type[Event], Sequence[Reaction]]


class MessageBus:
    def __init__(self, *, audit: AuditLog, registry: Registry | None = None) -> None:
        self._audit = audit
        self._registry: Registry = registry or {}

    def use(self, registry: Registry) -> None:
        self._registry = registry

    async def publish(self, *events: Event) -> None:
        for event in events:
            await self._audit.append(event.audit())
            for reaction in self._registry.get(type(event), ()):
                try:
                    await reaction(event)
                except Exception:
                    log.exception(
                        "side effect %s failed for %s",
                        getattr(reaction, "__name__", reaction),
                        type(event).__name__,
                    )


def merge(*registries: Registry) -> dict[type[Event], list[Reaction]]:
    """One map from several features' maps; each event's reactions run in the order given."""
    merged: dict[type[Event], list[Reaction]] = {}
    for registry in registries:
        for event_type, reactions in registry.items():
            merged.setdefault(event_type, []).extend(reactions)
    return merged
