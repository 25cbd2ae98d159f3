"""``POST /webhooks/pagerduty`` over real HTTP on loopback: status codes, async hand-off through the
inbox (an in-memory SQLite store here; tests/test_webhook_inbox.py races it on both backends)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from bot.core.clock import FakeClock
from bot.core.ports import Store, WebhookInbox
from bot.core.webhook_inbox import Inbox
from bot.core.webhooks import WebhookEvent, advances
from handlers.pagerduty_webhooks import mount_pagerduty_webhooks
from storage import open_store
from tests.pagerduty_webhook_reference import SIGNATURE_VECTORS, example_bodies, sign, vector_body

PATH = "/webhooks/pagerduty"
SECRET = "whsec-for-tests-only-0123456789abcdef"
EXAMPLES = example_bodies()


@dataclass
class Receiver:
    """What the endpoint handed on: delivered events, spawned-but-not-yet-run work, metric calls."""

    store: Store
    clock: FakeClock = field(default_factory=FakeClock)
    delivered: list[WebhookEvent] = field(default_factory=list)
    pending: list[Coroutine[Any, Any, None]] = field(default_factory=list)
    signature_failures: int = 0
    counted: list[str] = field(default_factory=list)

    async def on_event(self, event: WebhookEvent) -> None:
        self.delivered.append(event)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self.pending.append(coro)

    async def run_pending(self) -> None:
        """Run the work the endpoint spawned, in order, deterministically."""
        while self.pending:
            await self.pending.pop(0)

    def count_signature_failure(self) -> None:
        self.signature_failures += 1


class Endpoint:
    def __init__(self, client: TestClient[web.Request, web.Application], receiver: Receiver) -> None:
        self.client = client
        self.receiver = receiver

    async def post(
        self, body: bytes, *, secret: str | None = SECRET, webhook_id: str | None = None, **headers: str
    ) -> tuple[int, str]:
        sent = {"Content-Type": "application/json", "X-Webhook-Subscription": "PSUB123", **headers}
        if secret is not None:
            sent["X-PagerDuty-Signature"] = sign(body, secret)
        if webhook_id is not None:
            sent["X-Webhook-Id"] = webhook_id
        async with self.client.post(PATH, data=body, headers=sent) as resp:
            return resp.status, await resp.text()


async def start(
    receiver: Receiver,
    *,
    secrets: Sequence[str] = (SECRET,),
    inbox_store: WebhookInbox | None = None,
    on_event: Callable[[WebhookEvent], Awaitable[None]] | None = None,
    own_spawn: bool = False,
    max_body: int = 256 * 1024,
    shutdown_grace: float = 5.0,
) -> TestClient[web.Request, web.Application]:
    app = web.Application()
    inbox = Inbox(inbox_store or receiver.store.inbox, on_event=on_event or receiver.on_event, clock=receiver.clock)
    mount_pagerduty_webhooks(
        app,
        secrets=[SecretStr(s) for s in secrets],
        inbox=inbox,
        count_signature_failure=receiver.count_signature_failure,
        count_event=receiver.counted.append,
        path=PATH,
        max_body=max_body,
        spawn=None if own_spawn else receiver.spawn,
        shutdown_grace=shutdown_grace,
    )
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    return client


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    store = open_store("sqlite:///:memory:")
    await store.open()
    receiver = Receiver(store)
    yield receiver
    for coro in receiver.pending:  # work a test chose not to run must not warn "never awaited"
        coro.close()
    await store.close()


@pytest.fixture
async def endpoint(receiver: Receiver) -> AsyncIterator[Endpoint]:
    client = await start(receiver)
    yield Endpoint(client, receiver)
    await client.close()


TRIGGERED = EXAMPLES["captured-signed/incident.triggered.raw.json"]
RESOLVED = EXAMPLES["captured-signed/incident.resolved.raw.json"]


# --- the reference vectors, through HTTP ------------------------------------------------------


@pytest.mark.parametrize("vector", SIGNATURE_VECTORS, ids=[v["name"] for v in SIGNATURE_VECTORS])
async def test_reference_vector_through_the_endpoint(vector: dict[str, Any], receiver: Receiver) -> None:
    """Valid vectors are accepted (202) and delivered; bad signatures 401, an empty header 400."""
    body = vector_body(vector)
    client = await start(receiver, secrets=[vector["secret"]])
    try:
        header = vector["x_pagerduty_signature_header"]
        headers = {"Content-Type": "application/json"} | ({"X-PagerDuty-Signature": header} if header else {})
        async with client.post(PATH, data=body, headers=headers) as resp:
            status = resp.status
        await receiver.run_pending()
    finally:
        await client.close()
    event_type = json.loads(body)["event"]["event_type"]
    if vector["expected_valid"]:
        assert status == 202
        expected = [] if event_type == "pagey.ping" else [event_type]
        assert [e.event_type for e in receiver.delivered] == expected
    else:
        assert status == (400 if not header else 401)
        assert receiver.delivered == []
        assert receiver.signature_failures == (1 if header else 0)


# --- refusals ------------------------------------------------------------------------------


async def test_wrong_signature_is_401_counted_logged_and_not_delivered(
    endpoint: Endpoint, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    """A bad signature is refused, counted and logged with subscription and address, never body or secret."""
    with caplog.at_level(logging.WARNING, logger="ackgate.webhooks"):
        status, _ = await endpoint.post(TRIGGERED, secret="not-the-configured-secret")
    await receiver.run_pending()
    assert status == 401
    assert receiver.delivered == []
    assert receiver.pending == []
    assert receiver.signature_failures == 1
    [record] = [r for r in caplog.records if r.levelno == logging.WARNING]
    text = record.getMessage()
    assert "PSUB123" in text
    assert "127.0.0.1" in text
    assert SECRET not in text
    assert "Q2CKYRLH85UNN4" not in text  # nothing from the body


@pytest.mark.parametrize("signature", [None, "", "   "])
async def test_missing_or_empty_signature_header_is_400(
    endpoint: Endpoint, receiver: Receiver, signature: str | None
) -> None:
    headers = {} if signature is None else {"X-PagerDuty-Signature": signature}
    status, _ = await endpoint.post(TRIGGERED, secret=None, **headers)
    assert status == 400
    assert receiver.pending == []
    assert receiver.delivered == []


async def test_empty_body_is_400(endpoint: Endpoint, receiver: Receiver) -> None:
    status, _ = await endpoint.post(b"")
    assert status == 400
    assert receiver.pending == []


@pytest.mark.parametrize(
    "body",
    [b"not json at all", b'{"event": {"event_type": "incident.triggered"}}', b"[1, 2]"],
    ids=["not-json", "no-event-id", "not-an-object"],
)
async def test_correctly_signed_but_malformed_body_is_400(endpoint: Endpoint, receiver: Receiver, body: bytes) -> None:
    status, text = await endpoint.post(body)
    assert status == 400
    assert "PagerDuty V3" in text or "JSON" in text
    assert receiver.pending == []
    assert receiver.signature_failures == 0


async def test_no_configured_secret_is_503_and_names_the_setting(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    """Without a secret nothing can be verified; 503 keeps PagerDuty retrying instead of disabling."""
    client = await start(receiver, secrets=[""])
    try:
        with caplog.at_level(logging.ERROR, logger="ackgate.webhooks"):
            async with client.post(
                PATH, data=TRIGGERED, headers={"X-PagerDuty-Signature": sign(TRIGGERED, "")}
            ) as resp:
                status = resp.status
    finally:
        await client.close()
    assert status == 503
    assert receiver.pending == []
    assert any("PAGERDUTY_WEBHOOK_SECRET is not set" in r.getMessage() for r in caplog.records)


async def test_oversized_body_with_content_length_is_413(receiver: Receiver) -> None:
    client = await start(receiver, max_body=1024)
    body = b'{"event":{"id":"01X","event_type":"incident.triggered","pad":"' + b"x" * 1024 + b'"}}'
    try:
        async with client.post(PATH, data=body, headers={"X-PagerDuty-Signature": sign(body, SECRET)}) as resp:
            status = resp.status
    finally:
        await client.close()
    assert status == 413
    assert receiver.pending == []
    assert receiver.signature_failures == 0


async def test_oversized_chunked_body_is_413(receiver: Receiver) -> None:
    """A body without Content-Length is counted while read and refused once past the cap."""
    client = await start(receiver, max_body=1024)
    chunks = [b"x" * 600, b"y" * 600]

    async def stream() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    try:
        headers = {"X-PagerDuty-Signature": sign(b"".join(chunks), SECRET)}
        async with client.post(PATH, data=stream(), headers=headers) as resp:
            status = resp.status
    finally:
        await client.close()
    assert status == 413
    assert receiver.pending == []


async def test_body_exactly_at_the_cap_is_accepted(receiver: Receiver) -> None:
    client = await start(receiver, max_body=len(TRIGGERED))
    try:
        async with client.post(
            PATH, data=TRIGGERED, headers={"X-PagerDuty-Signature": sign(TRIGGERED, SECRET)}
        ) as resp:
            status = resp.status
    finally:
        await client.close()
    assert status == 202


# --- acceptance and hand-off ----------------------------------------------------------------


async def test_valid_event_is_delivered_once_and_counted(endpoint: Endpoint, receiver: Receiver) -> None:
    status, text = await endpoint.post(TRIGGERED, webhook_id="wh-1")
    await receiver.run_pending()
    assert (status, json.loads(text)) == (202, {"status": "accepted"})
    [event] = receiver.delivered
    assert (event.event_type, event.incident and event.incident.id) == ("incident.triggered", "Q2CKYRLH85UNN4")
    assert receiver.counted == ["incident.triggered"]


async def test_202_is_sent_before_on_event_finishes(receiver: Receiver) -> None:
    """The answer does not wait for processing (PagerDuty allows 5 s); the default spawner runs it."""
    started = asyncio.Event()
    release = asyncio.Event()
    finished = asyncio.Event()

    async def slow_on_event(event: WebhookEvent) -> None:
        started.set()
        await release.wait()
        receiver.delivered.append(event)
        finished.set()

    async def post() -> int:
        async with client.post(
            PATH, data=TRIGGERED, headers={"X-PagerDuty-Signature": sign(TRIGGERED, SECRET)}
        ) as resp:
            return resp.status

    client = await start(receiver, on_event=slow_on_event, own_spawn=True)
    try:
        # The bounds only turn "the answer waits for on_event" into a failure instead of a hang.
        assert await asyncio.wait_for(post(), timeout=5) == 202
        await asyncio.wait_for(started.wait(), timeout=5)
        assert receiver.delivered == []  # on_event is parked on `release`, yet PagerDuty has its 202
        release.set()
        await asyncio.wait_for(finished.wait(), timeout=5)
    finally:
        await client.close()
    assert [e.event_type for e in receiver.delivered] == ["incident.triggered"]


async def test_processing_still_running_at_shutdown_is_cancelled_after_the_grace(receiver: Receiver) -> None:
    """The default spawner tracks its tasks: shutdown waits the grace period, then cancels, never leaves them dangling."""
    never = asyncio.Event()
    started = asyncio.Event()
    outcome: list[str] = []

    async def stuck_on_event(event: WebhookEvent) -> None:
        started.set()
        try:
            await never.wait()
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise

    async def post() -> int:
        async with client.post(
            PATH, data=TRIGGERED, headers={"X-PagerDuty-Signature": sign(TRIGGERED, SECRET)}
        ) as resp:
            return resp.status

    client = await start(receiver, on_event=stuck_on_event, own_spawn=True, shutdown_grace=0)
    try:
        assert await asyncio.wait_for(post(), timeout=5) == 202  # bounded: a regression fails, not hangs
        await asyncio.wait_for(started.wait(), timeout=5)
    finally:
        await client.close()
    assert outcome == ["cancelled"]
    # Cancelled mid-way, so not done: the inbox's recovery takes it up once the lease lapses.
    [left] = await receiver.store.inbox.due(receiver.clock.now() + timedelta(hours=1))
    assert left.event_type == "incident.triggered"


async def test_failing_on_event_is_logged_retried_later_and_the_server_keeps_serving(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    """A processing failure is one WARNING line (no traceback); the inbox retries the event after a backoff."""
    calls: list[str] = []

    async def on_event(event: WebhookEvent) -> None:
        calls.append(event.event_type)
        if event.event_type == "incident.triggered" and calls.count("incident.triggered") == 1:
            raise RuntimeError("chat is down")

    inbox = Inbox(receiver.store.inbox, on_event=on_event, clock=receiver.clock)
    client = await start(receiver, on_event=on_event)
    endpoint = Endpoint(client, receiver)
    try:
        with caplog.at_level(logging.INFO, logger="ackgate.webhooks"):
            assert (await endpoint.post(TRIGGERED))[0] == 202
            await receiver.run_pending()  # the wrapped work swallows and logs; awaiting it does not raise
            assert (await endpoint.post(RESOLVED))[0] == 202
            await receiver.run_pending()
            assert await inbox.recover() == 0  # the retry is not due yet
            receiver.clock.advance(timedelta(seconds=6))
            assert await inbox.recover() == 1
    finally:
        await client.close()
    assert calls == ["incident.triggered", "incident.resolved", "incident.triggered"]
    [record] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "01FKZSRAPTMF55RE69G8BQHGC6" in record.getMessage()
    assert "chat is down" in record.getMessage()
    assert record.exc_info is None
    assert await receiver.store.inbox.due(receiver.clock.now() + timedelta(days=1)) == []


async def test_rotated_secrets_both_accepted(receiver: Receiver) -> None:
    """With old and new secrets configured, a body signed by either is accepted."""
    client = await start(receiver, secrets=["old-secret-0123456789", SECRET])
    endpoint = Endpoint(client, receiver)
    try:
        assert (await endpoint.post(TRIGGERED, secret="old-secret-0123456789"))[0] == 202
        assert (await endpoint.post(RESOLVED, secret=SECRET))[0] == 202
    finally:
        await client.close()
    assert len(receiver.pending) == 2
    await receiver.run_pending()


async def test_header_with_two_v1_signatures_second_right_passes(endpoint: Endpoint, receiver: Receiver) -> None:
    header = f"{sign(TRIGGERED, 'someone-elses-secret')},{sign(TRIGGERED, SECRET)}"
    status, _ = await endpoint.post(TRIGGERED, secret=None, **{"X-PagerDuty-Signature": header})
    await receiver.run_pending()
    assert status == 202
    assert len(receiver.delivered) == 1


# --- de-duplication and filtering -----------------------------------------------------------


async def test_redelivery_with_the_same_webhook_id_is_processed_once(endpoint: Endpoint, receiver: Receiver) -> None:
    first = await endpoint.post(TRIGGERED, webhook_id="wh-1")
    again = await endpoint.post(TRIGGERED, webhook_id="wh-1")
    await receiver.run_pending()
    assert first[0] == again[0] == 202
    assert json.loads(again[1]) == {"status": "duplicate"}
    assert len(receiver.delivered) == 1
    assert receiver.counted == ["incident.triggered"]


async def test_same_event_id_under_another_webhook_id_is_processed_once(endpoint: Endpoint, receiver: Receiver) -> None:
    """The event id also de-duplicates, e.g. the same event through two subscriptions."""
    await endpoint.post(TRIGGERED, webhook_id="wh-1")
    await endpoint.post(TRIGGERED, webhook_id="wh-2")
    await endpoint.post(TRIGGERED)
    await receiver.run_pending()
    assert len(receiver.delivered) == 1


async def test_distinct_events_are_all_processed(endpoint: Endpoint, receiver: Receiver) -> None:
    await endpoint.post(TRIGGERED, webhook_id="wh-1")
    await endpoint.post(RESOLVED, webhook_id="wh-2")
    await receiver.run_pending()
    assert [e.event_type for e in receiver.delivered] == ["incident.triggered", "incident.resolved"]


async def test_inbox_store_failure_is_503_so_pagerduty_retries(receiver: Receiver) -> None:
    """When the delivery cannot be stored, PagerDuty is asked to retry (503) and nothing is processed."""
    unopened = open_store("sqlite:///:memory:")  # never opened: every call raises StorageError
    client = await start(receiver, inbox_store=unopened.inbox)
    try:
        status, _ = await Endpoint(client, receiver).post(TRIGGERED, webhook_id="wh-1")
    finally:
        await client.close()
    assert status == 503
    assert receiver.pending == []


@pytest.mark.parametrize(
    "name",
    [
        "docs/service.updated.json",
        "captured-zulip/incident.responder.added.json",
        "captured-zulip/incident.delegated.json",
    ],
)
async def test_unhandled_event_types_are_acknowledged_and_not_delivered(
    endpoint: Endpoint, receiver: Receiver, name: str
) -> None:
    status, text = await endpoint.post(EXAMPLES[name], webhook_id="wh-x")
    assert (status, json.loads(text)) == (202, {"status": "ignored"})
    assert receiver.pending == []
    assert receiver.counted == []


async def test_unknown_future_event_type_is_acknowledged_and_not_delivered(
    endpoint: Endpoint, receiver: Receiver
) -> None:
    body = (
        b'{"event":{"id":"01NEW","event_type":"incident.something_new","occurred_at":"2026-11-23T12:00:00Z","data":{}}}'
    )
    status, _ = await endpoint.post(body)
    assert status == 202
    assert receiver.pending == []


async def test_ping_is_acknowledged_logged_and_not_delivered(
    endpoint: Endpoint, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="ackgate.webhooks"):
        status, text = await endpoint.post(EXAMPLES["captured-signed/pagey.ping.raw.json"])
    assert (status, json.loads(text)) == (202, {"status": "ping"})
    assert receiver.pending == []
    assert any("ping" in r.getMessage() and "PSUB123" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "name",
    [n for n in sorted(EXAMPLES) if json.loads(EXAMPLES[n])["event"]["event_type"] != "pagey.ping"],
)
async def test_every_example_body_is_accepted_when_signed(endpoint: Endpoint, receiver: Receiver, name: str) -> None:
    """Whatever its type, a correctly signed example body gets 202 (handled or ignored, never an error)."""
    status, _ = await endpoint.post(EXAMPLES[name])
    assert status == 202


# --- ordering, end to end -------------------------------------------------------------------


async def test_late_acknowledged_after_resolved_does_not_move_the_incident_back(receiver: Receiver) -> None:
    """A consumer applying ``advances`` keeps 'resolved' when an older acknowledged arrives late."""
    state: dict[str, tuple[str, datetime]] = {}

    async def apply(event: WebhookEvent) -> None:
        assert event.incident is not None
        current = state.get(event.incident.id)
        if advances(current[0] if current else None, current[1] if current else None, event):
            assert event.incident.status is not None
            state[event.incident.id] = (event.incident.status, event.occurred_at)

    acknowledged = EXAMPLES["captured-signed/incident.acknowledged.raw.json"]
    client = await start(receiver, on_event=apply)
    endpoint = Endpoint(client, receiver)
    try:
        await endpoint.post(TRIGGERED, webhook_id="wh-1")
        await endpoint.post(RESOLVED, webhook_id="wh-3")
        await endpoint.post(acknowledged, webhook_id="wh-2")  # delivered last, happened second
        await receiver.run_pending()
    finally:
        await client.close()
    assert state["Q2CKYRLH85UNN4"][0] == "resolved"
