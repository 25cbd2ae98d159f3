"""``X-PagerDuty-Signature`` verification (FACTS.md §8) against the 13 reference vectors and beyond."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import pytest

from bot.core.webhooks import verify_signature
from tests.pagerduty_webhook_reference import SIGNATURE_VECTORS, example_bodies, sign, vector_body

OLD_SECRET = "old-secret-for-tests-0123456789abcdef"
NEW_SECRET = "new-secret-for-tests-fedcba9876543210"
BODY = b'{"event":{"id":"01TEST","event_type":"incident.triggered"}}'


def test_reference_pack_has_thirteen_vectors_with_both_verdicts() -> None:
    """The suite below really covers 13 vectors, some valid and some not."""
    assert len(SIGNATURE_VECTORS) == 13
    assert {v["expected_valid"] for v in SIGNATURE_VECTORS} == {True, False}


@pytest.mark.parametrize("vector", SIGNATURE_VECTORS, ids=[v["name"] for v in SIGNATURE_VECTORS])
def test_reference_vector_gets_its_documented_verdict(vector: dict[str, Any]) -> None:
    """Each vector (go-pagerduty, Aldaviva, rotation, v2 prefix, re-serialised body) verifies as documented."""
    body = vector_body(vector)
    assert (
        verify_signature(body, vector["x_pagerduty_signature_header"], [vector["secret"]]) is vector["expected_valid"]
    )


def test_captured_signed_bodies_verify_with_the_secret_their_vectors_give() -> None:
    """Every byte-exact body in captured-signed/ has a valid vector (matched by SHA-256) and verifies with it."""
    valid_by_digest = {v["raw_body_sha256"]: v for v in SIGNATURE_VECTORS if v["expected_valid"]}
    captured = {name: body for name, body in example_bodies().items() if name.startswith("captured-signed/")}
    assert len(captured) == 5
    for name, body in captured.items():
        vector = valid_by_digest.get(hashlib.sha256(body).hexdigest())
        assert vector is not None, f"{name} has no valid signature vector"
        assert verify_signature(body, vector["x_pagerduty_signature_header"], [vector["secret"]]), name


def test_second_of_two_v1_signatures_matching_passes() -> None:
    """During rotation PagerDuty sends one signature per secret; a match in second place counts."""
    header = f"{sign(BODY, OLD_SECRET)},{sign(BODY, NEW_SECRET)}"
    assert verify_signature(BODY, header, [NEW_SECRET])


def test_spaces_around_entries_are_ignored() -> None:
    """The docs render the header over two lines; whitespace around entries must not matter."""
    header = f"v1=00ff , {sign(BODY, NEW_SECRET)} "
    assert verify_signature(BODY, header, [NEW_SECRET])


def test_any_configured_secret_may_match() -> None:
    """With both the old and the new secret configured, either one's signature is accepted."""
    assert verify_signature(BODY, sign(BODY, OLD_SECRET), [NEW_SECRET, OLD_SECRET])
    assert verify_signature(BODY, sign(BODY, NEW_SECRET), [NEW_SECRET, OLD_SECRET])


def test_a_secret_no_longer_configured_is_refused() -> None:
    """After rotation finishes, the old secret's signature alone no longer passes."""
    assert not verify_signature(BODY, sign(BODY, OLD_SECRET), [NEW_SECRET])


def test_malformed_entries_are_skipped_not_fatal() -> None:
    """Non-hex, empty and unversioned entries are ignored; a valid entry after them still passes."""
    header = f"v1=not-hex,v1=,garbage,v0={sign(BODY, NEW_SECRET)[3:]},{sign(BODY, NEW_SECRET)}"
    assert verify_signature(BODY, header, [NEW_SECRET])


@pytest.mark.parametrize("header", [None, "", "v1=", "v1=zz", "garbage", ",,,"])
def test_headers_without_a_usable_signature_fail(header: str | None) -> None:
    """A missing header or one with no decodable v1 entry never verifies."""
    assert not verify_signature(BODY, header, [NEW_SECRET])


def test_no_configured_secret_verifies_nothing() -> None:
    assert not verify_signature(BODY, sign(BODY, NEW_SECRET), [])


def test_empty_secret_is_never_used_as_a_key() -> None:
    """An HMAC under an empty key is computable by anyone, so an empty configured secret must not match it."""
    forged = "v1=" + hmac.new(b"", BODY, hashlib.sha256).hexdigest()
    assert not verify_signature(BODY, forged, [""])


def test_signature_covers_every_byte_of_the_body() -> None:
    """A trailing newline added by a proxy or re-serialisation breaks the signature."""
    assert not verify_signature(BODY + b"\n", sign(BODY, NEW_SECRET), [NEW_SECRET])
