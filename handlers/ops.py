"""Operations endpoints: ``GET /healthz`` (storage and PagerDuty reachability) and ``GET /metrics``."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from bot.errors import AckgateError
from bot.metrics import PrometheusMetrics
from bot.ports import PagerDutyDirectory, Store


class HealthCheck:
    """Checks storage every time and PagerDuty at most every ``pagerduty_every`` seconds (each check
    is a REST call against the same rate budget as requests)."""

    def __init__(self, *, store: Store, pagerduty: PagerDutyDirectory, pagerduty_every: float = 30.0) -> None:
        self.store = store
        self.pagerduty = pagerduty
        self.pagerduty_every = pagerduty_every
        self._pd_checked = float("-inf")
        self._pd_result = "unknown"

    async def _pagerduty(self) -> str:
        if time.monotonic() - self._pd_checked >= self.pagerduty_every:
            try:
                await asyncio.wait_for(self.pagerduty.ping(), timeout=5)
                self._pd_result = "ok"
            except (AckgateError, TimeoutError) as exc:
                self._pd_result = getattr(exc, "message", "timed out")
            self._pd_checked = time.monotonic()
        return self._pd_result

    async def handle(self, request: web.Request) -> web.Response:
        try:
            await self.store.ping()
            storage = "ok"
        except AckgateError as exc:
            storage = exc.message
        pagerduty = await self._pagerduty()
        healthy = storage == "ok" and pagerduty == "ok"
        body = {"status": "ok" if healthy else "degraded", "storage": storage, "pagerduty": pagerduty}
        return web.json_response(body, status=200 if healthy else 503)


def mount_ops(app: web.Application, *, health: HealthCheck, metrics: PrometheusMetrics, store: Store) -> None:
    async def metrics_handler(request: web.Request) -> web.Response:
        metrics.active_grants.set(await store.grants.count_active())
        return web.Response(body=metrics.render(), content_type="text/plain", charset="utf-8")

    app.router.add_get("/healthz", health.handle)
    app.router.add_get("/metrics", metrics_handler)
