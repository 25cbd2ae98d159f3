"""Publishing an event is auditing it, then running the side effects registered for its type.

Two ways in:

- :meth:`MessageBus.commit` for a state change: the storage method writes the events' audit rows
  in the state change's own transaction (its ``audit`` argument, see :mod:`bot.core.ports`), and only
  after the commit do the reactions run. A crash can lose a chat message, never an audit row. An
  event that changed nothing but led to the change (the gate that let a request through) can ride
  in the same transaction (``before``): one write instead of two, and published on its own if the
  change fails.
- :meth:`MessageBus.publish` for an event that changes no stored state (a gate evaluated, an
  action refused): its audit row is appended on its own (a failure there propagates, because an
  unaudited event must not pass silently), then its reactions run.

A failing side effect (a chat message that could not be sent) is logged and does not undo the
state change, which is already stored.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from bot.core.domain import AuditEvent
from bot.core.errors import AckgateError
from bot.core.events import Event
from bot.core.ports import AuditFor, AuditLog

log = logging.getLogger("ackgate.bus")

Reaction = Callable[[Any], Awaitable[None]]
Registry = Mapping[type[Event], Sequence[Reaction]]
T = TypeVar("T")


class MessageBus:
    def __init__(self, *, audit: AuditLog, registry: Registry | None = None) -> None:
        self._audit = audit
        self._registry: Registry = registry or {}

    def use(self, registry: Registry) -> None:
        self._registry = registry

    async def commit(
        self,
        write: Callable[[AuditFor[T]], Awaitable[T]],
        events: Callable[[T], Sequence[Event]],
        *,
        defer_to: list[Event] | None = None,
        before: Sequence[Event] = (),
    ) -> T:
        """Run a state change whose audit commits with it, then react to its events.

        ``write`` calls one storage method, passing it the ``audit`` function it is given;
        ``events`` builds the change's events from the method's result. Errors of ``write`` (a lost
        compare-and-set, a storage failure) propagate and nothing of the change is audited or
        reacted to. With ``defer_to`` (from :meth:`reacting_after`) the events are reacted to later
        instead, so a claimed provisioner call is not held up by chat messages.

        ``before``: events that change no stored state and led to this change; their audit rows
        come first in the same transaction. If ``write`` fails they are published on their own
        (what was decided stays audited), and ``write``'s error is the one raised.
        """
        built: list[Event] = []
        audited = False

        def audit(result: T) -> list[AuditEvent]:
            nonlocal audited
            audited = True
            built[:] = [*before, *events(result)]
            return [event.audit() for event in built]

        try:
            result = await write(audit)
        except Exception:
            if before:
                await self._publish_anyway(before)
            raise
        if not audited:
            # A storage method that ignores ``audit`` is a bug; keep the row rather than lose it.
            log.error("a state change was stored without its audit rows; appending them now")
            for event in audit(result):
                await self._audit.append(event)
        if defer_to is None:
            await self.react(*built)
        else:
            defer_to.extend(built)
        return result

    @asynccontextmanager
    async def reacting_after(self) -> AsyncIterator[list[Event]]:
        """A list to ``defer_to``: its events are reacted to, in order, when the block ends (also
        when it fails, since what was committed stays committed)."""
        later: list[Event] = []
        try:
            yield later
        finally:
            await self.react(*later)

    def reacts_to(self, event: Event) -> bool:
        """Whether any side effect is registered for ``event``'s type."""
        return bool(self._registry.get(type(event)))

    async def _publish_anyway(self, events: Sequence[Event]) -> None:
        """``publish`` after a failed change; its own failure is logged, not raised over the change's."""
        try:
            await self.publish(*events)
        except Exception:
            log.exception("could not audit %s after its state change failed", [type(e).__name__ for e in events])

    async def publish(self, *events: Event) -> None:
        """Audit and react to events that change no stored state."""
        for event in events:
            await self._audit.append(event.audit())
            await self.react(event)

    async def react(self, *events: Event) -> None:
        """Run the side effects of events already audited."""
        for event in events:
            for reaction in self._registry.get(type(event), ()):
                name = getattr(reaction, "__name__", repr(reaction))
                try:
                    await reaction(event)
                except AckgateError as exc:  # chat down, a message gone: expected, one line
                    log.warning("side effect %s failed for %s: %s", name, type(event).__name__, exc.message)
                except Exception:
                    log.exception("side effect %s failed for %s", name, type(event).__name__)


def merge(*registries: Registry) -> dict[type[Event], list[Reaction]]:
    """One map from several features' maps; each event's reactions run in the order given."""
    merged: dict[type[Event], list[Reaction]] = {}
    for registry in registries:
        for event_type, reactions in registry.items():
            merged.setdefault(event_type, []).extend(reactions)
    return merged
