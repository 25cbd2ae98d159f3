"""Slack's request-signing vectors verify with slack_sdk (what bolt uses) and with our test signer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from slack_sdk.signature import Clock, SignatureVerifier

from bot.runtime.simulators.slack_requests import signature, signed_headers
from tests.fakes.block_kit import SLACK_REFERENCE

PAYLOADS = SLACK_REFERENCE / "payloads"
VECTORS: dict[str, Any] = json.loads((PAYLOADS / "signature-test-vectors.json").read_text())
NAMES = sorted(name for name, v in VECTORS.items() if isinstance(v, dict) and "expected_signature" in v)


class FrozenClock(Clock):
    def __init__(self, at: float) -> None:
        self.at = at

    def now(self) -> float:
        return self.at


def _body(vector: dict[str, Any]) -> str:
    if "body" in vector:
        return str(vector["body"])
    return Path(PAYLOADS / vector["body_file"]).read_text()  # the exact bytes Slack sends


def test_the_vector_file_has_the_official_and_derived_vectors() -> None:
    assert NAMES == ["derived_block_actions", "derived_slash_command", "derived_view_submission", "official"]


@pytest.mark.parametrize("name", NAMES)
def test_vector_verifies_with_slack_sdk(name: str) -> None:
    vector = VECTORS[name]
    verifier = SignatureVerifier(vector["signing_secret"], clock=FrozenClock(int(vector["timestamp"])))
    assert verifier.is_valid(_body(vector), vector["timestamp"], vector["expected_signature"])


@pytest.mark.parametrize("name", NAMES)
def test_vector_is_reproduced_by_our_signing_helper(name: str) -> None:
    vector = VECTORS[name]
    assert (
        signature(_body(vector), secret=vector["signing_secret"], timestamp=vector["timestamp"])
        == (vector["expected_signature"])
    )


def test_a_timestamp_more_than_five_minutes_old_is_rejected() -> None:
    vector = VECTORS["official"]
    verifier = SignatureVerifier(vector["signing_secret"], clock=FrozenClock(int(vector["timestamp"]) + 301))
    assert not verifier.is_valid(vector["body"], vector["timestamp"], vector["expected_signature"])


def test_a_body_altered_by_one_byte_is_rejected() -> None:
    vector = VECTORS["official"]
    verifier = SignatureVerifier(vector["signing_secret"], clock=FrozenClock(int(vector["timestamp"])))
    assert not verifier.is_valid(vector["body"] + " ", vector["timestamp"], vector["expected_signature"])


def test_headers_from_our_helper_verify_whatever_their_case() -> None:
    body = "command=%2Faccess&text=list"
    headers = signed_headers(body, secret="s3cret", timestamp=1_700_000_000)
    verifier = SignatureVerifier("s3cret", clock=FrozenClock(1_700_000_000))
    assert verifier.is_valid_request(body, headers)
    assert verifier.is_valid_request(body, {k.lower(): v for k, v in headers.items()})
    assert not SignatureVerifier("other", clock=FrozenClock(1_700_000_000)).is_valid_request(body, headers)
