"""Organisation settings changed by admin commands, and each user's messaging preferences,
kept in the settings store. The integration key is stored encrypted under ``ACKGATE_SECRET_KEY``;
``PAGERDUTY_INTEGRATION_KEY`` in the environment still works, and the environment wins.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TypeVar

from pydantic import SecretStr

from bot.core.errors import ConfigError
from bot.core.integration_status import IntegrationStatus
from bot.core.ports import AuditFor, SettingsStore
from bot.core.secrets import SecretBox, validate_integration_key

SEVERITY = "org.severity"
PAGERDUTY_ENABLED = "org.pagerduty_enabled"
INTEGRATION_KEY = "org.integration_key"
RESOLVE_ON_COMPLETE = "org.resolve_on_complete"
EVENTS_STATUS = "status.pagerduty_events"
REST_STATUS = "status.pagerduty_rest"
WEBHOOK_STATUS = "status.webhooks"

V = TypeVar("V")


def _seen_as(audit: AuditFor[V] | None, read: Callable[[str | None], V]) -> AuditFor[str | None] | None:
    """The store's ``audit`` (of the raw previous value) for an ``audit`` of the value as read."""
    if audit is None:
        return None
    given = audit
    return lambda previous: given(read(previous))


@dataclass(frozen=True)
class UserPrefs:
    pagerduty: bool = True
    chat: bool = True


@dataclass(frozen=True)
class WebhookStatus:
    last_event_at: datetime | None = None
    last_failure_at: datetime | None = None
    failures: int = 0  # signature failures since the last good delivery


