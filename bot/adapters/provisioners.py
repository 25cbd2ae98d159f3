"""Provisioners: what makes a grant real. ``noop`` only records; ``webhook`` calls your service.

The webhook contract (what a receiver implements)
-------------------------------------------------
Ackgate POSTs ``Content-Type: application/json`` to the provisioner's ``url`` once to grant and
once to revoke::

    {"action": "grant" | "revoke", "grant_id": "g-7k2m9q4x", "resource": "prod-db",
     "resource_settings": {...the resource's settings: from the policy...},
     "user": {"email": "alice@example.com", "platform": "slack", "user_id": "U0123"},
     "expires_at": "2026-11-23T14:00:00Z", "justification": "PagerDuty incident #42 DB down",
     "incident": {"id": "PINC123", "number": 42, "title": "DB down", "url": "https://..."} | null,
     "approved_by": ["bob@example.com"]}

with these headers:

``X-Ackgate-Timestamp``
    Unix seconds when this attempt was sent.
``X-Ackgate-Signature``
    ``v1=`` + hex HMAC-SHA256, keyed with ``ACKGATE_PROVISIONER_SECRET``, of the bytes
    ``b"v1:" + timestamp + b":" + raw_body``. Verify it over the raw body before parsing it,
    compare in constant time and refuse timestamps more than five minutes away from now
    (:func:`verify_signature` does all three).
``Idempotency-Key``
    ``<grant_id>:<action>``. Retries repeat it with the same body, so a receiver that already
    did this action for this key should answer 2xx again without doing it twice.

Answer 2xx when done. 408, 429 and 5xx (and network errors, timeouts) are retried with
exponential backoff up to ``max_attempts``; ``Retry-After`` in seconds is honoured. Any other
status is a refusal and is not retried.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import httpx
from pydantic import SecretStr

from bot.adapters.retrying import Backoff, Retryable, retry, wait_hint
from bot.core.clock import Clock, SystemClock
from bot.core.domain import Grant
from bot.core.errors import ConfigError, ProvisioningError
from bot.core.policy import Policy, ProvisionerSpec
from bot.core.ports import Provisioner

log = logging.getLogger(__name__)

Action = Literal["grant", "revoke"]
Settings = Mapping[str, str | int | bool]
Sleep = Callable[[float], Awaitable[None]]

SIGNATURE_VERSION = "v1"
FIRST_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 30.0
_RETRYABLE = frozenset({408, 429})
_EXCERPT = 200


@dataclass(frozen=True)
class ProvisionerCall:
    action: Action
    grant: Grant


class NoopProvisioner:
    """Does nothing but remember each call in ``calls``, oldest first."""

    def __init__(self) -> None:
        self.calls: list[ProvisionerCall] = []

    async def grant(self, grant: Grant) -> None:
        self.calls.append(ProvisionerCall("grant", grant))

    async def revoke(self, grant: Grant) -> None:
        self.calls.append(ProvisionerCall("revoke", grant))


def sign(secret: SecretStr, timestamp: str, body: bytes) -> str:
    """The ``X-Ackgate-Signature`` value for this timestamp and raw body."""
    message = f"{SIGNATURE_VERSION}:{timestamp}:".encode() + body
    digest = hmac.new(secret.get_secret_value().encode(), message, hashlib.sha256).hexdigest()
    return f"{SIGNATURE_VERSION}={digest}"


def verify_signature(
    secret: SecretStr | str, timestamp: str, body: bytes, header: str, *, now: datetime, tolerance: int = 300
) -> bool:
    """True when ``header`` signs ``body`` at ``timestamp`` and ``timestamp`` is within
    ``tolerance`` seconds of ``now`` (refusing replays of old deliveries)."""
    try:
        sent = int(timestamp)
    except ValueError:
        return False
    if abs(now.timestamp() - sent) > tolerance:
        return False
    key = secret if isinstance(secret, SecretStr) else SecretStr(secret)
    # bytes, because compare_digest refuses non-ASCII str and a header is attacker-controlled
    return hmac.compare_digest(sign(key, timestamp, body).encode(), header.encode("utf-8", "replace"))


def payload(action: Action, grant: Grant, *, resource_settings: Settings) -> dict[str, object]:
    """The JSON body sent for ``action`` on ``grant`` (see the module docstring)."""
    incident = grant.incident
    return {
        "action": action,
        "grant_id": grant.id,
        "resource": grant.resource,
        "resource_settings": dict(resource_settings),
        "user": {"email": grant.holder.email, "platform": grant.holder.platform, "user_id": grant.holder.user_id},
        "expires_at": grant.expires_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "justification": grant.justification,
        "incident": (
            None
            if incident is None
            else {"id": incident.id, "number": incident.number, "title": incident.title, "url": incident.html_url}
        ),
        "approved_by": list(grant.approved_by),
    }


class WebhookProvisioner:
    """POSTs signed grant and revoke calls to ``spec.url``; see the module docstring."""

    def __init__(
        self,
        spec: ProvisionerSpec,
        *,
        secret: SecretStr,
        client: httpx.AsyncClient | None = None,
        name: str = "webhook",
        resource_settings: Mapping[str, Settings] | None = None,
        clock: Clock | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if spec.type != "webhook" or not spec.url:
            raise ConfigError(f"provisioner {name!r} is not a webhook with a url; check its entry under provisioners:")
        self.spec = spec
        self.name = name
        self._url = spec.url
        self._secret = secret
        # a client we were given belongs to the caller (build_app closes it); one we make is ours
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient()
        self._settings = resource_settings or {}
        self._clock = clock or SystemClock()
        self._sleep = sleep
        self._policy = Backoff(
            max_attempts=spec.max_attempts,
            first=FIRST_BACKOFF_SECONDS,
            cap=MAX_BACKOFF_SECONDS,
            hint_cap=MAX_BACKOFF_SECONDS,
        )

    async def aclose(self) -> None:
        """Close the HTTP client if this provisioner created it."""
        if self._owns_client:
            await self._client.aclose()

    async def grant(self, grant: Grant) -> None:
        await self._call("grant", grant)

    async def revoke(self, grant: Grant) -> None:
        await self._call("revoke", grant)

    async def _call(self, action: Action, grant: Grant) -> None:
        settings = self._settings.get(grant.resource, {})
        body = json.dumps(payload(action, grant, resource_settings=settings), separators=(",", ":")).encode()

        def on_retry(attempt: int, failure: Retryable, delay: float) -> None:
            log.warning(
                "provisioner %s: %s of %s failed (attempt %d of %d: %s); retrying in %.1fs",
                self.name, action, grant.id, attempt, self.spec.max_attempts, failure.reason, delay,
            )  # fmt: skip

        try:
            await retry(
                lambda: self._attempt(action, grant, body), policy=self._policy, sleep=self._sleep, on_retry=on_retry
            )
        except Retryable as exc:
            raise ProvisioningError(
                f"The {self.name} provisioner could not {action} {grant.resource} for grant {grant.id} after "
                f"{self.spec.max_attempts} attempts (last: {exc.reason}). Check that the provisioner service is up."
            ) from None

    async def _attempt(self, action: Action, grant: Grant, body: bytes) -> None:
        timestamp = str(int(self._clock.now().timestamp()))
        headers = {
            "Content-Type": "application/json",
            "X-Ackgate-Timestamp": timestamp,
            "X-Ackgate-Signature": sign(self._secret, timestamp, body),
            "Idempotency-Key": f"{grant.id}:{action}",
        }
        try:
            response = await self._client.post(
                self._url, content=body, headers=headers, timeout=self.spec.timeout_seconds
            )
        except httpx.TimeoutException as exc:
            raise Retryable(f"no answer within {self.spec.timeout_seconds:g}s") from exc
        except httpx.TransportError as exc:
            raise Retryable(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from exc
        status = response.status_code
        if 200 <= status < 300:
            return
        answer = f"HTTP {status}: {_excerpt(response.text)}" if response.text.strip() else f"HTTP {status}"
        if status in _RETRYABLE or status >= 500:
            raise Retryable(answer, wait=wait_hint(response.headers, ("retry-after",)))
        raise ProvisioningError(
            f"The {self.name} provisioner refused to {action} {grant.resource} for grant {grant.id} ({answer}). "
            "Fix the provisioner or the resource's settings in the policy, then try again."
        )


def _excerpt(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _EXCERPT else flat[: _EXCERPT - 1] + "…"


def build_provisioners(
    policy: Policy, *, secret: SecretStr | None, client: httpx.AsyncClient, clock: Clock | None = None
) -> dict[str, Provisioner]:
    """One provisioner per entry under ``provisioners:``, keyed by name, plus the built-in "noop"."""
    require_secret(policy, secret)
    out: dict[str, Provisioner] = {"noop": NoopProvisioner()}
    for name, spec in policy.provisioners.items():
        if spec.type == "noop":
            out[name] = NoopProvisioner()
            continue
        assert secret is not None
        settings = {r.name: r.settings for r in policy.resources if r.provisioner == name}
        out[name] = WebhookProvisioner(
            spec, secret=secret, client=client, name=name, resource_settings=settings, clock=clock
        )
    return out


def require_secret(policy: Policy, secret: SecretStr | None) -> None:
    """:class:`ConfigError` if the policy has webhook provisioners but no ``ACKGATE_PROVISIONER_SECRET``."""
    webhooks = [name for name, spec in policy.provisioners.items() if spec.type == "webhook"]
    if webhooks and (secret is None or not secret.get_secret_value()):
        raise ConfigError(
            f"ACKGATE_PROVISIONER_SECRET is not set, but the policy defines webhook provisioner(s) "
            f"{', '.join(webhooks)}. Set it to a long random string (for example `openssl rand -hex 32`) "
            "and give the same value to the receiving service, which checks X-Ackgate-Signature with it."
        )
