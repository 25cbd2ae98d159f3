"""A PagerDuty REST API v2 simulator: a real aiohttp server on 127.0.0.1, for tests and ``ackgate demo``.

It answers the endpoints Ackgate uses in the shapes of PagerDuty's OpenAPI document (wrapped bodies,
``limit/offset/more/total``, reference objects) and honours their filters and pagination (default
page 25, at most 100). State is changed through helpers (``add_user``, ``add_incident``,
``acknowledge``, ``add_oncall``...); failures are injected with ``fail_next``, ``rate_limit_next``,
``slow_next`` and ``reject_auth_next``. Every request is recorded in ``requests``. With
``rate_limit_per_minute``, it enforces PagerDuty's per-token limit as PagerDuty does: past that many
requests in the last 60 seconds it answers 429 with the ``ratelimit-*`` headers (counted in
``rate_limited``).

It imports no OpenAPI library and reads no reference files, because the demo runs it where those are
absent. Tests plug conformance checks in through ``validator(request, response)``; whatever a
validator raises is kept in ``validation_errors`` (the answer is still sent).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler
from multidict import CIMultiDict, MultiDict

from bot.core.clock import Clock, SystemClock
from bot.runtime.simulators.faults import Fault, Faults
from bot.runtime.simulators.pagerduty_state import Json, PagerDutyState, SimIncident, SimOnCall, SimUser, iso
from bot.runtime.simulators.server import LoopbackServer

__all__ = ["PagerDutySimulator", "RecordedRequest", "RecordedResponse", "SimIncident", "SimOnCall", "SimUser"]

log = logging.getLogger(__name__)

DEFAULT_LIMIT, MAX_LIMIT, MAX_OFFSET = 25, 100, 10_000
MAX_NOTES = 2000


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    raw_query: str
    query: MultiDict[str]
    headers: CIMultiDict[str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass(frozen=True)
class RecordedResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


Validator = Callable[[RecordedRequest, RecordedResponse], None]


def _error(status: int, message: str, code: int, *, errors: Iterable[str] = (), **headers: str) -> web.Response:
    body: Json = {"error": {"message": message, "code": code}}
    if errors:
        body["error"]["errors"] = list(errors)
    return web.json_response(body, status=status, headers=headers or None)


class PagerDutySimulator(LoopbackServer, PagerDutyState):
    """Serves :class:`PagerDutyState` over HTTP. ``async with PagerDutySimulator() as pd: pd.base_url``."""

    label = "PagerDuty simulator"

    def __init__(
        self,
        *,
        token: str = "sim-token",  # noqa: S107 - the simulator's well-known demo token
        clock: Clock | None = None,
        validator: Validator | None = None,
        web_url: str = "https://ackgate-demo.pagerduty.com",
        host: str = "127.0.0.1",
        port: int = 0,
        rate_limit_per_minute: int | None = None,
    ) -> None:
        PagerDutyState.__init__(self, clock=clock or SystemClock(), web_url=web_url)
        LoopbackServer.__init__(self, host=host, port=port)
        self.token = token
        self.validator = validator
        self.requests: list[RecordedRequest] = []
        self.validation_errors: list[Exception] = []
        self._faults = Faults()
        self.rate_limit_per_minute = rate_limit_per_minute
        self.rate_limited = 0
        self._answered: deque[float] = deque()  # monotonic times of the requests of the last minute

    # --- lifecycle --------------------------------------------------------------------------

    def build_app(self) -> web.Application:
        @web.middleware
        async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
            return await self._handle(request, handler)

        app = web.Application(middlewares=[middleware])
        app.router.add_get("/users", self._list_users)
        app.router.add_get("/users/{id}", self._get_user)
        app.router.add_get("/incidents", self._list_incidents)
        app.router.add_get("/incidents/{id}", self._get_incident)
        app.router.add_get("/incidents/{id}/notes", self._list_notes)
        app.router.add_post("/incidents/{id}/notes", self._add_note)
        app.router.add_get("/oncalls", self._list_oncalls)
        return app

    def build_runner(self, app: web.Application) -> web.AppRunner:
        # a client that gave up must not keep a slow handler (or shutdown) waiting
        return web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)

    async def start(self) -> str:
        self.api_url = await super().start()  # the `self` links in answers point here
        return self.api_url

    # --- failure modes ----------------------------------------------------------------------

    def fail_next(self, times: int | None = 1, *, status: int = 500) -> None:
        """The next ``times`` requests (None: all, until :meth:`clear_faults`) answer ``status``."""
        self._faults.add(Fault(status, remaining=times))

    def rate_limit_next(self, times: int | None = 1, *, reset: float = 1.0) -> None:
        headers = {"ratelimit-limit": "960", "ratelimit-remaining": "0", "ratelimit-reset": f"{reset:g}"}
        self._faults.add(Fault(429, headers=headers, remaining=times))

    def slow_next(self, times: int | None = 1, *, seconds: float) -> None:
        self._faults.add(Fault(None, delay=seconds, remaining=times))

    def reject_auth_next(self, times: int | None = 1) -> None:
        self._faults.add(Fault(401, remaining=times))

    def clear_faults(self) -> None:
        self._faults.clear()

    def requests_to(self, path: str, method: str = "GET") -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == path and r.method == method]

    # --- HTTP -------------------------------------------------------------------------------

    async def _handle(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        recorded = RecordedRequest(
            request.method,
            request.path,
            request.rel_url.raw_query_string,
            MultiDict(request.query),
            CIMultiDict(request.headers),
            await request.read(),
        )
        self.requests.append(recorded)
        response = await self._answer(request, handler)
        if self.validator is not None:
            self._validate(recorded, response)
        return response

    def _over_limit(self) -> web.Response | None:
        if self.rate_limit_per_minute is None:
            return None
        now = time.monotonic()
        while self._answered and self._answered[0] <= now - 60.0:
            self._answered.popleft()
        if len(self._answered) < self.rate_limit_per_minute:
            self._answered.append(now)
            return None
        self.rate_limited += 1
        reset = max(self._answered[0] + 60.0 - now, 0.0)
        headers = {
            "ratelimit-limit": str(self.rate_limit_per_minute),
            "ratelimit-remaining": "0",
            "ratelimit-reset": f"{reset:.0f}",
        }
        return self._fault_response(Fault(429, headers=headers))

    async def _answer(self, request: web.Request, handler: Handler) -> web.Response:
        limited = self._over_limit()
        if limited is not None:
            return limited
        fault = self._faults.take()
        if fault is not None:
            await asyncio.sleep(fault.delay)
            if fault.status is not None:
                return self._fault_response(fault)
        if request.headers.get("Authorization") != f"Token token={self.token}":
            return _error(401, "Authentication failed", 2006)
        try:
            response = await handler(request)
        except web.HTTPNotFound:
            return _error(404, "Not Found", 2100)
        except web.HTTPMethodNotAllowed:
            return _error(405, "Method Not Allowed", 2001)
        assert isinstance(response, web.Response)  # every handler here builds a json_response
        return response

    def _fault_response(self, fault: Fault) -> web.Response:
        messages = {401: ("Authentication failed", 2006), 429: ("Rate Limit Exceeded", 2020)}
        message, code = messages.get(
            fault.status or 500, ("An internal error has occurred. PagerDuty team has been notified.", 2000)
        )
        return _error(fault.status or 500, message, code, **fault.headers)

    def _validate(self, request: RecordedRequest, response: web.Response) -> None:
        assert self.validator is not None
        body = response.body if isinstance(response.body, bytes) else b""
        recorded = RecordedResponse(response.status, dict(response.headers), body)
        try:
            self.validator(request, recorded)
        except Exception as exc:
            log.error("PagerDuty simulator: %s %s failed validation: %s", request.method, request.path, exc)
            self.validation_errors.append(exc)

    def _page(self, request: web.Request, items: list[Json], key: str) -> web.Response:
        try:
            limit = int(request.query.get("limit", DEFAULT_LIMIT))
            offset = int(request.query.get("offset", 0))
        except ValueError:
            return _error(400, "Invalid Input Provided", 2001, errors=["limit and offset must be integers"])
        limit = max(1, min(limit, MAX_LIMIT))
        if offset < 0 or offset + limit > MAX_OFFSET:
            return _error(400, "Arguments Caused Error", 2002, errors=["Offset must be less than 10000"])
        page = items[offset : offset + limit]
        total = len(items) if request.query.get("total") == "true" else None
        more = offset + len(page) < len(items)
        return web.json_response({key: page, "limit": limit, "offset": offset, "more": more, "total": total})

    # --- handlers ---------------------------------------------------------------------------

    async def _list_users(self, request: web.Request) -> web.Response:
        # PagerDuty's `query` is a substring match on name or email
        needle = request.query.get("query", "").lower()
        users = [u for u in self.users.values() if needle in u.email.lower() or needle in u.name.lower()]
        return self._page(request, [self._user(u) for u in users], "users")

    async def _get_user(self, request: web.Request) -> web.Response:
        user = self.users.get(request.match_info["id"])
        if user is None:
            return _error(404, "Not Found", 2100)
        return web.json_response({"user": self._user(user)})

    async def _list_incidents(self, request: web.Request) -> web.Response:
        q = request.query
        statuses, assigned = set(q.getall("statuses[]", [])), set(q.getall("user_ids[]", []))
        services, urgencies = set(q.getall("service_ids[]", [])), set(q.getall("urgencies[]", []))
        found = [
            self._incident(i)
            for i in self.incidents.values()
            if (not statuses or i.status in statuses)
            and (not assigned or assigned.intersection(i.assigned_to))
            and (not services or i.service_id in services)
            and (not urgencies or i.urgency in urgencies)
        ]
        return self._page(request, found, "incidents")

    async def _get_incident(self, request: web.Request) -> web.Response:
        incident = self._find_incident(request.match_info["id"])
        if incident is None:
            return _error(404, "Not Found", 2100)
        return web.json_response({"incident": self._incident(incident)})

    async def _list_notes(self, request: web.Request) -> web.Response:
        incident = self._find_incident(request.match_info["id"])
        if incident is None:
            return _error(404, "Not Found", 2100)
        return web.json_response({"notes": incident.notes})

    async def _add_note(self, request: web.Request) -> web.Response:
        incident = self._find_incident(request.match_info["id"])
        if incident is None:
            return _error(404, "Not Found", 2100)
        sender = request.headers.get("From", "").strip().lower()
        if not sender:
            message = 'You must specify a user\'s email address in the "From" header to perform this action'
            return _error(400, message, 2001)
        author = next((u for u in self.users.values() if u.email.lower() == sender), None)
        if author is None:
            return _error(400, "Requester User Not Found", 1008)
        try:
            content = (await request.json())["note"]["content"]
        except (ValueError, KeyError, TypeError):
            content = None
        if not isinstance(content, str) or not content.strip():
            return _error(400, "Invalid Input Provided", 2001, errors=["Note content must be present"])
        if len(incident.notes) >= MAX_NOTES:
            return _error(400, "Invalid Input Provided", 2001, errors=["Incident has reached the note limit"])
        now = iso(self.clock.now())
        note = {
            "id": self._next_id("PN"),
            "user": self._ref("user", author.id, author.name),
            "channel": {"summary": "The PagerDuty website or APIs"},
            "content": content,
            "created_at": now,
            "updated_at": now,
        }
        incident.notes.append(note)
        return web.json_response({"note": note})

    async def _list_oncalls(self, request: web.Request) -> web.Response:
        q = request.query
        users, policies = set(q.getall("user_ids[]", [])), set(q.getall("escalation_policy_ids[]", []))
        schedules = set(q.getall("schedule_ids[]", []))
        expand_users = "users" in q.getall("include[]", [])
        now = self.clock.now()
        try:
            since = datetime.fromisoformat(q["since"]) if "since" in q else now
            until = datetime.fromisoformat(q["until"]) if "until" in q else now
        except ValueError:
            return _error(400, "Invalid Input Provided", 2004, errors=["since and until must be ISO 8601 times"])
        found = [
            self._oncall(o, expand_users=expand_users)
            for o in sorted(self.oncall_entries, key=lambda o: (o.escalation_policy_id, o.level))
            if (o.start is None or o.start <= until)
            and (o.end is None or o.end > since)
            and (not users or o.user_id in users)
            and (not policies or o.escalation_policy_id in policies)
            and (not schedules or o.schedule_id in schedules)
        ]
        return self._page(request, found, "oncalls")
