"""What every simulator and the stage share: ``start()``/``stop()`` and ``async with``, and a
loopback aiohttp server on a free port that knows its own address once started."""

from __future__ import annotations

import abc
from types import TracebackType
from typing import ClassVar, Self

from aiohttp import web


class AsyncService(abc.ABC):
    """Something started and stopped around a block: ``async with thing: ...``."""

    @abc.abstractmethod
    async def start(self) -> object: ...

    @abc.abstractmethod
    async def stop(self) -> None: ...

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


class LoopbackServer(AsyncService):
    """Serves :meth:`build_app` on ``host`` (127.0.0.1) at ``port`` (0: any free one).

    ``start()`` returns :attr:`base_url`, which is the server's root unless a subclass says otherwise.
    """

    #: Names the server in the error raised when its address is asked for before start().
    label: ClassVar[str] = "simulator"

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host, self._port = host, port
        self._runner: web.AppRunner | None = None
        self._root: str | None = None

    @abc.abstractmethod
    def build_app(self) -> web.Application:
        """The application to serve, with its routes; called by every start()."""

    def build_runner(self, app: web.Application) -> web.AppRunner:
        return web.AppRunner(app, access_log=None)

    async def start(self) -> str:
        self._runner = self.build_runner(self.build_app())
        await self._runner.setup()
        await web.TCPSite(self._runner, self._host, self._port).start()
        host, port = self._runner.addresses[0][:2]
        self._root = f"http://{host}:{port}"
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def root_url(self) -> str:
        """``http://127.0.0.1:<port>``, without a trailing slash."""
        if self._root is None:
            raise RuntimeError(f"The {self.label} is not started; await start() first.")
        return self._root

    @property
    def base_url(self) -> str:
        return self.root_url
