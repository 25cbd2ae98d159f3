"""The one exception tree of Ackgate.

    AckgateError                      base: every error Ackgate raises on purpose
    ├── ConfigError                   a setting or the policy file is wrong (start-up stops, exit 2)
    ├── UserError                     the user asked for something we cannot do; `.message` is safe to show
    │   ├── UsageError                wrong command, bad duration, over-long reason, unknown resource
    │   ├── NotAuthorized             not an eligible approver, not the holder, not an admin
    │   ├── NotFound                  unknown request, grant or transaction id
    │   ├── AlreadyDecided            a compare-and-set lost: someone (or a retry) got there first
    │   ├── GateRefused               no flow's gate passed; carries each candidate flow's reason
    │   └── IdentityError             no chat email, or no PagerDuty user for the email
    ├── UpstreamError                 a service we depend on failed
    │   ├── PagerDutyError            the PagerDuty REST or Events API
    │   │   ├── PagerDutyUnavailable  down, slow, rate limiting after our retries (fail closed)
    │   │   ├── PagerDutyAuthError    401/403: the token is wrong or lacks a scope
    │   │   └── PagerDutyNotFound     404
    │   ├── ChatError                 Slack or Teams refused or could not be reached
    │   └── ProvisioningError         a provisioner refused or could not be reached
    └── StorageError                  the database failed; nothing was changed

Adapters wrap vendor exceptions with ``raise SomeError(...) from exc``. Handlers show
``UserError.message`` and ``UpstreamError.message`` to users; anything else becomes the generic
"something went wrong" sentence from :mod:`bot.core.messages` and is logged with its traceback.
"""

from __future__ import annotations


class AckgateError(Exception):
    """Base class. ``message`` is a complete sentence fit for the person who caused it."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(AckgateError):
    """A setting or the policy file is invalid. The message names it and says how to fix it."""


class UserError(AckgateError):
    """The request cannot be carried out as asked; the message says what to do instead."""


class UsageError(UserError):
    """The command, a duration, a resource name or a reason is malformed."""


class NotAuthorized(UserError):
    """The actor may not do this (checked server-side, never from button payloads)."""


class NotFound(UserError):
    """No request, grant or transaction has that id."""


class AlreadyDecided(UserError):
    """A compare-and-set transition lost: the object is no longer in the expected state.

    ``status`` is the state found; ``by`` who put it there, when known.
    """

    def __init__(self, message: str, *, status: str = "", by: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.by = by


class GateRefused(UserError):
    """No access flow let the request through. ``reasons`` maps flow name to why it refused."""

    def __init__(self, message: str, *, reasons: dict[str, str]) -> None:
        super().__init__(message)
        self.reasons = reasons


class IdentityError(UserError):
    """The chat user has no visible email, or no PagerDuty user has it."""


class UpstreamError(AckgateError):
    """A service Ackgate depends on failed; the request failed closed."""


class PagerDutyError(UpstreamError):
    """The PagerDuty REST or Events API failed."""


class PagerDutyUnavailable(PagerDutyError):
    """PagerDuty is down, too slow, or still rate limiting after bounded retries."""


class PagerDutyAuthError(PagerDutyError):
    """PagerDuty rejected the token (401) or its scope (403)."""


class PagerDutyNotFound(PagerDutyError):
    """PagerDuty has no such object (404)."""


class ChatError(UpstreamError):
    """The chat platform refused a call or could not be reached."""


class ProvisioningError(UpstreamError):
    """A provisioner refused or could not be reached after its retries."""


class StorageError(AckgateError):
    """The database failed; the operation changed nothing."""
