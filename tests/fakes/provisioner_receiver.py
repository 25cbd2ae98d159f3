"""A webhook provisioner's receiving end, on loopback: it checks signatures the way a real
receiver must, remembers every delivery, and answers from a script of statuses."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from aiohttp import web
from pydantic import SecretStr

from bot.adapters.provisioners import verify_signature
from bot.core.clock import Clock


@dataclass(frozen=True)
class Delivery:
    headers: dict[str, str]
    body: bytes
    signature_valid: bool

    @property
    def json(self) -> dict[str, object]:
        data = json.loads(self.body)
        assert isinstance(data, dict)
        return data


@dataclass
class Answer:
    status: int = 200
    body: str = '{"ok": true}'
    headers: dict[str, str] = field(default_factory=dict)


class ProvisionerReceiver:
    """``script`` holds the answers to give, in order; once empty every call gets 200."""

    def __init__(self, secret: SecretStr, clock: Clock) -> None:
        self.secret = secret
        self.clock = clock
        self.deliveries: list[Delivery] = []
        self.script: list[Answer] = []
        self.granted: set[str] = set()  # grant ids currently provisioned, applied once per key
        self._applied: set[str] = set()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/ackgate", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/ackgate"
        return self.url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        valid = verify_signature(
            self.secret,
            request.headers.get("X-Ackgate-Timestamp", ""),
            body,
            request.headers.get("X-Ackgate-Signature", ""),
            now=self.clock.now(),
        )
        self.deliveries.append(Delivery(dict(request.headers), body, valid))
        if not valid:
            return web.Response(status=401, text="bad signature")
        answer = self.script.pop(0) if self.script else Answer()
        if 200 <= answer.status < 300:
            self._apply(request.headers["Idempotency-Key"], json.loads(body))
        return web.Response(status=answer.status, text=answer.body, headers=answer.headers)

    def _apply(self, key: str, data: dict[str, object]) -> None:
        if key in self._applied:
            return
        self._applied.add(key)
        grant_id = str(data["grant_id"])
        if data["action"] == "grant":
            self.granted.add(grant_id)
        else:
            self.granted.discard(grant_id)
