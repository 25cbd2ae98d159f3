"""The PagerDuty integration key at rest and on screen: checked on entry, encrypted in storage, masked when shown."""

from __future__ import annotations

import base64
import re

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import SecretStr

from bot.core.errors import ConfigError, UsageError

INTEGRATION_KEY = re.compile(r"[A-Za-z0-9]{32}")
WHERE_TO_FIND = (
    "In PagerDuty open the service → Integrations → Events API V2 → Integration Key, and copy that 32-character key."
)
MIN_SECRET_KEY_CHARS = 16
GENERATE = 'python -c "import secrets; print(secrets.token_urlsafe(32))"'
# Fixed on purpose: changing either would make every stored secret unreadable.
_HKDF_SALT = b"ackgate/secretbox"
_HKDF_INFO = b"ackgate secretbox v1 fernet key"


def validate_integration_key(text: str) -> str:
    """The key, stripped, if it has the shape of an Events API v2 integration key; else :class:`UsageError`.

    The messages never repeat the key: it is a secret, and it may be shown in a channel.
    """
    key = text.strip()
    if INTEGRATION_KEY.fullmatch(key):
        return key
    if not key:
        raise UsageError(f"The integration key is empty. {WHERE_TO_FIND}")
    if _looks_like_rest_token(key):
        raise UsageError(f"This looks like a REST API token, not an Events API v2 integration key. {WHERE_TO_FIND}")
    if not key.isascii() or not key.isalnum():
        raise UsageError(
            "An Events API v2 integration key has only letters and digits; this one has other characters "
            f"(spaces or quotes?). {WHERE_TO_FIND}"
        )
    raise UsageError(
        f"An Events API v2 integration key has exactly 32 characters; this one has {len(key)}. {WHERE_TO_FIND}"
    )


def _looks_like_rest_token(key: str) -> bool:
    # REST API keys are 20 characters, may hold + _ -, and user tokens start with "u+"
    return key.startswith("u+") or len(key) == 20 or any(c in "+_-" for c in key)


def mask(secret: str | SecretStr) -> str:
    """Bullets and the last four characters, enough to tell keys apart; all bullets if shorter than 8."""
    value = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
    if len(value) < 8:
        return "•" * len(value)
    return "•" * (len(value) - 4) + value[-4:]


class SecretBox:
    """Encrypts strings for storage with Fernet, its key derived by HKDF-SHA256 from ``ACKGATE_SECRET_KEY``.

    Any passphrase of at least 16 characters works; the same passphrase always opens what it closed.
    """

    def __init__(self, key: SecretStr) -> None:
        material = key.get_secret_value()
        if len(material.strip()) < MIN_SECRET_KEY_CHARS:
            raise ConfigError(
                f"ACKGATE_SECRET_KEY must be at least {MIN_SECRET_KEY_CHARS} characters; generate one with: {GENERATE}"
            )
        derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=_HKDF_SALT, info=_HKDF_INFO).derive(material.encode())
        self._fernet = Fernet(base64.urlsafe_b64encode(derived))

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode("ascii")

    def decrypt(self, token: str) -> str:
        """The plaintext; :class:`ConfigError` if the token was altered or sealed under another key."""
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except (InvalidToken, ValueError) as exc:
            raise ConfigError(
                "A stored secret cannot be decrypted: ACKGATE_SECRET_KEY changed or does not match the one it was "
                "saved with (or the stored value was altered). Restore the previous ACKGATE_SECRET_KEY, or enter "
                "the PagerDuty integration key again."
            ) from exc

    def __repr__(self) -> str:
        return "SecretBox(key=SecretStr('**********'))"
