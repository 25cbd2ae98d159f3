"""The integration key: checked on entry, masked on screen, encrypted at rest."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from bot.core.errors import ConfigError, UsageError
from bot.core.secrets import SecretBox, mask, validate_integration_key

KEY = "0123456789abcdefABCDEF0123456789"
PASSPHRASE = SecretStr("correct horse battery staple")
REST_PHRASE = "looks like a REST API token, not an Events API v2 integration key"
WHERE = "service → Integrations → Events API V2 → Integration Key"


def test_a_32_character_alphanumeric_key_is_accepted_without_surrounding_whitespace() -> None:
    assert validate_integration_key(f"  {KEY}\n") == KEY


def test_a_31_character_key_is_refused_with_its_length_and_where_to_find_the_right_one() -> None:
    with pytest.raises(UsageError) as caught:
        validate_integration_key(KEY[:31])
    assert "exactly 32 characters; this one has 31" in caught.value.message
    assert WHERE in caught.value.message
    assert KEY[:31] not in caught.value.message


@pytest.mark.parametrize(
    "token",
    ["y_NbAkKc66ryYTWUXYEu", "u+AbCdEfGhIjKlMnOpQr", "abcdefghijklmnopqrst", "0123456789abcdef-123456789ABCDEF"],
    ids=["account-key-with-underscore", "user-token", "20-characters", "32-with-hyphen"],
)
def test_a_rest_api_token_is_named_as_such(token: str) -> None:
    with pytest.raises(UsageError) as caught:
        validate_integration_key(token)
    assert REST_PHRASE in caught.value.message
    assert WHERE in caught.value.message
    assert token not in caught.value.message


def test_a_key_with_a_space_or_quote_is_refused_as_not_letters_and_digits() -> None:
    with pytest.raises(UsageError, match="only letters and digits") as caught:
        validate_integration_key(f'"{KEY[:30]}"')
    assert "REST" not in caught.value.message


def test_an_empty_key_is_refused() -> None:
    with pytest.raises(UsageError, match="empty"):
        validate_integration_key("   ")


def test_mask_shows_28_bullets_and_the_last_four_characters_of_a_key() -> None:
    assert mask(KEY) == "•" * 28 + "6789"
    assert mask(SecretStr(KEY)) == mask(KEY)


def test_mask_hides_a_short_secret_entirely() -> None:
    assert mask("abc123") == "••••••"
    assert mask("") == ""


def test_secretbox_round_trips_and_the_ciphertext_does_not_hold_the_key() -> None:
    sealed = SecretBox(PASSPHRASE).encrypt(KEY)
    assert KEY not in sealed
    assert SecretBox(SecretStr(PASSPHRASE.get_secret_value())).decrypt(sealed) == KEY


def test_secretbox_encrypts_the_same_text_differently_each_time() -> None:
    box = SecretBox(PASSPHRASE)
    assert box.encrypt(KEY) != box.encrypt(KEY)


def test_a_tampered_ciphertext_is_a_config_error_saying_the_key_does_not_match() -> None:
    sealed = SecretBox(PASSPHRASE).encrypt(KEY)
    flipped = sealed[:20] + ("A" if sealed[20] != "A" else "B") + sealed[21:]
    with pytest.raises(ConfigError, match="ACKGATE_SECRET_KEY changed or does not match"):
        SecretBox(PASSPHRASE).decrypt(flipped)


@pytest.mark.parametrize("foreign", ["not-a-fernet-token", "", "ünïcødé"])
def test_a_foreign_value_is_a_config_error(foreign: str) -> None:
    with pytest.raises(ConfigError, match="ACKGATE_SECRET_KEY"):
        SecretBox(PASSPHRASE).decrypt(foreign)


def test_a_different_secret_key_cannot_decrypt() -> None:
    sealed = SecretBox(PASSPHRASE).encrypt(KEY)
    with pytest.raises(ConfigError, match="ACKGATE_SECRET_KEY changed or does not match"):
        SecretBox(SecretStr("another passphrase, also long")).decrypt(sealed)


@pytest.mark.parametrize("short", ["", "fifteen-chars!!", "      padded      "])
def test_a_secret_key_under_16_characters_is_refused_with_how_to_generate_one(short: str) -> None:
    with pytest.raises(ConfigError) as caught:
        SecretBox(SecretStr(short))
    assert "ACKGATE_SECRET_KEY must be at least 16 characters" in caught.value.message
    assert 'python -c "import secrets; print(secrets.token_urlsafe(32))"' in caught.value.message


def test_secretbox_repr_does_not_reveal_the_passphrase() -> None:
    assert PASSPHRASE.get_secret_value() not in repr(SecretBox(PASSPHRASE))
