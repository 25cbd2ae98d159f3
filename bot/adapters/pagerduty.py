"""The PagerDuty REST API v2 client: Ackgate's adapter behind :class:`bot.core.ports.PagerDutyDirectory`.

One pooled ``httpx.AsyncClient`` per process. Every public call fails closed within ``deadline``
seconds: 429, 5xx and transport errors are retried with backoff (honouring ``ratelimit-reset`` and
``Retry-After``) only while the deadline allows, then :class:`~bot.core.errors.PagerDutyUnavailable`.
Users by email change rarely and are cached for ``user_cache_ttl`` seconds; on-call entries and
"no such user" for ``cache_ttl`` (:class:`bot.adapters.cache.CoalescingCache`); identical concurrent lookups share one HTTP call.
Acknowledgements and incidents are never cached, because the gate must see an unacknowledge at once.
A sliding-window limiter keeps us under PagerDuty's 960 requests/minute per token; a budget slot is
taken only once one of the pooled connections is ours, so slots go to calls actually sent. Retries
follow :mod:`bot.adapters.retrying`. The token never appears in a message or a log line.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import SecretStr

from bot.adapters.cache import CoalescingCache
from bot.adapters.retrying import Backoff, Retryable, retry, wait_hint
from bot.adapters.throttling import Monotonic, RateBudgetExceeded, Sleep, SlidingWindowLimiter
from bot.core.domain import Incident, OnCall, PagerDutyUser
from bot.core.errors import ConfigError, PagerDutyAuthError, PagerDutyError, PagerDutyNotFound, PagerDutyUnavailable

log = logging.getLogger(__name__)

ACCEPT = "application/vnd.pagerduty+json;version=2"
PAGE_LIMIT = 100  # PagerDuty's maximum; the default of 25 quadruples the calls
RETRYABLE = frozenset({408, 429})  # plus every 5xx
MAX_OFFSET = 10_000  # classic pagination refuses offset + limit beyond this (400, code 2002)
MAX_CONNECTIONS = 20
FIRST_BACKOFF_SECONDS = 0.1

CallHook = Callable[[str, str, int | None, float], None]
"""``on_call(method, path_template, status or None, seconds)``, once per HTTP attempt."""
Params = list[tuple[str, str | int]]
Json = dict[str, Any]
T = TypeVar("T")


class PagerDutyClient:
    """Implements :class:`bot.core.ports.PagerDutyDirectory`, plus :meth:`add_note`.

    ``monotonic`` and ``sleep`` drive deadlines, backoff, the cache and the limiter, so tests can
    move time by hand. ``on_call`` observes every HTTP attempt (for Prometheus).
    """

    def __init__(
        self,
        token: SecretStr,
        *,
        base_url: str,
        from_email: str | None = None,
        timeout: float = 4.0,
        deadline: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
        monotonic: Monotonic = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        cache_ttl: float = 30.0,
        user_cache_ttl: float = 3600.0,
        requests_per_minute: int = 900,
        max_attempts: int = 4,
        on_call: CallHook | None = None,
    ) -> None:
        secret = token.get_secret_value()
        if not secret or not secret.isprintable() or any(c.isspace() for c in secret):
            # httpx would echo an illegal header value in its exception, token and all
            raise ConfigError(
                "PAGERDUTY_API_TOKEN is empty or contains spaces or control characters; paste the key again."
            )
        self._secret = secret
        self._from_email = from_email
        self._timeout = timeout
        self._deadline = deadline
        self._monotonic = monotonic
        self._sleep = sleep
        self._policy = Backoff(max_attempts=max(1, max_attempts), first=FIRST_BACKOFF_SECONDS, hint_replaces=True)
        self._on_call = on_call
        self._limiter = SlidingWindowLimiter(requests_per_minute, monotonic=monotonic, sleep=sleep)
        self._connections = asyncio.Semaphore(MAX_CONNECTIONS)
        self._cache = CoalescingCache(monotonic=monotonic)
        self._cache_ttl = cache_ttl
        self._user_cache_ttl = user_cache_ttl
        self._http = httpx.AsyncClient(
            base_url=base_url,
            headers={"Accept": ACCEPT, "Authorization": f"Token token={secret}"},
            timeout=timeout,
            transport=transport,
            follow_redirects=False,
            limits=httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=10),
        )

    async def aclose(self) -> None:
        await self._cache.aclose()
        await self._http.aclose()

    async def __aenter__(self) -> PagerDutyClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # --- the port ---------------------------------------------------------------------------

    async def user_by_email(self, email: str) -> PagerDutyUser | None:
        wanted = email.strip().lower()
        if not wanted:
            return None
        # "no such user" lives only ``cache_ttl``: someone just added to PagerDuty is found soon
        return await self._cache.get(("user", wanted), lambda: self._find_user(wanted), ttl=self._user_ttl)

    def _user_ttl(self, user: PagerDutyUser | None) -> float:
        return self._cache_ttl if user is None else self._user_cache_ttl

    async def acknowledged_incidents(
        self, user_id: str, *, service_ids: Sequence[str] = (), urgencies: Sequence[str] = ()
    ) -> list[Incident]:
        services, levels = tuple(sorted(set(service_ids))), tuple(sorted(set(urgencies)))
        key = ("acked", user_id, services, levels)
        # a copy each: callers share one result and must not see each other's changes
        return list(await self._cache.get(key, lambda: self._acked(user_id, services, levels), ttl=0))

    async def oncalls(
        self,
        *,
        user_ids: Sequence[str] = (),
        escalation_policy_ids: Sequence[str] = (),
        schedule_ids: Sequence[str] = (),
    ) -> list[OnCall]:
        users, policies, schedules = (
            tuple(sorted(set(ids))) for ids in (user_ids, escalation_policy_ids, schedule_ids)
        )
        key = ("oncalls", users, policies, schedules)
        return list(await self._cache.get(key, lambda: self._oncalls(users, policies, schedules), ttl=self._cache_ttl))

    async def incident(self, incident_id: str) -> Incident:
        return await self._cache.get(("incident", incident_id), lambda: self._incident(incident_id), ttl=0)

    async def ping(self) -> None:
        await self._request("GET", "/users", "/users", params=[("limit", 1)], deadline=self._deadline_from_now())

    async def add_note(self, incident_id: str, content: str) -> None:
        """Add a note to an incident, recorded as written by ``from_email``."""
        if not self._from_email:
            raise PagerDutyError(
                "Ackgate cannot write PagerDuty notes: set PAGERDUTY_FROM_EMAIL to the email of the PagerDuty user "
                "to record as their author."
            )
        await self._request(
            "POST",
            "/incidents/{id}/notes",
            f"/incidents/{_segment(incident_id)}/notes",
            body={"note": {"content": content}},
            headers={"From": self._from_email},
            deadline=self._deadline_from_now(),
            not_found=f"PagerDuty has no incident {incident_id[:40]}.",
        )

    # --- the calls behind the port ----------------------------------------------------------

    async def _find_user(self, wanted: str) -> PagerDutyUser | None:
        # `query` is a substring match on name or email, so compare exactly ourselves.
        def matches(raw: Json) -> bool:
            return str(raw.get("email", "")).lower() == wanted

        found = await self._paginate("/users", [("query", wanted)], "users", stop_at=matches)
        for raw in found:
            if matches(raw):
                return _mapped(_user, raw)
        return None

    async def _acked(self, user_id: str, services: tuple[str, ...], urgencies: tuple[str, ...]) -> list[Incident]:
        params: Params = [("user_ids[]", user_id), ("statuses[]", "acknowledged"), ("date_range", "all")]
        params += [("service_ids[]", s) for s in services] + [("urgencies[]", u) for u in urgencies]
        # date_range=all: an incident acknowledged more than a month ago still counts (default window is 1 month)
        raws = await self._paginate("/incidents", params, "incidents")
        incidents = [_mapped(_incident, raw) for raw in raws]
        # user_ids[] filters on *assignment*; only an acknowledgement by this user counts
        mine = [i for i in incidents if user_id in i.acknowledger_ids]
        return sorted(mine, key=lambda i: i.number, reverse=True)

    async def _oncalls(
        self, users: tuple[str, ...], policies: tuple[str, ...], schedules: tuple[str, ...]
    ) -> list[OnCall]:
        params: Params = [("include[]", "users")]
        params += [("user_ids[]", u) for u in users] + [("escalation_policy_ids[]", p) for p in policies]
        params += [("schedule_ids[]", s) for s in schedules]
        raws = await self._paginate("/oncalls", params, "oncalls")
        return [_mapped(_oncall, raw) for raw in raws]

    async def _incident(self, incident_id: str) -> Incident:
        body = await self._request(
            "GET",
            "/incidents/{id}",
            f"/incidents/{_segment(incident_id)}",
            deadline=self._deadline_from_now(),
            not_found=f"PagerDuty has no incident {incident_id[:40]}.",
        )
        return _mapped(_incident, body.get("incident"))

    async def _paginate(
        self, path: str, params: Params, key: str, *, stop_at: Callable[[Json], bool] | None = None
    ) -> list[Json]:
        """Every item of a classic (limit/offset/more) listing, within one deadline."""
        deadline = self._deadline_from_now()
        items: list[Json] = []
        offset = 0
        while offset + PAGE_LIMIT <= MAX_OFFSET:
            page = await self._request(
                "GET", path, path, params=[*params, ("limit", PAGE_LIMIT), ("offset", offset)], deadline=deadline
            )
            batch = page.get(key)
            if not isinstance(batch, list):
                raise PagerDutyError(f"PagerDuty answered GET {path} without a '{key}' list; Ackgate cannot use it.")
            items.extend(batch)
            if not batch or not page.get("more") or (stop_at and any(stop_at(i) for i in batch)):
                return items
            offset += len(batch)  # by what came back, not by the limit we asked for
        log.warning("PagerDuty GET %s has more than %d results; using the first %d", path, MAX_OFFSET, len(items))
        return items

    # --- one request, retried within the deadline -------------------------------------------

    def _deadline_from_now(self) -> float:
        return self._monotonic() + self._deadline

    async def _request(
        self,
        method: str,
        template: str,
        path: str,
        *,
        deadline: float,
        params: Params | None = None,
        body: Json | None = None,
        headers: dict[str, str] | None = None,
        not_found: str = "PagerDuty has no such object.",
    ) -> Json:
        where = f"{method} {template}"
        last = _NO_TIME

        async def attempt() -> Json:
            nonlocal last
            try:
                response = await self._send(method, template, path, params, body, headers, deadline)
            except _OutOfTime:
                raise _unavailable(where, last) from None  # why the earlier attempts failed, if they did
            except (httpx.TransportError, TimeoutError) as exc:
                reason = (
                    "it timed out" if isinstance(exc, httpx.TimeoutException | TimeoutError) else "it was unreachable"
                )
                # a POST that may have reached PagerDuty is not repeated: the note would appear twice
                if method != "GET" and not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
                    raise _unavailable(where, reason) from exc
                if last != _NO_TIME and self._monotonic() >= deadline:
                    # our own deadline cut this attempt short: PagerDuty's earlier answer is the reason
                    raise _unavailable(where, last) from exc
                last = reason
                raise Retryable(reason) from exc
            status = response.status_code
            if status < 300:
                return self._json(response, where)
            if status in (401, 403):
                raise PagerDutyAuthError(_auth_message(status))
            if status == 404:
                raise PagerDutyNotFound(not_found)
            if status not in RETRYABLE and status < 500:
                raise PagerDutyError(self._refusal(response, where))  # the same request would fail again
            last = f"HTTP {status}"
            if method != "GET" and status != 429:
                raise _unavailable(where, last)  # it may have been applied: repeating could write twice
            raise Retryable(last, wait=wait_hint(response.headers))

        def on_retry(attempt: int, failure: Retryable, delay: float) -> None:
            log.warning("PagerDuty %s failed (%s); retry %d in %.2fs", where, failure.reason, attempt, delay)

        try:
            return await retry(
                attempt,
                policy=self._policy,
                sleep=self._sleep,
                monotonic=self._monotonic,
                deadline=deadline,
                on_retry=on_retry,
            )
        except Retryable:
            raise _unavailable(where, last) from None

    async def _send(
        self,
        method: str,
        template: str,
        path: str,
        params: Params | None,
        body: Json | None,
        headers: dict[str, str] | None,
        deadline: float,
    ) -> httpx.Response:
        """One attempt: a pooled connection first, then a budget slot, then the call, all within ``deadline``."""
        try:
            async with asyncio.timeout(max(0.0, deadline - self._monotonic())):
                await self._connections.acquire()
        except TimeoutError:
            raise _OutOfTime from None
        try:
            if deadline <= self._monotonic():
                raise _OutOfTime  # the connection came too late: spend no budget on a call we won't send
            try:
                await self._limiter.acquire(deadline=deadline)
            except RateBudgetExceeded as exc:
                if exc.wait <= 0 or deadline <= self._monotonic():
                    raise _OutOfTime from exc  # the deadline passed, not the budget: a slot was free
                raise PagerDutyUnavailable(
                    f"Ackgate has used its PagerDuty request budget; try again in {exc.wait:.0f} seconds."
                ) from exc
            remaining = deadline - self._monotonic()
            if remaining <= 0:
                raise _OutOfTime
            started = time.perf_counter()  # real seconds for metrics, whatever clock drives deadlines
            status: int | None = None
            try:
                # httpx times each phase separately; asyncio.timeout bounds the whole exchange
                async with asyncio.timeout(remaining):
                    response = await self._http.request(
                        method,
                        path,
                        params=tuple(params or ()),
                        json=body,
                        headers=headers,
                        timeout=min(self._timeout, remaining),
                    )
                status = response.status_code
                return response
            finally:
                self._record(method, template, status, time.perf_counter() - started)
        finally:
            self._connections.release()

    def _record(self, method: str, template: str, status: int | None, seconds: float) -> None:
        if self._on_call is None:
            return
        try:
            self._on_call(method, template, status, seconds)
        except Exception:
            log.exception("The PagerDuty metrics hook failed; the call itself is unaffected")

    def _json(self, response: httpx.Response, where: str) -> Json:
        try:
            data = response.json()
        except ValueError as exc:
            raise PagerDutyError(f"PagerDuty answered {where} with a body that is not JSON.") from exc
        if not isinstance(data, dict):
            raise PagerDutyError(f"PagerDuty answered {where} with an unexpected body.")
        return data

    def _refusal(self, response: httpx.Response, where: str) -> str:
        detail = f"HTTP {response.status_code}"
        try:
            error = response.json().get("error") or {}
            parts = [str(error.get("message") or "").strip(), *(str(e) for e in error.get("errors") or [])]
            text = "; ".join(p for p in parts if p)
            if text:
                detail = f"{text} (HTTP {response.status_code}, code {error.get('code', 'none')})"
        except (ValueError, AttributeError, TypeError):
            pass
        detail = detail.replace(self._secret, "[redacted]")[:300]  # never echo the token back
        return f"PagerDuty refused {where}: {detail}."


def _segment(value: str) -> str:
    # ids come from chat: quote everything so "../users" cannot change which endpoint we call
    return quote(value, safe="")


def _auth_message(status: int) -> str:
    if status == 401:
        return "PagerDuty rejected Ackgate's API token (HTTP 401). An admin should check PAGERDUTY_API_TOKEN."
    return (
        "PagerDuty refused Ackgate's API token for this request (HTTP 403): it lacks the needed scope or access. "
        "An admin should check PAGERDUTY_API_TOKEN."
    )


_NO_TIME = "no time was left"


class _OutOfTime(Exception):
    """No attempt could start before the deadline: the call fails closed with the last reason known."""


def _unavailable(where: str, reason: str) -> PagerDutyUnavailable:
    if reason == "HTTP 429":
        return PagerDutyUnavailable(f"PagerDuty is rate limiting Ackgate ({where}: HTTP 429). Try again in a minute.")
    return PagerDutyUnavailable(f"PagerDuty did not answer {where} in time ({reason}). Try again in a minute.")


def _mapped(build: Callable[[Json], T], raw: Any) -> T:
    try:
        return build(raw)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise PagerDutyError("PagerDuty answered with data Ackgate could not read; it was not used.") from exc


def _user(raw: Json) -> PagerDutyUser:
    return PagerDutyUser(id=raw["id"], email=raw["email"], name=raw.get("name") or "")


def _incident(raw: Json) -> Incident:
    service = raw.get("service") or {}
    acks = raw.get("acknowledgements") or []
    return Incident(
        id=raw["id"],
        number=int(raw["incident_number"]),
        title=raw.get("title") or raw.get("summary") or "",
        status=raw["status"],
        html_url=raw.get("html_url") or "",
        service_id=service.get("id") or "",
        service_name=service.get("summary") or service.get("name") or "",
        urgency=raw.get("urgency") or "",
        acknowledger_ids=tuple(a["acknowledger"]["id"] for a in acks if a.get("acknowledger")),
    )


def _oncall(raw: Json) -> OnCall:
    user, schedule = raw["user"], raw.get("schedule")
    return OnCall(
        user_id=user["id"],
        user_email=user.get("email") or "",
        escalation_policy_id=raw["escalation_policy"]["id"],
        escalation_level=int(raw["escalation_level"]),
        schedule_id=schedule["id"] if schedule else None,
        start=_when(raw.get("start")),
        end=_when(raw.get("end")),
    )


def _when(value: str | None) -> datetime | None:
    if not value:
        return None  # null start/end: a permanent on-call
    parsed = datetime.fromisoformat(value)
    return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)
