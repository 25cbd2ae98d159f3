"""The PagerDuty V3 webhook reference data (``tests/reference/pagerduty/webhooks-v3``), loaded
once for the webhook tests: the 13 signature vectors and every example body."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from tests.fakes.reference import PAGERDUTY

WEBHOOKS_V3 = PAGERDUTY / "webhooks-v3"
EXAMPLES = WEBHOOKS_V3 / "examples"

SIGNATURE_VECTORS: list[dict[str, Any]] = json.loads((WEBHOOKS_V3 / "signature-test-vectors.json").read_text())[
    "vectors"
]
PAYLOAD_SCHEMA: dict[str, Any] = json.loads((WEBHOOKS_V3 / "webhook-v3-payload.schema.json").read_text())
EVENT_TYPES: dict[str, Any] = json.loads((WEBHOOKS_V3 / "event-types.json").read_text())

# docs/event-data-types.json maps each data.type to an example `data` object, not a whole body.
DATA_TYPE_EXAMPLES: dict[str, Any] = json.loads((EXAMPLES / "docs" / "event-data-types.json").read_text())


def example_bodies() -> dict[str, bytes]:
    """Every whole webhook body under examples/ (docs, captured-signed, captured-zulip), byte-exact."""
    return {
        str(path.relative_to(EXAMPLES)): path.read_bytes()
        for path in sorted(EXAMPLES.glob("*/*.json"))
        if path.name != "event-data-types.json"
    }


def vector_body(vector: dict[str, Any]) -> bytes:
    body: bytes = vector["raw_body"].encode("utf-8")
    # The JSON string must round-trip to exactly the bytes PagerDuty signed.
    assert len(body) == vector["raw_body_utf8_bytes"]
    assert hashlib.sha256(body).hexdigest() == vector["raw_body_sha256"]
    return body


def sign(body: bytes, secret: str) -> str:
    return "v1=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def envelope(event_type: str, data: dict[str, Any], *, event_id: str = "01TESTEVENT0000000000000001") -> bytes:
    return json.dumps(
        {
            "event": {
                "id": event_id,
                "event_type": event_type,
                "resource_type": event_type.split(".", 1)[0],
                "occurred_at": "2026-11-23T12:00:00.000Z",
                "agent": None,
                "client": None,
                "data": data,
            }
        },
        separators=(",", ":"),
    ).encode()
