"""A PagerDuty Events API v2 simulator: a real aiohttp server on 127.0.0.1, for tests and ``ackgate demo``.

``POST /v2/enqueue`` validates as PagerDuty does (the routing-key texts are the ones users observed;
the others follow their style), answers 202 with the dedup key (generating one for a trigger without),
and keeps alerts by dedup key with PagerDuty's semantics: a trigger for an open alert only adds to it,
after a resolve the same key opens a new alert, and an acknowledge or resolve for no open alert (or
from another routing key) is accepted and dropped. Failures are injected with ``fail_next``,
``rate_limit_next`` and ``slow_next``. Every request is kept in ``requests``, every accepted event in
``events``.

It reads no reference files, because the demo runs it where those are absent. Tests plug a schema
check in through ``validator(event)``: whatever it raises turns the answer into a 400 and is kept in
``validation_errors``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from bot.runtime.simulators.faults import Fault, Faults
from bot.runtime.simulators.server import LoopbackServer

__all__ = ["EventsSimulator", "RecordedRequest", "SimAlert"]

Json = dict[str, Any]
Validator = Callable[[Json], None]

ACTIONS = ("trigger", "acknowledge", "resolve")
SEVERITIES = ("critical", "error", "warning", "info")
ROUTING_KEY_CHARS = re.compile(r"[A-Za-z0-9]*")


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: CIMultiDict[str]
    body: bytes
    status: int  # what the simulator answered

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass
class SimAlert:
    """One alert. ``actions`` lists every event applied to it, in order."""

    dedup_key: str
    routing_key: str
    number: int  # the simulator's running count of alerts opened
    summary: str
    severity: str
    source: str
    status: str = "triggered"  # triggered | acknowledged | resolved
    custom_details: Json = field(default_factory=dict)
    links: list[Json] = field(default_factory=list)
    actions: list[str] = field(default_factory=lambda: ["trigger"])

    @property
    def is_open(self) -> bool:
        return self.status != "resolved"


class EventsSimulator(LoopbackServer):
    """``async with EventsSimulator() as pd: EventsClient(base_url=pd.base_url)``."""

    label = "Events API simulator"

    def __init__(self, *, validator: Validator | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host=host, port=port)
        self.validator = validator
        self.requests: list[RecordedRequest] = []
        self.events: list[Json] = []
        self.alerts: dict[str, SimAlert] = {}  # the latest alert for each dedup key
        self.validation_errors: list[Exception] = []
        self._opened = 0
        self._faults = Faults()
        self._stopping = asyncio.Event()

    # --- lifecycle --------------------------------------------------------------------------

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v2/enqueue", self._enqueue)
        return app

    async def start(self) -> str:
        self._stopping.clear()
        return await super().start()

    async def stop(self) -> None:
        self._stopping.set()  # cuts short any slow_next delay, so shutdown does not wait for it
        await super().stop()

    @property
    def open_alerts(self) -> list[SimAlert]:
        return [a for a in self.alerts.values() if a.is_open]

    # --- failure modes ----------------------------------------------------------------------

    def fail_next(self, times: int | None = 1, *, status: int = 500) -> None:
        """The next ``times`` requests (None: all, until :meth:`clear_faults`) answer ``status``."""
        self._faults.add(Fault(status, remaining=times))

    def rate_limit_next(self, times: int | None = 1) -> None:
        self.fail_next(times, status=429)

    def slow_next(self, times: int | None = 1, *, seconds: float) -> None:
        """The next ``times`` requests wait ``seconds`` (real time) before being handled normally."""
        self._faults.add(Fault(None, delay=seconds, remaining=times))

    def clear_faults(self) -> None:
        self._faults.clear()

    # --- HTTP -------------------------------------------------------------------------------

    async def _enqueue(self, request: web.Request) -> web.Response:
        raw = await request.read()
        response = await self._answer(raw)
        self.requests.append(
            RecordedRequest(request.method, request.path, CIMultiDict(request.headers), raw, response.status)
        )
        return response

    async def _answer(self, raw: bytes) -> web.Response:
        fault = self._faults.take()
        if fault is not None:
            if fault.delay:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), timeout=fault.delay)
            if fault.status is not None:
                return _fault_response(fault.status)
        try:
            event = json.loads(raw)
        except ValueError:
            event = None
        if not isinstance(event, dict):
            unrecognized: Json = {"status": "Unrecognized object", "message": "Event object format is unrecognized"}
            return web.json_response({**unrecognized, "errors": ["JSON parse error"]}, status=400)
        errors = _problems(event) or self._validator_problems(event)
        if errors:
            invalid: Json = {"status": "invalid event", "message": "Event object is invalid", "errors": errors}
            return web.json_response(invalid, status=400)
        key = event.get("dedup_key") or uuid.uuid4().hex
        self._apply(event, key)
        self.events.append(event)
        return web.json_response({"status": "success", "message": "Event processed", "dedup_key": key}, status=202)

    def _validator_problems(self, event: Json) -> list[str]:
        if self.validator is None:
            return []
        try:
            self.validator(event)
        except Exception as exc:
            self.validation_errors.append(exc)
            return [str(exc)]
        return []

    # --- state ------------------------------------------------------------------------------

    def _apply(self, event: Json, key: str) -> None:
        action, routing_key = event["event_action"], event["routing_key"]
        alert = self.alerts.get(key)
        if action == "trigger":
            if alert is not None and alert.is_open:
                alert.actions.append("trigger")  # PagerDuty adds a log entry; no new incident
                return
            payload = event["payload"]
            self._opened += 1
            self.alerts[key] = SimAlert(
                dedup_key=key,
                routing_key=routing_key,
                number=self._opened,
                summary=payload["summary"],
                severity=payload["severity"],
                source=payload["source"],
                custom_details=dict(payload.get("custom_details") or {}),
                links=list(event.get("links") or []),
            )
            return
        # acknowledge/resolve with no open alert, or from another integration, is dropped
        if alert is None or not alert.is_open or alert.routing_key != routing_key:
            return
        alert.actions.append(action)
        alert.status = "acknowledged" if action == "acknowledge" else "resolved"


def _problems(event: Json) -> list[str]:
    errors: list[str] = []
    key = event.get("routing_key")
    if not isinstance(key, str) or not key:
        errors.append("'routing_key' is missing or blank.")
    else:
        if len(key) != 32:
            errors.append("Length of 'routing_key' is incorrect (should be 32 characters)")
        if not ROUTING_KEY_CHARS.fullmatch(key):
            errors.append("'routing_key' cannot contain non-alphanumeric characters.")
    action = event.get("event_action")
    if action not in ACTIONS:
        errors.append("'event_action' must be one of trigger, acknowledge or resolve.")
    dedup = event.get("dedup_key")
    if dedup is not None and (not isinstance(dedup, str) or not 1 <= len(dedup) <= 255):
        errors.append("'dedup_key' must be a string of 1 to 255 characters.")
    if action in ("acknowledge", "resolve") and not dedup:
        errors.append(f"'dedup_key' is required for {action} events.")
    if action == "trigger":
        errors.extend(_payload_problems(event.get("payload")))
    return errors


def _payload_problems(payload: object) -> list[str]:
    if not isinstance(payload, dict):
        return ["'payload' is missing or is not an object."]
    errors: list[str] = []
    summary = payload.get("summary")
    if not isinstance(summary, str) or not summary.strip():
        errors.append("'payload.summary' is missing or blank.")
    elif len(summary) > 1024:
        errors.append("'payload.summary' is too long (at most 1024 characters).")
    source = payload.get("source")
    if not isinstance(source, str) or not source.strip():
        errors.append("'payload.source' is missing or blank.")
    if payload.get("severity") not in SEVERITIES:
        errors.append("'payload.severity' must be one of critical, error, warning or info.")
    return errors


def _fault_response(status: int) -> web.Response:
    # PagerDuty documents no body for these; a small status/message object is what clients can expect
    message = "Request Limit Exceeded" if status == 429 else "Internal Server Error"
    return web.json_response({"status": "error", "message": message}, status=status)