class OrgSettings:
    def __init__(self, store: SettingsStore, *, box: SecretBox | None, env_key: SecretStr | None) -> None:
        self._store = store
        self._box = box
        self._env_key = env_key

    async def _get(self, key: str, default: str) -> str:
        value = await self._store.get(key)
        return default if value is None else value

    async def severity(self) -> str:
        return await self._get(SEVERITY, "critical")

    async def set_severity(self, value: str, *, audit: AuditFor[str] | None = None) -> str:
        """Returns the previous severity; ``audit`` (of the previous one) commits with the change."""
        return _severity(await self._store.set(SEVERITY, value, audit=_seen_as(audit, _severity)))

    async def pagerduty_enabled(self) -> bool:
        return await self._get(PAGERDUTY_ENABLED, "on") == "on"

    async def set_pagerduty_enabled(self, enabled: bool, *, audit: AuditFor[bool] | None = None) -> bool:
        """Returns whether it was on; ``audit`` (of that) commits with the change."""
        word = "on" if enabled else "off"
        return _pagerduty_on(await self._store.set(PAGERDUTY_ENABLED, word, audit=_seen_as(audit, _pagerduty_on)))

    async def resolve_on_complete(self) -> bool:
        return await self._get(RESOLVE_ON_COMPLETE, "off") == "on"

    async def set_resolve_on_complete(self, enabled: bool, *, audit: AuditFor[bool] | None = None) -> bool:
        """Returns whether it was on; ``audit`` (of that) commits with the change."""
        word = "on" if enabled else "off"
        return _resolve_on(await self._store.set(RESOLVE_ON_COMPLETE, word, audit=_seen_as(audit, _resolve_on)))

    async def integration_key(self) -> SecretStr | None:
        """The Events API v2 routing key: the environment's, else the stored one."""
        if self._env_key is not None:
            return self._env_key
        stored = await self._store.get(INTEGRATION_KEY)
        if stored is None:
            return None
        if self._box is None:
            raise ConfigError(
                "A stored integration key needs ACKGATE_SECRET_KEY to be read; set it to the value used when the key was saved."
            )
        return SecretStr(self._box.decrypt(stored))

    async def key_source(self) -> str | None:
        """``environment``, ``stored`` or None."""
        if self._env_key is not None:
            return "environment"
        return "stored" if await self._store.get(INTEGRATION_KEY) is not None else None

    async def set_integration_key(self, text: str, *, audit: AuditFor[SecretStr] | None = None) -> SecretStr:
        """Validate and store the key encrypted. Raises ``UsageError`` for a malformed key and
        ``ConfigError`` when ``ACKGATE_SECRET_KEY`` is not set. ``audit`` (of the new key, which it
        must only ever show masked) commits with the change."""
        key = validate_integration_key(text)
        if self._box is None:
            raise ConfigError(
                "Set ACKGATE_SECRET_KEY before storing an integration key: it is stored encrypted with it."
            )
        secret = SecretStr(key)
        await self._store.set(INTEGRATION_KEY, self._box.encrypt(key), audit=_seen_as(audit, lambda _: secret))
        return secret

    async def status(self, key: str) -> IntegrationStatus:
        return IntegrationStatus.from_json(await self._store.get(key))

    async def record_status(self, key: str, status: IntegrationStatus) -> None:
        await self._store.set(key, status.to_json())

    async def webhook_status(self) -> WebhookStatus:
        raw = await self._store.get(WEBHOOK_STATUS)
        if not raw:
            return WebhookStatus()
        data = json.loads(raw)
        return WebhookStatus(
            last_event_at=datetime.fromisoformat(data["last_event_at"]) if data.get("last_event_at") else None,
            last_failure_at=datetime.fromisoformat(data["last_failure_at"]) if data.get("last_failure_at") else None,
            failures=int(data.get("failures", 0)),
        )

    async def record_webhook(self, *, at: datetime, signature_ok: bool) -> None:
        current = await self.webhook_status()
        if signature_ok:
            updated = WebhookStatus(last_event_at=at, last_failure_at=current.last_failure_at, failures=0)
        else:
            updated = WebhookStatus(current.last_event_at, at, current.failures + 1)
        await self._store.set(
            WEBHOOK_STATUS,
            json.dumps(
                {
                    "last_event_at": updated.last_event_at.isoformat() if updated.last_event_at else None,
                    "last_failure_at": updated.last_failure_at.isoformat() if updated.last_failure_at else None,
                    "failures": updated.failures,
                }
            ),
        )

    async def prefs(self, email: str) -> UserPrefs:
        return _prefs(await self._store.get(f"prefs:{email.lower()}"))

    async def set_prefs(self, email: str, *, pagerduty: bool | None = None, chat: bool | None = None) -> UserPrefs:
        return (await self.change_prefs(email, pagerduty=pagerduty, chat=chat))[1]

    async def change_prefs(
        self,
        email: str,
        *,
        pagerduty: bool | None = None,
        chat: bool | None = None,
        audit: AuditFor[tuple[UserPrefs, UserPrefs]] | None = None,
    ) -> tuple[UserPrefs, UserPrefs]:
        """Change the given preferences: the previous and the new ones. ``audit`` (of both) commits with it."""
        current = await self.prefs(email)
        updated = UserPrefs(
            pagerduty=current.pagerduty if pagerduty is None else pagerduty,
            chat=current.chat if chat is None else chat,
        )
        previous = await self._store.set(
            f"prefs:{email.lower()}",
            json.dumps(asdict(updated)),
            audit=_seen_as(audit, lambda raw: (_prefs(raw), updated)),
        )
        return _prefs(previous), updated


def _severity(stored: str | None) -> str:
    return stored or "critical"


def _pagerduty_on(stored: str | None) -> bool:
    return (stored or "on") == "on"


def _resolve_on(stored: str | None) -> bool:
    return (stored or "off") == "on"


def _prefs(stored: str | None) -> UserPrefs:
    return UserPrefs(**json.loads(stored)) if stored else UserPrefs()


def chat_status_key(platform: str) -> str:
    """Where a chat platform's last recorded health is kept (``status.slack``, ``status.teams``)."""
    return f"status.{platform}"
