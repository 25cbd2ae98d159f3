"""How a chat platform joins Ackgate: the composition root calls the platform's one ``mount``
function (``handlers.slack.platform.mount``, ``handlers.teams.platform.mount``) for each
platform the settings configure, with the :class:`PlatformParts` every platform needs, and gets back
a :class:`ChatPlatform`. Nothing else in the composition root is platform-specific.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from bot.core import messages
from bot.core.clock import Clock
from bot.core.domain import Principal
from bot.core.errors import AckgateError
from bot.core.ports import AdminCheck, ChatHealth, ChatNotifier, Store
from bot.core.router import CommandRouter


class Counters(Protocol):
    """A platform's own counters (implemented by the Prometheus metrics)."""

    def count(self, name: str, **labels: str) -> None:
        """Add one to the counter ``name`` (e.g. ``teams_auth_failures``) with these label values."""
        ...


Job = Callable[[], Awaitable[int]]


@dataclass(frozen=True)
class PlatformParts:
    """What the composition root lends a platform's mount."""

    store: Store
    clock: Clock
    router: CommandRouter
    add_job: Callable[[Job], None]
    """Runs a job on the scheduler (first at start-up, then as the job's own ``every`` says)."""
    deliver: Callable[[str, ChatNotifier], ChatNotifier]
    """Registers the platform's notifier under its name; returns the one the core uses (sends the
    platform does not take are queued in the outbox and sent later)."""
    instance: str = ""
    """This process's name in the claims it takes (``ACKGATE_INSTANCE_ID``), for the platform's inbox."""
    counters: Counters | None = None
    """The process's metrics, for a platform's own counters (e.g. Teams' auth failures)."""


@dataclass(frozen=True)
class ChatPlatform:
    """A mounted chat platform, as the composition root needs it."""

    name: str  # the ``platform`` of its principals and message refs: "slack", "teams"
    title: str  # its row in /access admin status: "Slack", "Teams"
    notifier: ChatNotifier  # direct, without the outbox
    health: ChatHealth
    close: Callable[[], Awaitable[None]]
    admin_group: AdminCheck | None = None


async def health_rows(platforms: Sequence[ChatPlatform]) -> dict[str, str]:
    """One status line per platform, from its own health check."""
    rows: dict[str, str] = {}
    for platform in platforms:
        try:
            await platform.health.health()
            rows[platform.title] = messages.CHECKED_NOW
        except AckgateError as exc:
            rows[platform.title] = f"Error: {exc.message}"
    return rows


def any_admin_group(platforms: Sequence[ChatPlatform]) -> AdminCheck:
    """A principal is a group admin when their own platform's admin group says so."""

    async def is_group_admin(principal: Principal) -> bool:
        for platform in platforms:
            if platform.name == principal.platform and platform.admin_group is not None:
                return await platform.admin_group(principal)
        return False

    return is_group_admin
