"""A webhook provisioner's receiving end that keeps the whole history: every grant and revoke call,
which ``serve`` process sent it, when, and with which ``Idempotency-Key``.

Each ``serve`` process (each generation of each replica) is given its own URL path,
``/provision/<sender>``, so a call can be traced to the process that made it. Like a real
idempotent receiver it applies each key once and answers 2xx to a repeat; the reliability checks
then decide which repeats were legitimate retries (the sender died before it could know the answer)
and which were duplicates.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass

from aiohttp import web
from pydantic import SecretStr

from bot.adapters.provisioners import verify_signature
from bot.core.clock import SystemClock


@dataclass(frozen=True)
class ProvisionerCall:
    sender: str  # the serve process (``replica.generation``) that sent it
    grant_id: str
    action: str  # "grant" | "revoke"
    key: str  # Idempotency-Key
    at: float  # time.time() when it arrived
    status: int  # what the receiver answered
    applied: bool  # the first successful call for its key: the one that changed access


class RecordingReceiver:
    """``fail_every`` > 0 answers 503 to every n-th call (a provisioner having a bad moment)."""

    def __init__(self, secret: str, *, fail_every: int = 0, latency: tuple[float, float] = (0.02, 0.15)) -> None:
        self.secret = SecretStr(secret)
        self.fail_every = fail_every
        self.latency = latency  # a real provisioner is a remote service: it takes a moment to answer
        self._rng = random.Random()
        self.calls: list[ProvisionerCall] = []
        self.bad_signatures = 0
        self._applied: set[str] = set()
        self.granted: set[str] = set()  # grants whose access is real right now
        self._clock = SystemClock()
        self._runner: web.AppRunner | None = None
        self.root = ""

    def url_for(self, sender: str) -> str:
        return f"{self.root}/provision/{sender}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/provision/{sender}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        host, port = self._runner.addresses[0][:2]
        self.root = f"http://{host}:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        try:
            body = await request.read()
        except ConnectionResetError:  # the sender was killed half-way through its request
            return web.Response(status=400)
        if not verify_signature(
            self.secret,
            request.headers.get("X-Ackgate-Timestamp", ""),
            body,
            request.headers.get("X-Ackgate-Signature", ""),
            now=self._clock.now(),
        ):
            self.bad_signatures += 1
            return web.Response(status=401, text="bad signature")
        data = json.loads(body)
        await asyncio.sleep(self._rng.uniform(*self.latency))
        key = request.headers.get("Idempotency-Key", "")
        grant_id, action = str(data["grant_id"]), str(data["action"])
        status = 200
        if self.fail_every and (len(self.calls) + 1) % self.fail_every == 0:
            status = 503
        applied = status == 200 and key not in self._applied
        if applied:
            self._applied.add(key)
            if action == "grant":
                self.granted.add(grant_id)
            else:
                self.granted.discard(grant_id)
        self.calls.append(
            ProvisionerCall(request.match_info["sender"], grant_id, action, key, time.time(), status, applied)
        )
        return web.json_response({"ok": status == 200}, status=status)

    def successful(self, grant_id: str, action: str) -> list[ProvisionerCall]:
        return [c for c in self.calls if c.grant_id == grant_id and c.action == action and c.status == 200]
