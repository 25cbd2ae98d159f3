"""Administration by bot command (``/access admin …``) and each user's own preferences (``/access prefs``).

Admins are the emails in ``ACKGATE_ADMINS`` and, when configured, the members of a chat platform's admin
group (a :class:`bot.core.ports.AdminCheck` each platform may supply, e.g. a Slack user group).
A non-admin is refused with a clear sentence and the attempt is audited (:class:`bot.core.events.ActionRefused`).
Every setting change is audited as a :class:`SettingChanged`, in the write's own transaction, with old
and new values; the integration key only ever appears masked (:func:`bot.core.secrets.mask`): in audit lines, in cards, and in errors.

The key form. ``execute(actor, Admin("key"))`` cannot take the key itself: a slash command's text is
echoed in the channel. It returns a card carrying one :class:`~bot.core.views.Action` of kind
:data:`OPEN_KEY_FORM` (see :func:`opens_key_form`); the chat adapter renders that as a button, or opens its
modal straight away, and passes what the admin pasted to :meth:`AdminService.set_key`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from pydantic import SecretStr

from bot.core import messages
from bot.core.bus import MessageBus
from bot.core.clock import Clock
from bot.core.commands import SEVERITIES, Admin, SetPrefs
from bot.core.domain import AuditEvent, Principal
from bot.core.errors import AckgateError, ConfigError, IdentityError, NotAuthorized, UsageError, UserError
from bot.core.events import ActionRefused, Event
from bot.core.integration_status import IntegrationStatus
from bot.core.org_settings import EVENTS_STATUS, REST_STATUS, OrgSettings, UserPrefs
from bot.core.secrets import mask
from bot.core.views import Action, Card, Fact, Tone

OPEN_KEY_FORM = "open_key_form"
"""The :class:`~bot.core.views.Action` kind asking the chat adapter to open the integration-key modal."""
KEY_FORM_TARGET = "integration_key"
ORG = "org"  # the audit subject of organisation settings

PAGERDUTY_EVENTS = "PagerDuty Events"
PAGERDUTY_REST = "PagerDuty REST"
WEBHOOKS = "PagerDuty webhooks"

GroupCheck = Callable[[Principal], Awaitable[bool]]  # a bot.core.ports.AdminCheck
AuthTest = Callable[[Principal], Awaitable[Card]]
HealthCheck = Callable[[], Awaitable[dict[str, str]]]
"""Probes the integrations Ackgate calls: maps a name (:data:`PAGERDUTY_REST`, a chat platform's title, …) to one
line saying how it is. A name it leaves out is shown from its last recorded :class:`IntegrationStatus`."""


@dataclass(frozen=True)
class SettingChanged(Event):
    """An admin changed an organisation setting, or a user their own preferences.

    ``old`` and ``new`` are as shown to people: secrets arrive here already masked.
    """

    actor: str
    setting: str  # e.g. "severity", "pagerduty", "integration_key", "prefs"
    subject: str  # ORG, or "prefs:<email>" for a user's own preferences
    old: str | None
    new: str

    def audit(self) -> AuditEvent:
        data: dict[str, object] = {"setting": self.setting, "old": self.old, "new": self.new}
        return AuditEvent(self.at, "setting.changed", self.actor, self.subject, data)


def opens_key_form(card: Card) -> bool:
    """Whether ``card`` asks the chat adapter to open the integration-key modal."""
    return any(action.kind == OPEN_KEY_FORM for action in card.actions)


def describe_status(status: IntegrationStatus, *, success: str = "last call") -> str:
    """One line for an integration's recorded health, e.g. ``Error at 12:00 UTC, 23 Nov: Invalid routing key``."""
    if status.state == "success":
        return messages.status_success(status.at, what=success)
    if status.state == "error":
        return messages.status_error(status.at, status.detail)
    return messages.STATUS_NOT_INVOKED


def _prefs_text(prefs: UserPrefs) -> str:
    return f"pagerduty {messages.on_off(prefs.pagerduty)}, chat {messages.on_off(prefs.chat)}"


class AdminService:
    def __init__(
        self,
        *,
        org: OrgSettings,
        bus: MessageBus,
        clock: Clock,
        admins: frozenset[str],
        is_group_admin: GroupCheck | None = None,
        auth_test: AuthTest | None = None,
        health: HealthCheck | None = None,
        chat_platforms: Mapping[str, str] | None = None,
    ) -> None:
        """``chat_platforms`` maps each configured chat platform's title (its status row, e.g. "Slack")
        to the key of its recorded status (:func:`bot.core.org_settings.chat_status_key`)."""
        self.org = org
        self.bus = bus
        self.clock = clock
        self.admins = frozenset(a.lower() for a in admins)
        self.is_group_admin = is_group_admin
        self.auth_test = auth_test
        self.health = health
        self.chat_platforms = chat_platforms if chat_platforms is not None else {}  # filled as platforms mount
        self._actions: dict[str, Callable[[Principal, str], Awaitable[Card]]] = {
            "severity": self._severity,
            "pagerduty": self._pagerduty,
            "resolve": lambda actor, argument: self._resolve(actor, argument == "on"),
            "key": lambda _actor, _argument: _card(_key_form_card()),
            "status": lambda _actor, _argument: self._status(),
            "test": lambda actor, _argument: self._test(actor),
        }

    async def is_admin(self, actor: Principal) -> bool:
        """Listed in ``ACKGATE_ADMINS`` (by email), or a member of the admin user group."""
        if actor.email and actor.email.lower() in self.admins:
            return True
        return self.is_group_admin is not None and await self.is_group_admin(actor)

    async def execute(self, actor: Principal, command: Admin) -> Card:
        """Run an admin command (admins only), dispatched by one map of its action.

        Raises :class:`NotAuthorized` (audited) for a non-admin, :class:`UsageError` for a bad argument.
        """
        await self._require_admin(actor, command.action)
        action = self._actions.get(command.action)
        if action is None:
            raise UsageError(messages.usage_for("admin"))
        return await action(actor, command.argument)

    async def _require_admin(self, actor: Principal, action: str) -> None:
        if await self.is_admin(actor):
            return
        error = NotAuthorized(messages.admin_refused(action))
        await self.bus.publish(ActionRefused(self.clock.now(), actor.email, f"admin {action}", ORG, error.message))
        raise error

    def _changes(
        self, actor: Principal, setting: str, *, old: str | None, new: str, subject: str = ORG, changed: bool = True
    ) -> list[SettingChanged]:
        """The audited event of a setting write, built in its transaction (none when nothing changed)."""
        return [SettingChanged(self.clock.now(), actor.email, setting, subject, old, new)] if changed else []

    async def _severity(self, actor: Principal, argument: str) -> Card:
        new = argument.strip().lower()
        if new not in SEVERITIES:
            raise UsageError(messages.usage_for("admin"))
        old = await self.bus.commit(
            lambda audit: self.org.set_severity(new, audit=audit),
            lambda was: self._changes(actor, "severity", old=was, new=new, changed=was != new),
        )
        return Card(title=messages.severity_changed(old, new), tone=Tone.SUCCESS)

    async def _pagerduty(self, actor: Principal, argument: str) -> Card:
        word = argument.strip().lower()
        if word not in ("on", "off"):
            raise UsageError(messages.usage_for("admin"))
        enabled = word == "on"
        was = await self.bus.commit(
            lambda audit: self.org.set_pagerduty_enabled(enabled, audit=audit),
            lambda on: self._changes(actor, "pagerduty", old=messages.on_off(on), new=word, changed=on != enabled),
        )
        return Card(
            title=messages.pagerduty_switched(enabled, was),
            text=messages.PAGERDUTY_ON_TEXT if enabled else messages.PAGERDUTY_OFF_TEXT,
            tone=Tone.SUCCESS,
        )

    async def _resolve(self, actor: Principal, enabled: bool) -> Card:
        was = await self.bus.commit(
            lambda audit: self.org.set_resolve_on_complete(enabled, audit=audit),
            lambda on: self._changes(
                actor,
                "resolve_on_complete",
                old=messages.on_off(on),
                new=messages.on_off(enabled),
                changed=on != enabled,
            ),
        )
        return Card(
            title=messages.resolve_switched(enabled, was),
            text=messages.RESOLVE_ON_TEXT if enabled else messages.RESOLVE_OFF_TEXT,
            tone=Tone.SUCCESS,
        )

    async def set_key(self, actor: Principal, text: str) -> Card:
        """Store the integration key pasted into the key form, encrypted; admins only.

        Raises :class:`UsageError` for a malformed key (the REST-token case named), and :class:`UserError`
        when ``ACKGATE_SECRET_KEY`` is not set. Neither the card, the audit line nor an error repeats the key.
        """
        await self._require_admin(actor, "key")
        old = await self._shown_key()
        try:
            key = await self.bus.commit(
                lambda audit: self.org.set_integration_key(text, audit=audit),
                # only the masked key reaches the audit line
                lambda stored: self._changes(
                    actor, "integration_key", old=old, new=messages.key_shown(mask(stored), "stored")
                ),
            )
        except ConfigError as exc:
            raise UserError(messages.KEY_CANNOT_BE_STORED) from exc
        masked = mask(key)
        env_wins = await self.org.key_source() == "environment"
        return Card(
            title=messages.KEY_SAVED_TITLE,
            text=messages.KEY_SAVED_TEXT,
            facts=(Fact("Key", masked),),
            footnote=messages.KEY_ENV_WINS if env_wins else "",
            tone=Tone.WARNING if env_wins else Tone.SUCCESS,
        )

    async def _shown_key(self) -> str | None:
        """The key in use, masked with its source; None when there is none."""
        source = await self.org.key_source()
        if source is None:
            return None
        try:
            key: SecretStr | None = await self.org.integration_key()
        except ConfigError:
            return messages.KEY_UNREADABLE
        return None if key is None else messages.key_shown(mask(key), source)

    async def _status(self) -> Card:
        """Each integration's health, the key (masked, with its source), the severity and the PagerDuty switch."""
        events = await self.org.status(EVENTS_STATUS)
        webhooks = await self.org.webhook_status()
        probed = await self._probe()
        facts = [
            Fact("Severity", await self.org.severity()),
            Fact("PagerDuty", messages.on_off(await self.org.pagerduty_enabled())),
            Fact("Resolve when done", messages.on_off(await self.org.resolve_on_complete())),
            Fact("Integration key", await self._shown_key() or messages.KEY_NONE),
            Fact(PAGERDUTY_EVENTS, describe_status(events, success="last incident")),
        ]
        problems = events.state == "error" or webhooks.failures > 0
        for name, key in ((PAGERDUTY_REST, REST_STATUS), *self.chat_platforms.items()):
            if name in probed:
                facts.append(Fact(name, probed.pop(name)))
            else:
                recorded = await self.org.status(key)
                problems = problems or recorded.state == "error"
                facts.append(Fact(name, describe_status(recorded)))
        facts += [Fact(name, line) for name, line in sorted(probed.items())]
        facts.append(
            Fact(
                WEBHOOKS,
                messages.webhooks_status(
                    webhooks.last_event_at, failures=webhooks.failures, last_failure_at=webhooks.last_failure_at
                ),
            )
        )
        return Card(title=messages.STATUS_TITLE, facts=tuple(facts), tone=Tone.WARNING if problems else Tone.INFO)

    async def _probe(self) -> dict[str, str]:
        if self.health is None:
            return {}
        try:
            return dict(await self.health())
        except AckgateError as exc:
            # A failing probe is itself the news; the rest of the status card still matters.
            return {name: messages.status_unchecked(exc.message) for name in (PAGERDUTY_REST, *self.chat_platforms)}

    async def _test(self, actor: Principal) -> Card:
        if self.auth_test is None:
            return Card(title=messages.TEST_UNAVAILABLE, tone=Tone.WARNING)
        return await self.auth_test(actor)

    async def set_prefs(self, actor: Principal, command: SetPrefs) -> Card:
        """Show or set the actor's own preferences (anyone may)."""
        if not actor.email:
            raise IdentityError(messages.NO_EMAIL)
        current = await self.org.prefs(actor.email)
        if command.pagerduty is None and command.chat is None:
            return _prefs_card(messages.PREFS_TITLE, current)
        email = actor.email
        _, updated = await self.bus.commit(
            lambda audit: self.org.change_prefs(email, pagerduty=command.pagerduty, chat=command.chat, audit=audit),
            lambda change: self._changes(
                actor,
                "prefs",
                old=_prefs_text(change[0]),
                new=_prefs_text(change[1]),
                subject=f"prefs:{email.lower()}",
                changed=change[0] != change[1],
            ),
        )
        return _prefs_card(messages.PREFS_SAVED_TITLE, updated, tone=Tone.SUCCESS)


async def _card(card: Card) -> Card:
    return card


def _key_form_card() -> Card:
    return Card(
        title=messages.KEY_FORM_OPEN_TITLE,
        text=messages.KEY_FORM_HINT,
        actions=(Action(OPEN_KEY_FORM, messages.KEY_FORM_OPEN_BUTTON, KEY_FORM_TARGET, style="primary"),),
    )


def _prefs_card(title: str, prefs: UserPrefs, *, tone: Tone = Tone.INFO) -> Card:
    return Card(
        title=title,
        text=messages.PREFS_BOTH_OFF if not (prefs.pagerduty or prefs.chat) else "",
        facts=(Fact("PagerDuty", messages.on_off(prefs.pagerduty)), Fact("Chat", messages.on_off(prefs.chat))),
        footnote=messages.prefs_how_to_change(),
        tone=tone,
    )
