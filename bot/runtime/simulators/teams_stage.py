"""The Teams half of the :class:`~bot.runtime.simulators.stage.Stage`: people with Teams accounts typing to the
Ackgate bot and clicking its cards, every activity signed by the
:class:`~bot.runtime.simulators.teams.TeamsSimulator` and POSTed to Ackgate's real ``/api/messages``.

:func:`card_text` reads an Adaptive Card as a person does (its text runs, ``[Button]`` for buttons), so
the Teams transcripts read like the Slack ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bot.runtime.simulators.teams import SimActivity, SimMember, TeamsSimulator
from bot.runtime.simulators.teams_client import Posted, TeamsClient

CARD_CONTENT_TYPE = "application/vnd.microsoft.card.adaptive"


@dataclass(frozen=True)
class TeamsPerson:
    name: str
    user_id: str  # the MRI
    email: str
    member: SimMember


def _walk(node: Any, lines: list[str]) -> None:
    if isinstance(node, list):
        for item in node:
            _walk(item, lines)
        return
    if not isinstance(node, Mapping):
        return
    kind = node.get("type")
    if kind == "RichTextBlock":
        lines.append("".join(str(run.get("text", "")) for run in node.get("inlines") or []))
        return
    if kind == "TextBlock":
        lines.append(str(node.get("text", "")))
        return
    if kind == "ColumnSet":
        cells = []
        for column in node.get("columns") or []:
            inner: list[str] = []
            _walk(column.get("items") or [], inner)
            cells.append(" ".join(inner))
        lines.append(": ".join(c for c in cells if c))
        return
    if isinstance(kind, str) and kind.startswith("Action."):
        lines.append(f"[{node.get('title', '')}]")
        return
    for key in ("body", "items", "actions", "columns"):
        if key in node:
            _walk(node[key], lines)


def card_text(card: Mapping[str, Any]) -> str:
    """An Adaptive Card's readable text, one line per block, buttons as ``[Title]``."""
    lines: list[str] = []
    _walk(card.get("body") or [], lines)
    _walk(card.get("actions") or [], lines)
    return "\n".join(line for line in lines if line)


def activity_card(activity: Mapping[str, Any]) -> dict[str, Any] | None:
    for attachment in activity.get("attachments") or []:
        if attachment.get("contentType") == CARD_CONTENT_TYPE:
            content = attachment.get("content")
            return content if isinstance(content, dict) else None
    return None


def activity_text(activity: Mapping[str, Any]) -> str:
    card = activity_card(activity)
    return card_text(card) if card is not None else str(activity.get("text") or "")


class TeamsSide:
    """People in Teams, for the stage and the demo."""

    def __init__(self, sim: TeamsSimulator, endpoint: str) -> None:
        self.sim = sim
        self.client = TeamsClient(sim, endpoint)

    def person(self, name: str, *, email: str | None = None) -> TeamsPerson:
        """Someone with a Teams account (MRI ``29:<name>``) and a 1:1 chat with the bot (the app installed)."""
        address = email if email is not None else f"{name}@example.com"
        mri = f"29:{name}"
        member = self.sim.add_member(mri, name=name.title(), email=address or None)
        self.sim.add_conversation(self.sim.personal_conversation_id(mri), kind="personal", members=(mri,))
        return TeamsPerson(name, mri, address, member)

    def channel(self, channel_id: str, *members: TeamsPerson) -> str:
        return self.sim.add_conversation(channel_id, kind="channel", members=tuple(m.user_id for m in members))

    def chat_of(self, who: TeamsPerson) -> str:
        return self.sim.personal_conversation_id(who.user_id)

    async def install(self, who: TeamsPerson) -> Posted:
        """``who`` adds the Ackgate app in Teams (an installationUpdate in their 1:1 chat)."""
        before = len(self.sim.calls)
        posted = await self.client.post(self.client.installation_update(who.member))
        if posted.status == 202:  # processed after the ack: wait for the member lookup
            await self.sim.wait_for(lambda: len(self.sim.calls) > before)
        return posted

    async def say(self, who: TeamsPerson, text: str) -> tuple[Posted, str]:
        """``who`` types ``text`` in their 1:1 chat with the bot; waits for the bot's reply."""
        chat = self.chat_of(who)
        activity = self.client.personal_message(who.member, text)
        return await self._await_reply(chat, activity)

    async def say_in_channel(self, who: TeamsPerson, channel_id: str, text: str) -> tuple[Posted, str]:
        activity = self.client.channel_message(who.member, channel_id, text)
        return await self._await_reply(channel_id, activity)

    async def _await_reply(self, conversation: str, activity: dict[str, Any]) -> tuple[Posted, str]:
        replies = self._replies_to(conversation, activity["id"])
        posted = await self.client.post(activity)
        if posted.status != 202:
            return posted, ""
        await self.sim.wait_for(lambda: len(self._replies_to(conversation, activity["id"])) > len(replies))
        return posted, activity_text(self._replies_to(conversation, activity["id"])[-1].activity)

    def _replies_to(self, conversation: str, activity_id: str) -> list[SimActivity]:
        return [m for m in self.sim.posted(conversation) if m.reply_to == activity_id]

    def posted(self, conversation: str) -> list[SimActivity]:
        return self.sim.posted(conversation)

    def texts(self, conversation: str) -> list[str]:
        """What the bot posted in the conversation, as each message reads now (after edits)."""
        return [activity_text(m.activity) for m in self.sim.posted(conversation)]

    async def wait_for_message(self, conversation: str, contains: str) -> SimActivity:
        def found() -> bool:
            return any(contains in activity_text(m.activity) for m in self.sim.posted(conversation))

        await self.sim.wait_for(found)
        return next(m for m in reversed(self.sim.posted(conversation)) if contains in activity_text(m.activity))

    def button_data(self, message: SimActivity, title: str) -> dict[str, Any]:
        """The ``data`` of the card's button titled ``title`` (as a click would send it)."""
        card = activity_card(message.activity) or {}

        def find(node: Any) -> dict[str, Any] | None:
            if isinstance(node, list):
                for item in node:
                    hit = find(item)
                    if hit is not None:
                        return hit
            elif isinstance(node, Mapping):
                if node.get("type") == "Action.Execute" and node.get("title") == title:
                    return dict(node["data"])
                for value in node.values():
                    hit = find(value)
                    if hit is not None:
                        return hit
            return None

        data = find(card)
        assert data is not None, f"no {title!r} button on {card_text(card)!r}"
        return data

    async def click(
        self, who: TeamsPerson, message: SimActivity, title: str, *, data: dict[str, Any] | None = None
    ) -> tuple[Posted, str]:
        """``who`` clicks ``title`` (Action.Execute) on ``message``; returns the invoke's answer and the
        text of the card it carries (what the clicker now sees)."""
        payload = data if data is not None else self.button_data(message, title)
        verb = str(payload.get("verb", ""))
        activity = self.client.execute(
            who.member, message.conversation_id, verb=verb, data=payload, reply_to=message.id
        )
        posted = await self.client.post(activity)
        card = (posted.body or {}).get("value") if isinstance(posted.body, dict) else None
        return posted, card_text(card) if isinstance(card, dict) else ""
