"""An in-memory chat platform for core tests: records what Ackgate sends and updates."""

from __future__ import annotations

from dataclasses import dataclass, field

from bot.core.domain import MessageRef, Principal
from bot.core.errors import ChatError
from bot.core.views import Card


@dataclass
class Sent:
    ref: MessageRef
    card: Card
    to: str  # user email or channel id
    history: list[Card] = field(default_factory=list)


class RecordingNotifier:
    def __init__(self, users: dict[str, Principal] | None = None, *, platform: str = "slack") -> None:
        self.platform = platform
        self.users = dict(users or {})
        self.sent: list[Sent] = []
        self.down = False

    def add(self, principal: Principal) -> Principal:
        self.users[principal.email] = principal
        return principal

    def _post(self, to: str, card: Card) -> MessageRef:
        if self.down:
            raise ChatError("chat is down")
        ref = MessageRef(self.platform, f"C-{to}", str(len(self.sent) + 1))
        self.sent.append(Sent(ref, card, to))
        return ref

    async def send_to_user(self, user: Principal, card: Card) -> MessageRef:
        return self._post(user.email, card)

    async def send_to_channel(self, channel: str, card: Card) -> MessageRef:
        return self._post(channel, card)

    async def update(self, ref: MessageRef, card: Card) -> None:
        if self.down:
            raise ChatError("chat is down")
        for s in self.sent:
            if s.ref == ref:
                s.history.append(s.card)
                s.card = card
                return
        raise ChatError("message_not_found")

    async def user_by_email(self, email: str) -> Principal | None:
        return self.users.get(email.lower())

    async def user_by_id(self, user_id: str) -> Principal | None:
        return next((u for u in self.users.values() if u.user_id == user_id), None)

    def inbox(self, who: str) -> list[Card]:
        return [s.card for s in self.sent if s.to == who]
