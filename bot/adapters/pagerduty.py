"""The PagerDuty REST API v2 client: Ackgate's adapter behind :class:`bot.core.ports.PagerDutyDirectory`.

At most :data:`MAX_CONNECTIONS` calls at once, each over a keep-alive connection of one
``httpx.AsyncClient`` whose transport is aiohttp's connection pool (:func:`aiohttp_transport`,
from httpx-aiohttp). Once PagerDuty has been asked, every public call fails closed within ``deadline``
seconds: 429, 5xx and transport errors are retried with backoff (honouring ``ratelimit-reset`` and
``Retry-After``) only while the deadline allows, then :class:`~bot.core.errors.PagerDutyUnavailable`.

Users by email change rarely and are cached for ``user_cache_ttl`` seconds (an hour) in a cache of
their own; on-call entries and "no such user" for ``cache_ttl``; identical concurrent lookups share
one HTTP call (:class:`bot.adapters.cache.CoalescingCache`). When many different users are looked up at once
(a burst), one sweep of the user list (a page per 100 users) answers them all instead of a call
each. A user's acknowledged incidents are kept ``incident_cache_ttl`` seconds (5), and only when
there are some: a "none" is asked again every time, so someone who has just acknowledged is never
refused from the cache, and ``fresh=True`` (the gate's, when the reason names an incident the kept
list lacks) asks again. :meth:`PagerDutyClient.forget_acknowledgements` drops them all (an incident
webhook arrived). Incidents by id are never cached. Lookups for different users waiting at the
same time share a call (``user_ids[]`` holds them all, and each user keeps only the incidents
assigned to and acknowledged by them), with at most :data:`BATCH_CALLS` such calls in flight per
filter, so one warm request costs at most one call.

A sliding-window limiter keeps us under PagerDuty's 960 requests/minute per token, paced (a burst
of :data:`BURST_FRACTION`-th of the budget, then its average rate), and an incident batch waits for
a free slot before it closes, so under a spent budget the lookups arriving meanwhile share the
call. A budget slot is taken only once one of the pooled connections is ours, so slots go to calls
actually sent. When the budget is used up, a call waits its turn (up to ``queue_seconds``) instead
of being refused, and the deadline counts from when it is sent; a caller that has waited
:data:`QUEUE_NOTE_SECONDS` is told so once (:func:`bot.adapters.throttling.notify_when_queued`).
Retries follow :mod:`bot.adapters.retrying`. The token never appears in a message or a log line.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from http.cookiejar import CookieJar
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport
from pydantic import SecretStr

from bot.adapters.cache import CoalescingCache
from bot.adapters.retrying import Backoff, Retryable, retry, wait_hint
from bot.adapters.throttling import Monotonic, RateBudgetExceeded, Sleep, SlidingWindowLimiter, queued_notice
from bot.core.domain import Incident, OnCall, PagerDutyUser
from bot.core.errors import ConfigError, PagerDutyAuthError, PagerDutyError, PagerDutyNotFound, PagerDutyUnavailable

log = logging.getLogger(__name__)

ACCEPT = "application/vnd.pagerduty+json;version=2"
PAGE_LIMIT = 100  # PagerDuty's maximum; the default of 25 quadruples the calls
RETRYABLE = frozenset({408, 429})  # plus every 5xx
MAX_OFFSET = 10_000  # classic pagination refuses offset + limit beyond this (400, code 2002)
MAX_CONNECTIONS = 64  # 900 calls a minute at up to 4 s each need at most 60 at once
FIRST_BACKOFF_SECONDS = 0.1
QUEUE_SECONDS = 30.0  # how long a call may wait for the request budget (half a Slack command's lease)
QUEUE_NOTE_SECONDS = 3.0  # a caller waiting this long in the budget's queue is told once
MAX_BATCH = 50  # users in one GET /incidents (user_ids[]); keeps the URL short
BATCH_CALLS = 4  # GET /incidents calls in flight per filter; lookups arriving meanwhile share the next
# The budget is paced: this many calls may start at once (at least BURST_MIN), then one every
# minute / budget (900 a minute: 30 at once, then one each 67 ms), so a busy minute cannot spend
# it all in its first seconds; a batch waits for its slot before it closes, so lookups gather.
BURST_FRACTION = 30
BURST_MIN = 10
SWEEP_AFTER = 10  # different users looked up within SWEEP_WINDOW: the next miss sweeps the user list
SWEEP_WINDOW = 5.0
USER_CACHE_ENTRIES = 100_000

CallHook = Callable[[str, str, int | None, float], None]
"""``on_call(method, path_template, status or None, seconds)``, once per HTTP attempt."""
Params = list[tuple[str, str | int]]
Json = dict[str, Any]
T = TypeVar("T")


def aiohttp_transport(verify: ssl.SSLContext | bool = True) -> httpx.AsyncBaseTransport:
    """httpx's requests sent over aiohttp's connection pool (httpx-aiohttp's transport).

    httpcore's own pool keeps its books in Python over anyio each time a request starts or ends:
    measured on loopback, 0.9 ms of CPU a call alone and 2.5 ms with 16 in flight, against 0.6 ms
    through aiohttp's pool (``bench/pd_client.py``). The session is made on the running loop at
    the first call; cookies stay httpx's (aiohttp's jar is a dummy, so none is sent twice)."""
    tls = verify if isinstance(verify, ssl.SSLContext) else httpx.create_ssl_context(verify=verify)

    def session() -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=MAX_CONNECTIONS, ssl=tls),
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    return AiohttpTransport(verify=tls, client=session)


def _transport_failure(exc: Exception) -> tuple[str, bool]:
    """Why a call got no answer, and whether it surely never reached PagerDuty (safe to repeat).

    httpx-aiohttp raises ``ConnectTimeout`` for every aiohttp connection error, a connection
    dropped after the request was written included: the aiohttp error it was raised from tells a
    refused or timed-out connect (never sent) from the rest (maybe sent)."""
    cause = exc.__cause__
    if isinstance(cause, aiohttp.ClientError):
        timed_out = isinstance(cause, aiohttp.ServerTimeoutError)
        unsent = isinstance(cause, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError)
    else:  # httpx's own transport (tests inject one) or our deadline
        timed_out = isinstance(exc, httpx.TimeoutException | TimeoutError)
        unsent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
    return ("it timed out" if timed_out else "it was unreachable"), unsent


class PagerDutyClient:
    """Implements :class:`bot.core.ports.PagerDutyDirectory`, plus :meth:`add_note`.

    ``monotonic`` and ``sleep`` drive deadlines, backoff, the cache and the limiter, so tests can
    move time by hand. ``on_call`` observes every HTTP attempt (for Prometheus). ``verify`` is
    httpx's: a TLS context shared with other clients saves reading the CA bundle again.
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
        verify: ssl.SSLContext | bool = True,
        monotonic: Monotonic = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        cache_ttl: float = 30.0,
        user_cache_ttl: float = 3600.0,
        incident_cache_ttl: float = 5.0,
        requests_per_minute: int = 900,
        max_attempts: int = 4,
        on_call: CallHook | None = None,
        queue_seconds: float = QUEUE_SECONDS,
        budget_window: float = 60.0,
        budget_burst: int | None = None,
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
        self._limiter = SlidingWindowLimiter(
            requests_per_minute,
            window=budget_window,
            burst=budget_burst if budget_burst is not None else max(BURST_MIN, requests_per_minute // BURST_FRACTION),
            monotonic=monotonic,
            sleep=sleep,
        )
        self._connections = asyncio.Semaphore(MAX_CONNECTIONS)
        self._queue_seconds = queue_seconds
        self._cache = CoalescingCache(monotonic=monotonic)
        self._users = CoalescingCache(monotonic=monotonic, max_entries=USER_CACHE_ENTRIES)
        self._acks = CoalescingCache(monotonic=monotonic)
        self._cache_ttl = cache_ttl
        self._user_cache_ttl = user_cache_ttl
        self._incident_cache_ttl = incident_cache_ttl
        self._batches: dict[tuple[tuple[str, ...], tuple[str, ...]], _Batch] = {}
        self._recent_misses: list[float] = []  # when user lookups missed the cache, for SWEEP_AFTER
        if transport is None:
            transport = aiohttp_transport(verify)
        self._http = httpx.AsyncClient(
            base_url=base_url,
            headers={"Accept": ACCEPT, "Authorization": f"Token token={secret}"},
            timeout=timeout,
            transport=transport,
            follow_redirects=False,
            cookies=CookieJar(),
        )
        self._base_url = str(self._http.base_url).rstrip("/") + "/"
        self._headers = self._http.headers

    async def aclose(self) -> None:
        runners = [task for batch in self._batches.values() for task in batch.runners]
        for task in runners:
            task.cancel()
        await asyncio.gather(*runners, return_exceptions=True)
        await self._cache.aclose()
        await self._users.aclose()
        await self._acks.aclose()
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
        return await self._noted(self._users.get(("user", wanted), lambda: self._find_user(wanted), ttl=self._user_ttl))

    def _user_ttl(self, user: PagerDutyUser | None) -> float:
        return self._cache_ttl if user is None else self._user_cache_ttl

    async def acknowledged_incidents(
        self,
        user_id: str,
        *,
        service_ids: Sequence[str] = (),
        urgencies: Sequence[str] = (),
        fresh: bool = False,
    ) -> list[Incident]:
        services, levels = tuple(sorted(set(service_ids))), tuple(sorted(set(urgencies)))
        key = (user_id, services, levels)
        if fresh:
            self._acks.forget(key)
        found = self._acks.get(key, lambda: self._acked(user_id, services, levels), ttl=self._acked_ttl)
        # a copy each: callers share one result and must not see each other's changes
        return list(await self._noted(found))

    def _acked_ttl(self, incidents: list[Incident]) -> float:
        return self._incident_cache_ttl if incidents else 0.0

    def forget_acknowledgements(self) -> None:
        self._acks.clear()

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

    async def _noted(self, work: Awaitable[T]) -> T:
        """``work``, and the caller's queued notice once it has waited QUEUE_NOTE_SECONDS in the budget's queue."""
        notice = queued_notice()
        if notice is None:
            return await work
        loop = asyncio.get_running_loop()
        limiter = self._limiter

        def still_queued() -> None:
            # a slot reserved ahead, or none free now (a batch waits for its slot before closing)
            if limiter.backlog() > 0 or limiter.next_free() > 0:
                notice()

        handle = loop.call_later(QUEUE_NOTE_SECONDS, still_queued)
        try:
            return await work
        finally:
            handle.cancel()

    async def _find_user(self, wanted: str) -> PagerDutyUser | None:
        now = self._monotonic()
        self._recent_misses = [t for t in self._recent_misses if t > now - SWEEP_WINDOW][-SWEEP_AFTER:]
        self._recent_misses.append(now)
        if len(self._recent_misses) > SWEEP_AFTER:
            try:
                directory = await self._users.get(("directory",), self._sweep_users, ttl=SWEEP_WINDOW)
            except PagerDutyUnavailable:
                directory = {}  # the sweep failed: ask for this one user as usual
            if wanted in directory:
                return directory[wanted]
        return await self._query_user(wanted)

    async def _sweep_users(self) -> dict[str, PagerDutyUser]:
        """Every PagerDuty user, each kept in the user cache: a burst of new requesters costs a
        call per 100 users instead of one each. The first page says how many there are; the other
        pages are asked for at once."""
        deadline = self._deadline_from_now()
        first = await self._request(
            "GET",
            "/users",
            "/users",
            params=[("limit", PAGE_LIMIT), ("offset", 0), ("total", "true")],
            deadline=deadline,
        )
        total = min(int(first.get("total") or 0), MAX_OFFSET) if first.get("more") else 0
        rest = await asyncio.gather(
            *(
                self._request(
                    "GET", "/users", "/users", params=[("limit", PAGE_LIMIT), ("offset", at)], deadline=deadline
                )
                for at in range(PAGE_LIMIT, total, PAGE_LIMIT)
            )
        )
        found: dict[str, PagerDutyUser] = {}
        for page in (first, *rest):
            raws = page.get("users")
            if not isinstance(raws, list):
                raise PagerDutyError("PagerDuty answered GET /users without a 'users' list; Ackgate cannot use it.")
            for raw in raws:
                user = _mapped(_user, raw)
                email = user.email.strip().lower()
                found[email] = user
                self._users.put(("user", email), user, ttl=self._user_cache_ttl)
        log.info("Swept PagerDuty's user list for a burst of lookups: %d users", len(found))
        return found

    async def _query_user(self, wanted: str) -> PagerDutyUser | None:
        # `query` is a substring match on name or email, so compare exactly ourselves.
        def matches(raw: Json) -> bool:
            return str(raw.get("email", "")).lower() == wanted

        found = await self._paginate("/users", [("query", wanted)], "users", stop_at=matches)
        for raw in found:
            if matches(raw):
                return _mapped(_user, raw)
        return None

    async def _acked(self, user_id: str, services: tuple[str, ...], urgencies: tuple[str, ...]) -> list[Incident]:
        """This user's acknowledged incidents, in a call shared with other users' lookups waiting now."""
        batch = self._batches.get((services, urgencies))
        if batch is None:
            batch = self._batches[(services, urgencies)] = _Batch()
        waiter: asyncio.Future[list[Incident]] = asyncio.get_running_loop().create_future()
        batch.waiting[user_id] = waiter
        if batch.running < BATCH_CALLS:
            batch.running += 1
            runner = asyncio.create_task(self._run_batches(batch, services, urgencies))
            batch.runners.add(runner)
            runner.add_done_callback(batch.runners.discard)
        return await waiter

    async def _run_batches(self, batch: _Batch, services: tuple[str, ...], urgencies: tuple[str, ...]) -> None:
        try:
            while batch.waiting:
                # Under a spent budget, wait for the slot first and close the batch after: every
                # lookup arriving meanwhile rides in this call instead of taking a slot of its own.
                # A slot further off than the queue allows is not waited for here: the call is then
                # refused by the budget at once, as any call would be, so nobody waits twice.
                wait = self._limiter.next_free()
                if 0 < wait <= self._queue_seconds:
                    await self._sleep(wait)
                    if not batch.waiting:
                        break
                users = list(batch.waiting)[:MAX_BATCH]
                waiters = [batch.waiting.pop(u) for u in users]
                try:
                    found = await self._acked_by(users, services, urgencies)
                except BaseException as exc:
                    for waiter in waiters:
                        if not waiter.done():
                            waiter.set_exception(exc if isinstance(exc, Exception) else PagerDutyUnavailable(str(exc)))
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for user, waiter in zip(users, waiters, strict=True):
                    if not waiter.done():
                        waiter.set_result(found.get(user, []))
        finally:
            batch.running -= 1

    async def _acked_by(
        self, users: list[str], services: tuple[str, ...], urgencies: tuple[str, ...]
    ) -> dict[str, list[Incident]]:
        params: Params = [("user_ids[]", u) for u in users]
        params += [("statuses[]", "acknowledged"), ("date_range", "all")]
        params += [("service_ids[]", s) for s in services] + [("urgencies[]", u) for u in urgencies]
        # date_range=all: an incident acknowledged more than a month ago still counts (default window is 1 month)
        raws = await self._paginate("/incidents", params, "incidents")
        found: dict[str, list[Incident]] = {u: [] for u in users}
        for raw in raws:
            incident = _mapped(_incident, raw)
            # user_ids[] filters on *assignment* (to any of them): only an acknowledgement by this
            # user counts, and (with several users asked at once) only an assignment to this user
            assigned = _assignees(raw) if len(users) > 1 else frozenset(users)
            for user in incident.acknowledger_ids:
                if user in found and user in assigned:
                    found[user].append(incident)
        return {u: sorted(mine, key=lambda i: i.number, reverse=True) for u, mine in found.items()}

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
                reason, unsent = _transport_failure(exc)
                # a POST that may have reached PagerDuty is not repeated: the note would appear twice
                if method != "GET" and not unsent:
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
        """One attempt: a pooled connection first, then a budget slot, then the call, all within
        ``deadline``; a slot not free now is waited for (up to ``queue_seconds``), and a call that
        waited is sent with the whole timeout."""
        try:
            async with asyncio.timeout(max(0.0, deadline - self._monotonic())):
                await self._connections.acquire()
        except TimeoutError:
            raise _OutOfTime from None
        try:
            now = self._monotonic()
            if deadline <= now:
                raise _OutOfTime  # the connection came too late: spend no budget on a call we won't send
            try:
                await self._limiter.acquire(deadline=max(deadline, now + self._queue_seconds))
            except RateBudgetExceeded as exc:
                if exc.wait <= 0 or deadline <= self._monotonic():
                    raise _OutOfTime from exc  # the deadline passed, not the budget: a slot was free
                raise PagerDutyUnavailable(
                    f"Ackgate has used its PagerDuty request budget; try again in {exc.wait:.0f} seconds."
                ) from exc
            if self._monotonic() > now:  # it waited its turn in the queue: PagerDuty has not been asked yet
                deadline = max(deadline, self._monotonic() + self._timeout)
            remaining = deadline - self._monotonic()
            if remaining <= 0:
                raise _OutOfTime
            started = time.perf_counter()  # real seconds for metrics, whatever clock drives deadlines
            status: int | None = None
            try:
                # httpx times each phase separately; asyncio.timeout bounds the whole exchange
                async with asyncio.timeout(remaining):
                    request = self._build(method, path, params, body, headers, min(self._timeout, remaining))
                    response = await self._http.send(request)
                status = response.status_code
                return response
            finally:
                self._record(method, template, status, time.perf_counter() - started)
        finally:
            self._connections.release()

    def _build(
        self,
        method: str,
        path: str,
        params: Params | None,
        body: Json | None,
        headers: dict[str, str] | None,
        timeout: float,
    ) -> httpx.Request:
        """The request ``client.build_request`` would make, the URL parsed once instead of three times."""
        url = self._base_url + path.lstrip("/")
        if params:
            url += "?" + str(httpx.QueryParams(tuple(params)))
        merged = self._headers
        if headers:
            merged = merged.copy()
            merged.update(headers)
        return httpx.Request(
            method,
            url,
            json=body,
            headers=merged,
            cookies=self._http.cookies or None,  # any the client was sent, as build_request adds them
            extensions={"timeout": {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}},
        )

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
    # ids come from chat: quote everything so "../users" cannot change which endpoint we call. A
    # dot segment cannot be quoted (httpx and yarl both read "%2E%2E" as ".." and resolve it) and
    # an empty one would name the list: neither is an id, so neither is asked for.
    if not value.strip("."):
        raise PagerDutyNotFound(f"PagerDuty has no object named {value[:40]!r}.")  # only dots: cut, not echoed whole
    return quote(value, safe="")


def _auth_message(status: int) -> str:
    if status == 401:
        return "PagerDuty rejected Ackgate's API token (HTTP 401). An admin should check PAGERDUTY_API_TOKEN."
    return (
        "PagerDuty refused Ackgate's API token for this request (HTTP 403): it lacks the needed scope or access. "
        "An admin should check PAGERDUTY_API_TOKEN."
    )


_NO_TIME = "no time was left"


class _Batch:
    """Incident lookups for one filter: users waiting for the next shared call, and the calls running."""

    def __init__(self) -> None:
        self.waiting: dict[str, asyncio.Future[list[Incident]]] = {}
        self.running = 0
        self.runners: set[asyncio.Task[None]] = set()


def _assignees(raw: Json) -> frozenset[str]:
    return frozenset(
        str((a.get("assignee") or {}).get("id") or "") for a in raw.get("assignments") or [] if isinstance(a, dict)
    )


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
