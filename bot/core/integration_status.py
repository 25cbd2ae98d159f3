"""The health of one outgoing integration, as admins see it: not yet invoked, success, or error."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, get_args

StatusState = Literal["not_invoked", "success", "error"]


@dataclass(frozen=True)
class IntegrationStatus:
    """What the last attempt to page gave; kept as JSON in the settings store."""

    state: StatusState = "not_invoked"
    at: datetime | None = None
    detail: str = ""

    def to_json(self) -> str:
        at = self.at.astimezone(UTC).isoformat() if self.at else None
        return json.dumps({"state": self.state, "at": at, "detail": self.detail})

    @classmethod
    def from_json(cls, text: str | None) -> IntegrationStatus:
        """Parse :meth:`to_json` output. Nothing stored, or something unreadable, reads as not invoked:
        this is a status indicator, never a gate."""
        if not text:
            return cls()
        try:
            raw = json.loads(text)
            state = raw["state"]
            at = datetime.fromisoformat(raw["at"]) if raw.get("at") else None
        except (ValueError, TypeError, KeyError):
            return cls()
        if state not in get_args(StatusState):
            return cls()
        return cls(state=state, at=at, detail=str(raw.get("detail") or ""))
