"""Operations endpoints for orchestrators and monitoring.

- ``GET /livez``: liveness. 200 while the process serves HTTP; it checks nothing outside, so a
  PagerDuty or database outage never gets every replica restarted.
- ``GET /readyz`` (and its alias ``GET /healthz``): readiness. 200 when storage answers, else 503.
- ``GET /metrics``: Prometheus, including ``ackgate_dependency_up{dependency}`` for storage,
  PagerDuty and the chat platforms, which are checked at most every ``every`` seconds (a PagerDuty
  check is a REST call against the same rate budget as requests). ``/access admin status`` shows
  the same integrations, checked live.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

from bot.adapters.metrics import PrometheusMetrics
from bot.core.errors import AckgateError
from bot.core.ports import Store

Probe = Callable[[], Awaitable[object]]  # raises AckgateError (or times out) when the dependency is down

LIVENESS = "/livez"
READINESS = "/readyz"
HEALTHZ = "/healthz"  # kept for existing set-ups: the same as READINESS


class HealthCheck:
    """Storage is checked on every readiness probe; the other dependencies at most every ``every`` s."""

    def __init__(self, *, store: Store, probes: Mapping[str, Probe], every: float = 30.0) -> None:
        self.store = store
        self.probes = dict(probes)
        self.every = every
        self._checked: dict[str, float] = {}
        self._results: dict[str, str] = {name: "unknown" for name in self.probes}

    async def storage(self) -> str:
        try:
            await self.store.ping()
        except AckgateError as exc:
            return exc.message
        return "ok"

    async def _check(self, name: str, probe: Probe) -> None:
        if time.monotonic() - self._checked.get(name, float("-inf")) < self.every:
            return
        try:
            await asyncio.wait_for(probe(), timeout=5)
            self._results[name] = "ok"
        except AckgateError as exc:
            self._results[name] = exc.message
        except TimeoutError:
            self._results[name] = "timed out"
        self._checked[name] = time.monotonic()

    async def dependencies(self) -> dict[str, str]:
        """Each dependency's last result ("ok" or what failed), refreshed when due."""
        await asyncio.gather(*(self._check(name, probe) for name, probe in self.probes.items()))
        return dict(self._results)

    async def live(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def ready(self, request: web.Request) -> web.Response:
        storage = await self.storage()
        ok = storage == "ok"
        return web.json_response(
            {"status": "ok" if ok else "unavailable", "storage": storage}, status=200 if ok else 503
        )


def mount_ops(app: web.Application, *, health: HealthCheck, metrics: PrometheusMetrics, store: Store) -> None:
    async def metrics_handler(request: web.Request) -> web.Response:
        storage = await health.storage()
        metrics.dependency_up.labels(dependency="storage").set(1 if storage == "ok" else 0)
        for name, result in (await health.dependencies()).items():
            metrics.dependency_up.labels(dependency=name).set(1 if result == "ok" else 0)
        if storage == "ok":
            metrics.active_grants.set(await store.grants.count_active())
        return web.Response(body=metrics.render(), content_type="text/plain", charset="utf-8")

    app.router.add_get(LIVENESS, health.live)
    app.router.add_get(READINESS, health.ready)
    app.router.add_get(HEALTHZ, health.ready)
    app.router.add_get("/metrics", metrics_handler)
