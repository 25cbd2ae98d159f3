"""Notes on the PagerDuty incident a grant was issued under, so responders see access on its timeline.

A grant made, extended or ended under an incident adds one note (``POST /incidents/{id}/notes``),
unless its flow says ``incident_notes: false``. A note that cannot be written is logged and
dropped: the grant itself is already stored and must not depend on PagerDuty accepting a note.
"""

from __future__ import annotations

import logging
from typing import Protocol

from bot.core import messages
from bot.core.bus import Reaction
from bot.core.domain import Grant
from bot.core.errors import PagerDutyError
from bot.core.events import AccessGranted, Event, GrantEnded, GrantExtended
from bot.core.policy import Policy

log = logging.getLogger("ackgate.incident_notes")


class NoteWriter(Protocol):
    async def add_note(self, incident_id: str, content: str) -> None:
        """Add ``content`` as a note on the incident. Raises a ``PagerDutyError`` subclass."""
        ...


class IncidentNotes:
    """The reactions that write incident notes; wire them in with :func:`notes_registry`."""

    def __init__(self, *, writer: NoteWriter, policy: Policy) -> None:
        self.writer = writer
        self.policy = policy

    def _wanted(self, grant: Grant) -> bool:
        if grant.incident is None:
            return False
        flow = next((f for f in self.policy.flows if f.name == grant.flow), None)
        # A flow since removed from the policy keeps the option's default (notes on).
        return flow is None or flow.incident_notes

    async def _write(self, grant: Grant, content: str) -> None:
        assert grant.incident is not None
        try:
            await self.writer.add_note(grant.incident.id, content)
        except PagerDutyError as exc:
            log.warning("could not add a note to PagerDuty incident %s: %s", grant.incident.id, exc.message)

    async def note_granted(self, event: AccessGranted) -> None:
        g = event.grant
        if self._wanted(g):
            text = messages.note_granted(
                resource=g.resource,
                holder=g.holder.email,
                until=g.expires_at,
                approved_by=g.approved_by,
                grant_id=g.id,
            )
            await self._write(g, text)

    async def note_extended(self, event: GrantExtended) -> None:
        g = event.grant
        if self._wanted(g):
            text = messages.note_extended(
                resource=g.resource, holder=g.holder.email, until=g.expires_at, by=event.by, grant_id=g.id
            )
            await self._write(g, text)

    async def note_ended(self, event: GrantEnded) -> None:
        g = event.grant
        if self._wanted(g):
            text = messages.note_ended(
                resource=g.resource, holder=g.holder.email, reason=str(g.end_reason), by=g.ended_by, grant_id=g.id
            )
            await self._write(g, text)


def notes_registry(notes: IncidentNotes) -> dict[type[Event], list[Reaction]]:
    """Side effects to merge into :func:`bot.core.reactions.registry` (extend each event's list)."""
    return {
        AccessGranted: [notes.note_granted],
        GrantExtended: [notes.note_extended],
        GrantEnded: [notes.note_ended],
    }
