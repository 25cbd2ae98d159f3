"""Neutral view models. The core says *what* to show; Slack renders Block Kit from these and
Teams renders Adaptive Cards. No markup lives here: text is plain, emphasis is structural.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Tone(StrEnum):
    INFO = "info"
    SUCCESS = "success"
    WARNING = "warning"
    DANGER = "danger"


@dataclass(frozen=True)
class Fact:
    """A labelled value, e.g. ("Resource", "prod-db"). ``url`` makes the value a link."""

    label: str
    value: str
    url: str | None = None


@dataclass(frozen=True)
class Action:
    """A button. ``kind`` says what it does (``approve``, ``deny``, ...); ``target`` is the id it
    acts on. The server re-checks everything: the button is a hint, not an authorisation."""

    kind: str
    label: str
    target: str
    style: str | None = None  # "primary" | "danger" | None


@dataclass(frozen=True)
class Link:
    text: str
    url: str


@dataclass(frozen=True)
class Card:
    """One message: a title line, optional body text, facts, links, buttons and a footnote."""

    title: str
    text: str = ""
    facts: tuple[Fact, ...] = ()
    actions: tuple[Action, ...] = ()
    links: tuple[Link, ...] = ()
    footnote: str = ""
    tone: Tone = Tone.INFO

    @property
    def fallback(self) -> str:
        """Plain text for notifications and clients that cannot render cards."""
        parts = [self.title]
        if self.text:
            parts.append(self.text)
        return "\n".join(parts)


@dataclass(frozen=True)
class Choice:
    value: str
    label: str


@dataclass(frozen=True)
class RequestForm:
    """The access-request form (Slack modal, Teams card): resource picker, duration, reason."""

    resources: tuple[Choice, ...]
    default_duration: str = "1h"
    reason: str = ""
    selected_resource: str | None = None
    hint: str = ""  # e.g. the acknowledged incident we found
    extra: dict[str, str] = field(default_factory=dict)
